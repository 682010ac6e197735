"""Latent ODE (Chen et al. 2018; Rubanova et al. 2019) for irregularly sampled noisy spirals.

Generative model: z0 ~ N(0, I) in a `latent_dim` space, z(t) = odeint(f, z0, t) for a learned
field f, and each observation x(t_i) ~ N(decoder(z(t_i)), obs_std^2 I).
Recognition: a GRU runs *backwards* over the observations (value, gap to the next observation)
and its last state gives q(z0 | x) = N(mu, diag sigma^2) at the first observation's time,
which is t = 0 (genray.data.spirals puts every series' first observation there).
Loss: the negative ELBO per series, in nats: sum over observations of the Gaussian NLL plus
KL(q(z0) || N(0, I)), with one reparameterised sample of z0 (as torchdiffeq's latent_ode.py).
Sizes as in the paper and torchdiffeq's example: a 4-D latent space, a 25-unit recognition
RNN; the field is an ELU MLP (width `hidden`). Two choices are made for extrapolation: in
training the recognition net reads only a random prefix of each batch's observations (at least
`min_encoded_fraction` of them) while every observation is reconstructed, so z0 and the field
must predict forward (Rubanova et al. 2019 train for extrapolation this way); and the decoder is
linear, so the dynamics live in the ODE rather than in a decoder that knows nothing outside the
region seen in training.

Validation (held-out series, generated with another seed), per series then averaged:
  val_neg_elbo     the negative ELBO (one sample of z0)
  val_mse          interpolation: the posterior-mean trajectory decode(z(t; mu)) at the observed
                   times 2..n against the noise-free curve (observation 1 is left out so that the
                   `rnn` forecaster, which cannot predict a first point, is scored on the same points)
  val_extrap_mse   extrapolation: the same trajectory at the series' later target times
                   (obs_span, obs_span + extrap_span] against the noise-free curve
For scale: copying the noisy observations would score noise_std^2 = 0.09 on val_mse.

A batch's series have different times; the latent ODE is solved once over the union of
their times (small: they share a time grid) and each series reads its own times from it.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn
from torch.utils.data import TensorDataset

from genray.data.spirals import SERIES_SPAN, SPIRAL_STOP, spiral_series
from genray.families.base import Family, StepMetrics
from genray.families.ode import SolverConfig, solve

LOG_2PI = math.log(2 * math.pi)
REFINE_LR = 0.02  # Adam's step for LatentODEFamily.refine: latent codes are O(1)


class SeriesDataConfig(BaseModel):
    """The series data shared by `latent_ode` and its `rnn` baseline (genray.data.spirals)."""

    model_config = ConfigDict(extra="forbid")

    n_train: int = Field(1000, ge=1, le=1_000_000)
    n_val: int = Field(200, ge=1, le=1_000_000)
    n_obs: int = Field(30, ge=2)  # observations per series (the first at t = 0)
    # The observed window: a grid of `obs_grid` times on (0, obs_span] that the n_obs - 1 later
    # observations are drawn from. Chen et al. 2018 (5.1) and torchdiffeq's latent_ode.py: 100
    # equally spaced points of a 1000-point trajectory on [0, 6 pi], so 6 pi / 10 time units.
    obs_grid: int = Field(100, ge=1)
    obs_span: float = Field(SERIES_SPAN, gt=0.0)
    # Extrapolation targets: the paper scores "100 time points extending beyond" the observed
    # ones, so by default every time of a grid with the observed grid's spacing on
    # (obs_span, obs_span + extrap_span]; a forecaster that steps from one time to the next (the
    # `rnn` baseline) then meets the time gaps it was trained on.
    n_extrap: int = Field(100, ge=1)
    extrap_grid: int = Field(100, ge=1)
    extrap_span: float = Field(SERIES_SPAN, gt=0.0)
    noise_std: float = Field(0.3, ge=0.0)
    seed: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _consistent(self) -> "SeriesDataConfig":
        if self.n_obs > self.obs_grid + 1:
            raise ValueError(f"n_obs must be <= obs_grid + 1 = {self.obs_grid + 1}, got {self.n_obs}")
        if self.n_extrap > self.extrap_grid:
            raise ValueError(f"n_extrap must be <= extrap_grid = {self.extrap_grid}, got {self.n_extrap}")
        if self.obs_span + self.extrap_span >= SPIRAL_STOP - 2.0:
            raise ValueError(f"obs_span + extrap_span must be < {SPIRAL_STOP - 2.0:.3f}, "
                             f"got {self.obs_span + self.extrap_span}")
        return self


def load_series(cfg: SeriesDataConfig) -> tuple[TensorDataset, TensorDataset]:
    """(train, val) series; items as genray.data.spirals.SERIES_FIELDS. Disjoint seeds."""
    kwargs = dict(n_obs=cfg.n_obs, obs_grid=cfg.obs_grid, obs_span=cfg.obs_span, n_extrap=cfg.n_extrap,
                  extrap_grid=cfg.extrap_grid, extrap_span=cfg.extrap_span, noise_std=cfg.noise_std)
    return (spiral_series(cfg.n_train, seed=2 * cfg.seed, **kwargs),
            spiral_series(cfg.n_val, seed=2 * cfg.seed + 1, **kwargs))


def series_mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-series MSE over points and coordinates: (B, n, D) x2 -> (B,)."""
    return (pred - target).pow(2).flatten(1).mean(1)


