"""`genray bench quality`: every generative family, one fixed budget, one table; and the
digits classifier with and without augmentation, and fine-tuned against trained from scratch.

Each family trains through the real path (Ray Train, 1 worker, default config, the same
epochs and batch size), once per seed (train.seed), and its best checkpoint is measured:
classifier-IS, classifier-FID and class coverage of 1000 samples (genray.metrics), val ELBO where
defined, reconstruction MSE where defined. The charlm and unet rows train once per seed with their
own budgets and are scored against baselines.

The claims (GENERATIVE_CLAIMS, CLASSIFIER_CLAIMS, SCIENTIFIC_CLAIMS) are declared here, before the
runs that decide them (genray.bench.claims): each one's metric is computed per seed from trainings
at the same train.seed, and it holds when the mean over SEEDS meets its target. Each row stores its
figures per seed (`per_seed`) beside their means; the figures of seeds run now merge with the stored
seeds of the same budget, so `--seeds 2` after `--seeds 0,1` completes the claims.

`--families classifier` runs only the classifier rows (their own budget, CLASSIFIER_BUDGET) and
keeps the generative rows of the previous quality.json, and the other way round: one file and
one README table hold both.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path
from typing import Any, Callable

import torch

from genray.bench.claims import HEADER, Claim, claim_row
from genray.families.ae import AEConfig

GENERATIVE = ["vae", "ae", "cvae", "gan", "vaegan", "aae"]
SAMPLES = 1000
GENERATIVE_KEYS = ("machine", "budget", "rows", "ceiling", "claims")
# Every claim is decided over these train.seed values; `--seeds` runs a part of them.
SEEDS = (0, 1, 2)
GENERATIVE_BUDGET = {"epochs": 30, "batch_size": 32, "workers": 1}
# Rows stored before the bench set train.seed hold one training's figures and no seed. That
# training ran at TrainConfig's default train.seed, 0: the bench never overrode it for the
# generative and scientific rows, and genray.train.loop has seeded torch with it since the first
# commit. So such a row is seed 0's figures.
UNSEEDED_ROW_SEED = 0
# Families scored against baselines rather than by samples: their own budgets (Ray Train, 1
# worker, default model), rows in the "scientific" section, kept across runs. A family may have
# several rows (unet: digits, photos, segmentation), each named by its key; all run together.
SCIENTIFIC_BUDGET = {
    "charlm": ["train.epochs=5", "train.batch_size=64", "data.stride=64"],  # each epoch reads the text once
    "unet": ["train.epochs=15", "train.batch_size=32"],
    # 4096 random crops of the photos' left 80% a epoch; scored on the held-out right 20%. The
    # decaying rate makes the last epoch as good as the best (at a constant one it jumps +-5%).
    "unet-photos": ["data.source=photos", "train.epochs=10", "train.batch_size=32", "model.lr_halflife=3"],
    "unet-segment": ["model.task=segment", "data.source=shapes", "train.epochs=10", "train.batch_size=32"],
}


def family_of(row: str) -> str:
    """The family a scientific row trains: "unet-photos" -> "unet"."""
    return row.partition("-")[0]

# The classifier rows: every arm trains through Ray Train (1 worker) and is scored by its val
# accuracy at the last epoch (no checkpoint picked on val), once per seed (train.seed).
CLASSIFIER_BUDGET = {
    "full_epochs": 8, "full_batch": 32,  # all 1438 training digits
    "source_classes": [0, 1, 2, 3, 4], "source_epochs": 5,  # the checkpoint fine-tuning starts from
    "target_classes": [5, 6, 7, 8, 9], "per_class": 5, "small_epochs": 10, "small_batch": 8,
    "unfreeze_after_epochs": 5, "unfreeze_blocks": 1, "lr_after_unfreeze": 5e-4,
}
# The source checkpoint of every seed's fine-tuned arms: one training on digits 0-4 a run.
SOURCE_SEED = 0

# --- the declared claims: (claim, its value from one seed's figures) ---------------------------------
# A value function reads {row name: that row's figures at one train.seed}: a family, a classifier
# arm or a scientific row. A KeyError (a row or figure not measured at that seed) leaves the seed
# unmeasured for that claim.
Figures = dict[str, dict[str, Any]]
SAMPLED = ("vae", "cvae", "gan", "vaegan", "aae")  # the families that draw samples (not ae)
AE_CODE_SIZE = AEConfig().latent_dim  # the default AE's: the bench trains default configs


def _generative(key: str, text: str, metric: str, target: float, direction: str) -> Claim:
    return Claim(key=key, text=text, metric=metric, target=target, direction=direction,
                 budget=GENERATIVE_BUDGET, seeds=SEEDS)


GENERATIVE_CLAIMS: list[tuple[Claim, Callable[[Figures], float]]] = [
    (_generative("gan_sharper_than_vae", "gan samples are sharper than the VAE's (lower classifier-FID)",
                 "gan classifier-FID / vae classifier-FID, same train.seed", 1.0, "<"),
     lambda f: f["gan"]["fid"] / f["vae"]["fid"]),
    (_generative("vaegan_sharper_than_vae", "vaegan samples are sharper than the VAE's (lower classifier-FID)",
                 "vaegan classifier-FID / vae classifier-FID, same train.seed", 1.0, "<"),
     lambda f: f["vaegan"]["fid"] / f["vae"]["fid"]),
    (_generative("cvae_conditional_accuracy", "CVAE samples asked for digit d are classified as d >= 90% of the time",
                 "cvae cond_acc: share of samples asked for digit d classified as d", 0.9, ">="),
     lambda f: f["cvae"]["cond_acc"]),
    (_generative("ae_vs_pca", f"AE reconstruction MSE <= PCA's at the same code size ({AE_CODE_SIZE})",
                 "ae val recon MSE / val recon MSE of PCA with as many components", 1.0, "<="),
     lambda f: f["ae"]["val_mse"] / f["ae"]["pca_mse"]),
    (_generative("class_coverage", "no family's samples collapse onto fewer than 8 of the 10 classes",
                 f"fewest classes covered by {SAMPLES} samples over {', '.join(SAMPLED)}", 8.0, ">="),
     lambda f: min(f[name]["classes_covered"] for name in SAMPLED)),
]


def _accuracy_gain(key: str, text: str, arm: str, against: str) -> tuple[Claim, Callable[[Figures], float]]:
    """Claim: `arm`'s val accuracy minus `against`'s, at the same train.seed, is above 0."""
    claim = Claim(key=key, text=text, metric=f"{arm} val accuracy − {against} val accuracy, same train.seed",
                  target=0.0, direction=">", budget=CLASSIFIER_BUDGET, seeds=SEEDS)
    return claim, lambda f: f[arm]["val_acc"] - f[against]["val_acc"]


CLASSIFIER_CLAIMS: list[tuple[Claim, Callable[[Figures], float]]] = [
    (Claim(key="finetune_beats_scratch",
           text="fine-tuning from a checkpoint of digits 0-4 beats training from scratch on 5-9 at the same small budget",
           metric="the better of ft-frozen and ft-unfreeze minus small (scratch), val accuracy, same train.seed",
           target=0.0, direction=">", budget=CLASSIFIER_BUDGET, seeds=SEEDS),
     lambda f: max(f["ft-frozen"]["val_acc"], f["ft-unfreeze"]["val_acc"]) - f["small"]["val_acc"]),
    _accuracy_gain("unfreeze_beats_frozen", "unfreezing the last conv block (lower lr) improves on the frozen base",
                   "ft-unfreeze", "ft-frozen"),
    _accuracy_gain("augment_all_digits", "augmentation raises val accuracy at the same budget (all digits)",
                   "full-aug", "full"),
    _accuracy_gain("augment_few_digits", f"augmentation raises val accuracy at the same budget "
                                         f"({CLASSIFIER_BUDGET['per_class']} images a class)", "small-aug", "small"),
]


def _scientific(row: str, key: str, text: str, metric: str, target: float, direction: str,
                value: Callable[[dict[str, Any]], float]) -> tuple[Claim, Callable[[Figures], float]]:
    """A claim on one scientific row; `value` reads that row's figures at one seed."""
    claim = Claim(key=key, text=text, metric=metric, target=target, direction=direction,
                  budget={"row": row, "workers": 1, "overrides": SCIENTIFIC_BUDGET[row]}, seeds=SEEDS)
    return claim, lambda f: value(f[row])


