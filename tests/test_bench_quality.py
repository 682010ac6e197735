"""The claims of `genray bench quality`, decided on fixed per-seed rows: each claim holds, misses,
and sits on its threshold (<= and >= hold there, < and > do not); a seed that misses is named while
the mean holds; fewer seeds than declared leave a claim undecided. No training: the rows are what
the bench's measuring steps would have written, one figure set per train.seed."""

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

from genray.bench import quality
from genray.bench.claims import claim_row, verdict
from genray.bench.quality import (
    CLASSIFIER_BUDGET,
    CLASSIFIER_CLAIMS,
    GENERATIVE_BUDGET,
    GENERATIVE_CLAIMS,
    SCIENTIFIC_BUDGET,
    SCIENTIFIC_CLAIMS,
    SEEDS,
    classifier_decisions,
    generative_decisions,
    markdown_table,
    merged,
    parse_seeds,
    scientific_decisions,
    seed_figures,
    seed_mean,
)

RESULTS = Path(__file__).resolve().parents[1] / "bench_results" / "quality.json"


def by_key(decisions: list[dict]) -> dict[str, dict]:
    return {d["claim"]["key"]: d for d in decisions}


def verdicts(decisions: list[dict]) -> dict[str, str]:
    return {d["claim"]["key"]: verdict(d) for d in decisions}


def values(decision: dict) -> list:
    return [v["value"] for v in decision["per_seed"]]


def per_seed(figures: dict, seeds=SEEDS, **at_seed: dict) -> dict[int, dict]:
    """The same figures at every seed, except where `at_seed` ("s1": {...}) changes some of one seed's."""
    return {s: {**figures, **at_seed.get(f"s{s}", {})} for s in seeds}


# --- the generative families ------------------------------------------------------------------------

def generative(seeds=SEEDS, budget=GENERATIVE_BUDGET, **changes: dict) -> dict:
    """A result with every generative family at `seeds`; `changes` maps a family to its changed
    figures, at every seed ({"fid": 60.0}) or at one ({"s1": {"fid": 60.0}})."""
    figures = {
        "vae": {"fid": 50.0, "classes_covered": 10.0},
        "ae": {"latent_dim": 16, "val_mse": 0.0011, "pca_mse": 0.0022},
        "cvae": {"fid": 17.6, "cond_acc": 0.98, "classes_covered": 10.0},
        "gan": {"fid": 40.0, "classes_covered": 10.0},
        "vaegan": {"fid": 20.0, "classes_covered": 10.0},
        "aae": {"fid": 29.0, "classes_covered": 9.0},
    }
    rows = []
    for family, base in figures.items():
        change = changes.get(family, {})
        at_seed = {k: v for k, v in change.items() if k.startswith("s") and isinstance(v, dict)}
        every = {k: v for k, v in change.items() if k not in at_seed}
        rows.append({"family": family, **merged(None, per_seed({**base, **every}, seeds, **at_seed))})
    return {"budget": dict(budget), "rows": rows}


def test_the_generative_claims_hold_with_their_per_seed_figures():
    decisions = by_key(generative_decisions(generative(gan={"s2": {"fid": 45.0}})))
    assert set(decisions) == {c.key for c, _ in GENERATIVE_CLAIMS}
    assert {k: verdict(d) for k, d in decisions.items()} == dict.fromkeys(decisions, "yes")
    # Each seed's GAN FID over the VAE's at that seed: 40/50, 40/50, 45/50.
    assert values(decisions["gan_sharper_than_vae"]) == pytest.approx([0.8, 0.8, 0.9])
    assert decisions["gan_sharper_than_vae"]["mean"] == pytest.approx(2.5 / 3)
    assert values(decisions["vaegan_sharper_than_vae"]) == pytest.approx([0.4] * 3)
    assert values(decisions["cvae_conditional_accuracy"]) == pytest.approx([0.98] * 3)
    assert values(decisions["ae_vs_pca"]) == pytest.approx([0.5] * 3)
    assert values(decisions["class_coverage"]) == [9.0] * 3  # the fewest over the families: aae's
    assert claim_row(decisions["ae_vs_pca"], fmt=".3f").startswith(
        "| AE reconstruction MSE <= PCA's at the same code size (16) | ≤ 1 | 0.500 ± 0.000 (0.500..0.500) over 3 seeds |")


