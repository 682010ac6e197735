"""`genray bench ode`: the neural-ODE families, measured.

Part 1, `ode` against plain torchdiffeq. The same training, twice:

    genray  ODEFamily.train_step driven by genray's own Ray Train worker loop
            (genray.train.train_loop_per_worker in a 1-worker TorchTrainer, via genray.train.fit),
            or, with `path="in-process"` (the --quick smoke test), by the same loop
            (genray.train.loop.run_loop) in a plain subprocess, without Ray Train;
            genray.bench.ode.StepClock times the steps through the loop's hooks
    plain   `plain_torchdiffeq_training` below: a script written directly against torch and
            torchdiffeq (it imports nothing else, and runs in its own `python -c` process, which
            reports whether any genray module got loaded)

Both build the same MLP field from the same seed, draw the same window batches in the same order
(the DistributedSampler's permutation: randperm seeded with seed + epoch) and use the same lr
schedule, so they train the same weights: the final trajectory errors agree, and any difference in
time per iteration is genray's overhead. Per run: ms per iteration (the interval between the starts
of consecutive train steps within an epoch, so batch loading is included and the per-epoch
validation, report and checkpoint are not; the first WARMUP steps of a run are left out), function
evaluations per iteration (forward solve and adjoint solve), the peak resident-memory growth while
training (Linux: VmHWM after resetting it through /proc/self/clear_refs just before the first step;
it counts what torch allocates, which tracemalloc would not see), and the final trajectory error
(the learned field integrated from y0 over the whole span against the true trajectory, genray's
`val_mse`). Measurements are interleaved: every round runs both implementations for every adjoint
setting, alternating which goes first, so machine load falls on both alike.

Part 2, `latent_ode` against the `rnn` baseline (Chen et al. 2018, 5.1 and table 2): both families
trained on the same generated series with the same budget (epochs, batch size, so the same
optimizer steps on the same batches; seed, one thread, the worker loop's sampler and step), then
scored on the same held-out series: extrapolation RMSE against the noise-free curve at the 100
grid times after the observed window (the latent ODE: its posterior-mean trajectory; the RNN,
which gets the time gaps as input: its autoregressive rollout), at 30, 50 and 100 observed points
(t = 0 and n - 1 of the observed window's 100 grid times).
On the ray-train path the ode comparison also runs genray's step without Ray (see above), which
splits genray's overhead into its own code and the Ray Train worker.
"""

from __future__ import annotations

import inspect
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

from genray.bench.claims import HEADER, Claim, claim_row, median_of_ratios
from genray.train.loop import Hooks, LoopConfig

CLOCK_FILE = "step_clock.json"  # what StepClock measured in a worker, in the run folder
WARMUP = 3  # leading iterations of each run left out of the timing (allocator and cache warm-up)
# Ray starts its worker processes at this niceness (Ray's `worker_niceness`, 15 on Linux); on a busy
# machine a process at niceness 0 would be handed more CPU, so the plain loop runs at the same one.
RAY_WORKER_NICENESS = 15
SERIES_SIZES = (30, 50, 100)

# --- the declared claims (genray.bench.claims), fixed before the runs that decide them -------------

# Part 1's budget: the ode comparison's training (epochs, batch) and interleaved rounds. Its claims
# are ratios of ms per iteration, each the median over rounds of the round's ratio (both sides of a
# round ran back to back), on the ray-train path; one training seed.
ODE_BUDGET = {"epochs": 6, "batch_size": 32, "rounds": 3, "threads": 1}
# (claim, the implementation set against plain torchdiffeq, adjoint)
OVERHEAD_CLAIMS = [
    (Claim(key=f"ode_code_alone_{mode}", metric="median per-round ratio", target=1.05, direction="<=",
           text=f"genray's code alone (no Ray) / plain torchdiffeq, ms per iteration, {mode}",
           budget={**ODE_BUDGET, "adjoint": adjoint}, seeds=(0,)), "genray-in-process", adjoint)
    for mode, adjoint in (("backprop", False), ("adjoint", True))
] + [
    # The first target, set for genray's whole path before the split into code and worker.
    (Claim(key=f"ode_worker_first_target_{mode}", metric="median per-round ratio", target=1.05, direction="<=",
           text=f"genray in a Ray Train worker / plain torchdiffeq, ms per iteration, {mode} (the first target)",
           budget={**ODE_BUDGET, "adjoint": adjoint}, seeds=(0,)), "genray", adjoint)
    for mode, adjoint in (("backprop", False), ("adjoint", True))
] + [
    # A Ray Train worker runs the step beside Ray's own threads (reporting, the object store) in a
    # process of its own; a quarter of the smallest default step (about 7.5 ms of backprop) is the
    # most we accept for that.
    (Claim(key=f"ode_worker_{mode}", metric="median per-round ratio", target=1.25, direction="<=",
           text=f"genray in a Ray Train worker / plain torchdiffeq, ms per iteration, {mode}",
           budget={**ODE_BUDGET, "adjoint": adjoint}, seeds=(0,)), "genray", adjoint)
    for mode, adjoint in (("backprop", False), ("adjoint", True))
]

# Part 2's budget (see series_budget), data seeds and RNN widths. Each claim is a ratio of
# extrapolation RMSEs, latent ODE / RNN, per data seed (the seed of the series, the initial weights
# and the sampler), at or below 1: the RNN at equal parameters (the width whose parameter count is
# nearest the latent ODE's), and the RNN at its best width in RNN_WIDTHS (picked per seed and
# point count by its own held-out RMSE, which favours the baseline).
# Batches of 250: per series a step costs several times less than at 32 for both families (one
# vectorised solve / GRU pass). 900 epochs (3600 steps): the latent ODE learns more slowly than the
# RNN; also_scored_after: the held-out RMSE is also taken after 300 epochs of the same run, which
# shows what each family still gains after it. refine_steps: the latent ODE is also scored with each
# held-out series' z0 refined by that many gradient steps on its own observations
# (LatentODEFamily.refine, the deployment's refine_steps).
SERIES_BUDGET = {"epochs": 900, "batch_size": 250, "threads": 1, "n_train": 1000, "n_val": 200,
                 "also_scored_after": 300, "refine_steps": 50}
