"""genray.bench.tune on fixed trials: trial-seconds to the target, the claims over seeds, the table."""

from genray.bench.tune import BUDGET, FIRST_HIT, WHOLE_SEARCH, decide, markdown_table, summarize_search

MACHINE = {"date": "d", "cpu": "c", "cores": 2, "memory_gib": 1, "gpu": None, "python": "3.11", "torch": "t",
           "ray": "r"}


def trial(name, start, reports):  # reports: (seconds since start, value)
    return {"trial": name, "start": start, "end": start + reports[-1][0], "epochs": len(reports),
            "reports": [(start + t, v) for t, v in reports], "config": {"model.lr": 0.01}}


# Two at once: a runs 0..30 s and reaches 100 at 30 s; b runs 0..10 s; c starts at 10 s.
TRIALS = [trial("a", 0.0, [(10, 150.0), (20, 120.0), (30, 100.0)]),
          trial("b", 0.0, [(10, 200.0)]),
          trial("c", 10.0, [(10, 180.0), (40, 90.0)])]


def test_bench_tune_accounts_trial_seconds_until_the_target():
    m = summarize_search(TRIALS, wall_s=55.0, target=100.0, mode="min")
    assert m["reached_target"] and m["wall_s_to_target"] == 30.0
    assert m["trial_s_to_target"] == 30 + 10 + 20  # a whole, b whole, c from 10 s to 30 s
    assert m["trial_s"] == 30 + 10 + 40 and m["epochs_trained"] == 6 and m["best"] == 90.0
    assert summarize_search(TRIALS, 55.0, target=50.0, mode="min")["reached_target"] is False


def seed_run(seed, first_hit, total):
    return {"seed": seed, "metric": "val_neg_elbo", "mode": "min", "space": ["model.lr"],
            "target": {"value": 100.0, "rule": "r"},
            "methods": {"random": summarize_search(TRIALS, 55.0, 100.0, "min"),
                        "asha": summarize_search(TRIALS[:2], 30.0, 100.0, "min")},
            FIRST_HIT.metric: first_hit, WHOLE_SEARCH.metric: total}


def result_of(runs, **budget):
    result = {**BUDGET, **budget, "machine": MACHINE, "metric": "val_neg_elbo", "mode": "min",
              "space": ["model.lr"], "seeds": [r["seed"] for r in runs], "runs": runs}
    result["claims"] = decide(result)
    return result


def test_bench_tune_decides_both_claims_over_the_declared_seeds():
    assert FIRST_HIT.seeds == WHOLE_SEARCH.seeds == (0, 1, 2) and FIRST_HIT.budget["epochs"] == 16
    result = result_of([seed_run(0, 0.98, 0.33), seed_run(1, 0.4, 0.3), seed_run(2, None, None)])
    first, whole = result["claims"]
    assert first["claim"]["key"] == "asha_first_hit" and first["holds"] is False and first["seeds_missing"] == [0, 2]
    assert whole["holds"] is False and whole["seeds_missing"] == [2]  # ASHA never reached the target at seed 2
    table = markdown_table(result)
    assert "| 0 | random | 100 | 3 | 6 | 80 | 55 | 90 | 60 | 30 |" in table
    assert "| ASHA / random, trial-seconds to the first trial report at the target | ≤ 0.5 |" in table
    assert "seed 0 (0.980), seed 2 (no value)" in table and "decides neither" not in table

    held = result_of([seed_run(s, 0.3, 0.2) for s in (0, 1, 2)])
    assert [d["holds"] for d in held["claims"]] == [True, True]


def test_bench_tune_with_another_budget_decides_nothing():
    result = result_of([seed_run(s, 0.3, 0.2) for s in (0, 1, 2)], epochs=32)
    assert all(d["decided"] is False and d["seeds_measured"] == 0 for d in result["claims"])
    table = markdown_table(result)
    assert "not decided: 0 of 3 seeds measured" in table and "epochs 32" in table and "decides neither" in table


def test_the_other_searchers_are_reported_against_random_search_over_the_seeds():
    runs = [seed_run(s, 0.3, 0.2) for s in (0, 1, 2)]
    for run, (hit, whole) in zip(runs, [(0.5, 0.9), (0.7, 1.1), (None, None)]):
        run["against_random"] = {"optuna": {"trial_s_first_hit": hit, "trial_s_total": whole},
                                 "hyperband": {"trial_s_first_hit": 0.4, "trial_s_total": 0.5}}
    table = markdown_table(result_of(runs))
    assert "| optuna | 0.60 ± 0.14 (0.50..0.70) over 2 seeds; target not reached in 1 |" in table
    assert "| hyperband | 0.40 ± 0.00 (0.40..0.40) over 3 seeds | 0.50 ± 0.00 (0.50..0.50) over 3 seeds |" in table