def test_the_generative_claims_miss():
    result = generative(gan={"fid": 60.0}, vaegan={"fid": 50.1}, cvae={"cond_acc": 0.5}, ae={"val_mse": 0.003},
                        aae={"s1": {"classes_covered": 3.0}})
    decisions = by_key(generative_decisions(result))
    assert verdicts(decisions.values()) == dict.fromkeys(decisions, "**no**")
    assert decisions["vaegan_sharper_than_vae"]["seeds_missing"] == [0, 1, 2]  # worse, however close
    # Coverage misses on its mean (9 + 3 + 9) / 3 = 7 and names the seed that collapsed.
    assert decisions["class_coverage"]["mean"] == pytest.approx(7.0)
    assert decisions["class_coverage"]["seeds_missing"] == [1]


def test_the_generative_claims_at_their_thresholds():
    at = by_key(generative_decisions(generative(gan={"fid": 50.0}, cvae={"cond_acc": 0.9}, ae={"val_mse": 0.0022},
                                                aae={"classes_covered": 8.0})))
    assert verdict(at["gan_sharper_than_vae"]) == "**no**"  # sharper is strictly lower: a tie misses
    assert [verdict(at[k]) for k in ("cvae_conditional_accuracy", "ae_vs_pca", "class_coverage")] == ["yes"] * 3
    below = by_key(generative_decisions(generative(cvae={"cond_acc": 0.8999}, aae={"classes_covered": 7.0})))
    assert verdict(below["cvae_conditional_accuracy"]) == verdict(below["class_coverage"]) == "**no**"


def test_a_seed_that_misses_is_named_while_the_mean_holds():
    decisions = by_key(generative_decisions(generative(gan={"s1": {"fid": 55.0}})))
    gan = decisions["gan_sharper_than_vae"]
    assert gan["holds"] is True and gan["seeds_missing"] == [1]  # 0.8, 1.1, 0.8: mean 0.9
    assert claim_row(gan, fmt=".3f").split(" | ")[-2:] == ["yes", "seed 1 (1.100) |"]


def test_fewer_seeds_than_declared_leave_the_claims_undecided():
    decisions = generative_decisions(generative(seeds=(0, 2)))
    assert set(verdicts(decisions).values()) == {"not decided: 2 of 3 seeds measured"}
    assert all(d["holds"] is None for d in decisions)


def test_a_claim_counts_a_seed_only_where_all_its_rows_were_measured():
    result = generative()
    result["rows"] = [r for r in result["rows"] if r["family"] != "aae"]
    decisions = verdicts(generative_decisions(result))
    assert decisions["class_coverage"] == "not decided: 0 of 3 seeds measured"  # aae draws samples too
    assert decisions["gan_sharper_than_vae"] == "yes"
    result["rows"] = [r for r in result["rows"] if r["family"] != "vae"]
    assert verdicts(generative_decisions(result))["gan_sharper_than_vae"] == "not decided: 0 of 3 seeds measured"


def test_rows_of_another_budget_decide_nothing():
    decisions = generative_decisions(generative(budget={**GENERATIVE_BUDGET, "epochs": 5}))
    assert set(verdicts(decisions).values()) == {"not decided: 0 of 3 seeds measured"}


# --- the digits classifier ---------------------------------------------------------------------------

def classifier(seeds=SEEDS, budget=CLASSIFIER_BUDGET, **val_acc) -> dict:
    """A result whose arms have these val accuracies at every seed (or a list, one per seed)."""
    accs = {"full": 0.977, "full_aug": 0.938, "small": 0.653, "small_aug": 0.404, "ft_frozen": 0.820,
            "ft_unfreeze": 0.877, **val_acc}
    rows = []
    for arm, acc in accs.items():
        by_seed = acc if isinstance(acc, list) else [acc] * len(seeds)
        rows.append({"arm": arm.replace("_", "-"),
                     **merged(None, {s: {"val_acc": a, "train_s": 10.0} for s, a in zip(seeds, by_seed)})})
    return {"classifier": {"budget": dict(budget), "rows": rows}}