SERIES_SEEDS = (0, 1, 2)
RNN_WIDTHS = (32, 40, 64)
LATENT_CLAIMS = [
    claim for n in SERIES_SIZES for claim in (
        Claim(key=f"latent_ode_vs_rnn_equal_parameters_{n}", metric="latent_ode_over_rnn_equal_parameters",
              target=1.0, direction="<=", budget={**SERIES_BUDGET, "n_obs": n}, seeds=SERIES_SEEDS,
              text=f"latent ODE / RNN at equal parameters, extrapolation RMSE, {n} observed points"),
        Claim(key=f"latent_ode_vs_rnn_best_width_{n}", metric="latent_ode_over_rnn_best_width",
              target=1.0, direction="<=", budget={**SERIES_BUDGET, "n_obs": n, "rnn_widths": list(RNN_WIDTHS)},
              seeds=SERIES_SEEDS,
              text=f"latent ODE / RNN at its best width in {{{', '.join(map(str, RNN_WIDTHS))}}}, "
                   f"extrapolation RMSE, {n} observed points"),
    )
]


# --- the plain torchdiffeq loop (no genray code) -----------------------------------------------

def plain_torchdiffeq_training(s: dict) -> dict:
    """ode_demo.py's training, written against torch + torchdiffeq only, with genray's settings.

    Self-contained on purpose: the bench runs its source in a fresh `python -c` process.
    s: hidden, method, rtol, atol, adjoint, lr, lr_decay, window, batch_size, epochs, n_points,
    t_end, y0, seed, threads.
    """
    import math
    import os
    import re
    import time

    import torch
    from torch import nn
    from torchdiffeq import odeint, odeint_adjoint

    torch.set_num_threads(s["threads"])

    class Spiral(nn.Module):
        def __init__(self):
            super().__init__()
            self.A = torch.tensor([[-0.1, 2.0], [-2.0, -0.1]], dtype=torch.float64)

        def forward(self, t, y):
            return (y**3) @ self.A

    t = torch.linspace(0.0, s["t_end"], s["n_points"], dtype=torch.float64)
    with torch.no_grad():
        true_y = odeint(Spiral(), torch.tensor(s["y0"], dtype=torch.float64), t, rtol=1e-9, atol=1e-10, method="dopri5")
    t, true_y = t.float(), true_y.float()  # (N,), (N, 2)

    class ODEFunc(nn.Module):
        def __init__(self, hidden):
            super().__init__()
            self.net = nn.Sequential(nn.Linear(2, hidden), nn.Tanh(), nn.Linear(hidden, 2))
            for m in self.net.modules():
                if isinstance(m, nn.Linear):
                    nn.init.normal_(m.weight, mean=0, std=0.1)
                    nn.init.constant_(m.bias, val=0)
            self.nfe = 0

        def forward(self, t, y):
            self.nfe += 1
            return self.net(y**3)

    torch.manual_seed(s["seed"])
    func = ODEFunc(s["hidden"])
    optimizer = torch.optim.Adam(func.parameters(), lr=s["lr"])
    integrate = odeint_adjoint if s["adjoint"] else odeint
    kwargs = dict(rtol=s["rtol"], atol=s["atol"], method=s["method"])

    window, batch_size = s["window"], s["batch_size"]
    n_windows = len(t) - window + 1
    offsets = torch.arange(window)
    batch_t = t[:window]  # every window's clock starts at 0: the system is autonomous
    steps = math.ceil(n_windows / batch_size)

    def status(key):
        return int(re.search(key + r":\s+(\d+)", open("/proc/self/status").read()).group(1))

    try:  # reset the peak resident size, so VmHWM below is this loop's own peak
        open("/proc/self/clear_refs", "w").write("5")
        rss0 = status("VmRSS")
    except OSError:
        rss0 = None
    starts, nfe_f, nfe_b = [], [], []
    for epoch in range(s["epochs"]):
        g = torch.Generator()
        g.manual_seed(s["seed"] + epoch)
        perm = torch.randperm(n_windows, generator=g)
        epoch_starts = []
        for i in range(steps):
            epoch_starts.append((time.perf_counter(), time.thread_time()))
            idx = perm[i * batch_size:(i + 1) * batch_size]
            batch_y = true_y[idx[None, :] + offsets[:, None]]  # (W, B, 2)
            lr = s["lr"] * s["lr_decay"] ** (epoch + i / steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            optimizer.zero_grad()
            before = func.nfe
            pred_y = integrate(func, batch_y[0], batch_t, **kwargs)
            forward = func.nfe - before
            loss = torch.mean((pred_y - batch_y) ** 2)
            loss.backward()
            optimizer.step()
            nfe_f.append(forward)
            nfe_b.append(func.nfe - before - forward)
        starts.append(epoch_starts)
    peak = None if rss0 is None else (status("VmHWM") - rss0) / 1024
    with torch.no_grad():
        pred_y = odeint(func, true_y[0], t, **kwargs)
        final_mse = torch.mean((pred_y - true_y) ** 2).item()
    pairs = [(a, b) for e in starts for a, b in zip(e, e[1:])]
    return {"iter_s": [b[0] - a[0] for a, b in pairs], "iter_cpu_s": [b[1] - a[1] for a, b in pairs],
            "niceness": os.nice(0), "nfe_forward": nfe_f, "nfe_backward": nfe_b, "final_mse": final_mse,
            "peak_rss_growth_mib": peak, "steps": sum(len(e) for e in starts)}


def run_plain(settings: dict, niceness: int = 0) -> dict:
    """`plain_torchdiffeq_training` in a fresh interpreter that imports no genray code."""
    source = textwrap.dedent(inspect.getsource(plain_torchdiffeq_training)) + textwrap.dedent("""
        import json, sys
        result = plain_torchdiffeq_training(json.load(sys.stdin))
        result["genray_loaded"] = sorted(m for m in sys.modules if m.split(".")[0] == "genray")
        print(json.dumps(result))
    """)
    return _run_python(["-c", source], settings, niceness)


def _run_python(args: list[str], settings: dict, niceness: int = 0) -> dict:
    done = subprocess.run([sys.executable, *args], input=json.dumps(settings), capture_output=True, text=True,
                          cwd=tempfile.gettempdir(),  # away from the repo: nothing imported by accident
                          preexec_fn=(lambda: os.nice(niceness)) if niceness else None)
    if done.returncode != 0:
        raise RuntimeError(f"bench subprocess failed ({done.returncode}):\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# --- genray's side --------------------------------------------------------------------------

def _rss_status(key: str) -> int:
    import re

    return int(re.search(key + r":\s+(\d+)", Path("/proc/self/status").read_text()).group(1))


class StepClock(Hooks):
    """Times the training loop's steps through its hooks, in the process that runs the loop: the
    start time and evaluations of every step, and the peak memory growth from the first step
    on. When the loop ends, rank 0 writes what it measured to <run folder>/step_clock.json."""

    def __init__(self):
        self.starts: list[tuple[int, float, float]] = []  # (epoch, perf_counter, thread_time) at a step's start
        self.nfe_forward: list[float] = []
        self.nfe_backward: list[float] = []
        self.rss0: int | None = None

    def before_step(self, epoch: float) -> None:
        if self.rss0 is None:
            try:
                Path("/proc/self/clear_refs").write_text("5")
                self.rss0 = _rss_status("VmRSS")
            except OSError:
                self.rss0 = -1
        self.starts.append((int(epoch), time.perf_counter(), time.thread_time()))

    def after_step(self, metrics) -> None:
        self.nfe_forward.append(float(metrics["nfe"]))
        self.nfe_backward.append(float(metrics["nfe_backward"]))

    def on_end(self, config: LoopConfig, rank: int) -> None:
        if rank == 0 and config.local_run_folder is not None:
            (config.local_run_folder / CLOCK_FILE).write_text(json.dumps(self.result()))

    def result(self) -> dict:
        pairs = [(a, b) for a, b in zip(self.starts, self.starts[1:]) if a[0] == b[0]]  # within an epoch
        peak = None if self.rss0 in (None, -1) else (_rss_status("VmHWM") - self.rss0) / 1024
        return {"iter_s": [b[1] - a[1] for a, b in pairs], "iter_cpu_s": [b[2] - a[2] for a, b in pairs],
                "niceness": os.nice(0), "nfe_forward": self.nfe_forward, "nfe_backward": self.nfe_backward,
                "peak_rss_growth_mib": peak, "steps": len(self.starts)}


def run_config(settings: dict, name: str, storage: Path) -> Any:
    from genray.config import build_config

    solver = {"method": settings["method"], "rtol": settings["rtol"], "atol": settings["atol"],
              "adjoint": settings["adjoint"]}
    return build_config("ode", overrides=[
        f"name={name}", f"storage={storage}", "train.workers=1", f"train.epochs={settings['epochs']}",
        f"train.batch_size={settings['batch_size']}", f"train.seed={settings['seed']}",
        f"train.threads_per_worker={settings['threads']}", f"train.checkpoint_every={settings['epochs']}",
        "train.preview_every=0", "train.quality_every=0", "train.max_failures=0",
        f"model.hidden={settings['hidden']}", f"model.lr={settings['lr']}", f"model.lr_decay={settings['lr_decay']}",
        "model.loss=mse", f"model.solver={json.dumps(solver)}",
        f"data.window={settings['window']}", f"data.n_points={settings['n_points']}", f"data.t_end={settings['t_end']}",
    ])


def run_genray_ray_train(settings: dict, storage: Path) -> dict:
    """One 1-worker Ray Train run of `ode` through genray.train.fit, timed from inside the worker."""
    from genray.train import fit

    name = f"bench-ode-{'adjoint' if settings['adjoint'] else 'backprop'}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    summary = fit(run_config(settings, name, storage), verbose=False, hooks=[StepClock()])
    result = json.loads((summary.run_dir / CLOCK_FILE).read_text())
    result["final_mse"] = summary.metrics["val_mse"]
    return result


def genray_in_process_training(s: dict) -> dict:
    """genray's training loop (genray.train.loop.run_loop) in this process, one rank, without
    Ray Train: the same seed, family, DistributedSampler, DataLoader, train step and validation.
    Runs in a subprocess of its own (memory)."""
    from genray.metrics import store_root
    from genray.runs import RunDir
    from genray.train.loop import Session, run_loop

    clock, session = StepClock(), Session()
    with tempfile.TemporaryDirectory(prefix="genray-bench-ode-") as tmp:
        cfg = run_config(s, "in-process", Path(tmp))
        run_loop(LoopConfig(run=cfg, run_dir=RunDir(tmp, "in-process"), store=str(store_root()), hooks=(clock,)),
                 session)
    result = clock.result()
    result["final_mse"] = session.reports[-1]["val_mse"]  # the last epoch's: the whole trajectory after training
    return result


def run_genray_in_process(settings: dict, niceness: int = 0) -> dict:
    code = ("import json, sys; from genray.bench.ode import genray_in_process_training; "
            "print(json.dumps(genray_in_process_training(json.load(sys.stdin))))")
    return _run_python(["-c", code], settings, niceness)


# --- part 1: ode against plain torchdiffeq --------------------------------------------------

def ode_settings(quick: bool) -> dict:
    """genray's `ode` defaults, with the budget of the bench."""
    from genray.families.ode import ODEConfig, ODEDataConfig

    model, data = ODEConfig(), ODEDataConfig()
    return {
        "hidden": model.hidden, "method": model.solver.method, "rtol": model.solver.rtol,
        "atol": model.solver.atol, "lr": model.lr, "lr_decay": model.lr_decay,
        "window": data.window, "n_points": data.n_points if not quick else 100,
        "t_end": data.t_end if not quick else 2.5, "y0": list(data.y0),
        # 6 epochs (ODE_BUDGET): each run's timed stretch (~1.3 s backprop, ~10 s adjoint) spans
        # more of the machine's changing load than 4 did
        "batch_size": ODE_BUDGET["batch_size"], "epochs": 1 if quick else ODE_BUDGET["epochs"], "seed": 0,
        "threads": ODE_BUDGET["threads"],
    }


def summarise(runs: list[dict]) -> dict:
    """Pooled figures of one implementation's runs of one config."""
    times = [x for r in runs for x in r["iter_s"][WARMUP:]] or [x for r in runs for x in r["iter_s"]]
    cpu = [x for r in runs for x in r["iter_cpu_s"][WARMUP:]] or [x for r in runs for x in r["iter_cpu_s"]]
    nfe_f = [x for r in runs for x in r["nfe_forward"]]
    nfe_b = [x for r in runs for x in r["nfe_backward"]]
    peaks = [r["peak_rss_growth_mib"] for r in runs if r.get("peak_rss_growth_mib") is not None]
    return {
        "ms_per_iter_median": 1e3 * statistics.median(times),
        "ms_per_iter_mean": 1e3 * statistics.fmean(times),
        "iters_per_s": 1.0 / statistics.fmean(times),
        "cpu_ms_per_iter_median": 1e3 * statistics.median(cpu),
        "iterations_timed": len(times),
        "nfe_forward_per_iter": statistics.fmean(nfe_f),
        "nfe_backward_per_iter": statistics.fmean(nfe_b),
        "nfe_per_iter": statistics.fmean(nfe_f) + statistics.fmean(nfe_b),
        "peak_rss_growth_mib": max(peaks) if peaks else None,
        "final_mse": statistics.fmean(r["final_mse"] for r in runs),
    }


IMPLEMENTATIONS = {"ray-train": ("genray", "genray-in-process", "plain"), "in-process": ("genray", "plain")}


def run_impl(impl: str, path: str, s: dict, storage: Path) -> dict:
    """One training run of `impl`; every subprocess at the Ray workers' niceness on the ray-train path."""
    niceness = RAY_WORKER_NICENESS if path == "ray-train" else 0
    if impl == "plain":
        return run_plain(s, niceness)
    if impl == "genray" and path == "ray-train":
        return run_genray_ray_train(s, storage)
    return run_genray_in_process(s, niceness)


def bench_ode(quick: bool, path: str, storage: Path, rounds: int, log=print) -> dict:
    """Interleaved rounds; each runs every implementation for both adjoint settings, rotating the
    order (with `quick`, a smoke run, all of a round's runs at once). On the ray-train path the training loop also runs without Ray Train
    ("genray-in-process"), which splits genray's overhead into its own code and the Ray Train worker."""
    from concurrent.futures import ThreadPoolExecutor

    settings = ode_settings(quick)
    impls = IMPLEMENTATIONS[path]
    runs: dict[tuple[bool, str], list[dict]] = {}
    per_round: dict[bool, dict[str, list[float]]] = {False: {}, True: {}}  # ms/iter, each run's median
    for r in range(rounds):
        adjoints = (False, True) if r % 2 == 0 else (True, False)
        jobs = [(adjoint, impl) for k, adjoint in enumerate(adjoints)
                for impl in impls[(r + k) % len(impls):] + impls[:(r + k) % len(impls)]]  # in the order they run

        def one(job: tuple[bool, str]) -> dict:
            adjoint, impl = job
            return run_impl(impl, path, {**settings, "adjoint": adjoint}, storage)

        if quick:  # a smoke run's times mean nothing: its processes run at once, each on its one thread
            with ThreadPoolExecutor(len(jobs)) as pool:
                done = dict(zip(jobs, pool.map(one, jobs)))
        else:
            done = {job: one(job) for job in jobs}
        for adjoint in adjoints:
            got = {impl: done[adjoint, impl] for impl in impls}
            for impl in impls:
                runs.setdefault((adjoint, impl), []).append(got[impl])
            med = {i: statistics.median(got[i]["iter_s"][WARMUP:] or got[i]["iter_s"]) for i in impls}
            cpu = {i: statistics.median(got[i]["iter_cpu_s"][WARMUP:] or got[i]["iter_cpu_s"]) for i in impls}
            for impl in impls:
                per_round[adjoint].setdefault(impl, []).append(1e3 * med[impl])
            log(f"ode round {r + 1}/{rounds} adjoint={adjoint}: " + ", ".join(
                f"{i} {1e3 * med[i]:.2f} ms/iter ({1e3 * cpu[i]:.2f} CPU)" for i in impls)
                + f": x{med['genray'] / med['plain']:.3f} (CPU x{cpu['genray'] / cpu['plain']:.3f}); final mse "
                + " vs ".join(f"{got[i]['final_mse']:.4g}" for i in impls) + f"; load {os.getloadavg()[0]:.1f}")
    configs = []
    for adjoint in (False, True):
        figures = {impl: summarise(runs[(adjoint, impl)]) for impl in impls}
        genray, plain = figures["genray"], figures["plain"]
        config = {
            "adjoint": adjoint, **figures,
            # median over all timed iterations of genray / of plain
            "time_ratio": genray["ms_per_iter_median"] / plain["ms_per_iter_median"],
            "cpu_time_ratio": genray["cpu_ms_per_iter_median"] / plain["cpu_ms_per_iter_median"],
            "ms_per_iter_per_round": per_round[adjoint],
            "time_ratio_per_round": [a / b for a, b in zip(per_round[adjoint]["genray"], per_round[adjoint]["plain"])],
            "niceness": {impl: sorted({r.get("niceness") for r in runs[(adjoint, impl)]}) for impl in impls},
            "plain_loaded_genray": sorted({m for r in runs[(adjoint, "plain")] for m in r.get("genray_loaded", [])}),
        }
        if "genray-in-process" in figures:
            inproc = figures["genray-in-process"]
            config["in_process_time_ratio"] = inproc["ms_per_iter_median"] / plain["ms_per_iter_median"]
            config["in_process_cpu_time_ratio"] = inproc["cpu_ms_per_iter_median"] / plain["cpu_ms_per_iter_median"]
            config["in_process_time_ratio_per_round"] = [
                a / b for a, b in zip(per_round[adjoint]["genray-in-process"], per_round[adjoint]["plain"])]
            # What the Ray Train worker process costs: the worker row minus the no-Ray row.
            config["worker_cost_ms_per_iter"] = genray["ms_per_iter_median"] - inproc["ms_per_iter_median"]
            config["worker_cost_fraction"] = config["worker_cost_ms_per_iter"] / inproc["ms_per_iter_median"]
        configs.append(config)
    return {"settings": settings, "rounds": rounds, "warmup_iterations_dropped": WARMUP,
            "genray_path": ("genray.train.fit: 1 Ray Train worker running genray.train.train_loop_per_worker"
                            if path == "ray-train" else "in-process: genray's training loop "
                            "(genray.train.loop.run_loop) in a subprocess, no Ray Train"),
            "implementations": list(impls), "configs": configs}


# --- part 2: latent_ode against rnn ---------------------------------------------------------

def series_budget(quick: bool) -> dict:
    """One budget for both families: the same training series, epochs, batch size (so the same
    number of optimizer steps on the same batches), seed and thread; each family's own lr schedule
    (both: Adam, lr 1e-2 decayed per epoch). Train seconds are reported alongside."""
    if quick:
        return {"epochs": 1, "batch_size": 16, "seed": 0, "threads": 1,
                "n_train": 32, "n_val": 16, "also_scored_after": 1, "refine_steps": 2}
    # SERIES_BUDGET; `seed` is the data seed of one run of it.
    return {**SERIES_BUDGET, "seed": 0}


SERIES_CACHE = "bench-ode-series"  # folder under the bench's storage: one JSON per finished training


def series_run_key(family_name: str, n_obs: int, budget: dict, model: dict | None = None) -> dict:
    """What decides one training's result: the family, its whole resolved config (defaults
    included, so a changed default is a new training) and the budget."""
    from genray.config import build_config

    cfg = build_config(family_name, overrides=series_overrides(n_obs, budget, model))
    return {"family": family_name, "model": cfg.model.model_dump(mode="json"),
            "data": cfg.data.model_dump(mode="json"), "budget": budget}


def series_overrides(n_obs: int, budget: dict, model: dict | None) -> list[str]:
    return ([f"data.n_obs={n_obs}", f"data.n_train={budget['n_train']}", f"data.n_val={budget['n_val']}",
             f"data.seed={budget['seed']}"] + [f"model.{k}={json.dumps(v)}" for k, v in (model or {}).items()])


def cached_series_model(family_name: str, n_obs: int, budget: dict, model: dict | None = None,
                        cache: Path | None = None) -> dict:
    """train_series_model, its result kept in `cache` (a folder) under a hash of series_run_key:
    a training already finished there is read back instead of run again, so a long bench resumes
    where it stopped and several processes (say one per data seed) can fill one cache."""
    import hashlib

    if cache is None:
        return train_series_model(family_name, n_obs, budget, model)
    key = series_run_key(family_name, n_obs, budget, model)
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    path = Path(cache) / f"{family_name}-n{n_obs}-seed{budget['seed']}-{digest}.json"
    if path.exists():
        stored = json.loads(path.read_text())
        if stored.get("key") == key:
            return stored["result"]
    started = os.getloadavg()[0]
    result = train_series_model(family_name, n_obs, budget, model)
    # train_s depends on what else ran: the load it trained under goes with it.
    result["measured"] = {"date": time.strftime("%Y-%m-%d %H:%M"), "load_average": [started, os.getloadavg()[0]]}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"key": key, "result": result}, indent=1))
    tmp.replace(path)  # atomic: a reader sees a whole file or none
    return result


