"""Images with holes for the inpainting UNet: digits, patches of scikit-learn's sample photos, or
the user's own images; and, for its segmentation task, generated shapes with their masks
(genray.data.shapes).

The built-in inpainting sources ship in packages (no download) and come out the same way: images
(C, 28, 28) in [0, 1], grey (C = 1) or in colour (`channels: 3`: the photos in their own colours,
the digits grey in three channels). "photos" uses the two sample photos (`sklearn.datasets.load_sample_images`,
china and flower, 427x640): the left 80% of each photo trains, the right 20% validates, so no
validation pixel is ever in a training image. Training reads random 28x28 crops of the left
parts (`photo_crops` a epoch, each turned by a random multiple of 90 degrees and mirrored at
random: a photo has no preferred orientation at this scale); validation is the fixed grid of
patches every 14 pixels over the right parts (464 patches).

Any other source is files, whatever genray.data.DataConfig's source takes besides its built-in
sets: a folder or s3:// prefix of PNG/JPEG/WebP images, or of Parquet files, or one Parquet
file. genray.data.load_images reads them in this process as unlabelled images (C, S, S), S =
`image_size` or the first image's side, split by a seeded hash (`split_seed`) of each file's
name or Parquet row's bytes (`val_fraction` of them validate); what is wrong with them (a bad file, an empty folder, a missing
prefix) is genray.data's DataError, which names the file or the key.

Masks are (1, H, W) with 1 where the image is missing, in every channel (what the model must
fill, and what the loss and the metric count) and 0 where it is known. Training masks are drawn afresh each time an
image is read (from torch's global generator, which the training loop seeds per rank);
validation masks are drawn once from `mask_seed`, so every epoch and every baseline is scored on
the same holes, with the same mask sizes as training.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch.utils.data import ConcatDataset, Dataset

from genray.data.images import DataConfig, ImageSpec, conform, digits_28x28, load_images, split
from genray.data.shapes import ShapesConfig, load_shapes

PATCH = 28
BUILT_IN = ("digits", "photos", "both", "shapes")  # every other data.source is files


class InpaintDataConfig(BaseModel):
    """The unet family's `data`: images with holes (digits, photos, both), or generated shapes
    with their masks (source shapes, for model.task = segment; set by `shapes`)."""

    model_config = ConfigDict(extra="forbid")

    # digits, photos, both (the two), shapes (segmentation); or files: a folder or s3:// prefix
    # of images (class subfolders are read too, their labels unused) or of Parquet files, or one
    # Parquet file.
    source: str = "digits"
    # 1 grey, 3 RGB: the inpainting sources only (shapes are grey); files are converted to it.
    channels: Literal[1, 3] = 1
    # Files only (genray.data.DataConfig's keys of the same names): the side the images are
    # brought to, 16 to 256 and a multiple of 4 (None: the first image's); how ("crop", "pad",
    # "none"; None: crop when image_size is set); the Parquet column of encoded images; and what
    # a file that is no usable image does ("error" names it, "skip" leaves it out with a warning).
    image_size: int | None = Field(None, ge=16, le=256, multiple_of=4)
    resize: Literal["crop", "pad", "none"] | None = None
    image_column: str = "image"
    on_bad_file: Literal["error", "skip"] = "error"
    val_fraction: float = Field(0.2, gt=0.0, lt=1.0)  # of the digits and of files (photos split by columns)
    split_seed: int = Field(0, ge=0)
    photo_crops: int = Field(4096, ge=1, le=1_000_000)  # random training crops of the photos a epoch
    # rect: one axis-aligned rectangle; stroke: a thick random polyline (a scribble); mixed: either.
    masks: Literal["rect", "stroke", "mixed"] = "rect"
    min_size: float = Field(0.25, gt=0.0, le=1.0)  # rectangle side, as a fraction of the image side
    max_size: float = Field(0.5, gt=0.0, le=1.0)
    mask_seed: int = Field(0, ge=0)  # the validation masks
    limit: int | None = Field(None, ge=1)  # at most this many training images: smoke tests
    val_limit: int | None = Field(None, ge=1)
    shapes: ShapesConfig = Field(default_factory=ShapesConfig)

    @model_validator(mode="after")
    def _sizes(self) -> "InpaintDataConfig":
        if self.min_size > self.max_size:
            raise ValueError(f"min_size must be <= max_size = {self.max_size}, got {self.min_size}")
        if self.source == "shapes" and self.channels != 1:
            raise ValueError(f"source shapes makes grey images for segmentation: channels must be 1, "
                             f"got {self.channels} (colour is for the inpainting sources digits, photos, both)")
        if self.source in BUILT_IN:
            side = self.shapes.size if self.source == "shapes" else PATCH
            for key in ("image_size", "resize"):
                if getattr(self, key) is not None:
                    raise ValueError(f"{key} brings the images of a folder or Parquet source to one size; source "
                                     f"{self.source} makes its own {side}x{side} images: unset {key}")
        return self

    def files(self) -> DataConfig | None:
        """The genray.data config that reads this source's files as unlabelled images; None for
        the built-in sources."""
        if self.source in BUILT_IN:
            return None
        return DataConfig(source=self.source, image_size=self.image_size, channels=self.channels, labels=[],
                          resize=self.resize, image_column=self.image_column, on_bad_file=self.on_bad_file,
                          val_fraction=self.val_fraction, split_seed=self.split_seed, limit=self.limit)

    def spec(self) -> ImageSpec:
        """The images this config gives (unlabelled). The UNet takes any side, so the side here
        is informative: image_size, else 28, the built-in sources' (files unresized keep the
        first image's side, which only reading them tells)."""
        return ImageSpec(channels=self.channels, size=self.image_size or PATCH, labels=None)


