"""Geometric multigrid preconditioner: one symmetric V(1,1)-cycle.

Red-black Gauss-Seidel smoothing (red-black going down, black-red going up, so the cycle is symmetric as
CG needs), interpolation built from the diffusion stencil (so it follows the k jump instead of smearing
it as bilinear interpolation does), restriction = interpolation^T, and Galerkin coarse operators R A P.
With it CG needs about 9-11 iterations to 1e-10 at every n (Jacobi PCG needs ~1000 at n = 512, growing
like n). n is halved while it is even, down to <= _COARSEST_CELLS cells per side; that coarsest grid is
solved with a dense inverse when it fits (_DENSE_COARSE_BYTES), else (n odd and large) with extra
smoothing sweeps, which costs more iterations (42 at n = 101). So any n >= 2 works; n = 2^p * (small)
is fastest.
"""

from __future__ import annotations

import torch
from torch import Tensor

from genray.heat.operator import NINE_POINT, Stencil, pair_slices

_COARSEST_CELLS = 32  # stop halving at this many cells per side if the dense inverse fits (below)
_DENSE_COARSE_BYTES = 64 * 2**20  # dense inverse of the coarsest grid's operator if it fits in this
_COARSE_SWEEPS = 4  # symmetric red-black sweeps used instead when the coarsest grid is too big