def test_the_classifier_claims_hold_or_miss_per_seed():
    decisions = by_key(classifier_decisions(classifier()))
    assert set(decisions) == {c.key for c, _ in CLASSIFIER_CLAIMS}
    assert verdicts(decisions.values()) == {
        "finetune_beats_scratch": "yes", "unfreeze_beats_frozen": "yes",
        "augment_all_digits": "**no**", "augment_few_digits": "**no**"}
    assert values(decisions["finetune_beats_scratch"]) == pytest.approx([0.877 - 0.653] * 3)
    assert values(decisions["augment_all_digits"]) == pytest.approx([0.938 - 0.977] * 3)
    flipped = verdicts(classifier_decisions(classifier(full_aug=0.99, small_aug=0.7, ft_frozen=0.6, ft_unfreeze=0.5)))
    assert flipped == {"finetune_beats_scratch": "**no**", "unfreeze_beats_frozen": "**no**",
                       "augment_all_digits": "yes", "augment_few_digits": "yes"}


def test_the_classifier_claims_at_their_thresholds():
    tied = classifier(ft_frozen=0.653, ft_unfreeze=0.653, full_aug=0.977, small_aug=0.653)
    assert set(verdicts(classifier_decisions(tied)).values()) == {"**no**"}  # "beats", "improves", "raises": strictly
    # The better fine-tuned arm at each seed is compared with scratch at that seed.
    either = by_key(classifier_decisions(classifier(ft_frozen=[0.7, 0.5, 0.5], ft_unfreeze=[0.5, 0.7, 0.66])))
    assert values(either["finetune_beats_scratch"]) == pytest.approx([0.047, 0.047, 0.007])
    assert verdict(either["finetune_beats_scratch"]) == "yes"


def test_the_classifier_names_the_seed_that_misses():
    d = by_key(classifier_decisions(classifier(full_aug=[0.99, 0.96, 0.99])))["augment_all_digits"]
    assert d["holds"] is True and d["seeds_missing"] == [1]
    assert verdict(by_key(classifier_decisions(classifier(seeds=(1,))))["augment_all_digits"]) == \
        "not decided: 1 of 3 seeds measured"


def test_a_classifier_of_another_budget_decides_nothing():
    other = classifier(budget={**CLASSIFIER_BUDGET, "small_epochs": 20})
    assert set(verdicts(classifier_decisions(other)).values()) == {"not decided: 0 of 3 seeds measured"}
    # A budget stored with the seed count of the first per-arm files is the same budget.
    legacy = classifier(budget={**CLASSIFIER_BUDGET, "seeds": 3})
    assert "yes" in verdicts(classifier_decisions(legacy)).values()


# --- charlm and the UNet, against their baselines -------------------------------------------------------

def scientific(seeds=SEEDS, **changes: dict) -> dict:
    """A result with every scientific row at `seeds`, in the budget it declares."""
    figures = {
        "charlm": {"family": "charlm", "val_bits_per_char": 2.2, "by_epoch": [3.4, 2.6, 2.2], "unigram_entropy": 4.4},
        "unet": {"family": "unet", "task": "inpaint", "source": "digits", "val_masked_mse": 0.013,
                 "val_mean_fill_mse": 0.127, "val_blur_fill_mse": 0.052, "paired_vs_blur": {"unet_better_share": 0.95}},
        "unet-photos": {"family": "unet", "task": "inpaint", "source": "photos", "val_masked_mse": 0.0053,
                        "val_mean_fill_mse": 0.0086, "val_blur_fill_mse": 0.0059,
                        "paired_vs_blur": {"unet_better_share": 0.6}},
        "unet-segment": {"family": "unet", "task": "segment", "val_iou": 0.96, "val_otsu_iou": 0.62},
    }
    rows = []
    for row, base in figures.items():
        change = changes.get(row.replace("-", "_"), {})
        at_seed = {k: v for k, v in change.items() if k.startswith("s") and isinstance(v, dict)}
        every = {k: v for k, v in change.items() if k not in at_seed}
        measured = per_seed({**base, **every, "row": row, "budget": SCIENTIFIC_BUDGET[row]}, seeds, **at_seed)
        rows.append(merged(None, measured))
    return {"scientific": {"rows": rows}}


