"""Images with holes for the inpainting UNet: digits and patches of scikit-learn's sample photos.

Both sources ship in packages (no download) and come out the same way: grey images
(N, 1, 28, 28) in [0, 1]. "photos" cuts 28x28 patches from the two sample photos
(`sklearn.datasets.load_sample_images`, china and flower, 427x640): the left 80% of each photo
trains (patches every 14 pixels), the right 20% validates (every 28), so no validation pixel is
in a training patch.

Masks are (1, H, W) with 1 where the image is missing (what the model must fill, and what the
loss and the metric count) and 0 where it is known. Training masks are drawn afresh each time an
image is read (from torch's global generator, which the training loop seeds per rank);
validation masks are drawn once from `mask_seed`, so every epoch and every baseline is scored on
the same holes.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch.utils.data import Dataset

from genray.data.images import digits_28x28, split

PATCH = 28


class InpaintDataConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    source: Literal["digits", "photos", "both"] = "digits"
    val_fraction: float = Field(0.2, gt=0.0, lt=1.0)  # of the digits (photos split by columns)
    split_seed: int = Field(0, ge=0)
    # rect: one axis-aligned rectangle; stroke: a thick random polyline (a scribble); mixed: either.
    masks: Literal["rect", "stroke", "mixed"] = "rect"
    min_size: float = Field(0.25, gt=0.0, le=1.0)  # rectangle side, as a fraction of the image side
    max_size: float = Field(0.5, gt=0.0, le=1.0)
    mask_seed: int = Field(0, ge=0)  # the validation masks
    limit: int | None = Field(None, ge=1)  # at most this many training images: smoke tests
    val_limit: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _sizes(self) -> "InpaintDataConfig":
        if self.min_size > self.max_size:
            raise ValueError(f"min_size must be <= max_size = {self.max_size}, got {self.min_size}")
        return self


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
    """(image (1, H, W), mask (1, H, W)) pairs; fixed masks when `masks` is given, else a fresh
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


@lru_cache(maxsize=1)  # decoding the two JPEGs takes seconds; the patches are never modified
def photo_patches(stride_train: int = 14, stride_val: int = 28) -> tuple[torch.Tensor, torch.Tensor]:
    """Grey 28x28 patches of scikit-learn's two sample photos: (train, val), each (N, 1, 28, 28)."""
    from sklearn.datasets import load_sample_images

    train, val = [], []
    for photo in load_sample_images().images:  # (427, 640, 3) uint8 each
        grey = torch.from_numpy(np.asarray(photo, dtype=np.float32) @ np.array([0.299, 0.587, 0.114],
                                                                                 dtype=np.float32)) / 255.0
        cut = int(grey.shape[1] * 0.8)
        for part, stride, out in ((grey[:, :cut], stride_train, train), (grey[:, cut:], stride_val, val)):
            tiles = part.unfold(0, PATCH, stride).unfold(1, PATCH, stride)  # (rows, cols, 28, 28)
            out.append(tiles.reshape(-1, 1, PATCH, PATCH))
    return torch.cat(train).contiguous(), torch.cat(val).contiguous()


def load_inpaint(cfg: InpaintDataConfig) -> tuple[MaskedImages, MaskedImages]:
    """(train, val) images with masks: fresh masks for training, fixed ones for validation."""
    train_parts, val_parts = [], []
    if cfg.source in ("digits", "both"):
        images, labels = digits_28x28()
        train, val = split(images, labels, cfg.val_fraction, cfg.split_seed)
        train_parts.append(train.tensors[0])
        val_parts.append(val.tensors[0])
    if cfg.source in ("photos", "both"):
        train, val = photo_patches()
        train_parts.append(train)
        val_parts.append(val)
    train_images, val_images = torch.cat(train_parts), torch.cat(val_parts)
    if cfg.limit is not None:
        # Evenly spread, so a limited "both" still has digits and photos.
        train_images = train_images[torch.linspace(0, len(train_images) - 1, min(cfg.limit, len(train_images))).long()]
    if cfg.val_limit is not None:
        val_images = val_images[torch.linspace(0, len(val_images) - 1, min(cfg.val_limit, len(val_images))).long()]
    _, h, w = val_images.shape[1:]
    return (MaskedImages(train_images, cfg),
            MaskedImages(val_images, cfg, fixed_masks(len(val_images), h, w, cfg)))
