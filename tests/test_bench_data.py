"""`genray bench data`'s claims, decided on fixed figures: the streamed step is judged on the
median of the interleaved rounds' ratios (not the ratio of the medians), the memory growth on
its ratio, and neither by a --quick run or another budget."""

from genray.bench import data
from genray.bench.claims import verdict


def result(in_memory, streamed, growth=1.03, quick=False, images=data.STEP_IMAGES):
    runs = {"in_memory": [{"ms_per_step": m} for m in in_memory], "streamed": [{"ms_per_step": s} for s in streamed]}
    return {"quick": quick, "batch": data.BATCH,
            "step": {"runs": runs, "set": {"images": images}, "epochs": data.STEP_EPOCHS},
            "memory": {"store_mib": data.STORE_MIB, "factor": data.MEMORY_FACTOR, "peak_growth": growth}}


def test_the_step_claim_is_the_median_of_the_rounds_ratios():
    # Rounds 1.10, 1.40, 0.92: their median 1.10 holds; the ratio of the medians, 120 / 100, would miss.
    step, memory = data.decisions(result([100, 100, 130], [110, 140, 120]))
    assert step["mean"] == 1.1 and step["holds"] is True and step["claim"]["target"] == data.STEP_RATIO_TARGET
    assert memory["mean"] == 1.03 and memory["holds"] is True
    step, memory = data.decisions(result([100, 100, 100], [100, 120, 125], growth=1.2))
    assert step["mean"] == 1.2 and step["holds"] is False and step["seeds_missing"] == [0]
    assert memory["holds"] is False
    step, _ = data.decisions(result([100, 100, 100], [115, 115, 115]))
    assert step["holds"] is True  # at the target


def test_a_quick_run_or_another_budget_decides_nothing():
    for other in (result([100] * 3, [110] * 3, quick=True), result([100] * 2, [110] * 2),
                  result([100] * 3, [110] * 3, images=256)):
        step = data.decisions(other)[0]
        assert verdict(step) == "not decided: 0 of 1 seed measured"
    assert verdict(data.decisions(result([100] * 3, [110] * 3, quick=True))[1]) == "not decided: 0 of 1 seed measured"
