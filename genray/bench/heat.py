"""Benchmark of the heat solver against scipy and pyamg on the same machine, same problem, same dt.

For each n: the course problem is advanced to a warm state (a few steps), then every method does one
untimed step and `steps` timed steps from that same state, with the same right-hand sides (built by
genray, included in every method's time) and the same stopping rule ||b - A u|| <= rtol ||b||:

    genray multigrid      PCG, matrix-free in torch, float32 V-cycle preconditioner (the default)
    genray multigrid64    the same with a float64 V-cycle
    scipy splu            sparse LU factorised once (setup), then one pair of triangular solves a step
    scipy cg + jacobi     scipy.sparse.linalg.cg, diagonal preconditioner
    pyamg sa + cg         smoothed aggregation AMG (set up once) as the preconditioner of scipy's cg

Also: the bandwidth one application of the operator achieves (a minimal traffic model: read u, the
diagonal and the two coupling arrays, write A u) against a large torch tensor copy.

    python -m genray.bench.heat --sizes 128 256 512 --out runs/bench/heat.json

`step_times` times genray's solver alone, per grid size and working precision, on one device (no
scipy or pyamg): the heat part of `genray bench gpu` (genray.bench.gpu), on a GPU and on the CPU cores.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from genray.bench.claims import HEADER, Claim, claim_row
from genray.heat import HeatStepper, course_problem, simulate

METHODS = ("genray multigrid", "genray multigrid64", "scipy splu", "scipy cg + jacobi", "pyamg sa + cg")
_REFERENCE = "scipy splu"  # the direct solve every answer is compared with
_BEST_OF = ("scipy splu", "pyamg sa + cg")  # the target: genray within 2x of the faster of these

# The declared claims (genray.bench.claims), fixed before the runs that decide them: at each size,
# genray's default solver (float32 V-cycle) takes at most twice the time per step of the faster of
# scipy's direct solve and pyamg's AMG-preconditioned CG, on the run's own medians. One measurement
# (no training seed); a run with another dt, tolerance or step count measures nothing towards them.
HEAT_BUDGET = {"dt": 1e-3, "rtol": 1e-10, "steps": 5, "warmup": 3}
HEAT_CLAIMS = {
    n: Claim(key=f"heat_multigrid_{n}", metric="ms per step / the faster baseline's", target=2.0, direction="<=",
             text=f"genray multigrid / the faster of scipy splu and pyamg sa + cg, ms per step, n = {n}",
             budget={**HEAT_BUDGET, "n": n}, seeds=(0,))
    for n in (128, 256, 512)
}


def _device(device: str | torch.device | None) -> torch.device:
    """The device asked for, default CUDA when available."""
    return torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _machine(device: torch.device) -> dict:
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    info = {
        "platform": platform.platform(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "blas_threads": _blas_threads(),
        "device": str(device),
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def _blas_threads() -> int | None:
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return None
    counts = [pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"]
    return max(counts) if counts else None


def _versions() -> dict:
    import scipy

    versions = {"python": platform.python_version(), "torch": torch.__version__, "scipy": scipy.__version__,
                "numpy": np.__version__}
    versions["pyamg"] = _pyamg().__version__
    return versions


class MissingBaseline(ImportError):
    """A baseline the bench's target is measured against is not installed."""


def _pyamg():
    """pyamg, whose AMG-preconditioned CG is one half of the bench's target ("genray within 2x of
    the faster of splu and pyamg"): without it the bench cannot decide that target, so it stops."""
    try:
        import pyamg
    except ImportError as err:
        raise MissingBaseline(
            f"genray bench heat needs pyamg to time its 'pyamg sa + cg' row ({err}); it is pinned in "
            "genray's test extra (pyproject.toml): pip install -e '.[test]' (or pip install pyamg==5.4.1)"
        ) from err
    return pyamg


def _scipy_matrix(stepper: HeatStepper):
    """The step operator as a scipy CSR matrix, nodes in row-major (i1, i2) order."""
    import scipy.sparse as sp

    c = {name: t[0].detach().cpu().numpy() for name, t in stepper.coefficients().items()}
    m = c["diag"].shape[0]
    along_x1 = -c["x1"].ravel()  # node p = i*m + j couples to p + m
    along_x2 = -np.pad(c["x2"], ((0, 0), (0, 1))).ravel()[:-1]  # p couples to p + 1 (not across rows)
    bands = [c["diag"].ravel(), along_x1, along_x1, along_x2, along_x2]
    return sp.diags(bands, [0, m, -m, 1, -1], format="csr")


