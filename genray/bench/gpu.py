"""`genray bench gpu`: genray on one GPU against plain PyTorch and a plain server on the same GPU,
in one script of at most 8 minutes (GPU time comes in short windows). Three parts:

    training  VAE and GAN, 1 worker, fp32 and bf16: genray (Ray Train, one worker with the GPU)
              against genray.bench.plain_train's loop in this process on the same GPU, with the
              same data, batch and step (and the same GPU habits: pinned memory, channels-last,
              autocast). Samples/s of the training loop, median over the epochs after the first;
              one round per seed, plain and genray back to back.
    serving   GAN /sample and VAE /decode (one image as .npy) through Ray Serve, both apps'
              replicas sharing the GPU (num_gpus 0.5 each), against the plain FastAPI server on
              the same GPU (genray.bench.perf.serving), at concurrency 1 and 32.
    heat      the heat solver's milliseconds per backward-Euler step at n = 1024 and 2048, float64
              and float32, on the GPU and on the machine's CPU cores (genray.bench.heat.step_times).

The data is MNIST-sized: 60,000 28x28 digits (the packaged digits, shifted), written as IDX files
and read by genray's own MNIST loader, so a GPU epoch is long enough to time. `--device cpu --quick`
runs the same code at toy sizes on the CPU (the test does): every row, no claim.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch

from genray.bench import machine, machine_line
from genray.bench.claims import HEADER, Claim, claim_row
from genray.bench.perf import serving_rows

FAMILIES = ("vae", "gan")
PRECISIONS = ("fp32", "bf16")
SERVE_CASES = ("gan/sample, 1 image as .npy", "vae/decode, 1 image as .npy")
HEAT_DTYPES = ("float64", "float32")

# The budgets the claims are decided at, fixed before the run: a run at other sizes (--quick)
# decides nothing.
TRAIN_BUDGET = {"images": 60_000, "epochs": 3, "batch_size": 256, "seeds": [0, 1, 2]}
SERVE_BUDGET = {"requests": 1000, "warmup": 100, "rounds": 2, "concurrency": [1, 32], "gpus_per_app": 0.5}
HEAT_BUDGET = {"sizes": [1024, 2048], "steps": 10, "warmup": 2, "cpu_steps": 2}
# --quick: every row from the least work. Each genray run's cost here is Ray Train starting its
# processes, not its epoch, so the four runs start at once (on a 2-CPU Ray, a quarter CPU each)
# after the plain loops; a full run keeps each plain loop and its genray run back to back.
QUICK = {"train": {"images": 128, "epochs": 1, "batch_size": 32, "seeds": [0], "together": True,
                   "cpus_per_worker": 0.25},
         "serve": {"requests": 20, "warmup": 4, "rounds": 1, "concurrency": [1, 4], "gpus_per_app": 0.0},
         "heat": {"sizes": [32, 64], "steps": 2, "warmup": 1, "cpu_steps": 2}}

CLAIMS = [
    *[Claim(key=f"train_{family}_{precision}_vs_plain",
            text=f"{family} {precision}: genray 1 worker / plain PyTorch, training samples/s on one GPU",
            metric="per-seed ratio", target=0.95, direction=">=", budget=TRAIN_BUDGET, seeds=(0, 1, 2))
      for family in FAMILIES for precision in PRECISIONS],
    *[Claim(key=f"train_{family}_bf16_vs_fp32", text=f"{family}: bf16 / fp32, genray training samples/s on one GPU",
            metric="per-seed ratio", target=1.5, direction=">=", budget=TRAIN_BUDGET, seeds=(0, 1, 2))
      for family in FAMILIES],  # both are convolutional
    *[Claim(key=f"serve_{case.split(',')[0].replace('/', '_')}_vs_plain",
            text=f"{case}: Ray Serve / plain FastAPI on the same GPU, req/s at concurrency 32",
            metric="median per-round ratio", target=3.0, direction=">=", budget=SERVE_BUDGET, seeds=(0,))
      for case in SERVE_CASES],
    Claim(key="heat_1024_float64_ms", text="heat solver, n = 1024, float64: ms per step on one GPU",
          metric="ms per step", target=5.0, direction="<=", budget=HEAT_BUDGET, seeds=(0,)),
    Claim(key="heat_2048_float64_ms", text="heat solver, n = 2048, float64: ms per step on one GPU",
          metric="ms per step", target=15.0, direction="<=", budget=HEAT_BUDGET, seeds=(0,)),
]


def digits_folder(folder: Path, images: int) -> Path:
    """`images` 28x28 digits as MNIST IDX files: the packaged 1797 digits, each copy shifted by
    up to 2 pixels (a fixed draw), so that every epoch is as long as MNIST's."""
    from genray.data.images import digits_28x28, write_mnist

    base, labels = digits_28x28()  # (1797, 1, 28, 28), (1797,)
    gen = torch.Generator().manual_seed(0)
    index = torch.arange(images) % len(base)
    shifts = torch.randint(-2, 3, (images, 2), generator=gen)
    out = torch.stack([torch.roll(base[i], (int(dy), int(dx)), dims=(1, 2)) for i, (dy, dx) in zip(index, shifts)])
    return write_mnist(folder, out, labels[index])


