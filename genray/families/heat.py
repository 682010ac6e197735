"""2-D heat equation with a discontinuous conductivity, solved implicitly in PyTorch.

The course problem (DESIGN.md):

    du/dt = sum_a d/dx_a (k du/dx_a) - u        on [0, 1]^2,  t > 0
    k = k_in inside the triangle A(0.2, 0.5) B(0.7, 0.2) C(0.5, 0.8), k_out outside
    u(x, 0) = 0;  u = 1 - exp(-omega t) on x1 = 0 and x2 = 0;  u = 0 on x1 = 1 and x2 = 1.

Discretisation
    Grid x_i = i / n, i = 0..n, in both directions; fields are (B, n+1, n+1) tensors indexed
    [batch, i1, i2]. The unknowns are the (n-1)^2 interior nodes; boundary nodes carry Dirichlet data.
    Space: the 5-point flux stencil; the conductivity of the face between two neighbouring nodes is the
    harmonic mean of k at the two nodes (the exact series conductance when k is piecewise constant,
    second order when k is smooth).
    Time: backward Euler, so each step solves the SPD system

        (1/dt + c) u - L_h u = u_old / dt + f(t_new) + (Dirichlet couplings of g(t_new))

    with c the reaction coefficient (1 for the course problem) and L_h the flux stencil.

Linear solver
    Preconditioned conjugate gradients, vectorised over the batch, warm-started from the previous step,
    stopped on the true relative residual ||b - A u|| / ||b|| <= rtol. The operator is applied
    matrix-free with tensor slicing (no matrix is ever formed on the fine grid).
    The default preconditioner is one geometric multigrid V(1,1)-cycle, run in float32:
    red-black Gauss-Seidel smoothing (red-black going down, black-red going up, so the cycle is
    symmetric as CG needs), interpolation built from the diffusion stencil (so it follows the k jump
    instead of smearing it as bilinear interpolation does), restriction = interpolation^T, and
    Galerkin coarse operators R A P. CG needs about 9-11 iterations to 1e-10 at every n (Jacobi PCG
    needs ~1000 at n = 512, growing like n). n is halved while it is even, down to <= 32 cells per
    side; that coarsest grid is solved with a dense inverse when it fits (_DENSE_COARSE_BYTES), else
    (n odd and large) with extra smoothing sweeps, which costs more iterations (42 at n = 101).
    So any n >= 2 works; n = 2^p * (small) is fastest.
    Steps: round(t_end / dt), the step adjusted to t_end / steps so the run ends at t_end exactly.

Devices and precision
    Every tensor lives on `device` (default: CUDA when available). The solution and CG are float64;
    only the preconditioner runs in float32 (preconditioner="multigrid64" keeps it in float64).

Pure torch: no Ray here (DESIGN.md), so the family is testable and usable without a cluster.
"""

from __future__ import annotations

import math
import numbers
import warnings
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import Tensor

__all__ = [
    "TRIANGLE",
    "MAX_SOLVER_BYTES",
    "PRECONDITIONERS",
    "HeatProblem",
    "HeatResult",
    "HeatStepper",
    "course_problem",
    "conductivity_field",
    "grid",
    "simulate",
    "solve",
    "solve_batch",
    "solve_frames",
]

# Vertices (x1, x2) of the high-conductivity triangle of the course problem.
TRIANGLE: tuple[tuple[float, float], ...] = ((0.2, 0.5), (0.7, 0.2), (0.5, 0.8))

# Memory limit for one solve (device memory, plus host memory for frames): the estimate below must
# stay under it. 4 GiB fits a laptop and a GPU; for batch 1 it allows n up to about 3600.
MAX_SOLVER_BYTES = 4 * 2**30
# Float64 grid-sized arrays per batch member at the peak, which is the multigrid set-up: the operator
# and its diffusion part (3 arrays each), node and face conductivities, the 8 neighbour-coupling arrays
# the transfer weights are computed from, probes; then u, b, CG's r/z/p/q and the V-cycle's work arrays.
# Measured peak (RSS, n = 1024): 31 (float32 cycle), 35 (float64 cycle).
_ARRAYS_PER_GRID = 40

# "multigrid": V-cycle in float32 (default); "multigrid64": the same in float64; "jacobi": diagonal.
PRECONDITIONERS = ("multigrid", "multigrid64", "jacobi", "none")

