"""`genray bench quality`: every generative family, one fixed budget, one table.

Each family trains through the real path (Ray Train, 1 worker, default config, the same
epochs and batch size) and its best checkpoint is measured: classifier-IS, classifier-FID and
class coverage of 1000 samples (genray.metrics), val ELBO where defined, reconstruction MSE
where defined. The claims of the course material are checked against the table.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

GENERATIVE = ["vae", "ae", "cvae", "gan", "vaegan", "aae"]
SAMPLES = 1000


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
    rows = []
    for name in families:
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
    result = {"machine": machine(), "budget": {"epochs": epochs, "batch_size": 32, "workers": 1},
              "rows": rows, "ceiling": ceiling}
    result["claims"] = check_claims(rows)
    return result


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
