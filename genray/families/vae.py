"""Variational autoencoder (Kingma & Welling 2014) for (C, S, S) images in [0, 1].

Loss: the negative ELBO in nats per image, with a Bernoulli likelihood summed over the C*S*S
values of an image and the analytic KL of the diagonal Gaussian posterior from N(0, I). During
training the KL term is scaled by a warm-up factor that grows linearly from 0 to 1 over
`kl_warmup_epochs`; validation always reports the true ELBO (factor 1).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from genray.data.images import ImageSpec
from genray.families.base import Family, seeded_normal, StepMetrics
from genray.families.convnets import Stages


class VAEConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    latent_dim: int = Field(8, ge=1, le=512)
    arch: Literal["conv", "dense"] = "conv"
    hidden: int = Field(256, ge=8, le=8192)
    channels: int = Field(32, ge=4, le=512)  # width of the first conv stage (conv arch)
    kl_warmup_epochs: float = Field(1.0, ge=0.0)
    lr: float = Field(1e-3, gt=0.0, le=1.0)
    weight_decay: float = Field(0.0, ge=0.0)


def encoder_trunk(cfg: VAEConfig, spec: ImageSpec) -> tuple[nn.Module, int]:
    """Images (B, C, S, S) -> features (B, F); returns the module and F."""
    if cfg.arch == "dense":
        values = math.prod(spec.shape)
        return nn.Sequential(nn.Flatten(), nn.Linear(values, cfg.hidden), nn.ReLU()), cfg.hidden
    return nn.Sequential(*Stages.of(spec, cfg.channels).encoder(cfg.hidden)), cfg.hidden


def decoder_net(cfg: VAEConfig, spec: ImageSpec) -> nn.Module:
    """Codes (B, latent) -> logits (B, C, S, S)."""
    if cfg.arch == "dense":
        return nn.Sequential(
            nn.Linear(cfg.latent_dim, cfg.hidden), nn.ReLU(),
            nn.Linear(cfg.hidden, math.prod(spec.shape)), nn.Unflatten(1, spec.shape),
        )
    return nn.Sequential(*Stages.of(spec, cfg.channels).decoder(cfg.latent_dim, cfg.hidden, nn.ReLU))


class VAE(nn.Module):
    def __init__(self, cfg: VAEConfig, spec: ImageSpec):
        super().__init__()
        self.trunk, features = encoder_trunk(cfg, spec)
        self.to_mu = nn.Linear(features, cfg.latent_dim)
        self.to_logvar = nn.Linear(features, cfg.latent_dim)
        self.decoder = decoder_net(cfg, spec)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.trunk(x)
        return self.to_mu(h), self.to_logvar(h).clamp(-20.0, 10.0)  # clamp keeps exp() finite

    def decode_logits(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mu, logvar = self.encode(x)
        std = torch.exp(0.5 * logvar)
        z = mu + torch.randn_like(std) * std  # (B, latent); reparameterised, keeps the gradient
        return self.decode_logits(z), mu, logvar


def neg_elbo_terms(x, logits, mu, logvar) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image reconstruction NLL (summed over every value of an image) and KL, both in nats, (B,)."""
    recon = F.binary_cross_entropy_with_logits(logits, x, reduction="none").flatten(1).sum(1)
    kl = 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(1)
    return recon, kl


class VAEFamily(Family):
    name = "vae"
    Config = VAEConfig
    metric = "val_neg_elbo"
    mode = "min"
    capabilities = ("sample", "encode", "decode", "interpolate")

    def build(self) -> dict[str, nn.Module]:
        return {"vae": VAE(self.cfg, self.spec)}

    def make_optimizers(self):
        params = self.nets["vae"].parameters()
        return {"vae": torch.optim.Adam(params, lr=self.cfg.lr, weight_decay=self.cfg.weight_decay)}

    def kl_weight(self, epoch: float) -> float:
        if self.cfg.kl_warmup_epochs == 0:
            return 1.0
        return min(1.0, epoch / self.cfg.kl_warmup_epochs)

    def train_step(self, batch, epoch: float) -> StepMetrics:
        x, _ = batch
        logits, mu, logvar = self.train_nets["vae"](x)
        recon, kl = neg_elbo_terms(x, logits, mu, logvar)
        beta = self.kl_weight(epoch)
        loss = (recon + beta * kl).mean()
        self.optimizer_step(loss, "vae")
        return {"loss": loss.detach(), "recon": recon.mean().detach(), "kl": kl.mean().detach(), "kl_weight": beta}

    @torch.no_grad()
    def eval_batch(self, batch) -> dict[str, float]:
        x, _ = batch
        vae = self.nets["vae"]
        mu, logvar = vae.encode(x)
        # The ELBO is an expectation over q(z|x); one sample per image is its usual unbiased estimate.
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        logits = vae.decode_logits(z)
        recon, kl = neg_elbo_terms(x, logits, mu, logvar)
        # Reconstruction error of the posterior mean, in pixel MSE: comparable across families.
        mse = (torch.sigmoid(vae.decode_logits(mu)) - x).pow(2).flatten(1).mean(1)
        return {
            "val_neg_elbo": (recon + kl).sum().item(),
            "val_recon": recon.sum().item(),
            "val_kl": kl.sum().item(),
            "val_mse": mse.sum().item(),
        }

    @torch.no_grad()
    def preview(self, batch) -> dict[str, torch.Tensor]:
        x, _ = batch
        x = x[:32]
        return {
            "reconstructions": torch.cat([x, self.reconstruct(x)]),
            "samples": self.sample(64, seed=0),
        }

    def quality_samples(self, n: int, seed: int):
        return self.sample(n, seed), None

    # --- inference (used by the deployment; plain tensors in, plain tensors out) ----------
    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, C, S, S) -> mu, logvar, each (B, latent)."""
        return self.nets["vae"].encode(x.to(self.device))

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """(B, latent) -> images (B, C, S, S) in [0, 1] (Bernoulli means)."""
        return torch.sigmoid(self.nets["vae"].decode_logits(z.to(self.device)))

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x)[0])

    def prior_codes(self, n: int, seed: int | None) -> torch.Tensor:
        """n codes from N(0, I); the same seed always gives the same codes."""
        return seeded_normal(n, self.cfg.latent_dim, seed)

    @torch.no_grad()
    def sample(self, n: int, seed: int | None = None) -> torch.Tensor:
        return self.decode(self.prior_codes(n, seed))

    @torch.no_grad()
    def interpolate(self, a: torch.Tensor, b: torch.Tensor, steps: int) -> torch.Tensor:
        """Decode `steps` codes on the line between the posterior means of images a and b."""
        mu, _ = self.encode(torch.stack([a, b]))
        t = torch.linspace(0.0, 1.0, steps, device=mu.device).unsqueeze(1)  # (steps, 1)
        return self.decode((1 - t) * mu[0] + t * mu[1])
