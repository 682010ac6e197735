"""`genray bench data`: the streaming ingest of a user's image files through Ray Data, at 64x64 RGB.

Three parts, each on data the bench writes itself (the built-in coloured shapes, saved as PNG
files in a folder, as a user's own images would be):

ingest   images/s that Ray Data's tasks read, decode and resize (80x80 PNG files -> 64x64 by
         resize + centre crop), iterated on the driver with no training (the second of two
         passes, so the start of Ray Data's worker processes is left out); per CPU is that rate over
         the CPUs of the Ray session. Beside it, the images/s the training loop consumes (the
         streaming run of part `step`).
step     the time per training step of one worker on the same model, batch and images, once from
         memory (data.source=shapes: tensors in the worker) and once streamed (images of the same
         set and number as PNG files: Ray Data decodes them while the worker trains). Per run: ms per step over the
         epochs after the first (the loop's train_samples_per_s, which includes waiting for data).
         ROUNDS rounds, interleaved, alternating which path goes first; the ratio of the medians
         is the figure, with target STEP_RATIO_TARGET.
memory   a run over a folder whose decoded images are MEMORY_FACTOR times the object store's size
         (a Ray session of its own, started with object_store_memory = STORE_MIB), beside the same
         run over a folder the object store's size: the peak resident memory of the Ray session's
         processes (sampled every SAMPLE_S with psutil, the driver included) and the bytes
         Ray spilled to disk. Streaming holds a bounded window of the data, so the peak over the
         larger set stays within MEMORY_GROWTH_TARGET of the smaller one's.

The targets are fixed here, before the runs that decide them.
"""

from __future__ import annotations

import statistics
import threading
import time
from pathlib import Path
from typing import Any

from genray.bench.claims import HEADER, Claim, claim_row

SIZE = 64  # the images' side, in the model and in the files the pipeline reads
FILE_SIZE = 80  # the PNG files' side: the ingest part resizes and crops them to SIZE
INGEST_IMAGES = 4096
STEP_IMAGES = 4096
STEP_EPOCHS = 3  # the first is left out (start-up, first decode of every file)
ROUNDS = 3
BATCH = 64
STORE_MIB = 128  # object_store_memory of the memory part's Ray session
MEMORY_FACTOR = 4
SAMPLE_S = 0.25
# The model every run trains: a small conv VAE, so the step time is not all arithmetic and a
# slow input pipeline would show.
MODEL = ["model.channels=16", "model.hidden=128", "model.latent_dim=16"]

STEP_RATIO_TARGET = 1.15  # streamed ms/step over in-memory ms/step, at most
MEMORY_GROWTH_TARGET = 1.10  # peak memory over the 4x set over that over the 1x set, at most
# The declared claims (genray.bench.claims): one measurement each (no training seed), decided only
# on a run of this budget (a --quick run decides nothing). The step ratio is the median over the
# interleaved rounds of each round's streamed / in-memory ratio; the ratio of the medians is kept beside.
DATA_CLAIMS = {
    "step": Claim(key="data_streamed_step", metric="median per-round ratio", target=STEP_RATIO_TARGET,
                  direction="<=", seeds=(0,),
                  budget={"images": STEP_IMAGES, "epochs": STEP_EPOCHS, "rounds": ROUNDS, "batch": BATCH},
                  text="streamed / in-memory ms per training step, 1 worker, 64x64 RGB"),
    "memory": Claim(key="data_memory_growth", metric="peak resident memory ratio", target=MEMORY_GROWTH_TARGET,
                    direction="<=", seeds=(0,), budget={"store_mib": STORE_MIB, "factor": MEMORY_FACTOR},
                    text=f"peak memory streaming a set {MEMORY_FACTOR}x the object store / a set the store's size"),
}

QUICK = {"ingest_images": 256, "step_images": 256, "step_epochs": 2, "rounds": 1, "memory_factor": 2,
         "store_mib": 96, "memory_images": 512}


