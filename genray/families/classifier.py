"""A small CNN digit classifier.

genray trains it for its own sample-quality metrics (genray.metrics: classifier-IS and
classifier-FID in its feature space); as a family it trains, checkpoints and serves like
the others.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from genray.families.base import Family, Parts

NUM_CLASSES = 10


class ClassifierConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    channels: int = Field(32, ge=4, le=512)
    features: int = Field(64, ge=8, le=4096)  # width of the penultimate layer: the FID feature space
    dropout: float = Field(0.25, ge=0.0, lt=1.0)
    lr: float = Field(2e-3, gt=0.0, le=1.0)


class DigitClassifier(nn.Module):
    def __init__(self, cfg: ClassifierConfig):
        super().__init__()
        c = cfg.channels
        self.body = nn.Sequential(
            nn.Conv2d(1, c, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # (B, c, 14, 14)
            nn.Conv2d(c, 2 * c, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # (B, 2c, 7, 7)
            nn.Flatten(),
            nn.Dropout(cfg.dropout),
            nn.Linear(2 * c * 7 * 7, cfg.features), nn.ReLU(),
        )
        self.head = nn.Linear(cfg.features, NUM_CLASSES)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)  # (B, features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))  # (B, 10) logits


class ClassifierFamily(Family):
    name = "classifier"
    Config = ClassifierConfig
    metric = "val_acc"
    mode = "max"

    def build(self):
        return {"classifier": DigitClassifier(self.cfg)}

    def make_optimizers(self):
        return {"classifier": torch.optim.Adam(self.nets["classifier"].parameters(), lr=self.cfg.lr)}

    def parts(self) -> Parts:
        # As in the course: the convolutional base (two conv blocks, input side first) and the
        # fully connected classifier on top (the dense feature layer and the output layer), which
        # fine-tuning starts afresh: a dense layer trained on other classes transfers badly.
        return Parts(blocks=["classifier.body.0", "classifier.body.3"],
                     head=["classifier.body.8", "classifier.head"])

    def train_step(self, batch, epoch: float) -> dict[str, float]:
        x, y = batch
        logits = self.train_nets["classifier"](x)
        loss = F.cross_entropy(logits, y)
        self.optimizer_step(loss, "classifier")
        return {"loss": loss.item(), "acc": (logits.argmax(1) == y).float().mean().item()}

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
        """features(x) and predict_proba(x) from one pass of the body: (B, features), (B, 10)."""
        net = self.nets["classifier"]
        features = net.features(x.to(self.device))
        return features, F.softmax(net.head(features), dim=1)