def train_series_model(family_name: str, n_obs: int, budget: dict, model: dict | None = None) -> dict:
    """Train `family_name` (latent_ode or rnn) on the spiral series the way the worker loop does
    (seeds, DistributedSampler, train_step(batch, fractional epoch)) in this process; score it on
    the held-out series with the family's own eval_batch."""
    import torch
    from torch.utils.data import DataLoader, DistributedSampler

    from genray.config import build_config
    from genray.families import get_family

    threads = torch.get_num_threads()
    torch.set_num_threads(budget["threads"])
    try:
        cfg = build_config(family_name, overrides=series_overrides(n_obs, budget, model))
        family_cls = get_family(family_name)
        torch.manual_seed(budget["seed"])
        family = family_cls(cfg.model)
        train_set, val_set = family_cls.load_data(cfg.data)
        torch.manual_seed(budget["seed"] * 1000)
        sampler = DistributedSampler(train_set, num_replicas=1, rank=0, shuffle=True, seed=budget["seed"])
        loader = DataLoader(train_set, batch_size=budget["batch_size"], sampler=sampler)
        def score() -> dict:
            family.eval()
            sums: dict[str, float] = {}
            with torch.no_grad():
                for batch in DataLoader(val_set, batch_size=256):
                    for k, v in family.eval_batch(batch).items():
                        sums[k] = sums.get(k, 0.0) + v
            return {k: v / len(val_set) for k, v in sums.items()}

        train_s, early = 0.0, None
        for epoch in range(budget["epochs"]):
            t0 = time.perf_counter()
            sampler.set_epoch(epoch)
            family.train()
            for i, batch in enumerate(loader):
                family.train_step(batch, epoch + i / len(loader))
            train_s += time.perf_counter() - t0
            if epoch + 1 == budget["also_scored_after"]:
                early = score()
        metrics = score()
        refined = refined_rmse(family, val_set, budget["refine_steps"]) if hasattr(family, "refine") else {}
    finally:
        torch.set_num_threads(threads)
    return {"extrap_rmse": math.sqrt(metrics["val_extrap_mse"]), "interp_rmse": math.sqrt(metrics["val_mse"]),
            "extrap_rmse_early": math.sqrt(early["val_extrap_mse"]), "train_s": train_s,
            "parameters": family.num_parameters(), **refined}