def _copy_bandwidth(device: torch.device, mib: int = 256, repeats: int = 5) -> float:
    """Bytes per second of dst.copy_(src) on a large float64 tensor (read + write counted)."""
    src = torch.ones(mib * 2**20 // 8, dtype=torch.float64, device=device)
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        dst.copy_(src)
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * src.numel() * 8 / best


def _operator_bandwidth(stepper: HeatStepper, repeats: int = 20) -> dict:
    m = stepper.n - 1
    x = torch.rand(1, m, m, dtype=torch.float64, device=stepper.device)
    for _ in range(3):
        stepper.apply(x)
    times = []
    for _ in range(repeats):
        _sync(stepper.device)
        start = time.perf_counter()
        stepper.apply(x)
        _sync(stepper.device)
        times.append(time.perf_counter() - start)
    seconds = min(times)
    moved = 8 * (3 * m * m + 2 * m * (m - 1))  # read u, diag, 2 coupling arrays; write A u
    return {"n": stepper.n, "seconds": seconds, "bytes": moved, "bytes_per_second": moved / seconds}


@dataclass
class _Method:
    """One solver's own trajectory through the benchmark's steps."""

    name: str
    solve: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, int | None]]  # (b, x0) -> (x, its)
    setup_seconds: float
    u: torch.Tensor  # current field (1, n+1, n+1)
    history: list = field(default_factory=list)  # fields after each step, on the CPU
    step_seconds: list = field(default_factory=list)  # wall clock of each timed step
    step_cpu_seconds: list = field(default_factory=list)  # this process's CPU time of each timed step
    iterations: list = field(default_factory=list)


def _advance(stepper: HeatStepper, method: _Method, t: float) -> tuple[float, float, int | None]:
    """One step t -> t + dt of `method`: right-hand side (genray's, for everyone), solve, new field.
    Returns wall seconds, CPU seconds and CG iterations (None for a direct solve)."""
    _sync(stepper.device)
    start, start_cpu = time.perf_counter(), time.process_time()
    g = stepper.boundary(t + stepper.dt)
    b = stepper.rhs(method.u, t + stepper.dt, g)
    x, iterations = method.solve(b, method.u[:, 1:-1, 1:-1])
    u = g.clone()
    u[:, 1:-1, 1:-1] = x
    _sync(stepper.device)
    elapsed, elapsed_cpu = time.perf_counter() - start, time.process_time() - start_cpu
    method.u = u
    method.history.append(u.cpu())
    return elapsed, elapsed_cpu, iterations


def _scipy_cg(matrix, rtol: float, preconditioner=None, maxiter: int = 20000):
    """solve(b, x0) for scipy's cg with an optional preconditioner, counting iterations."""
    from scipy.sparse.linalg import cg

    def solve(b: torch.Tensor, x0: torch.Tensor):
        count = [0]

        def callback(_):
            count[0] += 1

        x, info = cg(matrix, b.cpu().numpy().ravel(), x0=x0.cpu().numpy().ravel(), rtol=rtol, atol=0.0,
                     M=preconditioner, maxiter=maxiter, callback=callback)
        if info != 0:
            raise RuntimeError(f"scipy cg did not converge (info={info})")
        return torch.from_numpy(x).view_as(b).to(b.device), count[0]

    return solve


def _timed(build: Callable):
    """(build(), seconds it took)."""
    start = time.perf_counter()
    built = build()
    return built, time.perf_counter() - start