SCIENTIFIC_KEYS = ["charlm_vs_unigram", "charlm_falls", "unet_vs_mean_and_blur", "unet_most_images_vs_blur",
                   "unet-photos_vs_mean_and_blur", "unet-photos_most_images_vs_blur", "unet_segment_vs_otsu"]


def test_the_scientific_claims_hold_with_their_per_seed_figures():
    decisions = by_key(scientific_decisions(scientific()))
    assert list(decisions) == SCIENTIFIC_KEYS == [c.key for c, _ in SCIENTIFIC_CLAIMS]
    assert set(verdicts(decisions.values()).values()) == {"yes"}
    assert values(decisions["charlm_vs_unigram"]) == pytest.approx([0.5] * 3)
    assert values(decisions["charlm_falls"]) == pytest.approx([2.2 / 3.4] * 3)
    assert values(decisions["unet_vs_mean_and_blur"]) == pytest.approx([0.25] * 3)  # against blur, the lower
    assert values(decisions["unet_segment_vs_otsu"]) == pytest.approx([0.34] * 3)
    assert decisions["unet-photos_vs_mean_and_blur"]["claim"]["text"] == \
        "the UNet fills holes in held-out photo patches better than mean fill and blur (masked MSE)"


def test_the_scientific_claims_miss():
    result = scientific(charlm={"val_bits_per_char": 3.0, "by_epoch": [2.9, 2.2, 3.0]},
                        # better than mean fill, worse than blur: the claim asks for both
                        unet_photos={"val_masked_mse": 0.0060, "paired_vs_blur": {"unet_better_share": 0.3}},
                        unet={"paired_vs_blur": {"unet_better_share": 0.4}}, unet_segment={"val_iou": 0.5})
    decisions = verdicts(scientific_decisions(result))
    assert decisions == {**dict.fromkeys(SCIENTIFIC_KEYS, "**no**"), "unet_vs_mean_and_blur": "yes"}


def test_the_scientific_claims_at_their_thresholds():
    at = scientific(charlm={"val_bits_per_char": 2.4, "unigram_entropy": 4.0, "by_epoch": [2.5, 2.0, 2.5]},
                    unet={"val_masked_mse": 0.052, "paired_vs_blur": {"unet_better_share": 0.5}},
                    unet_segment={"val_iou": 0.62})
    # Every scientific claim is strict: 60% of the entropy, an unchanged loss, a tie with blur or Otsu, half the images.
    decided = verdicts(scientific_decisions(at))
    assert decided == {**dict.fromkeys(SCIENTIFIC_KEYS, "**no**"), "unet-photos_vs_mean_and_blur": "yes",
                       "unet-photos_most_images_vs_blur": "yes"}
    just = scientific(charlm={"val_bits_per_char": 2.3999, "unigram_entropy": 4.0, "by_epoch": [2.5, 2.4999]})
    assert verdicts(scientific_decisions(just))["charlm_vs_unigram"] == "yes"
    assert verdicts(scientific_decisions(just))["charlm_falls"] == "yes"


def test_a_scientific_seed_that_misses_is_named_and_fewer_seeds_decide_nothing():
    decisions = by_key(scientific_decisions(scientific(unet_segment={"s2": {"val_iou": 0.6}})))
    assert decisions["unet_segment_vs_otsu"]["holds"] is True
    assert decisions["unet_segment_vs_otsu"]["seeds_missing"] == [2]
    assert set(verdicts(scientific_decisions(scientific(seeds=(0, 1)))).values()) == {
        "not decided: 2 of 3 seeds measured"}


def test_a_scientific_row_of_another_budget_decides_nothing():
    result = scientific()
    for row in result["scientific"]["rows"]:
        if row["row"] == "charlm":
            row["budget"] = ["train.epochs=1"]
    decided = verdicts(scientific_decisions(result))
    assert decided["charlm_vs_unigram"] == decided["charlm_falls"] == "not decided: 0 of 3 seeds measured"
    assert decided["unet_segment_vs_otsu"] == "yes"


