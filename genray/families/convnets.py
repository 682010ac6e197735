"""The convolutional stages the image families share, built for the images of an ImageSpec.

A network over (B, C, S, S) images halves the side at each stage while the side is even and at
least 8, so it ends on a small map of side 4 to 7: 28 -> 14 -> 7 (two stages), 16 -> 8 -> 4
(two), 64 -> 32 -> 16 -> 8 -> 4 (four), 256 -> ... -> 4 (six). Stage i has `channels * 2**i`
feature maps, capped at `MAX_WIDTH_FACTOR * channels`, so that the map at the bottom, and the
dense layer that reads it, stay a few thousand wide at any side.

The encoder side is a list of stride-2 4x4 convolutions (or 3x3 convolutions and 2x2 max
pooling, `pool`); the decoder side mirrors it with stride-2 4x4 transposed convolutions. The
layers come as flat lists that a family splices into its own `nn.Sequential`, so a family's
parameter names stay "<its attribute>.<index>" (what its checkpoints hold).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import nn

from genray.data.images import ImageSpec

MAX_WIDTH_FACTOR = 8  # the widest stage has at most 8x the first stage's channels

Activation = Callable[[], nn.Module]


def leaky_relu() -> nn.Module:
    return nn.LeakyReLU(0.2)


def num_stages(side: int) -> int:
    """Stride-2 stages for images of this side: halve while the side is even and >= 8."""
    stages = 0
    while side % 2 == 0 and side >= 8:
        side //= 2
        stages += 1
    return stages


@dataclass(frozen=True)
class Stages:
    """The down-sampling stages of a conv network over (B, C, S, S) images."""

    in_channels: int  # C, the images' channels
    side: int  # S
    widths: tuple[int, ...]  # the feature maps each stage puts out, input side first

    @classmethod
    def of(cls, spec: ImageSpec, channels: int) -> "Stages":
        """The stages for spec's images, the first `channels` wide."""
        count = num_stages(spec.size)
        if count == 0:
            raise ValueError(f"images of side {spec.size} are too small for a conv network: the side must be "
                             f"even and >= 8 (data.image_size takes 16..256, a multiple of 4)")
        widths = tuple(channels * min(2**i, MAX_WIDTH_FACTOR) for i in range(count))
        return cls(spec.channels, spec.size, widths)

    @property
    def bottom(self) -> tuple[int, int, int]:
        """The feature map after the last stage: (widths[-1], S / 2^n, S / 2^n)."""
        side = self.side >> len(self.widths)
        return (self.widths[-1], side, side)

    @property
    def features(self) -> int:
        """Values in the bottom feature map: what a dense layer after the stages reads."""
        c, h, w = self.bottom
        return c * h * w

    def down(
        self,
        act: Activation,
        *,
        pool: bool = False,
        norm: Callable[[int], nn.Module] | None = None,
        dropout: float | None = None,
    ) -> list[nn.Module]:
        """Images (B, C, S, S) -> the bottom map (B, *bottom). Each stage: a stride-2 4x4 conv
        (`pool`: a 3x3 conv, then 2x2 max pooling after the activation), `norm(width)` after the
        conv from the second stage on (the first sees raw pixels, as in DCGAN's discriminator),
        the activation, and dropout when given."""
        layers: list[nn.Module] = []
        c_in = self.in_channels
        for i, width in enumerate(self.widths):
            conv = nn.Conv2d(c_in, width, 3, padding=1) if pool else nn.Conv2d(c_in, width, 4, 2, 1)
            layers += [conv, *([norm(width)] if norm is not None and i > 0 else []), act()]
            if pool:
                layers.append(nn.MaxPool2d(2))
            if dropout is not None:
                layers.append(nn.Dropout(dropout))
            c_in = width
        return layers

    def up(self, act: Activation, *, batch_norm: bool = False) -> list[nn.Module]:
        """The bottom map (B, *bottom) -> (B, C, S, S), raw (the caller adds sigmoid or tanh):
        stride-2 4x4 transposed convs back through the widths, each but the last followed by
        batch norm (`batch_norm`, the conv then has no bias) and the activation."""
        layers: list[nn.Module] = []
        for c_in, c_out in zip(self.widths[::-1], self.widths[-2::-1]):
            layers += [nn.ConvTranspose2d(c_in, c_out, 4, 2, 1, bias=not batch_norm),
                       *([nn.BatchNorm2d(c_out)] if batch_norm else []), act()]
        layers.append(nn.ConvTranspose2d(self.widths[0], self.in_channels, 4, 2, 1))
        return layers

    def encoder(self, hidden: int) -> list[nn.Module]:
        """Images (B, C, S, S) -> features (B, hidden): the stride-2 stages with LeakyReLU, then
        one dense layer."""
        return [*self.down(leaky_relu), nn.Flatten(), nn.Linear(self.features, hidden), leaky_relu()]

    def decoder(self, latent_dim: int, hidden: int, act: Activation) -> list[nn.Module]:
        """Codes (B, latent_dim) -> logits (B, C, S, S): two dense layers up to the bottom map,
        then the transposed stages."""
        return [nn.Linear(latent_dim, hidden), act(), nn.Linear(hidden, self.features), act(),
                nn.Unflatten(1, self.bottom), *self.up(act)]