def write_pngs(folder: Path, n: int, size: int, seed: int, chunk: int = 2048) -> dict[str, Any]:
    """n built-in coloured shapes as PNG files size x size in class subfolders under `folder`."""
    import numpy as np
    from PIL import Image

    from genray.data.shapes import SHAPE_LABELS, colour_shapes

    for label in SHAPE_LABELS:
        (folder / label).mkdir(parents=True, exist_ok=True)
    total = 0
    for start in range(0, n, chunk):
        count = min(chunk, n - start)
        images, labels = colour_shapes(count, size, seed + start)
        pixels = (images.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)  # (n, S, S, 3)
        for i, (array, label) in enumerate(zip(pixels, labels.tolist())):
            path = folder / SHAPE_LABELS[label] / f"{start + i:07d}.png"
            Image.fromarray(array).save(path)
            total += path.stat().st_size
    return {"images": n, "side": size, "file_mib": total / 2**20, "decoded_mib": n * 3 * SIZE * SIZE / 2**20}


# --- ingest ------------------------------------------------------------------------------------

def ingest_rate(folder: Path) -> dict[str, Any]:
    """Images/s that the Ray Data pipeline of an image folder reads, decodes and resizes."""
    import ray

    from genray.data import DataConfig
    from genray.data.pipeline import streams_for

    cfg = DataConfig(source=str(folder), image_size=SIZE, channels=3, val_fraction=0.01)
    streams = streams_for(cfg, seed=0)
    for _ in range(2):  # the second pass is timed: the first also starts Ray Data's workers
        started, images = time.perf_counter(), 0
        for batch in streams.datasets["train"].iter_batches(batch_size=256, batch_format="numpy"):
            images += len(batch["image"])
        seconds = time.perf_counter() - started
    cpus = ray.cluster_resources().get("CPU", 1.0)
    return {"images": images, "seconds": seconds, "images_per_s": images / seconds,
            "images_per_s_per_cpu": images / seconds / cpus, "cpus": cpus}


# --- step time ---------------------------------------------------------------------------------

def train(name: str, source: str, storage: Path, epochs: int, limit: int | None = None) -> dict[str, Any]:
    """One worker trains the bench's VAE on `source`; ms per step after the first epoch."""
    from genray.config import build_config
    from genray.train import fit

    overrides = [f"name={name}", f"storage={storage}", f"data.source={source}", f"data.image_size={SIZE}",
                 "data.channels=3", f"train.epochs={epochs}", f"train.batch_size={BATCH}", "train.workers=1",
                 "train.preview_every=0", "train.quality_every=0", *MODEL]
    if limit is not None:
        overrides.append(f"data.limit={limit}")
    summary = fit(build_config("vae", overrides=overrides), verbose=False)
    later = [h for h in summary.history if h["epoch"] >= 1] or summary.history
    rates = [h["train_samples_per_s"] for h in later]
    return {"ms_per_step": statistics.median(1000.0 * BATCH / r for r in rates),
            "samples_per_s": statistics.median(rates), "wall_s": summary.wall_s,
            "val_neg_elbo": summary.metrics.get("val_neg_elbo")}


def step_times(folder: Path, storage: Path, images: int, epochs: int, rounds: int) -> dict[str, Any]:
    """In-memory against streamed, interleaved rounds; the same model, batch, kind and number of images."""
    runs: dict[str, list[dict[str, Any]]] = {"in_memory": [], "streamed": []}
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for r in range(rounds):
        order = ["in_memory", "streamed"] if r % 2 == 0 else ["streamed", "in_memory"]
        for path in order:
            source = "shapes" if path == "in_memory" else str(folder)
            # The folder's training share (val_fraction 0.2, as both use) is the in-memory limit.
            runs[path].append(train(f"data-{path}-{stamp}-{r}", source, storage, epochs,
                                    limit=images - round(0.2 * images) if path == "in_memory" else None))
    medians = {path: statistics.median(run["ms_per_step"] for run in rs) for path, rs in runs.items()}
    ratio = medians["streamed"] / medians["in_memory"]
    return {"runs": runs, "ms_per_step": medians, "ratio": ratio, "epochs": epochs}