# --- rows stored per seed, merged across runs ----------------------------------------------------------

def test_seeds_run_now_merge_with_the_stored_seeds():
    first = merged(None, {0: {"fid": 40.0, "by_epoch": [3.0, 2.0]}, 1: {"fid": 44.0, "by_epoch": [3.0, 1.0]}})
    assert first["seeds"] == [0, 1] and first["fid"] == pytest.approx(42.0)
    assert first["by_epoch"] == pytest.approx([3.0, 1.5])  # element by element
    stored = json.loads(json.dumps(first))  # as quality.json keeps it: seeds as text keys
    completed = merged(stored, {2: {"fid": 36.0, "by_epoch": [3.0, 3.0]}, 1: {"fid": 41.0, "by_epoch": [3.0, 1.0]}})
    assert completed["seeds"] == [0, 1, 2]
    assert completed["per_seed"]["1"]["fid"] == 41.0  # the seed run again replaces its stored figures
    assert completed["fid"] == pytest.approx(39.0)


def test_the_mean_over_seeds_keeps_each_figures_shape():
    assert seed_mean([{"a": 1, "m": {"c": 16, "n": "batch"}, "s": "x"}, {"a": 2, "m": {"c": 16, "n": "batch"}, "s": "y"}]) \
        == {"a": 1.5, "m": {"c": 16, "n": "batch"}, "s": "x"}  # equal values as they are; text: the first seed's
    assert seed_mean([True, False]) is True and seed_mean([None, 1.0]) is None


def test_rows_stored_without_a_seed_are_seed_0():
    # Before train.seed was set, the bench trained at TrainConfig's default seed, 0.
    assert seed_figures({"family": "vae", "fid": 50.0}) == {0: {"family": "vae", "fid": 50.0}}
    # The classifier's arms listed their accuracies in the order they trained seeds 0, 1, 2.
    assert seed_figures({"arm": "full", "val_accs": [0.9, 0.8, 0.7]}) == {0: {"val_acc": 0.9}, 1: {"val_acc": 0.8},
                                                                          2: {"val_acc": 0.7}}
    legacy = {"budget": dict(GENERATIVE_BUDGET),
              "rows": [{"family": r["family"], **r["per_seed"]["0"]} for r in generative()["rows"]]}
    assert set(verdicts(generative_decisions(legacy)).values()) == {"not decided: 1 of 3 seeds measured"}


def test_the_stored_result_is_read_and_decided():
    """bench_results/quality.json (what README's quality tables show): its claims are what the logic
    decides from its rows, whether they are stored per seed or (an earlier file) one training each."""
    stored = json.loads(RESULTS.read_text())
    sections = {"generative": (generative_decisions(stored), stored.get("claims")),
                "classifier": (classifier_decisions(stored), stored["classifier"].get("claims")),
                "scientific": (scientific_decisions(stored), stored["scientific"].get("claims"))}
    for name, (decisions, claims) in sections.items():
        if claims and isinstance(claims[0].get("claim"), dict):  # stored as decisions: the same ones
            assert json.loads(json.dumps(decisions)) == claims, name
    table = markdown_table(stored)
    assert table.count("| claim | target | measured | holds | seeds that miss |") == 3
    if not any("per_seed" in r for r in stored["rows"]):
        # The file from before per-seed rows: one training each at seed 0, so the generative and
        # scientific claims are undecided; the classifier's arms trained seeds 0-2 and decide theirs.
        for name in ("generative", "scientific"):
            assert set(verdicts(sections[name][0]).values()) == {"not decided: 1 of 3 seeds measured"}, name
        assert [d["seeds_measured"] for d in sections["classifier"][0]] == [3] * len(CLASSIFIER_CLAIMS)
        assert table.count("not decided: 1 of 3 seeds measured") == len(GENERATIVE_CLAIMS) + len(SCIENTIFIC_CLAIMS)


