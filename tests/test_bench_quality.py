"""The claims of `genray bench quality`, decided on fixed rows: each claim holds, fails, and sits
on its threshold (>= and <= hold there, < and > do not), with the figures the README table shows.
No training: the rows are what the bench's measuring steps would have written."""

import json
from pathlib import Path

from genray.bench.quality import check_claims, classifier_claims, scientific_claims

RESULTS = Path(__file__).resolve().parents[1] / "bench_results" / "quality.json"


def decided(claims: list[dict]) -> dict[str, tuple[bool, str]]:
    return {c["claim"]: (c["holds"], c["figures"]) for c in claims}


# --- the generative families ------------------------------------------------------------------------

SHARPER = "{} samples are sharper than the VAE's (lower classifier-FID)"
CVAE = "CVAE samples asked for digit d are classified as d >= 90% of the time"
AE = "AE reconstruction MSE <= PCA's at the same code size (16)"
COVERAGE = "no family's samples collapse onto fewer than 8 of the 10 classes"


def generative(vae_fid=52.9, gan_fid=38.8, vaegan_fid=16.4, cond_acc=0.979, ae_mse=0.0011, pca_mse=0.0023,
               covered=(10, 10, 10, 10, 10)) -> list[dict]:
    families = ("vae", "cvae", "gan", "vaegan", "aae")
    rows = [{"family": name, "classes_covered": float(c)} for name, c in zip(families, covered)]
    by = {r["family"]: r for r in rows}
    by["vae"]["fid"], by["gan"]["fid"], by["vaegan"]["fid"] = vae_fid, gan_fid, vaegan_fid
    by["cvae"]["cond_acc"] = cond_acc
    return rows + [{"family": "ae", "latent_dim": 16, "val_mse": ae_mse, "pca_mse": pca_mse}]


def test_generative_claims_hold_with_their_figures():
    assert decided(check_claims(generative())) == {
        SHARPER.format("gan"): (True, "38.8 vs 52.9"),
        SHARPER.format("vaegan"): (True, "16.4 vs 52.9"),
        CVAE: (True, "97.9%"),
        AE: (True, "0.0011 vs 0.0023"),
        COVERAGE: (True, "vae 10, cvae 10, gan 10, vaegan 10, aae 10"),
    }


def test_generative_claims_fail_with_their_figures():
    claims = decided(check_claims(generative(gan_fid=60.0, vaegan_fid=52.95, cond_acc=0.5, ae_mse=0.003,
                                             covered=(10, 9, 3, 10, 8))))
    assert claims == {
        SHARPER.format("gan"): (False, "60.0 vs 52.9"),
        SHARPER.format("vaegan"): (False, "53.0 vs 52.9"),  # worse, however close the rounded figures
        CVAE: (False, "50.0%"),
        AE: (False, "0.0030 vs 0.0023"),
        COVERAGE: (False, "vae 10, cvae 9, gan 3, vaegan 10, aae 8"),
    }


def test_generative_claims_at_their_thresholds():
    claims = decided(check_claims(generative(gan_fid=52.9, cond_acc=0.9, ae_mse=0.0023, covered=(8, 8, 8, 8, 8))))
    assert claims[SHARPER.format("gan")] == (False, "52.9 vs 52.9")  # sharper is strictly lower
    assert claims[CVAE] == (True, "90.0%")
    assert claims[AE] == (True, "0.0023 vs 0.0023")
    assert claims[COVERAGE][0] is True
    below = decided(check_claims(generative(cond_acc=0.8999, covered=(10, 10, 7, 10, 10))))
    assert below[CVAE] == (False, "90.0%") and below[COVERAGE] == (False, "vae 10, cvae 10, gan 7, vaegan 10, aae 10")


def test_claims_of_families_not_run_are_left_out():
    assert check_claims([]) == []
    only_gan = [{"family": "gan", "fid": 30.0, "classes_covered": 10.0}]
    assert decided(check_claims(only_gan)) == {COVERAGE: (True, "gan 10")}  # no VAE to be sharper than
    assert [c["claim"] for c in check_claims(generative()[:1])] == [COVERAGE]


# --- the digits classifier ---------------------------------------------------------------------------

FINE_TUNING = "fine-tuning from a checkpoint of digits 0-4 beats training from scratch on 5-9 at the same small budget"
UNFREEZING = "unfreezing the last conv block (lower lr) improves on the frozen base"
AUGMENT_ALL = "augmentation raises val accuracy at the same budget (all digits)"
AUGMENT_FEW = "augmentation raises val accuracy at the same budget (5 images a class)"


def arms(**val_acc: float) -> list[dict]:
    accs = {"full": 0.977, "full_aug": 0.938, "small": 0.653, "small_aug": 0.404, "ft_frozen": 0.820,
            "ft_unfreeze": 0.877, **val_acc}
    return [{"arm": arm.replace("_", "-"), "val_acc": acc} for arm, acc in accs.items()]


def test_classifier_claims_hold_or_fail_with_their_figures():
    assert decided(classifier_claims(arms())) == {
        FINE_TUNING: (True, "82.0% frozen, 87.7% unfrozen later, vs 65.3% scratch"),
        UNFREEZING: (True, "87.7% vs 82.0%"),
        AUGMENT_ALL: (False, "93.8% vs 97.7%"),
        AUGMENT_FEW: (False, "40.4% vs 65.3%"),
    }
    flipped = decided(classifier_claims(arms(full_aug=0.99, small_aug=0.7, ft_frozen=0.6, ft_unfreeze=0.5)))
    assert flipped == {
        FINE_TUNING: (False, "60.0% frozen, 50.0% unfrozen later, vs 65.3% scratch"),
        UNFREEZING: (False, "50.0% vs 60.0%"),
        AUGMENT_ALL: (True, "99.0% vs 97.7%"),
        AUGMENT_FEW: (True, "70.0% vs 65.3%"),
    }