def refined_rmse(family, val_set, steps: int) -> dict:
    """The latent ODE's held-out RMSE (as its eval_batch scores it) from z0 refined by `steps`
    gradient steps on each series' observations instead of the recognition net's mean."""
    import torch

    from genray.families.latent_ode import trajectory_errors

    t_obs, x_obs, x_obs_clean, t_ext, x_ext_clean, _ = val_set.tensors
    family.eval()
    mu, _ = family.encode(t_obs, x_obs)
    mean = family.trajectory(family.refine(t_obs, x_obs, mu, steps), torch.cat([t_obs, t_ext], dim=1))
    interp, extrap = trajectory_errors(mean, t_obs.shape[1], x_obs_clean, x_ext_clean)
    return {"extrap_rmse_refined": math.sqrt(extrap.mean()), "interp_rmse_refined": math.sqrt(interp.mean())}


def rnn_width_for(parameters: int) -> int:
    """The RNN width whose parameter count is nearest `parameters` (counts grow with the width)."""
    from genray.config import build_config
    from genray.families import get_family

    rnn = get_family("rnn")

    def count(width: int) -> int:
        return rnn(build_config("rnn", overrides=[f"model.hidden={width}"]).model).num_parameters()

    low, high = 1, 4096
    while low < high:  # the smallest width with at least `parameters`
        mid = (low + high) // 2
        low, high = (mid + 1, high) if count(mid) < parameters else (low, mid)
    return min((w for w in (low - 1, low) if w >= 1), key=lambda w: abs(count(w) - parameters))


