"""VAE + GAN (Larsen et al. 2016, "Autoencoding beyond pixels using a learned similarity metric").

Three networks, each with its own optimizer:
- encoder    x -> q(z|x) = N(mu, diag sigma^2)
- decoder    z -> x~, the DCGAN generator of genray.families.gan (tanh output; data in [-1, 1])
- discriminator  x -> (Dis_l(x), D(x)): a hidden feature map and a real/fake score

The VAE's pixel-wise likelihood is replaced by a Gaussian likelihood in D's feature layer l:
    L_prior = KL(q(z|x) || N(0, I))
    L_llike = 1/2 ||Dis_l(x~) - Dis_l(x)||^2,  x~ = Dec(z), z ~ q(z|x)   (unit variance, summed)
    L_GAN   = log D(x) + log(1 - D(Dec(z))) + log(1 - D(Dec(z_p))),  z_p ~ N(0, I)
and, as in the paper's Algorithm 1,
    encoder       minimises  L_prior + L_llike
    decoder       minimises  gamma * L_llike - L_GAN   (non-saturating form of -L_GAN)
    discriminator maximises  L_GAN
`gamma` weighs the decoder's content (reconstruction) against style (fooling D).

One `train_step`: a forward through encoder and decoder, the D step on those (detached) images,
then one backward for encoder and decoder. Two details make that one backward exact:
the decoder sees z twice, once as is (for L_llike) and once detached (for L_GAN), so the GAN
gradient reaches the decoder but not the encoder, as the algorithm says; and the gradient
flowing from the decoder into z is scaled by 1/gamma, so the encoder's share of gamma * L_llike
is L_llike. Each DDP-wrapped forward gets exactly one backward.

The networks take (C, S, S) images (genray.families.convnets sets their stages). Checkpoints are
ranked by sample_fid, which needs a classifier trained on labelled images; on unlabelled data
they are ranked by val_moment_mse instead (`metric_for`).
"""

from __future__ import annotations

from typing import Annotated

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from genray.data.images import ImageSpec
from genray.families.base import Family, seeded_normal, StepMetrics
from genray.families.convnets import Stages, leaky_relu
from genray.families.gan import Generator, moment_mse, sample_ranked_metric

Beta = Annotated[float, Field(ge=0.0, lt=1.0)]


class VAEGANConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    latent_dim: int = Field(16, ge=1, le=1024)
    channels: int = Field(32, ge=4, le=512)  # width of the stage at S/2; 2x per stage down (all three nets)
    hidden: int = Field(256, ge=8, le=8192)  # encoder's dense layer
    # Decoder: gamma * L_llike + L_GAN. L_llike sums over D's bottom feature map (2c*7*7 values
    # on digits, tens of nats) while the GAN loss is a few nats; a small gamma lets the GAN
    # shape the samples.
    gamma: float = Field(0.05, gt=0.0)
    kl_weight: float = Field(1.0, ge=0.0)  # encoder: kl_weight * L_prior + L_llike
    label_smoothing: float = Field(0.1, ge=0.0, lt=0.5)  # D's target for real images: 1 - this
    dropout: float = Field(0.3, ge=0.0, lt=1.0)  # in D's head, after the Dis_l features
    lr_enc: float = Field(5e-4, gt=0.0, le=1.0)
    lr_dec: float = Field(5e-4, gt=0.0, le=1.0)
    lr_d: float = Field(2e-4, gt=0.0, le=1.0)
    betas: tuple[Beta, Beta] = (0.5, 0.999)


class Encoder(nn.Module):
    """Image (B, C, S, S) in [-1, 1] -> mu, logvar, each (B, latent)."""

    def __init__(self, latent_dim: int, channels: int, hidden: int, spec: ImageSpec):
        super().__init__()
        self.trunk = nn.Sequential(*Stages.of(spec, channels).encoder(hidden))  # (B, hidden)
        self.to_mu = nn.Linear(hidden, latent_dim)
        self.to_logvar = nn.Linear(hidden, latent_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.trunk(x)
        return self.to_mu(h), self.to_logvar(h).clamp(-20.0, 10.0)  # clamp keeps exp() finite


class FeatureDiscriminator(nn.Module):
    """Image (B, C, S, S) in [-1, 1] -> (Dis_l features (B, F), raw score (B,)), F the values of
    the bottom feature map (2c*7*7 on digits).

    Dis_l is the last conv layer's activation, taken before any dropout so that the learned
    similarity is not noise; dropout regularises only the score head."""

    def __init__(self, channels: int, dropout: float, spec: ImageSpec):
        super().__init__()
        stages = Stages.of(spec, channels)
        self.features = nn.Sequential(*stages.down(leaky_relu), nn.Flatten())
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(stages.features, 1))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.features(x)
        return h, self.head(h).squeeze(1)


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) per sample, (B,), in nats."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(1)


def scale_grad(x: torch.Tensor, scale: float) -> torch.Tensor:
    """x in the forward pass; the gradient flowing back through it is multiplied by `scale`."""
    return x.detach() + scale * (x - x.detach())