def render_series(t_obs, x_obs, x_obs_clean, t_ext, x_ext_clean, t_pred, x_pred, title: str,
                  size: int = 480) -> torch.Tensor:
    """Up to four series side by side: noisy observations (dots), the noise-free curve (thin
    grey), the model's trajectory at t_pred (solid) with the observed window's end marked.
    Returns RGB (3, size / 2, k * size / 2) in [0, 1]."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    k = min(4, t_obs.shape[0])
    fig = Figure(figsize=(size / 100 * k / 2, size / 200), dpi=100)
    FigureCanvasAgg(fig)
    for b in range(k):
        ax = fig.add_subplot(1, k, b + 1)
        truth = torch.cat([x_obs_clean[b], x_ext_clean[b]])
        ax.plot(truth[:, 0], truth[:, 1], "-", color="0.7", lw=1, label="truth")
        ax.plot(x_obs[b, :, 0], x_obs[b, :, 1], ".", color="C0", ms=4, label="observed")
        inside = t_pred[b] <= t_obs[b, -1]
        ax.plot(x_pred[b, inside, 0], x_pred[b, inside, 1], "-", color="C1", lw=1.5, label="interp.")
        ax.plot(x_pred[b, ~inside, 0], x_pred[b, ~inside, 1], "-", color="C3", lw=1.5, label="extrap.")
        ax.set_xticks([])
        ax.set_yticks([])
        if b == 0:
            ax.set_title(title, fontsize=8, loc="left")
            ax.legend(fontsize=6, loc="best")
    fig.tight_layout()
    fig.canvas.draw()
    rgb = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    return torch.from_numpy(rgb).permute(2, 0, 1).float() / 255.0


class LatentODEConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    obs_dim: int = Field(2, ge=1, le=1024)
    latent_dim: int = Field(4, ge=1, le=512)  # Chen et al. 2018 (5.1) and torchdiffeq's example: 4
    hidden: int = Field(50, ge=1, le=4096)  # the latent field's (and an mlp decoder's) width
    rnn_hidden: int = Field(25, ge=1, le=4096)  # the recognition net's state (either encoder)
    # gru: a GRU reads (value, gap to the next observation), last to first (Chen et al. 2018).
    # ode_rnn: Rubanova et al. 2019's ODE-RNN, also last to first: between two observations its
    # state follows a learned ODE over the gap, at each observation a GRU cell reads the value.
    encoder: Literal["gru", "ode_rnn"] = "gru"
    obs_std: float = Field(0.3, gt=0.0)  # the likelihood's noise (the data's is 0.3)
    # The networks see observations / value_scale and emit means * value_scale: the spirals
    # reach |x| ~ 12, which would saturate the GRU's and the decoder's units.
    value_scale: float = Field(5.0, gt=0.0)
    solver: SolverConfig = Field(default_factory=SolverConfig)
    kl_warmup_epochs: float = Field(0.0, ge=0.0)
    lr: float = Field(1e-2, gt=0.0, le=1.0)
    # lr * lr_decay**epoch. The latent ODE keeps learning long after the RNN has stopped if its
    # step stays large enough, so it decays more slowly than `rnn` (0.995); each is its own best.
    lr_decay: float = Field(0.998, gt=0.0, le=1.0)
    # linear: x = W z + b, so the latent ODE itself must carry the rotation, and a trajectory that
    # leaves the region seen in training still decodes sensibly (the mlp decoder of torchdiffeq's
    # example extrapolated with about twice the error on the spirals)
    decoder: Literal["mlp", "linear"] = "linear"
    # Training only: the recognition net reads the first k observations, k drawn per batch from
    # [ceil(min_encoded_fraction * n), n]; every observation is still reconstructed, so z0 and the
    # latent field must carry the series forward (Rubanova et al. 2019's extrapolation training).
    min_encoded_fraction: float = Field(0.25, gt=0.0, le=1.0)


class RecognitionRNN(nn.Module):
    """Observations, read last to first -> q(z0) = N(mu, exp(logvar)), each (B, latent)."""

    def __init__(self, cfg: LatentODEConfig):
        super().__init__()
        self.gru = nn.GRU(cfg.obs_dim + 1, cfg.rnn_hidden, batch_first=True)
        self.out = nn.Linear(cfg.rnn_hidden, 2 * cfg.latent_dim)

    def forward(self, t: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        gaps = torch.cat([t[:, 1:] - t[:, :-1], torch.zeros_like(t[:, :1])], dim=1)  # (B, n): to the next obs
        inputs = torch.cat([x, gaps.unsqueeze(-1)], dim=-1).flip(1)  # (B, n, D + 1), last obs first
        _, h = self.gru(inputs)  # h: (1, B, H), after reading the first observation
        mu, logvar = self.out(h[0]).chunk(2, dim=-1)
        return mu, logvar.clamp(-20.0, 10.0)  # clamp keeps exp() finite


class ODERNNEncoder(nn.Module):
    """Rubanova et al. 2019's ODE-RNN, read last to first -> q(z0) = N(mu, exp(logvar)).

    Between observations i + 1 and i the state h follows dh/dt = g(h) backwards over the gap
    t[i + 1] - t[i] (per series, one classic RK4 step: the gaps are a few hundredths of the
    observed window, where one step of a smooth field is accurate); at observation i a GRU cell
    reads x[i]. Time reaches the state through the ODE, not as an input."""

    def __init__(self, cfg: LatentODEConfig):
        super().__init__()
        h = cfg.rnn_hidden
        self.cell = nn.GRUCell(cfg.obs_dim, h)
        self.field = nn.Sequential(nn.Linear(h, h), nn.Tanh(), nn.Linear(h, h))
        self.out = nn.Linear(h, 2 * cfg.latent_dim)

    def evolve(self, h: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
        """One RK4 step of dh/dt = g(h) of length `step` (B, 1), which may be negative."""
        k1 = self.field(h)
        k2 = self.field(h + 0.5 * step * k1)
        k3 = self.field(h + 0.5 * step * k2)
        k4 = self.field(h + step * k3)
        return h + step / 6.0 * (k1 + 2 * k2 + 2 * k3 + k4)

    def forward(self, t: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n = t.shape[1]
        h = self.cell(x[:, n - 1])
        for i in range(n - 2, -1, -1):
            h = self.cell(x[:, i], self.evolve(h, (t[:, i] - t[:, i + 1]).unsqueeze(1)))
        mu, logvar = self.out(h).chunk(2, dim=-1)
        return mu, logvar.clamp(-20.0, 10.0)


class LatentODEFunc(nn.Module):
    """dz/dt = f(z): (..., latent) -> (..., latent); autonomous."""

    def __init__(self, cfg: LatentODEConfig):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(cfg.latent_dim, cfg.hidden), nn.ELU(),
            nn.Linear(cfg.hidden, cfg.hidden), nn.ELU(),
            nn.Linear(cfg.hidden, cfg.latent_dim),
        )

    def forward(self, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


class LatentODE(nn.Module):
    def __init__(self, cfg: LatentODEConfig):
        super().__init__()
        self.encoder = RecognitionRNN(cfg) if cfg.encoder == "gru" else ODERNNEncoder(cfg)
        self.func = LatentODEFunc(cfg)
        if cfg.decoder == "linear":
            self.decoder = nn.Linear(cfg.latent_dim, cfg.obs_dim)
        else:
            self.decoder = nn.Sequential(
                nn.Linear(cfg.latent_dim, cfg.hidden), nn.ReLU(), nn.Linear(cfg.hidden, cfg.obs_dim),
            )
        self.solver = cfg.solver
        self.scale = cfg.value_scale

    def encode(self, t_obs: torch.Tensor, x_obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encoder(t_obs, x_obs / self.scale)

    def latent_path(self, z0: torch.Tensor, times: torch.Tensor) -> torch.Tensor:
        """z0 (B, L) at t = 0 -> z at each series' own times (B, m), any order and sign -> (B, m, L).

        One solve forward over the union of the times >= 0, one backward over those < 0."""
        B, m = times.shape
        # The solve runs in float32 even under autocast (ode.solve), so the path is at least float32.
        out = z0.new_empty(B, m, z0.shape[1], dtype=torch.promote_types(z0.dtype, torch.float32))
        for part in (times >= 0, times < 0):
            if not part.any():
                continue
            wanted = times[part].unique()  # sorted increasing
            forward = bool(wanted[0] >= 0)
            grid = wanted if forward else wanted.flip(0)  # away from 0 either way
            if grid[0] != 0:
                grid = torch.cat([grid.new_zeros(1), grid])
            path = solve(self.func, z0, grid, self.solver) if len(grid) > 1 else z0[None]  # (U, B, L)
            pos = torch.searchsorted(wanted, times) if forward else len(wanted) - 1 - torch.searchsorted(wanted, times)
            pos = pos + (len(grid) - len(wanted))  # the 0 prepended to the grid, if it was
            rows = path[pos.clamp(0, len(grid) - 1), torch.arange(B, device=times.device)[:, None]]  # (B, m, L)
            out[part] = rows[part]
        return out

    def decode(self, z0: torch.Tensor, times: torch.Tensor) -> torch.Tensor:
        """Mean observations at `times` (B, m) -> (B, m, obs_dim)."""
        return self.decoder(self.latent_path(z0, times)) * self.scale

    def forward(self, t_obs: torch.Tensor, x_obs: torch.Tensor, encoded: int | None = None):
        """Training pass: a reparameterised z0, from the first `encoded` observations (all by
        default), decoded at every observed time. Returns x_hat (B, n, D), mu (B, L), logvar (B, L)."""
        mu, logvar = self.encode(t_obs[:, :encoded], x_obs[:, :encoded])
        z0 = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)  # (B, L); keeps the gradient
        return self.decode(z0, t_obs), mu, logvar


def gaussian_nll(x, x_hat, obs_std: float) -> torch.Tensor:
    """Per-series Gaussian NLL of the observations x (B, n, D) given means x_hat, nats, (B,)."""
    return (0.5 * ((x - x_hat) / obs_std).pow(2) + math.log(obs_std) + 0.5 * LOG_2PI).flatten(1).sum(1)


def neg_elbo_terms(x, x_hat, mu, logvar, obs_std: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-series Gaussian NLL of the observations and KL(q(z0) || N(0, I)), nats, each (B,)."""
    kl = 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(1)
    return gaussian_nll(x, x_hat, obs_std), kl


