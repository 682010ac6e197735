"""DCGAN (Radford et al. 2016) with the usual stabilising tricks, for (C, S, S) images in [0, 1].

The tricks (the course's list, and Soumith Chintala's "ganhacks"):
- codes from a normal N(0, I), not a uniform;
- tanh output: the family maps data to [-1, 1] for training and maps samples back to [0, 1];
- LeakyReLU everywhere, strided convolutions instead of pooling;
- one-sided label smoothing: D's target for real images is 1 - label_smoothing, fakes stay 0;
- label noise: a random `label_noise` share of D's labels is flipped at every D step;
- dropout in D;
- and inference from an exponential moving average of G's weights (`ema`), which smooths out
  the step-to-step oscillation of the game (Yazici et al. 2019).

Losses (`loss`), as D / G objectives on D's raw scores s:
- bce:     D: cross-entropy real vs fake;  G: non-saturating  -log sigmoid(s(G(z)))
- hinge:   D: relu(1 - s_real) + relu(1 + s_fake);  G: -s(G(z))  (Lim & Ye 2017)
- lsgan:   D: (s_real - 1)^2 / 2 + s_fake^2 / 2;  G: (s(G(z)) - 1)^2 / 2  (Mao et al. 2017)
- wgan-gp: critic: s_fake - s_real + gp_weight * (||grad s(x_hat)|| - 1)^2 on interpolates
           x_hat between real and fake images, per sample; G: -s(G(z))  (Gulrajani et al. 2017)
Smoothing applies to the losses with targets (bce, lsgan), label flips to bce, lsgan and hinge;
a Wasserstein critic has no labels, so wgan-gp uses neither. The critic never uses batch norm
(it would couple the samples that the gradient penalty treats one by one), and the same
discriminator is used for every loss.

One `train_step` makes `n_critic` D steps (on the same real batch, each with fresh fakes) and
then one G step. Every DDP-wrapped forward that needs gradients gets exactly one backward: the
fakes for D steps are drawn under no_grad, and the D step scores real, fake (and for wgan-gp
the interpolates) in one forward, so the gradient penalty's create_graph pass and the loss'
backward go through a single DDP forward.

Checkpoints are ranked by sample_fid, which needs a classifier trained on labelled images; on
unlabelled data they are ranked by val_moment_mse instead (`metric_for`).
"""

from __future__ import annotations

import copy
import math
from typing import Annotated, Literal, Optional

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from genray.data.images import ImageSpec
from genray.families.base import Family, seeded_normal, StepMetrics
from genray.families.convnets import Stages, leaky_relu

LOSSES = ("bce", "hinge", "lsgan", "wgan-gp")
Beta = Annotated[float, Field(ge=0.0, lt=1.0)]


class GANConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    latent_dim: int = Field(32, ge=1, le=1024)
    channels: int = Field(32, ge=4, le=512)  # width of the stage at S/2; 2x per stage down (G and D)
    loss: Literal["bce", "hinge", "lsgan", "wgan-gp"] = "bce"
    # Critic steps per generator step; None: 5 for wgan-gp (as in the paper), else 1.
    n_critic: Optional[int] = Field(None, ge=1, le=100)
    gp_weight: float = Field(10.0, ge=0.0)
    label_smoothing: float = Field(0.1, ge=0.0, lt=0.5)  # real target = 1 - this
    label_noise: float = Field(0.05, ge=0.0, lt=0.5)  # share of D's labels flipped
    dropout: float = Field(0.3, ge=0.0, lt=1.0)  # in D
    d_norm: Literal["none", "layer"] = "none"  # normalisation in D; never batch norm
    # DCGAN's 2e-4 is tuned for long runs; with the averaged G, 1e-3 reaches good samples in ~1000 steps.
    lr_g: float = Field(1e-3, gt=0.0, le=1.0)
    lr_d: float = Field(1e-3, gt=0.0, le=1.0)
    betas: tuple[Beta, Beta] = (0.5, 0.999)
    # Decay of an exponential moving average of G's weights that inference uses (Yazici et al.
    # 2019): it smooths out the oscillation of the two-player game. 0 = use G itself.
    ema: float = Field(0.995, ge=0.0, lt=1.0)

    @property
    def critic_steps(self) -> int:
        if self.n_critic is not None:
            return self.n_critic
        return 5 if self.loss == "wgan-gp" else 1


