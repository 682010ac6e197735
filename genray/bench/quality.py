"""`genray bench quality`: every generative family, one fixed budget, one table; and the
digits classifier with and without augmentation, and fine-tuned against trained from scratch.

Each family trains through the real path (Ray Train, 1 worker, default config, the same
epochs and batch size) and its best checkpoint is measured: classifier-IS, classifier-FID and
class coverage of 1000 samples (genray.metrics), val ELBO where defined, reconstruction MSE
where defined. The claims of the course material are checked against the table.

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
from typing import Any

import torch

GENERATIVE = ["vae", "ae", "cvae", "gan", "vaegan", "aae"]
SAMPLES = 1000
GENERATIVE_KEYS = ("machine", "budget", "rows", "ceiling", "claims")
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
# accuracy at the last epoch (no checkpoint picked on val), mean over `seeds` train.seed values.
CLASSIFIER_BUDGET = {
    "full_epochs": 8, "full_batch": 32,  # all 1438 training digits
    "source_classes": [0, 1, 2, 3, 4], "source_epochs": 5,  # the checkpoint fine-tuning starts from
    "target_classes": [5, 6, 7, 8, 9], "per_class": 5, "small_epochs": 10, "small_batch": 8,
    "unfreeze_after_epochs": 5, "unfreeze_blocks": 1, "lr_after_unfreeze": 5e-4,
    "seeds": 3,
}


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


def run(families: list[str], epochs: int, out_dir: Path, storage: Path) -> dict[str, Any]:
    import ray

    from genray.bench import machine
    from genray.config import build_config
    from genray.metrics import real_ceiling
    from genray.store import export
    from genray.train import fit, start_local_ray

    if not ray.is_initialized():
        start_local_ray()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    previous_file = out_dir / "quality.json"
    previous = json.loads(previous_file.read_text()) if previous_file.is_file() else {}
    generative = [f for f in families if f != "classifier" and f not in SCIENTIFIC_BUDGET]
    scientific = [r for r in SCIENTIFIC_BUDGET if family_of(r) in families]
    result: dict[str, Any] = {}
    if scientific or "scientific" in previous:  # rows of the families not run now are kept
        result["scientific"] = scientific_rows(scientific, out_dir, storage, stamp, previous.get("scientific"))
    if "classifier" in families:
        result["classifier"] = classifier_rows(storage, stamp)
    elif "classifier" in previous:
        result["classifier"] = previous["classifier"]
    if not generative:  # keep the generative table of the last full run
        result.update({k: previous[k] for k in GENERATIVE_KEYS if k in previous})
        return result
    rows = []
    for name in generative:
        cfg = build_config(name, overrides=[
            f"name=bench-{name}-{stamp}", f"storage={storage}", "train.workers=1",
            f"train.epochs={epochs}", "train.batch_size=32", "train.quality_every=5",
        ])
        summary = fit(cfg, verbose=False)
        model = export(summary.run, out_dir / "models" / name, replace=True)
        row = measure(name, model)
        row["train_s"] = summary.wall_s
        rows.append(row)
        print(f"{name}: " + ", ".join(f"{k} {v:.4g}" for k, v in row.items() if isinstance(v, float)), flush=True)
    ceiling = {"family": "real digits (val)", **real_ceiling()}
    result.update({"machine": machine(), "budget": {"epochs": epochs, "batch_size": 32, "workers": 1},
                   "rows": rows, "ceiling": ceiling})
    result["claims"] = check_claims(rows)
    return result


def classifier_rows(storage: Path, stamp: str) -> dict[str, Any]:
    """Digits accuracy with and without augmentation (all training digits), and digits 5-9 from
    a few labelled images a class: fine-tuned from a checkpoint trained on 0-4, or from scratch."""
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
    source = train("source", 0, [classes(b["source_classes"]), f"train.epochs={b['source_epochs']}"])
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
    rows = []
    for tag, data, how, overrides in arms:
        accs, seconds = [], []
        for seed in range(b["seeds"]):
            summary = train(tag, seed, overrides)
            accs.append(summary.metrics["val_acc"])
            seconds.append(summary.wall_s)
        row = {"arm": tag, "data": data, "how": how, "val_acc": statistics.mean(accs),
               "val_acc_sd": statistics.stdev(accs) if len(accs) > 1 else 0.0, "val_accs": accs,
               "train_images": 1438 if tag.startswith("full") else n_small,
               "epochs": b["full_epochs"] if tag.startswith("full") else b["small_epochs"],
               "train_s": statistics.mean(seconds)}
        rows.append(row)
        print(f"classifier {tag}: val_acc {row['val_acc']:.3f} ± {row['val_acc_sd']:.3f}", flush=True)
    source_row = {"val_acc": source.metrics["val_acc"], "train_s": source.wall_s}
    return {"machine": machine(), "budget": b, "source": source_row, "rows": rows,
            "claims": classifier_claims(rows)}


def classifier_claims(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    by = {r["arm"]: r for r in rows}

    def pct(arm: str) -> str:
        return f"{100 * by[arm]['val_acc']:.1f}%"

    best_ft = max(("ft-frozen", "ft-unfreeze"), key=lambda a: by[a]["val_acc"])
    return [
        {"claim": "fine-tuning from a checkpoint of digits 0-4 beats training from scratch on 5-9 "
                  "at the same small budget",
         "holds": by[best_ft]["val_acc"] > by["small"]["val_acc"],
         "figures": f"{pct('ft-frozen')} frozen, {pct('ft-unfreeze')} unfrozen later, vs {pct('small')} scratch"},
        {"claim": "unfreezing the last conv block (lower lr) improves on the frozen base",
         "holds": by["ft-unfreeze"]["val_acc"] > by["ft-frozen"]["val_acc"],
         "figures": f"{pct('ft-unfreeze')} vs {pct('ft-frozen')}"},
        {"claim": "augmentation raises val accuracy at the same budget (all digits)",
         "holds": by["full-aug"]["val_acc"] > by["full"]["val_acc"],
         "figures": f"{pct('full-aug')} vs {pct('full')}"},
        {"claim": "augmentation raises val accuracy at the same budget (5 images a class)",
         "holds": by["small-aug"]["val_acc"] > by["small"]["val_acc"],
         "figures": f"{pct('small-aug')} vs {pct('small')}"},
    ]


def scientific_rows(rows_to_run: list[str], out_dir: Path, storage: Path, stamp: str,
                    previous: dict[str, Any] | None) -> dict[str, Any]:
    """charlm and unet through Ray Train with their own budgets, each against its baselines;
    the rows not run now come from the previous quality.json."""
    from genray.bench import machine
    from genray.config import build_config
    from genray.store import export
    from genray.train import fit

    rows = {r.get("row", r["family"]): r for r in (previous or {}).get("rows", [])}
    for key in rows_to_run:
        name = family_of(key)
        cfg = build_config(name, overrides=[
            f"name=bench-{key}-{stamp}", f"storage={storage}", "train.workers=1", "train.quality_every=0",
            *SCIENTIFIC_BUDGET[key]])
        load_before = os.getloadavg()[0]  # the machine is shared: train_s depends on it
        summary = fit(cfg, verbose=False)
        load = [load_before, os.getloadavg()[0]]
        model = export(summary.run, out_dir / "models" / key, replace=True)
        row = {"charlm": measure_charlm, "unet": measure_unet}[name](model, summary.history)
        row.update(row=key, train_s=summary.wall_s, load_1min=load, budget=SCIENTIFIC_BUDGET[key], machine=machine())
        rows[key] = row
        print(f"{key}: " + ", ".join(f"{k} {v:.4g}" for k, v in row.items() if isinstance(v, float)), flush=True)
    ordered = [rows[k] for k in SCIENTIFIC_BUDGET if k in rows]
    return {"rows": ordered, "claims": scientific_claims(ordered)}


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


def scientific_claims(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    claims = []
    for r in rows:
        if r["family"] == "charlm":
            claims.append({"claim": "the char-LSTM needs under 60% of the bits per character of the text's unigram entropy",
                           "holds": r["val_bits_per_char"] < 0.6 * r["unigram_entropy"],
                           "figures": f"{r['val_bits_per_char']:.3f} vs {r['unigram_entropy']:.3f} bits/char"})
            claims.append({"claim": "the char-LSTM's val bits per character fall with training",
                           "holds": r["val_bits_per_char"] < r["by_epoch"][0],
                           "figures": " → ".join(f"{v:.3f}" for v in r["by_epoch"])})
        elif r.get("task") == "segment":
            claims.append({"claim": "the UNet segments generated shapes better than Otsu's threshold (val IoU)",
                           "holds": r["val_iou"] > r["val_otsu_iou"],
                           "figures": f"{r['val_iou']:.3f} vs {r['val_otsu_iou']:.3f}"})
        elif r["family"] == "unet":
            what = {"digits": "val digits", "photos": "held-out photo patches"}.get(r.get("source", "digits"),
                                                                                     "val images")
            claims.append({"claim": f"the UNet fills holes in {what} better than mean fill and blur (masked MSE)",
                           "holds": r["val_masked_mse"] < min(r["val_mean_fill_mse"], r["val_blur_fill_mse"]),
                           "figures": f"{r['val_masked_mse']:.5f} vs {r['val_mean_fill_mse']:.5f} mean, "
                                      f"{r['val_blur_fill_mse']:.5f} blur"})
            if "paired_vs_blur" in r:
                p = r["paired_vs_blur"]
                claims.append({"claim": f"the UNet fills most {what} better than blur, image by image",
                               "holds": p["unet_better_share"] > 0.5,
                               "figures": f"{100 * p['unet_better_share']:.0f}% of {p['images']}; median difference "
                                          f"{p['median_diff']:+.6f}"})
    return claims


def scientific_table(section: dict[str, Any]) -> str:
    from genray.bench import machine_line

    lines = [
        "Scored against baselines (`genray bench quality --families charlm,unet`): Ray Train, 1 worker, default "
        "model, the budget in each row; the value of the best checkpoint (ranked by the val loss on the same val "
        "set; \"by epoch\" ends at the last epoch's value). Every method is scored on the same val images and holes.",
        "",
        "| family | data | metric | model | by epoch | baselines | train s |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in section["rows"]:
        steps = r["by_epoch"]
        trend = f"{steps[0]:.4g} → {steps[-1]:.4g} ({len(steps)} epochs)"  # first and last epoch
        if r["family"] == "charlm":
            lines.append(f"| charlm | {r['data']} | val bits/char ↓ | {r['val_bits_per_char']:.3f} | {trend} | "
                         f"unigram entropy {r['unigram_entropy']:.3f}; held-out unigram {r['unigram_heldout']:.3f} | "
                         f"{r['train_s']:.0f} |")
        elif r.get("task") == "segment":
            lines.append(f"| unet, segment | {r['data']} | val IoU ↑ | {r['val_iou']:.3f} | "
                         f"{steps[0]:.3f} → {steps[-1]:.3f} ({len(steps)} epochs) | "
                         f"Otsu threshold (σ = 1 smoothing) {r['val_otsu_iou']:.3f} | {r['train_s']:.0f} |")
        elif r["family"] == "unet":
            lines.append(f"| unet, inpaint | {r['data']} | val masked MSE ↓ | {r['val_masked_mse']:.5f} | {trend} | "
                         f"mean fill {r['val_mean_fill_mse']:.5f}; blur fill {r['val_blur_fill_mse']:.5f} | "
                         f"{r['train_s']:.0f} |")
            if "photos" in r:
                p = r["photos"]
                lines.append(f"| unet, inpaint, trained on digits | photo patches (never seen) | val masked MSE ↓ | "
                             f"{p['val_masked_mse']:.5f} | — | mean fill {p['val_mean_fill_mse']:.5f}; "
                             f"blur fill {p['val_blur_fill_mse']:.5f} | — |")
    lines.append("")
    for r in section["rows"]:
        load = f" Load average (1 min) {r['load_1min'][0]:.1f} before, {r['load_1min'][1]:.1f} after training." \
            if "load_1min" in r else ""
        lines.append(f"- {r.get('row', r['family'])}: budget `{' '.join(r['budget'])}`. {machine_line(r['machine'])}{load}")
        if r["family"] == "unet" and "model" in r:
            m = r["model"]
            how = (f"the hole enters pre-filled by {m['prefill']} fill" + (
                   ", and the UNet adds a residual to the blur inside it (its last layer starts at zero)"
                   if m["prefill"] == "blur" else "") if m["task"] == "inpaint"
                   else "loss BCE + soft Dice, threshold 0.5")
            lines.append(f"- {r['row']}: {m['channels']} channels, depth {m['depth']}, norm {m['norm']}; {how}.")
        if "paired_vs_blur" in r:
            p = r["paired_vs_blur"]
            lines.append(f"- {r['row']}, image by image against blur fill on the same {p['images']} val holes: "
                         f"mean difference {p['mean_diff']:+.5f} (95% bootstrap interval {p['ci95'][0]:+.5f} to "
                         f"{p['ci95'][1]:+.5f}); the UNet fills {100 * p['unet_better_share']:.0f}% of the images better; "
                         f"median difference {p['median_diff']:+.6f}.")
        if "sample" in r:
            lines.append(f"- charlm sample (prompt \"The \", T = 0.8, seed 0): `{r['sample'][:160]!r}`")
    if section["claims"]:
        lines += ["", "| claim | holds | figures |", "|---|---|---|"]
        lines += [f"| {c['claim']} | {'yes' if c['holds'] else '**no**'} | {c['figures']} |" for c in section["claims"]]
    return "\n".join(lines) + "\n"


def check_claims(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The course material's claims, as measured. Claims whose families were not run are skipped."""
    by = {r["family"]: r for r in rows}
    claims = []

    def claim(text: str, holds: bool, figures: str) -> None:
        claims.append({"claim": text, "holds": bool(holds), "figures": figures})

    if "vae" in by:
        for other in ("gan", "vaegan"):
            if other in by:
                claim(f"{other} samples are sharper than the VAE's (lower classifier-FID)",
                      by[other]["fid"] < by["vae"]["fid"], f"{by[other]['fid']:.1f} vs {by['vae']['fid']:.1f}")
    if "cvae" in by:
        claim("CVAE samples asked for digit d are classified as d >= 90% of the time",
              by["cvae"]["cond_acc"] >= 0.9, f"{100 * by['cvae']['cond_acc']:.1f}%")
    if "ae" in by:
        claim(f"AE reconstruction MSE <= PCA's at the same code size ({by['ae']['latent_dim']})",
              by["ae"]["val_mse"] <= by["ae"]["pca_mse"], f"{by['ae']['val_mse']:.4f} vs {by['ae']['pca_mse']:.4f}")
    covered = {r["family"]: r["classes_covered"] for r in rows if "classes_covered" in r}
    if covered:
        claim("no family's samples collapse onto fewer than 8 of the 10 classes",
              min(covered.values()) >= 8, ", ".join(f"{k} {v:.0f}" for k, v in covered.items()))
    return claims


