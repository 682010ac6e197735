"""`genray bench trials`: what a Tune trial costs outside its epochs.

Both parts search the VAE through `genray.tune.build_tuner`, the code path of `genray tune`,
with one worker per trial and a Tune callback on the driver that clocks every trial:

    start-up  FIFO searches of STARTUP_BUDGET["trials"] trials, 2 at once, once with the trials
              training in their own process and once with every trial driving a nested Ray
              Train run of its one worker; the two kinds alternate, one round per seed. A
              trial's start-up is the time from Tune launching it (the driver's on_trial_start)
              to the start of its first epoch (the loop's `epoch_started_at`): the actor's
              process, imports, data, model and, when nested, the Train run's controller,
              placement group and worker. A round's figure is the median over its trials.
    large     An ASHA search of LARGE_BUDGET["num_samples"] trials, 2 at once: its wall time
              against the time its trials spent in their epochs (the loop's `epoch_s`, summed)
              over the concurrency. overhead = wall / (sum of epoch_s / concurrent) - 1: what
              starting, stopping and scheduling trials adds to the training itself.

The claims (CLAIMS) are fixed here before the runs that decide them; a run with another budget
decides neither.
"""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path
from typing import Any

from genray.bench import machine, machine_line
from genray.bench.claims import HEADER, Claim, claim_row

# Small VAE trials: one epoch of 512 images takes about a second here, so start-up dominates.
FAST = ["data.limit=512", "train.quality_every=0", "train.preview_every=0", "train.workers=1"]
STARTUP_BUDGET = {"family": "vae", "trials": 6, "epochs": 2, "max_concurrent": 2}
STARTUP = Claim(
    key="trial_startup", metric="in_process_startup_s", target=3.0, direction="<=",
    text="1-worker trial in its own process: Tune's launch to its first epoch, s (median over a round's trials)",
    budget=STARTUP_BUDGET, seeds=(0, 1, 2))
LARGE_BUDGET = {"family": "vae", "num_samples": 200, "epochs": 4, "max_concurrent": 2, "scheduler": "asha"}
OVERHEAD = Claim(
    key="large_search_overhead", metric="overhead", target=0.10, direction="<=",
    text="200-trial ASHA search, 2 at once: wall / (trials' epoch seconds / 2) - 1",
    budget=LARGE_BUDGET, seeds=(0,))
CLAIMS = (STARTUP, OVERHEAD)


def trial_clock():
    """A Tune callback recording, per trial, when the driver launched it, when its first epoch
    started, and the seconds of all its epochs."""
    import psutil
    from ray import tune

    class TrialClock(tune.Callback):
        def __init__(self):
            self.launched: dict[str, float] = {}
            self.first_epoch: dict[str, float] = {}
            self.epoch_s: dict[str, float] = {}
            self.completed = 0
            self.driver_rss_mib: dict[int, float] = {}  # trials completed -> the driver's RSS

        def on_trial_start(self, iteration, trials, trial, **info):
            self.launched.setdefault(trial.trial_id, time.time())

        def on_trial_complete(self, iteration, trials, trial, **info):
            # The driver's resident memory as trials finish: a long search must not grow with them.
            self.completed += 1
            if self.completed in (20, 50, 100, 200, 500):
                self.driver_rss_mib[self.completed] = round(psutil.Process().memory_info().rss / 2**20, 1)

        def on_trial_result(self, iteration, trials, trial, result, **info):
            self.first_epoch.setdefault(trial.trial_id, float(result["epoch_started_at"]))
            self.epoch_s[trial.trial_id] = self.epoch_s.get(trial.trial_id, 0.0) + float(result["epoch_s"])

        def startup_s(self) -> list[float]:
            return [self.first_epoch[t] - self.launched[t] for t in self.first_epoch if t in self.launched]

    return TrialClock()


def search(name: str, storage: Path, *, num_samples: int, epochs: int, max_concurrent: int, scheduler: str,
           nested: bool, seed: int, overrides: list[str]) -> tuple[Any, float]:
    """One search of the VAE's packaged space; (its TrialClock, wall seconds)."""
    from genray.config import build_config
    from genray.tune import build_tuner, load_space

    spec = load_space("vae", None)
    base = build_config("vae", None, [*FAST, f"train.epochs={epochs}", *overrides])
    clock = trial_clock()
    tuner = build_tuner("vae", name=name, storage=storage, spec=spec, base=base, scheduler=scheduler,
                        num_samples=num_samples, max_concurrent=max_concurrent, seed=seed, callbacks=[clock],
                        nested=nested)
    started = time.monotonic()
    results = tuner.fit()
    wall = time.monotonic() - started
    if results.errors:
        raise RuntimeError(f"bench trials: {len(results.errors)} trial(s) of {name} failed: {results.errors[0]}")
    return clock, wall


def startup_round(seed: int, storage: Path, overrides: list[str]) -> dict[str, Any]:
    b = STARTUP_BUDGET
    out: dict[str, Any] = {"seed": seed}
    # Alternate which kind goes first, so a slow start of the machine falls on both.
    kinds = [("in_process", False), ("nested", True)]
    for kind, nested in kinds if seed % 2 == 0 else kinds[::-1]:
        load = os.getloadavg()[0]
        clock, wall = search(f"startup-{kind}-{seed}-{time.strftime('%H%M%S')}", storage, num_samples=b["trials"],
                             epochs=b["epochs"], max_concurrent=b["max_concurrent"], scheduler="fifo", nested=nested,
                             seed=seed, overrides=overrides)
        times = sorted(clock.startup_s())
        out[kind] = {"startup_s": [round(t, 2) for t in times], "median_s": round(statistics.median(times), 2),
                     "wall_s": round(wall, 1), "load_average": [round(load, 1), round(os.getloadavg()[0], 1)]}
    out[STARTUP.metric] = out["in_process"]["median_s"]
    out["nested_startup_s"] = out["nested"]["median_s"]
    return out