class Generator(nn.Module):
    """Code (B, latent) -> image (B, C, S, S) in [-1, 1]."""

    def __init__(self, latent_dim: int, channels: int, spec: ImageSpec):
        super().__init__()
        stages = Stages.of(spec, channels)
        self.net = nn.Sequential(
            nn.Linear(latent_dim, stages.features, bias=False),
            nn.Unflatten(1, stages.bottom), nn.BatchNorm2d(stages.bottom[0]), nn.LeakyReLU(0.2),
            *stages.up(leaky_relu, batch_norm=True), nn.Tanh(),  # (B, C, S, S)
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


class Discriminator(nn.Module):
    """Image (B, C, S, S) in [-1, 1] -> one raw score per image (B,); no batch norm."""

    def __init__(self, channels: int, dropout: float, spec: ImageSpec, norm: str = "none"):
        super().__init__()
        stages = Stages.of(spec, channels)
        # GroupNorm with one group = layer norm over (C, H, W) of each sample, on its own.
        norm_layer = (lambda ch: nn.GroupNorm(1, ch)) if norm == "layer" else (lambda ch: nn.Identity())
        self.net = nn.Sequential(
            *stages.down(leaky_relu, norm=norm_layer, dropout=dropout),  # (B, *stages.bottom)
            nn.Flatten(),
            nn.Linear(stages.features, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(1)


# --- losses (plain functions of scores, so tests check them by hand) --------------------------

def noisy_labels(n_real: int, n_fake: int, flip: float, device=None) -> torch.Tensor:
    """D's labels for [real..., fake...]: 1 = real, 0 = fake, each flipped with probability `flip`."""
    labels = torch.cat([torch.ones(n_real, device=device), torch.zeros(n_fake, device=device)])
    if flip > 0:
        flipped = torch.rand(len(labels), device=device) < flip
        labels = torch.where(flipped, 1.0 - labels, labels)
    return labels


def discriminator_loss(loss: str, scores: torch.Tensor, labels: torch.Tensor, smoothing: float) -> torch.Tensor:
    """Per-image D loss (N,) for bce, hinge and lsgan; labels (N,) in {0, 1} after label noise.
    One-sided smoothing: a real label asks for 1 - smoothing, a fake one for exactly 0."""
    targets = labels * (1.0 - smoothing)
    if loss == "bce":
        return F.binary_cross_entropy_with_logits(scores, targets, reduction="none")
    if loss == "lsgan":
        return 0.5 * (scores - targets).pow(2)
    if loss == "hinge":
        return F.relu(1.0 - (2.0 * labels - 1.0) * scores)
    raise ValueError(f"loss must be one of bce, hinge, lsgan here, got {loss!r}")


def generator_loss(loss: str, fake_scores: torch.Tensor) -> torch.Tensor:
    """Mean G loss on D's scores of generated images."""
    if loss == "bce":
        return F.softplus(-fake_scores).mean()  # non-saturating: -log sigmoid(s)
    if loss == "lsgan":
        return 0.5 * (fake_scores - 1.0).pow(2).mean()
    if loss in ("hinge", "wgan-gp"):
        return -fake_scores.mean()
    raise ValueError(f"loss must be one of {', '.join(LOSSES)}, got {loss!r}")


def interpolates(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """Random points on the segments between real and fake images, one alpha per sample."""
    alpha = torch.rand(real.shape[0], *([1] * (real.dim() - 1)), device=real.device)  # (B, 1, 1, 1)
    return (alpha * real + (1.0 - alpha) * fake).requires_grad_(True)


def gradient_penalty(scores: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
    """mean_i (||d score_i / d input_i|| - 1)^2, the norm over each sample's flattened input.

    `scores` (B,) must come from `inputs` (B, ...) through a critic that treats samples
    independently; create_graph keeps the penalty differentiable in the critic's weights."""
    (grads,) = torch.autograd.grad(scores.sum(), inputs, create_graph=True)
    return (grads.flatten(1).norm(2, dim=1) - 1.0).pow(2).mean()


MOMENT_VALUES = 1024  # moment_mse's covariance is at most this square: 8 MiB in float64


def moment_mse(fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """MSE of the value means plus MSE of the value covariances of two batches (N, ...).
    A classifier-free, per-batch stand-in for FID: 0 when the first two moments agree.
    Images (N, C, S, S) of more than MOMENT_VALUES values are first average-pooled to the
    largest side s with C*s*s <= MOMENT_VALUES (3x64x64 -> 3x18x18), so the covariance of
    large colour images stays (D, D) with D <= 1024; smaller batches are compared as they are."""
    if fake.dim() == 4 and fake[0].numel() > MOMENT_VALUES:
        side = math.isqrt(MOMENT_VALUES // fake.shape[1])
        fake, real = F.adaptive_avg_pool2d(fake, side), F.adaptive_avg_pool2d(real, side)
    a, b = fake.flatten(1).double(), real.flatten(1).double()
    mean_a, mean_b = a.mean(0), b.mean(0)
    cov_a = (a - mean_a).T @ (a - mean_a) / max(1, len(a) - 1)  # (D, D)
    cov_b = (b - mean_b).T @ (b - mean_b) / max(1, len(b) - 1)
    return (mean_a - mean_b).pow(2).mean() + (cov_a - cov_b).pow(2).mean()


def sample_ranked_metric(family: type[Family], data_cfg) -> str:
    """What ranks a family whose `metric` measures its samples (sample_fid) on this data: that
    metric on labelled images; on unlabelled ones, where there is no classifier to measure
    samples with, val_moment_mse, which the family's eval_batch reports."""
    spec = family.spec_of(data_cfg)
    return "val_moment_mse" if spec is not None and spec.num_classes < 2 else family.metric


class GANFamily(Family):
    name = "gan"
    Config = GANConfig
    metric = "sample_fid"
    mode = "min"
    adversarial = True
    capabilities = ("sample",)
    info_fields = ("loss",)

    @classmethod
    def metric_for(cls, data_cfg) -> str:
        return sample_ranked_metric(cls, data_cfg)

    def build(self) -> dict[str, nn.Module]:
        c = self.cfg
        nets = {
            "generator": Generator(c.latent_dim, c.channels, self.spec),
            "discriminator": Discriminator(c.channels, c.dropout, self.spec, c.d_norm),
        }
        if c.ema > 0:
            nets["generator_ema"] = copy.deepcopy(nets["generator"]).requires_grad_(False)
        return nets

    def wrap(self, wrapper) -> None:
        """DDP-wrap the two players; the average is no player (no gradients): every rank updates
        it from the same synchronised weights, so it stays identical without communication."""
        self.train_nets = {k: (v if k == "generator_ema" else wrapper(v)) for k, v in self.nets.items()}

    def make_optimizers(self):
        c = self.cfg
        return {
            "generator": torch.optim.Adam(self.nets["generator"].parameters(), lr=c.lr_g, betas=c.betas),
            "discriminator": torch.optim.Adam(self.nets["discriminator"].parameters(), lr=c.lr_d, betas=c.betas),
        }

    def noise(self, n: int) -> torch.Tensor:
        return torch.randn(n, self.cfg.latent_dim, device=self.device)

    def d_step(self, real: torch.Tensor) -> StepMetrics:
        """One D (critic) update on real images in [-1, 1] and as many fresh fakes."""
        c, gen, disc = self.cfg, self.train_nets["generator"], self.train_nets["discriminator"]
        n = real.shape[0]
        with torch.no_grad():
            fake = gen(self.noise(n))  # (B, C, S, S); no graph, so no G backward is owed
        out: dict[str, float] = {}
        if c.loss == "wgan-gp":
            x_hat = interpolates(real, fake)
            s_real, s_fake, s_hat = disc(torch.cat([real, fake, x_hat])).split(n)
            gp = gradient_penalty(s_hat, x_hat)
            d_loss = s_fake.mean() - s_real.mean() + c.gp_weight * gp
            out["gp"] = gp.detach()
            out["wasserstein"] = (s_real.mean() - s_fake.mean()).detach()
        else:
            scores = disc(torch.cat([real, fake]))  # (2B,)
            labels = noisy_labels(n, n, c.label_noise, self.device)
            per_image = discriminator_loss(c.loss, scores, labels, c.label_smoothing)
            d_loss = per_image[:n].mean() + per_image[n:].mean()
            s_real, s_fake = scores.split(n)
        self.optimizer_step(d_loss, "discriminator")
        out.update(d_loss=d_loss.detach(), d_real=s_real.mean().detach(), d_fake=s_fake.mean().detach())
        return out

    def g_step(self, n: int) -> torch.Tensor:
        gen, disc = self.train_nets["generator"], self.train_nets["discriminator"]
        g_loss = generator_loss(self.cfg.loss, disc(gen(self.noise(n))))
        # D's weights get gradients too (DDP reduces them); the next D step zeroes them first.
        self.optimizer_step(g_loss, "generator")
        if self.cfg.ema > 0:
            self.update_ema()
        return g_loss.detach()

    @torch.no_grad()
    def update_ema(self) -> None:
        """ema <- decay * ema + (1 - decay) * G for weights; batch-norm statistics are copied."""
        live, avg = self.nets["generator"], self.nets["generator_ema"]
        for p_avg, p in zip(avg.parameters(), live.parameters()):
            p_avg.lerp_(p, 1.0 - self.cfg.ema)
        for b_avg, b in zip(avg.buffers(), live.buffers()):
            b_avg.copy_(b)

    def train_step(self, batch, epoch: float) -> StepMetrics:
        x, _ = batch
        real = x * 2.0 - 1.0  # (B, C, S, S) in [-1, 1], the range of the tanh output
        sums: dict[str, float] = {}
        for _ in range(self.cfg.critic_steps):
            for k, v in self.d_step(real).items():
                sums[k] = sums.get(k, 0.0) + v
        out = {k: v / self.cfg.critic_steps for k, v in sums.items()}
        out["g_loss"] = self.g_step(real.shape[0])
        out["loss"] = out["d_loss"] + out["g_loss"]
        return out

    @torch.no_grad()
    def eval_batch(self, batch) -> dict[str, float]:
        x, _ = batch
        n = x.shape[0]
        fake = self.sample(n, seed=0)
        disc = self.nets["discriminator"]
        return {
            "val_moment_mse": n * moment_mse(fake, x).item(),
            "val_d_real": disc(x * 2.0 - 1.0).sum().item(),
            "val_d_fake": disc(fake * 2.0 - 1.0).sum().item(),
        }

    @torch.no_grad()
    def preview(self, batch) -> dict[str, torch.Tensor]:
        return {"samples": self.sample(64, seed=0)}

    def quality_samples(self, n: int, seed: int):
        return self.sample(n, seed), None

    # --- inference (used by the deployment; plain tensors in, plain tensors out) ----------
    def prior_codes(self, n: int, seed: int | None) -> torch.Tensor:
        """n codes from N(0, I); the same seed always gives the same codes."""
        return seeded_normal(n, self.cfg.latent_dim, seed)

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Codes -> images in [0, 1]: a GAN's generator is its decoder (the name deployments share)."""
        return self.generate(z)

    def generate(self, z: torch.Tensor) -> torch.Tensor:
        """(B, latent) -> images (B, C, S, S) in [0, 1], from the averaged generator when there
        is one. Needs eval mode for batch-independent output (batch norm on running statistics)."""
        gen = self.nets.get("generator_ema", self.nets["generator"])
        return (gen(z.to(self.device)) + 1.0) / 2.0

    @torch.no_grad()
    def sample(self, n: int, seed: int | None = None) -> torch.Tensor:
        return self.generate(self.prior_codes(n, seed))
