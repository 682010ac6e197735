"""Pictures of heat fields: a PNG heat map of one field, an animated GIF of several.

Rendering uses matplotlib's Agg canvas directly (no pyplot, no global backend switch), so it is safe
in servers and threads; GIF frames are coloured with a matplotlib colormap and assembled by Pillow,
which is much faster than drawing a figure per frame.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from genray.heat.problem import TRIANGLE


def _as_field(u, name: str = "u") -> np.ndarray:
    """A (n+1, n+1) tensor or array as float64 numpy."""
    a = u.detach().cpu().numpy() if isinstance(u, torch.Tensor) else np.asarray(u)
    if a.ndim != 2 or a.shape[0] != a.shape[1] or a.shape[0] < 3:
        raise ValueError(f"{name} must be a square (n+1, n+1) field with n >= 2, got shape {a.shape}")
    return a.astype(np.float64, copy=False)


def _write(data: bytes, path: str | Path | None) -> bytes:
    if path is not None:
        Path(path).write_bytes(data)
    return data


def render_png(
    u,
    path: str | Path | None = None,
    *,
    title: str | None = None,
    cmap: str = "inferno",
    vmin: float | None = 0.0,
    vmax: float | None = None,
    dpi: int = 100,
) -> bytes:
    """PNG heat map of one field u (n+1, n+1), [i1, i2]: x1 to the right, x2 up, the k_in triangle
    outlined. Returns the PNG bytes (and writes them to `path` if given)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Polygon

    a = _as_field(u)
    fig = Figure(figsize=(5.0, 4.2), dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    # imshow puts the first index on rows; u is [i1, i2], so show u.T with x2 going up.
    image = ax.imshow(a.T, origin="lower", extent=(0.0, 1.0, 0.0, 1.0), cmap=cmap, vmin=vmin, vmax=vmax,
                      interpolation="nearest")
    ax.add_patch(Polygon(TRIANGLE, closed=True, fill=False, edgecolor="white", linewidth=1.2, linestyle="--"))
    ax.set_xlabel("$x_1$")
    ax.set_ylabel("$x_2$")
    if title:
        ax.set_title(title)
    fig.colorbar(image, ax=ax, label="u")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return _write(buffer.getvalue(), path)


def render_gif(
    times: Sequence[float] | torch.Tensor,
    frames,
    path: str | Path | None = None,
    *,
    fps: float = 10.0,
    size: int = 320,
    cmap: str = "inferno",
) -> bytes:
    """Animated GIF of frames (F, n+1, n+1) with one colour scale for all frames, the triangle
    outlined and the time written in a corner. Returns the GIF bytes (and writes them to `path`)."""
    import matplotlib
    from PIL import Image, ImageDraw

    stack = frames.detach().cpu().numpy() if isinstance(frames, torch.Tensor) else np.asarray(frames)
    if stack.ndim != 3 or stack.shape[0] < 1:
        raise ValueError(f"frames must have shape (F, n+1, n+1) with F >= 1, got {stack.shape}")
    times = [float(t) for t in times]
    if len(times) != stack.shape[0]:
        raise ValueError(f"times must have one entry per frame ({stack.shape[0]}), got {len(times)}")
    if not (fps > 0 and 16 <= size <= 2048):
        raise ValueError(f"fps must be > 0 and size in [16, 2048], got fps={fps}, size={size}")

    lo, hi = float(stack.min()), float(stack.max())
    scale = 1.0 / (hi - lo) if hi > lo else 0.0
    colormap = matplotlib.colormaps[cmap]
    corners = [(x1 * (size - 1), (1.0 - x2) * (size - 1)) for x1, x2 in TRIANGLE]  # pixel (col, row)
    images = []
    for t, field in zip(times, stack):
        # Rows of the picture run down in x2, columns along x1: transpose, then flip the rows.
        rgba = colormap((field.T[::-1] - lo) * scale, bytes=True)  # (n+1, n+1, 4) uint8
        image = Image.fromarray(rgba[..., :3]).resize((size, size), Image.Resampling.BILINEAR)
        draw = ImageDraw.Draw(image)
        draw.polygon(corners, outline=(255, 255, 255))
        label = f"t = {t:.3f}"
        draw.rectangle(draw.textbbox((4, 4), label), fill=(0, 0, 0))  # readable on any colour
        draw.text((4, 4), label, fill=(255, 255, 255))
        images.append(image)
    buffer = io.BytesIO()
    images[0].save(buffer, format="GIF", save_all=True, append_images=images[1:],
                   duration=max(int(round(1000.0 / fps)), 20), loop=0)
    return _write(buffer.getvalue(), path)