def _fmt(value: Any, digits: int) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def markdown_table(result: dict[str, Any]) -> str:
    parts = []
    if "rows" in result:
        parts.append(generative_table(result))
    if "classifier" in result:
        parts.append(classifier_table(result["classifier"]))
    if "scientific" in result:
        parts.append(scientific_table(result["scientific"]))
    return "\n".join(parts)


def classifier_table(section: dict[str, Any]) -> str:
    from genray.bench import machine_line

    b = section["budget"]
    lines = [
        f"Digits classifier (`genray bench quality --families classifier`), 1 Ray Train worker, default model; "
        f"val accuracy at the last epoch, mean ± sd over {b['seeds']} seeds. Fine-tuning starts from a checkpoint "
        f"trained {b['source_epochs']} epochs on digits 0-4 (val accuracy {100 * section['source']['val_acc']:.1f}% "
        f"on 0-4); the 5-9 arms see {b['per_class']} labelled images a class for {b['small_epochs']} epochs "
        f"(batch {b['small_batch']}) and are scored on all 5-9 val digits. Augmentation: the course's Keras "
        f"settings (rotation 10°, shifts 0.15, shear 0.15°, zoom 0.1, nearest fill). "
        f"{machine_line(section['machine'])}",
        "",
        "| classifier | train data | epochs | val accuracy ↑ | train s |",
        "|---|---|---|---|---|",
    ]
    for r in section["rows"]:
        lines.append(f"| {r['how']} | {r['data']} ({r['train_images']} images) | {r['epochs']} | "
                     f"{100 * r['val_acc']:.1f}% ± {100 * r['val_acc_sd']:.1f} | {r['train_s']:.0f} |")
    lines += ["", "| claim | holds | figures |", "|---|---|---|"]
    lines += [f"| {c['claim']} | {'yes' if c['holds'] else '**no**'} | {c['figures']} |" for c in section["claims"]]
    return "\n".join(lines) + "\n"


