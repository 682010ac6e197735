"""Backward Euler time stepping of a HeatProblem, and the entry points for the course problem.

Each step builds the right-hand side from the previous field and the Dirichlet data, and solves the
step operator (operator.heat_operator) with PCG (pcg.pcg), warm-started from the previous step, with one
multigrid V-cycle (multigrid.Multigrid) as the default preconditioner.
Steps: round(t_end / dt), the step adjusted to t_end / steps so the run ends at t_end exactly.

Devices and precision: every tensor lives on `device` (default: CUDA when available). The solution and
CG run in `dtype`, float64 (the default) or float32; the V-cycle runs in float32 either way
(preconditioner="multigrid64" keeps it in float64). The operator, its conductivities and the multigrid
hierarchy are built in float64 whatever the dtype and only then rounded, so float32 loses digits only
where it must: in the stored coefficients and the arithmetic of the steps. Pure torch, no Ray, so the
solver runs without a cluster.
"""

from __future__ import annotations

import contextlib
import math
import numbers
import warnings
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

from genray.heat.multigrid import Multigrid
from genray.heat.operator import face_conductivities, heat_operator
from genray.heat.pcg import CGIteration, CGWork, pcg
from genray.heat.problem import HeatProblem, course_problem, grid

# Memory limit for one solve (device memory, plus host memory for frames): the estimate below must
# stay under it. 4 GiB fits a laptop and a GPU; for batch 1 it allows n up to about 3600.
MAX_SOLVER_BYTES = 4 * 2**30
# Float64 grid-sized arrays per batch member at the peak, which is the multigrid set-up: the operator
# and its diffusion part (3 arrays each), node and face conductivities, the 8 neighbour-coupling arrays
# the transfer weights are computed from, probes; then u, b, CG's r/z/p/q and the V-cycle's work arrays.
# The peak RSS at n = 1024 is 31 such arrays (float32 cycle) and 35 (float64 cycle).
_ARRAYS_PER_GRID = 40

# "multigrid": V-cycle in float32 (default); "multigrid64": the same in float64; "jacobi": diagonal.
PRECONDITIONERS = ("multigrid", "multigrid64", "jacobi", "none")

# Working precisions of the solution and CG, by name.
DTYPES = {"float64": torch.float64, "float32": torch.float32}
# rtol when none is given, and the smallest that may be asked for, per dtype. ||b - A u|| is computed in
# the working precision, so it cannot be resolved below about eps * ||A|| ||u|| / ||b||, which is >= eps
# (float64 2.2e-16, float32 1.2e-7) and grows with k * dt * n^2. Measured in float32 on the course
# problem at dt = 1e-3, CG's true residual stalls at 2e-7 (n = 64), 7e-7 (512), 1.1e-6 (1024) and
# 1.5e-6 (2048); with k_in = 1000, dt = 1e-2 at 1.4e-4 (256). So the floors are 1e-14 and 1e-6, and
# float32's default, 1e-5, sits a decade above its floor at every n up to 2048 for the course problem.
# An rtol under the floor is refused (ValueError), not clamped: a caller who asks for 1e-10 in float32
# wants digits float32 does not have, and should hear so rather than silently get fewer. Above the
# floor, a system too ill-conditioned for the rtol stalls at its own floor and `simulate` warns (pcg).
DEFAULT_RTOL = {"float64": 1e-10, "float32": 1e-5}
MIN_RTOL = {"float64": 1e-14, "float32": 1e-6}


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


def _dtype_name(dtype) -> str:
    """"float64" or "float32" from a name or a torch dtype; ValueError for anything else."""
    for name, torch_dtype in DTYPES.items():
        if dtype == name or dtype is torch_dtype:
            return name
    raise ValueError(f"dtype must be one of {tuple(DTYPES)} (or the torch dtypes), got {dtype!r}")


def _rtol(rtol, dtype: str) -> float:
    """The dtype's default rtol when none is given; ValueError if it is out of [MIN_RTOL[dtype], 1)."""
    if rtol is None:
        return DEFAULT_RTOL[dtype]
    low = MIN_RTOL[dtype]
    if not (_is_real(rtol) and low <= rtol < 1):
        why = "" if dtype == "float64" else (
            f": float32 does not resolve ||b - A u|| / ||b|| below about {low:g} (its roundoff is 1.2e-7);"
            " use dtype='float64' for a smaller rtol")
        raise ValueError(f"rtol must be in [{low:g}, 1) for dtype {dtype}, got {rtol!r}{why}")
    return float(rtol)


