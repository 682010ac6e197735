"""Random affine augmentation of image batches, with the knobs (and meanings) of Keras'
ImageDataGenerator: the course's example is

    dict(rotation_range=10, width_shift_range=0.15, height_shift_range=0.15,
         shear_range=0.15, zoom_range=0.1, horizontal_flip=False, fill_mode='nearest')

and `AugmentConfig(enabled=True)` is exactly that. A whole batch is transformed at once on the
batch's own device (one affine grid per image, torch's affine_grid + grid_sample, bilinear as
Keras' default interpolation order 1), so it costs one extra kernel on a GPU. The random draws
come from a CPU torch.Generator: the same seed gives the same transforms on any device.

Units, as in Keras (keras.preprocessing.image.apply_affine_transform):
- rotation_range: degrees; the angle is uniform in [-r, r].
- width_shift_range, height_shift_range: a fraction of the image width/height when < 1,
  otherwise pixels; the shift is uniform in [-s, s].
- shear_range: degrees (not radians: Keras' 0.15 is a shear angle of 0.15 degrees, tiny);
  uniform in [-s, s].
- zoom_range: z or [lower, upper]; z means [1 - z, 1 + z]. The row and column factors are drawn
  independently; a factor < 1 enlarges the content (it samples a smaller part of the input).
- horizontal_flip: mirror left-right with probability 1/2.
- fill_mode: how points outside the input are filled: "nearest" (the edge pixel), "constant"
  (cval), "reflect" (d c b a | a b c d | d c b a) or "wrap" (a b c d | a b c d | a b c d).
The transform is Keras' composition, mapping an output pixel to the input point it reads:
rotation @ shift @ shear @ zoom about the image centre, then the flip.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, field_validator


class AugmentConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = False  # off by default: generative families learn the data as it is
    rotation_range: float = Field(10.0, ge=0.0, le=180.0)  # degrees
    width_shift_range: float = Field(0.15, ge=0.0)  # fraction of the width (< 1) or pixels (>= 1)
    height_shift_range: float = Field(0.15, ge=0.0)  # fraction of the height (< 1) or pixels (>= 1)
    shear_range: float = Field(0.15, ge=0.0, lt=90.0)  # degrees
    zoom_range: float | tuple[float, float] = 0.1  # z -> [1 - z, 1 + z]
    horizontal_flip: bool = False
    fill_mode: Literal["nearest", "constant", "reflect", "wrap"] = "nearest"
    cval: float = 0.0  # the fill value of fill_mode="constant"

    @field_validator("zoom_range")
    @classmethod
    def _zoom_bounds(cls, value):
        low, high = (1.0 - value, 1.0 + value) if isinstance(value, (int, float)) else value
        if not 0.0 < low <= high:
            raise ValueError(f"zoom_range must give 0 < lower <= upper, got [{low}, {high}]")
        return value

    def zoom_bounds(self) -> tuple[float, float]:
        z = self.zoom_range
        return (1.0 - z, 1.0 + z) if isinstance(z, (int, float)) else (float(z[0]), float(z[1]))

    def is_identity(self) -> bool:
        """True when every knob is off: augmenting returns the images unchanged."""
        return (self.rotation_range == 0 and self.width_shift_range == 0 and self.height_shift_range == 0
                and self.shear_range == 0 and self.zoom_bounds() == (1.0, 1.0) and not self.horizontal_flip)


def generator(seed: int, rank: int, epoch: int) -> torch.Generator:
    """The CPU generator of one rank's epoch: distinct streams for distinct (seed, rank, epoch),
    the same stream again for a repeated epoch (a resumed or restarted run)."""
    state = np.random.SeedSequence([seed, rank, epoch]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def random_matrices(n: int, height: int, width: int, cfg: AugmentConfig, gen: torch.Generator) -> torch.Tensor:
    """(n, 3, 3) float64 on the CPU: for each image, the map from an output pixel to the input
    point it reads, in (row, col) pixel coordinates about the image centre."""
    u = torch.rand(n, 7, generator=gen, dtype=torch.float64)  # one draw per knob, always all seven

    def sym(col: int, half: float) -> torch.Tensor:  # uniform in [-half, half]
        return (2 * u[:, col] - 1) * half

    theta = torch.deg2rad(sym(0, cfg.rotation_range))
    tx = sym(1, cfg.height_shift_range * (height if cfg.height_shift_range < 1 else 1))  # rows
    ty = sym(2, cfg.width_shift_range * (width if cfg.width_shift_range < 1 else 1))  # columns
    shear = torch.deg2rad(sym(3, cfg.shear_range))
    low, high = cfg.zoom_bounds()
    zx, zy = low + (high - low) * u[:, 4], low + (high - low) * u[:, 5]
    flip = (u[:, 6] < 0.5) & cfg.horizontal_flip

    def mats(rows: list[list]) -> torch.Tensor:  # entries: (n,) tensors or numbers -> (n, 3, 3)
        return torch.stack([torch.stack([torch.as_tensor(v, dtype=torch.float64).expand(n) for v in r], -1)
                            for r in rows], -2)

    zero, one = 0.0, 1.0
    rotation = mats([[theta.cos(), -theta.sin(), zero], [theta.sin(), theta.cos(), zero], [zero, zero, one]])
    shift = mats([[one, zero, tx], [zero, one, ty], [zero, zero, one]])
    shearing = mats([[one, -shear.sin(), zero], [zero, shear.cos(), zero], [zero, zero, one]])
    zoom = mats([[zx, zero, zero], [zero, zy, zero], [zero, zero, one]])
    mirror = mats([[one, zero, zero], [zero, torch.where(flip, -1.0, 1.0), zero], [zero, zero, one]])
    return rotation @ shift @ shearing @ zoom @ mirror


def to_affine_grid_theta(matrices: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(n, 3, 3) (row, col) pixel maps -> (n, 2, 3) thetas for F.affine_grid(align_corners=False),
    whose coordinates are (x = col, y = row) scaled to [-1, 1] over the image's outer edges."""
    swap = torch.tensor([[0.0, 1.0], [1.0, 0.0]], dtype=torch.float64)
    a = swap @ matrices[:, :2, :2] @ swap  # (n, 2, 2) in (x, y) order
    b = matrices[:, :2, 2].flip(-1)  # (n, 2) in (x, y) order
    scale = torch.tensor([width / 2, height / 2], dtype=torch.float64)  # pixels per normalised unit
    a = a * scale[None, None, :] / scale[None, :, None]  # D^-1 A D
    return torch.cat([a, (b / scale)[:, :, None]], dim=2)


