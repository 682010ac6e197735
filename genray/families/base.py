"""What every family provides to the training loop, the checkpoint and the deployments.

A family owns named networks (`nets`), their optimizers, one train step and an evaluation.
The Ray Train loop only wraps `train_nets` for DDP (each network separately, so two-player
families get one DDP wrapper per player) and calls `train_step`; evaluation, inference and
saving always use the raw modules in `nets`.

Fine-tuning (the course's five steps: a base with a fresh head, the base frozen, the head
trained, the last blocks unfrozen, both trained at a lower learning rate) is driven by
`FinetuneConfig` (the run config's `train.finetune`) and works on any family that names its
parts: `parts()` lists the base's blocks and the head as parameter-name prefixes.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn
from torch.utils.data import Dataset

from genray.data import DataConfig as ImageDataConfig
from genray.data import load_images
from genray.data.images import ImageSpec
from genray.data.augment import AugmentConfig, augment


# What a train step reports: metric name -> detached 0-dim tensor (read once an epoch) or number.
StepMetrics = dict[str, "torch.Tensor | float"]

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class FinetuneConfig(BaseModel):
    """A fine-tuning schedule (`train.finetune`); the defaults train everything from scratch."""

    model_config = ConfigDict(extra="forbid")

    # A checkpoint folder (or s3:// prefix) to start from: every tensor whose name and shape
    # match is loaded, except the head's (a fresh head) unless load_head. The optimizers start fresh.
    init_from: str | None = None
    load_head: bool = False
    # "base": the family's blocks (parts().blocks) get no gradient and keep their weights.
    freeze: Literal["none", "base"] = "none"
    # After this many epochs the last `unfreeze_blocks` blocks train again (None: never).
    unfreeze_after_epochs: int | None = Field(None, ge=0)
    unfreeze_blocks: int = Field(1, ge=1)
    # The learning rate of every optimizer from the unfreezing on (None: keep the model's lr).
    lr_after_unfreeze: float | None = Field(None, gt=0.0, le=1.0)

    @model_validator(mode="after")
    def _consistent(self) -> "FinetuneConfig":
        if self.unfreeze_after_epochs is not None and self.freeze == "none":
            raise ValueError("unfreeze_after_epochs needs freeze: base (nothing is frozen to unfreeze)")
        if self.lr_after_unfreeze is not None and self.unfreeze_after_epochs is None:
            raise ValueError("lr_after_unfreeze needs unfreeze_after_epochs (the epoch it starts at)")
        return self

    def frozen_blocks(self, blocks: list[str], epoch: int) -> list[str]:
        """The blocks that get no gradient in `epoch` (0-based)."""
        if self.freeze == "none":
            return []
        if self.unfreeze_after_epochs is not None and epoch >= self.unfreeze_after_epochs:
            return blocks[: max(0, len(blocks) - self.unfreeze_blocks)]
        return list(blocks)

    def lr(self, epoch: int) -> float | None:
        """The learning rate to set in `epoch`, or None to keep the configured one."""
        if self.lr_after_unfreeze is not None and epoch >= self.unfreeze_after_epochs:
            return self.lr_after_unfreeze
        return None


@dataclass(frozen=True)
class Parts:
    """Where fine-tuning acts, as prefixes of "<net>.<parameter name>", e.g.
    "classifier.body.0" for the first conv layer of net "classifier"."""

    blocks: list[str]  # the base, input side first: what `freeze` freezes, unfrozen from the end
    head: list[str]  # what `init_from` leaves freshly initialised; always trained


# What an image family's inference can do, in the order its deployment lists them. Each is one
# endpoint of the image deployment (genray.deploy.images) and needs these of the family:
#   sample          POST /sample          prior_codes(n, seed) -> (n, latent) on the CPU; decode(z)
#   sample_digit    POST /sample          prior_codes(n, seed); decode(z, digits (B,))
#   encode          POST /encode          encode(x) -> codes (B, latent), or (mu, logvar) of q(z|x)
#   decode          POST /decode          decode(z (B, latent)) -> images (B, C, S, S) in [0, 1]
#   reconstruct     POST /reconstruct     reconstruct(x)
#   denoise         POST /denoise         denoise(x, add_noise=, seed=, noise=, level=) -> (input, output);
#                                         cfg.denoising (was it trained on noise)
#   interpolate     POST /interpolate     interpolate(a, b, steps)
#   style_transfer  POST /style_transfer  style_transfer(x, labels (B,), targets (B,))
# and every one cfg.latent_dim.
CAPABILITIES = ("sample", "sample_digit", "encode", "decode", "reconstruct", "denoise", "interpolate",
                "style_transfer")


def seeded_generator(seed: int | None) -> torch.Generator:
    """A CPU generator: seeded, so the same seed draws the same numbers; None: fresh entropy."""
    gen = torch.Generator()
    if seed is None:
        gen.seed()
    else:
        gen.manual_seed(seed)
    return gen


def seeded_normal(n: int, dim: int, seed: int | None) -> torch.Tensor:
    """n codes from N(0, I) on the CPU; the same seed always gives the same codes."""
    return torch.randn(n, dim, generator=seeded_generator(seed))


def _under(name: str, prefixes: list[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


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
    # What the family's inference can do (CAPABILITIES): a served family with any is served by
    # the image deployment, whose GET / also reports the config fields named in `info_fields`.
    capabilities: ClassVar[tuple[str, ...]] = ()
    info_fields: ClassVar[tuple[str, ...]] = ()
    # Why torch.compile cannot train this family ("" when it can): train.compile is refused with it.
    compile_unsupported: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        unknown = [c for c in cls.capabilities if c not in CAPABILITIES]
        if unknown:
            raise TypeError(f"{cls.__name__}.capabilities: unknown {unknown}; known: {', '.join(CAPABILITIES)}")
        if {"sample", "sample_digit"} <= set(cls.capabilities):
            raise TypeError(f"{cls.__name__}.capabilities: 'sample' or 'sample_digit', not both "
                            f"(both are POST /sample)")

    @classmethod
    def from_checkpoint(cls, ckpt: Any, device: str | torch.device = "cpu") -> "Family":
        """The family of a loaded checkpoint (genray.checkpoint.load) with its weights, in eval
        mode, ready for inference; its model config is validated by this class's Config, and
        an image family is built for the images its run config's data section names."""
        data = cls.DataConfig.model_validate(ckpt.config.get("data", {}))
        family = cls(ckpt.config.get("model", {}), device, spec=cls.spec_of(data))
        family.load_state_dict(ckpt.state, optimizers=False)
        family.eval()
        return family

    @classmethod
    def load_data(cls, data_cfg: BaseModel) -> tuple[Dataset, Dataset]:
        """(train, val) datasets for this family."""
        return load_images(data_cfg)

    @classmethod
    def spec_of(cls, data_cfg: BaseModel) -> ImageSpec | None:
        """The images a data config holds (an image family's data), None for other data."""
        return data_cfg.spec() if isinstance(data_cfg, ImageDataConfig) else None

    @classmethod
    def metric_for(cls, data_cfg: BaseModel) -> str:
        """The metric that ranks this family's checkpoints on this data: `metric`, unless the
        data cannot give it (sample quality needs labelled images)."""
        return cls.metric

    def __init__(self, cfg: BaseModel, device: str | torch.device = "cpu", spec: ImageSpec | None = None):
        if not isinstance(cfg, self.Config):
            cfg = self.Config.model_validate(cfg)
        self.cfg = cfg
        # The images an image family is built for: their channels, side and classes.
        self.spec = spec or ImageSpec()
        self.device = torch.device(device)
        self.nets: dict[str, nn.Module] = {k: v.to(self.device) for k, v in self.build().items()}
        # What train_step calls: the same modules, or their DDP wrappers after wrap().
        self.train_nets: dict[str, nn.Module] = dict(self.nets)
        self.optimizers: dict[str, torch.optim.Optimizer] = self.make_optimizers()
        self.frozen: list[str] = []  # the blocks that get no gradient now (fine-tuning)
        self.precision = "fp32"
        self.scalers: dict[tuple[str, ...], torch.amp.GradScaler] = {}  # fp16: one per optimizer step
        self.compiled = False
        self.channels_last = False  # 4-D batches and conv weights in NHWC (use_channels_last)

    # --- what a family defines -----------------------------------------------------------
    @abstractmethod
    def build(self) -> dict[str, nn.Module]:
        """The named networks, freshly initialised."""

    @abstractmethod
    def make_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """One optimizer per player, over the raw modules' parameters."""

    @abstractmethod
    def train_step(self, batch: Any, epoch: float) -> StepMetrics:
        """One optimisation step on a batch; `epoch` is fractional (for warm-ups). Its metrics
        are detached 0-dim tensors (or plain numbers): reading one (`float`, `.item()`) would
        wait for the device, so the loop adds them up where they are and reads them once an epoch."""

    @abstractmethod
    def eval_batch(self, batch: Any) -> dict[str, float]:
        """Validation *sums* over the batch; the loop adds them up and divides by the count."""

    def preview(self, batch: Any) -> dict[str, torch.Tensor]:
        """Images (N, C, H, W) in [0, 1] to show in TensorBoard, by tag."""
        return {}

    def quality_samples(self, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor | None] | None:
        """Samples (n, C, S, S) in [0, 1] for genray.metrics, and the labels they were
        asked to show (conditional families) or None. None: the family does not generate images."""
        return None

    def parts(self) -> Parts | None:
        """The base's blocks and the head, for fine-tuning; None: this family cannot be fine-tuned."""
        return None

    def augment_batch(self, batch: Any, cfg: AugmentConfig, gen: torch.Generator) -> Any:
        """The training batch with its images randomly transformed (genray.data.augment).
        Image families' batches are (images (B, C, H, W), labels, ...); others override this."""
        if not (isinstance(batch, (list, tuple)) and batch and torch.is_tensor(batch[0]) and batch[0].dim() == 4):
            raise ValueError(f"family {self.name} cannot augment its batches: they are not (images, ...)")
        return type(batch)([augment(batch[0], cfg, gen), *batch[1:]])

    # --- shared mechanics --------------------------------------------------------------
    def set_precision(self, precision: str) -> None:
        """Train in `precision` (train.precision): the loop runs train_step under autocast()."""
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        if precision == "fp16" and self.device.type != "cuda":
            raise ValueError(f"train.precision=fp16 needs a CUDA GPU (this worker's device is {self.device.type}): "
                             f"fp16 autocast on a CPU is slow and loses range; use bf16 there")
        self.precision = precision

    def autocast(self):
        """The context a training step's forward passes run in: torch.autocast at this
        precision, or nothing at fp32. optimizer_step leaves it for the backward pass."""
        if self.precision == "fp32":
            return nullcontext()
        return torch.autocast(self.device.type, dtype=PRECISIONS[self.precision])

    def use_channels_last(self) -> bool:
        """Keep the convolutional networks' weights, and the 4-D batches to_device copies, in
        channels-last (NHWC) memory: the layout a GPU's tensor cores take without transposing
        every activation. The loop and the image replicas call it on CUDA; the numbers are the
        same either way. Before training starts (the optimizers' state follows the weights).
        Returns whether any network has a 2-D convolution (else nothing changes)."""
        convolutional = [net for net in self.nets.values()
                         if any(isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)) for m in net.modules())]
        for net in convolutional:
            net.to(memory_format=torch.channels_last)
        self.channels_last = bool(convolutional)
        return self.channels_last

    def compile(self) -> None:
        """Train through torch.compile'd networks (train.compile); again after each wrap()."""
        if self.compile_unsupported:
            raise ValueError(f"train.compile: family {self.name} cannot be compiled: {self.compile_unsupported}")
        self.train_nets = {k: torch.compile(v) for k, v in self.train_nets.items()}
        self.compiled = True

    def optimizer_step(self, loss: torch.Tensor, *names: str, clip_norm: float | None = None) -> None:
        """One update of the named optimizers from `loss`: clear their gradients, backpropagate,
        clip the norm of their parameters' gradients to `clip_norm` when given, then step each
        in the order named. Other networks keep whatever gradients `loss` gives them. At fp16 the
        loss is scaled by a gradient scaler of these optimizers' own (a GAN's two players each
        have theirs), which skips a step whose gradients overflowed."""
        optimizers = [self.optimizers[name] for name in names]
        scaler = None
        if self.precision == "fp16":
            scaler = self.scalers.setdefault(names, torch.amp.GradScaler(self.device.type))
        with torch.autocast(self.device.type, enabled=False):  # the backward pass runs outside autocast
            for opt in optimizers:
                opt.zero_grad(set_to_none=True)
            (scaler.scale(loss) if scaler is not None else loss).backward()
            if clip_norm is not None:
                if scaler is not None:
                    for opt in optimizers:
                        scaler.unscale_(opt)
                params = [p for opt in optimizers for group in opt.param_groups for p in group["params"]]
                torch.nn.utils.clip_grad_norm_(params, clip_norm)
            for opt in optimizers:
                if scaler is not None:
                    scaler.step(opt)
                else:
                    opt.step()
            if scaler is not None:
                scaler.update()

    def wrap(self, wrapper: Callable[[nn.Module], nn.Module]) -> None:
        """Wrap every network for training (DDP); `nets` keeps the raw modules. A network with
        nothing to train (wholly frozen) is left bare: DDP refuses a module without gradients."""
        self.train_nets = {k: wrapper(v) if any(p.requires_grad for p in v.parameters()) else v
                           for k, v in self.nets.items()}
        if self.compiled:
            self.compile()

    def train(self) -> None:
        for net in self.nets.values():
            net.train()
        for block in self.frozen:  # frozen blocks keep their statistics too (batch norm, dropout off)
            self.module(block).eval()

    def module(self, prefix: str) -> nn.Module:
        net, _, path = prefix.partition(".")
        return self.nets[net].get_submodule(path) if path else self.nets[net]

    def named_parameters(self):
        """("<net>.<name>", parameter) over every network."""
        for k, net in self.nets.items():
            for name, p in net.named_parameters():
                yield f"{k}.{name}", p

    def load_matching(self, state: dict[str, Any], *, skip: list[str] = ()) -> list[str]:
        """Load every tensor of a checkpoint's `state` whose "<net>.<name>" and shape match this
        family's, except those under `skip` (a fresh head); the names loaded."""
        loaded = []
        for k, net in self.nets.items():
            theirs = state["nets"].get(k, {})
            mine = net.state_dict()
            take = {name: t for name, t in theirs.items()
                    if name in mine and mine[name].shape == t.shape and not _under(f"{k}.{name}", list(skip))}
            net.load_state_dict({**mine, **take})
            loaded += [f"{k}.{name}" for name in take]
        return loaded

    def init_finetune(self, state: dict[str, Any], cfg: FinetuneConfig) -> list[str]:
        """Step 1 of fine-tuning: another checkpoint's weights where names and shapes match, and
        a fresh head (unless cfg.load_head); the names loaded."""
        parts = self.parts()
        skip = parts.head if parts is not None and not cfg.load_head else []
        loaded = self.load_matching(state, skip=skip)
        if not loaded:
            raise ValueError(f"init_from {cfg.init_from}: none of its tensors matches a {self.name} "
                             f"parameter by name and shape")
        return loaded

    def apply_finetune(self, cfg: FinetuneConfig, epoch: int) -> bool:
        """Freeze and unfreeze blocks and set the learning rate for `epoch`. True when the set of
        parameters that take gradients changed (a DDP wrapper must then be rebuilt: DDP only
        synchronises the parameters that required gradients when it was built)."""
        if cfg.freeze == "none" and cfg.lr_after_unfreeze is None:
            return False
        parts = self.parts()
        if parts is None:
            raise ValueError(f"family {self.name} names no base blocks (parts()); it cannot be fine-tuned "
                             f"with freeze={cfg.freeze!r}")
        frozen = cfg.frozen_blocks(parts.blocks, epoch)
        changed = frozen != self.frozen
        for name, p in self.named_parameters():
            p.requires_grad_(not _under(name, frozen))
        self.frozen = frozen
        lr = cfg.lr(epoch)
        if lr is not None:
            for opt in self.optimizers.values():
                for group in opt.param_groups:
                    group["lr"] = lr
        return changed

    def eval(self) -> None:
        for net in self.nets.values():
            net.eval()

    def to_device(self, batch: Any) -> Any:
        if isinstance(batch, torch.Tensor):
            if self.channels_last and batch.dim() == 4 and batch.is_floating_point():
                return batch.to(self.device, memory_format=torch.channels_last, non_blocking=True)
            return batch.to(self.device, non_blocking=True)
        if isinstance(batch, (list, tuple)):
            return type(batch)(self.to_device(b) for b in batch)
        if hasattr(batch, "to"):  # torch_geometric Batch and friends
            return batch.to(self.device, non_blocking=True)
        return batch

    @staticmethod
    def batch_size(batch: Any) -> int:
        """Samples in a batch, for throughput: graphs in a PyG batch, else the leading size of
        the batch's first tensor."""
        if hasattr(batch, "num_graphs"):
            return int(batch.num_graphs)
        while isinstance(batch, (list, tuple)) and batch:
            batch = batch[0]
        return int(batch.shape[0]) if isinstance(batch, torch.Tensor) and batch.dim() else 1

    def state_dict(self) -> dict[str, Any]:
        state = {
            "nets": {k: v.state_dict() for k, v in self.nets.items()},
            "optimizers": {k: v.state_dict() for k, v in self.optimizers.items()},
        }
        if self.scalers:  # fp16: a resumed run keeps its loss scales
            state["scalers"] = {",".join(k): v.state_dict() for k, v in self.scalers.items()}
        return state

    def load_state_dict(self, state: dict[str, Any], *, optimizers: bool = True) -> None:
        missing = set(self.nets) - set(state["nets"])
        if missing:
            raise ValueError(f"checkpoint has no weights for network(s) {sorted(missing)}")
        for k, net in self.nets.items():
            net.load_state_dict(state["nets"][k])
        if optimizers and self.precision == "fp16":
            for key, scaler_state in state.get("scalers", {}).items():
                scaler = self.scalers.setdefault(tuple(key.split(",")), torch.amp.GradScaler(self.device.type))
                scaler.load_state_dict(scaler_state)
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
