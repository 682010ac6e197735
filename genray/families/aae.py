"""Adversarial autoencoder (Makhzani et al. 2016) for (C, S, S) images in [0, 1].

A deterministic autoencoder whose code distribution q(z) is pushed towards a chosen prior
p(z) by a discriminator on codes, instead of a KL term:
- prior `gaussian`: N(0, I);
- prior `mixture`:  `components` equally weighted Gaussians (std `mixture_std`) with their
  means on a circle of radius `mixture_radius` in the first two code dimensions (the paper's
  2-D mixture of 10), zero in the others.

Each `train_step` runs the paper's two phases on the same batch:
1. reconstruction: encoder and decoder minimise the Bernoulli NLL of x given Dec(Enc(x)),
   summed over the image's C*S*S values;
2. regularisation: the discriminator learns to tell prior samples (real) from codes Enc(x)
   (fake), then the encoder, as the generator, learns to fool it (non-saturating loss).
Three networks and three optimizers: "autoencoder" (encoder + decoder, phase 1),
"discriminator", and "generator" (the encoder again, phase 2, with its own Adam state and
learning rate, as the paper uses separate rates per phase). Each DDP forward gets exactly one
backward: the codes for the D step are drawn under no_grad.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from genray.data.images import ImageSpec
from genray.families.base import Family, seeded_generator, StepMetrics
from genray.families.convnets import Stages, leaky_relu
from genray.families.gan import moment_mse

Beta = Annotated[float, Field(ge=0.0, lt=1.0)]


class AAEConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    latent_dim: int = Field(8, ge=1, le=1024)
    channels: int = Field(32, ge=4, le=512)  # width of the stage at S/2; 2x per stage down
    hidden: int = Field(256, ge=8, le=8192)  # dense layer of encoder and decoder
    disc_hidden: int = Field(256, ge=8, le=8192)  # the code discriminator's MLP width
    prior: Literal["gaussian", "mixture"] = "gaussian"
    components: int = Field(10, ge=2, le=1000)
    mixture_radius: float = Field(4.0, gt=0.0)
    mixture_std: float = Field(0.5, gt=0.0)
    label_smoothing: float = Field(0.1, ge=0.0, lt=0.5)  # D's target for prior samples: 1 - this
    lr_ae: float = Field(1e-3, gt=0.0, le=1.0)
    lr_d: float = Field(2e-4, gt=0.0, le=1.0)
    lr_g: float = Field(2e-4, gt=0.0, le=1.0)
    betas: tuple[Beta, Beta] = (0.5, 0.999)

    @model_validator(mode="after")
    def _mixture_needs_2d(self) -> "AAEConfig":
        if self.prior == "mixture" and self.latent_dim < 2:
            raise ValueError(f"prior 'mixture' places its components on a circle in 2-D: latent_dim must be >= 2, "
                             f"got {self.latent_dim}")
        return self


class Encoder(nn.Module):
    """Image (B, C, S, S) in [0, 1] -> code (B, latent); deterministic."""

    def __init__(self, latent_dim: int, channels: int, hidden: int, spec: ImageSpec):
        super().__init__()
        self.net = nn.Sequential(*Stages.of(spec, channels).encoder(hidden), nn.Linear(hidden, latent_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Decoder(nn.Module):
    """Code (B, latent) -> logits (B, C, S, S)."""

    def __init__(self, latent_dim: int, channels: int, hidden: int, spec: ImageSpec):
        super().__init__()
        self.net = nn.Sequential(*Stages.of(spec, channels).decoder(latent_dim, hidden, leaky_relu))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


class CodeDiscriminator(nn.Module):
    """Code (B, latent) -> raw score (B,): high for samples of the prior."""

    def __init__(self, latent_dim: int, hidden: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(latent_dim, hidden), nn.LeakyReLU(0.2),
            nn.Linear(hidden, hidden), nn.LeakyReLU(0.2),
            nn.Linear(hidden, 1),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z).squeeze(1)


def mixture_means(components: int, radius: float, latent_dim: int) -> torch.Tensor:
    """(components, latent) means, evenly spaced on a circle in dimensions 0 and 1."""
    angle = 2 * math.pi * torch.arange(components, dtype=torch.float32) / components
    means = torch.zeros(components, latent_dim)
    means[:, 0], means[:, 1] = radius * torch.cos(angle), radius * torch.sin(angle)
    return means


def sample_prior(cfg: AAEConfig, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """n codes (n, latent) from the configured prior, on the CPU."""
    eps = torch.randn(n, cfg.latent_dim, generator=generator)
    if cfg.prior == "gaussian":
        return eps
    which = torch.randint(cfg.components, (n,), generator=generator)
    return mixture_means(cfg.components, cfg.mixture_radius, cfg.latent_dim)[which] + cfg.mixture_std * eps


class AAEFamily(Family):
    name = "aae"
    Config = AAEConfig
    metric = "val_mse"
    mode = "min"
    adversarial = True
    capabilities = ("sample", "encode", "decode")
    info_fields = ("prior",)

    def build(self) -> dict[str, nn.Module]:
        c = self.cfg
        return {
            "encoder": Encoder(c.latent_dim, c.channels, c.hidden, self.spec),
            "decoder": Decoder(c.latent_dim, c.channels, c.hidden, self.spec),
            "discriminator": CodeDiscriminator(c.latent_dim, c.disc_hidden),
        }

    def make_optimizers(self):
        c = self.cfg
        enc, dec, disc = (self.nets[k] for k in ("encoder", "decoder", "discriminator"))
        return {
            "autoencoder": torch.optim.Adam([*enc.parameters(), *dec.parameters()], lr=c.lr_ae, betas=c.betas),
            "discriminator": torch.optim.Adam(disc.parameters(), lr=c.lr_d, betas=c.betas),
            "generator": torch.optim.Adam(enc.parameters(), lr=c.lr_g, betas=c.betas),
        }

    def train_step(self, batch, epoch: float) -> StepMetrics:
        c = self.cfg
        enc, dec, disc = (self.train_nets[k] for k in ("encoder", "decoder", "discriminator"))
        x, _ = batch
        n = x.shape[0]

        # 1. reconstruction phase
        logits = dec(enc(x))
        recon = F.binary_cross_entropy_with_logits(logits, x, reduction="none").flatten(1).sum(1).mean()
        self.optimizer_step(recon, "autoencoder")

        # 2a. regularisation phase, discriminator: prior samples are "real", codes are "fake"
        with torch.no_grad():
            codes = enc(x)  # (B, latent)
        prior = sample_prior(c, n).to(self.device)
        scores = disc(torch.cat([prior, codes]))
        s_prior, s_code = scores.split(n)
        d_loss = (
            F.binary_cross_entropy_with_logits(s_prior, torch.full_like(s_prior, 1.0 - c.label_smoothing))
            + F.binary_cross_entropy_with_logits(s_code, torch.zeros_like(s_code))
        )
        self.optimizer_step(d_loss, "discriminator")

        # 2b. regularisation phase, generator: the encoder learns to make codes D takes for prior samples
        g_loss = F.softplus(-disc(enc(x))).mean()  # non-saturating
        # D's weights collect gradients too; its next step zeroes them first.
        self.optimizer_step(g_loss, "generator")
        return {
            "loss": recon.detach(),
            "recon": recon.detach(),
            "d_loss": d_loss.detach(),
            "g_loss": g_loss.detach(),
            "d_prior": s_prior.mean().detach(),
            "d_code": s_code.mean().detach(),
        }

    @torch.no_grad()
    def eval_batch(self, batch) -> dict[str, float]:
        x, _ = batch
        z = self.encode(x)
        logits = self.nets["decoder"](z)
        recon = F.binary_cross_entropy_with_logits(logits, x, reduction="none").flatten(1).sum(1)
        mse = (torch.sigmoid(logits) - x).pow(2).flatten(1).mean(1)
        prior = sample_prior(self.cfg, len(x), torch.Generator().manual_seed(0)).to(self.device)
        d = self.nets["discriminator"]
        return {
            "val_mse": mse.sum().item(),
            "val_recon": recon.sum().item(),
            # How far q(z) is from the prior in its first two moments (0 = matched).
            "val_code_moment_mse": len(x) * moment_mse(z, prior).item(),
            "val_d_prior": d(prior).sum().item(),
            "val_d_code": d(z).sum().item(),
        }

    @torch.no_grad()
    def preview(self, batch) -> dict[str, torch.Tensor]:
        x, _ = batch
        x = x[:32]
        return {"reconstructions": torch.cat([x, self.reconstruct(x)]), "samples": self.sample(64, seed=0)}

    def quality_samples(self, n: int, seed: int):
        return self.sample(n, seed), None

    # --- inference (used by the deployment; plain tensors in, plain tensors out) ----------
    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, S, S) in [0, 1] -> codes (B, latent)."""
        return self.nets["encoder"](x.to(self.device))

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """(B, latent) -> images (B, C, S, S) in [0, 1] (Bernoulli means)."""
        return torch.sigmoid(self.nets["decoder"](z.to(self.device)))

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))

    def prior_codes(self, n: int, seed: int | None) -> torch.Tensor:
        """n codes from the prior; the same seed always gives the same codes."""
        return sample_prior(self.cfg, n, seeded_generator(seed))

    @torch.no_grad()
    def sample(self, n: int, seed: int | None = None) -> torch.Tensor:
        return self.decode(self.prior_codes(n, seed))