def trajectory_errors(mean, n: int, x_obs_clean, x_ext_clean) -> tuple[torch.Tensor, torch.Tensor]:
    """A trajectory (B, n + m, D) at the observed then the extrapolation times, scored against
    the noise-free curve: per-series (interpolation MSE at observed times 2..n, extrapolation MSE)."""
    return series_mse(mean[:, 1:n], x_obs_clean[:, 1:]), series_mse(mean[:, n:], x_ext_clean)


class LatentODEFamily(Family):
    name = "latent_ode"
    compile_unsupported = ("its ODE solve has data-dependent shapes (torchdiffeq's adaptive steps, torch.unique of "
                           "the output times) that TorchInductor cannot lower (DynamicOutputShapeException)")
    Config = LatentODEConfig
    DataConfig = SeriesDataConfig
    metric = "val_mse"
    mode = "min"

    @classmethod
    def load_data(cls, data_cfg: SeriesDataConfig):
        return load_series(data_cfg)

    def build(self) -> dict[str, nn.Module]:
        return {"latent_ode": LatentODE(self.cfg)}

    def make_optimizers(self):
        return {"latent_ode": torch.optim.Adam(self.nets["latent_ode"].parameters(), lr=self.cfg.lr)}

    def kl_weight(self, epoch: float) -> float:
        if self.cfg.kl_warmup_epochs == 0:
            return 1.0
        return min(1.0, epoch / self.cfg.kl_warmup_epochs)

    def train_step(self, batch, epoch: float) -> StepMetrics:
        t_obs, x_obs = batch[0], batch[1]  # (B, n), (B, n, D); the clean values stay unseen
        n = t_obs.shape[1]
        low = max(1, math.ceil(self.cfg.min_encoded_fraction * n))
        k = int(torch.randint(low, n + 1, ())) if low < n else n
        x_hat, mu, logvar = self.train_nets["latent_ode"](t_obs, x_obs, encoded=k)
        nll, kl = neg_elbo_terms(x_obs, x_hat, mu, logvar, self.cfg.obs_std)
        beta = self.kl_weight(epoch)
        loss = (nll + beta * kl).mean()
        for group in self.optimizers["latent_ode"].param_groups:
            group["lr"] = self.cfg.lr * self.cfg.lr_decay**epoch
        self.optimizer_step(loss, "latent_ode")
        return {"loss": loss.detach(), "nll": nll.mean().detach(), "kl": kl.mean().detach(), "kl_weight": beta}

    @torch.no_grad()
    def eval_batch(self, batch) -> dict[str, float]:
        t_obs, x_obs, x_obs_clean, t_ext, x_ext_clean, _ = batch
        model = self.nets["latent_ode"]
        x_hat, mu, logvar = model(t_obs, x_obs)
        nll, kl = neg_elbo_terms(x_obs, x_hat, mu, logvar, self.cfg.obs_std)
        mean = model.decode(mu, torch.cat([t_obs, t_ext], dim=1))  # the posterior-mean trajectory
        interp, extrap = trajectory_errors(mean, t_obs.shape[1], x_obs_clean, x_ext_clean)
        return {
            "val_neg_elbo": (nll + kl).sum().item(),
            "val_nll": nll.sum().item(),
            "val_kl": kl.sum().item(),
            "val_mse": interp.sum().item(),
            "val_extrap_mse": extrap.sum().item(),
        }

    @torch.no_grad()
    def preview(self, batch) -> dict[str, torch.Tensor]:
        t_obs, x_obs, x_obs_clean, t_ext, x_ext_clean, _ = (b[:4].cpu() for b in batch)
        t_pred = torch.linspace(0.0, 1.0, 200)[None] * t_ext[:, -1:]  # (4, 200) dense, over both windows
        x_pred = self.predict(t_obs, x_obs, t_pred).cpu()
        image = render_series(t_obs, x_obs, x_obs_clean, t_ext, x_ext_clean, t_pred, x_pred, "latent ODE")
        return {"series": image[None]}

    # --- inference (used by the deployment; plain tensors in, plain tensors out) ----------
    @torch.no_grad()
    def encode(self, t_obs: torch.Tensor, x_obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Series with times relative to their first observation (t_obs[:, 0] == 0):
        t_obs (B, n), x_obs (B, n, D) -> q(z0): mu, logvar, each (B, latent)."""
        return self.nets["latent_ode"].encode(t_obs.to(self.device), x_obs.to(self.device))

    @torch.no_grad()
    def predict(self, t_obs: torch.Tensor, x_obs: torch.Tensor, t_query: torch.Tensor) -> torch.Tensor:
        """The posterior-mean trajectory decode(z(t; mu)) at t_query (B, m), in the same clock
        as t_obs (t_obs[:, 0] == 0; negative query times extrapolate backwards) -> (B, m, D)."""
        mu, _ = self.encode(t_obs, x_obs)
        return self.trajectory(mu, t_query)

    @torch.no_grad()
    def trajectory(self, z0: torch.Tensor, t_query: torch.Tensor) -> torch.Tensor:
        """decode(z(t; z0)) at t_query (B, m) -> (B, m, D)."""
        return self.nets["latent_ode"].decode(z0.to(self.device), t_query.to(self.device))

    def refine(self, t_obs: torch.Tensor, x_obs: torch.Tensor, z0: torch.Tensor, steps: int,
               lr: float = REFINE_LR) -> torch.Tensor:
        """z0 (B, L) moved by `steps` Adam steps towards the mode of p(z0 | x) under the trained
        model: minimising -log p(x | z0) - log p(z0) with the networks fixed. The recognition
        net's mu is one amortised guess for every series; fitting z0 to the series' own
        observations lowers both its interpolation and extrapolation errors (`genray bench ode`).
        Returns, per series, the z0 with the lowest objective seen (mu itself when no step helps)."""
        model = self.nets["latent_ode"]
        t_obs, x_obs = t_obs.to(self.device), x_obs.to(self.device)
        z = z0.detach().clone().to(self.device).requires_grad_(True)
        opt = torch.optim.Adam([z], lr=lr)
        best = z.detach().clone()
        best_loss = torch.full(z.shape[:1], math.inf, device=z.device)
        with torch.enable_grad():
            for step in range(steps + 1):
                loss = gaussian_nll(x_obs, model.decode(z, t_obs), self.cfg.obs_std) + 0.5 * z.pow(2).sum(1)
                with torch.no_grad():  # keep each series' best z0 so far (the last step's is checked too)
                    better = loss < best_loss  # False for NaN and inf
                    best[better] = z[better]
                    best_loss = torch.where(better, loss, best_loss)
                if step == steps:
                    break
                (grad,) = torch.autograd.grad(loss.sum(), [z])  # z only: the networks get no gradients
                z.grad = torch.nan_to_num(grad)
                opt.step()
        return best
