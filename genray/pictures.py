"""Pictures of trained models that people would rather look at than read.

    codes          2-D latent (a family that encodes and decodes, with latent_dim=2): validation codes,
                   coloured by class
    manifold       2-D latent: the decoder's images on a grid over the codes' range (the classic picture)
    interpolation  strips decoded between the codes of two images of two classes (any latent size)
    style          style transfer (cvae): one row per input, one column per target class
    portrait       neural ODE: the learned field's streamlines, learned vs true trajectories
    heat           the heat field at a few times, the k_in triangle outlined (a .gif: an animation)

Each is a function of a loaded family (plain tensors in, a matplotlib Figure out), so a test or a
notebook calls it directly; `draw(kind, model_path)` loads the model and its validation images.
An image family gets the pictures its capabilities (genray.families.base.CAPABILITIES) allow; its
images are drawn at the model's size (family.spec), grey ones dark on light as the digits always
were, colour ones as they are.
`genray picture KIND MODEL --out file.png [--logdir DIR]` writes the file and/or a TensorBoard
figure. Figures are drawn on matplotlib's Agg canvas (no pyplot state), like genray.heat.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from genray.data.images import DIGITS

DIGIT_COLOURS = "tab10"
# The digits' own pairs and rows: digits that look alike and unalike.
DIGIT_PAIRS = ((0, 6), (1, 7), (3, 8), (4, 9), (2, 5))
DIGIT_ROWS = (0, 2, 3, 5, 7, 9)


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def pixels(image: torch.Tensor) -> np.ndarray:
    """(C, H, W) in [0, 1] -> what imshow draws: (H, W) for grey (shown with `_show`'s gray_r),
    (H, W, 3) for colour."""
    image = image.detach().cpu().clamp(0, 1)
    return image[0].numpy() if image.shape[0] == 1 else image.permute(1, 2, 0).numpy()


def _show(ax, image: torch.Tensor, **options) -> None:
    """One image (C, H, W) on `ax`: grey dark on light (gray_r), colour as it is."""
    ax.imshow(pixels(image), **({"cmap": "gray_r"} if image.shape[0] == 1 else {}), vmin=0, vmax=1, **options)


def _class_names(family) -> tuple[str, ...]:
    return family.spec.labels or ()


def codes_of(family, images: torch.Tensor) -> torch.Tensor:
    """(B, C, S, S) -> codes (B, latent): the posterior mean for a VAE-type encoder, z otherwise."""
    out = family.encode(images)
    return (out[0] if isinstance(out, tuple) else out).detach().cpu()


def _two_d(family) -> None:
    dim = family.cfg.latent_dim
    if dim != 2:
        raise ValueError(f"this picture needs a 2-D latent (train with --set model.latent_dim=2); this model's "
                         f"latent_dim is {dim}. 'interpolation' works for any latent size")


def codes(family, images: torch.Tensor, labels: torch.Tensor) -> Figure:
    """Scatter of the codes of validation images (B, C, S, S), coloured by their classes (B,)
    (one colour for unlabelled images)."""
    _two_d(family)
    z = codes_of(family, images).numpy()
    names = _class_names(family)
    fig = _figure(6.4, 5.4)
    ax = fig.add_subplot()
    if names:
        cmap = DIGIT_COLOURS if len(names) <= 10 else "turbo"
        points = ax.scatter(z[:, 0], z[:, 1], c=labels.numpy(), cmap=cmap, vmin=-0.5, vmax=len(names) - 0.5, s=9,
                            alpha=0.8, linewidths=0)
        bar = fig.colorbar(points, ax=ax, ticks=range(len(names)), label="digit" if names == DIGITS else "class")
        if names != DIGITS:
            bar.ax.set_yticklabels(names)
    else:
        ax.scatter(z[:, 0], z[:, 1], s=9, alpha=0.8, linewidths=0)
    ax.set_xlabel("$z_1$")
    ax.set_ylabel("$z_2$")
    ax.set_title(f"validation codes ({len(z)} {'digits' if names == DIGITS else 'images'})")
    ax.set_aspect("equal", adjustable="datalim")
    return fig


def manifold(family, images: torch.Tensor, labels: Optional[torch.Tensor] = None, n: int = 15,
             quantile: float = 0.02) -> Figure:
    """The decoder's images for an n x n grid of codes spanning the validation codes (from the
    `quantile` to the 1 - `quantile` quantile on each axis), z2 growing upwards."""
    _two_d(family)
    if not 2 <= n <= 40 or not 0.0 <= quantile < 0.5:
        raise ValueError(f"need 2 <= n <= 40 and 0 <= quantile < 0.5, got n={n}, quantile={quantile}")
    z = codes_of(family, images)
    lo, hi = torch.quantile(z, quantile, dim=0), torch.quantile(z, 1 - quantile, dim=0)  # (2,) each
    z1, z2 = (torch.linspace(float(lo[i]), float(hi[i]), n) for i in range(2))
    grid_z = torch.stack(torch.meshgrid(z1, z2.flip(0), indexing="xy"), -1).reshape(-1, 2)  # row-major, top row first
    c, s, _ = family.spec.shape
    tiles = family.decode(grid_z).detach().cpu().reshape(n, n, c, s, s)  # (row, col, C, H, W)
    canvas = tiles.permute(2, 0, 3, 1, 4).reshape(c, n * s, n * s)  # (C, rows of tiles, columns of tiles)
    fig = _figure(6.4, 6.4)
    ax = fig.add_subplot()
    _show(ax, canvas, extent=(float(lo[0]), float(hi[0]), float(lo[1]), float(hi[1])), aspect="auto",
          interpolation="nearest")
    ax.set_xlabel("$z_1$")
    ax.set_ylabel("$z_2$")
    ax.set_title(f"decoded manifold ({n} x {n} codes)")
    return fig


def _first_of_each(family, labels: torch.Tensor, classes) -> list[int]:
    """The position of the first validation image of each class (an index or a name); for a model
    of unlabelled images, `classes` are the images' positions themselves."""
    names = _class_names(family)
    if not names:
        if any(not 0 <= int(i) < len(labels) for i in classes):
            raise ValueError(f"this model's images are unlabelled: name validation images by position, "
                             f"0..{len(labels) - 1}, got {list(classes)}")
        return [int(i) for i in classes]
    index = []
    for c in classes:
        d = names.index(c) if isinstance(c, str) and c in names else c
        found = (labels == d).nonzero() if isinstance(d, int) else []
        if not len(found):
            present = sorted(set(labels.tolist()))
            raise ValueError(f"no validation image of class {c!r}; classes present: "
                             f"{', '.join(f'{i} ({names[i]})' if names[i] != str(i) else str(i) for i in present)}")
        index.append(int(found[0]))
    return index


