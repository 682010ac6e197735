"""`genray bench compile`: what train.compile (torch.compile of the training networks) buys, on
this machine's CPU or a GPU. The VAE and the GAN train in genray.bench.plain_train's loop, eager
and compiled, one after the other for each seed (so load falls on both alike); samples/s of the
training loop, median over the epochs after the first (the first pays for compiling), and the
first epoch's seconds beside it (what compiling costs, unless TorchInductor's on-disk cache
already holds the compiled code).
"""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable

from genray.bench import machine, machine_line

FAMILIES = ("vae", "gan")
BUDGET = {"epochs": 4, "batch_size": 64, "seeds": [0, 1, 2], "overrides": ["train.quality_every=0"]}


def run(*, device: str = "cpu", families: tuple[str, ...] = FAMILIES, budget: dict | None = None,
        log: Callable[[str], None] = print) -> dict[str, Any]:
    from genray.bench.plain_train import train_plain

    budget = budget or BUDGET
    started = time.perf_counter()
    rows: dict[str, dict[str, Any]] = {}
    for family in families:
        row = rows.setdefault(family, {"eager": [], "compiled": [], "eager_first_epoch_s": [],
                                       "compiled_first_epoch_s": []})
        for seed in budget["seeds"]:
            for mode in ("eager", "compiled") if seed % 2 == 0 else ("compiled", "eager"):
                out = train_plain(family, epochs=budget["epochs"], batch_size=budget["batch_size"], seed=seed,
                                  device=device, overrides=[*budget["overrides"],
                                                            f"train.compile={str(mode == 'compiled').lower()}"])
                epochs = out["epochs"]
                row[mode].append(statistics.median(e["samples"] / e["seconds"] for e in epochs[1:]))
                row[f"{mode}_first_epoch_s"].append(epochs[0]["seconds"])
                log(f"  {family} seed {seed} {mode}: {row[mode][-1]:.0f} samples/s, first epoch "
                    f"{epochs[0]['seconds']:.1f} s")
        row["speedup"] = [c / e for c, e in zip(row["compiled"], row["eager"])]
    return {"machine": machine(), "device": device, "budget": budget, "rows": rows,
            "wall_s": time.perf_counter() - started}


def markdown_table(result: dict[str, Any]) -> str:
    b = result["budget"]
    lines = [f"train.compile on {result['device']}: the plain loop, batch {b['batch_size']}, {b['epochs']} epochs, "
             f"seeds {', '.join(map(str, b['seeds']))}, 1 torch thread; samples/s median over epochs 2.., then over "
             "seeds; the first epoch includes compiling (or loading it from TorchInductor's on-disk cache).", "",
             "| model | eager samples/s | compiled samples/s | compiled / eager (each seed) | first epoch eager (s) | "
             "first epoch compiled (s) |", "|---|---:|---:|---|---:|---:|"]
    med = statistics.median
    for family, r in result["rows"].items():
        lines.append(f"| {family} | {med(r['eager']):.0f} | {med(r['compiled']):.0f} | "
                     f"{med(r['speedup']):.2f} ({', '.join(f'{x:.2f}' for x in r['speedup'])}) | "
                     f"{med(r['eager_first_epoch_s']):.1f} | {med(r['compiled_first_epoch_s']):.1f} |")
    lines += ["", machine_line(result["machine"]), ""]
    return "\n".join(lines)