def _bench_size(
    n: int, dt: float, warmup: int, steps: int, rtol: float, device: torch.device, budget: float
) -> tuple[list, dict]:
    import scipy.sparse.linalg as spla

    problem = course_problem()
    # The common warm state: `warmup` steps of the course problem from u = 0.
    warm = simulate(problem, n, dt, warmup * dt, rtol=rtol, device=device).u
    t0 = warmup * dt
    methods: list[_Method] = []

    for name, preconditioner in (("genray multigrid", "multigrid"), ("genray multigrid64", "multigrid64")):
        _sync(device)
        stepper, setup = _timed(
            lambda p=preconditioner: HeatStepper(problem, n, dt, rtol=rtol, device=device, preconditioner=p)
        )
        _sync(device)

        def solve_torch(b, x0, stepper=stepper):
            x, iterations, _ = stepper.solve_system(b, x0.clone())
            return x, int(iterations.max())

        methods.append(_Method(name, solve_torch, setup, warm))

    matrix = _scipy_matrix(stepper)
    lu, setup = _timed(lambda: spla.splu(matrix.tocsc()))

    def solve_lu(b, x0):
        return torch.from_numpy(lu.solve(b.cpu().numpy().ravel())).view_as(b).to(b.device), None

    methods.append(_Method("scipy splu", solve_lu, setup, warm))
    inverse_diagonal = 1.0 / matrix.diagonal()
    jacobi = spla.LinearOperator(matrix.shape, matvec=lambda v: inverse_diagonal * v.ravel())
    methods.append(_Method("scipy cg + jacobi", _scipy_cg(matrix, rtol, jacobi), 0.0, warm))
    pyamg = _pyamg()
    hierarchy, setup = _timed(lambda: pyamg.smoothed_aggregation_solver(matrix, symmetry="symmetric"))
    amg_cg = _scipy_cg(matrix, rtol, hierarchy.aspreconditioner())
    methods.append(_Method("pyamg sa + cg", amg_cg, setup, warm))

    # Round robin, one step of each method in turn, so that a change in the machine's load (it may be
    # shared) hits every method alike. Step 0 is untimed (first-call costs) unless it alone used up
    # the method's `budget` of seconds (Jacobi CG at n = 512 takes seconds a step), after which a
    # method is not stepped any more.
    with torch.inference_mode():
        for s in range(steps + 1):
            t = t0 + s * dt
            for method in methods:
                if len(method.history) < s or sum(method.step_seconds) > budget:
                    continue
                elapsed, elapsed_cpu, iterations = _advance(stepper, method, t)
                if s > 0 or elapsed > budget:
                    method.step_seconds.append(elapsed)
                    method.step_cpu_seconds.append(elapsed_cpu)
                    method.iterations.append(iterations)

    reference = next(m for m in methods if m.name == _REFERENCE)
    rows = []
    for m in methods:
        k = min(len(m.history), len(reference.history)) - 1  # compare after the same number of steps
        rows.append({
            "n": n,
            "method": m.name,
            "seconds_per_step": statistics.median(m.step_seconds),
            "cpu_seconds_per_step": statistics.median(m.step_cpu_seconds),
            "step_seconds": m.step_seconds,
            "timed_steps": len(m.step_seconds),
            "iterations_per_step": None if m.iterations[0] is None else statistics.mean(m.iterations),
            "setup_seconds": m.setup_seconds,
            "max_abs_diff_vs_splu": (m.history[k] - reference.history[k]).abs().max().item(),
        })
    return rows, _operator_bandwidth(stepper)


