"""Autoencoder, dense or convolutional, optionally denoising, for (C, S, S) images in [0, 1].

A deterministic code of `latent_dim` numbers per image. With `noise` set, the encoder sees a
corrupted image and the loss compares the reconstruction with the *clean* one (Vincent et al.
2008): `gaussian` adds N(0, noise_level^2) to every value (then clips to [0, 1], so a noisy
image is still an image), `masking` zeroes exactly round(noise_level * S * S) pixels per image,
every channel of each. The training loss is the BCE (summed over the image's values, like the
VAE's likelihood) or the MSE; the family metric is always `val_mse`, the mean squared error per
value of the reconstructions of *clean* val images, so every setting is ranked on the same
scale (and against PCA at the same code size).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from genray.data.images import ImageSpec
from genray.families.base import Family, seeded_generator, StepMetrics
from genray.families.vae import VAEConfig, decoder_net, encoder_trunk

NoiseKind = Literal["none", "gaussian", "masking"]


class AEConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    latent_dim: int = Field(16, ge=1, le=512)
    arch: Literal["conv", "dense"] = "conv"
    hidden: int = Field(256, ge=8, le=8192)
    channels: int = Field(32, ge=4, le=512)  # width of the first conv stage (conv arch)
    # Denoising: what corrupts the encoder's input during training ("none": a plain AE).
    noise: NoiseKind = "none"
    noise_level: float = Field(0.3, ge=0.0, le=1.0)  # gaussian: std; masking: fraction zeroed
    loss: Literal["bce", "mse"] = "bce"
    lr: float = Field(2e-3, gt=0.0, le=1.0)
    weight_decay: float = Field(0.0, ge=0.0)

    @property
    def denoising(self) -> bool:
        return self.noise != "none" and self.noise_level > 0


def corrupt(
    x: torch.Tensor, noise: str, level: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """A noisy copy of images x (B, C, H, W) in [0, 1]; a CPU `generator` makes it reproducible."""
    if noise == "none" or level == 0:
        return x
    if noise == "gaussian":
        if generator is None:
            eps = torch.randn_like(x)
        else:
            eps = torch.randn(x.shape, generator=generator).to(x.device)
        return (x + level * eps).clamp(0.0, 1.0)
    if noise == "masking":
        b, _, h, w = x.shape
        k = round(level * h * w)
        if generator is None:
            scores = torch.rand(b, h * w, device=x.device)
        else:
            scores = torch.rand(b, h * w, generator=generator).to(x.device)
        # The k pixels with the lowest scores: a uniformly random subset of exactly k per image,
        # each zeroed in every channel.
        dropped = scores.argsort(dim=1)[:, :k]
        keep = torch.ones(b, h * w, dtype=x.dtype, device=x.device).scatter_(1, dropped, 0.0)
        return x * keep.view(b, 1, h, w)
    raise ValueError(f"noise must be 'none', 'gaussian' or 'masking', got {noise!r}")


class AE(nn.Module):
    def __init__(self, cfg: AEConfig, spec: ImageSpec):
        super().__init__()
        # The same encoder trunk and decoder as the VAE, so the two compare like for like.
        shape = VAEConfig(latent_dim=cfg.latent_dim, arch=cfg.arch, hidden=cfg.hidden, channels=cfg.channels)
        self.trunk, features = encoder_trunk(shape, spec)
        self.to_code = nn.Linear(features, cfg.latent_dim)
        self.decoder = decoder_net(shape, spec)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.to_code(self.trunk(x))  # (B, latent)

    def decode_logits(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)  # (B, C, S, S)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode_logits(self.encode(x))


def reconstruction_loss(logits: torch.Tensor, target: torch.Tensor, kind: str) -> torch.Tensor:
    """Per-image loss (B,): BCE summed over the image's values (nats), or MSE averaged over them."""
    if kind == "bce":
        return F.binary_cross_entropy_with_logits(logits, target, reduction="none").flatten(1).sum(1)
    return (torch.sigmoid(logits) - target).pow(2).flatten(1).mean(1)