def random_mask(h: int, w: int, kind: str, min_size: float, max_size: float,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """One (1, h, w) float mask, 1 = missing."""
    def uniform(lo: float, hi: float) -> float:
        return lo + (hi - lo) * float(torch.rand((), generator=generator))

    if kind == "mixed":
        kind = "rect" if float(torch.rand((), generator=generator)) < 0.5 else "stroke"
    mask = torch.zeros(1, h, w)
    if kind == "rect":
        rh = max(1, round(uniform(min_size, max_size) * h))
        rw = max(1, round(uniform(min_size, max_size) * w))
        top = int(torch.randint(0, h - rh + 1, (), generator=generator))
        left = int(torch.randint(0, w - rw + 1, (), generator=generator))
        mask[:, top : top + rh, left : left + rw] = 1.0
        return mask
    # A stroke: 3 segments of a random walk, each about a third of the image long, 3 pixels wide.
    radius = max(1, round(min(h, w) / 20))
    y, x = uniform(0, h - 1), uniform(0, w - 1)
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32),
                            indexing="ij")
    for _ in range(3):
        angle = uniform(0, 2 * math.pi)
        length = uniform(0.25, 0.45) * min(h, w)
        y2 = min(max(y + length * math.sin(angle), 0.0), h - 1.0)
        x2 = min(max(x + length * math.cos(angle), 0.0), w - 1.0)
        # Distance of every pixel to the segment (y, x)-(y2, x2).
        dy, dx = y2 - y, x2 - x
        t = (((yy - y) * dy + (xx - x) * dx) / max(dy * dy + dx * dx, 1e-9)).clamp(0, 1)
        dist = ((yy - y - t * dy) ** 2 + (xx - x - t * dx) ** 2).sqrt()
        mask[0][dist <= radius] = 1.0
        y, x = y2, x2
    return mask


class MaskedImages(Dataset):
    """(image (C, H, W), mask (1, H, W)) pairs; fixed masks when `masks` is given, else a fresh
    mask per read."""

    def __init__(self, images: torch.Tensor, cfg: InpaintDataConfig, masks: torch.Tensor | None = None):
        self.images, self.cfg, self.masks = images, cfg, masks

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.masks is not None:
            return self.images[i], self.masks[i]
        _, h, w = self.images[i].shape
        return self.images[i], random_mask(h, w, self.cfg.masks, self.cfg.min_size, self.cfg.max_size)


def fixed_masks(n: int, h: int, w: int, cfg: InpaintDataConfig) -> torch.Tensor:
    gen = torch.Generator().manual_seed(cfg.mask_seed)
    return torch.stack([random_mask(h, w, cfg.masks, cfg.min_size, cfg.max_size, gen) for _ in range(n)])


