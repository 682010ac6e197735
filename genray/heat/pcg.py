"""Preconditioned conjugate gradients, vectorised over a batch of independent systems.

Warm-started from a given guess and stopped on the true relative residual ||b - A x|| / ||b|| <= rtol.
The operator, its residual and the preconditioner are plain callables on (B, m1, m2) tensors, so any
matrix-free operator (operator.Stencil) and any preconditioner (multigrid.Multigrid) fit.

The loop (`pcg`) runs on the host and reads convergence to it; the device work of an iteration is a
`CGIteration` on a `CGWork`, in two parts that read and write only the work's tensors, in place. So the
same parts run eagerly or compiled (`CGIteration(..., compile=True)`): one torch.compile'd graph each,
recorded as a CUDA graph on a GPU, which replays each part (a V-cycle is ~300 kernels) as one launch.
"""

from __future__ import annotations

import math
from typing import Callable, Iterable

import torch
from torch import Tensor


def _dot(a: Tensor, b: Tensor) -> Tensor:
    return (a * b).sum(dim=(1, 2))  # (B,)


def _norm(a: Tensor) -> Tensor:
    return torch.linalg.vector_norm(a, dim=(1, 2))  # (B,)


def _safe_div(num: Tensor, den: Tensor) -> Tensor:
    """num / den, 0 where den == 0 (a converged or exactly solved member)."""
    ok = den != 0
    return torch.where(ok, num / torch.where(ok, den, torch.ones_like(den)), torch.zeros_like(num))


class CGWork:
    """Every tensor a PCG iteration reads or writes, allocated once and then only written in place.

    x, r, p, z (B, m1, m2): the iterate, its residual, the search direction, the preconditioned
    residual; rz (B,) = <r, z>; bnorm (B,) = ||b|| (1 where b = 0); active (B,) bool: members still
    iterating; iterations (B,) int64: each member's count. Fixed addresses are what a CUDA graph
    replays, and what lets a compiled iteration write its results without returning tensors (a CUDA
    graph's outputs are overwritten by its next replay).
    """

    def __init__(self, shape: tuple[int, int, int], dtype: torch.dtype, device: torch.device | str):
        def zeros(*size: int, dtype: torch.dtype = dtype) -> Tensor:
            return torch.zeros(size, dtype=dtype, device=device)

        self.x, self.r, self.p, self.z = (zeros(*shape) for _ in range(4))
        self.rz, self.bnorm = zeros(shape[0]), zeros(shape[0])
        self.active = zeros(shape[0], dtype=torch.bool)
        self.iterations = zeros(shape[0], dtype=torch.int64)

    def tensors(self) -> tuple[Tensor, ...]:
        return self.x, self.r, self.p, self.z, self.rz, self.bnorm, self.active, self.iterations


class CGIteration:
    """One PCG iteration on `work`, in the two parts between which the host may read convergence.

    `update` steps x and r along p and freezes the members that reached rtol; `direction` preconditions
    r and makes the next p (Polak-Ribiere beta: "flexible CG", so the float32 preconditioner's rounding,
    which makes it very slightly nonlinear, does not spoil convergence). Neither reads a tensor to the
    host, and both only write `work` in place.

    compile=True: each part becomes one torch.compile'd graph (fullgraph: a graph break raises;
    dynamic=False: a stepper's shapes are fixed), mode "reduce-overhead" on CUDA, so that each part is
    recorded once as a CUDA graph and then replayed as one launch, and the default mode elsewhere (the
    CPU has no CUDA graphs; inductor still fuses the stencil passes). Each part compiles on its first
    call and never again: its own cache (isolate_recompiles) with room for one entry, so anything that
    would recompile it raises (torch._dynamo.exc.FailOnRecompileLimitHit) instead of silently running a
    second graph. The work's tensors and `constants` (the tensors apply and precondition read, which
    never change) are marked static, fixed addresses: a CUDA graph then neither copies them in before
    each replay nor is skipped for writing the work in place.
    """

    def __init__(
        self,
        apply: Callable[[Tensor], Tensor],
        precondition: Callable[[Tensor], Tensor],
        work: CGWork,
        rtol: float,
        *,
        compile: bool = False,
        constants: Iterable[Tensor] = (),
    ):
        self.apply, self.precondition, self.work, self.rtol = apply, precondition, work, float(rtol)
        if compile:
            for t in (*work.tensors(), *constants):
                torch._dynamo.mark_static_address(t)
            options = dict(fullgraph=True, dynamic=False, recompile_limit=1, isolate_recompiles=True,
                           mode="reduce-overhead" if work.x.device.type == "cuda" else None)
            self.update = torch.compile(self.update, **options)
            self.direction = torch.compile(self.direction, **options)

    def update(self) -> None:
        w = self.work
        q = self.apply(w.p)  # (B, m1, m2)
        # Step length (B, 1, 1); 0 for frozen members, so their x, r and count stay as they are.
        alpha = torch.where(w.active, _safe_div(w.rz, _dot(w.p, q)), torch.zeros_like(w.rz)).view(-1, 1, 1)
        w.x.addcmul_(alpha, w.p)
        w.r.addcmul_(alpha, q, value=-1.0)
        w.iterations.add_(w.active.long())
        w.active.logical_and_(_norm(w.r) / w.bnorm > self.rtol)

    def direction(self) -> None:
        w = self.work
        z = self.precondition(w.r)
        rz = _dot(w.r, z)
        beta = _safe_div(rz - _dot(w.r, w.z), w.rz)  # Polak-Ribiere; 0 after a restart (rz = 0)
        w.p.mul_(beta.view(-1, 1, 1)).add_(z)
        w.z.copy_(z)
        w.rz.copy_(rz)