def _inpaint_claims(row: str, what: str) -> list[tuple[Claim, Callable[[Figures], float]]]:
    return [
        _scientific(row, f"{row}_vs_mean_and_blur", f"the UNet fills holes in {what} better than mean fill and blur "
                    "(masked MSE)", "val masked MSE / the lower of mean fill's and blur fill's", 1.0, "<",
                    lambda r: r["val_masked_mse"] / min(r["val_mean_fill_mse"], r["val_blur_fill_mse"])),
        _scientific(row, f"{row}_most_images_vs_blur", f"the UNet fills most {what} better than blur, image by image",
                    "share of val images whose holes the UNet fills with lower MSE than blur fill", 0.5, ">",
                    lambda r: r["paired_vs_blur"]["unet_better_share"]),
    ]


SCIENTIFIC_CLAIMS: list[tuple[Claim, Callable[[Figures], float]]] = [
    _scientific("charlm", "charlm_vs_unigram",
                "the char-LSTM needs under 60% of the bits per character of the text's unigram entropy",
                "val bits/char / unigram entropy of the text", 0.6, "<",
                lambda r: r["val_bits_per_char"] / r["unigram_entropy"]),
    _scientific("charlm", "charlm_falls", "the char-LSTM's val bits per character fall with training",
                "last epoch's val bits/char / first epoch's", 1.0, "<",
                lambda r: r["by_epoch"][-1] / r["by_epoch"][0]),
    *_inpaint_claims("unet", "val digits"),
    *_inpaint_claims("unet-photos", "held-out photo patches"),
    _scientific("unet-segment", "unet_segment_vs_otsu",
                "the UNet segments generated shapes better than Otsu's threshold (val IoU)",
                "val IoU − Otsu's threshold's val IoU", 0.0, ">", lambda r: r["val_iou"] - r["val_otsu_iou"]),
]