# --- memory ------------------------------------------------------------------------------------

def tree_rss_mib() -> float:
    """Resident memory of this process and all its descendants (the local Ray session), in MiB."""
    import psutil

    me = psutil.Process()
    total = 0
    for proc in [me, *me.children(recursive=True)]:
        try:
            total += proc.memory_info().rss
        except psutil.Error:
            continue
    return total / 2**20


class PeakSampler:
    """The largest tree_rss_mib() seen between start() and stop(), sampled every SAMPLE_S."""

    def __init__(self):
        self.peak, self._done = 0.0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._done.is_set():
            self.peak = max(self.peak, tree_rss_mib())
            self._done.wait(SAMPLE_S)

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        self._thread.join()


def spilled_mib() -> float:
    """Bytes this Ray session spilled to its local disk so far, in MiB."""
    import ray

    folder = Path(ray._private.worker._global_node.get_session_dir_path())
    return sum(f.stat().st_size for f in folder.rglob("ray_spilled_objects*/*") if f.is_file()) / 2**20


def memory_run(folder: Path, storage: Path, name: str) -> dict[str, Any]:
    before = tree_rss_mib()
    spilled = spilled_mib()
    with PeakSampler() as sampler:
        result = train(name, str(folder), storage, epochs=1)
    return {"rss_before_mib": before, "peak_rss_mib": sampler.peak, "spilled_mib": spilled_mib() - spilled,
            "samples_per_s": result["samples_per_s"], "wall_s": result["wall_s"]}


def memory(work: Path, storage: Path, store_mib: int, factor: int, images_1x: int | None = None) -> dict[str, Any]:
    """Runs over 1x and `factor`x the object store's size, in a Ray session with that store."""
    import ray

    from genray.train import start_local_ray

    per_image = 3 * SIZE * SIZE  # decoded bytes: uint8 (C, S, S)
    n1 = images_1x or store_mib * 2**20 // per_image
    sets = {"1x": write_pngs(work / "memory-1x", n1, SIZE, seed=10_000_000),
            f"{factor}x": write_pngs(work / f"memory-{factor}x", n1 * factor, SIZE, seed=20_000_000)}
    ray.shutdown()
    start_local_ray(object_store_memory=store_mib * 2**20)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    try:
        runs = {key: {**sets[key], **memory_run(work / f"memory-{key}", storage, f"data-memory-{key}-{stamp}")}
                for key in sets}
    finally:
        ray.shutdown()
    growth = runs[f"{factor}x"]["peak_rss_mib"] / runs["1x"]["peak_rss_mib"]
    return {"store_mib": store_mib, "factor": factor, "runs": runs, "peak_growth": growth}


def run(storage: Path, work: Path, quick: bool = False, log=print) -> dict[str, Any]:
    import ray

    from genray.bench import machine
    from genray.train import start_local_ray

    q = QUICK if quick else {}
    ingest_n, step_n = q.get("ingest_images", INGEST_IMAGES), q.get("step_images", STEP_IMAGES)
    if not ray.is_initialized():
        start_local_ray()
    info = machine()
    log(f"writing {ingest_n} {FILE_SIZE}x{FILE_SIZE} and {step_n} {SIZE}x{SIZE} PNG files under {work}")
    ingest_set = write_pngs(work / "ingest", ingest_n, FILE_SIZE, seed=1_000_000)
    step_set = write_pngs(work / "step", step_n, SIZE, seed=0)  # data.source=shapes draws these from seed 0
    log("ingest")
    ingest = {**ingest_set, **ingest_rate(work / "ingest")}
    log("step time: in memory against streamed")
    steps = step_times(work / "step", storage, step_n, q.get("step_epochs", STEP_EPOCHS), q.get("rounds", ROUNDS))
    ingest["training_consumes_per_s"] = statistics.median(r["samples_per_s"] for r in steps["runs"]["streamed"])
    log("memory over a set bigger than the object store")
    mem = memory(work, storage, q.get("store_mib", STORE_MIB), q.get("memory_factor", MEMORY_FACTOR),
                 q.get("memory_images"))
    result = {"machine": info, "quick": quick, "size": SIZE, "batch": BATCH, "model": MODEL,
              "ingest": ingest, "step": {**steps, "set": step_set}, "memory": mem}
    result["claims"] = decisions(result)
    return result