class PhotoCrops(Dataset):
    """`n` random (crop (C, 28, 28), mask) pairs of the photos' training parts, drawn afresh on
    every read: a random part (by area), place, quarter turn and mirror image, and a fresh mask."""

    def __init__(self, parts: list[torch.Tensor], n: int, cfg: InpaintDataConfig):
        self.parts, self.n, self.cfg = parts, n, cfg
        self.weights = torch.tensor([float(p.numel()) for p in parts])

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        part = self.parts[int(torch.multinomial(self.weights, 1))]
        top = int(torch.randint(0, part.shape[1] - PATCH + 1, ()))
        left = int(torch.randint(0, part.shape[2] - PATCH + 1, ()))
        crop = torch.rot90(part[:, top : top + PATCH, left : left + PATCH], int(torch.randint(0, 4, ())), dims=(1, 2))
        if float(torch.rand(())) < 0.5:
            crop = crop.flip(2)
        return crop.contiguous(), random_mask(PATCH, PATCH, self.cfg.masks, self.cfg.min_size, self.cfg.max_size)


@lru_cache(maxsize=2)  # grey and RGB: decoding the two JPEGs takes seconds; nothing here is ever modified
def photo_parts(val_stride: int = 14, channels: int = 1) -> tuple[list[torch.Tensor], torch.Tensor]:
    """The sample photos, grey (ITU-R 601 luma) or RGB (`channels` 3), split by columns: (the
    left 80% of each, (C, H, W) in [0, 1]; the val patches (N, C, 28, 28) every `val_stride`
    pixels over the right 20% of each)."""
    from sklearn.datasets import load_sample_images

    train, val = [], []
    for photo in load_sample_images().images:  # (427, 640, 3) uint8 each
        pixels = np.asarray(photo, dtype=np.float32)
        if channels == 1:
            pixels = (pixels @ np.array([0.299, 0.587, 0.114], dtype=np.float32))[..., None]
        image = torch.from_numpy(pixels).permute(2, 0, 1) / 255.0  # (C, H, W)
        cut = int(image.shape[2] * 0.8)
        train.append(image[:, :, :cut].contiguous())
        tiles = image[:, :, cut:].unfold(1, PATCH, val_stride).unfold(2, PATCH, val_stride)  # (C, rows, cols, 28, 28)
        val.append(tiles.permute(1, 2, 0, 3, 4).reshape(-1, channels, PATCH, PATCH))
    return train, torch.cat(val).contiguous()


def spread(images: torch.Tensor, limit: int | None) -> torch.Tensor:
    """At most `limit` images, evenly spread over the set (so a cut keeps its variety)."""
    if limit is None or limit >= len(images):
        return images
    return images[torch.linspace(0, len(images) - 1, limit).long()]


def load_inpaint(cfg: InpaintDataConfig) -> tuple[Dataset, Dataset]:
    """(train, val): images with fresh masks for training and fixed ones for validation; or, for
    source shapes, the generated shape images with their masks (genray.data.shapes)."""
    if cfg.source == "shapes":
        return load_shapes(cfg.shapes, cfg.limit, cfg.val_limit)
    files = cfg.files()
    if files is not None:
        train, val = load_images(files)  # (N, C, S, S) images and their (unused) labels
        train_set, val_images = MaskedImages(train.tensors[0], cfg), val.tensors[0]
    else:
        train_set, val_images = built_in_images(cfg)
    val_images = spread(val_images, cfg.val_limit)
    _, h, w = val_images.shape[1:]
    return train_set, MaskedImages(val_images, cfg, fixed_masks(len(val_images), h, w, cfg))


def built_in_images(cfg: InpaintDataConfig) -> tuple[Dataset, torch.Tensor]:
    """(the training images with fresh masks, the validation images (N, C, 28, 28)) of the
    digits, the photos, or both."""
    train_parts: list[Dataset] = []
    val_images = []
    digits = photos = None
    if cfg.source in ("digits", "both"):
        images, labels = digits_28x28()
        train, val = (conform(part, cfg.spec()) for part in split(images, labels, cfg.val_fraction, cfg.split_seed))
        digits = train.tensors[0]
        val_images.append(val.tensors[0])
    if cfg.source in ("photos", "both"):
        photos, val = photo_parts(channels=cfg.channels)
        val_images.append(val)
    crops = cfg.photo_crops if photos is not None else 0
    if cfg.limit is not None:  # a smoke test: the digits and the crops cut in proportion
        n_digits = 0 if digits is None else len(digits)
        crops = min(crops, max(1, round(cfg.limit * crops / (crops + n_digits)))) if crops else 0
        digits = spread(digits, cfg.limit - crops) if digits is not None else None
    if digits is not None and len(digits):
        train_parts.append(MaskedImages(digits, cfg))
    if crops:
        train_parts.append(PhotoCrops(photos, crops, cfg))
    train_set = train_parts[0] if len(train_parts) == 1 else ConcatDataset(train_parts)
    return train_set, torch.cat(val_images)