def generative_table(result: dict[str, Any]) -> str:
    from genray.bench import machine_line

    b = result["budget"]
    lines = [
        f"Budget: {b['epochs']} epochs, batch {b['batch_size']}, {b['workers']} Ray Train worker, default configs, "
        f"digits (1438 train / 359 val); {SAMPLES} samples per family. {machine_line(result['machine'])}",
        "",
        "| family | classifier-IS ↑ | classifier-FID ↓ | classes covered | val −ELBO (nats) ↓ | recon MSE ↓ | train s |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"] + [result["ceiling"]]:
        lines.append(
            f"| {r['family']} | {_fmt(r.get('is'), 2)} | {_fmt(r.get('fid'), 1)} | "
            f"{_fmt(r.get('classes_covered'), 0)} | {_fmt(r.get('val_neg_elbo'), 1)} | "
            f"{_fmt(r.get('val_mse'), 4)} | {_fmt(r.get('train_s'), 0)} |"
        )
    extra = [r for r in result["rows"] if "pca_mse" in r or "cond_acc" in r]
    if extra:
        lines.append("")
        for r in extra:
            if "pca_mse" in r:
                lines.append(f"- PCA with {r['latent_dim']} components: recon MSE {r['pca_mse']:.4f} (the AE: {r['val_mse']:.4f}).")
            if "cond_acc" in r:
                lines.append(f"- {r['family']}: samples asked for digit d classified as d {100 * r['cond_acc']:.1f}% of the time.")
    if result.get("claims"):
        lines += ["", "| claim | holds | figures |", "|---|---|---|"]
        lines += [f"| {c['claim']} | {'yes' if c['holds'] else '**no**'} | {c['figures']} |" for c in result["claims"]]
    return "\n".join(lines) + "\n"
