"""UNet (Ronneberger et al. 2015; the course's segmentation and inpainting lecture): an
encoder-decoder whose decoder sees, at every scale, the encoder's features of that scale (skip
connections), so fine detail is not lost in the bottleneck. One network, two tasks (`task`):

inpaint  Input: the image (C channels, grey or RGB: data.channels) with its hole pre-filled,
         and the mask itself (C + 1 channels), so the network knows which pixels are missing;
         output: the C channels of the image. `prefill`:
           blur  the hole holds the blur baseline below, and the network's output is a residual
                 added to it inside the hole (its last layer starts at zero: an untrained UNet
                 *is* the blur baseline, and training only has to learn what blur gets wrong:
                 edges and texture running through the hole). On photo patches this is what
                 beats blur; a network that must rebuild the grey levels from zeros does not.
           zero  the hole is zeroed and the output is a sigmoid image (the plain formulation).
         The inpainted image keeps the known pixels and takes the network's only inside the hole.
         Loss and metric: MSE over the masked pixels only, every channel of each
         (`val_masked_mse`: each image's mean over its hole, averaged over images). Two
         baselines are scored on the same holes:
           val_mean_fill_mse  the hole filled with the mean of the image's known pixels (per channel)
           val_blur_fill_mse  normalized convolution: a Gaussian blur of the known pixels divided
                              by the blur of the known-pixel indicator, widening until every
                              hole pixel is reached
segment  Input: the grey image (1 channel); output: the logit of "inside a shape" per pixel.
         Loss: binary cross-entropy plus soft Dice (Dice keeps small shapes from drowning in
         background pixels). Metric: `val_iou`, each image's intersection over union of the
         thresholded mask (0.5) with the true one, averaged; baseline `val_otsu_iou`: Otsu's
         global threshold (genray.data.shapes.otsu_segment) on the same images.

Checkpoints are ranked by `val_loss`, the task's own loss on the val set (inpaint: exactly
val_masked_mse; segment: BCE + Dice), since the training loop reads one metric per family.
The network takes any height and width (padded to a multiple of 2^depth, then cropped back).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from genray.data.images import ImageSpec
from genray.data.inpaint import InpaintDataConfig, load_inpaint
from genray.families.base import Family, StepMetrics


class UNetConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    task: Literal["inpaint", "segment"] = "inpaint"  # segment trains on data.source = shapes
    prefill: Literal["blur", "zero"] = "blur"  # inpaint: what the hole holds at the input (above)
    channels: int = Field(16, ge=1, le=512)  # width of the first level; doubles at each level down
    depth: int = Field(2, ge=1, le=6)  # down-sampling steps (28 -> 14 -> 7 at 2)
    # Batch norm after every convolution. Without it the segmenter sits at "all background" for
    # hundreds of steps, and the blur-residual inpainter on photo patches never leaves the blur
    # baseline.
    norm: Literal["none", "batch"] = "batch"
    lr: float = Field(2e-3, gt=0.0, le=1.0)
    # The learning rate halves every this many epochs (None: constant; set, it overrides any
    # train.finetune rate). On photo patches a constant rate leaves the val figure jumping from
    # epoch to epoch.
    lr_halflife: float | None = Field(None, gt=0.0)
    weight_decay: float = Field(0.0, ge=0.0)


def double_conv(c_in: int, c_out: int, norm: bool = False) -> nn.Sequential:
    """Two 3x3 convolutions with ReLU; with `norm`, each convolution is batch-normalised."""
    def conv(a: int, b: int) -> list[nn.Module]:
        return [nn.Conv2d(a, b, 3, padding=1, bias=not norm), *([nn.BatchNorm2d(b)] if norm else []),
                nn.ReLU(inplace=True)]

    return nn.Sequential(*conv(c_in, c_out), *conv(c_out, c_out))


class UNet(nn.Module):
    def __init__(self, cfg: UNetConfig, in_channels: int = 2, out_channels: int = 1):
        super().__init__()
        widths = [cfg.channels * 2**i for i in range(cfg.depth + 1)]
        self.depth = cfg.depth
        norm = cfg.norm == "batch"
        self.down = nn.ModuleList([double_conv(in_channels, widths[0], norm)]
                                  + [double_conv(widths[i], widths[i + 1], norm) for i in range(cfg.depth)])
        self.up = nn.ModuleList([nn.ConvTranspose2d(widths[i + 1], widths[i], 2, stride=2)
                                 for i in reversed(range(cfg.depth))])
        # After each up-step the skip features are concatenated: 2 * width in, width out.
        self.merge = nn.ModuleList([double_conv(2 * widths[i], widths[i], norm) for i in reversed(range(cfg.depth))])
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
    """Per-image MSE over the masked values, (B,): images (B, C, H, W), the mask (B, 1, H, W)
    covering every channel; an image without a hole scores 0."""
    err = ((pred - target) ** 2 * mask).flatten(1).sum(1)
    return err / mask.expand_as(pred).flatten(1).sum(1).clamp(min=1.0)


def mean_fill(image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Baseline: each channel of the hole filled with the mean of that channel's known pixels
    (0.5 if none); image (B, C, H, W), mask (B, 1, H, W)."""
    known = 1.0 - mask
    count = known.sum((2, 3))  # (B, 1)
    mean = torch.where(count > 0, (image * known).sum((2, 3)) / count.clamp(min=1.0), 0.5)  # (B, C)
    return image * known + mean[:, :, None, None] * mask


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
        # On the CPU, stop once every hole is reached; on a GPU the larger blurs cost less
        # than waiting for the device to say so (they change no reached pixel).
        if todo.device.type == "cpu" and not todo.any():
            break
    return out