def _validate(n, dt, t_end, max_iter, batch: int, frames: int = 0) -> None:
    if not _is_int(n):
        raise ValueError(f"n must be an int >= 2, got {n!r}")
    n = int(n)
    if n < 2:
        raise ValueError(f"n must be >= 2, got {n}")
    if not (_is_real(dt) and math.isfinite(dt) and dt > 0):
        raise ValueError(f"dt must be finite and > 0, got {dt!r}")
    if not (_is_real(t_end) and math.isfinite(t_end) and t_end >= 0):
        raise ValueError(f"t_end must be finite and >= 0, got {t_end!r}")
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


class HeatStepper:
    """Backward Euler steps of a HeatProblem on an n x n-cell grid with a fixed step dt.

    Builds the operator (I/dt + c) - L_h and its preconditioner once; `step` advances a batch of full
    fields (B, n+1, n+1) from t to t + dt. Also the building block of the benchmark.
    dtype: the precision of the fields and of CG, "float64" (default) or "float32" (or the torch
    dtypes); rtol: default DEFAULT_RTOL[dtype], at least MIN_RTOL[dtype] (ValueError below it: refused,
    not clamped).

    When CG reads "is any member still active?" to the host (see pcg; on a GPU each read is a sync);
    fields, iteration counts and residuals are the same whatever is chosen:
    predict_checks: skip the reads that the previous step says cannot succeed yet: the first comes one
        iteration before the previous step's count. Warm-started steps take nearly the same count, so a
        step reads 4 times (twice the true residual, twice CG's recurrence), not count + 2 times.
        Default: on CUDA only, where a read is a sync; on the CPU a read costs nothing.
    check_every: after the first read, read every this many iterations (default 1). A late read costs
        iterations in which every member is frozen, each a full operator application and V-cycle,
        where a sync costs about one kernel launch: raise it only where that balance is measured.

    compile: run CG's iterations compiled (pcg.CGIteration): each half of an iteration (the update of
        x and r; the V-cycle and the next direction) is one torch.compile'd graph, and on CUDA one
        CUDA graph, replayed as one launch where eager PyTorch launches ~300 kernels per V-cycle. For
        large grids on a GPU, where launching kernels, not the GPU, bounds eager steps; on the CPU it
        is slower than eager. The graphs compile on the first step (on this project's 2-core CPU
        10-30 s at n = 64, 30-100 s at n = 256 and 512) and every later step of this stepper reuses
        them; results match eager ones to roundoff (inductor fuses and reorders sums), iteration
        counts to within one. The compiled steps run under torch.inference_mode. Make one compiled
        stepper per run, not one per request: each compiles anew, and a process may compile at most
        256 (torch._dynamo.config.accumulated_recompile_limit; FailOnRecompileLimitHit after that).
    """

    def __init__(
        self,
        problem: HeatProblem,
        n: int,
        dt: float,
        *,
        rtol: float | None = None,
        max_iter: int | None = None,
        device=None,
        preconditioner: str = "multigrid",
        dtype: str | torch.dtype = "float64",
        check_every: int = 1,
        predict_checks: bool | None = None,
        compile: bool = False,
    ):
        self.dtype_name = _dtype_name(dtype)
        rtol = _rtol(rtol, self.dtype_name)
        _validate(n, dt, 0.0, max_iter, problem.batch_size)
        if preconditioner not in PRECONDITIONERS:
            raise ValueError(f"preconditioner must be one of {PRECONDITIONERS}, got {preconditioner!r}")
        if not math.isfinite(problem.reaction) or problem.reaction < 0:
            raise ValueError(f"reaction must be finite and >= 0, got {problem.reaction!r}")
        self.problem, self.n, self.dt, self.rtol = problem, int(n), float(dt), rtol
        self.dtype = DTYPES[self.dtype_name]
        # Default cap: multigrid needs ~10 iterations; Jacobi / no preconditioner need O(n).
        self.max_iter = max_iter if max_iter is not None else 1000 + 10 * self.n
        n = self.n
        self.device = _default_device(device)
        if not (_is_int(check_every) and check_every >= 1):
            raise ValueError(f"check_every must be an int >= 1, got {check_every!r}")
        self.check_every = int(check_every)
        self.predict_checks = self.device.type == "cuda" if predict_checks is None else bool(predict_checks)
        self._previous_iterations = 0  # the last solve's first CG pass, in iterations (0: none yet)
        self.batch = problem.batch_size
        self.x1, self.x2 = grid(n, self.device)  # (n+1, n+1) each, float64 whatever the dtype

        # The operator and the multigrid hierarchy are built in float64, then rounded to self.dtype.
        k = self._field(problem.conductivity(self.x1, self.x2), torch.float64)  # (B, n+1, n+1)
        if not bool(torch.isfinite(k).all()) or not bool((k > 0).all()):
            raise ValueError("conductivity must be finite and > 0 at every node")
        kx, ky = face_conductivities(k)  # (B, n, n-1), (B, n-1, n)
        # The step operator A = (1/dt + c) I - L_h, a callable on interior values (B, n-1, n-1).
        apply = heat_operator(kx, ky, n, 1.0 / self.dt + problem.reaction)
        self.apply = apply if self.dtype == torch.float64 else apply.to(self.dtype)
        self.kx, self.ky = kx.to(self.dtype), ky.to(self.dtype)  # for the right-hand side's boundary terms
        if preconditioner in ("multigrid", "multigrid64"):
            diffusion = heat_operator(kx, ky, n, 0.0)
            cycle_dtype = torch.float32 if preconditioner == "multigrid" else torch.float64
            self.precondition = Multigrid(apply, diffusion, n, cycle_dtype)  # from the float64 operator
            constants = self.precondition.tensors()
        elif preconditioner == "jacobi":
            dinv = 1.0 / self.apply.diag
            self.precondition = lambda r: dinv * r
            constants = (dinv,)
        else:
            self.precondition = lambda r: r.clone()
            constants = ()
        self.compile = bool(compile)
        self._compiled: CGIteration | None = None  # compiled on the first solve
        if self.compile:
            work = CGWork((self.batch, n - 1, n - 1), self.dtype, self.device)
            self._compiled = CGIteration(self.apply, self.precondition, work, self.rtol, compile=True,
                                         constants=self.apply.tensors() + constants)

    def coefficients(self) -> dict[str, Tensor]:
        """The step operator's 5-point stencil, for assembling it elsewhere (benchmarks, checks):
        "diag" (B, n-1, n-1); "x1" (B, n-2, n-1), couplings of interior nodes (i, j) - (i+1, j);
        "x2" (B, n-1, n-2), couplings (i, j) - (i, j+1). (A u)_p = diag_p u_p - sum of couplings * u_q."""
        op = self.apply
        return {"diag": op.diag, "x1": op.couplings[(1, 0)], "x2": op.couplings[(0, 1)]}

    def _field(self, value, dtype: torch.dtype | None = None) -> Tensor:
        """Broadcast a problem function's output to a (B, n+1, n+1) tensor in `dtype` (default the
        working dtype). The problem's functions compute in float64; only their values are rounded."""
        size = (self.batch, self.n + 1, self.n + 1)
        return torch.as_tensor(value, dtype=dtype or self.dtype, device=self.device).expand(size)

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
        first_check = max(1, self._previous_iterations - 1) if self.predict_checks else self.check_every
        if self._compiled is None:
            iteration = CGIteration(self.apply, self.precondition, CGWork(b.shape, b.dtype, b.device), self.rtol)
        else:
            iteration = self._compiled
        # Compiled parts guard on grad mode, and refuse to recompile: run them in inference mode
        # whatever the caller's mode (in-place writes to the caller's x are allowed there).
        with torch.inference_mode() if self._compiled is not None else contextlib.nullcontext():
            x, iterations, residuals, self._previous_iterations = pcg(
                iteration, self.apply.residual, b, x, self.max_iter, self.check_every, first_check
            )
        return x, iterations, residuals

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

    u: Tensor  # (B, n+1, n+1) at t_end, on the solver's device, in its dtype
    dt: float  # step actually used: t_end / steps
    iterations: Tensor  # (steps, B) int64: CG iterations of each step
    residuals: Tensor  # (steps, B) float64: final true relative residual ||b - Au|| / ||b|| of each step
    times: Tensor  # (F,) float64 frame times (just t_end when no frames were asked for)
    frames: Tensor | None  # (F, B, n+1, n+1) in the solver's dtype, or None

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
    rtol: float | None = None,
    max_iter: int | None = None,
    device=None,
    num_frames: int | None = None,
    preconditioner: str = "multigrid",
    dtype: str | torch.dtype = "float64",
    compile: bool = False,
) -> HeatResult:
    """Integrate `problem` to t_end with round(t_end / dt) backward Euler steps (see `_time_grid`:
    the step is adjusted uniformly to t_end / steps so the run ends exactly at t_end).

    rtol: CG stops at ||b - A u|| <= rtol ||b|| in every step (a RuntimeWarning says so if roundoff
        stops it earlier); default DEFAULT_RTOL[dtype], at least MIN_RTOL[dtype]. max_iter: CG
        iterations allowed per step (default 1000 + 10 n; RuntimeError if exceeded). device: default
        CUDA when available. num_frames: keep this many evenly spaced fields (t = 0 and t_end
        included; fewer if there are fewer steps) in `HeatResult.frames`. preconditioner: one of
        PRECONDITIONERS. dtype: "float64" or "float32", the precision of the fields and of CG.
        compile: CG's iterations compiled (HeatStepper's `compile`: for large grids on a GPU).
    Raises ValueError naming the argument for out-of-range input, including grids too large for
    MAX_SOLVER_BYTES.
    """
    if num_frames is not None and not (_is_int(num_frames) and num_frames >= 2):
        raise ValueError(f"num_frames must be an int >= 2, got {num_frames!r}")
    dtype = _dtype_name(dtype)
    rtol = _rtol(rtol, dtype)
    _validate(n, dt, t_end, max_iter, problem.batch_size, num_frames or 0)
    steps, step_dt = _time_grid(float(dt), float(t_end))
    with torch.inference_mode():
        stepper = HeatStepper(
            problem, n, step_dt, rtol=rtol, max_iter=max_iter, device=device, preconditioner=preconditioner,
            dtype=dtype, compile=compile,
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
            f"CG stalled at relative residual {residuals.max().item():.2e} > rtol={rtol:g} ({dtype} roundoff "
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


def solve(
    n: int,
    dt: float,
    t_end: float,
    omega: float = 20.0,
    k_in: float = 50.0,
    k_out: float = 1.0,
    *,
    rtol: float | None = None,
    max_iter: int | None = None,
    device=None,
    preconditioner: str = "multigrid",
    dtype: str | torch.dtype = "float64",
    compile: bool = False,
) -> Tensor:
    """u at t_end for the course problem: (n+1, n+1) in `dtype`, indexed [i1, i2] on x_i = i/n.
    Keywords as in `simulate`."""
    for name, value in (("omega", omega), ("k_in", k_in), ("k_out", k_out)):
        if not _is_real(value):
            raise ValueError(f"{name} must be a real number, got {value!r}; use solve_batch for several")
    problem = course_problem(omega, k_in, k_out)
    result = simulate(
        problem, n, dt, t_end, rtol=rtol, max_iter=max_iter, device=device, preconditioner=preconditioner,
        dtype=dtype, compile=compile,
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
    rtol: float | None = None,
    max_iter: int | None = None,
    device=None,
    preconditioner: str = "multigrid",
    dtype: str | torch.dtype = "float64",
    compile: bool = False,
) -> Tensor:
    """u at t_end for B parameter sets at once: (B, n+1, n+1). Scalars broadcast to the batch;
    CG runs on the whole batch together (one operator application per iteration for all members)."""
    problem = course_problem(omega, k_in, k_out)
    result = simulate(
        problem, n, dt, t_end, rtol=rtol, max_iter=max_iter, device=device, preconditioner=preconditioner,
        dtype=dtype, compile=compile,
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
    rtol: float | None = None,
    max_iter: int | None = None,
    device=None,
    preconditioner: str = "multigrid",
    dtype: str | torch.dtype = "float64",
    compile: bool = False,
) -> tuple[Tensor, Tensor]:
    """Evenly spaced snapshots of the course problem: times (F,) and fields (F, n+1, n+1) on the CPU,
    t = 0 and t_end included (F <= num_frames when there are fewer steps than frames)."""
    problem = course_problem(omega, k_in, k_out)
    if problem.batch_size != 1:
        raise ValueError("omega, k_in and k_out must be single numbers in solve_frames")
    result = simulate(
        problem, n, dt, t_end, rtol=rtol, max_iter=max_iter, device=device,
        num_frames=num_frames, preconditioner=preconditioner, dtype=dtype, compile=compile,
    )
    return result.times, result.frames[:, 0]