def bench_variants(quick: bool, variants: tuple[dict, ...], seeds: tuple[int, ...], points: tuple[int, ...],
                   cache: Path | None = None, log=print) -> list[dict]:
    """The latent ODE with other model settings (`variants`, each {config key: value}) under the
    part's budget, at the given data seeds and observed-point counts: what a change to the model
    would buy, beside the default's claims (not claims themselves)."""
    budget = series_budget(quick)
    cache = None if quick else cache
    out = []
    for model in variants:
        rows = []
        for seed in seeds:
            for n_obs in points:
                got = cached_series_model("latent_ode", n_obs, {**budget, "seed": seed}, model, cache)
                rows.append({"seed": seed, "n_obs": n_obs, **got})
                log(f"latent_ode variant {variant_name(model)}, series seed {seed} n_obs={n_obs}: "
                    f"extrapolation RMSE {got['extrap_rmse']:.4f}")
        out.append({"model": model, "budget": budget, "rows": rows})
    return out


def parse_variant(text: str) -> dict:
    """"encoder=ode_rnn,latent_dim=6" -> {"encoder": "ode_rnn", "latent_dim": 6}, each checked
    against the latent ODE's config; a ValueError that says what is wrong."""
    import yaml

    from genray.config import ConfigError, build_config

    model = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise ValueError(f"--variant takes KEY=VALUE pairs of the latent ODE's model config, got {item!r}")
        model[key.strip()] = yaml.safe_load(value)
    if not model:
        raise ValueError("--variant needs at least one KEY=VALUE, e.g. --variant encoder=ode_rnn")
    try:
        build_config("latent_ode", overrides=[f"model.{k}={json.dumps(v)}" for k, v in model.items()])
    except ConfigError as err:
        raise ValueError(f"--variant {text!r}: {err}") from None
    return model


