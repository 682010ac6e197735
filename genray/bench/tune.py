"""`genray bench tune`: what the searchers and schedulers save against random search.

Every search runs the same family, space, number of trials, epochs per trial and concurrency,
seeded by the round's seed, through `genray.tune.build_tuner` — the code path of `genray tune`:

    random     random sampling, FIFO: every sampled configuration trains for all its epochs
    asha       the same configurations, ASHA (grace period 1 epoch, reduction factor 2): the
               worse half stops at each rung
    optuna     Optuna's TPE picks each configuration from the trials so far, FIFO
    hyperband  the same configurations as random, HyperBand (reduction factor 2): brackets of
               trials paused at rungs, the best resumed

The target is set by the random search, after both ran: within `tolerance` of the best value any
of its trials reached. Trial-seconds are the time trials spent running, start-up included, summed
over trials. The headline: the trial-seconds each search needs to return a configuration at the
target, which is the whole search (neither knows which trial is best before all have reported),
provided its best reaches the target. Also reported: trial-seconds and wall time until some trial
first reports a value at the target, which depends mostly on where in the sampling order the good
configurations fall.

The claims (CLAIMS, declared before the runs that decide them, over SEEDS of the sampled
configurations): ASHA needs at most half of random search's trial-seconds. Optuna and HyperBand
are reported against random search with both metrics, mean and spread over the seeds (no claim). As first recorded, the
metric was the trial-seconds to the first report at the target, at 16 epochs a trial; that is the
claim FIRST_HIT. WHOLE_SEARCH, the whole search's trial-seconds, is reported beside it with the
same target and budget. A seed's target is set by that seed's random search. A run whose budget
differs from the declared one decides neither claim.
"""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from genray.bench import machine, machine_line
from genray.bench.claims import HEADER, Claim, claim_row

METHODS = {"random": ("random", "fifo"), "asha": ("random", "asha"), "optuna": ("optuna", "fifo"),
           "hyperband": ("random", "hyperband")}
# The methods besides random search, each against it: trial-seconds to the first report at the
# target, and of the whole search.
RATIOS = ("trial_s_first_hit", "trial_s_total")
SEEDS = (0, 1, 2)
# What one seed of either claim spends: the family searched (its packaged space), the sampled
# configurations, epochs per trial (ASHA's max_t), trials at once, and the target's tolerance.
BUDGET = {"family": "vae", "num_samples": 8, "epochs": 16, "max_concurrent": 2, "tolerance": 0.02}
FIRST_HIT = Claim(
    key="asha_first_hit", metric="asha_over_random_trial_s_first_hit", target=0.5, direction="<=",
    text="ASHA / random, trial-seconds to the first trial report at the target", budget=BUDGET, seeds=SEEDS)
WHOLE_SEARCH = Claim(
    key="asha_whole_search", metric="asha_over_random_trial_s_total", target=0.5, direction="<=",
    text="ASHA / random, trial-seconds of the whole search (a configuration at the target is known "
         "only when every trial has reported)", budget=BUDGET, seeds=SEEDS)
CLAIMS = (FIRST_HIT, WHOLE_SEARCH)


def trial_runs(results, metric: str) -> list[dict[str, Any]]:
    """Per trial: start and end on the wall clock, and (time, value) of every report."""
    trials = []
    for result in results:
        frame = result.metrics_dataframe
        if frame is None or not len(frame) or metric not in frame:
            continue
        ends = frame["timestamp"].astype(float).tolist()
        totals = frame["time_total_s"].astype(float).tolist()
        start = ends[0] - totals[0]
        trials.append({
            "trial": str(result.metrics.get("trial_id")),
            "start": start,
            "end": start + totals[-1],
            "epochs": int(frame["training_iteration"].max()),
            "reports": [(start + t, float(v)) for t, v in zip(totals, frame[metric].tolist())],
            "config": result.config.get("train_loop_config", {}),
        })
    return trials


def reaches(value: float, target: float, mode: str) -> bool:
    return value <= target if mode == "min" else value >= target


def cost_until(trials: list[dict[str, Any]], until: float) -> float:
    """Trial-seconds spent by all trials up to the wall-clock time `until`."""
    return sum(max(0.0, min(t["end"], until) - t["start"]) for t in trials)