def median_after_first(values: list[float]) -> float:
    return statistics.median(values[1:] if len(values) > 1 else values)


def training(device: str, budget: dict, work: Path, log: Callable[[str], None]) -> dict[str, Any]:
    """Each family x precision x seed: the plain loop, then genray's run, back to back (with
    budget["together"]: every plain loop, then every genray run at once)."""
    from concurrent.futures import ThreadPoolExecutor

    from genray.bench.plain_train import train_plain
    from genray.config import build_config
    from genray.train.driver import fit

    source = digits_folder(work / "digits", budget["images"])
    runs = [(family, precision, seed) for family in FAMILIES for precision in PRECISIONS for seed in budget["seeds"]]

    def overrides(precision: str) -> list[str]:
        # Unlabelled (data.labels=[]): the GAN is then ranked by val_moment_mse, not by the
        # sample quality of a classifier that would first train on the whole set.
        return [f"data.source={source}", f"train.precision={precision}", "train.quality_every=0",
                "train.preview_every=0", "data.val_fraction=0.02", "data.labels=[]"]

    def plain(run: tuple[str, str, int]) -> float:
        family, precision, seed = run
        epochs = train_plain(family, epochs=budget["epochs"], batch_size=budget["batch_size"],
                             overrides=overrides(precision), seed=seed, device=device)["epochs"]
        return median_after_first([e["samples"] / e["seconds"] for e in epochs])

    def genray(run: tuple[str, str, int]) -> float:
        family, precision, seed = run
        cpus = [f"train.cpus_per_worker={budget['cpus_per_worker']}"] if "cpus_per_worker" in budget else []
        cfg = build_config(family, overrides=[
            *overrides(precision), *cpus, "train.workers=1", f"train.use_gpu={str(device == 'cuda').lower()}",
            f"train.epochs={budget['epochs']}", f"train.batch_size={budget['batch_size']}",
            f"train.seed={seed}", f"storage={work / 'runs'}", f"name={family}-{precision}-{seed}"])
        return median_after_first([h["train_samples_per_s"] for h in fit(cfg, verbose=False).history])

    if budget.get("together"):
        plain_rates = [plain(run) for run in runs]
        with ThreadPoolExecutor(len(runs)) as pool:
            speeds = list(zip(plain_rates, pool.map(genray, runs)))
    else:
        speeds = [(plain(run), genray(run)) for run in runs]
    rows: dict[str, dict[str, list]] = {}
    for (family, precision, seed), (plain_rate, genray_rate) in zip(runs, speeds):
        key = f"{family} {precision}"
        row = rows.setdefault(key, {"plain": [], "genray": []})
        row["plain"].append(plain_rate)
        row["genray"].append(genray_rate)
        log(f"  {key} seed {seed}: plain {plain_rate:.0f}, genray {genray_rate:.0f} samples/s")
    for row in rows.values():
        row["genray_vs_plain"] = [g / p for g, p in zip(row["genray"], row["plain"])]
    for family in FAMILIES:
        fp32, bf16 = rows[f"{family} fp32"]["genray"], rows[f"{family} bf16"]["genray"]
        rows[f"{family} bf16"]["bf16_vs_fp32"] = [b / f for b, f in zip(bf16, fp32)]
    return {"budget": budget, "device": device, "rows": rows}


def serving(device: str, budget: dict, log: Callable[[str], None]) -> dict[str, Any]:
    from genray.bench import perf

    return perf.serving(budget["concurrency"], budget["requests"], budget["rounds"], budget["warmup"], [1], log,
                        cases=list(SERVE_CASES), gpus_per_app=budget["gpus_per_app"], device=device)