def variant_name(model: dict) -> str:
    return ", ".join(f"{k}={json.dumps(v)}" for k, v in model.items())


def bench_series(quick: bool, seeds: tuple[int, ...] = SERIES_SEEDS, widths: tuple[int, ...] = RNN_WIDTHS,
                 cache: Path | None = None, log=print) -> dict:
    """Per data seed and observed-point count: the latent ODE, the RNN at equal parameters, and
    the RNN at every width in `widths` (a width equal to the equal-parameter one trains once).
    `cache`: see cached_series_model (none with quick)."""
    budget = series_budget(quick)
    cache = None if quick else cache
    rows = []
    for seed in seeds:
        run_budget = {**budget, "seed": seed}
        for n_obs in SERIES_SIZES:
            row: dict[str, Any] = {"seed": seed, "n_obs": n_obs}
            latent = cached_series_model("latent_ode", n_obs, run_budget, cache=cache)
            row.update({f"latent_ode_{k}": v for k, v in latent.items()})
            equal = rnn_width_for(latent["parameters"])
            by_width = {w: cached_series_model("rnn", n_obs, run_budget, {"hidden": w}, cache)
                        for w in dict.fromkeys((equal, *widths))}
            row.update({f"rnn_{k}": v for k, v in by_width[equal].items()})
            row["rnn_hidden"] = equal
            row["rnn_widths"] = {str(w): {k: by_width[w][k] for k in ("extrap_rmse", "parameters", "train_s")}
                                 for w in widths}
            rows.append(row)
            log(f"series seed {seed} n_obs={n_obs}: extrapolation RMSE latent_ode {row['latent_ode_extrap_rmse']:.4f}, "
                f"rnn {equal} units {row['rnn_extrap_rmse']:.4f}, "
                + ", ".join(f"rnn {w} units {by_width[w]['extrap_rmse']:.4f}" for w in widths))
    from genray.families.latent_ode import SeriesDataConfig

    data = SeriesDataConfig().model_dump(include={"obs_grid", "obs_span", "n_extrap", "extrap_grid", "extrap_span"})
    latent_model = series_run_key("latent_ode", SERIES_SIZES[0], {**budget, "seed": seeds[0]})["model"]
    return {"budget": budget, "seeds": list(seeds), "rnn_widths": list(widths), "data": data, "rows": rows,
            "latent_ode_model": latent_model}


# --- the whole bench ------------------------------------------------------------------------

def overhead_decisions(ode: dict | None) -> list[dict]:
    """OVERHEAD_CLAIMS from the rounds of a ray-train run with the declared budget; another run
    (the in-process path, other epochs or rounds) measures nothing towards them."""
    decisions = []
    for claim, impl, adjoint in OVERHEAD_CLAIMS:
        values = {}
        if ode and ode["genray_path"].startswith("genray.train.fit") and {
                k: ode["rounds"] if k == "rounds" else ode["settings"][k] for k in ODE_BUDGET} == ODE_BUDGET:
            rounds = next(c for c in ode["configs"] if c["adjoint"] == adjoint).get("ms_per_iter_per_round", {})
            if impl in rounds:
                values[0] = median_of_ratios(rounds[impl], rounds["plain"])
        decisions.append(claim.decide(values))
    return decisions


def latent_decisions(latent: dict | None) -> list[dict]:
    """LATENT_CLAIMS from the rows of runs with the declared budget. A row stored before data seeds
    were an option is the budget's seed; its RNN widths other than the equal-parameter one are unknown."""
    decisions = []
    budget = {k: v for k, v in (latent or {}).get("budget", {}).items() if k != "seed"}
    for claim in LATENT_CLAIMS:
        values = {}
        for row in latent["rows"] if latent and budget == SERIES_BUDGET else []:
            seed = row.get("seed", latent["budget"]["seed"])
            if row["n_obs"] != claim.budget["n_obs"] or seed not in claim.seeds:
                continue
            if claim.metric == "latent_ode_over_rnn_equal_parameters":
                values[seed] = row["latent_ode_extrap_rmse"] / row["rnn_extrap_rmse"]
            elif set(map(str, RNN_WIDTHS)) <= set(row.get("rnn_widths", {})):
                best = min(row["rnn_widths"][str(w)]["extrap_rmse"] for w in RNN_WIDTHS)
                values[seed] = row["latent_ode_extrap_rmse"] / best
        decisions.append(claim.decide(values))
    return decisions


PARTS = ("ode", "latent_ode")


