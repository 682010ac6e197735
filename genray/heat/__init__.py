"""2-D heat equation with a discontinuous conductivity, solved implicitly in PyTorch, and its pictures.

    >>> from genray.heat import solve, render_png
    >>> u = solve(n=128, dt=1e-3, t_end=0.1)          # (129, 129) float64, indexed [i1, i2]
    >>> u32 = solve(n=128, dt=1e-3, t_end=0.1, dtype="float32")  # float32 fields and CG, rtol 1e-5
    >>> png = render_png(u, title="t = 0.1")            # bytes of a PNG heat map

The parts, one module each:
    problem     the PDE (HeatProblem), the grid, and the course problem: triangle, conductivity, boundary
    operator    the implicit finite-difference operator, matrix-free (harmonic-mean faces, 5-point stencil)
    multigrid   the V-cycle preconditioner
    pcg         batched preconditioned conjugate gradients
    stepper     backward Euler steps (HeatStepper), simulate, and solve / solve_batch / solve_frames
    render      PNG and GIF pictures of fields
"""

from genray.heat.problem import TRIANGLE, HeatProblem, conductivity_field, course_problem, grid
from genray.heat.render import render_gif, render_png
from genray.heat.stepper import (
    DEFAULT_RTOL,
    DTYPES,
    MAX_SOLVER_BYTES,
    MIN_RTOL,
    PRECONDITIONERS,
    HeatResult,
    HeatStepper,
    simulate,
    solve,
    solve_batch,
    solve_frames,
)

__all__ = [
    "DEFAULT_RTOL",
    "DTYPES",
    "MAX_SOLVER_BYTES",
    "MIN_RTOL",
    "PRECONDITIONERS",
    "TRIANGLE",
    "HeatProblem",
    "HeatResult",
    "HeatStepper",
    "conductivity_field",
    "course_problem",
    "grid",
    "render_gif",
    "render_png",
    "simulate",
    "solve",
    "solve_batch",
    "solve_frames",
]
