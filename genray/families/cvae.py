"""Conditional VAE (Sohn et al. 2015) for labelled 1x28x28 digits in [0, 1].

Both networks read the one-hot label: the encoder models q(z | x, y), the decoder p(x | z, y),
and the prior is N(0, I) whatever the label. Because the decoder is told the digit, the code
is free to carry only what the label does not: the handwriting. That gives the two inference
tricks: decode prior codes with label d to draw digit d, and decode the code of image x
(encoded with its own label) with another label y to draw "x's handwriting, digit y".

Loss: the VAE's true negative ELBO in nats per image (Bernoulli likelihood summed over the 784
pixels + analytic KL), with the KL term warmed up linearly over `kl_warmup_epochs`;
validation reports the true ELBO (factor 1).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from genray.data.images import ImageSpec
from genray.families.base import Family, seeded_normal
from genray.families.vae import VAEConfig, decoder_net, encoder_trunk, neg_elbo_terms

NUM_CLASSES = 10


class CVAEConfig(VAEConfig):
    """The VAE's settings: the label changes the networks' inputs, not what can be set."""


def one_hot(labels: torch.Tensor) -> torch.Tensor:
    """(B,) int64 digits -> (B, 10) float."""
    return F.one_hot(labels.long(), NUM_CLASSES).float()


class CVAE(nn.Module):
    def __init__(self, cfg: CVAEConfig, spec: ImageSpec):
        super().__init__()
        self.trunk, features = encoder_trunk(cfg, spec)  # image -> (B, F); the label joins after it
        self.merge = nn.Sequential(nn.Linear(features + NUM_CLASSES, cfg.hidden), nn.LeakyReLU(0.2))
        self.to_mu = nn.Linear(cfg.hidden, cfg.latent_dim)
        self.to_logvar = nn.Linear(cfg.hidden, cfg.latent_dim)
        # The VAE's decoder, reading [z, one-hot(y)]: latent_dim + 10 inputs.
        self.decoder = decoder_net(cfg.model_copy(update={"latent_dim": cfg.latent_dim + NUM_CLASSES}), spec)

    def encode(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.merge(torch.cat([self.trunk(x), one_hot(y)], dim=1))  # (B, hidden)
        return self.to_mu(h), self.to_logvar(h).clamp(-20.0, 10.0)  # clamp keeps exp() finite

    def decode_logits(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.decoder(torch.cat([z, one_hot(y)], dim=1))  # (B, 1, 28, 28)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mu, logvar = self.encode(x, y)
        std = torch.exp(0.5 * logvar)
        z = mu + torch.randn_like(std) * std  # (B, latent); reparameterised, keeps the gradient
        return self.decode_logits(z, y), mu, logvar


class CVAEFamily(Family):
    name = "cvae"
    Config = CVAEConfig
    metric = "val_neg_elbo"
    mode = "min"
    capabilities = ("sample_digit", "style_transfer")

    def build(self) -> dict[str, nn.Module]:
        return {"cvae": CVAE(self.cfg, self.spec)}

    def make_optimizers(self):
        params = self.nets["cvae"].parameters()
        return {"cvae": torch.optim.Adam(params, lr=self.cfg.lr, weight_decay=self.cfg.weight_decay)}

    def kl_weight(self, epoch: float) -> float:
        if self.cfg.kl_warmup_epochs == 0:
            return 1.0
        return min(1.0, epoch / self.cfg.kl_warmup_epochs)

    def train_step(self, batch, epoch: float) -> dict[str, float]:
        x, y = batch
        logits, mu, logvar = self.train_nets["cvae"](x, y)
        recon, kl = neg_elbo_terms(x, logits, mu, logvar)
        beta = self.kl_weight(epoch)
        loss = (recon + beta * kl).mean()
        self.optimizer_step(loss, "cvae")
        return {"loss": loss.item(), "recon": recon.mean().item(), "kl": kl.mean().item(), "kl_weight": beta}

    @torch.no_grad()
    def eval_batch(self, batch) -> dict[str, float]:
        x, y = batch
        cvae = self.nets["cvae"]
        mu, logvar = cvae.encode(x, y)
        # One posterior sample per image: the usual unbiased estimate of the ELBO.
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        recon, kl = neg_elbo_terms(x, cvae.decode_logits(z, y), mu, logvar)
        mse = (torch.sigmoid(cvae.decode_logits(mu, y)) - x).pow(2).flatten(1).mean(1)
        return {
            "val_neg_elbo": (recon + kl).sum().item(),
            "val_recon": recon.sum().item(),
            "val_kl": kl.sum().item(),
            "val_mse": mse.sum().item(),
        }

    @torch.no_grad()
    def preview(self, batch) -> dict[str, torch.Tensor]:
        x, y = batch
        # samples: 10 rows x 10 columns; row r shares one code, column d is digit d.
        codes = self.prior_codes(10, seed=0).repeat_interleave(NUM_CLASSES, dim=0)  # (100, latent)
        digits = torch.arange(NUM_CLASSES).repeat(10)  # (100,)
        # style_transfer: 10 rows of 11: a val image, then its style drawn as 0..9.
        xs, ys = x[:10], y[:10]
        drawn = self.style_transfer(xs.repeat_interleave(NUM_CLASSES, 0), ys.repeat_interleave(NUM_CLASSES),
                                    torch.arange(NUM_CLASSES).repeat(len(xs)))  # (10 n, 1, 28, 28)
        rows = torch.cat([xs.unsqueeze(1).to(drawn.device), drawn.view(len(xs), NUM_CLASSES, *drawn.shape[1:])], 1)
        x, y = x[:32], y[:32]
        return {
            "reconstructions": torch.cat([x.to(self.device), self.reconstruct(x, y)]),
            "samples": self.decode(codes, digits),
            "style_transfer": rows.flatten(0, 1),  # (11 n, 1, 28, 28)
        }

    def quality_samples(self, n: int, seed: int):
        """n samples asked for digits 0, 1, ..., 9, 0, 1, ... and those digits (n,)."""
        digits = torch.arange(n) % NUM_CLASSES
        return self.decode(self.prior_codes(n, seed), digits), digits

    # --- inference (used by the deployment; plain tensors in, plain tensors out) ----------
    @torch.no_grad()
    def encode(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images (B, 1, 28, 28) and their digits (B,) -> mu, logvar, each (B, latent)."""
        return self.nets["cvae"].encode(x.to(self.device), y.to(self.device))

    @torch.no_grad()
    def decode(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Codes (B, latent) and digits (B,) -> images (B, 1, 28, 28) in [0, 1] (Bernoulli means)."""
        return torch.sigmoid(self.nets["cvae"].decode_logits(z.to(self.device), y.to(self.device)))

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x, y)[0], y)

    def prior_codes(self, n: int, seed: int | None) -> torch.Tensor:
        """n codes from N(0, I); the same seed always gives the same codes."""
        return seeded_normal(n, self.cfg.latent_dim, seed)

    @torch.no_grad()
    def sample(self, digit: int, n: int, seed: int | None = None) -> torch.Tensor:
        """n images of `digit` (0..9), (n, 1, 28, 28); the same seed gives the same images."""
        if not 0 <= int(digit) < NUM_CLASSES:
            raise ValueError(f"digit must be in 0..9, got {digit}")
        return self.decode(self.prior_codes(n, seed), torch.full((n,), int(digit), dtype=torch.long))

    @torch.no_grad()
    def style_transfer(self, x: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor | int) -> torch.Tensor:
        """x's handwriting, digit y: encode images x (B, 1, 28, 28) with their own labels (B,),
        decode the posterior means with `targets` (one digit, or (B,) digits)."""
        mu, _ = self.encode(x, labels)
        targets = torch.as_tensor(targets, dtype=torch.long).expand(len(x))
        return self.decode(mu, targets)