def step_ratios_by_round(step: dict[str, Any]) -> list[float]:
    """Each interleaved round's streamed / in-memory ms per step."""
    return [s["ms_per_step"] / m["ms_per_step"] for m, s in zip(step["runs"]["in_memory"], step["runs"]["streamed"])]


def decisions(result: dict[str, Any]) -> list[dict[str, Any]]:
    """DATA_CLAIMS from a run's figures; a quick run, or another budget, decides nothing."""
    step, mem = result["step"], result["memory"]
    values: dict[str, dict[int, float]] = {"step": {}, "memory": {}}
    if not result["quick"]:
        # A full run trains STEP_EPOCHS a run (only --quick changes it; runs now also store it).
        ran = {"images": step["set"]["images"], "epochs": step.get("epochs", STEP_EPOCHS),
               "rounds": len(step["runs"]["in_memory"]), "batch": result["batch"]}
        if ran == DATA_CLAIMS["step"].budget:
            values["step"][0] = statistics.median(step_ratios_by_round(step))
        if {"store_mib": mem["store_mib"], "factor": mem["factor"]} == DATA_CLAIMS["memory"].budget:
            values["memory"][0] = mem["peak_growth"]
    return [DATA_CLAIMS[k].decide(values[k]) for k in DATA_CLAIMS]


def markdown_table(result: dict[str, Any]) -> str:
    from genray.bench import machine_line

    ing, st, mem = result["ingest"], result["step"], result["memory"]
    lines = [
        f"Streaming ingest of image files through Ray Data, {result['size']}x{result['size']} RGB, batch "
        f"{result['batch']}{' (quick: sizes too small to mean much)' if result['quick'] else ''}.",
        "",
        "| figure | value |",
        "|---|---|",
        f"| ingest: PNG {FILE_SIZE}x{FILE_SIZE} -> decoded, resized {result['size']}x{result['size']} | "
        f"{ing['images_per_s']:.0f} images/s = {ing['images_per_s_per_cpu']:.0f} per CPU ({ing['cpus']:.0f} CPUs) |",
        f"| training consumes (1 worker, streamed) | {ing['training_consumes_per_s']:.0f} images/s |",
        f"| step, in memory | {st['ms_per_step']['in_memory']:.1f} ms |",
        f"| step, streamed | {st['ms_per_step']['streamed']:.1f} ms |",
        f"| streamed / in memory: ratio of the medians | {st['ratio']:.2f}x |",
        f"| streamed / in memory: each round | {', '.join(f'{r:.2f}x' for r in step_ratios_by_round(st))} |",
    ]
    for key, r in mem["runs"].items():
        lines.append(f"| peak memory, {key} the object store ({r['images']} images, {r['decoded_mib']:.0f} MiB "
                     f"decoded; store {mem['store_mib']} MiB) | {r['peak_rss_mib']:.0f} MiB "
                     f"(spilled {r['spilled_mib']:.0f} MiB) |")
    lines.append(f"| peak growth, {mem['factor']}x over 1x | {mem['peak_growth']:.2f}x |")
    lines += ["", *HEADER, *(claim_row(d, fmt=".2f") for d in decisions(result))]
    lines += ["", "Peak memory: resident set of the driver and every Ray process of the session, summed "
              "(shared pages count once per process).", "", machine_line(result["machine"])]
    return "\n".join(lines) + "\n"