def step_times(
    sizes: Sequence[int] = (1024, 2048),
    dtypes: Sequence[str] = ("float64", "float32"),
    device: str | torch.device | None = None,
    *,
    steps: int = 10,
    warmup: int = 3,
    dt: float = 1e-3,
    rtol: float | None = None,
    check_every: int = 1,
    predict_checks: bool | None = None,
    compile: bool = False,
) -> list[dict]:
    """Milliseconds per backward Euler step of genray's default solver (PCG, float32 V-cycle) on the
    course problem, one row per (n, dtype) on `device` (default CUDA when available).

    Each size and dtype gets its own HeatStepper; `warmup` untimed steps from u = 0 take the first-call
    costs (CUDA's context and kernels, the caching allocator's pool) and leave a warm state, then
    `steps` steps are timed one by one between two device syncs.
    rtol: default the dtype's (genray.heat.DEFAULT_RTOL: 1e-10 in float64, 1e-5 in float32);
    check_every, predict_checks: when CG reads its convergence test to the host (HeatStepper; the
    default predicts the first read on CUDA and reads after every iteration on the CPU).
    compile: time HeatStepper(compile=True), CG's iterations compiled (CUDA graphs on CUDA); the graphs
    compile during the first warm-up step, so warmup must be >= 1 and the row's first_step_seconds
    says what compiling cost.
    Row: n, dtype, device, rtol, check_every, predict_checks, compiled, ms_per_step (median of the timed steps),
    step_ms (each), cg_iterations (mean CG iterations per step), residual (the last step's final true
    relative residual), max_residual (over the timed steps), setup_seconds (operator and V-cycle
    hierarchy), first_step_seconds (the first warm-up step: compiling, when compiled). genray.bench.gpu
    reads n, dtype, device, compiled, ms_per_step, cg_iterations and residual.
    """
    if compile and warmup < 1:
        raise ValueError(f"warmup must be >= 1 with compile=True (the first step compiles), got {warmup}")
    device = _device(device)
    problem = course_problem()
    rows = []
    with torch.inference_mode():
        for n in sizes:
            for dtype in dtypes:
                _sync(device)
                stepper, setup = _timed(lambda: HeatStepper(problem, int(n), dt, rtol=rtol, device=device, dtype=dtype,
                                                            check_every=check_every, predict_checks=predict_checks,
                                                            compile=compile))
                _sync(device)
                u = stepper.initial()  # (1, n+1, n+1)
                first_step = 0.0
                for s in range(warmup):
                    start = time.perf_counter()
                    u = stepper.step(u, s * dt)[0]
                    _sync(device)
                    if s == 0:
                        first_step = time.perf_counter() - start
                seconds, iterations, residuals = [], [], []
                for s in range(warmup, warmup + steps):
                    _sync(device)
                    start = time.perf_counter()
                    u, its, res = stepper.step(u, s * dt)
                    _sync(device)
                    seconds.append(time.perf_counter() - start)
                    iterations.append(its)  # (1,) each, read once the timing is done
                    residuals.append(res)
                residuals = torch.cat(residuals).double().cpu()
                rows.append({
                    "n": int(n), "dtype": stepper.dtype_name, "device": str(device), "rtol": stepper.rtol,
                    "check_every": stepper.check_every, "predict_checks": stepper.predict_checks,
                    "compiled": stepper.compile, "ms_per_step": 1e3 * statistics.median(seconds),
                    "step_ms": [1e3 * t for t in seconds],
                    "cg_iterations": torch.cat(iterations).double().mean().item(),
                    "residual": residuals[-1].item(),
                    "max_residual": residuals.max().item(),
                    "setup_seconds": setup,
                    "first_step_seconds": first_step,
                })
    return rows


def run(
    sizes: Sequence[int] = (128, 256, 512),
    out: str | Path = Path("runs/bench/heat.json"),
    *,
    dt: float = 1e-3,
    warmup: int = 3,
    steps: int = 5,
    rtol: float = 1e-10,
    device: str | torch.device | None = None,
    threads: int | None = None,
    budget: float = 15.0,
) -> dict:
    """Run the benchmark, write it as JSON to `out`, and return it: {"rows": [...], "bandwidth": ...}.

    Each row: n, method, seconds_per_step and cpu_seconds_per_step (medians over the timed steps),
    timed_steps, iterations_per_step (CG iterations, None for the direct solver), setup_seconds,
    max_abs_diff_vs_splu (after the same number of steps).
    budget: seconds of timed steps after which a method is not timed further (at least one step is).
    threads: torch's CPU threads, and BLAS threads for scipy / pyamg, during the run (None: leave
    both as they are). On a machine shared with other work, 1 is far steadier: busy cores make
    thread barriers stall.
    """
    device = _device(device)
    _pyamg()  # before any timing: a missing pyamg stops the bench at once, not after the first size
    previous_threads = torch.get_num_threads()
    with contextlib.ExitStack() as limits:
        if threads is not None:
            torch.set_num_threads(threads)
            limits.callback(torch.set_num_threads, previous_threads)
            # scipy's and pyamg's BLAS calls (cg's dot products) get the same number of threads. Only
            # libraries already loaded are limited, so scipy.sparse.linalg (its own BLAS) comes first.
            try:
                import scipy.sparse.linalg  # noqa: F401
                from threadpoolctl import threadpool_limits

                limits.enter_context(threadpool_limits(limits=threads, user_api="blas"))
            except ImportError:
                pass
        copy = _copy_bandwidth(device)
        rows, operator = [], []
        for n in sizes:
            size_rows, bandwidth = _bench_size(int(n), dt, warmup, steps, rtol, device, budget)
            rows += size_rows
            bandwidth["fraction_of_copy"] = bandwidth["bytes_per_second"] / copy
            operator.append(bandwidth)
        machine = _machine(device)
    result = {
        "benchmark": "heat",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine,
        "versions": _versions(),
        "config": {"sizes": list(sizes), "dt": dt, "warmup": warmup, "steps": steps, "rtol": rtol,
                   "budget_seconds": budget,
                   "problem": "course problem: omega=20, k_in=50, k_out=1"},
        "rows": rows,
        "bandwidth": {"copy_bytes_per_second": copy, "operator": operator},
    }
    result["claims"] = decisions(result)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    tmp.write_text(json.dumps(result, indent=2))
    tmp.replace(out)  # atomic: a reader never sees half a file
    return result


