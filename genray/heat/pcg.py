"""Preconditioned conjugate gradients, vectorised over a batch of independent systems.

Warm-started from a given guess and stopped on the true relative residual ||b - A x|| / ||b|| <= rtol.
The operator, its residual and the preconditioner are plain callables on (B, m1, m2) tensors, so any
matrix-free operator (operator.Stencil) and any preconditioner (multigrid.Multigrid) fit.
"""

from __future__ import annotations

import math
from typing import Callable

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


def pcg(
    apply: Callable[[Tensor], Tensor],
    residual: Callable[[Tensor, Tensor], Tensor],
    precondition: Callable[[Tensor], Tensor],
    b: Tensor,
    x: Tensor,
    rtol: float,
    max_iter: int,
    check_every: int = 1,
    first_check: int = 1,
) -> tuple[Tensor, Tensor, Tensor, int]:
    """Solve A x = b for a batch (B, m1, m2) from the initial guess x (updated in place).

    Each member stops when its true relative residual ||b - A x|| / ||b|| <= rtol; converged members are
    frozen (step length 0) while the others go on. The loop watches CG's recurrence for the residual and
    then checks the true residual: if they drifted apart, CG restarts from x; if a restart no longer
    halves the true residual, that member has reached the roundoff floor of the working precision (an
    ill-conditioned system asked for a tiny rtol) and stops there, its residual reporting what was reached.
    beta is the Polak-Ribiere ("flexible CG") formula, so the float32 preconditioner's rounding, which
    makes it very slightly nonlinear, does not spoil convergence.

    Reads to the host: "is any member still active?" is read (on a GPU a sync: the host waits for all
    the work queued so far) after iteration first_check, then every check_every iterations; after a
    restart, every check_every. A frozen member's x, residual and count do not change, so x,
    iterations and residuals are the same for every schedule: a read that comes late only costs
    iterations in which every member is frozen, and max_iter counts those.
    Returns x, iterations (B,) int64 (each member's own), final true relative residuals (B,), and the
    iterations run before the first true-residual check (a host int, 0 if none ran; restarts left
    out): what the next warm-started solve will about need, for its first_check.
    """
    bnorm = _norm(b)
    bnorm = torch.where(bnorm > 0, bnorm, torch.ones_like(bnorm))  # b = 0: absolute residual
    iterations = torch.zeros(b.shape[0], dtype=torch.int64, device=b.device)
    total, last = 0, torch.full_like(bnorm, math.inf)
    next_check, first_pass = first_check, 0
    while True:
        r = residual(b, x)
        rel = _norm(r) / bnorm
        active = (rel > rtol) & (rel < 0.5 * last)  # (B,) still to solve and still making progress
        last = rel
        if not bool(active.any()):
            return x, iterations, rel, first_pass
        if total >= max_iter:
            raise RuntimeError(
                f"CG did not reach rtol={rtol:g} in max_iter={max_iter} iterations (relative residual "
                f"{rel.max().item():.3g}); raise max_iter or rtol"
            )
        z = precondition(r)
        p = z.clone()
        rz = _dot(r, z)
        since_restart = 0
        while total < max_iter:
            q = apply(p)
            alpha = torch.where(active, _safe_div(rz, _dot(p, q)), torch.zeros_like(rz))  # (B,)
            x.addcmul_(alpha.view(-1, 1, 1), p)
            r.addcmul_(alpha.view(-1, 1, 1), q, value=-1.0)
            iterations += active.long()
            total += 1
            since_restart += 1
            active = active & (_norm(r) / bnorm > rtol)
            if since_restart >= next_check:  # the loop's one read to the host
                if not bool(active.any()):
                    break
                next_check = since_restart + check_every
            z_old, z = z, precondition(r)
            rz_new = _dot(r, z)
            beta = _safe_div(rz_new - _dot(r, z_old), rz)  # Polak-Ribiere
            p.mul_(beta.view(-1, 1, 1)).add_(z)
            rz = rz_new
        next_check, first_pass = check_every, first_pass or total
        # loop back: check the true residual, then stop or restart
