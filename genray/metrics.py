"""Sample quality measured with a digits classifier that genray trains itself.

No Inception network can be downloaded here, and on 28x28 digits a small classifier is the
better judge anyway (as in many GAN papers on MNIST):
- classifier-IS: exp(E_x KL(p(y|x) || p(y))); 10 is the maximum (confident and balanced).
- classifier-FID: the Fréchet distance between Gaussians fitted to the classifier's penultimate
  features of the samples and of the real training digits.
- coverage: the share of samples given to each class; `classes_covered` counts the classes
  that get at least a fifth of their fair share (2% of samples for 10 classes).
The classifier is trained once (seeded, a few seconds on a CPU) and cached in the model store
at <store>/_metrics/digits-classifier; held-out real digits give the ceiling.
"""

from __future__ import annotations

import math
import os
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from genray import checkpoint
from genray.checkpoint import CheckpointError

CLASSIFIER_EPOCHS = 8
COVERED_SHARE = 0.2  # of the uniform share 1/10


def store_root() -> Path:
    """The model store: $GENRAY_STORE, else ./models."""
    return Path(os.environ.get("GENRAY_STORE", "models")).expanduser().resolve()


def classifier_path() -> Path:
    return store_root() / "_metrics" / "digits-classifier"


def train_classifier(epochs: int = CLASSIFIER_EPOCHS, seed: int = 0):
    """Train the metrics classifier on the digits train split, in-process."""
    from genray.config import build_config
    from genray.families import get_family

    cfg = build_config("classifier")
    torch.manual_seed(seed)
    from genray.data import load_images

    train, val = load_images(cfg.data)
    family = get_family("classifier")(cfg.model)
    loader = DataLoader(train, batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(seed))
    with torch.enable_grad():  # callers may be inside no_grad (sample_quality is)
        for epoch in range(epochs):
            family.train()
            for batch in loader:
                family.train_step(batch, epoch)
    family.eval()
    correct = sum(family.eval_batch(b)["val_acc"] for b in DataLoader(val, batch_size=256))
    return family, cfg, {"val_acc": correct / len(val)}


@lru_cache(maxsize=4)
def _load_cached(path: str):
    family, _ = checkpoint.load_family(path)
    return family


def get_classifier():
    """The cached metrics classifier; trained and stored on first use."""
    path = classifier_path()
    if not (path / checkpoint.MANIFEST).is_file():
        family, cfg, metrics = train_classifier()
        try:
            checkpoint.save(path, family="classifier", config=cfg.to_dict(), state=family.state_dict(),
                            epoch=CLASSIFIER_EPOCHS - 1, metrics=metrics)
        except CheckpointError:
            pass  # another process stored it first; use that one
    return _load_cached(str(path))


def _sqrt_psd(c: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((c + c.T) / 2)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray, cov2: np.ndarray) -> float:
    """||mu1 - mu2||^2 + Tr(C1 + C2 - 2 (C1 C2)^(1/2)), in float64.

    Tr((C1 C2)^(1/2)) = Tr((C1^(1/2) C2 C1^(1/2))^(1/2)): the eigenvalues of a symmetric PSD
    matrix, which stays exact where scipy's general sqrtm warns about singular products.
    """
    s1 = _sqrt_psd(cov1)
    middle = s1 @ cov2 @ s1
    tr_covmean = np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0.0, None)).sum()
    return float(((mu1 - mu2) ** 2).sum() + np.trace(cov1) + np.trace(cov2) - 2.0 * tr_covmean)


def gaussian(features: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    f = features.double().cpu().numpy()
    return f.mean(0), np.cov(f, rowvar=False)


@lru_cache(maxsize=1)
def reference_stats() -> tuple[np.ndarray, np.ndarray]:
    """Feature statistics of the real training digits: what samples are compared with."""
    from genray.data import DataConfig, load_images

    train, _ = load_images(DataConfig())
    return gaussian(get_classifier().features(train.tensors[0]))


@torch.no_grad()
def sample_quality(images: torch.Tensor, wanted: torch.Tensor | None = None) -> dict[str, float]:
    """Quality of (N, 1, 28, 28) images in [0, 1]; `wanted` labels (N,) add a conditional accuracy."""
    if images.dim() != 4 or images.shape[1:] != (1, 28, 28):
        raise ValueError(f"images must have shape (N, 1, 28, 28), got {tuple(images.shape)}")
    if len(images) < 20:
        raise ValueError(f"need at least 20 images for stable statistics, got {len(images)}")
    classifier = get_classifier()
    images = images.float().clamp(0, 1)
    # One pass of the classifier for both (two took 0.49 s of a 0.50 s call for 500 images, 1 thread).
    features, probs = classifier.features_and_proba(images)
    probs = probs.double().cpu()  # (N, 10)
    marginal = probs.mean(0)
    kl = (probs * (probs.clamp_min(1e-12).log() - marginal.clamp_min(1e-12).log())).sum(1)
    share = torch.bincount(probs.argmax(1), minlength=10).double() / len(images)
    out = {
        "is": math.exp(kl.mean().item()),
        "fid": frechet_distance(*gaussian(features), *reference_stats()),
        "classes_covered": float((share >= COVERED_SHARE / 10).sum().item()),
        "max_class_share": share.max().item(),
    }
    if wanted is not None:
        out["cond_acc"] = (probs.argmax(1) == wanted.cpu()).double().mean().item()
    return out


def real_ceiling() -> dict[str, float]:
    """The metrics of real held-out digits (the val split): the best a model can hope for."""
    from genray.data import DataConfig, load_images

    _, val = load_images(DataConfig())
    x, y = val.tensors
    return sample_quality(x, y)


def global_throughput(samples: int, seconds: float) -> tuple[int, float]:
    """(samples trained by all ranks, the slowest rank's seconds): training throughput with data
    loading included, as the bench's plain PyTorch and torchrun loops measure it too."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return samples, seconds
    total = torch.tensor([float(samples)], dtype=torch.float64)
    slowest = torch.tensor([seconds], dtype=torch.float64)
    dist.all_reduce(total)
    dist.all_reduce(slowest, op=dist.ReduceOp.MAX)
    return int(total.item()), float(slowest.item())