def run(*, quick: bool = False, path: str | None = None, rounds: int | None = None,
        storage: Path = Path("runs"), parts: tuple[str, ...] = PARTS, previous: dict | None = None,
        seeds: tuple[int, ...] | None = None, widths: tuple[int, ...] = RNN_WIDTHS,
        variants: tuple[dict, ...] = (), variant_points: tuple[int, ...] = SERIES_SIZES, log=print) -> dict:
    """The whole bench: a dict for bench_results/ode.json. `path`: "ray-train" (default) or "in-process"
    (the default with quick, so that a smoke test needs no Ray run). A part not run now is kept
    from `previous` (the last ode.json), each part with the machine and load it was measured under.
    `seeds` and `widths`: the latent_ode part's data seeds (SERIES_SEEDS; 0 alone with quick) and
    RNN widths. `variants`: latent ODE model settings also trained at `variant_points` (see
    bench_variants); stored variants of the same budget not run again are kept. The claims are
    decided from whatever the parts hold."""
    from genray.bench import machine

    path = path or ("in-process" if quick else "ray-train")
    if path not in ("ray-train", "in-process"):
        raise ValueError(f"path must be 'ray-train' or 'in-process', got {path!r}")
    if not parts or set(parts) - set(PARTS):
        raise ValueError(f"parts must be among {', '.join(PARTS)}, got {', '.join(parts) or 'none'}")
    rounds = rounds or (1 if quick else ODE_BUDGET["rounds"])
    seeds = seeds or ((0,) if quick else SERIES_SEEDS)
    if path == "ray-train" and "ode" in parts:
        import ray

        if not ray.is_initialized():
            from genray.train import start_local_ray

            start_local_ray()
    t0 = time.time()
    result: dict[str, Any] = {"machine": machine(), "quick": quick,
                              "load_average_start": list(os.getloadavg())}
    for part in parts:
        started = list(os.getloadavg())
        result[part] = (bench_ode(quick, path, Path(storage).resolve(), rounds, log) if part == "ode"
                        else bench_series(quick, seeds, widths, Path(storage).resolve() / SERIES_CACHE, log))
        if part == "latent_ode":
            cache = Path(storage).resolve() / SERIES_CACHE
            ran = bench_variants(quick, variants, seeds, variant_points, cache, log)
            kept = [v for v in ((previous or {}).get("latent_ode") or {}).get("variants", [])
                    if v["budget"] == result[part]["budget"] and v["model"] not in [r["model"] for r in ran]
                    and previous.get("quick") == quick]
            if kept or ran:
                result[part]["variants"] = kept + ran
        result[part]["measured"] = {"machine": result["machine"], "load_average_start": started,
                                    "load_average_end": list(os.getloadavg())}
    for part in set(PARTS) - set(parts):
        if previous and part in previous and previous.get("quick") == quick:  # never mix smoke and real figures
            kept = result[part] = previous[part]
            kept.setdefault("measured", {k: previous[k] for k in ("machine", "load_average_start", "load_average_end")})
    result["load_average_end"] = list(os.getloadavg())
    result["wall_s"] = time.time() - t0
    result["claims"] = overhead_decisions(result.get("ode")) + latent_decisions(result.get("latent_ode"))
    return result