_COARSEST_CELLS = 32  # stop halving at this many cells per side if the dense inverse fits (below)
_DENSE_COARSE_BYTES = 64 * 2**20  # dense inverse of the coarsest grid's operator if it fits in this
_COARSE_SWEEPS = 4  # symmetric red-black sweeps used instead when the coarsest grid is too big


# ----------------------------------------------------------------------------------------------------
# Problem description
# ----------------------------------------------------------------------------------------------------


FieldFn = Callable[[Tensor, Tensor], Tensor]
TimeFieldFn = Callable[[Tensor, Tensor, float], Tensor]


@dataclass(frozen=True)
class HeatProblem:
    """du/dt = div(k grad u) - reaction * u + source on [0,1]^2, u = boundary on the edges.

    Every function gets the node coordinates x1, x2 as (n+1, n+1) float64 tensors (indexing "ij") and
    returns a tensor that broadcasts to (batch_size, n+1, n+1). `boundary` is evaluated on the whole
    grid and only its edge values are used, so it may be any smooth extension.
    """

    conductivity: FieldFn  # k(x1, x2) > 0
    boundary: TimeFieldFn  # g(x1, x2, t), Dirichlet data
    source: TimeFieldFn | None = None  # f(x1, x2, t); None = 0
    initial: FieldFn | None = None  # u(x, 0) at interior nodes; None = 0
    reaction: float = 1.0
    batch_size: int = 1


def grid(n: int, device: torch.device | str | None = None) -> tuple[Tensor, Tensor]:
    """Node coordinates (x1, x2), each (n+1, n+1) float64, x1 varying along the first index."""
    x = torch.linspace(0.0, 1.0, n + 1, dtype=torch.float64, device=device)
    x1, x2 = torch.meshgrid(x, x, indexing="ij")
    return x1, x2


def _in_triangle(x1: Tensor, x2: Tensor, tol: float = 1e-12) -> Tensor:
    """Bool mask of points inside the course triangle, edges included."""
    (ax, ay), (bx, by), (cx, cy) = TRIANGLE

    def side(px: float, py: float, qx: float, qy: float) -> Tensor:
        # z-component of (q - p) x (x - p): the sign says which side of the edge p->q the point is on.
        return (qx - px) * (x2 - py) - (qy - py) * (x1 - px)

    s1, s2, s3 = side(ax, ay, bx, by), side(bx, by, cx, cy), side(cx, cy, ax, ay)
    all_pos = (s1 >= -tol) & (s2 >= -tol) & (s3 >= -tol)
    all_neg = (s1 <= tol) & (s2 <= tol) & (s3 <= tol)
    return all_pos | all_neg


def _as_batch(name: str, value, device: torch.device | None = None) -> Tensor:
    """A scalar or 1-D sequence as a (B,) float64 tensor."""
    t = torch.as_tensor(value, dtype=torch.float64).reshape(-1)
    if t.numel() == 0:
        raise ValueError(f"{name} must hold at least one value, got an empty sequence")
    return t.to(device) if device is not None else t


def _check_params(omega: Tensor, k_in: Tensor, k_out: Tensor) -> int:
    """Validate the course parameters (each (B,) or (1,)); return the common batch size."""
    for name, t in (("omega", omega), ("k_in", k_in), ("k_out", k_out)):
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"{name} must be finite, got {t.tolist()}")
    for name, t in (("k_in", k_in), ("k_out", k_out)):
        if not bool((t > 0).all()):
            raise ValueError(f"{name} must be > 0 (a conductivity), got {t.tolist()}")
    sizes = {t.numel() for t in (omega, k_in, k_out)} - {1}
    if len(sizes) > 1:
        raise ValueError(
            "omega, k_in and k_out must have the same length (or length 1), got lengths "
            f"{omega.numel()}, {k_in.numel()}, {k_out.numel()}"
        )
    return sizes.pop() if sizes else 1


def conductivity_field(x1: Tensor, x2: Tensor, k_in: Tensor, k_out: Tensor) -> Tensor:
    """k on the nodes: k_in in the triangle (edges included), k_out elsewhere. (B, n+1, n+1)."""
    inside = _in_triangle(x1, x2)  # (n+1, n+1)
    return torch.where(inside, k_in.view(-1, 1, 1), k_out.view(-1, 1, 1))


