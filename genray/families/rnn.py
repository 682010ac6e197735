"""The RNN baseline for `latent_ode` (Chen et al. 2018, section 5.1): same series, same metrics.

A GRU reads the observations in time order; at each it gets (value, gap to the time it must
predict next), as the paper's baseline gets the time differences, and predicts the value there
as x_i + out(h_i) (a residual step).
Training: one-step-ahead MSE against the noisy observations of the observed window (teacher
forcing), as latent_ode trains on the observed window only. `min_read_fraction` < 1 trains the
rollout too, as latent_ode trains extrapolation: the GRU reads the first k observations (k drawn
per batch from [ceil(min_read_fraction * n), n]) and rolls out over the remaining observed times on
its own predictions. It extrapolates worse than teacher forcing alone, so it is off by default.
The rollout steps from target to target, so it does well where the extrapolation targets come at
the gaps it was trained on. The data's default targets are every time of a grid with the observed
grid's spacing (the paper's "100 time points extending beyond"): at 100 observed points those are
exactly the training gaps; at 30 most training gaps are 2-5 grid steps and the long rollout drifts.
Validation, on the same held-out series and points as latent_ode:
  val_mse          one-step-ahead predictions at the observed times 2..n vs the noise-free curve
  val_extrap_mse   after the last observation the GRU feeds its own predictions back
                   (autoregressive rollout) to each extrapolation target time
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from genray.families.base import Family, StepMetrics
from genray.families.latent_ode import SeriesDataConfig, load_series, render_series, series_mse


class RNNConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    obs_dim: int = Field(2, ge=1, le=1024)
    # 40 units: 5,482 parameters, as many as latent_ode's defaults (5,472), so the bench compares
    # models of one size.
    hidden: int = Field(40, ge=1, le=4096)
    lr: float = Field(1e-2, gt=0.0, le=1.0)
    lr_decay: float = Field(0.995, gt=0.0, le=1.0)  # lr * lr_decay**epoch (latent_ode: 0.998, each its best)
    # Training only: teacher forcing over a random prefix of at least this fraction of the
    # observations, free-running rollout over the rest (latent_ode's min_encoded_fraction);
    # 1: teacher forcing throughout (better, see above).
    min_read_fraction: float = Field(1.0, gt=0.0, le=1.0)


class GRUForecaster(nn.Module):
    def __init__(self, cfg: RNNConfig):
        super().__init__()
        self.gru = nn.GRU(cfg.obs_dim + 1, cfg.hidden, batch_first=True)
        self.out = nn.Linear(cfg.hidden, cfg.obs_dim)

    def step(self, x: torch.Tensor, gap: torch.Tensor, h: torch.Tensor | None):
        """x (B, k, D) at some times, gap (B, k) to the next wanted time -> predictions there (B, k, D), h."""
        out, h = self.gru(torch.cat([x, gap.unsqueeze(-1)], dim=-1), h)
        return x + self.out(out), h

    def forward(self, t_obs: torch.Tensor, x_obs: torch.Tensor, read: int | None = None) -> torch.Tensor:
        """Predictions of observations 2..n: (B, n - 1, D). The first `read` observations (all by
        default) are read as given (one step ahead each); from there the GRU rolls out over the
        remaining observed times on its own predictions."""
        n = t_obs.shape[1]
        if read is None or read >= n:
            pred, _ = self.step(x_obs[:, :-1], t_obs[:, 1:] - t_obs[:, :-1], None)
            return pred
        return self.rollout(t_obs[:, :read], x_obs[:, :read], t_obs[:, read:], with_read=True)

    def rollout(self, t_obs: torch.Tensor, x_obs: torch.Tensor, t_query: torch.Tensor,
                with_read: bool = False) -> torch.Tensor:
        """Read all observations, then predict at each later query time (B, m), increasing,
        feeding predictions back in -> (B, m, D); with_read: also the one-step-ahead predictions
        of observations 2..n made while reading -> (B, n - 1 + m, D)."""
        next_t = torch.cat([t_obs[:, 1:], t_query[:, :1]], dim=1)  # (B, n)
        pred, h = self.step(x_obs, next_t - t_obs, None)
        x = pred[:, -1:]  # (B, 1, D) at t_query[:, 0]
        outs = [pred] if with_read else [x]
        for j in range(1, t_query.shape[1]):
            x, h = self.step(x, t_query[:, j : j + 1] - t_query[:, j - 1 : j], h)
            outs.append(x)
        return torch.cat(outs, dim=1)


class RNNFamily(Family):
    name = "rnn"
    Config = RNNConfig
    DataConfig = SeriesDataConfig
    metric = "val_mse"
    mode = "min"

    @classmethod
    def load_data(cls, data_cfg: SeriesDataConfig):
        return load_series(data_cfg)

    def build(self) -> dict[str, nn.Module]:
        return {"rnn": GRUForecaster(self.cfg)}

    def make_optimizers(self):
        return {"rnn": torch.optim.Adam(self.nets["rnn"].parameters(), lr=self.cfg.lr)}

    def train_step(self, batch, epoch: float) -> StepMetrics:
        t_obs, x_obs = batch[0], batch[1]  # (B, n), (B, n, D); the clean values stay unseen
        n = t_obs.shape[1]
        low = max(1, math.ceil(self.cfg.min_read_fraction * n))
        k = int(torch.randint(low, n + 1, ())) if low < n else n
        pred = self.train_nets["rnn"](t_obs, x_obs, read=k)  # (B, n - 1, D)
        loss = F.mse_loss(pred, x_obs[:, 1:])
        for group in self.optimizers["rnn"].param_groups:
            group["lr"] = self.cfg.lr * self.cfg.lr_decay**epoch
        self.optimizer_step(loss, "rnn")
        return {"loss": loss.detach()}

    @torch.no_grad()
    def eval_batch(self, batch) -> dict[str, float]:
        t_obs, x_obs, x_obs_clean, t_ext, x_ext_clean, _ = batch
        rnn = self.nets["rnn"]
        return {
            "val_mse": series_mse(rnn(t_obs, x_obs), x_obs_clean[:, 1:]).sum().item(),
            "val_extrap_mse": series_mse(rnn.rollout(t_obs, x_obs, t_ext), x_ext_clean).sum().item(),
        }

    @torch.no_grad()
    def preview(self, batch) -> dict[str, torch.Tensor]:
        t_obs, x_obs, x_obs_clean, t_ext, x_ext_clean, _ = (b[:4].cpu() for b in batch)
        rnn = self.nets["rnn"]
        t_pred = torch.cat([t_obs[:, 1:], t_ext], dim=1)
        x_pred = torch.cat([rnn(t_obs, x_obs), rnn.rollout(t_obs, x_obs, t_ext)], dim=1).cpu()
        image = render_series(t_obs, x_obs, x_obs_clean, t_ext, x_ext_clean, t_pred, x_pred, "RNN baseline")
        return {"series": image[None]}

    # --- inference ---------------------------------------------------------------------------
    @torch.no_grad()
    def forecast(self, t_obs: torch.Tensor, x_obs: torch.Tensor, t_query: torch.Tensor) -> torch.Tensor:
        """Predictions at query times (B, m) after the last observation -> (B, m, D)."""
        return self.nets["rnn"].rollout(t_obs.to(self.device), x_obs.to(self.device), t_query.to(self.device))