def parse_seeds(text: str | None) -> tuple[int, ...]:
    """`--seeds`: distinct train.seed values among SEEDS, comma-separated; None: all of SEEDS."""
    if text is None:
        return SEEDS
    declared = ",".join(map(str, SEEDS))
    try:
        seeds = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        seeds = ()
    if not seeds or len(set(seeds)) != len(seeds) or set(seeds) - set(SEEDS):
        raise ValueError(f"--seeds takes distinct seeds among the declared {declared} (comma-separated), "
                         f"got {text!r}")
    return seeds


# --- figures per seed ------------------------------------------------------------------------------

def seed_figures(row: dict[str, Any]) -> dict[int, dict[str, Any]]:
    """One stored row's figures by train.seed. A classifier arm stored before `per_seed` lists its
    accuracies in `val_accs` in the order it trained them, seeds 0, 1, ...; any other row without
    `per_seed` is one training at UNSEEDED_ROW_SEED."""
    if "per_seed" in row:
        return {int(seed): figures for seed, figures in row["per_seed"].items()}
    if "val_accs" in row:
        return {seed: {"val_acc": acc} for seed, acc in enumerate(row["val_accs"])}
    return {UNSEEDED_ROW_SEED: row}


def seed_mean(values: list[Any]) -> Any:
    """The mean of one figure over seeds, in the figure's shape: numbers averaged, dicts key by key,
    equal-length lists element by element; equal values and text as they are (the first seed's)."""
    first = values[0]
    if all(v == first for v in values):
        return first
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return statistics.fmean(values)
    if all(isinstance(v, dict) for v in values):
        return {k: seed_mean([v[k] for v in values]) for k in first if all(k in v for v in values)}
    if all(isinstance(v, list) and len(v) == len(first) for v in values):
        return [seed_mean(list(column)) for column in zip(*values)]
    return first