def course_problem(omega=20.0, k_in=50.0, k_out=1.0) -> HeatProblem:
    """The course problem; each parameter is a scalar or a length-B sequence/tensor (a batch)."""
    omega_t, k_in_t, k_out_t = _as_batch("omega", omega), _as_batch("k_in", k_in), _as_batch("k_out", k_out)
    batch = _check_params(omega_t, k_in_t, k_out_t)

    def conductivity(x1: Tensor, x2: Tensor) -> Tensor:
        return conductivity_field(x1, x2, k_in_t.to(x1.device), k_out_t.to(x1.device))

    def boundary(x1: Tensor, x2: Tensor, t: float) -> Tensor:
        rise = 1.0 - torch.exp(-omega_t.to(x1.device) * t)  # (B,)
        heated = (x1 == 0.0) | (x2 == 0.0)  # (n+1, n+1): the edges x1 = 0 and x2 = 0
        return torch.where(heated, rise.view(-1, 1, 1), torch.zeros((), dtype=x1.dtype, device=x1.device))

    return HeatProblem(conductivity=conductivity, boundary=boundary, reaction=1.0, batch_size=batch)


# ----------------------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------------------


def _is_int(x) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _is_real(x) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def _estimated_bytes(n: int, batch: int, frames: int = 0) -> int:
    cells = (n + 1) ** 2
    return 8 * cells * batch * (_ARRAYS_PER_GRID + frames)


