"""Generated shapes (no download): grey shapes with their masks for the UNet's segmentation
task, and coloured shapes labelled by their kind, a labelled RGB set for the image families.

Grey shapes (`draw_shapes`, `load_shapes`): each image (1, S, S) in [0, 1] holds 1 to
`max_shapes` filled circles, axis-aligned rectangles and triangles on a background with a random
linear gradient, all under Gaussian pixel noise.
The shapes of an image are all `contrast` brighter than the background's mean, or all darker
(at random): a global threshold (Otsu, the baseline) can find them, but it fights the gradient
and the noise, while the shapes' outlines stay plain to see. The mask (1, S, S) is 1 inside any shape.

Items are (image, mask, shapes): the number of shapes drawn in the image is the third element,
which also tells the UNet family that a batch is for segmentation, not images with holes.
Train and val images are drawn from different seeds (`seed`, `seed + 1`), so no val image is a
training image; both are fixed, drawn once.

Coloured shapes (`colour_shapes`): each RGB image (3, S, S) holds one filled shape, its class
the shape's kind (SHAPE_LABELS), in a random colour, size, place and rotation on a two-colour
gradient, at any side 16..256.
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


# --- coloured shapes: a labelled RGB set -----------------------------------------------------

# The class of a coloured-shapes image is the kind of the one shape it shows: label i = SHAPE_LABELS[i].
SHAPE_LABELS = ("circle", "square", "triangle", "cross")


def _colours(value: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """(n, 3) RGB colours of random hue and saturation at the given HSV value (n,)."""
    n = len(value)
    hue = torch.rand(n, generator=gen)
    saturation = 0.3 + 0.7 * torch.rand(n, generator=gen)
    # A fully saturated colour of this hue: each channel's distance from the hue on the colour
    # wheel, as a triangle wave (R at 0, G at 1/3, B at 2/3).
    offsets = torch.tensor([0.0, 1.0 / 3.0, 2.0 / 3.0])
    pure = (2.0 - 6.0 * ((hue[:, None] - offsets + 0.5) % 1.0 - 0.5).abs()).clamp(0.0, 1.0)  # (n, 3)
    return value[:, None] * (1.0 - saturation[:, None] + saturation[:, None] * pure)


def _signed_distance(kind: str, u: torch.Tensor, v: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """Distance in pixels from the outline of a shape of bounding radius r (B, 1, 1), in its own
    rotated frame (u, v) (B, S, S): negative inside. Every kind reaches out to r at most, so a
    centre at least r from each edge keeps the shape wholly in the image."""
    if kind == "circle":
        return torch.sqrt(u * u + v * v) - r
    if kind == "square":  # corners on the circle of radius r
        return torch.maximum(u.abs(), v.abs()) - r / math.sqrt(2.0)
    if kind == "triangle":  # equilateral, corners on the circle of radius r: the edges lie r/2 from the centre
        edges = [u * math.cos(a) + v * math.sin(a) for a in (math.pi / 2, math.pi * 7 / 6, math.pi * 11 / 6)]
        return torch.stack(edges).amax(0) - r / 2
    if kind == "cross":  # two bars of half-width 0.3 r, their corners on the circle of radius r
        half_length, half_width = r * math.sqrt(1.0 - 0.09), 0.3 * r
        bar = lambda a, b: torch.maximum(a.abs() - half_length, b.abs() - half_width)  # noqa: E731
        return torch.minimum(bar(u, v), bar(v, u))
    raise ValueError(f"kind must be one of {SHAPE_LABELS}, got {kind!r}")


def colour_shapes(n: int, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n RGB images (n, 3, size, size) in [0, 1], each of one filled shape, and their labels (n,),
    the shape's kind (SHAPE_LABELS); the same seed always draws the same images.

    A shape has a random colour, bounding radius (a fifth to two fifths of the side), centre
    (wholly inside the image) and rotation; the background is a linear gradient between two
    colours at a random angle. Shape and background differ in brightness (one dark, one light,
    at random), so the outline stays plain at any hue. Edges are anti-aliased (a pixel's
    coverage is its centre's signed distance, clipped), so the kinds stay apart down to 16x16.
    The labels are balanced: each kind n // 4 or n // 4 + 1 times, in random order.
    """
    if not 16 <= size <= 256:
        raise ValueError(f"size must be 16..256, got {size}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    gen = torch.Generator().manual_seed(seed)
    kinds = len(SHAPE_LABELS)
    labels = (torch.arange(n) % kinds)[torch.randperm(n, generator=gen)]
    # Every random number is drawn here, for all n images at once, so the images do not depend
    # on how the drawing below is chunked.
    light_shape = torch.rand(n, generator=gen) < 0.5
    shape_value = torch.where(light_shape, 0.65 + 0.35 * torch.rand(n, generator=gen),
                              0.1 + 0.3 * torch.rand(n, generator=gen))
    background_value = torch.where(light_shape, 0.1 + 0.3 * torch.rand(n, generator=gen),
                                   0.65 + 0.35 * torch.rand(n, generator=gen))
    shape_colour = _colours(shape_value, gen)  # (n, 3)
    background_from = _colours(background_value, gen)
    background_to = _colours(background_value, gen)
    gradient_angle = 2 * math.pi * torch.rand(n, generator=gen)
    radius = size * (0.2 + 0.2 * torch.rand(n, generator=gen))  # pixels
    centre = radius[:, None] + (size - 2 * radius[:, None]) * torch.rand(n, 2, generator=gen)  # (n, 2): y, x
    rotation = 2 * math.pi * torch.rand(n, generator=gen)

    # Pixel centres, in pixels: (S, S) each.
    yy, xx = torch.meshgrid(torch.arange(size, dtype=torch.float32) + 0.5,
                            torch.arange(size, dtype=torch.float32) + 0.5, indexing="ij")
    images = torch.empty(n, 3, size, size)
    chunk = max(1, (1 << 20) // (size * size))  # images drawn at once: bounds the temporaries' memory
    for start in range(0, n, chunk):
        part = slice(start, min(n, start + chunk))
        # Background: from one colour to the other along the gradient's direction, 0..1 across.
        angle = gradient_angle[part].view(-1, 1, 1)
        along = ((yy - size / 2) * torch.sin(angle) + (xx - size / 2) * torch.cos(angle)) / (size * math.sqrt(2.0)) + 0.5
        a, b = background_from[part].view(-1, 3, 1, 1), background_to[part].view(-1, 3, 1, 1)
        background = a + (b - a) * along.unsqueeze(1)  # (B, 3, S, S)
        # The pixel grid in each shape's own frame: centred on it and turned back by its rotation.
        dy = yy - centre[part, 0].view(-1, 1, 1)
        dx = xx - centre[part, 1].view(-1, 1, 1)
        cos, sin = torch.cos(rotation[part]).view(-1, 1, 1), torch.sin(rotation[part]).view(-1, 1, 1)
        u, v = dx * cos + dy * sin, dy * cos - dx * sin  # (B, S, S)
        r = radius[part].view(-1, 1, 1)
        distance = torch.empty_like(u)
        for k, kind in enumerate(SHAPE_LABELS):
            mine = labels[part] == k
            if mine.any():
                distance[mine] = _signed_distance(kind, u[mine], v[mine], r[mine])
        coverage = (0.5 - distance).clamp(0.0, 1.0).unsqueeze(1)  # (B, 1, S, S): 1 inside, 0 outside
        images[part] = background + (shape_colour[part].view(-1, 3, 1, 1) - background) * coverage
    return images.clamp_(0.0, 1.0), labels