def pixel_mse(images: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error per value (pixel and channel), per image (B,)."""
    return (images - target).pow(2).flatten(1).mean(1)


class AEFamily(Family):
    name = "ae"
    Config = AEConfig
    metric = "val_mse"
    mode = "min"
    capabilities = ("encode", "decode", "reconstruct", "denoise")
    info_fields = ("noise", "noise_level")

    # Validation corrupts with this seed, so val_denoise_mse is comparable from epoch to epoch.
    EVAL_NOISE_SEED = 0

    def build(self) -> dict[str, nn.Module]:
        return {"ae": AE(self.cfg, self.spec)}

    def make_optimizers(self):
        params = self.nets["ae"].parameters()
        return {"ae": torch.optim.Adam(params, lr=self.cfg.lr, weight_decay=self.cfg.weight_decay)}

    def train_step(self, batch, epoch: float) -> StepMetrics:
        x, _ = batch
        noisy = corrupt(x, self.cfg.noise, self.cfg.noise_level)  # the input is noisy ...
        logits = self.train_nets["ae"](noisy)
        loss = reconstruction_loss(logits, x, self.cfg.loss).mean()  # ... the target is clean
        self.optimizer_step(loss, "ae")
        return {"loss": loss.detach(), "mse": pixel_mse(torch.sigmoid(logits.detach()), x).mean().detach()}

    @torch.no_grad()
    def eval_batch(self, batch) -> dict[str, float]:
        x, _ = batch
        ae = self.nets["ae"]
        logits = ae(x)
        out = {
            "val_mse": pixel_mse(torch.sigmoid(logits), x).sum().item(),
            "val_loss": reconstruction_loss(logits, x, self.cfg.loss).sum().item(),
        }
        if self.cfg.denoising:
            noisy = corrupt(x, self.cfg.noise, self.cfg.noise_level, seeded_generator(self.EVAL_NOISE_SEED))
            out["val_denoise_mse"] = pixel_mse(torch.sigmoid(ae(noisy)), x).sum().item()
            out["val_noisy_mse"] = pixel_mse(noisy, x).sum().item()  # what doing nothing scores
        return out

    @torch.no_grad()
    def preview(self, batch) -> dict[str, torch.Tensor]:
        x, _ = batch
        x = x[:32]
        out = {"reconstructions": torch.cat([x, self.reconstruct(x)])}
        if self.cfg.denoising:
            noisy = self.add_noise(x, seed=0)
            out["denoising"] = torch.cat([noisy, self.reconstruct(noisy)])
        return out

    # --- inference (used by the deployment; plain tensors in, plain tensors out) ----------
    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, S, S) -> codes (B, latent)."""
        return self.nets["ae"].encode(x.to(self.device))

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """(B, latent) -> images (B, C, S, S) in [0, 1]."""
        return torch.sigmoid(self.nets["ae"].decode_logits(z.to(self.device)))

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))

    def add_noise(
        self, x: torch.Tensor, seed: int | None = None, noise: str | None = None, level: float | None = None
    ) -> torch.Tensor:
        """x corrupted as in training (or with the given noise kind and level); seeded: reproducible."""
        noise = self.cfg.noise if noise is None else noise
        level = self.cfg.noise_level if level is None else level
        return corrupt(x.to(self.device), noise, level, seeded_generator(seed))

    @torch.no_grad()
    def denoise(
        self,
        x: torch.Tensor,
        *,
        add_noise: bool = False,
        seed: int | None = None,
        noise: str | None = None,
        level: float | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Reconstruct x as given (already noisy), or first corrupt it (add_noise=True).
        Returns (the network's input, its reconstruction), each (B, C, S, S)."""
        noisy = self.add_noise(x, seed, noise, level) if add_noise else x.to(self.device)
        return noisy, self.reconstruct(noisy)