def decisions(result: dict) -> list[dict]:
    """HEAT_CLAIMS decided from a run's rows (not decided for a size it did not run, or another budget)."""
    config = result["config"]
    ran = {k: config[k] for k in HEAT_BUDGET} == HEAT_BUDGET
    out = []
    for n, claim in HEAT_CLAIMS.items():
        rows = {row["method"]: row["seconds_per_step"] for row in result["rows"] if row["n"] == n}
        values = {}
        if ran and "genray multigrid" in rows and set(_BEST_OF) <= set(rows):
            values[0] = rows["genray multigrid"] / min(rows[m] for m in _BEST_OF)
        out.append(claim.decide(values))
    return out


def markdown_table(result: dict) -> str:
    """The rows as a Markdown table (time per step, iterations, vs the best of splu / pyamg), then the
    bandwidth table."""
    machine, config = result["machine"], result["config"]
    load = machine.get("load_average")
    lines = [
        f"{result['date']}; {machine['cpu']}, {machine['cpu_count']} cores, torch threads "
        f"{machine['torch_threads']}, BLAS threads {machine.get('blas_threads')}, device {machine['device']}"
        + (f", load average {load[0]:.1f}" if load else "")
        + f"; dt = {config['dt']}, rtol = {config['rtol']}, median of up to {config['steps']} steps",
        "",
        "| n | method | ms / step | CPU ms / step | steps timed | CG iterations / step | setup s "
        "| vs best of splu, pyamg (wall / CPU) | max abs diff vs splu |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for n in dict.fromkeys(row["n"] for row in result["rows"]):
        rows = [row for row in result["rows"] if row["n"] == n]
        best = min(row["seconds_per_step"] for row in rows if row["method"] in _BEST_OF)
        best_cpu = min(row["cpu_seconds_per_step"] for row in rows if row["method"] in _BEST_OF)
        for row in rows:
            its = row["iterations_per_step"]
            lines.append(
                f"| {n} | {row['method']} | {1e3 * row['seconds_per_step']:.1f} | "
                f"{1e3 * row['cpu_seconds_per_step']:.1f} | {row['timed_steps']} | "
                f"{'—' if its is None else f'{its:.1f}'} | {row['setup_seconds']:.2f} | "
                f"{row['seconds_per_step'] / best:.2f}x / {row['cpu_seconds_per_step'] / best_cpu:.2f}x | "
                f"{row['max_abs_diff_vs_splu']:.1e} |"
            )
    bandwidth = result["bandwidth"]
    lines += [
        "",
        "Operator application (matrix-free, float64) vs a "
        f"{bandwidth['copy_bytes_per_second'] / 1e9:.1f} GB/s copy of a 256 MiB tensor "
        "(bytes = read u, diag, 2 coupling arrays + write A u; above 1 the arrays sit in the CPU's caches):",
        "",
        "| n | µs / application | MB moved | GB/s | fraction of copy bandwidth |",
        "|---:|---:|---:|---:|---:|",
    ]
    for op in bandwidth["operator"]:
        lines.append(
            f"| {op['n']} | {1e6 * op['seconds']:.0f} | {op['bytes'] / 1e6:.1f} | "
            f"{op['bytes_per_second'] / 1e9:.1f} | {op['fraction_of_copy']:.2f} |"
        )
    lines += ["", *HEADER, *(claim_row(d, fmt=".2f") for d in decisions(result))]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256, 512])
    parser.add_argument("--out", type=Path, default=Path("runs/bench/heat.json"))
    parser.add_argument("--dt", type=float, default=1e-3)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--device", default=None)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args(argv)
    result = run(args.sizes, args.out, dt=args.dt, steps=args.steps, device=args.device, threads=args.threads)
    print(markdown_table(result))


if __name__ == "__main__":
    main()
