"""Conditional VAE (Sohn et al. 2015) for labelled (C, S, S) images in [0, 1] (by default the
digits, labels 0..9).

Both networks read the one-hot label (K = the data's number of classes): the encoder models
q(z | x, y), the decoder p(x | z, y), and the prior is N(0, I) whatever the label. Because the
decoder is told the class, the code is free to carry only what the label does not: the style
(a digit's handwriting). That gives the two inference tricks: decode prior codes with label d to
draw class d, and decode the code of image x (encoded with its own label) with another label y
to draw "x's style, class y". Unlabelled data has nothing to condition on: use vae.

Loss: the VAE's true negative ELBO in nats per image (Bernoulli likelihood summed over the
image's C*S*S values + analytic KL), with the KL term warmed up linearly over
`kl_warmup_epochs`; validation reports the true ELBO (factor 1).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from genray.data.images import ImageSpec
from genray.families.base import Family, seeded_normal, StepMetrics
from genray.families.classifier import require_classes
from genray.families.vae import VAEConfig, decoder_net, encoder_trunk, neg_elbo_terms

# The preview's grids show at most this many classes (columns), so that they stay readable.
PREVIEW_CLASSES = 10


class CVAEConfig(VAEConfig):
    """The VAE's settings: the label changes the networks' inputs, not what can be set."""


class CVAE(nn.Module):
    def __init__(self, cfg: CVAEConfig, spec: ImageSpec):
        super().__init__()
        self.num_classes = spec.num_classes
        self.trunk, features = encoder_trunk(cfg, spec)  # image -> (B, F); the label joins after it
        self.merge = nn.Sequential(nn.Linear(features + self.num_classes, cfg.hidden), nn.LeakyReLU(0.2))
        self.to_mu = nn.Linear(cfg.hidden, cfg.latent_dim)
        self.to_logvar = nn.Linear(cfg.hidden, cfg.latent_dim)
        # The VAE's decoder, reading [z, one-hot(y)]: latent_dim + K inputs.
        self.decoder = decoder_net(cfg.model_copy(update={"latent_dim": cfg.latent_dim + self.num_classes}), spec)

    def one_hot(self, labels: torch.Tensor) -> torch.Tensor:
        """(B,) int64 labels -> (B, K) float."""
        return F.one_hot(labels.long(), self.num_classes).float()

    def encode(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.merge(torch.cat([self.trunk(x), self.one_hot(y)], dim=1))  # (B, hidden)
        return self.to_mu(h), self.to_logvar(h).clamp(-20.0, 10.0)  # clamp keeps exp() finite

    def decode_logits(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.decoder(torch.cat([z, self.one_hot(y)], dim=1))  # (B, C, S, S)

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
        require_classes(self.spec, self.name, instead="vae")
        return {"cvae": CVAE(self.cfg, self.spec)}

    def make_optimizers(self):
        params = self.nets["cvae"].parameters()
        return {"cvae": torch.optim.Adam(params, lr=self.cfg.lr, weight_decay=self.cfg.weight_decay)}

    def kl_weight(self, epoch: float) -> float:
        if self.cfg.kl_warmup_epochs == 0:
            return 1.0
        return min(1.0, epoch / self.cfg.kl_warmup_epochs)

    def train_step(self, batch, epoch: float) -> StepMetrics:
        x, y = batch
        logits, mu, logvar = self.train_nets["cvae"](x, y)
        recon, kl = neg_elbo_terms(x, logits, mu, logvar)
        beta = self.kl_weight(epoch)
        loss = (recon + beta * kl).mean()
        self.optimizer_step(loss, "cvae")
        return {"loss": loss.detach(), "recon": recon.mean().detach(), "kl": kl.mean().detach(), "kl_weight": beta}

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
        k = min(self.spec.num_classes, PREVIEW_CLASSES)  # the first k classes are shown
        # samples: 10 rows x k columns; row r shares one code, column d is class d.
        codes = self.prior_codes(10, seed=0).repeat_interleave(k, dim=0)  # (10 k, latent)
        classes = torch.arange(k).repeat(10)  # (10 k,)
        # style_transfer: up to 10 rows of 1 + k: a val image, then its style drawn as 0..k-1.
        xs, ys = x[:10], y[:10]
        drawn = self.style_transfer(xs.repeat_interleave(k, 0), ys.repeat_interleave(k),
                                    torch.arange(k).repeat(len(xs)))  # (k n, C, S, S)
        rows = torch.cat([xs.unsqueeze(1).to(drawn.device), drawn.view(len(xs), k, *drawn.shape[1:])], 1)
        x, y = x[:32], y[:32]
        return {
            "reconstructions": torch.cat([x.to(self.device), self.reconstruct(x, y)]),
            "samples": self.decode(codes, classes),
            "style_transfer": rows.flatten(0, 1),  # ((1 + k) n, C, S, S)
        }

    def quality_samples(self, n: int, seed: int):
        """n samples (n, C, S, S) asked for classes 0, 1, ..., K-1, 0, 1, ... and those labels (n,)."""
        labels = torch.arange(n) % self.spec.num_classes
        return self.decode(self.prior_codes(n, seed), labels), labels

    # --- inference (used by the deployment; plain tensors in, plain tensors out) ----------
    @torch.no_grad()
    def encode(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images (B, C, S, S) and their labels (B,) -> mu, logvar, each (B, latent)."""
        return self.nets["cvae"].encode(x.to(self.device), y.to(self.device))

    @torch.no_grad()
    def decode(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Codes (B, latent) and labels (B,) -> images (B, C, S, S) in [0, 1] (Bernoulli means)."""
        return torch.sigmoid(self.nets["cvae"].decode_logits(z.to(self.device), y.to(self.device)))

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x, y)[0], y)

    def prior_codes(self, n: int, seed: int | None) -> torch.Tensor:
        """n codes from N(0, I); the same seed always gives the same codes."""
        return seeded_normal(n, self.cfg.latent_dim, seed)

    @torch.no_grad()
    def sample(self, label: int, n: int, seed: int | None = None) -> torch.Tensor:
        """n images of class `label` (0..K-1; a digit by default), (n, C, S, S); the same seed
        gives the same images."""
        k = self.spec.num_classes
        if not 0 <= int(label) < k:
            raise ValueError(f"label must be in 0..{k - 1} (the data's {k} classes), got {label}")
        return self.decode(self.prior_codes(n, seed), torch.full((n,), int(label), dtype=torch.long))

    @torch.no_grad()
    def style_transfer(self, x: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor | int) -> torch.Tensor:
        """x's style, class y: encode images x (B, C, S, S) with their own labels (B,), decode
        the posterior means with `targets` (one label, or (B,) labels)."""
        mu, _ = self.encode(x, labels)
        targets = torch.as_tensor(targets, dtype=torch.long).expand(len(x))
        return self.decode(mu, targets)