def _max_n(batch: int, frames: int = 0) -> int:
    per_cell = 8 * batch * (_ARRAYS_PER_GRID + frames)
    return max(int(math.isqrt(MAX_SOLVER_BYTES // per_cell)) - 1, 0)


def _validate(n, dt, t_end, rtol, max_iter, batch: int, frames: int = 0) -> None:
    if not _is_int(n):
        raise ValueError(f"n must be an int >= 2, got {n!r}")
    n = int(n)
    if n < 2:
        raise ValueError(f"n must be >= 2, got {n}")
    if not (_is_real(dt) and math.isfinite(dt) and dt > 0):
        raise ValueError(f"dt must be finite and > 0, got {dt!r}")
    if not (_is_real(t_end) and math.isfinite(t_end) and t_end >= 0):
        raise ValueError(f"t_end must be finite and >= 0, got {t_end!r}")
    if not (_is_real(rtol) and 1e-14 <= rtol < 1):
        raise ValueError(f"rtol must be in [1e-14, 1), got {rtol!r}")
    if max_iter is not None and not (_is_int(max_iter) and max_iter >= 1):
        raise ValueError(f"max_iter must be an int >= 1, got {max_iter!r}")
    need = _estimated_bytes(n, batch, frames)
    if need > MAX_SOLVER_BYTES:
        raise ValueError(
            f"n must be <= {_max_n(batch, frames)} for a batch of {batch}"
            + (f" with {frames} frames" if frames else "")
            + f", got {n}: the solve would need about {need / 2**30:.1f} GiB, over the limit "
            f"MAX_SOLVER_BYTES = {MAX_SOLVER_BYTES / 2**30:.0f} GiB"
        )


def _time_grid(dt: float, t_end: float) -> tuple[int, float]:
    """Number of steps and the step actually used.

    steps = round(t_end / dt) (at least 1 when t_end > 0), and the step is stretched or shrunk
    uniformly to t_end / steps so the run ends exactly at t_end. This keeps one operator (and one
    preconditioner set-up) for the whole run. The step used lies in [dt/2, 3dt/2] when t_end >= dt/2
    (e.g. dt = 0.03, t_end = 0.1: 3 steps of 0.0333); a shorter t_end is done in one step of t_end.
    """
    if t_end == 0:
        return 0, float(dt)
    steps = max(1, round(t_end / dt))
    return steps, t_end / steps


def _default_device(device) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


# ----------------------------------------------------------------------------------------------------
# Matrix-free operator
# ----------------------------------------------------------------------------------------------------


def _harmonic(a: Tensor, b: Tensor) -> Tensor:
    return 2.0 * a * b / (a + b)


def _face_conductivities(k: Tensor) -> tuple[Tensor, Tensor]:
    """Nodal k (B, n+1, n+1) -> harmonic-mean face conductivities kx (B, n, n-1), ky (B, n-1, n)."""
    kx = _harmonic(k[:, :-1, 1:-1], k[:, 1:, 1:-1])  # face (i+1/2, j) between nodes i, i+1; rows j interior
    ky = _harmonic(k[:, 1:-1, :-1], k[:, 1:-1, 1:])
    return kx, ky


# Offsets (d1, d2) of the "forward" neighbours of a symmetric stencil; the backward ones follow by symmetry.
_NINE_POINT = ((1, 0), (0, 1), (1, 1), (1, -1))
_DIRECTIONS = tuple((a, b) for a in (-1, 0, 1) for b in (-1, 0, 1) if (a, b) != (0, 0))


def _pairs(m1: int, m2: int, offset: tuple[int, int]) -> tuple[tuple, tuple]:
    """Slices (node p, node p + offset) over all pairs of interior nodes an offset apart."""
    d1, d2 = offset  # d1 >= 0
    lo, hi = max(0, -d2), m2 - max(0, d2)
    here = (slice(None), slice(0, m1 - d1), slice(lo, hi))
    there = (slice(None), slice(d1, m1), slice(lo + d2, hi + d2))
    return here, there


class _Stencil:
    """A symmetric stencil operator on interior nodes, applied with tensor slicing (no matrix).

    diag: (B, m1, m2). couplings[offset]: (B, m1 - d1, m2 - |d2|), the weight c between each node p and
    p + offset; (A u)_p = diag_p u_p - sum_q c_pq u_q, zero Dirichlet values outside. With c >= 0 and
    diag >= sum c this is an M-matrix (hence the discrete maximum principle).
    """

    def __init__(self, diag: Tensor, couplings: dict[tuple[int, int], Tensor]):
        self.diag, self.couplings = diag, couplings
        m1, m2 = diag.shape[1:]
        self.slices = {off: _pairs(m1, m2, off) for off in couplings}

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

    def to(self, dtype: torch.dtype) -> "_Stencil":
        return _Stencil(self.diag.to(dtype), {off: c.to(dtype) for off, c in self.couplings.items()})

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


def _heat_operator(kx: Tensor, ky: Tensor, n: int, mass: float) -> _Stencil:
    """mass * I - L_h from face conductivities kx (B, n, n-1), ky (B, n-1, n): the 5-point stencil."""
    inv_h2 = float(n) ** 2
    diag = (kx[:, :-1, :] + kx[:, 1:, :] + ky[:, :, :-1] + ky[:, :, 1:]) * inv_h2 + mass  # (B, n-1, n-1)
    return _Stencil(diag, {(1, 0): kx[:, 1:-1, :] * inv_h2, (0, 1): ky[:, :, 1:-1] * inv_h2})


# ----------------------------------------------------------------------------------------------------
# Multigrid preconditioner
# ----------------------------------------------------------------------------------------------------


class _Transfer:
    """Operator-dependent interpolation P from a grid with n/2 cells to one with n cells; R = P^T / 4.

    Coarse node (I, J) sits on fine interior node (2I+1, 2J+1); P is stored in coarse-stencil form:
    w[(a, b)] (B, mc, mc) is the weight of coarse node (I, J) at fine node (2I+1+a, 2J+1+b), a, b in
    {-1, 0, 1}. Bilinear weights (1/2, 1/4) smear the k jump across the triangle's edges: the V-cycle's
    convergence factor (n = 256) was 0.55 for k_in/k_out = 50 and 0.68 for 1000, against 0.23 for
    k = 1. Weights taken from the diffusion stencil itself (Alcouffe, Brandt, Dendy, Painter 1981)
    bring it back to 0.24-0.26 for both jumps:
    - a fine node between two coarse nodes on a grid line: the stencil collapsed onto that line,
      w = (sum of its 3 couplings on the coarse node's side) / (diagonal - its 2 couplings across);
    - a fine node in the middle of a coarse cell: its own stencil row applied to the values already
      interpolated around it, divided by its diagonal.
    The weights come from the diffusion part alone (no mass term), so that they preserve constants
    away from the boundary; they reduce to bilinear interpolation when k is constant.
    """

    def __init__(self, diffusion: _Stencil):
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

    def galerkin(self, fine: _Stencil) -> _Stencil:
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

        couplings = {off: -entry(*off)[_pairs(m, m, off)[0]].contiguous() for off in _NINE_POINT}
        return _Stencil(entry(0, 0), couplings)


class _Level:
    """One grid of the hierarchy: its operator, the red-black smoother's masked inverse diagonals, and
    the transfer to the next coarser grid (None on the coarsest)."""

    def __init__(self, op: _Stencil):
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


class _Multigrid:
    """One symmetric V(1,1)-cycle as a preconditioner: z = M^-1 r, r and z (B, n-1, n-1).

    op: the operator to precondition; diffusion: its part without the mass term (for the transfers).
    The hierarchy is built in float64 and then stored in `dtype`: a float32 cycle moves half the bytes
    (it is memory-bound; a whole step at n = 512 got 1.4x faster on CPU) and a preconditioner needs no
    more digits; CG itself stays in float64, so the answer keeps float64 accuracy.
    """

    def __init__(self, op: _Stencil, diffusion: _Stencil, n: int, dtype: torch.dtype = torch.float32):
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
            # every call, which cost ~100x more here).
            chol = torch.linalg.cholesky(ops[-1].dense())  # float64
            self.levels[-1].inverse = torch.cholesky_inverse(chol).to(dtype)  # (B, M, M)

    def __call__(self, r: Tensor) -> Tensor:
        # Scale each member to max |r| = 1 first: CG's late residuals could underflow float32 otherwise.
        # The cycle is linear, so scaling back gives the same z.
        scale = r.abs().amax(dim=(1, 2), keepdim=True)  # (B, 1, 1); 20x faster than vector_norm(ord=inf)
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


# ----------------------------------------------------------------------------------------------------
# Conjugate gradients, batched
# ----------------------------------------------------------------------------------------------------


def _dot(a: Tensor, b: Tensor) -> Tensor:
    return (a * b).sum(dim=(1, 2))  # (B,)


def _norm(a: Tensor) -> Tensor:
    return torch.linalg.vector_norm(a, dim=(1, 2))  # (B,)


def _safe_div(num: Tensor, den: Tensor) -> Tensor:
    """num / den, 0 where den == 0 (a converged or exactly solved member)."""
    ok = den != 0
    return torch.where(ok, num / torch.where(ok, den, torch.ones_like(den)), torch.zeros_like(num))


def _pcg(
    apply: Callable[[Tensor], Tensor],
    residual: Callable[[Tensor, Tensor], Tensor],
    precondition: Callable[[Tensor], Tensor],
    b: Tensor,
    x: Tensor,
    rtol: float,
    max_iter: int,
) -> tuple[Tensor, Tensor, Tensor]:
    """Solve A x = b for a batch (B, m1, m2) from the initial guess x (updated in place).

    Each member stops when its true relative residual ||b - A x|| / ||b|| <= rtol; converged members are
    frozen (step length 0) while the others go on. The loop watches CG's recurrence for the residual and
    then checks the true residual: if they drifted apart, CG restarts from x; if a restart no longer
    halves the true residual, that member has reached float64's roundoff floor (an ill-conditioned
    system asked for a tiny rtol) and stops there, its residual reporting what was reached.
    beta is the Polak-Ribiere ("flexible CG") formula, so the float32 preconditioner's rounding, which
    makes it very slightly nonlinear, does not spoil convergence.
    Returns x, iterations (B,) int64 and final true relative residuals (B,).
    """
    bnorm = _norm(b)
    bnorm = torch.where(bnorm > 0, bnorm, torch.ones_like(bnorm))  # b = 0: absolute residual
    iterations = torch.zeros(b.shape[0], dtype=torch.int64, device=b.device)
    total, last = 0, torch.full_like(bnorm, math.inf)
    while True:
        r = residual(b, x)
        rel = _norm(r) / bnorm
        active = (rel > rtol) & (rel < 0.5 * last)  # (B,) still to solve and still making progress
        last = rel
        if not bool(active.any()):
            return x, iterations, rel
        if total >= max_iter:
            raise RuntimeError(
                f"CG did not reach rtol={rtol:g} in max_iter={max_iter} iterations (relative residual "
                f"{rel.max().item():.3g}); raise max_iter or rtol"
            )
        z = precondition(r)
        p = z.clone()
        rz = _dot(r, z)
        while total < max_iter:
            q = apply(p)
            alpha = torch.where(active, _safe_div(rz, _dot(p, q)), torch.zeros_like(rz))  # (B,)
            x.addcmul_(alpha.view(-1, 1, 1), p)
            r.addcmul_(alpha.view(-1, 1, 1), q, value=-1.0)
            iterations += active.long()
            total += 1
            active = active & (_norm(r) / bnorm > rtol)
            if not bool(active.any()):
                break
            z_old, z = z, precondition(r)
            rz_new = _dot(r, z)
            beta = _safe_div(rz_new - _dot(r, z_old), rz)  # Polak-Ribiere
            p.mul_(beta.view(-1, 1, 1)).add_(z)
            rz = rz_new
        # loop back: check the true residual, then stop or restart


# ----------------------------------------------------------------------------------------------------
# Time stepping
# ----------------------------------------------------------------------------------------------------


class HeatStepper:
    """Backward Euler steps of a HeatProblem on an n x n-cell grid with a fixed step dt.

    Builds the operator (I/dt + c) - L_h and its preconditioner once; `step` advances a batch of full
    fields (B, n+1, n+1) from t to t + dt. Also the building block of the benchmark.
    """

    def __init__(
        self,
        problem: HeatProblem,
        n: int,
        dt: float,
        *,
        rtol: float = 1e-10,
        max_iter: int | None = None,
        device=None,
        preconditioner: str = "multigrid",
    ):
        _validate(n, dt, 0.0, rtol, max_iter, problem.batch_size)
        if preconditioner not in PRECONDITIONERS:
            raise ValueError(f"preconditioner must be one of {PRECONDITIONERS}, got {preconditioner!r}")
        if not math.isfinite(problem.reaction) or problem.reaction < 0:
            raise ValueError(f"reaction must be finite and >= 0, got {problem.reaction!r}")
        self.problem, self.n, self.dt, self.rtol = problem, int(n), float(dt), rtol
        # Default cap: multigrid needs ~10 iterations; Jacobi / no preconditioner need O(n).
        self.max_iter = max_iter if max_iter is not None else 1000 + 10 * self.n
        n = self.n
        self.device = _default_device(device)
        self.batch = problem.batch_size
        self.x1, self.x2 = grid(n, self.device)  # (n+1, n+1) each

        k = self._field(problem.conductivity(self.x1, self.x2))  # (B, n+1, n+1)
        if not bool(torch.isfinite(k).all()) or not bool((k > 0).all()):
            raise ValueError("conductivity must be finite and > 0 at every node")
        self.kx, self.ky = _face_conductivities(k)  # (B, n, n-1), (B, n-1, n)
        # The step operator A = (1/dt + c) I - L_h, a callable on interior values (B, n-1, n-1).
        self.apply = _heat_operator(self.kx, self.ky, n, 1.0 / self.dt + problem.reaction)
        if preconditioner in ("multigrid", "multigrid64"):
            diffusion = _heat_operator(self.kx, self.ky, n, 0.0)
            dtype = torch.float32 if preconditioner == "multigrid" else torch.float64
            self.precondition = _Multigrid(self.apply, diffusion, n, dtype)
        elif preconditioner == "jacobi":
            dinv = 1.0 / self.apply.diag
            self.precondition = lambda r: dinv * r
        else:
            self.precondition = lambda r: r.clone()

    def coefficients(self) -> dict[str, Tensor]:
        """The step operator's 5-point stencil, for assembling it elsewhere (benchmarks, checks):
        "diag" (B, n-1, n-1); "x1" (B, n-2, n-1), couplings of interior nodes (i, j) - (i+1, j);
        "x2" (B, n-1, n-2), couplings (i, j) - (i, j+1). (A u)_p = diag_p u_p - sum of couplings * u_q."""
        op = self.apply
        return {"diag": op.diag, "x1": op.couplings[(1, 0)], "x2": op.couplings[(0, 1)]}

    def _field(self, value) -> Tensor:
        """Broadcast a problem function's output to a (B, n+1, n+1) float64 tensor."""
        size = (self.batch, self.n + 1, self.n + 1)
        return torch.as_tensor(value, dtype=torch.float64, device=self.device).expand(size)

    def boundary(self, t: float) -> Tensor:
        return self._field(self.problem.boundary(self.x1, self.x2, t))

    def initial(self) -> Tensor:
        """u at t = 0: the initial data inside, g(., 0) on the boundary. (B, n+1, n+1)."""
        u = self.boundary(0.0).clone()
        if self.problem.initial is not None:
            u[:, 1:-1, 1:-1] = self._field(self.problem.initial(self.x1, self.x2))[:, 1:-1, 1:-1]
        else:
            u[:, 1:-1, 1:-1] = 0.0
        return u

    def rhs(self, u_old: Tensor, t_new: float, g_new: Tensor | None = None) -> Tensor:
        """Right-hand side (B, n-1, n-1) of the step to t_new from the full field u_old (B, n+1, n+1)."""
        g = self.boundary(t_new) if g_new is None else g_new
        b = u_old[:, 1:-1, 1:-1] / self.dt
        if self.problem.source is not None:
            b = b + self._field(self.problem.source(self.x1, self.x2, t_new))[:, 1:-1, 1:-1]
        # Couplings to the Dirichlet neighbours, moved to the right: (k_face / h^2) * g.
        inv_h2 = float(self.n) ** 2
        kx, ky = self.kx, self.ky
        b[:, 0, :] += kx[:, 0, :] * inv_h2 * g[:, 0, 1:-1]
        b[:, -1, :] += kx[:, -1, :] * inv_h2 * g[:, -1, 1:-1]
        b[:, :, 0] += ky[:, :, 0] * inv_h2 * g[:, 1:-1, 0]
        b[:, :, -1] += ky[:, :, -1] * inv_h2 * g[:, 1:-1, -1]
        return b

    def solve_system(self, b: Tensor, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """PCG for A x = b on interior values (B, n-1, n-1) from the guess x (overwritten).
        Returns x, iterations (B,) and final true relative residuals (B,)."""
        return _pcg(self.apply, self.apply.residual, self.precondition, b, x, self.rtol, self.max_iter)

    def step(self, u: Tensor, t: float, guess: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Advance the full fields u (B, n+1, n+1) from t to t + dt.

        Returns the new fields (B, n+1, n+1), CG iterations (B,) and final relative residuals (B,).
        CG starts from `guess` (B, n+1, n+1) if given, else from u.
        """
        t_new = t + self.dt
        g = self.boundary(t_new)
        b = self.rhs(u, t_new, g)
        x = (u if guess is None else guess)[:, 1:-1, 1:-1].clone()
        x, iterations, residual = self.solve_system(b, x)
        u_new = g.clone()
        u_new[:, 1:-1, 1:-1] = x
        return u_new, iterations, residual


@dataclass
class HeatResult:
    """Output of `simulate`. Tensors other than `u` live on the CPU."""

    u: Tensor  # (B, n+1, n+1) at t_end, on the solver's device
    dt: float  # step actually used: t_end / steps
    iterations: Tensor  # (steps, B) int64: CG iterations of each step
    residuals: Tensor  # (steps, B) float64: final true relative residual ||b - Au|| / ||b|| of each step
    times: Tensor  # (F,) float64 frame times (just t_end when no frames were asked for)
    frames: Tensor | None  # (F, B, n+1, n+1) float64, or None

    @property
    def steps(self) -> int:
        return self.iterations.shape[0]


def _frame_steps(steps: int, num_frames: int) -> list[int]:
    """Steps (0..steps) at which to keep a frame: num_frames evenly spaced, first and last included."""
    return sorted({round(i * steps / (num_frames - 1)) for i in range(num_frames)}) if steps else [0]


def simulate(
    problem: HeatProblem,
    n: int,
    dt: float,
    t_end: float,
    *,
    rtol: float = 1e-10,
    max_iter: int | None = None,
    device=None,
    num_frames: int | None = None,
    preconditioner: str = "multigrid",
) -> HeatResult:
    """Integrate `problem` to t_end with round(t_end / dt) backward Euler steps (see `_time_grid`:
    the step is adjusted uniformly to t_end / steps so the run ends exactly at t_end).

    rtol: CG stops at ||b - A u|| <= rtol ||b|| in every step (a RuntimeWarning says so if float64
        roundoff stops it earlier). max_iter: CG iterations allowed per step (default 1000 + 10 n;
        RuntimeError if exceeded). device: default CUDA when available. num_frames: keep this many
        evenly spaced fields (t = 0 and t_end included; fewer if there are fewer steps) in
        `HeatResult.frames`. preconditioner: one of PRECONDITIONERS.
    Raises ValueError naming the argument for out-of-range input, including grids too large for
    MAX_SOLVER_BYTES.
    """
    if num_frames is not None and not (_is_int(num_frames) and num_frames >= 2):
        raise ValueError(f"num_frames must be an int >= 2, got {num_frames!r}")
    _validate(n, dt, t_end, rtol, max_iter, problem.batch_size, num_frames or 0)
    steps, step_dt = _time_grid(float(dt), float(t_end))
    with torch.inference_mode():
        stepper = HeatStepper(
            problem, n, step_dt, rtol=rtol, max_iter=max_iter, device=device, preconditioner=preconditioner
        )
        u = stepper.initial()
        keep = set(_frame_steps(steps, num_frames)) if num_frames else set()
        times, frames = [], []
        if 0 in keep:
            times.append(0.0)
            frames.append(u.cpu())
        iterations = torch.zeros(steps, stepper.batch, dtype=torch.int64)
        residuals = torch.zeros(steps, stepper.batch, dtype=torch.float64)
        for s in range(steps):
            u, iterations[s], residuals[s] = stepper.step(u, s * step_dt)
            if s + 1 in keep:
                times.append((s + 1) * step_dt if s + 1 < steps else float(t_end))
                frames.append(u.cpu())
    if steps and bool((residuals > rtol).any()):
        warnings.warn(
            f"CG stalled at relative residual {residuals.max().item():.2e} > rtol={rtol:g} (float64 roundoff "
            "for this ill-conditioned system: large k * dt * n^2); the result is accurate to that level",
            RuntimeWarning,
            stacklevel=2,
        )
    return HeatResult(
        u=u,
        dt=step_dt,
        iterations=iterations,
        residuals=residuals,
        times=torch.tensor(times if num_frames else [float(t_end)], dtype=torch.float64),
        frames=torch.stack(frames) if num_frames else None,
    )


# ----------------------------------------------------------------------------------------------------
# The public entry points for the course problem
# ----------------------------------------------------------------------------------------------------


def solve(
    n: int,
    dt: float,
    t_end: float,
    omega: float = 20.0,
    k_in: float = 50.0,
    k_out: float = 1.0,
    *,
    rtol: float = 1e-10,
    max_iter: int | None = None,
    device=None,
    preconditioner: str = "multigrid",
) -> Tensor:
    """u at t_end for the course problem: float64 (n+1, n+1), indexed [i1, i2] on x_i = i/n."""
    for name, value in (("omega", omega), ("k_in", k_in), ("k_out", k_out)):
        if not _is_real(value):
            raise ValueError(f"{name} must be a real number, got {value!r}; use solve_batch for several")
    problem = course_problem(omega, k_in, k_out)
    result = simulate(
        problem, n, dt, t_end, rtol=rtol, max_iter=max_iter, device=device, preconditioner=preconditioner
    )
    return result.u[0]


def solve_batch(
    n: int,
    dt: float,
    t_end: float,
    omega: float | Sequence[float] | Tensor = 20.0,
    k_in: float | Sequence[float] | Tensor = 50.0,
    k_out: float | Sequence[float] | Tensor = 1.0,
    *,
    rtol: float = 1e-10,
    max_iter: int | None = None,
    device=None,
    preconditioner: str = "multigrid",
) -> Tensor:
    """u at t_end for B parameter sets at once: (B, n+1, n+1). Scalars broadcast to the batch;
    CG runs on the whole batch together (one operator application per iteration for all members)."""
    problem = course_problem(omega, k_in, k_out)
    result = simulate(
        problem, n, dt, t_end, rtol=rtol, max_iter=max_iter, device=device, preconditioner=preconditioner
    )
    return result.u


def solve_frames(
    n: int,
    dt: float,
    t_end: float,
    omega: float = 20.0,
    k_in: float = 50.0,
    k_out: float = 1.0,
    *,
    num_frames: int = 21,
    rtol: float = 1e-10,
    max_iter: int | None = None,
    device=None,
    preconditioner: str = "multigrid",
) -> tuple[Tensor, Tensor]:
    """Evenly spaced snapshots of the course problem: times (F,) and fields (F, n+1, n+1) on the CPU,
    t = 0 and t_end included (F <= num_frames when there are fewer steps than frames)."""
    problem = course_problem(omega, k_in, k_out)
    if problem.batch_size != 1:
        raise ValueError("omega, k_in and k_out must be single numbers in solve_frames")
    result = simulate(
        problem, n, dt, t_end, rtol=rtol, max_iter=max_iter, device=device,
        num_frames=num_frames, preconditioner=preconditioner,
    )
    return result.times, result.frames[:, 0]