class _Transfer:
    """Operator-dependent interpolation P from a grid with n/2 cells to one with n cells; R = P^T / 4.

    Coarse node (I, J) sits on fine interior node (2I+1, 2J+1); P is stored in coarse-stencil form:
    w[(a, b)] (B, mc, mc) is the weight of coarse node (I, J) at fine node (2I+1+a, 2J+1+b), a, b in
    {-1, 0, 1}. Bilinear weights (1/2, 1/4) would smear the k jump across the triangle's edges: with
    them the V-cycle's convergence factor at n = 256 is 0.55 for k_in/k_out = 50 and 0.68 for 1000,
    against 0.23 for k = 1. Weights taken from the diffusion stencil itself (Alcouffe, Brandt, Dendy,
    Painter 1981) keep it at 0.24-0.26 for both jumps:
    - a fine node between two coarse nodes on a grid line: the stencil collapsed onto that line,
      w = (sum of its 3 couplings on the coarse node's side) / (diagonal - its 2 couplings across);
    - a fine node in the middle of a coarse cell: its own stencil row applied to the values already
      interpolated around it, divided by its diagonal.
    The weights come from the diffusion part alone (no mass term), so that they preserve constants
    away from the boundary; they reduce to bilinear interpolation when k is constant.
    """

    def __init__(self, diffusion: Stencil):
        c = diffusion.neighbour_couplings()  # 8 x (B, m, m)
        d = diffusion.diag  # (B, m, m); = sum of all couplings, boundary ones included
        self.m = d.shape[1]
        self.mc = (self.m - 1) // 2

        def at(t: Tensor, a: int, b: int) -> Tensor:  # t at fine nodes (2I+1+a, 2J+1+b): (B, mc, mc)
            return t[self._slice(a, b)]

        w = {(0, 0): torch.ones_like(at(d, 0, 0))}
        for a in (-1, 1):  # fine nodes on coarse x1-lines: collapse the stencil along x2
            towards = at(c[(-a, -1)], a, 0) + at(c[(-a, 0)], a, 0) + at(c[(-a, 1)], a, 0)
            w[(a, 0)] = towards / (at(d, a, 0) - at(c[(0, -1)], a, 0) - at(c[(0, 1)], a, 0))
        for b in (-1, 1):  # fine nodes on coarse x2-lines: collapse along x1
            towards = at(c[(-1, -b)], 0, b) + at(c[(0, -b)], 0, b) + at(c[(1, -b)], 0, b)
            w[(0, b)] = towards / (at(d, 0, b) - at(c[(-1, 0)], 0, b) - at(c[(1, 0)], 0, b))
        for a in (-1, 1):  # cell centres: direct coupling plus the two neighbouring line nodes
            for b in (-1, 1):
                direct = at(c[(-a, -b)], a, b)
                via_lines = at(c[(-a, 0)], a, b) * w[(0, b)] + at(c[(0, -b)], a, b) * w[(a, 0)]
                w[(a, b)] = (direct + via_lines) / at(d, a, b)
        self.weights = w

    def to(self, dtype: torch.dtype) -> "_Transfer":
        self.weights = {ab: w.to(dtype) for ab, w in self.weights.items()}
        return self

    def _slice(self, a: int, b: int) -> tuple:
        span = 2 * self.mc
        return (slice(None), slice(1 + a, 1 + a + span, 2), slice(1 + b, 1 + b + span, 2))

    def prolong(self, e: Tensor, out: Tensor | None = None) -> Tensor:
        """(B, mc, mc) -> (B, m, m); added into `out` (in place) when it is given."""
        if out is None:
            out = e.new_zeros(e.shape[0], self.m, self.m)
        for (a, b), w in self.weights.items():
            out[self._slice(a, b)].addcmul_(w, e)
        return out

    def restrict(self, r: Tensor) -> Tensor:
        """(B, m, m) -> (B, mc, mc); P^T / 4, which is full weighting when P is bilinear."""
        rc = torch.zeros_like(self.weights[(0, 0)])
        for (a, b), w in self.weights.items():
            rc.addcmul_(w, r[self._slice(a, b)])
        return rc.mul_(0.25)

    def galerkin(self, fine: Stencil) -> Stencil:
        """The coarse operator R A P as a 9-point stencil, found by probing.

        For each of the 9 colours (I mod 3, J mod 3), apply R A P to the indicator of that colour; a
        node's 3x3 neighbourhood holds each colour once, so the result at node p is p's coupling to its
        neighbour of that colour. Galerkin operators keep the jump where it is on every level.
        """
        b, m = fine.diag.shape[0], self.mc
        idx = torch.arange(m, device=fine.diag.device)

        def colour_of(d1: int, d2: int) -> Tensor:  # colour of node p + (d1, d2) for every p: (m, m)
            return ((idx.view(-1, 1) + d1) % 3) * 3 + (idx.view(1, -1) + d2) % 3

        probes = torch.stack(
            [self.restrict(fine(self.prolong((colour_of(0, 0) == k).to(fine.diag.dtype).expand(b, m, m))))
             for k in range(9)]
        )  # (9, B, m, m)

        def entry(d1: int, d2: int) -> Tensor:  # (R A P)[p, p + (d1, d2)] for every p: (B, m, m)
            return probes.gather(0, colour_of(d1, d2).expand(1, b, m, m))[0]

        couplings = {off: -entry(*off)[pair_slices(m, m, off)[0]].contiguous() for off in NINE_POINT}
        return Stencil(entry(0, 0), couplings)


class _Level:
    """One grid of the hierarchy: its operator, the red-black smoother's masked inverse diagonals, and
    the transfer to the next coarser grid (None on the coarsest)."""

    def __init__(self, op: Stencil):
        self.op = op
        m1, m2 = op.diag.shape[1:]
        i1 = torch.arange(m1, device=op.diag.device).view(-1, 1)
        i2 = torch.arange(m2, device=op.diag.device).view(1, -1)
        red = ((i1 + i2) % 2 == 0).to(op.diag.dtype)  # (m1, m2): checkerboard, red = even i1 + i2
        dinv = 1.0 / op.diag
        self.dinv_red = dinv * red  # (B, m1, m2): 1/diag on red nodes, 0 on black
        self.dinv_black = dinv * (1.0 - red)
        self.transfer: _Transfer | None = None
        self.inverse: Tensor | None = None  # (B, M, M) if this coarsest grid is solved densely