def heat(device: str, budget: dict, log: Callable[[str], None]) -> dict[str, Any]:
    """The solver on `device`, eager and, on CUDA, compiled in float64 (HeatStepper(compile=True): CUDA graphs);
    then eager on the CPU cores (the comparison's other side; on a CPU-only run the two are the same
    device and the CPU rows are not repeated). Each row says whether it was `compiled`.

    Compiling costs the first warm-up step of each compiled row (its first_step_seconds). Estimated,
    not yet measured on a GPU: 30-90 s per (n, dtype) (the V-cycle graph has ~800 nodes at n = 1024
    and ~900 at 2048; on this project's 2-core CPU inductor takes 30-100 s for ~600 at n = 512), so
    1-3 of the bench's 8 minutes for the two float64 rows. A CPU run (--quick, the tests') has no compiled rows: on the CPU they
    are slower than eager ones and compiling would cost the quick run a minute."""
    from genray.bench.heat import step_times

    sizes = tuple(budget["sizes"])
    rows = step_times(sizes=sizes, dtypes=HEAT_DTYPES, device=device, steps=budget["steps"], warmup=budget["warmup"])
    if device == "cuda":  # float64 only: the claims' rows, and compiling every row might not fit 8 minutes
        rows += step_times(sizes=sizes, dtypes=("float64",), device=device, steps=budget["steps"],
                           warmup=budget["warmup"], compile=True)
    if device != "cpu":
        torch.set_num_threads(os.cpu_count() or 1)
        rows += step_times(sizes=tuple(budget["sizes"]), dtypes=HEAT_DTYPES, device="cpu",
                           steps=budget["cpu_steps"], warmup=1)
        torch.set_num_threads(1)
    for r in rows:
        log(f"  heat n={r['n']} {r['dtype']} on {r['device']}{', compiled' if r['compiled'] else ''}: "
            f"{r['ms_per_step']:.2f} ms per step (first step {r['first_step_seconds']:.1f} s)")
    return {"budget": budget, "rows": rows}


PARTS = ("training", "serving", "heat")


def run(*, device: str | None = None, quick: bool = False, parts: tuple[str, ...] = PARTS,
        log: Callable[[str], None] = print) -> dict[str, Any]:
    import ray

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be cpu or cuda, got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: this machine has no CUDA GPU that torch can see")
    unknown = set(parts) - set(PARTS)
    if unknown:
        raise ValueError(f"unknown parts {sorted(unknown)}; parts: {', '.join(PARTS)}")
    budgets = QUICK if quick else {"train": TRAIN_BUDGET, "serve": SERVE_BUDGET, "heat": HEAT_BUDGET}
    result: dict[str, Any] = {"machine": machine(), "device": device, "quick": quick,
                              "gpu": torch.cuda.get_device_name() if device == "cuda" else None}
    started = time.perf_counter()
    torch.set_num_threads(1)  # as genray's workers and replicas run
    work = Path(tempfile.mkdtemp(prefix="genray-bench-gpu-"))
    started_ray = not ray.is_initialized()
    if started_ray:
        ray.init(address="local", include_dashboard=False, log_to_driver=False)
    try:
        if "heat" in parts:
            log("heat")
            result["heat"] = heat(device, budgets["heat"], log)
        if "training" in parts:
            log("training")
            result["training"] = training(device, budgets["train"], work, log)
        if "serving" in parts:
            log("serving")
            result["serving"] = serving(device, budgets["serve"], log)
    finally:
        if started_ray:
            from ray import serve

            serve.shutdown()
            ray.shutdown()
    result["wall_s"] = time.perf_counter() - started
    return result