def _default_pairs(family) -> tuple[tuple[int, int], ...]:
    """The digits' own pairs; other models: up to five pairs of neighbouring classes (or images)."""
    names = _class_names(family)
    if names == DIGITS:
        return DIGIT_PAIRS
    count = len(names) or 10
    return tuple((a, (a + 1) % count) for a in range(0, min(count, 10), 2))


def interpolation(family, images: torch.Tensor, labels: torch.Tensor, pairs=None, steps: int = 10) -> Figure:
    """One strip per (a, b) pair of classes (indices or names; default: the digits' (0, 6), (1, 7),
    (3, 8), (4, 9), (2, 5)): the decoder's images on the line between the codes of the first
    validation image of a and of b, the two inputs at the ends."""
    pairs = _default_pairs(family) if pairs is None else pairs
    if not 2 <= steps <= 32 or not pairs:
        raise ValueError(f"need 2 <= steps <= 32 and at least one pair, got steps={steps}, pairs={pairs}")
    fig = _figure(1.0 * (steps + 2), 1.05 * len(pairs))
    axes = fig.subplots(len(pairs), steps + 2, squeeze=False, gridspec_kw={"wspace": 0.02, "hspace": 0.05})
    t = torch.linspace(0.0, 1.0, steps).unsqueeze(1)  # (steps, 1)
    for row, (a, b) in zip(axes, pairs):
        ia, ib = _first_of_each(family, labels, (a, b))
        z = codes_of(family, images[[ia, ib]])
        strip = family.decode((1 - t) * z[0] + t * z[1]).detach().cpu()  # (steps, C, S, S)
        tiles = [images[ia], *strip, images[ib]]
        for col, (ax, tile) in enumerate(zip(row, tiles)):
            _show(ax, tile)
            ax.set_xticks([])
            ax.set_yticks([])
            edge = "tab:blue" if col in (0, len(tiles) - 1) else "0.8"  # the real inputs stand out
            for spine in ax.spines.values():
                spine.set_edgecolor(edge)
        row[0].set_ylabel(f"{a} to {b}", rotation=0, ha="right", va="center")
    what = "digits" if _class_names(family) == DIGITS else "images"
    fig.suptitle(f"interpolation between the codes of two {what} (inputs at the ends)")
    return fig


