"""The implicit finite-difference operator, applied matrix-free with tensor slicing.

Space: the 5-point flux stencil on the (n-1)^2 interior nodes; the conductivity of the face between two
neighbouring nodes is the harmonic mean of k at the two nodes (the exact series conductance when k is
piecewise constant, second order when k is smooth). A backward Euler step solves the SPD system

    (1/dt + c) u - L_h u = u_old / dt + f(t_new) + (Dirichlet couplings of g(t_new))

with c the reaction coefficient and L_h the flux stencil; `heat_operator` builds its left-hand side.
No matrix is ever formed on the fine grid.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _harmonic(a: Tensor, b: Tensor) -> Tensor:
    return 2.0 * a * b / (a + b)


def face_conductivities(k: Tensor) -> tuple[Tensor, Tensor]:
    """Nodal k (B, n+1, n+1) -> harmonic-mean face conductivities kx (B, n, n-1), ky (B, n-1, n)."""
    kx = _harmonic(k[:, :-1, 1:-1], k[:, 1:, 1:-1])  # face (i+1/2, j) between nodes i, i+1; rows j interior
    ky = _harmonic(k[:, 1:-1, :-1], k[:, 1:-1, 1:])
    return kx, ky


# Offsets (d1, d2) of the "forward" neighbours of a symmetric stencil; the backward ones follow by symmetry.
NINE_POINT = ((1, 0), (0, 1), (1, 1), (1, -1))
_DIRECTIONS = tuple((a, b) for a in (-1, 0, 1) for b in (-1, 0, 1) if (a, b) != (0, 0))


def pair_slices(m1: int, m2: int, offset: tuple[int, int]) -> tuple[tuple, tuple]:
    """Slices (node p, node p + offset) over all pairs of interior nodes an offset apart."""
    d1, d2 = offset  # d1 >= 0
    lo, hi = max(0, -d2), m2 - max(0, d2)
    here = (slice(None), slice(0, m1 - d1), slice(lo, hi))
    there = (slice(None), slice(d1, m1), slice(lo + d2, hi + d2))
    return here, there


class Stencil:
    """A symmetric stencil operator on interior nodes, applied with tensor slicing (no matrix).

    diag: (B, m1, m2). couplings[offset]: (B, m1 - d1, m2 - |d2|), the weight c between each node p and
    p + offset; (A u)_p = diag_p u_p - sum_q c_pq u_q, zero Dirichlet values outside. With c >= 0 and
    diag >= sum c this is an M-matrix (hence the discrete maximum principle).
    """

    def __init__(self, diag: Tensor, couplings: dict[tuple[int, int], Tensor]):
        self.diag, self.couplings = diag, couplings
        m1, m2 = diag.shape[1:]
        self.slices = {off: pair_slices(m1, m2, off) for off in couplings}

    def __call__(self, u: Tensor) -> Tensor:
        out = self.diag * u
        for off, c in self.couplings.items():
            here, there = self.slices[off]
            out[here].addcmul_(c, u[there], value=-1.0)
            out[there].addcmul_(c, u[here], value=-1.0)
        return out

    def residual(self, b: Tensor, u: Tensor) -> Tensor:
        """b - A u, in one pass fewer than b - self(u)."""
        out = torch.addcmul(b, self.diag, u, value=-1.0)
        for off, c in self.couplings.items():
            here, there = self.slices[off]
            out[here].addcmul_(c, u[there])
            out[there].addcmul_(c, u[here])
        return out

    def tensors(self) -> tuple[Tensor, ...]:
        return (self.diag, *self.couplings.values())

    def to(self, dtype: torch.dtype) -> "Stencil":
        return Stencil(self.diag.to(dtype), {off: c.to(dtype) for off, c in self.couplings.items()})

    def neighbour_couplings(self) -> dict[tuple[int, int], Tensor]:
        """c between p and p + d for all 8 directions d, each (B, m1, m2), zero where p + d is outside."""
        full = {d: torch.zeros_like(self.diag) for d in _DIRECTIONS}
        for off, c in self.couplings.items():
            here, there = self.slices[off]
            full[off][here] = c
            full[(-off[0], -off[1])][there] = c
        return full

    def dense(self) -> Tensor:
        """The matrix (B, M, M), M = m1 * m2 nodes in row-major order. Small grids only."""
        b, m1, m2 = self.diag.shape
        mat = torch.zeros(b, m1 * m2, m1 * m2, dtype=self.diag.dtype, device=self.diag.device)
        node = torch.arange(m1 * m2, device=mat.device).view(1, m1, m2)
        mat[:, node.reshape(-1), node.reshape(-1)] = self.diag.reshape(b, -1)
        for off, c in self.couplings.items():
            here, there = self.slices[off]
            p, q = node[here].reshape(-1), node[there].reshape(-1)
            mat[:, p, q] = -c.reshape(b, -1)
            mat[:, q, p] = -c.reshape(b, -1)
        return mat


def heat_operator(kx: Tensor, ky: Tensor, n: int, mass: float) -> Stencil:
    """mass * I - L_h from face conductivities kx (B, n, n-1), ky (B, n-1, n): the 5-point stencil."""
    inv_h2 = float(n) ** 2
    diag = (kx[:, :-1, :] + kx[:, 1:, :] + ky[:, :, :-1] + ky[:, :, 1:]) * inv_h2 + mass  # (B, n-1, n-1)
    return Stencil(diag, {(1, 0): kx[:, 1:-1, :] * inv_h2, (0, 1): ky[:, :, 1:-1] * inv_h2})