def claim_values(result: dict[str, Any]) -> dict[str, dict[int, float]]:
    """Each claim's values per seed, from a run at the claims' budgets on a GPU (none otherwise)."""
    if result.get("quick") or result.get("device") != "cuda":
        return {}
    values: dict[str, dict[int, float]] = {}
    t = result.get("training")
    if t and t["budget"] == TRAIN_BUDGET:
        for family in FAMILIES:
            for precision in PRECISIONS:
                ratios = t["rows"][f"{family} {precision}"]["genray_vs_plain"]
                values[f"train_{family}_{precision}_vs_plain"] = dict(zip(TRAIN_BUDGET["seeds"], ratios))
            values[f"train_{family}_bf16_vs_fp32"] = dict(zip(TRAIN_BUDGET["seeds"],
                                                              t["rows"][f"{family} bf16"]["bf16_vs_fp32"]))
    s = result.get("serving")
    if s and s["requests_per_round"] == SERVE_BUDGET["requests"] and s["rounds"] >= SERVE_BUDGET["rounds"]:
        from genray.bench.perf import genray_label

        for case in SERVE_CASES:
            server = s["endpoints"][case]["32"][genray_label(1)]
            values[f"serve_{case.split(',')[0].replace('/', '_')}_vs_plain"] = {
                0: statistics.median(server["vs_plain_by_round"]["throughput_rps"])}
    h = result.get("heat")
    if h and h["budget"] == HEAT_BUDGET:
        # A size's compiled row, where there is one, decides: it is what a user runs for speed. Eager
        # rows come first, so a compiled row overwrites its size's eager value.
        on_gpu = [r for r in h["rows"] if r["device"].startswith("cuda") and r["dtype"] == "float64"]
        for r in sorted(on_gpu, key=lambda r: r.get("compiled", False)):
            values[f"heat_{r['n']}_float64_ms"] = {0: r["ms_per_step"]}
    return values


def decisions(result: dict[str, Any]) -> list[dict[str, Any]]:
    values = claim_values(result)
    return [claim.decide(values.get(claim.key, {})) for claim in CLAIMS]


def markdown_table(result: dict[str, Any]) -> str:
    where = f"{result['gpu']} (CUDA)" if result["device"] == "cuda" else "the CPU"
    lines = [f"On {where}{', toy sizes (--quick): no claim is decided' if result['quick'] else ''}; "
             f"the whole bench took {result['wall_s']:.0f} s.", ""]
    if "training" in result:
        t = result["training"]
        b = t["budget"]
        lines += [f"Training: {b['images']} 28x28 digits, batch {b['batch_size']}, {b['epochs']} epochs, 1 worker, "
                  f"seeds {', '.join(map(str, b['seeds']))}; samples/s of the training loop, median over epochs "
                  "2.., then over seeds.", "",
                  "| model | plain PyTorch | genray 1 worker | genray / plain | bf16 / fp32 (genray) |",
                  "|---|---:|---:|---:|---:|"]
        for key, row in t["rows"].items():
            speedup = f"{statistics.median(row['bf16_vs_fp32']):.2f}" if "bf16_vs_fp32" in row else "—"
            lines.append(f"| {key} | {statistics.median(row['plain']):.0f} | {statistics.median(row['genray']):.0f} | "
                         f"{statistics.median(row['genray_vs_plain']):.3f} | {speedup} |")
        lines.append("")
    if "serving" in result:
        s = result["serving"]
        lines += [f"Serving: each request {s['requests_per_round']} times x {s['rounds']} rounds after "
                  f"{s['warmup']} warm-up; Ray Serve ({s['mode']}), 1 replica per app; plain: one uvicorn process, "
                  "no batching. Median over rounds.", "", *serving_rows(s), ""]
    if "heat" in result:
        h = result["heat"]
        lines += ["Heat solver: backward Euler steps of the course problem, multigrid-preconditioned CG; median ms "
                  "per step after warm-up. Compiled: HeatStepper(compile=True), CG's iterations as CUDA graphs; "
                  "its first step compiles them. The 5 ms and 15 ms claims are decided on the compiled float64 "
                  "GPU rows where present (what a user runs for speed), else on the eager ones.", "",
                  "| n | dtype | device | compiled | ms per step | first step s | CG iterations per step | "
                  "final relative residual |", "|---:|---|---|---|---:|---:|---:|---:|"]
        lines += [f"| {r['n']} | {r['dtype']} | {r['device']} | {'yes' if r.get('compiled') else 'no'} | "
                  f"{r['ms_per_step']:.2f} | {r.get('first_step_seconds', 0.0):.1f} | {r['cg_iterations']:.1f} | "
                  f"{r['residual']:.1e} |" for r in h["rows"]]
        lines.append("")
    decided = decisions(result)
    lines += ["Claims (decided only on a GPU at the declared budgets):", "", *HEADER,
              *[claim_row(d) for d in decided], "", machine_line(result["machine"]), ""]
    return "\n".join(lines)
