"""Image tensors <-> grids, PNG bytes and base64 strings (torchvision has no CPU build here)."""

from __future__ import annotations

import base64
import io
import math

import numpy as np
import torch
from PIL import Image


def grid(images: torch.Tensor, nrow: int | None = None, pad: int = 2) -> torch.Tensor:
    """Tile (N, C, H, W) images in [0, 1] into one (C, H', W') image, row-major."""
    n, c, h, w = images.shape
    nrow = nrow or math.ceil(math.sqrt(n))
    rows = math.ceil(n / nrow)
    out = torch.ones(c, rows * (h + pad) + pad, nrow * (w + pad) + pad)
    for i, img in enumerate(images.detach().float().cpu().clamp(0, 1)):
        r, col = divmod(i, nrow)
        top, left = pad + r * (h + pad), pad + col * (w + pad)
        out[:, top : top + h, left : left + w] = img
    return out


def to_png(image: torch.Tensor) -> bytes:
    """(C, H, W) or (H, W) in [0, 1] -> PNG bytes (grey for C = 1, RGB for C = 3)."""
    if image.dim() == 3:
        image = image[0] if image.shape[0] == 1 else image.permute(1, 2, 0)
    array = (image.detach().float().cpu().clamp(0, 1).numpy() * 255).round().astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def from_png(data: bytes, shape: tuple[int, int, int] = (1, 28, 28)) -> torch.Tensor:
    """PNG, JPEG (any PIL-readable) bytes -> (C, H, W) in [0, 1] for shape (C, H, W): converted to
    grey (C = 1) or RGB (C = 3), the pixels as they are; a ValueError when it is not H x W."""
    channels, height, width = shape
    with Image.open(io.BytesIO(data)) as img:
        if img.size != (width, height):
            raise ValueError(f"image must be {width}x{height} pixels, got {img.size[0]}x{img.size[1]}")
        array = np.asarray(img.convert("L" if channels == 1 else "RGB"), dtype=np.float32) / 255.0
    image = torch.from_numpy(array)  # (H, W) grey or (H, W, 3)
    return image.unsqueeze(0) if channels == 1 else image.permute(2, 0, 1).contiguous()


def to_base64_png(image: torch.Tensor) -> str:
    return base64.b64encode(to_png(image)).decode("ascii")


def save_png(image: torch.Tensor, path) -> None:
    with open(path, "wb") as f:
        f.write(to_png(image))