def apply_matrices(images: torch.Tensor, matrices: torch.Tensor, fill_mode: str = "nearest",
                   cval: float = 0.0) -> torch.Tensor:
    """Resample images (N, C, H, W) through per-image pixel maps (N, 3, 3), on the images' device."""
    n, _, h, w = images.shape
    theta = to_affine_grid_theta(matrices, h, w).to(images.device, images.dtype)
    grid = F.affine_grid(theta, [n, 1, h, w], align_corners=False)  # (N, H, W, 2): (x, y) in [-1, 1]
    if fill_mode == "constant":
        return F.grid_sample(images - cval, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + cval
    if fill_mode == "nearest":  # scipy's "nearest": the edge pixel repeats outwards
        return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)
    if fill_mode == "reflect":  # reflection about the outer pixel edges, as scipy's "reflect"
        return F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    if fill_mode == "wrap":
        # Periodic: wrap the pixel coordinate into [0, size), then sample an image padded by one
        # wrapped pixel on each side so that interpolation across the seam mixes both ends.
        size = torch.tensor([w, h], dtype=grid.dtype, device=grid.device)
        pixel = torch.remainder((grid + 1) * size / 2 - 0.5, size)  # (N, H, W, 2) in [0, size)
        padded = F.pad(images, (1, 1, 1, 1), mode="circular")
        grid = (2 * (pixel + 1) + 1) / (size + 2) - 1
        return F.grid_sample(padded, grid, mode="bilinear", padding_mode="border", align_corners=False)
    raise ValueError(f"fill_mode must be nearest, constant, reflect or wrap, got {fill_mode!r}")


def augment(images: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator) -> torch.Tensor:
    """A randomly transformed copy of a batch (N, C, H, W), on its device; `gen` (a CPU
    generator) decides the transforms, so a seed reproduces them anywhere."""
    if images.dim() != 4:
        raise ValueError(f"augment expects images of shape (N, C, H, W), got {tuple(images.shape)}")
    if cfg.is_identity():
        return images
    n, _, h, w = images.shape
    return apply_matrices(images, random_matrices(n, h, w, cfg, gen), cfg.fill_mode, cfg.cval)


__all__ = ["AugmentConfig", "augment", "apply_matrices", "generator", "random_matrices"]