def large_search(storage: Path, overrides: list[str]) -> dict[str, Any]:
    b = LARGE_BUDGET
    load = os.getloadavg()[0]
    clock, wall = search(f"large-{time.strftime('%H%M%S')}", storage, num_samples=b["num_samples"], epochs=b["epochs"],
                         max_concurrent=b["max_concurrent"], scheduler=b["scheduler"], nested=False, seed=0,
                         overrides=overrides)
    epoch_s = sum(clock.epoch_s.values())
    ideal = epoch_s / b["max_concurrent"]
    startups = sorted(clock.startup_s())
    return {"seed": 0, "trials": len(clock.epoch_s), "wall_s": round(wall, 1), "epoch_s_sum": round(epoch_s, 1),
            "ideal_wall_s": round(ideal, 1), OVERHEAD.metric: round(wall / ideal - 1, 3),
            "median_startup_s": round(statistics.median(startups), 2),
            "driver_rss_mib": {str(k): v for k, v in clock.driver_rss_mib.items()},
            "load_average": [round(load, 1), round(os.getloadavg()[0], 1)]}


def run(parts: tuple[str, ...], storage: Path, overrides: list[str], previous: dict[str, Any] | None = None,
        log=print) -> dict[str, Any]:
    """The parts asked for; a part not run keeps `previous`'s figures (the last trials.json) when
    they were measured with the same overrides."""
    import ray

    if parts and not ray.is_initialized():
        from genray.bench.perf import free_port
        from genray.train import start_local_ray

        # The dashboard's state API frees a stopped nested trial's placement group (genray.tune).
        start_local_ray(log_to_driver=False, include_dashboard=True, dashboard_port=free_port())
    result: dict[str, Any] = {"machine": machine(), "overrides": overrides, "startup_budget": STARTUP_BUDGET,
                              "large_budget": LARGE_BUDGET, "startup": [], "large": []}
    if "startup" in parts:
        for seed in STARTUP.seeds:
            result["startup"].append(startup_round(seed, storage, overrides))
            r = result["startup"][-1]
            log(f"bench trials: seed {seed}: start-up in process {r['in_process']['median_s']} s, "
                f"nested {r['nested']['median_s']} s")
    if "large" in parts:
        result["large"].append(large_search(storage, overrides))
        log(f"bench trials: large search overhead {result['large'][-1][OVERHEAD.metric]}")
    if previous is not None and previous.get("overrides") == overrides:
        for part in ("startup", "large"):
            if part not in parts:
                result[part] = previous.get(part, [])
                result[f"{part}_machine"] = previous.get(f"{part}_machine", previous["machine"])
    for part in parts:
        result[f"{part}_machine"] = result["machine"]  # when (and where) each part was measured
    result["claims"] = decide(result)
    return result


def decide(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The claims from a run; figures measured with extra overrides decide nothing."""
    official = not result["overrides"]
    return [STARTUP.decide({r["seed"]: r[STARTUP.metric] for r in result["startup"]} if official else {}),
            OVERHEAD.decide({r["seed"]: r[OVERHEAD.metric] for r in result["large"]} if official else {})]


def markdown_table(result: dict[str, Any]) -> str:
    lines = []
    if result["startup"]:
        b = result["startup_budget"]
        lines += [
            f"Start-up: FIFO searches of {b['trials']} VAE trials, {b['max_concurrent']} at once, {b['epochs']} epochs "
            f"each, 1 worker per trial. Seconds from Tune's launch of a trial to the start of its first epoch. "
            f"In-process trials reuse the actors of finished ones: the first trial on each actor starts its "
            f"process (imports torch, Ray, genray), the others do not; a nested trial's actor ends with it.",
            "",
            "| seed | trial kind | median s | each trial, s | search wall s | load average before -> after |",
            "|---|---|---|---|---|---|",
        ]
        for r in result["startup"]:
            for kind in ("in_process", "nested"):
                k = r[kind]
                lines.append(f"| {r['seed']} | {kind.replace('_', ' ')} | {k['median_s']} | "
                             f"{', '.join(f'{t:g}' for t in k['startup_s'])} | {k['wall_s']} | "
                             f"{k['load_average'][0]} -> {k['load_average'][1]} |")
        lines += ["", machine_line(result.get("startup_machine", result["machine"])), ""]
    for r in result["large"]:
        b = result["large_budget"]
        lines += [
            f"Large search: {r['trials']} VAE trials under ASHA (max {b['epochs']} epochs), {b['max_concurrent']} at "
            f"once: wall {r['wall_s']} s against {r['epoch_s_sum']} epoch-seconds / {b['max_concurrent']} = "
            f"{r['ideal_wall_s']} s; overhead {r[OVERHEAD.metric]:.1%}; median trial start-up "
            f"{r['median_startup_s']} s; load average {r['load_average'][0]} -> {r['load_average'][1]}."
            + (" The driver's resident memory after " + ", ".join(f"{k} trials {v:g} MiB" for k, v in
                                                                 r["driver_rss_mib"].items()) + "."
               if r.get("driver_rss_mib") else ""),
            "",
            machine_line(result.get("large_machine", result["machine"])),
            "",
        ]
    lines += [*HEADER, *(claim_row(d, fmt=".2f") for d in result["claims"])]
    if result["overrides"]:
        lines += ["", f"Run with overrides {result['overrides']}: it decides no claim."]
    return "\n".join(lines + [""])
