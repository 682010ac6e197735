"""A small CNN image classifier: (C, S, S) images -> the data's K classes (the digits by default).

genray trains it for its own sample-quality metrics (genray.metrics: classifier-IS and
classifier-FID in its feature space); as a family it trains, checkpoints and serves like
the others. It needs labelled images of at least two classes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from genray.data.images import ImageSpec
from genray.families.base import Family, Parts, StepMetrics
from genray.families.convnets import Stages


class ClassifierConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    channels: int = Field(32, ge=4, le=512)  # width of the first conv stage; 2x per stage down
    features: int = Field(64, ge=8, le=4096)  # width of the penultimate layer: the FID feature space
    dropout: float = Field(0.25, ge=0.0, lt=1.0)
    lr: float = Field(2e-3, gt=0.0, le=1.0)


def require_classes(spec: ImageSpec, family: str, instead: str = "") -> None:
    """Refuse images with fewer than 2 classes, naming data.labels, for a family that learns or
    draws the data's classes; `instead`: what to train on such data."""
    k = spec.num_classes
    if k < 2:
        has = "no labels (data.labels is empty)" if k == 0 else f"one class (data.labels = {list(spec.labels)})"
        raise ValueError(f"{family} needs labelled images of at least 2 classes: the data has {has}"
                         + (f"; use {instead}" if instead else ""))


class ImageClassifier(nn.Module):
    def __init__(self, cfg: ClassifierConfig, spec: ImageSpec):
        super().__init__()
        stages = Stages.of(spec, cfg.channels)
        self.body = nn.Sequential(
            *stages.down(nn.ReLU, pool=True),  # (B, *stages.bottom): (B, 2c, 7, 7) on digits
            nn.Flatten(),
            nn.Dropout(cfg.dropout),
            nn.Linear(stages.features, cfg.features), nn.ReLU(),
        )
        self.head = nn.Linear(cfg.features, spec.num_classes)

    def blocks(self) -> tuple[list[int], int]:
        """Where the body's parts sit: the index of each stage's conv (input side first) and of
        the dense feature layer."""
        convs = [i for i, m in enumerate(self.body) if isinstance(m, nn.Conv2d)]
        dense = next(i for i, m in enumerate(self.body) if isinstance(m, nn.Linear))
        return convs, dense

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)  # (B, features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))  # (B, K) logits


class ClassifierFamily(Family):
    name = "classifier"
    Config = ClassifierConfig
    metric = "val_acc"
    mode = "max"

    def build(self):
        require_classes(self.spec, self.name)
        return {"classifier": ImageClassifier(self.cfg, self.spec)}

    def make_optimizers(self):
        return {"classifier": torch.optim.Adam(self.nets["classifier"].parameters(), lr=self.cfg.lr)}

    def parts(self) -> Parts:
        # As in the course: the convolutional base (one conv block per stage, input side first;
        # two on digits) and the fully connected classifier on top (the dense feature layer and
        # the output layer), which fine-tuning starts afresh: a dense layer trained on other
        # classes transfers badly.
        convs, dense = self.nets["classifier"].blocks()
        return Parts(blocks=[f"classifier.body.{i}" for i in convs],
                     head=[f"classifier.body.{dense}", "classifier.head"])

    def train_step(self, batch, epoch: float) -> StepMetrics:
        x, y = batch
        logits = self.train_nets["classifier"](x)
        loss = F.cross_entropy(logits, y)
        self.optimizer_step(loss, "classifier")
        return {"loss": loss.detach(), "acc": (logits.argmax(1) == y).float().mean().detach()}

    @torch.no_grad()
    def eval_batch(self, batch) -> dict[str, float]:
        x, y = batch
        logits = self.nets["classifier"](x)
        return {
            "val_loss": F.cross_entropy(logits, y, reduction="sum").item(),
            "val_acc": (logits.argmax(1) == y).float().sum().item(),
        }

    @torch.no_grad()
    def predict_proba(self, x: torch.Tensor) -> torch.Tensor:
        return F.softmax(self.nets["classifier"](x.to(self.device)), dim=1)

    @torch.no_grad()
    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.nets["classifier"].features(x.to(self.device))

    @torch.no_grad()
    def features_and_proba(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """features(x) and predict_proba(x) from one pass of the body: (B, features), (B, K)."""
        net = self.nets["classifier"]
        features = net.features(x.to(self.device))
        return features, F.softmax(net.head(features), dim=1)
