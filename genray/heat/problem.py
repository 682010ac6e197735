"""The heat problem: a PDE on the unit square, and the course problem as one instance of it.

    du/dt = sum_a d/dx_a (k du/dx_a) - u        on [0, 1]^2,  t > 0
    k = k_in inside the triangle A(0.2, 0.5) B(0.7, 0.2) C(0.5, 0.8), k_out outside
    u(x, 0) = 0;  u = 1 - exp(-omega t) on x1 = 0 and x2 = 0;  u = 0 on x1 = 1 and x2 = 1.

Fields live on the grid x_i = i / n, i = 0..n, in both directions, indexed [i1, i2].
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

# Vertices (x1, x2) of the high-conductivity triangle of the course problem.
TRIANGLE: tuple[tuple[float, float], ...] = ((0.2, 0.5), (0.7, 0.2), (0.5, 0.8))

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