def pcg(
    iteration: CGIteration,
    residual: Callable[[Tensor, Tensor], Tensor],
    b: Tensor,
    x: Tensor,
    max_iter: int,
    check_every: int = 1,
    first_check: int = 1,
) -> tuple[Tensor, Tensor, Tensor, int]:
    """Solve A x = b for a batch (B, m1, m2) from the initial guess x (updated in place), with
    `iteration`'s operator, preconditioner and rtol; `residual(b, x)` = b - A x.

    Each member stops when its true relative residual ||b - A x|| / ||b|| <= rtol; converged members are
    frozen (step length 0) while the others go on. The loop watches CG's recurrence for the residual and
    then checks the true residual: if they drifted apart, CG restarts from x; if a restart no longer
    halves the true residual, that member has reached the roundoff floor of the working precision (an
    ill-conditioned system asked for a tiny rtol) and stops there, its residual reporting what was reached.

    Reads to the host: "is any member still active?" is read (on a GPU a sync: the host waits for all
    the work queued so far) after iteration first_check, then every check_every iterations; after a
    restart, every check_every. A frozen member's x, residual and count do not change, so x,
    iterations and residuals are the same for every schedule: a read that comes late only costs
    iterations in which every member is frozen, and max_iter counts those.
    Returns x, iterations (B,) int64 (each member's own), final true relative residuals (B,), and the
    iterations run before the first true-residual check (a host int, 0 if none ran; restarts left
    out): what the next warm-started solve will about need, for its first_check.
    """
    w, rtol = iteration.work, iteration.rtol
    bnorm = _norm(b)
    w.bnorm.copy_(torch.where(bnorm > 0, bnorm, torch.ones_like(bnorm)))  # b = 0: absolute residual
    w.x.copy_(x)
    w.iterations.zero_()
    total, last = 0, torch.full_like(bnorm, math.inf)
    next_check, first_pass = first_check, 0
    while True:
        r = residual(b, w.x)
        rel = _norm(r) / w.bnorm
        active = (rel > rtol) & (rel < 0.5 * last)  # (B,) still to solve and still making progress
        last = rel
        if not bool(active.any()):
            return x.copy_(w.x), w.iterations.clone(), rel, first_pass
        if total >= max_iter:
            raise RuntimeError(
                f"CG did not reach rtol={rtol:g} in max_iter={max_iter} iterations (relative residual "
                f"{rel.max().item():.3g}); raise max_iter or rtol"
            )
        w.r.copy_(r)
        w.active.copy_(active)
        for t in (w.p, w.z, w.rz):  # a restart: no previous direction, so the first p is z itself
            t.zero_()
        iteration.direction()
        since_restart = 0
        while total < max_iter:
            iteration.update()
            total += 1
            since_restart += 1
            if since_restart >= next_check:  # the loop's one read to the host
                if not bool(w.active.any()):
                    break
                next_check = since_restart + check_every
            iteration.direction()
        next_check, first_pass = check_every, first_pass or total
        # loop back: check the true residual, then stop or restart
