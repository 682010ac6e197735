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
import statistics
import time
from pathlib import Path
from typing import Any

import torch

GENERATIVE = ["vae", "ae", "cvae", "gan", "vaegan", "aae"]
SAMPLES = 1000
GENERATIVE_KEYS = ("machine", "budget", "rows", "ceiling", "claims")

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
    from genray.train import fit

    if not ray.is_initialized():
        ray.init(address="local")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    previous_file = out_dir / "quality.json"
    previous = json.loads(previous_file.read_text()) if previous_file.is_file() else {}
    generative = [f for f in families if f != "classifier"]
    result: dict[str, Any] = {}
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
        model = export(summary.run_dir, out_dir / "models" / name, replace=True)
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