def variants_table(lat: dict) -> list[str]:
    """The latent ODE's variants beside the default and the RNN at its best width, same seed and points."""
    default = {(r.get("seed", lat["budget"]["seed"]), r["n_obs"]): r for r in lat["rows"]}
    lines = ["", "Variants of the latent ODE, the same budget (model settings changed from the default; not claims):", "",
             "| variant | data seed | observed points | extrap. RMSE | interp. RMSE | default latent ODE extrap. RMSE "
             "| RNN at its best width extrap. RMSE | parameters | train s |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for variant in lat["variants"]:
        for r in variant["rows"]:
            base = default.get((r["seed"], r["n_obs"]))
            widths = (base or {}).get("rnn_widths") or {}
            best = f"{min(v['extrap_rmse'] for v in widths.values()):.4f}" if widths else "—"
            lines.append(f"| {variant_name(variant['model'])} | {r['seed']} | {r['n_obs']} | {r['extrap_rmse']:.4f} "
                         f"| {r['interp_rmse']:.4f} | {base['latent_ode_extrap_rmse'] if base else float('nan'):.4f} "
                         f"| {best} | {r['parameters']} | {r['train_s']:.0f} |")
    return lines


def recognition(model: dict) -> str:
    """The latent ODE's encoder in words, from its stored model config."""
    what = {"gru": "a GRU reading (value, gap) last to first",
            "ode_rnn": "an ODE-RNN (Rubanova et al. 2019) reading the values last to first"}[model.get("encoder", "gru")]
    return f"{what}, {model['rnn_hidden']} units; latent dimension {model['latent_dim']}, field width {model['hidden']}"


LABELS = {"genray": "genray", "genray-in-process": "genray, no Ray", "plain": "plain torchdiffeq"}


def _one(values: list) -> str:
    return "/".join(str(v) for v in values)


def markdown_table(result: dict) -> str:
    from genray.bench import machine_line

    # Each part says when and under what load it was measured (a part may be kept from an earlier run).
    lines = ["Smoke-test sizes (--quick): the figures mean little."] if result["quick"] else []

    def measured(part: dict) -> list[str]:
        m = part.get("measured")
        if m is None:
            return []
        return ["", machine_line(m["machine"]) + f" Load average {m['load_average_start'][0]:.1f} at the start, "
                f"{m['load_average_end'][0]:.1f} at the end."]

    if "ode" in result:
        ode = result["ode"]
        s = ode["settings"]
        lines += measured(ode)
        impls = ode.get("implementations", ["genray", "plain"])
        lines += [
            "",
            f"`ode` vs the same loop written directly against torchdiffeq: {s['method']} rtol {s['rtol']:g} atol "
            f"{s['atol']:g}, MLP width {s['hidden']}, windows of {s['window']} of {s['n_points']} points on "
            f"[0, {s['t_end']:g}], batch {s['batch_size']}, {s['epochs']} epochs, {s['threads']} torch thread; "
            f"{ode['rounds']} interleaved rounds. genray = {ode['genray_path']}"
            + ("; genray, no Ray = the same training loop (genray.train.loop) in a plain subprocess without "
               "Ray Train, which separates genray's own code from the Ray Train worker"
               if "genray-in-process" in impls else "")
            + "; process niceness " + ", ".join(f"{LABELS[i]} {_one(ode['configs'][0]['niceness'][i])}" for i in impls)
            + " (Ray runs its workers at 15; the other processes are given the same). ms/iter: median over the "
            "rounds' iterations (wall; CPU: the training thread's CPU time, which a busy machine disturbs less); "
            "iter/s from the mean; final error: MSE of the rollout over the whole span; peak memory: growth of "
            "the process's peak resident size during training.",
            "",
            "| adjoint | code | ms / iter | CPU ms / iter | iter / s | NFE / iter (fwd + adj) | peak memory growth MiB | final traj. MSE | vs plain (wall / CPU) |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for c in ode["configs"]:
            for impl in impls:
                m = c[impl]
                peak = "—" if m["peak_rss_growth_mib"] is None else f"{m['peak_rss_growth_mib']:.1f}"
                ratio = {"genray": f"x{c['time_ratio']:.3f} / x{c['cpu_time_ratio']:.3f}",
                         "genray-in-process": f"x{c.get('in_process_time_ratio', 0):.3f} / x{c.get('in_process_cpu_time_ratio', 0):.3f}",
                         "plain": "1"}[impl]
                lines.append(f"| {'yes' if c['adjoint'] else 'no'} | {LABELS[impl]} "
                             f"| {m['ms_per_iter_median']:.2f} | {m['cpu_ms_per_iter_median']:.2f} | {m['iters_per_s']:.1f} | {m['nfe_per_iter']:.1f} "
                             f"({m['nfe_forward_per_iter']:.1f} + {m['nfe_backward_per_iter']:.1f}) | {peak} "
                             f"| {m['final_mse']:.4g} | {ratio} |")
        costs = [f"{'adjoint' if c['adjoint'] else 'backprop'} {c['worker_cost_ms_per_iter']:+.2f} ms/iter "
                 f"({c['worker_cost_fraction']:+.1%})" for c in ode["configs"] if "worker_cost_ms_per_iter" in c]
        if costs:
            lines += ["", "What the Ray Train worker process costs (the genray row minus the genray, no Ray row): "
                      + "; ".join(costs) + ". \"vs plain\" is the ratio of the pooled medians; the claims below "
                      "use the median of the per-round ratios."]
    if "latent_ode" in result:
        lat = result["latent_ode"]
        b = lat["budget"]
        d = lat["data"]
        lines += measured(lat)
        lines += [
            "",
            f"`latent_ode` vs the `rnn` baseline, each with its default config: {b['n_train']} training / "
            f"{b['n_val']} held-out noisy spirals, the same budget for both: {b['epochs']} epochs of batch "
            f"{b['batch_size']} (the same optimizer steps on the same batches), data seeds "
            f"{', '.join(str(x) for x in lat.get('seeds', [b['seed']]))} (each also the weights' and the sampler's "
            "seed), 1 thread, trained "
            "in-process by the worker loop's sampler and train_step. Both see the same irregular noisy "
            f"observations (t = 0 plus n - 1 of the {d['obs_grid']} grid times on (0, {d['obs_span']:.3f}]); the RNN "
            "gets the time gaps as input. RMSE against the noise-free curve; extrapolation: at "
            f"{d['n_extrap']} of the {d['extrap_grid']} grid times on ({d['obs_span']:.3f}, "
            f"{d['obs_span'] + d['extrap_span']:.3f}] (the latent ODE: its posterior-mean trajectory; the RNN: its "
            "autoregressive rollout); interpolation: observed times 2..n."
            + (f" \"z0 refined\": the latent ODE's trajectory from each series' z0 after {b['refine_steps']} "
               "gradient steps on its own observations (`refine_steps` of the deployment), the networks fixed."
               if b.get("refine_steps") else "")
            + (f" The latent ODE's recognition net: {recognition(lat['latent_ode_model'])}."
               if "latent_ode_model" in lat else ""),
            "",
            "The RNN columns are the RNN at equal parameters (its width beside the parameter counts); "
            "\"RNN extrap. RMSE by width\": the RNN at each width of the best-width claim, where measured. "
            "train s: each training's wall time on one thread, which depends on what else shared the cores (each "
            "training's load average, where recorded, is in ode.json as `*_measured`); not a speed comparison.",
            "",
            f"| data seed | observed points | latent ODE extrap. RMSE | RNN extrap. RMSE | latent ODE interp. RMSE | RNN interp. RMSE "
            "| latent ODE, z0 refined: extrap. / interp. RMSE "
            f"| extrap. RMSE after {b['also_scored_after']} epochs (latent ODE / RNN) | parameters (latent ODE / RNN, width) "
            "| train s (latent ODE / RNN) | RNN extrap. RMSE by width |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for row in lat["rows"]:
            refined = (f"{row['latent_ode_extrap_rmse_refined']:.4f} / {row['latent_ode_interp_rmse_refined']:.4f}"
                       if "latent_ode_extrap_rmse_refined" in row else "—")
            widths = ", ".join(f"{w}: {v['extrap_rmse']:.4f}" for w, v in row.get("rnn_widths", {}).items()) or "—"
            width = f", {row['rnn_hidden']} units" if "rnn_hidden" in row else ""
            lines.append(f"| {row.get('seed', b['seed'])} | {row['n_obs']} | {row['latent_ode_extrap_rmse']:.4f} | {row['rnn_extrap_rmse']:.4f} "
                         f"| {row['latent_ode_interp_rmse']:.4f} | {row['rnn_interp_rmse']:.4f} | {refined} "
                         f"| {row['latent_ode_extrap_rmse_early']:.4f} / {row['rnn_extrap_rmse_early']:.4f} "
                         f"| {row['latent_ode_parameters']} / {row['rnn_parameters']}{width} "
                         f"| {row['latent_ode_train_s']:.0f} / {row['rnn_train_s']:.0f} | {widths} |")
        if lat.get("variants"):
            lines += variants_table(lat)
    if result.get("claims"):
        rounds = {c["adjoint"]: c.get("ms_per_iter_per_round", {}) for c in result.get("ode", {}).get("configs", [])}
        lines += ["", *HEADER]
        for d in result["claims"]:
            detail = ""
            if d["claim"]["metric"] == "median per-round ratio" and d["seeds_measured"]:
                impl = next(i for c, i, _ in OVERHEAD_CLAIMS if c.key == d["claim"]["key"])
                per = rounds[d["claim"]["budget"]["adjoint"]]
                detail = "rounds " + ", ".join(f"x{a / b:.3f}" for a, b in zip(per[impl], per["plain"]))
            lines.append(claim_row(d, fmt=".3f", detail=detail))
    return "\n".join(lines).lstrip("\n") + "\n"  # a part's blank separator may lead
