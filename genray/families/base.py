"""What every family provides to the training loop, the checkpoint and the deployments.

A family owns named networks (`nets`), their optimizers, one train step and an evaluation.
The Ray Train loop only wraps `train_nets` for DDP (each network separately, so two-player
families get one DDP wrapper per player) and calls `train_step`; evaluation, inference and
saving always use the raw modules in `nets`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Callable, ClassVar

import torch
from pydantic import BaseModel
from torch import nn
from torch.utils.data import Dataset

from genray.data import DataConfig as ImageDataConfig
from genray.data import load_images


class Family(ABC):
    name: ClassVar[str]
    Config: ClassVar[type[BaseModel]]
    # The validation metric that ranks checkpoints and Tune trials, and its direction.
    metric: ClassVar[str]
    mode: ClassVar[str] = "min"
    # Two-player families (GAN-like): their losses need not fall step by step.
    adversarial: ClassVar[bool] = False
    # The family's data: its config section and loader. Image families keep the defaults
    # (digits or MNIST IDX, batches of (images, labels)); others bring their own.
    DataConfig: ClassVar[type[BaseModel]] = ImageDataConfig
    # How a list of dataset items becomes a batch (None: torch's default collate).
    collate_fn: ClassVar[Callable | None] = None

    @classmethod
    def load_data(cls, data_cfg: BaseModel) -> tuple[Dataset, Dataset]:
        """(train, val) datasets for this family."""
        return load_images(data_cfg)

    def __init__(self, cfg: BaseModel, device: str | torch.device = "cpu"):
        if not isinstance(cfg, self.Config):
            cfg = self.Config.model_validate(cfg)
        self.cfg = cfg
        self.device = torch.device(device)
        self.nets: dict[str, nn.Module] = {k: v.to(self.device) for k, v in self.build().items()}
        # What train_step calls: the same modules, or their DDP wrappers after wrap().
        self.train_nets: dict[str, nn.Module] = dict(self.nets)
        self.optimizers: dict[str, torch.optim.Optimizer] = self.make_optimizers()

    # --- what a family defines -----------------------------------------------------------
    @abstractmethod
    def build(self) -> dict[str, nn.Module]:
        """The named networks, freshly initialised."""

    @abstractmethod
    def make_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """One optimizer per player, over the raw modules' parameters."""

    @abstractmethod
    def train_step(self, batch: Any, epoch: float) -> dict[str, float]:
        """One optimisation step on a batch; `epoch` is fractional (for warm-ups)."""

    @abstractmethod
    def eval_batch(self, batch: Any) -> dict[str, float]:
        """Validation *sums* over the batch; the loop adds them up and divides by the count."""

    def preview(self, batch: Any) -> dict[str, torch.Tensor]:
        """Images (N, C, H, W) in [0, 1] to show in TensorBoard, by tag."""
        return {}

    def quality_samples(self, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor | None] | None:
        """Digit samples (n, 1, 28, 28) in [0, 1] for genray.metrics, and the labels they were
        asked to show (conditional families) or None. None: the family does not generate digits."""
        return None

    # --- shared mechanics --------------------------------------------------------------
    def wrap(self, wrapper: Callable[[nn.Module], nn.Module]) -> None:
        """Wrap every network for training (DDP); `nets` keeps the raw modules."""
        self.train_nets = {k: wrapper(v) for k, v in self.nets.items()}

    def train(self) -> None:
        for net in self.nets.values():
            net.train()

    def eval(self) -> None:
        for net in self.nets.values():
            net.eval()

    def to_device(self, batch: Any) -> Any:
        if isinstance(batch, torch.Tensor):
            return batch.to(self.device, non_blocking=True)
        if isinstance(batch, (list, tuple)):
            return type(batch)(self.to_device(b) for b in batch)
        if hasattr(batch, "to"):  # torch_geometric Batch and friends
            return batch.to(self.device)
        return batch

    def state_dict(self) -> dict[str, Any]:
        return {
            "nets": {k: v.state_dict() for k, v in self.nets.items()},
            "optimizers": {k: v.state_dict() for k, v in self.optimizers.items()},
        }

    def load_state_dict(self, state: dict[str, Any], *, optimizers: bool = True) -> None:
        missing = set(self.nets) - set(state["nets"])
        if missing:
            raise ValueError(f"checkpoint has no weights for network(s) {sorted(missing)}")
        for k, net in self.nets.items():
            net.load_state_dict(state["nets"][k])
        if optimizers:
            for k, opt in self.optimizers.items():
                if k in state.get("optimizers", {}):
                    # The moments come from the checkpoint; the hyperparameters (lr, betas, ...)
                    # from this config, so a resumed or PBT-perturbed run uses what it was given.
                    configured = [{h: v for h, v in g.items() if h != "params"} for g in opt.param_groups]
                    opt.load_state_dict(state["optimizers"][k])
                    for group, hparams in zip(opt.param_groups, configured):
                        group.update(hparams)

    def num_parameters(self) -> int:
        return sum(p.numel() for net in self.nets.values() for p in net.parameters())