def test_a_run_of_some_seeds_completes_the_claims_of_the_stored_ones(tmp_path, monkeypatch):
    """run() with the training and measuring faked (no Ray, nothing trained): seeds 0 and 1, then
    seed 2 alone, give rows of three seeds whose claims are decided; the sections not run are kept."""
    import ray

    import genray.metrics

    trained = []

    def fake_training(family, tag, overrides, out_dir, storage, stamp):
        trained.append((family, tag, [o for o in overrides if o.startswith("train.seed=")]))
        return SimpleNamespace(wall_s=1.0), Path(tag)

    def fake_measure(family, model):
        seed = int(str(model).rsplit("-s", 1)[1])
        figures = generative()["rows"]
        return {"family": family, **next(r for r in figures if r["family"] == family)["per_seed"][str(seed)],
                **({"fid": 60.0} if (family, seed) == ("gan", 2) else {})}  # seed 2's GAN is worse than its VAE

    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    monkeypatch.setattr(quality, "train_and_export", fake_training)
    monkeypatch.setattr(quality, "measure", fake_measure)
    monkeypatch.setattr(genray.metrics, "real_ceiling", lambda: {"fid": 14.1})
    kept = {**classifier(), **scientific(seeds=(0,))}
    (tmp_path / "quality.json").write_text(json.dumps(kept))
    first = quality.run(["vae", "gan"], 30, tmp_path, tmp_path, seeds=(0, 1))
    assert trained == [("vae", "vae-s0", ["train.seed=0"]), ("vae", "vae-s1", ["train.seed=1"]),
                       ("gan", "gan-s0", ["train.seed=0"]), ("gan", "gan-s1", ["train.seed=1"])]
    assert verdict(by_key(first["claims"])["gan_sharper_than_vae"]) == "not decided: 2 of 3 seeds measured"
    assert first["classifier"]["rows"] == kept["classifier"]["rows"]
    assert first["scientific"]["claims"] == scientific_decisions(kept)
    (tmp_path / "quality.json").write_text(json.dumps(first))
    second = quality.run(["gan", "vae"], 30, tmp_path, tmp_path, seeds=(2,))
    assert [r["family"] for r in second["rows"]] == ["vae", "gan"] and second["rows"][1]["seeds"] == [0, 1, 2]
    gan = by_key(second["claims"])["gan_sharper_than_vae"]
    assert values(gan) == pytest.approx([0.8, 0.8, 1.2]) and gan["holds"] is True and gan["seeds_missing"] == [2]
    assert second["claims"] == generative_decisions(json.loads(json.dumps(second)))
    # Another budget starts the rows afresh: seeds of 30 epochs never mix with seeds of 5.
    (tmp_path / "quality.json").write_text(json.dumps(second))
    other = quality.run(["gan"], 5, tmp_path, tmp_path, seeds=(0,))
    assert [(r["family"], r["seeds"]) for r in other["rows"]] == [("gan", [0])]
    assert set(verdicts(other["claims"]).values()) == {"not decided: 0 of 3 seeds measured"}


# --- the command ---------------------------------------------------------------------------------------

def test_parse_seeds_takes_the_declared_seeds_only():
    assert parse_seeds(None) == SEEDS and parse_seeds("2") == (2,) and parse_seeds(" 1, 0 ") == (1, 0)
    for bad in ("", "x", "0,0", "3", "0,-1", "1.5"):
        with pytest.raises(ValueError, match=rf"--seeds takes distinct seeds among the declared 0,1,2 "
                                             rf"\(comma-separated\), got '{bad}'"):
            parse_seeds(bad)


@pytest.mark.parametrize("bad", ["x", "0,0", "7"])
def test_bench_quality_refuses_bad_seeds_before_training(bad, tmp_path, monkeypatch):
    from genray.cli import app

    def no_training(*args, **kwargs):
        raise AssertionError("bench quality trained with bad --seeds")

    monkeypatch.setattr(quality, "run", no_training)
    result = CliRunner().invoke(app, ["bench", "quality", "--seeds", bad, "--out", str(tmp_path)])
    assert result.exit_code == 2, result.output
    assert f"error: --seeds takes distinct seeds among the declared 0,1,2 (comma-separated), got '{bad}'" \
        in result.output
    assert not (tmp_path / "quality.json").exists()