def style(family, images: torch.Tensor, labels: torch.Tensor, rows=None) -> Figure:
    """CVAE style transfer sheet: for the first validation image of each class in `rows` (indices
    or names; default: the digits 0, 2, 3, 5, 7, 9, else the first six classes), the input, then
    its style (posterior mean) decoded as every class."""
    names = _class_names(family)
    rows = (DIGIT_ROWS if names == DIGITS else tuple(range(min(len(names), 6)))) if rows is None else rows
    index = _first_of_each(family, labels, rows)
    k = len(names)
    x, y = images[index], labels[index]  # (R, C, S, S), (R,)
    fig = _figure((k + 1) * 0.9, len(index) * 0.95 + 0.4)
    axes = fig.subplots(len(index), k + 1, squeeze=False, gridspec_kw={"wspace": 0.02, "hspace": 0.05})
    for r in range(len(index)):
        sheet = family.style_transfer(x[r : r + 1].expand(k, -1, -1, -1), y[r].expand(k), torch.arange(k))
        for c, tile in enumerate([x[r], *sheet.detach().cpu()]):
            ax = axes[r, c]
            _show(ax, tile)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title("input" if c == 0 else names[c - 1], fontsize=10)
    what = ("handwriting", "digit") if names == DIGITS else ("style", "class")
    fig.suptitle(f"style transfer: each input's {what[0]} drawn as every {what[1]}")
    return fig


