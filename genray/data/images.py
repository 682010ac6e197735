"""Image datasets: scikit-learn's digits (ships in the package) and MNIST IDX files.

Both come out the same way: float32 images of shape (N, 1, 28, 28) in [0, 1] and int64
labels of shape (N,), split deterministically into train and val.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch.utils.data import TensorDataset

from genray.data.augment import AugmentConfig
from genray.storage import Location

IMAGE_SIZE = 28


class DataError(ValueError):
    """A dataset is missing, malformed or asked for with bad arguments."""


class DataConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # "digits" (built in) or a folder / s3:// prefix holding MNIST IDX files.
    source: str = "digits"
    val_fraction: float = Field(0.2, gt=0.0, lt=1.0)
    split_seed: int = Field(0, ge=0)
    # Keep only these digits, in train and val (labels keep their values): e.g. [5, 6, 7, 8, 9].
    classes: list[int] | None = None
    # At most this many training images of each class (the first ones of the shuffled split):
    # a small labelled budget. Validation is never cut.
    per_class_limit: int | None = Field(None, ge=1)
    # Use at most this many training images: smoke tests and quick demos.
    limit: int | None = Field(None, ge=1)
    # Random affine transforms of the training batches (genray.data.augment), applied per batch
    # on the batch's device by the training loop; never to validation. Off by default.
    augment: AugmentConfig = Field(default_factory=AugmentConfig)

    @field_validator("classes")
    @classmethod
    def _digit_classes(cls, value: list[int] | None) -> list[int] | None:
        if value is None:
            return None
        if not value or len(set(value)) != len(value) or not all(0 <= c <= 9 for c in value):
            raise ValueError(f"classes must be distinct digits 0..9, at least one, got {value}")
        return sorted(value)


def load_images(cfg: DataConfig) -> tuple[TensorDataset, TensorDataset]:
    """Load the configured images and split them into (train, val) TensorDatasets."""
    if cfg.source == "digits":
        images, labels = digits_28x28()
        train, val = split(images, labels, cfg.val_fraction, cfg.split_seed)
    else:
        train, val = mnist_folder(cfg.source, cfg.val_fraction, cfg.split_seed)
    if cfg.classes is not None:
        train, val = only_classes(train, cfg.classes), only_classes(val, cfg.classes)
    if cfg.per_class_limit is not None:
        train = first_per_class(train, cfg.per_class_limit)
    if cfg.limit is not None:
        train = TensorDataset(*(t[: cfg.limit] for t in train.tensors))
    return train, val


def only_classes(data: TensorDataset, classes: list[int]) -> TensorDataset:
    images, labels = data.tensors
    keep = torch.isin(labels, torch.tensor(classes))
    if not keep.any():
        raise DataError(f"no images of classes {classes} in a set of {len(labels)}")
    return TensorDataset(images[keep], labels[keep])


def first_per_class(data: TensorDataset, k: int) -> TensorDataset:
    """The first k images of each label, in the set's order (it is shuffled already)."""
    images, labels = data.tensors
    rank = torch.zeros_like(labels)  # how many of the same label come before each image
    for c in labels.unique():
        mask = labels == c
        rank[mask] = torch.arange(int(mask.sum()))
    keep = rank < k
    return TensorDataset(images[keep], labels[keep])


def digits_28x28() -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's 1797 8x8 digits, resized to MNIST's layout.

    MNIST centres each digit in a 20x20 box inside a 28x28 frame; we do the same so that
    models built for MNIST train on these unchanged.
    """
    from sklearn.datasets import load_digits  # the data file ships inside scikit-learn

    bunch = load_digits()
    x = torch.from_numpy(bunch.images.astype(np.float32) / 16.0).unsqueeze(1)  # (N, 1, 8, 8)
    x = F.interpolate(x, size=(20, 20), mode="bilinear", align_corners=False)
    x = F.pad(x, (4, 4, 4, 4)).clamp_(0.0, 1.0)  # (N, 1, 28, 28)
    y = torch.from_numpy(bunch.target.astype(np.int64))
    return x.contiguous(), y


def split(
    images: torch.Tensor, labels: torch.Tensor, val_fraction: float, seed: int
) -> tuple[TensorDataset, TensorDataset]:
    """A deterministic shuffled split: the same seed always gives the same val set."""
    n = len(images)
    n_val = max(1, int(round(n * val_fraction)))
    if n_val >= n:
        raise DataError(f"val_fraction={val_fraction} leaves no training images out of {n}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    val_idx, train_idx = perm[:n_val], perm[n_val:]
    return (
        TensorDataset(images[train_idx], labels[train_idx]),
        TensorDataset(images[val_idx], labels[val_idx]),
    )


# --- MNIST IDX -------------------------------------------------------------------------

# IDX type codes (http://yann.lecun.com/exdb/mnist/ describes the format).
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}

MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def read_idx(path: Path) -> np.ndarray:
    """Read one IDX file (raw or .gz) into an array, checking its header against its size."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"IDX file not found: {path}")
    raw = path.read_bytes()
    if path.suffix == ".gz":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as err:
            raise DataError(f"{path}: not a valid gzip file ({err})") from None
    if len(raw) < 4:
        raise DataError(f"{path}: too short for an IDX header ({len(raw)} bytes)")
    zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype_code not in _IDX_DTYPES or ndim == 0:
        raise DataError(f"{path}: not an IDX file (magic bytes {raw[:4].hex()})")
    header_len = 4 + 4 * ndim
    if len(raw) < header_len:
        raise DataError(f"{path}: truncated IDX header")
    shape = struct.unpack(f">{ndim}I", raw[4:header_len])
    dtype = np.dtype(_IDX_DTYPES[dtype_code])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - header_len != expected:
        raise DataError(
            f"{path}: header says shape {shape} ({expected} bytes of data) "
            f"but the file holds {len(raw) - header_len}"
        )
    return np.frombuffer(raw, dtype=dtype, offset=header_len).reshape(shape)


def _find(folder: Path, stem: str) -> Path:
    for candidate in (folder / stem, folder / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    raise DataError(f"MNIST file {stem}[.gz] not found in {folder}")


def read_mnist(folder: str | Path, part: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N, 1, 28, 28) in [0, 1] and labels (N,) from MNIST IDX files in a folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"MNIST folder not found: {folder}")
    image_stem, label_stem = MNIST_FILES[part]
    images = read_idx(_find(folder, image_stem))
    labels = read_idx(_find(folder, label_stem))
    if images.ndim != 3 or images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
        raise DataError(f"{folder}: images must have shape (N, 28, 28), got {images.shape}")
    if labels.ndim != 1 or len(labels) != len(images):
        raise DataError(f"{folder}: {len(images)} images but labels of shape {labels.shape}")
    if labels.min() < 0 or labels.max() > 9:
        raise DataError(f"{folder}: labels must be digits 0..9, found {labels.min()}..{labels.max()}")
    x = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)
    y = torch.from_numpy(labels.astype(np.int64))
    return x, y


def mnist_folder(source: str, val_fraction: float, seed: int) -> tuple[TensorDataset, TensorDataset]:
    """MNIST from a folder or s3:// prefix: the train files split into train/val."""
    folder = Location(source).fetch([name for pair in MNIST_FILES.values() for name in pair])
    x, y = read_mnist(folder, "train")
    return split(x, y, val_fraction, seed)