def otsu_threshold(images: torch.Tensor, bins: int = 256) -> torch.Tensor:
    """Otsu's threshold of each image (B, 1, H, W) in [0, 1] -> (B,): the grey level that
    maximises the between-class variance of the two classes it splits the pixels into."""
    b = images.shape[0]
    levels = (images.flatten(1).clamp(0, 1) * (bins - 1)).round().long()  # (B, H*W)
    hist = torch.zeros(b, bins, device=images.device).scatter_add_(1, levels, torch.ones_like(levels, dtype=torch.float32))
    p = hist / hist.sum(1, keepdim=True)
    grey = torch.arange(bins, dtype=torch.float32, device=images.device) / (bins - 1)
    w0 = p.cumsum(1)  # weight of the class at or below each threshold
    mu0 = (p * grey).cumsum(1)
    mu = mu0[:, -1:]
    between = (mu * w0 - mu0) ** 2 / (w0 * (1 - w0)).clamp(min=1e-12)
    return grey[between.argmax(1)]


def otsu_segment(images: torch.Tensor, sigma: float = 1.0) -> torch.Tensor:
    """Baseline segmentation (B, 1, H, W) -> 0/1 masks: the image smoothed by a Gaussian of
    `sigma` pixels (normalized at the borders; 0 = none) to take the edge off the
    pixel noise, then Otsu's threshold, with the side that holds fewer pixels taken as the
    shapes (they cover less than the background, mostly)."""
    if sigma > 0:
        images = gaussian_blur(images, sigma) / gaussian_blur(torch.ones_like(images), sigma)
    t = otsu_threshold(images).view(-1, 1, 1, 1)
    above = (images > t).float()
    shapes_above = above.flatten(1).mean(1) <= 0.5
    return torch.where(shapes_above.view(-1, 1, 1, 1), above, 1.0 - above)


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image 1 - soft Dice, (B,); an image with no shape and no predicted shape scores 0."""
    p = torch.sigmoid(logits).flatten(1)
    t = target.flatten(1)
    return 1.0 - (2.0 * (p * t).sum(1) + 1.0) / (p.sum(1) + t.sum(1) + 1.0)


def segment_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image BCE (mean over pixels) + soft Dice loss, (B,)."""
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none").flatten(1).mean(1)
    return bce + soft_dice_loss(logits, target)