def summarize_search(trials: list[dict[str, Any]], wall_s: float, target: float, mode: str) -> dict[str, Any]:
    t0 = min(t["start"] for t in trials)
    hits = [when for t in trials for when, value in t["reports"] if reaches(value, target, mode)]
    values = [v for t in trials for _, v in t["reports"]]
    hit = min(hits) if hits else None
    return {
        "trials": len(trials),
        "epochs_trained": sum(t["epochs"] for t in trials),
        "trial_s": round(cost_until(trials, float("inf")), 1),
        "wall_s": round(wall_s, 1),
        "best": min(values) if mode == "min" else max(values),
        "reached_target": hit is not None,
        "trial_s_to_target": round(cost_until(trials, hit), 1) if hit is not None else None,
        "wall_s_to_target": round(hit - t0, 1) if hit is not None else None,
        "per_trial": [{"trial": t["trial"], "epochs": t["epochs"], "seconds": round(t["end"] - t["start"], 1),
                       "last": t["reports"][-1][1], **t["config"]} for t in trials],
    }


def search_pair(family: str, *, num_samples: int, epochs: int, max_concurrent: int, seed: int, tolerance: float,
                storage: Path, overrides: list[str]) -> dict[str, Any]:
    """Random search and ASHA over the same `seed`'s sampled configurations, and their ratios."""
    from genray.config import build_config
    from genray.tune import build_tuner, load_space

    base = build_config(family, None, ["train.workers=1", f"train.epochs={epochs}", *overrides])
    stamp = time.strftime("%Y%m%d-%H%M%S")
    searches, load = {}, {}
    for method, (searcher, scheduler) in METHODS.items():
        spec = replace(load_space(family, None), searcher=searcher)
        tuner = build_tuner(family, name=f"bench-{method}-seed{seed}-{stamp}", storage=storage, spec=spec,
                            base=base, scheduler=scheduler, num_samples=num_samples,
                            max_concurrent=max_concurrent, seed=seed)
        started, load_before = time.monotonic(), os.getloadavg()[0]
        results = tuner.fit()
        searches[method] = (trial_runs(results, spec.metric), time.monotonic() - started)
        load[method] = (round(load_before, 1), round(os.getloadavg()[0], 1))
        if not searches[method][0]:
            raise RuntimeError(f"bench tune: the {method} search reported no {spec.metric}")

    random_values = [v for t in searches["random"][0] for _, v in t["reports"]]
    best = min(random_values) if spec.mode == "min" else max(random_values)
    target = best + tolerance * abs(best) * (1 if spec.mode == "min" else -1)
    methods = {m: summarize_search(trials, wall, target, spec.mode) for m, (trials, wall) in searches.items()}
    for m in methods:  # other work on the machine slows trials: the 1-minute load average, before/after
        methods[m]["load_average"] = load[m]
    reached = methods["asha"]["reached_target"]
    against_random = {}
    for m in METHODS:
        if m == "random":
            continue
        hit, whole, rand = methods[m]["trial_s_to_target"], methods[m]["trial_s"], methods["random"]
        against_random[m] = {"trial_s_first_hit": round(hit / rand["trial_s_to_target"], 3) if hit is not None else None,
                             "trial_s_total": round(whole / rand["trial_s"], 3) if methods[m]["reached_target"]
                             else None}
    return {
        "seed": seed,
        "metric": spec.metric,
        "mode": spec.mode,
        "space": sorted(spec.space),
        "target": {"value": round(target, 4), "rule": f"random search's best {spec.metric} within {tolerance:.0%}"},
        "methods": methods,
        "against_random": against_random,  # None: the method never reached the target
        # None when ASHA never reached the target: the seed misses both claims.
        FIRST_HIT.metric: (round(methods["asha"]["trial_s_to_target"] / methods["random"]["trial_s_to_target"], 3)
                           if reached else None),
        WHOLE_SEARCH.metric: round(methods["asha"]["trial_s"] / methods["random"]["trial_s"], 3) if reached else None,
    }


