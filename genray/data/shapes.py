"""Generated shapes with their masks, for the UNet's segmentation task (no download).

Each image (1, S, S) in [0, 1] holds 1 to `max_shapes` filled circles, axis-aligned rectangles
and triangles on a background with a random linear gradient, all under Gaussian pixel noise.
The shapes of an image are all `contrast` brighter than the background's mean, or all darker
(at random): a global threshold (Otsu, the baseline) can find them, but it fights the gradient
and the noise, while the shapes' outlines stay plain to see. The mask (1, S, S) is 1 inside any shape.

Items are (image, mask, shapes): the number of shapes drawn in the image is the third element,
which also tells the UNet family that a batch is for segmentation, not images with holes.
Train and val images are drawn from different seeds (`seed`, `seed + 1`), so no val image is a
training image; both are fixed, drawn once.
"""

from __future__ import annotations

import math

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch.utils.data import Dataset

KINDS = ("circle", "rect", "triangle")


class ShapesConfig(BaseModel):
    """`data.shapes` of the unet family (used when data.source = shapes)."""

    model_config = ConfigDict(extra="forbid")

    size: int = Field(32, ge=8, le=256)  # image side
    train_images: int = Field(2048, ge=1, le=1_000_000)
    val_images: int = Field(512, ge=1, le=1_000_000)
    max_shapes: int = Field(3, ge=1, le=10)
    min_radius: float = Field(0.1, gt=0.0, le=0.5)  # a shape's half-extent, as a fraction of the side
    max_radius: float = Field(0.25, gt=0.0, le=0.5)
    contrast: float = Field(0.3, gt=0.0, le=0.5)  # |shape level - background mean|, before noise
    gradient: float = Field(0.3, ge=0.0, le=1.0)  # background level change across the image, at most
    noise: float = Field(0.1, ge=0.0, le=0.5)  # std of the pixel noise
    seed: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _radii(self) -> "ShapesConfig":
        if self.min_radius > self.max_radius:
            raise ValueError(f"min_radius must be <= max_radius = {self.max_radius}, got {self.min_radius}")
        return self


def shape_mask(kind: str, yy: torch.Tensor, xx: torch.Tensor, cy: float, cx: float, r: float,
               gen: torch.Generator) -> torch.Tensor:
    """A bool (S, S) mask of one shape of half-extent r (pixels) centred at (cy, cx)."""
    if kind == "circle":
        return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
    if kind == "rect":  # the two sides differ: each between half and all of 2r
        hy, hx = (r * (0.5 + 0.5 * torch.rand(2, generator=gen))).tolist()
        return ((yy - cy).abs() <= hy) & ((xx - cx).abs() <= hx)
    # A triangle: three corners on the circle of radius r, at angles a third of a turn apart
    # give or take a little, so it is never a sliver.
    start = 2 * math.pi * float(torch.rand((), generator=gen))
    angles = [start + k * 2 * math.pi / 3 + 0.4 * (float(torch.rand((), generator=gen)) - 0.5) for k in range(3)]
    corners = [(cy + r * math.sin(a), cx + r * math.cos(a)) for a in angles]
    # Inside = the same side of all three edges (counter-clockwise corners: all cross products >= 0).
    sides = [(xx - x0) * (y1 - y0) - (yy - y0) * (x1 - x0)
             for (y0, x0), (y1, x1) in zip(corners, corners[1:] + corners[:1])]
    return torch.stack([s <= 0 for s in sides]).all(0) | torch.stack([s >= 0 for s in sides]).all(0)


def draw_shapes(n: int, cfg: ShapesConfig, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """n images (n, 1, S, S), their masks (n, 1, S, S) and shape counts (n,), from `seed`."""
    gen = torch.Generator().manual_seed(seed)
    s = cfg.size
    yy, xx = torch.meshgrid(torch.arange(s, dtype=torch.float32), torch.arange(s, dtype=torch.float32),
                            indexing="ij")
    images, masks, counts = torch.empty(n, 1, s, s), torch.zeros(n, 1, s, s), torch.empty(n, dtype=torch.long)
    for i in range(n):
        # Background: mean level in [0.3, 0.7] plus a linear ramp of at most `gradient` across.
        level = 0.3 + 0.4 * float(torch.rand((), generator=gen))
        angle = 2 * math.pi * float(torch.rand((), generator=gen))
        slope = cfg.gradient * float(torch.rand((), generator=gen))
        ramp = ((yy - s / 2) * math.sin(angle) + (xx - s / 2) * math.cos(angle)) / s
        image = level + slope * ramp
        count = int(torch.randint(1, cfg.max_shapes + 1, (), generator=gen))
        sign = 1.0 if float(torch.rand((), generator=gen)) < 0.5 else -1.0  # shapes brighter or darker
        for _ in range(count):
            kind = KINDS[int(torch.randint(0, len(KINDS), (), generator=gen))]
            r = s * (cfg.min_radius + (cfg.max_radius - cfg.min_radius) * float(torch.rand((), generator=gen)))
            cy, cx = (r + (s - 2 * r) * torch.rand(2, generator=gen)).tolist()  # wholly inside the image
            inside = shape_mask(kind, yy, xx, cy, cx, r, gen)
            image = torch.where(inside, level + sign * cfg.contrast, image)
            masks[i, 0][inside] = 1.0
        images[i, 0] = image + cfg.noise * torch.randn(s, s, generator=gen)
        counts[i] = count
    return images.clamp(0.0, 1.0), masks, counts


class ShapeImages(Dataset):
    """(image (1, S, S), mask (1, S, S), number of shapes) triples, fixed."""

    def __init__(self, images: torch.Tensor, masks: torch.Tensor, counts: torch.Tensor):
        self.images, self.masks, self.counts = images, masks, counts

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.images[i], self.masks[i], self.counts[i]


def load_shapes(cfg: ShapesConfig, limit: int | None = None, val_limit: int | None = None
                ) -> tuple[ShapeImages, ShapeImages]:
    """(train, val) shape images with masks; `limit` / `val_limit` cap their counts (smoke tests)."""
    n_train = cfg.train_images if limit is None else min(limit, cfg.train_images)
    n_val = cfg.val_images if val_limit is None else min(val_limit, cfg.val_images)
    return (ShapeImages(*draw_shapes(n_train, cfg, cfg.seed)),
            ShapeImages(*draw_shapes(n_val, cfg, cfg.seed + 1)))