class Multigrid:
    """One symmetric V(1,1)-cycle as a preconditioner: z = M^-1 r, r and z (B, n-1, n-1).

    op: the operator to precondition; diffusion: its part without the mass term (for the transfers).
    The hierarchy is built in float64 and then stored in `dtype`: a float32 cycle moves half the bytes
    (it is memory-bound; a whole step at n = 512 is 1.4x faster on CPU) and a preconditioner needs no
    more digits; CG itself runs in the stepper's working dtype (float64 by default), so the answer keeps
    that accuracy.
    """

    def __init__(self, op: Stencil, diffusion: Stencil, n: int, dtype: torch.dtype = torch.float32):
        self.dtype = dtype
        ops = [op]
        transfers: list[_Transfer] = []

        def dense_fits(cells: int) -> bool:  # the (B, M, M) inverse, M = (cells - 1)^2, within budget
            return 8 * op.diag.shape[0] * (cells - 1) ** 4 <= _DENSE_COARSE_BYTES

        # Halve n while it is even (vertex-centred coarsening), down to the first grid of at most
        # _COARSEST_CELLS cells whose dense inverse fits: tiny grids would cost only call overhead.
        while n % 2 == 0 and n > 2 and not (n <= _COARSEST_CELLS and dense_fits(n)):
            transfers.append(_Transfer(diffusion))
            ops.append(transfers[-1].galerkin(ops[-1]))
            diffusion = transfers[-1].galerkin(diffusion)
            n //= 2
        self.levels = [_Level(a.to(dtype)) for a in ops]
        for level, transfer in zip(self.levels, transfers):
            level.transfer = transfer.to(dtype)
        if dense_fits(n):
            # An explicit inverse: one batched mat-vec per cycle (cholesky_solve re-copies its factor on
            # every call).
            chol = torch.linalg.cholesky(ops[-1].dense())  # float64
            self.levels[-1].inverse = torch.cholesky_inverse(chol).to(dtype)  # (B, M, M)

    def tensors(self) -> tuple[Tensor, ...]:
        """Every tensor a cycle reads: the levels' operators, smoother diagonals, transfers, inverse."""
        out: list[Tensor] = []
        for level in self.levels:
            out += [*level.op.tensors(), level.dinv_red, level.dinv_black]
            out += list(level.transfer.weights.values()) if level.transfer is not None else []
            out += [level.inverse] if level.inverse is not None else []
        return tuple(out)

    def __call__(self, r: Tensor) -> Tensor:
        # Scale each member to max |r| = 1 first: CG's late residuals could underflow float32 otherwise.
        # The cycle is linear, so scaling back gives the same z.
        scale = r.abs().amax(dim=(1, 2), keepdim=True)  # (B, 1, 1); cheaper than vector_norm(ord=inf)
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        z = self._cycle(0, (r / scale).to(self.dtype))
        return z.to(r.dtype).mul_(scale)

    def _cycle(self, depth: int, b: Tensor) -> Tensor:
        level = self.levels[depth]
        if level.transfer is None:  # coarsest grid
            if level.inverse is not None:
                return torch.bmm(level.inverse, b.reshape(b.shape[0], -1, 1)).view_as(b)
            return self._smooth_only(level, b)
        # Pre-smoothing: red then black Gauss-Seidel half-sweeps (x starts at 0, so red is just D^-1 b).
        x = level.dinv_red * b
        x.addcmul_(level.dinv_black, level.op.residual(b, x))
        # Coarse-grid correction. R = P^T / 4, so P (R A P)^-1 R is symmetric.
        t = level.transfer
        t.prolong(self._cycle(depth + 1, t.restrict(level.op.residual(b, x))), out=x)  # x += P e
        # Post-smoothing in the reverse colour order: the adjoint of the pre-smoother.
        x.addcmul_(level.dinv_black, level.op.residual(b, x))
        x.addcmul_(level.dinv_red, level.op.residual(b, x))
        return x

    @staticmethod
    def _smooth_only(level: _Level, b: Tensor) -> Tensor:
        """Coarsest grid too big for a dense solve (n odd and large): symmetric red-black sweeps."""
        x = torch.zeros_like(b)
        colours = [level.dinv_red, level.dinv_black] * _COARSE_SWEEPS
        for dinv in colours + colours[::-1]:
            x.addcmul_(dinv, level.op.residual(b, x))
        return x