class VAEGANFamily(Family):
    name = "vaegan"
    Config = VAEGANConfig
    metric = "sample_fid"
    mode = "min"
    adversarial = True
    capabilities = ("sample", "encode", "decode")

    @classmethod
    def metric_for(cls, data_cfg) -> str:
        return sample_ranked_metric(cls, data_cfg)

    def build(self) -> dict[str, nn.Module]:
        c = self.cfg
        return {
            "encoder": Encoder(c.latent_dim, c.channels, c.hidden, self.spec),
            "decoder": Generator(c.latent_dim, c.channels, self.spec),
            "discriminator": FeatureDiscriminator(c.channels, c.dropout, self.spec),
        }

    def make_optimizers(self):
        c = self.cfg
        lrs = {"encoder": c.lr_enc, "decoder": c.lr_dec, "discriminator": c.lr_d}
        return {k: torch.optim.Adam(self.nets[k].parameters(), lr=lr, betas=c.betas) for k, lr in lrs.items()}

    def train_step(self, batch, epoch: float) -> StepMetrics:
        c = self.cfg
        enc, dec, disc = (self.train_nets[k] for k in ("encoder", "decoder", "discriminator"))
        x, _ = batch
        real = x * 2.0 - 1.0  # (B, C, S, S) in [-1, 1], the decoder's tanh range
        n = real.shape[0]

        mu, logvar = enc(real)  # (B, latent) each
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)  # reparameterised
        z_p = torch.randn_like(z)  # codes from the prior
        # One decoder pass over [z with the 1/gamma gradient scale, z cut off from the encoder, z_p].
        x_rec, x_rec_gan, x_p = dec(torch.cat([scale_grad(z, 1.0 / c.gamma), z.detach(), z_p])).split(n)

        # --- discriminator: real vs both kinds of fakes, as of the current decoder -----------
        _, scores = disc(torch.cat([real, x_rec.detach(), x_p.detach()]))
        s_real, s_rec, s_p = scores.split(n)
        target = torch.full_like(s_real, 1.0 - c.label_smoothing)  # one-sided label smoothing
        d_loss = (
            F.binary_cross_entropy_with_logits(s_real, target)
            + F.binary_cross_entropy_with_logits(s_rec, torch.zeros_like(s_rec))
            + F.binary_cross_entropy_with_logits(s_p, torch.zeros_like(s_p))
        )
        self.optimizer_step(d_loss, "discriminator")

        # --- encoder and decoder, against the updated discriminator ---------------------------
        feats, scores = disc(torch.cat([real, x_rec, x_rec_gan, x_p]))
        f_real, f_rec, _, _ = feats.split(n)
        _, _, s_rec_gan, s_p = scores.split(n)
        llike = 0.5 * (f_rec - f_real.detach()).pow(2).sum(1).mean()  # Gaussian NLL in Dis_l, + const
        prior = kl_divergence(mu, logvar).mean()
        gan = F.softplus(-s_rec_gan).mean() + F.softplus(-s_p).mean()  # non-saturating -L_GAN
        # Encoder: kl_weight * prior + llike (llike reaches it through the 1/gamma scale);
        # decoder: gamma * llike + gan. D's weights collect gradients too; its next step zeroes them.
        loss = c.kl_weight * prior + c.gamma * llike + gan
        self.optimizer_step(loss, "encoder", "decoder")
        return {
            "loss": loss.detach(),
            "d_loss": d_loss.detach(),
            "prior": prior.detach(),
            "llike": llike.detach(),
            "gan": gan.detach(),
            "d_real": s_real.mean().detach(),
            "d_fake": s_p.mean().detach(),
        }

    @torch.no_grad()
    def eval_batch(self, batch) -> dict[str, float]:
        x, _ = batch
        n = x.shape[0]
        mu, logvar = self.encode(x)
        mse = (self.decode(mu) - x).pow(2).flatten(1).mean(1)  # reconstruction of the posterior mean
        return {
            "val_moment_mse": n * moment_mse(self.sample(n, seed=0), x).item(),
            "val_mse": mse.sum().item(),
            "val_kl": kl_divergence(mu, logvar).sum().item(),
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
    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, C, S, S) in [0, 1] -> mu, logvar, each (B, latent)."""
        return self.nets["encoder"](x.to(self.device) * 2.0 - 1.0)

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """(B, latent) -> images (B, C, S, S) in [0, 1]."""
        return (self.nets["decoder"](z.to(self.device)) + 1.0) / 2.0

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x)[0])

    def prior_codes(self, n: int, seed: int | None) -> torch.Tensor:
        """n codes from N(0, I); the same seed always gives the same codes."""
        return seeded_normal(n, self.cfg.latent_dim, seed)

    @torch.no_grad()
    def sample(self, n: int, seed: int | None = None) -> torch.Tensor:
        return self.decode(self.prior_codes(n, seed))
