"""Image datasets: their config, and the in-memory sets (scikit-learn's digits, which ship in
the package, and MNIST IDX files). The user's own files (image folders, Parquet) are read by
genray.data.files, and streamed to the training workers by genray.data.pipeline.

In-memory sets come out as float32 images (N, C, S, S) in [0, 1] and int64 labels (N,), split
deterministically into train and val. What a set holds is its `ImageSpec` (channels, side,
class names): the image families build their networks for it, and a checkpoint records it in
its run config (data.image_size, data.channels, data.labels).
"""

from __future__ import annotations

import gzip
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch.utils.data import TensorDataset

from genray.data.augment import AugmentConfig
from genray.data.shapes import SHAPE_LABELS, colour_shapes
from genray.storage import Location

IMAGE_SIZE = 28
DIGITS = tuple(str(d) for d in range(10))
# data.source shapes: the built-in RGB set, coloured shapes labelled by kind (genray.data.shapes),
# drawn from seed 0. 8000 images: the metrics classifier needs ~6400 for training to tell the
# kinds apart reliably at 64x64.
SHAPES_IMAGES = 8000


class DataError(ValueError):
    """A dataset is missing, malformed or asked for with bad arguments."""


@dataclass(frozen=True)
class ImageSpec:
    """What an image set holds: what an image family builds its networks for."""

    channels: int = 1  # 1 grey, 3 RGB
    size: int = IMAGE_SIZE  # images are size x size
    labels: tuple[str, ...] | None = DIGITS  # the class names, label i = labels[i]; None: unlabelled

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.channels, self.size, self.size)

    @property
    def num_classes(self) -> int:
        return len(self.labels) if self.labels else 0


SHAPES = ImageSpec(channels=3, size=64, labels=SHAPE_LABELS)  # the built-in set's own images


class DataConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # "digits" or "shapes" (built in: 1x28x28 digits, 3x64x64 coloured shapes of 4 kinds);
    # or a folder / s3:// prefix of MNIST IDX files, of images (PNG, JPEG,
    # WebP; class subfolders give the labels, no subfolders: unlabelled) or of Parquet files; or
    # one Parquet file. Files other than the built-ins and MNIST stream through Ray Data.
    source: str = "digits"
    # The side the images are brought to, 16 to 256 and a multiple of 4 (each down-sampling
    # stage of the networks halves it); None: the source's own (28 for digits and MNIST, 64 for shapes, the
    # first image's side for files).
    image_size: int | None = Field(None, ge=16, le=256, multiple_of=4)
    # 1 (grey) or 3 (RGB); None: the source's own (grey for digits and MNIST, RGB for shapes; for files, RGB
    # when the first image is in colour). Other images are converted (RGBA, palette, grey).
    channels: Literal[1, 3] | None = None
    # The class names, label i being labels[i]; [] for unlabelled images; None: the source's
    # own (the digits' "0".."9", a folder's subfolder names or a label column's values, sorted).
    # Setting it fixes their order.
    labels: list[str] | None = None
    # How a file's image is brought to image_size: "crop" scales its short side to image_size
    # and keeps the centre, "pad" scales its long side and letterboxes it in black, "none" asks
    # every image to be image_size x image_size already. None: crop when image_size is given,
    # else none (every image must have the first one's size). The built-in sets are rescaled.
    resize: Literal["crop", "pad", "none"] | None = None
    # Parquet: the column of encoded images (PNG/JPEG/WebP bytes) and the optional column of
    # labels (integers: the class index; strings: the class name).
    image_column: str = "image"
    label_column: str | None = None
    # A file (or Parquet row) that is not a usable image: "error" stops the run with its name;
    # "skip" leaves it out and counts it (the data_skipped metric of each epoch).
    on_bad_file: Literal["error", "skip"] = "error"
    # Streaming: batches each worker decodes ahead of its training step, and the rows of its
    # shuffle buffer (mixed anew each epoch; 0: the files' shuffled order only).
    prefetch_batches: int = Field(2, ge=0, le=64)
    shuffle_buffer: int = Field(512, ge=0, le=1_000_000)
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

    @field_validator("labels")
    @classmethod
    def _distinct_labels(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and len(set(value)) != len(value):
            raise ValueError(f"labels must be distinct class names, got {value}")
        return value

    def spec(self) -> ImageSpec:
        """The ImageSpec of this config's images; unset fields take the built-in set's values
        (data.source shapes), else the digits'."""
        own = SHAPES if self.source == "shapes" else ImageSpec()
        labels = own.labels if self.labels is None else (tuple(self.labels) or None)
        return ImageSpec(channels=self.channels or own.channels, size=self.image_size or own.size, labels=labels)


def resolve(cfg: DataConfig) -> DataConfig:
    """The config with image_size, channels and labels (and for files resize) filled in from
    its source, so that a run's stored config (and its checkpoints) say what images the
    networks were built for. A config that names all three is returned as it is: a training
    worker never lists the source again (nor needs the driver's access to it)."""
    if cfg.image_size is not None and cfg.channels is not None and cfg.labels is not None:
        return cfg
    # genray.data.files builds on this module's DataConfig: imported here, not at the top.
    from genray.data import files

    source = files.find_source(cfg)
    if source is not None:
        return files.resolve_source(source, cfg)
    spec = cfg.spec()
    return cfg.model_copy(update={"image_size": spec.size, "channels": spec.channels,
                                  "labels": list(spec.labels or [])})


def load_images(cfg: DataConfig) -> tuple[TensorDataset, TensorDataset]:
    """Load the configured images and split them into (train, val) TensorDatasets; files are
    read in this process (genray.data.pipeline streams big sets to the workers instead)."""
    from genray.data import files

    source = files.find_source(cfg)
    if source is not None:
        return files.read_source(source, files.resolve_source(source, cfg))
    if cfg.source == "digits":
        images, labels = digits_28x28()
        train, val = split(images, labels, cfg.val_fraction, cfg.split_seed)
    elif cfg.source == "shapes":
        # Drawn at the asked side rather than resized: edges stay sharp at every size.
        images, labels = colour_shapes(SHAPES_IMAGES, cfg.spec().size, seed=0)
        train, val = split(images, labels, cfg.val_fraction, cfg.split_seed)
    else:
        train, val = mnist_folder(cfg.source, cfg.val_fraction, cfg.split_seed)
    if cfg.classes is not None:
        train, val = only_classes(train, cfg.classes), only_classes(val, cfg.classes)
    if cfg.per_class_limit is not None:
        train = first_per_class(train, cfg.per_class_limit)
    if cfg.limit is not None:
        train = TensorDataset(*(t[: cfg.limit] for t in train.tensors))
    spec = cfg.spec()
    return conform(train, spec), conform(val, spec)


def conform(data: TensorDataset, spec: ImageSpec) -> TensorDataset:
    """Images brought to spec's side (bilinear, antialiased) and channels (grey repeated to RGB,
    RGB to grey by ITU-R 601 luma, as PIL's convert("L") does)."""
    images, *rest = data.tensors
    if images.shape[-1] != spec.size or images.shape[-2] != spec.size:
        images = F.interpolate(images, size=(spec.size, spec.size), mode="bilinear", antialias=True,
                               align_corners=False).clamp_(0.0, 1.0)
    if images.shape[1] != spec.channels:
        if spec.channels == 3:
            images = images.expand(-1, 3, -1, -1)
        else:
            images = (images * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
    return TensorDataset(images.contiguous(), *rest)


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
    table = np.loadtxt(_sklearn_digits_file(), delimiter=",", dtype=np.float32)  # 64 pixels (0-16), then the digit
    x = torch.from_numpy(table[:, :64] / 16.0).reshape(-1, 1, 8, 8)
    x = F.interpolate(x, size=(20, 20), mode="bilinear", align_corners=False)
    x = F.pad(x, (4, 4, 4, 4)).clamp_(0.0, 1.0)  # (N, 1, 28, 28)
    y = torch.from_numpy(table[:, 64].astype(np.int64))
    return x.contiguous(), y


def _sklearn_digits_file() -> Path:
    """The digits' data file as scikit-learn ships it (what sklearn.datasets.load_digits reads),
    found without importing scikit-learn: that import costs ~3 s in every Train worker, Tune trial
    and Ray Data task that loads the digits."""
    import importlib.util

    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("the built-in digits ship inside scikit-learn, which is not installed")
    path = Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "digits.csv.gz"
    if not path.is_file():
        raise DataError(f"scikit-learn's digits file is not where it ships it: {path}")
    return path


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


def write_mnist(folder: str | Path, images: torch.Tensor, labels: torch.Tensor, part: str = "train") -> Path:
    """Write images (N, 1, 28, 28) in [0, 1] and labels (N,) as MNIST's IDX files in `folder`,
    as read_mnist reads them (pixels rounded to bytes)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    pixels = (images.squeeze(1).clamp(0, 1) * 255).round().to(torch.uint8).numpy()  # (N, 28, 28)
    image_stem, label_stem = MNIST_FILES[part]
    for stem, array in ((image_stem, pixels), (label_stem, labels.to(torch.uint8).numpy())):
        header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
        (folder / stem).write_bytes(header + array.tobytes())
    return folder


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