def test_classifier_claims_at_their_thresholds():
    # Either fine-tuned arm beating scratch is enough; a tie beats nothing.
    assert decided(classifier_claims(arms(ft_frozen=0.5, ft_unfreeze=0.66)))[FINE_TUNING][0] is True
    tied = decided(classifier_claims(arms(ft_frozen=0.653, ft_unfreeze=0.653, full_aug=0.977, small_aug=0.653)))
    assert [tied[c][0] for c in (FINE_TUNING, UNFREEZING, AUGMENT_ALL, AUGMENT_FEW)] == [False] * 4


# --- charlm and the UNet, against their baselines -------------------------------------------------------

CHARLM_BITS = "the char-LSTM needs under 60% of the bits per character of the text's unigram entropy"
CHARLM_FALLS = "the char-LSTM's val bits per character fall with training"
SEGMENT = "the UNet segments generated shapes better than Otsu's threshold (val IoU)"
INPAINT = "the UNet fills holes in {} better than mean fill and blur (masked MSE)"
PAIRED = "the UNet fills most {} better than blur, image by image"


def charlm(bits: float, by_epoch: list[float], entropy: float = 4.0) -> dict:
    return {"family": "charlm", "val_bits_per_char": bits, "by_epoch": by_epoch, "unigram_entropy": entropy}


def inpaint(source: str, masked: float, mean: float, blur: float, better_share: float | None = None) -> dict:
    row = {"family": "unet", "task": "inpaint", "source": source, "val_masked_mse": masked,
           "val_mean_fill_mse": mean, "val_blur_fill_mse": blur}
    if better_share is not None:
        row["paired_vs_blur"] = {"unet_better_share": better_share, "images": 359, "median_diff": -0.0303}
    return row


def test_scientific_claims_hold_with_their_figures():
    rows = [charlm(2.231, [3.355, 2.231], entropy=4.689),
            inpaint("digits", 0.01298, 0.12706, 0.05401, better_share=0.95),
            {"family": "unet", "task": "segment", "val_iou": 0.960, "val_otsu_iou": 0.624}]
    assert decided(scientific_claims(rows)) == {
        CHARLM_BITS: (True, "2.231 vs 4.689 bits/char"),
        CHARLM_FALLS: (True, "3.355 → 2.231"),
        INPAINT.format("val digits"): (True, "0.01298 vs 0.12706 mean, 0.05401 blur"),
        PAIRED.format("val digits"): (True, "95% of 359; median difference -0.030300"),
        SEGMENT: (True, "0.960 vs 0.624"),
    }


def test_scientific_claims_fail_with_their_figures():
    rows = [charlm(3.0, [2.9, 3.1, 3.0]),
            # better than mean fill, worse than blur: the claim asks for both
            inpaint("photos", 0.00600, 0.00857, 0.00592, better_share=0.30),
            {"family": "unet", "task": "segment", "val_iou": 0.5, "val_otsu_iou": 0.624}]
    assert decided(scientific_claims(rows)) == {
        CHARLM_BITS: (False, "3.000 vs 4.000 bits/char"),
        CHARLM_FALLS: (False, "2.900 → 3.100 → 3.000"),  # the last against the first, not the best
        INPAINT.format("held-out photo patches"): (False, "0.00600 vs 0.00857 mean, 0.00592 blur"),
        PAIRED.format("held-out photo patches"): (False, "30% of 359; median difference -0.030300"),
        SEGMENT: (False, "0.500 vs 0.624"),
    }


def test_scientific_claims_at_their_thresholds():
    at = decided(scientific_claims([charlm(2.4, [2.4]), inpaint("digits", 0.05, 0.1, 0.05, better_share=0.5),
                                    {"family": "unet", "task": "segment", "val_iou": 0.7, "val_otsu_iou": 0.7}]))
    # Every scientific claim is strict: 60% of 4.0 bits, an unchanged loss, a tie with blur or Otsu, half the images.
    assert {claim: holds for claim, (holds, _) in at.items()} == {
        CHARLM_BITS: False, CHARLM_FALLS: False, INPAINT.format("val digits"): False,
        PAIRED.format("val digits"): False, SEGMENT: False}
    just = decided(scientific_claims([charlm(2.3999, [2.5, 2.3999])]))
    assert just == {CHARLM_BITS: (True, "2.400 vs 4.000 bits/char"), CHARLM_FALLS: (True, "2.500 → 2.400")}
    # A row without the paired comparison makes no image-by-image claim.
    assert [c["claim"] for c in scientific_claims([inpaint("other", 0.01, 0.1, 0.05)])] == [INPAINT.format("val images")]


# --- the stored result --------------------------------------------------------------------------------

def test_the_stored_claims_are_what_the_logic_decides_from_the_stored_rows():
    """bench_results/quality.json (what README's quality tables show) holds its rows and the claims
    decided from them: deciding them again from those rows gives the same answers and figures."""
    stored = json.loads(RESULTS.read_text())
    assert stored["claims"] and check_claims(stored["rows"]) == stored["claims"]
    assert classifier_claims(stored["classifier"]["rows"]) == stored["classifier"]["claims"]
    assert scientific_claims(stored["scientific"]["rows"]) == stored["scientific"]["claims"]