def decide(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Both claims from the per-seed results; a run with another budget than the declared one
    measures nothing towards them."""
    runs = result["runs"] if declared_budget(result) else []
    return [claim.decide({r["seed"]: r[claim.metric] for r in runs if r["seed"] in claim.seeds})
            for claim in CLAIMS]


def declared_budget(result: dict[str, Any]) -> bool:
    return {k: result[k] for k in BUDGET} == dict(BUDGET)


def run(family: str, *, num_samples: int, epochs: int, max_concurrent: int, seeds: tuple[int, ...],
        tolerance: float, storage: Path, overrides: list[str], log=print) -> dict[str, Any]:
    import ray

    if not ray.is_initialized():
        from genray.train import start_local_ray

        start_local_ray(log_to_driver=False)
    runs = []
    for seed in seeds:
        runs.append(search_pair(family, num_samples=num_samples, epochs=epochs, max_concurrent=max_concurrent,
                                seed=seed, tolerance=tolerance, storage=storage, overrides=overrides))
        log(f"bench tune: seed {seed}: ASHA / random trial-seconds, first hit {runs[-1][FIRST_HIT.metric]}, "
            f"whole search {runs[-1][WHOLE_SEARCH.metric]}")
    result = {
        "machine": machine(),
        "family": family,
        "metric": runs[0]["metric"],
        "mode": runs[0]["mode"],
        "space": runs[0]["space"],
        "num_samples": num_samples,
        "epochs": epochs,
        "max_concurrent": max_concurrent,
        "tolerance": tolerance,
        "seeds": list(seeds),
        "overrides": overrides,
        "runs": runs,
        "storage": str(storage),
    }
    result["claims"] = decide(result)
    return result


def markdown_table(result: dict[str, Any]) -> str:
    metric = result["metric"]
    lines = [
        f"{result['family']}: {result['num_samples']} sampled configurations of {', '.join(result['space'])} per "
        f"seed; {result['epochs']} epochs each, 1 worker per trial, {result['max_concurrent']} trials at once. "
        f"Target per seed: {metric} {'≤' if result['mode'] == 'min' else '≥'} random search's best "
        f"within {result['tolerance']:.0%}.",
        "",
        f"| seed | search | target | trials | epochs trained | trial-seconds, whole search | wall s, whole search "
        f"| best {metric} | trial-seconds to first hit | wall s to first hit | load average (1 min) before -> after |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["runs"]:
        for name, m in r["methods"].items():
            to_target = (f"{m['trial_s_to_target']:.0f} | {m['wall_s_to_target']:.0f}" if m["reached_target"]
                         else "not reached | not reached")
            load = f"{m['load_average'][0]} -> {m['load_average'][1]}" if "load_average" in m else "—"
            lines.append(f"| {r['seed']} | {name} | {r['target']['value']:.4g} | {m['trials']} | {m['epochs_trained']} "
                         f"| {m['trial_s']:.0f} | {m['wall_s']:.0f} | {m['best']:.4g} | {to_target} | {load} |")
    lines += ["", *against_random_table(result)]
    cores = result["machine"]["cores"]
    lines += [
        "",
        f"Trial-seconds include the time trials waited for CPUs: with a load average above {cores} (the "
        f"machine's cores) other work on the shared machine slowed them.",
        "",
        *HEADER,
        *(claim_row(d) for d in result["claims"]),
    ]
    if not declared_budget(result):
        lines += ["", f"This run's budget ({', '.join(f'{k} {result[k]}' for k in BUDGET)}) is not the claims' "
                      f"declared one ({', '.join(f'{k} {v}' for k, v in BUDGET.items())}): it decides neither."]
    lines += ["", machine_line(result["machine"]), ""]
    return "\n".join(lines)


def against_random_table(result: dict[str, Any]) -> list[str]:
    """Each method's trial-seconds over random search's, mean ± std (min..max) over the seeds;
    a seed where the method never reached the target is counted apart."""
    runs = [r for r in result["runs"] if "against_random" in r]
    if not runs:
        return []
    lines = ["| method / random search | trial-seconds to the first hit | trial-seconds, whole search |",
             "|---|---|---|"]
    for method in [m for m in METHODS if m != "random"]:
        cells = []
        for ratio in RATIOS:
            values = [r["against_random"][method][ratio] for r in runs if method in r["against_random"]]
            got = [v for v in values if v is not None]
            cell = "—" if not got else (
                f"{statistics.fmean(got):.2f} ± {statistics.stdev(got) if len(got) > 1 else 0.0:.2f} "
                f"({min(got):.2f}..{max(got):.2f}) over {len(got)} seed{'s' * (len(got) != 1)}")
            if len(got) < len(values):
                cell += f"; target not reached in {len(values) - len(got)}"
            cells.append(cell)
        lines.append(f"| {method} | {cells[0]} | {cells[1]} |")
    return lines