def summarised(per_seed: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """A stored row: the means over its seeds (what the table shows), its seeds and each seed's figures."""
    seeds = sorted(per_seed)
    return {**seed_mean([per_seed[s] for s in seeds]), "seeds": seeds,
            "per_seed": {str(s): per_seed[s] for s in seeds}}


def merged(previous: dict[str, Any] | None, measured: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """A row from the seeds measured now and the other seeds of `previous` (a stored row of the same
    budget, or None): a seed measured now replaces its stored figures."""
    return summarised({**(seed_figures(previous) if previous else {}), **measured})


def row_key(row: dict[str, Any]) -> str:
    """A scientific row's name: its key in SCIENTIFIC_BUDGET ("family" alone in the first stored rows)."""
    return row.get("row", row["family"])


def figures_by_seed(rows: list[dict[str, Any]], name: Callable[[dict[str, Any]], str]) -> dict[int, Figures]:
    """{seed: {name(row): that row's figures at the seed}} over the rows."""
    out: dict[int, Figures] = {}
    for row in rows:
        for seed, figures in seed_figures(row).items():
            out.setdefault(seed, {})[name(row)] = figures
    return out


def decide(claims: list[tuple[Claim, Callable[[Figures], float]]], by_seed: dict[int, Figures]) -> list[dict[str, Any]]:
    """Each claim decided from its value at each of its declared seeds that `by_seed` holds."""
    decisions = []
    for claim, value in claims:
        values = {}
        for seed in claim.seeds:
            try:
                values[seed] = value(by_seed[seed])
            except KeyError:  # not measured at this seed
                continue
        decisions.append(claim.decide(values))
    return decisions


def generative_decisions(result: dict[str, Any]) -> list[dict[str, Any]]:
    """GENERATIVE_CLAIMS from the stored rows; rows of another budget measure nothing towards them."""
    rows = result.get("rows", []) if result.get("budget") == GENERATIVE_BUDGET else []
    return decide(GENERATIVE_CLAIMS, figures_by_seed(rows, lambda r: r["family"]))


def classifier_budget(stored: dict[str, Any]) -> dict[str, Any]:
    """A stored classifier budget without "seeds", which a file from before per-seed rows holds: the
    seeds are the claims' now."""
    return {k: v for k, v in stored.items() if k != "seeds"}


def classifier_decisions(result: dict[str, Any]) -> list[dict[str, Any]]:
    """CLASSIFIER_CLAIMS from the stored arms; arms of another budget measure nothing towards them."""
    section = result.get("classifier") or {}
    same = classifier_budget(section.get("budget", {})) == CLASSIFIER_BUDGET
    return decide(CLASSIFIER_CLAIMS, figures_by_seed(section.get("rows", []) if same else [], lambda r: r["arm"]))


def scientific_decisions(result: dict[str, Any]) -> list[dict[str, Any]]:
    """SCIENTIFIC_CLAIMS from the stored rows; a row trained at another budget measures nothing."""
    rows = [r for r in (result.get("scientific") or {}).get("rows", [])
            if r.get("budget") == SCIENTIFIC_BUDGET.get(row_key(r))]
    return decide(SCIENTIFIC_CLAIMS, figures_by_seed(rows, row_key))


def pca_mse(code_size: int) -> float:
    """Val reconstruction MSE (per pixel) of PCA with `code_size` components fit on train digits."""
    from genray.data import DataConfig, load_images

    train, val = load_images(DataConfig())
    xt = train.tensors[0].flatten(1).double()
    xv = val.tensors[0].flatten(1).double()
    mean = xt.mean(0)
    _, _, v = torch.linalg.svd(xt - mean, full_matrices=False)
    basis = v[:code_size].T  # (784, k)
    recon = (xv - mean) @ basis @ basis.T + mean
    return (recon - xv).pow(2).mean().item()


def measure(family_name: str, model_path: Path) -> dict[str, Any]:
    from genray.checkpoint import load_family
    from genray.metrics import sample_quality

    family, ckpt = load_family(model_path)
    row: dict[str, Any] = {"family": family_name, "epoch": ckpt.epoch}
    for key in ("val_neg_elbo", "val_mse"):
        if key in ckpt.metrics:
            row[key] = ckpt.metrics[key]
    drawn = family.quality_samples(SAMPLES, seed=1)
    if drawn is not None:
        images, wanted = drawn
        row.update(sample_quality(images, wanted))
    if family_name == "ae":
        row["pca_mse"] = pca_mse(family.cfg.latent_dim)
        row["latent_dim"] = family.cfg.latent_dim
    return row


def run(families: list[str], epochs: int, out_dir: Path, storage: Path,
        seeds: tuple[int, ...] = SEEDS) -> dict[str, Any]:
    """The bench's dict for quality.json: the sections of `families` trained once per seed in
    `seeds` and merged with the stored seeds of the same budget; the sections not run kept from
    the previous quality.json; every section's claims decided from its rows."""
    import ray

    from genray.bench import machine
    from genray.metrics import real_ceiling

    parse_seeds(",".join(map(str, seeds)))  # the same check as --seeds: declared, distinct
    if not ray.is_initialized():
        from genray.train import start_local_ray

        start_local_ray()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    previous_file = out_dir / "quality.json"
    previous = json.loads(previous_file.read_text()) if previous_file.is_file() else {}
    generative = [f for f in families if f != "classifier" and f not in SCIENTIFIC_BUDGET]
    scientific = [r for r in SCIENTIFIC_BUDGET if family_of(r) in families]
    result: dict[str, Any] = {}
    if scientific or "scientific" in previous:  # rows of the families not run now are kept
        result["scientific"] = scientific_rows(scientific, seeds, out_dir, storage, stamp, previous.get("scientific"))
    if "classifier" in families:
        result["classifier"] = classifier_rows(seeds, storage, stamp, previous.get("classifier"))
    elif "classifier" in previous:
        result["classifier"] = previous["classifier"]
    if generative:
        budget = {**GENERATIVE_BUDGET, "epochs": epochs}
        # The stored rows of the same budget: their other seeds, and the families not run now.
        rows = {r["family"]: r for r in previous.get("rows", [])} if previous.get("budget") == budget else {}
        for name in generative:
            measured = {}
            for seed in seeds:
                summary, model = train_and_export(name, f"{name}-s{seed}", [
                    f"train.epochs={epochs}", f"train.batch_size={budget['batch_size']}", "train.quality_every=5",
                    f"train.seed={seed}"], out_dir, storage, stamp)
                measured[seed] = {**measure(name, model), "train_s": summary.wall_s}
                print(f"{name} seed {seed}: " + ", ".join(f"{k} {v:.4g}" for k, v in measured[seed].items()
                                                          if isinstance(v, float)), flush=True)
            rows[name] = {"family": name, **merged(rows.get(name), measured)}
        order = GENERATIVE + [name for name in rows if name not in GENERATIVE]
        result.update({"machine": machine(), "budget": budget, "rows": [rows[n] for n in order if n in rows],
                       "ceiling": {"family": "real digits (val)", **real_ceiling()}})
    else:  # keep the generative table of the last run
        result.update({k: previous[k] for k in GENERATIVE_KEYS if k in previous})
    if "rows" in result:
        result["claims"] = generative_decisions(result)
    if "classifier" in result:
        result["classifier"]["claims"] = classifier_decisions(result)
    if "scientific" in result:
        result["scientific"]["claims"] = scientific_decisions(result)
    return result


def train_and_export(family: str, tag: str, overrides: list[str], out_dir: Path, storage: Path, stamp: str):
    """One training through Ray Train (1 worker) and its best checkpoint exported under out_dir/models/<tag>."""
    from genray.config import build_config
    from genray.store import export
    from genray.train import fit

    cfg = build_config(family, overrides=[f"name=bench-{tag}-{stamp}", f"storage={storage}", "train.workers=1",
                                          *overrides])
    summary = fit(cfg, verbose=False)
    return summary, export(summary.run, out_dir / "models" / tag, replace=True)


def classifier_rows(seeds: tuple[int, ...], storage: Path, stamp: str,
                    previous: dict[str, Any] | None) -> dict[str, Any]:
    """Digits accuracy with and without augmentation (all training digits), and digits 5-9 from
    a few labelled images a class: fine-tuned from a checkpoint trained on 0-4, or from scratch.
    Each arm trains once per seed; the stored seeds of the same budget are kept."""
    from genray.bench import machine
    from genray.config import build_config
    from genray.train import fit

    b = CLASSIFIER_BUDGET

    def train(tag: str, seed: int, overrides: list[str]):
        cfg = build_config("classifier", overrides=[
            f"name=bench-classifier-{tag}-s{seed}-{stamp}", f"storage={storage}", "train.workers=1",
            f"train.seed={seed}", "train.quality_every=0", "train.preview_every=0", "train.keep_checkpoints=1",
            *overrides])
        return fit(cfg, verbose=False)

    classes = lambda cs: "data.classes=[" + ",".join(map(str, cs)) + "]"  # noqa: E731
    source = train("source", SOURCE_SEED, [classes(b["source_classes"]), f"train.epochs={b['source_epochs']}"])
    small = [classes(b["target_classes"]), f"data.per_class_limit={b['per_class']}",
             f"train.epochs={b['small_epochs']}", f"train.batch_size={b['small_batch']}"]
    freeze = [f"train.finetune.init_from={source.best_checkpoint}", "train.finetune.freeze=base"]
    unfreeze = [f"train.finetune.unfreeze_after_epochs={b['unfreeze_after_epochs']}",
                f"train.finetune.unfreeze_blocks={b['unfreeze_blocks']}",
                f"train.finetune.lr_after_unfreeze={b['lr_after_unfreeze']}"]
    full = [f"train.epochs={b['full_epochs']}", f"train.batch_size={b['full_batch']}"]
    n_small = b["per_class"] * len(b["target_classes"])
    arms = [
        ("full", "all digits", "scratch", full),
        ("full-aug", "all digits", "scratch + augmentation", full + ["data.augment.enabled=true"]),
        ("small", f"5-9, {b['per_class']} a class", "scratch", small),
        ("small-aug", f"5-9, {b['per_class']} a class", "scratch + augmentation", small + ["data.augment.enabled=true"]),
        ("ft-frozen", f"5-9, {b['per_class']} a class", "fine-tuned from 0-4: frozen conv base, fresh FC head", small + freeze),
        ("ft-unfreeze", f"5-9, {b['per_class']} a class",
         f"fine-tuned from 0-4: + last conv block unfrozen after {b['unfreeze_after_epochs']} epochs "
         f"at lr {b['lr_after_unfreeze']:g}", small + freeze + unfreeze),
    ]
    same_budget = previous is not None and classifier_budget(previous["budget"]) == b
    stored = {r["arm"]: r for r in previous["rows"]} if same_budget else {}
    rows = []
    for tag, data, how, overrides in arms:
        measured = {}
        for seed in seeds:
            summary = train(tag, seed, overrides)
            measured[seed] = {"val_acc": summary.metrics["val_acc"], "train_s": summary.wall_s}
        row = {"arm": tag, "data": data, "how": how, "train_images": 1438 if tag.startswith("full") else n_small,
               "epochs": b["full_epochs"] if tag.startswith("full") else b["small_epochs"],
               **merged(stored.get(tag), measured)}
        rows.append(row)
        print(f"classifier {tag}: val_acc {row['val_acc']:.3f} over seeds {row['seeds']}", flush=True)
    source_row = {"val_acc": source.metrics["val_acc"], "train_s": source.wall_s, "seed": SOURCE_SEED}
    return {"machine": machine(), "budget": b, "source": source_row, "rows": rows}


def scientific_rows(rows_to_run: list[str], seeds: tuple[int, ...], out_dir: Path, storage: Path, stamp: str,
                    previous: dict[str, Any] | None) -> dict[str, Any]:
    """charlm and unet through Ray Train with their own budgets, once per seed, each against its
    baselines; a row's stored seeds of the same budget, and the rows not run now, come from the
    previous quality.json."""
    from genray.bench import machine

    rows = {row_key(r): r for r in (previous or {}).get("rows", [])}
    for key in rows_to_run:
        name = family_of(key)
        measured = {}
        for seed in seeds:
            load_before = os.getloadavg()[0]  # the machine is shared: train_s depends on it
            summary, model = train_and_export(name, f"{key}-s{seed}", [
                "train.quality_every=0", f"train.seed={seed}", *SCIENTIFIC_BUDGET[key]], out_dir, storage, stamp)
            load = [load_before, os.getloadavg()[0]]
            row = {"charlm": measure_charlm, "unet": measure_unet}[name](model, summary.history)
            row.update(row=key, train_s=summary.wall_s, load_1min=load, budget=SCIENTIFIC_BUDGET[key],
                       machine=machine())
            measured[seed] = row
            print(f"{key} seed {seed}: " + ", ".join(f"{k} {v:.4g}" for k, v in row.items() if isinstance(v, float)),
                  flush=True)
        stored = rows.get(key)
        rows[key] = merged(stored if stored and stored.get("budget") == SCIENTIFIC_BUDGET[key] else None, measured)
    return {"rows": [rows[k] for k in SCIENTIFIC_BUDGET if k in rows]}


def measure_charlm(model_path: Path, history: list[dict[str, Any]]) -> dict[str, Any]:
    """Val bits per character against the unigram entropy of the text (and the held-out unigram
    code), the first epoch's figure beside the best, and a sample."""
    from genray.checkpoint import load_family
    from genray.data.text import TextDataConfig, read_text, unigram_cross_entropy, unigram_entropy

    family, ckpt = load_family(model_path)
    data = TextDataConfig.model_validate(ckpt.config["data"])
    text = read_text(data.source, data.encoding)
    cut = int(round(len(text) * (1.0 - data.val_fraction)))  # the split genray.data.text makes
    return {
        "family": "charlm", "epoch": ckpt.epoch, "data": f"{data.source} ({len(text)} characters)",
        "val_bits_per_char": ckpt.metrics["val_bits_per_char"],
        "by_epoch": [h["val_bits_per_char"] for h in history],
        "unigram_entropy": unigram_entropy(text),
        "unigram_heldout": unigram_cross_entropy(text[:cut], text[cut:]),
        "sample": family.generate("The ", 200, temperature=0.8, seed=0),
    }


def unet_scores(family, dataset) -> dict[str, float]:
    """The family's val metrics (means) over a whole dataset."""
    from torch.utils.data import DataLoader

    sums: dict[str, float] = {}
    for batch in DataLoader(dataset, batch_size=256):
        for k, v in family.eval_batch(batch).items():
            sums[k] = sums.get(k, 0.0) + v
    return {k: v / len(dataset) for k, v in sums.items()}


def paired_vs_blur(family, dataset, resamples: int = 2000) -> dict[str, float]:
    """Image by image, the UNet's masked MSE minus blur fill's on the same holes: the mean
    difference with a 95% bootstrap interval, the share of images the UNet fills better, and
    the median difference (the typical image, where the mean is led by the hard ones)."""
    from torch.utils.data import DataLoader

    from genray.families.unet import blur_fill, masked_mse

    diffs = []
    for image, mask in DataLoader(dataset, batch_size=256):
        diffs.append(masked_mse(family.inpaint(image, mask), image, mask) - masked_mse(blur_fill(image, mask), image, mask))
    d = torch.cat(diffs).double()
    gen = torch.Generator().manual_seed(0)
    means = torch.stack([d[torch.randint(0, len(d), (len(d),), generator=gen)].mean() for _ in range(resamples)])
    return {"images": len(d), "mean_diff": d.mean().item(), "ci95": [means.quantile(0.025).item(), means.quantile(0.975).item()],
            "unet_better_share": (d < 0).double().mean().item(), "median_diff": d.median().item()}


def measure_unet(model_path: Path, history: list[dict[str, Any]]) -> dict[str, Any]:
    """inpaint: masked-region MSE on the val holes against mean fill and normalized-convolution
    blur (and, for the digits model, on the held-out photo patches it never saw); segment: val
    IoU against Otsu's threshold. Always on the same val images (and holes) for every method."""
    from genray.checkpoint import load_family
    from genray.data.inpaint import InpaintDataConfig, load_inpaint, photo_parts

    family, ckpt = load_family(model_path)
    data = InpaintDataConfig.model_validate(ckpt.config["data"])
    task = family.cfg.task
    if task == "segment":
        s = data.shapes
        described = (f"generated shapes ({s.size}x{s.size}, 1-{s.max_shapes} an image, noise {s.noise:g}; "
                     f"{s.train_images} train / {s.val_images} val)")
        keys = ("val_iou", "val_otsu_iou")
    else:
        photos = (f"photos: {data.photo_crops} random crops of the left 80% a epoch; "
                  f"{len(photo_parts()[1])} patches of the right 20% val")
        described = {"digits": "digits", "photos": photos, "both": f"digits + {photos}"}[data.source] \
            + f", {data.masks} masks"
        keys = ("val_masked_mse", "val_mean_fill_mse", "val_blur_fill_mse")
    row = {"family": "unet", "task": task, "source": data.source, "epoch": ckpt.epoch, "data": described,
           "by_epoch": [h[keys[0]] for h in history], "model": family.cfg.model_dump()}
    row.update({k: ckpt.metrics[k] for k in keys})
    if task == "inpaint":
        _, val = load_inpaint(data)
        row["paired_vs_blur"] = paired_vs_blur(family, val)
    if task == "inpaint" and data.source == "digits":
        _, photos = load_inpaint(data.model_copy(update={"source": "photos", "limit": None, "val_limit": None}))
        row["photos"] = unet_scores(family, photos)
    return row


def over_seeds(row: dict[str, Any], path: str, fmt: str, scale: float = 1.0) -> str:
    """One figure of a row ("paired_vs_blur.unet_better_share": a nested one): its value where one
    seed measured it, mean ± sd where several did, "—" where none did."""
    values = []
    for figures in seed_figures(row).values():
        for key in path.split("."):
            figures = figures.get(key) if isinstance(figures, dict) else None
        if figures is not None:
            values.append(scale * figures)
    if not values:
        return "—"
    if len(values) == 1:
        return format(values[0], fmt)
    return f"{format(statistics.fmean(values), fmt)} ± {format(statistics.stdev(values), fmt)}"


def seeds_of(row: dict[str, Any]) -> str:
    return ", ".join(map(str, sorted(seed_figures(row))))


def claims_table(decisions: list[dict[str, Any]]) -> list[str]:
    """The claims under HEADER; each measured cell names its metric (per seed, then the mean)."""
    return [*HEADER, *(claim_row(d, fmt=".4g", detail=d["claim"]["metric"]) for d in decisions)]


def scientific_table(result: dict[str, Any]) -> str:
    from genray.bench import machine_line

    section = result["scientific"]
    lines = [
        "Scored against baselines (`genray bench quality --families charlm,unet`): Ray Train, 1 worker, default "
        "model, the budget in each row, once per seed (train.seed; the seeds column); mean ± sd over the seeds. "
        "The value of the best checkpoint (ranked by the val loss on the same val set; \"by epoch\": the first and "
        "the last epoch's value, mean over the seeds). Every method is scored on the same val images and holes.",
        "",
        "| family | seeds | data | metric | model | by epoch | baselines | train s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in section["rows"]:
        steps = r["by_epoch"]
        trend = f"{steps[0]:.4g} → {steps[-1]:.4g} ({len(steps)} epochs)"
        train_s = over_seeds(r, "train_s", ".0f")
        if r["family"] == "charlm":
            lines.append(f"| charlm | {seeds_of(r)} | {r['data']} | val bits/char ↓ | "
                         f"{over_seeds(r, 'val_bits_per_char', '.3f')} | {trend} | unigram entropy "
                         f"{r['unigram_entropy']:.3f}; held-out unigram {r['unigram_heldout']:.3f} | {train_s} |")
        elif r.get("task") == "segment":
            lines.append(f"| unet, segment | {seeds_of(r)} | {r['data']} | val IoU ↑ | {over_seeds(r, 'val_iou', '.3f')} | "
                         f"{steps[0]:.3f} → {steps[-1]:.3f} ({len(steps)} epochs) | Otsu threshold (σ = 1 smoothing) "
                         f"{over_seeds(r, 'val_otsu_iou', '.3f')} | {train_s} |")
        elif r["family"] == "unet":
            lines.append(f"| unet, inpaint | {seeds_of(r)} | {r['data']} | val masked MSE ↓ | "
                         f"{over_seeds(r, 'val_masked_mse', '.5f')} | {trend} | mean fill "
                         f"{over_seeds(r, 'val_mean_fill_mse', '.5f')}; blur fill {over_seeds(r, 'val_blur_fill_mse', '.5f')}"
                         f" | {train_s} |")
            if "photos" in r:
                lines.append(f"| unet, inpaint, trained on digits | {seeds_of(r)} | photo patches (never seen) | "
                             f"val masked MSE ↓ | {over_seeds(r, 'photos.val_masked_mse', '.5f')} | — | mean fill "
                             f"{over_seeds(r, 'photos.val_mean_fill_mse', '.5f')}; blur fill "
                             f"{over_seeds(r, 'photos.val_blur_fill_mse', '.5f')} | — |")
    lines.append("")
    for r in section["rows"]:
        by_seed = seed_figures(r)
        load = "; ".join(f"seed {seed} {f['load_1min'][0]:.1f} → {f['load_1min'][1]:.1f}"
                         for seed, f in sorted(by_seed.items()) if "load_1min" in f)
        load = f" Load average (1 min) before → after training: {load}." if load else ""
        lines.append(f"- {row_key(r)}: budget `{' '.join(r['budget'])}`. {machine_line(r['machine'])}{load}")
        if r["family"] == "unet" and "model" in r:
            m = r["model"]
            how = (f"the hole enters pre-filled by {m['prefill']} fill" + (
                   ", and the UNet adds a residual to the blur inside it (its last layer starts at zero)"
                   if m["prefill"] == "blur" else "") if m["task"] == "inpaint"
                   else "loss BCE + soft Dice, threshold 0.5")
            lines.append(f"- {r['row']}: {m['channels']} channels, depth {m['depth']}, norm {m['norm']}; {how}.")
        for seed, f in sorted(by_seed.items()):
            if "paired_vs_blur" in f:
                p = f["paired_vs_blur"]
                lines.append(f"- {r['row']}, seed {seed}, image by image against blur fill on the same {p['images']} "
                             f"val holes: mean difference {p['mean_diff']:+.5f} (95% bootstrap interval "
                             f"{p['ci95'][0]:+.5f} to {p['ci95'][1]:+.5f}); the UNet fills "
                             f"{100 * p['unet_better_share']:.0f}% of the images better; median difference "
                             f"{p['median_diff']:+.6f}.")
        if "sample" in r:
            first = min(by_seed)
            lines.append(f"- charlm sample of the seed {first} model (prompt \"The \", T = 0.8, sampling seed 0): "
                         f"`{by_seed[first]['sample'][:160]!r}`")
    lines += ["", *claims_table(scientific_decisions(result))]
    return "\n".join(lines) + "\n"


def markdown_table(result: dict[str, Any]) -> str:
    """The tables of the sections `result` holds; the claims decided again from the stored rows, so a
    file stored before the claims were declared renders too."""
    parts = []
    if "rows" in result:
        parts.append(generative_table(result))
    if "classifier" in result:
        parts.append(classifier_table(result))
    if "scientific" in result:
        parts.append(scientific_table(result))
    return "\n".join(parts)


def classifier_table(result: dict[str, Any]) -> str:
    from genray.bench import machine_line

    section = result["classifier"]
    b = section["budget"]
    lines = [
        f"Digits classifier (`genray bench quality --families classifier`), 1 Ray Train worker, default model; "
        f"val accuracy at the last epoch, mean ± sd over the seeds in each row (train.seed). Fine-tuning starts, "
        f"for every seed, from one checkpoint trained with train.seed {section['source'].get('seed', SOURCE_SEED)} "
        f"for {b['source_epochs']} epochs on digits 0-4 (val accuracy {100 * section['source']['val_acc']:.1f}% "
        f"on 0-4); the 5-9 arms see {b['per_class']} labelled images a class for {b['small_epochs']} epochs "
        f"(batch {b['small_batch']}) and are scored on all 5-9 val digits. Augmentation: the course's Keras "
        f"settings (rotation 10°, shifts 0.15, shear 0.15°, zoom 0.1, nearest fill). "
        f"{machine_line(section['machine'])}",
        "",
        "| classifier | seeds | train data | epochs | val accuracy ↑ (%) | train s |",
        "|---|---|---|---|---|---|",
    ]
    for r in section["rows"]:
        lines.append(f"| {r['how']} | {seeds_of(r)} | {r['data']} ({r['train_images']} images) | {r['epochs']} | "
                     f"{over_seeds(r, 'val_acc', '.1f', scale=100)} | "
                     f"{over_seeds(r, 'train_s', '.0f') if 'per_seed' in r else _fmt(r.get('train_s'), 0)} |")
    lines += ["", *claims_table(classifier_decisions(result))]
    return "\n".join(lines) + "\n"


def _fmt(value: Any, digits: int) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def generative_table(result: dict[str, Any]) -> str:
    from genray.bench import machine_line

    b = result["budget"]
    lines = [
        f"Budget: {b['epochs']} epochs, batch {b['batch_size']}, {b['workers']} Ray Train worker, default configs, "
        f"digits (1438 train / 359 val); {SAMPLES} samples per family; each family trained once per seed "
        f"(train.seed; the seeds column), mean ± sd over the seeds. {machine_line(result['machine'])}",
        "",
        "| family | seeds | classifier-IS ↑ | classifier-FID ↓ | classes covered | val −ELBO (nats) ↓ | recon MSE ↓ "
        "| train s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"] + [result["ceiling"]]:
        seeds = "—" if r is result["ceiling"] else seeds_of(r)  # the real digits: no training
        lines.append(
            f"| {r['family']} | {seeds} | {over_seeds(r, 'is', '.2f')} | {over_seeds(r, 'fid', '.1f')} | "
            f"{over_seeds(r, 'classes_covered', '.1f')} | {over_seeds(r, 'val_neg_elbo', '.1f')} | "
            f"{over_seeds(r, 'val_mse', '.4f')} | {over_seeds(r, 'train_s', '.0f')} |"
        )
    extra = [r for r in result["rows"] if "pca_mse" in r or "cond_acc" in r]
    if extra:
        lines.append("")
        for r in extra:
            if "pca_mse" in r:
                lines.append(f"- PCA with {r['latent_dim']} components: recon MSE {over_seeds(r, 'pca_mse', '.4f')} "
                             f"(the AE: {over_seeds(r, 'val_mse', '.4f')}).")
            if "cond_acc" in r:
                lines.append(f"- {r['family']}: samples asked for digit d classified as d "
                             f"{over_seeds(r, 'cond_acc', '.1f', scale=100)}% of the time.")
    lines += ["", *claims_table(generative_decisions(result))]
    return "\n".join(lines) + "\n"