def portrait(family, y0=((2.0, 0.0), (0.5, 0.0), (-1.5, 1.0)), t_end: float = 25.0, points: int = 400) -> Figure:
    """Phase portrait of a neural ODE: streamlines of the learned field, and from each y0 the
    learned (solid) and the true (dashed) trajectory over [0, t_end]."""
    y0 = torch.as_tensor(y0, dtype=torch.float32).reshape(-1, 2)
    t = torch.linspace(0.0, t_end, points)
    learned = family.integrate(y0, t).detach().cpu().numpy()  # (T, B, 2)
    true = family.true_trajectory(y0, t).detach().cpu().numpy()
    both = np.concatenate([learned, true]).reshape(-1, 2)
    lo, hi = both.min(0), both.max(0)
    pad = 0.15 * np.maximum(hi - lo, 0.5)
    lo, hi = lo - pad, hi + pad
    g1, g2 = np.meshgrid(np.linspace(lo[0], hi[0], 40), np.linspace(lo[1], hi[1], 40))
    states = torch.from_numpy(np.stack([g1, g2], -1).reshape(-1, 2).astype(np.float32))
    with torch.no_grad():
        arrows = family.field(states).detach().cpu().numpy().reshape(40, 40, 2)
    speed = np.hypot(arrows[..., 0], arrows[..., 1])
    fig = _figure(6.4, 5.6)
    ax = fig.add_subplot()
    stream = ax.streamplot(g1, g2, arrows[..., 0], arrows[..., 1], color=speed, cmap="Blues", density=1.2,
                           linewidth=0.8, arrowsize=0.8)
    fig.colorbar(stream.lines, ax=ax, label="|learned dy/dt|")
    for b in range(y0.shape[0]):
        colour = f"C{(b + 1) % 10}"
        ax.plot(true[:, b, 0], true[:, b, 1], "--", color=colour, lw=1.3, label="true" if b == 0 else None)
        ax.plot(learned[:, b, 0], learned[:, b, 1], "-", color=colour, lw=1.8, label="learned" if b == 0 else None)
        ax.plot(*y0[b].numpy(), "o", color=colour, ms=5)
    ax.set_xlim(lo[0], hi[0])
    ax.set_ylim(lo[1], hi[1])
    ax.set_xlabel("$y_1$")
    ax.set_ylabel("$y_2$")
    ax.set_title(f"phase portrait, t in [0, {t_end:g}]")
    ax.legend(loc="upper right")
    return fig


def heat(times, fields, panels: int = 4) -> Figure:
    """The heat field at `panels` times spread over the frames (F, n+1, n+1), one colour scale,
    the k_in triangle outlined in each."""
    from matplotlib.patches import Polygon

    from genray.heat import TRIANGLE

    stack = fields.detach().cpu().numpy() if isinstance(fields, torch.Tensor) else np.asarray(fields)
    first = 1 if len(stack) > panels else 0  # u = 0 at t = 0: nothing to see
    picks = np.unique(np.linspace(first, len(stack) - 1, min(panels, len(stack))).round().astype(int))
    fig = _figure(2.7 * len(picks) + 1.0, 3.0)
    axes = fig.subplots(1, len(picks), squeeze=False)[0]
    vmax = float(stack.max()) or 1.0
    for ax, i in zip(axes, picks):
        image = ax.imshow(stack[i].T, origin="lower", extent=(0, 1, 0, 1), cmap="inferno", vmin=0.0, vmax=vmax)
        ax.add_patch(Polygon(TRIANGLE, closed=True, fill=False, edgecolor="white", lw=1.0, ls="--"))
        ax.set_title(f"t = {float(times[i]):.3g}")
        ax.set_xlabel("$x_1$")
    axes[0].set_ylabel("$x_2$")
    fig.colorbar(image, ax=list(axes), label="u", shrink=0.9)
    return fig


# --- from a model path --------------------------------------------------------------------------

# kind -> (the picture, the capabilities a model's family needs for it); portrait draws ode
# models (PORTRAIT_FAMILY), heat no model.
PICTURES: dict[str, tuple[Callable[..., Figure], tuple[str, ...]]] = {
    "codes": (codes, ("encode", "decode")),
    "manifold": (manifold, ("encode", "decode")),
    "interpolation": (interpolation, ("encode", "decode")),
    "style": (style, ("style_transfer",)),
    "portrait": (portrait, ()),
    "heat": (heat, ()),
}
PORTRAIT_FAMILY = "ode"
MAX_POINTS = 5000  # validation codes in a scatter


def draws(kind: str, name: str) -> bool:
    """Whether the `kind` picture draws models of the registered family `name`."""
    from genray.families import get_family

    if kind == "portrait":
        return name == PORTRAIT_FAMILY
    needs = PICTURES[kind][1]
    return bool(needs) and set(needs) <= set(get_family(name).capabilities)


def families_drawn(kind: str) -> list[str]:
    """The registered families whose models the `kind` picture draws."""
    from genray.families import FAMILIES

    return [name for name in FAMILIES if draws(kind, name)]


