"""Generated spiral data for the neural-ODE families: pure torch, no download, no Ray.

Two data sets, both deterministic under a seed:

* The spiral *system* of torchdiffeq's ode_demo.py: dy/dt = (y**3) A with
  A = [[-0.1, 2.0], [-2.0, -0.1]] and y(0) = (2, 0), observed at 1000 points on t in [0, 25].
  `trajectory_windows` cuts it into short windows (the demo's random batches), which the
  `ode` family trains on.
* Irregularly sampled noisy *series* on two spirals (clockwise and counter-clockwise), built
  like torchdiffeq's examples/latent_ode.py (`generate_spiral2d`), for `latent_ode` and its
  `rnn` baseline. Each series is observed at an irregular subset of a time grid on
  [0, obs_span] (always including t = 0, where its latent state z0 lives) and has
  extrapolation targets on (obs_span, obs_span + extrap_span].
"""

from __future__ import annotations

import functools
import math

import torch
from torch import nn
from torch.utils.data import TensorDataset, default_collate

# --- the spiral system (ode_demo.py) --------------------------------------------------------

SPIRAL_A = ((-0.1, 2.0), (-2.0, -0.1))
SPIRAL_Y0 = (2.0, 0.0)


class SpiralField(nn.Module):
    """The true vector field f(t, y) = (y**3) A, for y of shape (..., 2)."""

    def __init__(self, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.register_buffer("A", torch.tensor(SPIRAL_A, dtype=dtype))

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return (y**3) @ self.A.to(y.dtype)


@functools.lru_cache(maxsize=4)
def _spiral_trajectory(n_points: int, t_end: float, y0: tuple[float, float]) -> tuple[torch.Tensor, torch.Tensor]:
    from torchdiffeq import odeint

    t = torch.linspace(0.0, t_end, n_points, dtype=torch.float64)
    with torch.no_grad():
        # float64 and tight tolerances: this is the ground truth every model is scored against.
        y = odeint(SpiralField(torch.float64), torch.tensor(y0, dtype=torch.float64), t,
                   rtol=1e-9, atol=1e-10, method="dopri5")
    return t.float(), y.float()


def spiral_trajectory(n_points: int = 1000, t_end: float = 25.0,
                      y0: tuple[float, float] = SPIRAL_Y0) -> tuple[torch.Tensor, torch.Tensor]:
    """The true trajectory: times (n_points,) on [0, t_end] and states (n_points, 2)."""
    if n_points < 2:
        raise ValueError(f"n_points must be >= 2, got {n_points}")
    if not t_end > 0:
        raise ValueError(f"t_end must be > 0, got {t_end}")
    t, y = _spiral_trajectory(int(n_points), float(t_end), (float(y0[0]), float(y0[1])))
    return t.clone(), y.clone()


class GatheredBatch(tuple):
    """A batch that `WindowDataset.__getitems__` gathered already: its tensors, each (B, ...)."""


class WindowDataset(TensorDataset):
    """A TensorDataset that hands a DataLoader whole batches. The DataLoader calls `__getitems__`
    with a batch's indices (from its sampler, DistributedSampler included); one index op per tensor
    replaces B item lookups and default_collate's stack: 0.12-0.14 -> 0.03-0.04 CPU ms for a batch
    of 32 windows, about 1% of an `ode` train step. Load it with `collate_fn=collate_gathered`
    (ODEFamily.collate_fn): torch's default collate would try to stack the gathered tensors."""

    def __getitems__(self, indices: list[int]) -> GatheredBatch:
        idx = torch.as_tensor(indices)
        return GatheredBatch(t[idx] for t in self.tensors)


def collate_gathered(data):
    """DataLoader collate_fn: a GatheredBatch as it is (a list of tensors, as default_collate
    makes of tuples), any other list of items through default_collate."""
    if isinstance(data, GatheredBatch):
        return list(data)
    return default_collate(data)


def trajectory_windows(t: torch.Tensor, y: torch.Tensor, window: int, *, noise_std: float = 0.0,
                       seed: int = 0, limit: int | None = None) -> WindowDataset:
    """Every window of `window` consecutive points of a trajectory, as (t_window, y_window) items.

    t_window is t[:window] for every item: the system is autonomous, so a window's clock can
    start at 0 (as in ode_demo.py), and every batch then shares one time grid.
    Items: t_window (window,), y_window (window, 2). `noise_std` adds Gaussian observation noise
    (drawn from `seed`); `limit` keeps that many windows, evenly spread over the trajectory.
    """
    n = t.shape[0]
    if not 2 <= window <= n:
        raise ValueError(f"window must be in [2, {n}] (the trajectory length), got {window}")
    starts = torch.arange(n - window + 1)
    if limit is not None and limit < len(starts):
        starts = starts[torch.linspace(0, len(starts) - 1, limit).round().long()]
    offsets = torch.arange(window)
    y_windows = y[starts[:, None] + offsets[None, :]]  # (N, window, 2)
    if noise_std > 0:
        gen = torch.Generator().manual_seed(seed)
        y_windows = y_windows + noise_std * torch.randn(y_windows.shape, generator=gen)
    t_windows = (t[:window] - t[0]).expand(len(starts), window).contiguous()  # (N, window)
    return WindowDataset(t_windows, y_windows)


# --- noisy irregular series on two spirals (latent_ode.py) -----------------------------------

SPIRAL_STOP = 6 * math.pi  # the curves are defined for curve times in [0, 6 pi]
SPIRAL_B = 0.3  # radius growth, as in the example (a = 0, b = 0.3)
SPIRAL_OFFSET = 5.0  # the two spirals' centres are (-5, 0) (clockwise) and (5, 0)
# A series' observed window, and by default its extrapolation window: 100 of the example's 1000
# points on [0, 6 pi], 6 pi / 10 = 1.885 time units (Chen et al. 2018, 5.1).
SERIES_SPAN = 6 * math.pi / 10


def spiral_curve(s: torch.Tensor, clockwise: torch.Tensor) -> torch.Tensor:
    """Points (..., 2) of the two spirals at curve times s (...); clockwise: bool (...).

    Counter-clockwise: angle z = s, radius b z, centre (+5, 0).
    Clockwise: angle z = stop + 1 - s, radius 50 b / z, centre (-5, 0).
    Both turn at one radian per unit time, so each series has time-invariant dynamics.
    """
    z_cc = s
    z_cw = SPIRAL_STOP + 1.0 - s
    r = torch.where(clockwise, SPIRAL_B * 50.0 / z_cw, SPIRAL_B * z_cc)
    z = torch.where(clockwise, z_cw, z_cc)
    centre = torch.where(clockwise, -SPIRAL_OFFSET, SPIRAL_OFFSET)
    return torch.stack([r * torch.cos(z) + centre, r * torch.sin(z)], dim=-1)


# The order of tensors in a series item (a TensorDataset row).
SERIES_FIELDS = ("t_obs", "x_obs", "x_obs_clean", "t_ext", "x_ext_clean", "clockwise")


def spiral_series(n_series: int, *, n_obs: int = 30, obs_grid: int = 100, obs_span: float = SERIES_SPAN,
                  n_extrap: int = 100, extrap_grid: int = 100, extrap_span: float = SERIES_SPAN,
                  noise_std: float = 0.3, seed: int = 0) -> TensorDataset:
    """`n_series` noisy, irregularly sampled series on the two spirals.

    Each series: a direction (clockwise with probability 1/2), a start s0 on its curve drawn
    uniformly so that the whole series stays in curve times [1, 6 pi - 1], and
      t_obs (n_obs,)          t = 0 plus n_obs - 1 distinct points drawn from a grid of
                              `obs_grid` points on (0, obs_span], increasing
      x_obs (n_obs, 2)        the curve there plus N(0, noise_std^2) noise (what a model sees)
      x_obs_clean (n_obs, 2)  the noise-free curve there (what interpolation is scored on)
      t_ext (n_extrap,)       increasing, drawn from `extrap_grid` points on (obs_span, obs_span + extrap_span]
      x_ext_clean (n_extrap, 2) the noise-free curve there (what extrapolation is scored on)
      clockwise ()            1.0 or 0.0
    Sampling times from a shared grid keeps the union of a batch's times small, so a batch
    is one ODE solve; the times are still irregular and differ from series to series.
    """
    if n_series < 1:
        raise ValueError(f"n_series must be >= 1, got {n_series}")
    if not 2 <= n_obs <= obs_grid + 1:
        raise ValueError(f"n_obs must be in [2, obs_grid + 1 = {obs_grid + 1}], got {n_obs}")
    if not 1 <= n_extrap <= extrap_grid:
        raise ValueError(f"n_extrap must be in [1, extrap_grid = {extrap_grid}], got {n_extrap}")
    total = obs_span + extrap_span
    lo, hi = 1.0, SPIRAL_STOP - 1.0 - total
    if hi <= lo:
        raise ValueError(f"obs_span + extrap_span must be < {SPIRAL_STOP - 2.0:.2f} (the spirals' length), got {total}")
    gen = torch.Generator().manual_seed(seed)
    clockwise = torch.rand(n_series, generator=gen) < 0.5
    s0 = lo + (hi - lo) * torch.rand(n_series, generator=gen)

    grid_obs = torch.linspace(0.0, obs_span, obs_grid + 1)[1:]  # (obs_grid,) excludes t = 0
    grid_ext = torch.linspace(obs_span, total, extrap_grid + 1)[1:]  # (extrap_grid,)
    # n distinct grid indices per series: the first n of a random permutation, sorted.
    pick_obs = torch.rand(n_series, obs_grid, generator=gen).argsort(1)[:, : n_obs - 1].sort(1).values
    pick_ext = torch.rand(n_series, extrap_grid, generator=gen).argsort(1)[:, :n_extrap].sort(1).values
    t_obs = torch.cat([torch.zeros(n_series, 1), grid_obs[pick_obs]], dim=1)  # (N, n_obs)
    t_ext = grid_ext[pick_ext]  # (N, n_extrap)

    cw = clockwise[:, None]
    x_obs_clean = spiral_curve(s0[:, None] + t_obs, cw)  # (N, n_obs, 2)
    x_ext_clean = spiral_curve(s0[:, None] + t_ext, cw)  # (N, n_extrap, 2)
    x_obs = x_obs_clean + noise_std * torch.randn(x_obs_clean.shape, generator=gen)
    return TensorDataset(t_obs, x_obs, x_obs_clean, t_ext, x_ext_clean, clockwise.float())