def iou(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image intersection over union of two 0/1 masks, (B,); both empty counts as 1."""
    inter = (pred * target).flatten(1).sum(1)
    union = ((pred + target) > 0).float().flatten(1).sum(1)
    return torch.where(union > 0, inter / union.clamp(min=1.0), torch.ones_like(union))


class UNetFamily(Family):
    name = "unet"
    Config = UNetConfig
    DataConfig = InpaintDataConfig
    metric = "val_loss"
    mode = "min"

    @classmethod
    def load_data(cls, data_cfg: InpaintDataConfig):
        return load_inpaint(data_cfg)

    @classmethod
    def spec_of(cls, data_cfg: InpaintDataConfig) -> ImageSpec:
        return data_cfg.spec()

    def build(self) -> dict[str, nn.Module]:
        c = self.spec.channels
        if self.cfg.task == "segment":
            unet = UNet(self.cfg, in_channels=c, out_channels=1)
        else:
            unet = UNet(self.cfg, in_channels=c + 1, out_channels=c)  # [image, mask] -> image
        if self.cfg.task == "inpaint" and self.cfg.prefill == "blur":
            # The residual over the blur starts at zero: training starts from the baseline.
            nn.init.zeros_(unet.head.weight)
            nn.init.zeros_(unet.head.bias)
        return {"unet": unet}

    def make_optimizers(self):
        params = self.nets["unet"].parameters()
        return {"unet": torch.optim.Adam(params, lr=self.cfg.lr, weight_decay=self.cfg.weight_decay)}

    def unpack(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(image, mask) of a batch; segmentation batches (genray.data.shapes) carry a third
        element, the shape counts, which is how a task and data mismatch is caught."""
        shapes = len(batch) == 3
        if shapes != (self.cfg.task == "segment"):
            if shapes:
                raise ValueError("model.task=inpaint needs images with holes (data.source digits, photos or "
                                 "both), got generated shapes (data.source=shapes): set model.task=segment")
            raise ValueError("model.task=segment needs images with their shapes' masks (data.source=shapes), "
                             "got images with holes: set data.source=shapes")
        return batch[0], batch[1]

    def predict(self, net: nn.Module, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """inpaint: the network's full image (B, C, H, W) from the image and its mask (B, 1, H, W), 1 = missing;
        unclamped with prefill blur (the loss sees the residual's overshoot), in [0, 1] with zero."""
        if self.cfg.prefill == "blur":
            base = blur_fill(image, mask)
            return base + net(torch.cat([base, mask], dim=1)) * mask
        return torch.sigmoid(net(torch.cat([image * (1.0 - mask), mask], dim=1)))

    def train_step(self, batch, epoch: float) -> StepMetrics:
        image, target = self.unpack(batch)
        net = self.train_nets["unet"]
        if self.cfg.task == "segment":
            loss = segment_loss(net(image), target).mean()
        else:
            pred = self.predict(net, image, target)
            # Mean over every masked value of the batch: only the hole is learned from.
            loss = ((pred - image) ** 2 * target).sum() / target.expand_as(pred).sum().clamp(min=1.0)
        if self.cfg.lr_halflife is not None:
            for group in self.optimizers["unet"].param_groups:
                group["lr"] = self.cfg.lr * 0.5 ** (epoch / self.cfg.lr_halflife)
        self.optimizer_step(loss, "unet")
        return {"loss": loss.detach()}

    @torch.no_grad()
    def eval_batch(self, batch) -> dict[str, float]:
        image, target = self.unpack(batch)
        if self.cfg.task == "segment":
            logits = self.nets["unet"](image)
            return {
                "val_loss": segment_loss(logits, target).sum().item(),
                "val_iou": iou((logits > 0).float(), target).sum().item(),
                "val_otsu_iou": iou(otsu_segment(image), target).sum().item(),
            }
        masked = masked_mse(self.inpaint(image, target), image, target).sum().item()
        return {
            "val_loss": masked,
            "val_masked_mse": masked,
            "val_mean_fill_mse": masked_mse(mean_fill(image, target), image, target).sum().item(),
            "val_blur_fill_mse": masked_mse(blur_fill(image, target), image, target).sum().item(),
        }

    @torch.no_grad()
    def preview(self, batch) -> dict[str, torch.Tensor]:
        image, target = (t[:16] for t in self.unpack(batch))
        if self.cfg.task == "segment":
            return {"segmentation": torch.cat([image, self.segment(image), target]).cpu()}
        holed = image * (1.0 - target) + 0.5 * target  # the hole shown grey
        return {"inpainting": torch.cat([holed, self.inpaint(image, target), image]).cpu()}

    # --- inference (used by the deployment; plain tensors in, plain tensors out) ----------
    @torch.no_grad()
    def inpaint(self, image: torch.Tensor, mask: torch.Tensor, method: str = "unet") -> torch.Tensor:
        """image (B, C, H, W), mask (B, 1, H, W), 1 = missing -> the image with its hole filled by the
        UNet, or by a baseline ("mean", "blur"); known pixels are returned unchanged."""
        image, mask = image.to(self.device), mask.to(self.device)
        if method == "mean":
            return mean_fill(image, mask)
        if method == "blur":
            return blur_fill(image, mask)
        if method != "unet":
            raise ValueError(f"method must be unet, mean or blur, got {method!r}")
        if self.cfg.task != "inpaint":
            raise ValueError(f"this UNet was trained for task {self.cfg.task!r}, not inpaint")
        filled = self.predict(self.nets["unet"], image, mask).clamp(0.0, 1.0)
        return image * (1.0 - mask) + filled * mask

    @torch.no_grad()
    def segment(self, image: torch.Tensor, method: str = "unet") -> torch.Tensor:
        """image (B, 1, H, W) in [0, 1] -> the 0/1 mask of the shapes in it (B, 1, H, W), by the
        UNet or by the Otsu baseline ("otsu")."""
        image = image.to(self.device)
        if method == "otsu":
            return otsu_segment(image)
        if method != "unet":
            raise ValueError(f"method must be unet or otsu, got {method!r}")
        if self.cfg.task != "segment":
            raise ValueError(f"this UNet was trained for task {self.cfg.task!r}, not segment")
        return (self.nets["unet"](image) > 0).float()