def options_of(kind: str) -> list[str]:
    """The keyword options a kind takes (what `genray picture --set` may set)."""
    skip = {"family", "images", "labels", "times", "fields"}
    return [p for p in inspect.signature(PICTURES[kind][0]).parameters if p not in skip]


def _check_options(kind: str, options: dict[str, Any], extra: tuple[str, ...] = ()) -> None:
    allowed = options_of(kind) + list(extra)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(f"picture {kind!r} has no option {', '.join(unknown)}; it takes {', '.join(allowed) or 'none'}")


HEAT_DEFAULTS = {"n": 48, "dt": 2e-3, "t_end": 0.2, "omega": 20.0, "k_in": 50.0, "k_out": 1.0, "frames": 21}


def heat_frames(options: dict[str, Any]):
    """(times (F,), fields (F, n+1, n+1)) of the heat problem; the solver's settings are taken
    (popped) from `options`, the rest are the picture's own."""
    from genray.heat import solve_frames

    a = {**HEAT_DEFAULTS, **{k: options.pop(k) for k in HEAT_DEFAULTS if k in options}}
    return solve_frames(a["n"], a["dt"], a["t_end"], a["omega"], a["k_in"], a["k_out"], num_frames=a["frames"])


def heat_animation(path: Path | str, **options) -> bytes:
    """The heat field over time as an animated GIF (genray.heat.render_gif: one colour scale,
    the triangle, the time in a corner); options: the solver's settings, fps, size."""
    from genray.heat import render_gif

    _check_options("heat", options, tuple(HEAT_DEFAULTS) + ("fps", "size"))
    times, fields = heat_frames(options)
    return render_gif(times, fields, path, **options)


def draw(kind: str, model: Optional[str] = None, **options) -> Figure:
    """The `kind` picture of the model at `model` (a checkpoint or model-store folder or s3:// URI);
    image families get their validation images (the split of the model's own data config)."""
    if kind not in PICTURES:
        raise ValueError(f"unknown picture {kind!r}; pictures: {', '.join(PICTURES)}")
    function = PICTURES[kind][0]
    if kind == "heat":
        _check_options(kind, options, tuple(HEAT_DEFAULTS))
        times, fields = heat_frames(options)
        return function(times, fields, **options)
    _check_options(kind, options)
    if model is None:
        raise ValueError(f"picture {kind!r} needs a model path (a {' / '.join(families_drawn(kind))} checkpoint)")
    from genray.checkpoint import load_family
    from genray.registry import model_folder

    family, ckpt = load_family(model_folder(model))  # a registry reference is its version's folder
    if not draws(kind, ckpt.family):
        raise ValueError(f"picture {kind!r} draws {' / '.join(families_drawn(kind))} models; {model} is a "
                         f"{ckpt.family}")
    if kind == "portrait":
        return function(family, **options)
    images, labels = validation_images(ckpt.config)
    return function(family, images, labels, **options)


def validation_images(config: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """The validation images (B, C, S, S) and labels (B,) of a run config, at most MAX_POINTS."""
    from genray.data.images import DataConfig, load_images

    _, val = load_images(DataConfig.model_validate(config.get("data", {})))
    images, labels = val.tensors
    return images[:MAX_POINTS], labels[:MAX_POINTS]


def save(fig: Figure, out: Path | str, kind: str = "", logdir: Optional[str] = None, step: int = 0) -> None:
    """Write the figure to `out` (any format matplotlib knows by the suffix) and/or to TensorBoard
    under `logdir` as the figure `pictures/<kind>`."""
    if out is not None:
        fig.savefig(out, dpi=100)
    if logdir is not None:
        from torch.utils.tensorboard import SummaryWriter

        with SummaryWriter(logdir) as writer:
            writer.add_figure(f"pictures/{kind or 'figure'}", fig, global_step=step, close=False)
