"""genray.bench.claims on fixed inputs: the decision a bench stores and the row it renders."""

import json

import pytest

from genray.bench.claims import HEADER, SYMBOLS, Claim, claim_row, median_of_ratios, verdict

ACCURACY = Claim(key="acc", text="accuracy at least 0.9", metric="test_acc", target=0.9, direction=">=",
                 budget={"epochs": 200}, seeds=(0, 1, 2))
RATIO = Claim(key="ratio", text="ratio at most 0.5", metric="ratio", target=0.5, direction="<=", seeds=(0, 1, 2))


def test_a_claim_holds_when_every_seed_meets_the_target():
    d = ACCURACY.decide({0: 0.9, 1: 0.95, 2: 1.0})
    assert d["decided"] and d["holds"] is True and d["seeds_missing"] == []
    assert d["mean"] == pytest.approx(0.95) and d["std"] == pytest.approx(0.05)
    assert (d["min"], d["max"], d["seeds_measured"]) == (0.9, 1.0, 3)
    assert d["per_seed"] == [{"seed": 0, "value": 0.9}, {"seed": 1, "value": 0.95}, {"seed": 2, "value": 1.0}]
    assert claim_row(d) == "| accuracy at least 0.9 | ≥ 0.9 | 0.950 ± 0.050 (0.900..1.000) over 3 seeds | yes | — |"


def test_a_claim_misses_when_the_mean_misses():
    d = RATIO.decide({0: 0.6, 1: 0.7, 2: 0.4})
    assert d["decided"] and d["holds"] is False and d["seeds_missing"] == [0, 1]
    assert verdict(d) == "**no**"
    assert claim_row(d).endswith("| **no** | seed 0 (0.600), seed 1 (0.700) |")


def test_a_seed_that_misses_is_named_while_the_mean_holds():
    d = ACCURACY.decide({0: 0.97, 1: 0.85, 2: 0.94})
    assert d["holds"] is True and d["seeds_missing"] == [1]
    assert claim_row(d).endswith("| yes | seed 1 (0.850) |")


def test_a_seed_without_a_value_misses_and_the_claim_fails():
    d = RATIO.decide({0: 0.3, 1: None, 2: 0.2})
    assert d["decided"] and d["holds"] is False and d["seeds_missing"] == [1]
    assert d["mean"] == pytest.approx(0.25)
    assert "seed 1 (no value)" in claim_row(d) and "over 2 seeds" in claim_row(d)


def test_fewer_values_than_declared_seeds_is_not_decided():
    d = ACCURACY.decide({0: 0.99})
    assert d["decided"] is False and d["holds"] is None
    assert verdict(d) == "not decided: 1 of 3 seeds measured"
    assert claim_row(d) == ("| accuracy at least 0.9 | ≥ 0.9 | 0.990 over 1 seed | not decided: 1 of 3 seeds "
                            "measured | — |")
    assert "not decided: 0 of 3" in claim_row(ACCURACY.decide({}))


def test_values_for_undeclared_seeds_are_refused():
    with pytest.raises(ValueError, match=r"declares seeds \[0, 1, 2\], got values for \[7\]"):
        ACCURACY.decide({0: 0.9, 7: 0.95})


def test_the_declaration_is_stored_as_json():
    d = ACCURACY.decide({0: 0.9, 1: 0.9, 2: 0.9})
    stored = json.loads(json.dumps(d))
    assert stored["claim"] == {"key": "acc", "text": "accuracy at least 0.9", "metric": "test_acc", "target": 0.9,
                               "direction": ">=", "budget": {"epochs": 200}, "seeds": [0, 1, 2]}
    assert HEADER[0].count("|") == claim_row(d).count("|")


def test_a_claim_refuses_a_bad_declaration():
    with pytest.raises(ValueError, match=r"direction must be one of \('<=', '>=', '<', '>'\), got '=='"):
        Claim(key="k", text="t", metric="m", target=1.0, direction="==")
    with pytest.raises(ValueError, match="distinct"):
        Claim(key="k", text="t", metric="m", target=1.0, direction="<=", seeds=(0, 0))


@pytest.mark.parametrize("direction, below, at, above", [
    ("<=", True, True, False), (">=", False, True, True), ("<", True, False, False), (">", False, False, True)])
def test_each_direction_at_its_target(direction, below, at, above):
    # A value equal to the target meets "<=" and ">=" and misses the strict "<" and ">".
    claim = Claim(key="k", text="t", metric="m", target=1.0, direction=direction, seeds=(0,))
    assert [claim.meets(v) for v in (0.999, 1.0, 1.001)] == [below, at, above]
    d = claim.decide({0: 1.0})
    assert d["holds"] is at and d["seeds_missing"] == ([] if at else [0])
    assert f"| t | {SYMBOLS[direction]} 1 |" in claim_row(d)


def test_the_timing_ratio_is_the_median_of_per_round_ratios():
    # Ratio of medians would be 20 / 10 = 2.0; the per-round ratios are 3, 1.5, 1.0 -> 1.5.
    assert median_of_ratios([30.0, 20.0, 10.0], [10.0, 40.0 / 3, 10.0]) == pytest.approx(1.5)
    assert median_of_ratios([2.0, 4.0], [1.0, 1.0]) == pytest.approx(3.0)
    with pytest.raises(ValueError, match="same number of rounds"):
        median_of_ratios([1.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="non-zero"):
        median_of_ratios([1.0], [0.0])


def test_a_claim_on_every_seed_misses_when_one_seed_does_though_the_mean_meets_it():
    bound = Claim(key="back", text="back within 60 s", metric="s", target=60.0, direction="<", every_seed=True)
    assert bound.decide({0: 25.0, 1: 25.0, 2: 30.0})["holds"] is True
    d = bound.decide({0: 25.0, 1: 25.0, 2: 75.0})  # mean 41.7 meets it; round 2 does not
    assert d["holds"] is False and d["seeds_missing"] == [2] and d["claim"]["every_seed"] is True
    assert Claim(key="back", text="t", metric="s", target=60.0, direction="<").decide(
        {0: 25.0, 1: 25.0, 2: 75.0})["holds"] is True
