"""genray bench trials: the claims' decision and the tables, from a result shaped like a run's."""

from genray.bench import machine
from genray.bench.trials import CLAIMS, OVERHEAD, STARTUP, decide, markdown_table


def result(overrides=(), seeds=(0, 1, 2)):
    startup = [{"seed": s, "in_process": {"startup_s": [1.5, 2.0], "median_s": 1.75, "wall_s": 20.0,
                                          "load_average": [1.0, 1.2]},
                "nested": {"startup_s": [14.0, 16.0], "median_s": 15.0, "wall_s": 60.0, "load_average": [1.2, 1.9]},
                STARTUP.metric: 1.75 + s, "nested_startup_s": 15.0} for s in seeds]
    large = [{"seed": 0, "trials": 200, "wall_s": 500.0, "epoch_s_sum": 800.0, "ideal_wall_s": 400.0,
              OVERHEAD.metric: 0.25, "median_startup_s": 1.9, "load_average": [1.0, 2.0]}]
    r = {"machine": machine(), "overrides": list(overrides), "startup_budget": STARTUP.budget,
         "large_budget": OVERHEAD.budget, "startup": startup, "large": large}
    r["claims"] = decide(r)
    return r


def test_the_claims_are_decided_over_their_declared_seeds_and_only_without_overrides():
    r = result()
    start, over = r["claims"]
    assert start["decided"] and start["holds"] and start["mean"] == 2.75  # 1.75, 2.75, 3.75: mean <= 3
    assert over["decided"] and not over["holds"]  # 25% > 10%
    assert [d["claim"]["key"] for d in r["claims"]] == [c.key for c in CLAIMS]
    assert not any(d["decided"] for d in result(overrides=["data.limit=64"])["claims"])
    assert not result(seeds=(0,))["claims"][0]["decided"]


def test_the_markdown_gives_every_trial_kind_the_large_search_and_the_claims():
    text = markdown_table(result())
    assert text.count("| in process |") == 3 and text.count("| nested |") == 3
    assert "overhead 25.0%" in text and "200-trial ASHA search" in text and "| **no** |" in text


def test_a_part_not_run_keeps_the_last_runs_figures_and_when_they_were_measured(tmp_path):
    from genray.bench.trials import run

    earlier = result()
    earlier["startup_machine"] = {**earlier["machine"], "date": "2026-01-01"}
    kept = run((), tmp_path, [], previous=earlier)
    assert kept["startup"] == earlier["startup"] and kept["large"] == earlier["large"]
    assert kept["startup_machine"]["date"] == "2026-01-01" and kept["claims"][0]["holds"]
    assert "Measured 2026-01-01" in markdown_table(kept)
    assert run((), tmp_path, ["data.limit=64"], previous=earlier)["startup"] == []  # other overrides: not kept
