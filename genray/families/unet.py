"""UNet inpainting (Ronneberger et al. 2015; the course's segmentation and inpainting lecture):
an encoder-decoder whose decoder sees, at every scale, the encoder's features of that scale
(skip connections), so fine detail around a hole is not lost in the bottleneck.

Input: the image with its hole blanked, and the mask itself (2 channels), so the network knows
which zeros are missing and which are black. Output: a full image in [0, 1]; the inpainted
image keeps the known pixels and takes the network's only inside the hole.
Loss and metric: MSE over the masked pixels only (`val_masked_mse`: each image's mean over its
hole, averaged over images). Two baselines are scored on the same holes every epoch:
  val_mean_fill_mse  the hole filled with the mean of the image's known pixels
  val_blur_fill_mse  normalized convolution: a Gaussian blur of the known pixels divided by the
                     blur of the known-pixel indicator, widening until every hole pixel is reached
The network takes any height and width (padded to a multiple of 2^depth, then cropped back).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from genray.data.inpaint import InpaintDataConfig, load_inpaint
from genray.families.base import Family


class UNetConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    channels: int = Field(16, ge=1, le=512)  # width of the first level; doubles at each level down
    depth: int = Field(2, ge=1, le=6)  # down-sampling steps (28 -> 14 -> 7 at 2)
    lr: float = Field(2e-3, gt=0.0, le=1.0)
    weight_decay: float = Field(0.0, ge=0.0)


def double_conv(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1), nn.ReLU(inplace=True),
    )


class UNet(nn.Module):
    def __init__(self, cfg: UNetConfig, in_channels: int = 2, out_channels: int = 1):
        super().__init__()
        widths = [cfg.channels * 2**i for i in range(cfg.depth + 1)]
        self.depth = cfg.depth
        self.down = nn.ModuleList([double_conv(in_channels, widths[0])]
                                  + [double_conv(widths[i], widths[i + 1]) for i in range(cfg.depth)])
        self.up = nn.ModuleList([nn.ConvTranspose2d(widths[i + 1], widths[i], 2, stride=2)
                                 for i in reversed(range(cfg.depth))])
        # After each up-step the skip features are concatenated: 2 * width in, width out.
        self.merge = nn.ModuleList([double_conv(2 * widths[i], widths[i]) for i in reversed(range(cfg.depth))])
        self.head = nn.Conv2d(widths[0], out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, C_in, H, W) -> logits (B, C_out, H, W), any H and W."""
        h, w = x.shape[-2:]
        step = 2**self.depth
        pad_h, pad_w = (-h) % step, (-w) % step
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else F.max_pool2d(x, 2))
            skips.append(x)  # (B, widths[i], H / 2^i, W / 2^i)
        x = skips.pop()  # the bottleneck
        for up, merge in zip(self.up, self.merge):
            x = merge(torch.cat([up(x), skips.pop()], dim=1))
        return self.head(x)[..., :h, :w]


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-image MSE over the masked pixels, (B,); an image without a hole scores 0."""
    err = ((pred - target) ** 2 * mask).flatten(1).sum(1)
    return err / mask.flatten(1).sum(1).clamp(min=1.0)


def mean_fill(image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Baseline: the hole filled with the mean of the image's known pixels (0.5 if none)."""
    known = 1.0 - mask
    count = known.flatten(1).sum(1)
    mean = torch.where(count > 0, (image * known).flatten(1).sum(1) / count.clamp(min=1.0), 0.5)
    return image * known + mean.view(-1, *[1] * (image.dim() - 1)) * mask


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (B, C, H, W) with zero padding (what normalized convolution needs)."""
    radius = max(1, math.ceil(3 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    c = x.shape[1]
    x = F.conv2d(x, k.view(1, 1, 1, -1).repeat(c, 1, 1, 1), padding=(0, radius), groups=c)
    return F.conv2d(x, k.view(1, 1, -1, 1).repeat(c, 1, 1, 1), padding=(radius, 0), groups=c)


def blur_fill(image: torch.Tensor, mask: torch.Tensor, sigmas=(1.0, 2.0, 4.0, 8.0, 16.0)) -> torch.Tensor:
    """Baseline: normalized convolution. Each hole pixel takes blur(image * known) / blur(known)
    at the smallest sigma whose blur reaches it (weight > 1e-3); pixels that no blur reaches
    (a huge hole) take the mean of the known pixels."""
    known = 1.0 - mask
    out = mean_fill(image, mask)
    todo = mask > 0.5
    for sigma in sigmas:
        num, den = gaussian_blur(image * known, sigma), gaussian_blur(known, sigma)
        reached = todo & (den > 1e-3)
        out = torch.where(reached, num / den.clamp(min=1e-3), out)
        todo = todo & ~reached
        if not todo.any():
            break
    return out


class UNetFamily(Family):
    name = "unet"
    Config = UNetConfig
    DataConfig = InpaintDataConfig
    metric = "val_masked_mse"
    mode = "min"

    @classmethod
    def load_data(cls, data_cfg: InpaintDataConfig):
        return load_inpaint(data_cfg)

    def build(self) -> dict[str, nn.Module]:
        return {"unet": UNet(self.cfg)}

    def make_optimizers(self):
        params = self.nets["unet"].parameters()
        return {"unet": torch.optim.Adam(params, lr=self.cfg.lr, weight_decay=self.cfg.weight_decay)}

    def predict(self, net: nn.Module, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The network's full image (B, 1, H, W) in [0, 1] from the holed image and its mask."""
        return torch.sigmoid(net(torch.cat([image * (1.0 - mask), mask], dim=1)))

    def train_step(self, batch, epoch: float) -> dict[str, float]:
        image, mask = batch
        pred = self.predict(self.train_nets["unet"], image, mask)
        # Mean over every masked pixel of the batch: only the hole is learned from.
        loss = ((pred - image) ** 2 * mask).sum() / mask.sum().clamp(min=1.0)
        opt = self.optimizers["unet"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return {"loss": loss.item()}

    @torch.no_grad()
    def eval_batch(self, batch) -> dict[str, float]:
        image, mask = batch
        filled = self.inpaint(image, mask)
        return {
            "val_masked_mse": masked_mse(filled, image, mask).sum().item(),
            "val_mean_fill_mse": masked_mse(mean_fill(image, mask), image, mask).sum().item(),
            "val_blur_fill_mse": masked_mse(blur_fill(image, mask), image, mask).sum().item(),
        }

    @torch.no_grad()
    def preview(self, batch) -> dict[str, torch.Tensor]:
        image, mask = (t[:16] for t in batch)
        holed = image * (1.0 - mask) + 0.5 * mask  # the hole shown grey
        return {"inpainting": torch.cat([holed, self.inpaint(image, mask), image]).cpu()}

    # --- inference (used by the deployment; plain tensors in, plain tensors out) ----------
    @torch.no_grad()
    def inpaint(self, image: torch.Tensor, mask: torch.Tensor, method: str = "unet") -> torch.Tensor:
        """image, mask (B, 1, H, W), mask 1 = missing -> the image with its hole filled by the
        UNet, or by a baseline ("mean", "blur"); known pixels are returned unchanged."""
        image, mask = image.to(self.device), mask.to(self.device)
        if method == "mean":
            return mean_fill(image, mask)
        if method == "blur":
            return blur_fill(image, mask)
        if method != "unet":
            raise ValueError(f"method must be unet, mean or blur, got {method!r}")
        return image * (1.0 - mask) + self.predict(self.nets["unet"], image, mask) * mask
