"""Sample quality measured with a classifier that genray trains on the labelled images themselves.

No Inception network can be downloaded here, and on small labelled sets (28x28 digits, 64x64
coloured shapes) a small classifier trained on the same images is the better judge anyway (as in
many GAN papers on MNIST). With K the number of classes:
- classifier-IS: exp(E_x KL(p(y|x) || p(y))); K is the maximum (confident and balanced).
- classifier-FID: the Fréchet distance between Gaussians fitted to the classifier's penultimate
  features of the samples and of the real training images.
- coverage: the share of samples given to each class; `classes_covered` counts the classes
  that get at least a fifth of their fair share 1/K (2% of samples for 10 classes, 5% for 4).

One classifier judges each image set: what defines the images (source, side, channels, class
names, the train/val split) keys it. It is trained once (seeded, in-process) on the set's train
split and cached in the model store at <store>/_metrics/<key>, the digits' at
<store>/_metrics/digits-classifier; held-out real images (the val split) give the ceiling. Which
of the set's images a run trains on (data.classes, per_class_limit, limit) and its augmentation
do not change the judge: every run on one set is measured by the same classifier against the
same reference, so their numbers compare. Unlabelled images have no classes to judge by: their
runs report reconstruction, ELBO or loss instead.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
from functools import lru_cache
from pathlib import Path, PurePosixPath

import numpy as np
import torch
from torch.utils.data import DataLoader

from genray import checkpoint
from genray.checkpoint import CheckpointError
from genray.data import DataConfig, ImageSpec, load_images, resolve
from genray.data.files import find_source
from genray.data.augment import AugmentConfig

CLASSIFIER_EPOCHS = 8
# Larger sets train the classifier for fewer epochs, down to one: it sees at most this many images.
CLASSIFIER_IMAGES = 100_000
COVERED_SHARE = 0.2  # of the uniform share 1/K
# The training images of a user's files (a folder, Parquet, a bucket) the judge learns from, at most.
JUDGE_FILE_IMAGES = 8000
# Input values per pass of the classifier: bounds its activations' memory on large images and
# sets, while a set of digits (or a few hundred samples of them) still goes through in one pass.
PASS_VALUES = 1 << 22


def store_root() -> Path:
    """The model store: $GENRAY_STORE, else ./models."""
    return Path(os.environ.get("GENRAY_STORE", "models")).expanduser().resolve()


def judge_data(data: DataConfig | None = None) -> DataConfig:
    """The data the classifier that judges samples of `data` is trained on: its whole image set,
    with the shape and classes filled in from the source (None: the digits)."""
    return _judge_of((data or DataConfig()).model_dump_json())


@lru_cache(maxsize=16)
def _judge_of(data_json: str) -> DataConfig:
    # Cached by the config's JSON (a DataConfig is not hashable): resolving may look at the
    # source (a folder's class subfolders), which a call per epoch should not repeat.
    data = resolve(DataConfig.model_validate_json(data_json))
    # A user's files may be any number: the judge learns from a bounded share of them.
    limit = JUDGE_FILE_IMAGES if find_source(data) is not None else None
    return data.model_copy(update={"classes": None, "per_class_limit": None, "limit": limit,
                                   "augment": AugmentConfig()})


def classifier_name(data: DataConfig | None = None) -> str:
    """The store key of the classifier that judges `data`: readable at a glance (source, shape)
    and unique through a digest of everything its training images depend on."""
    judge = judge_data(data)
    if judge == judge_data(None):
        return "digits-classifier"
    digest = hashlib.sha256(judge.model_dump_json().encode()).hexdigest()[:16]
    source = re.sub(r"[^A-Za-z0-9_.-]+", "-", PurePosixPath(judge.source.rstrip("/")).name).strip("-.") or "data"
    return f"{source}-{judge.channels}x{judge.image_size}x{judge.image_size}-classifier-{digest}"


def classifier_path(data: DataConfig | None = None) -> Path:
    return store_root() / "_metrics" / classifier_name(data)


def labelled_spec(judge: DataConfig) -> ImageSpec:
    """The images a judge is trained on; an error for a set without at least two classes."""
    spec = judge.spec()
    if spec.num_classes < 2:
        held = "no labels" if spec.num_classes == 0 else f"one class ({spec.labels[0]!r})"
        raise ValueError(
            f"sample quality needs labelled images of at least 2 classes, but data.source={judge.source!r} "
            f"has {held}: rank its runs by a val_* metric, or give the images labels (class subfolders, "
            f"data.label_column or data.labels)")
    return spec


def train_classifier(data: DataConfig | None = None, seed: int = 0):
    """Train the metrics classifier on the train split of `data`'s image set (None: the digits),
    in-process: (family, run config, {"val_acc": ...}, epochs trained)."""
    from genray.config import build_config
    from genray.families import get_family

    judge = judge_data(data)
    spec = labelled_spec(judge)
    cfg = build_config("classifier", base={"data": judge.model_dump(mode="json")})
    torch.manual_seed(seed)
    train, val = load_images(cfg.data)
    epochs = max(1, min(CLASSIFIER_EPOCHS, CLASSIFIER_IMAGES // len(train)))
    family = get_family("classifier")(cfg.model, spec=spec)
    loader = DataLoader(train, batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(seed))
    with torch.enable_grad():  # callers may be inside no_grad (sample_quality is)
        for epoch in range(epochs):
            family.train()
            for batch in loader:
                family.train_step(batch, epoch)
    family.eval()
    correct = sum(family.eval_batch(b)["val_acc"] for b in DataLoader(val, batch_size=256))
    return family, cfg, {"val_acc": correct / len(val)}, epochs


@lru_cache(maxsize=4)
def _load_cached(path: str):
    family, _ = checkpoint.load_family(path)
    return family


def get_classifier(data: DataConfig | None = None):
    """The cached metrics classifier of `data`'s image set (None: the digits); trained and
    stored on first use."""
    path = classifier_path(data)
    if not (path / checkpoint.MANIFEST).is_file():
        family, cfg, metrics, epochs = train_classifier(data)
        try:
            checkpoint.save(path, family="classifier", config=cfg.to_dict(), state=family.state_dict(),
                            epoch=epochs - 1, metrics=metrics)
        except CheckpointError:
            pass  # another process stored it first; use that one
    return _load_cached(str(path))


def features_and_proba(classifier, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The classifier's features (N, F) and class probabilities (N, K) of images (N, C, S, S),
    in passes of at most PASS_VALUES input values."""
    step = max(1, PASS_VALUES // math.prod(images.shape[1:]))
    parts = [classifier.features_and_proba(images[i:i + step]) for i in range(0, len(images), step)]
    if len(parts) == 1:
        return parts[0]
    return torch.cat([f for f, _ in parts]), torch.cat([p for _, p in parts])


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


def coverage(predicted: torch.Tensor, k: int) -> tuple[float, float]:
    """(classes_covered, max_class_share) of predicted labels (N,) among k classes: the classes
    given at least COVERED_SHARE of their fair share 1/k, and the largest class's share."""
    share = torch.bincount(predicted, minlength=k).double() / len(predicted)
    return float((share >= COVERED_SHARE / k).sum().item()), share.max().item()


def reference_stats(data: DataConfig | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Feature statistics of the real training images of `data`'s set (None: the digits): what
    samples are compared with."""
    return _reference_stats(judge_data(data).model_dump_json())


@lru_cache(maxsize=4)
def _reference_stats(judge_json: str) -> tuple[np.ndarray, np.ndarray]:
    judge = DataConfig.model_validate_json(judge_json)
    train, _ = load_images(judge)
    features, _ = features_and_proba(get_classifier(judge), train.tensors[0])
    return gaussian(features)


@torch.no_grad()
def sample_quality(images: torch.Tensor, wanted: torch.Tensor | None = None,
                   data: DataConfig | None = None) -> dict[str, float]:
    """Quality of images (N, C, S, S) in [0, 1] of the shape `data` holds (None: the digits,
    (N, 1, 28, 28)), judged by the classifier of its image set; `wanted` labels (N,) add a
    conditional accuracy."""
    judge = judge_data(data)
    spec = labelled_spec(judge)
    if images.dim() != 4 or tuple(images.shape[1:]) != spec.shape:
        shape = "(N, {}, {}, {})".format(*spec.shape)
        raise ValueError(f"images must have shape {shape} (the images of data.source={judge.source!r}), "
                         f"got {tuple(images.shape)}")
    if len(images) < 20:
        raise ValueError(f"need at least 20 images for stable statistics, got {len(images)}")
    k = spec.num_classes
    if wanted is not None and (wanted.shape != (len(images),) or wanted.min() < 0 or wanted.max() >= k):
        raise ValueError(f"wanted must hold one label in 0..{k - 1} per image ({len(images)}), "
                         f"got shape {tuple(wanted.shape)} with values {wanted.min().item()}..{wanted.max().item()}")
    classifier = get_classifier(judge)
    images = images.float().clamp(0, 1)
    # One pass of the classifier gives both: it is nearly all of this call's time.
    features, probs = features_and_proba(classifier, images)
    probs = probs.double().cpu()  # (N, K)
    marginal = probs.mean(0)
    kl = (probs * (probs.clamp_min(1e-12).log() - marginal.clamp_min(1e-12).log())).sum(1)
    covered, max_share = coverage(probs.argmax(1), k)
    out = {
        "is": math.exp(kl.mean().item()),
        "fid": frechet_distance(*gaussian(features), *reference_stats(judge)),
        "classes_covered": covered,
        "max_class_share": max_share,
    }
    if wanted is not None:
        out["cond_acc"] = (probs.argmax(1) == wanted.cpu()).double().mean().item()
    return out


def real_ceiling(data: DataConfig | None = None) -> dict[str, float]:
    """The metrics of real held-out images of `data`'s set (its val split; None: the digits):
    the best a model can hope for."""
    judge = judge_data(data)
    labelled_spec(judge)
    _, val = load_images(judge)
    x, y = val.tensors
    return sample_quality(x, y, judge)


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
