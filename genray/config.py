"""Typed run configs: YAML files plus `--set key.path=value` overrides, validated by pydantic.

A run config has these parts:
    family:   vae
    model:    {...}   the family's own Config (genray/families/<family>.py)
    data:     {...}   genray.data.DataConfig
    train:    {...}   TrainConfig below: epochs, workers, checkpoints, ...
    tracking: {...}   TrackingConfig below: an experiment tracker (MLflow) that also records the run
Unknown keys and bad values are errors that name the key: `model.latent_dim: Input should be
greater than or equal to 1 (got 0)`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from genray.families import get_family
from genray.families.base import FinetuneConfig


class ConfigError(ValueError):
    """A config file or override is malformed, names an unknown key, or has a bad value."""


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    epochs: int = Field(10, ge=1, le=100_000)
    batch_size: int = Field(32, ge=1, le=65_536)  # per worker
    # Ray Train workers; 0 runs the loop in the driver process (no DDP), for debugging. [MIN, MAX]:
    # elastic (Ray Train's ScalingConfig(num_workers=(MIN, MAX))): the run starts with as many
    # workers as fit, at least MIN, restarts from its latest checkpoint with fewer when a node is
    # lost, and grows back towards MAX when capacity returns (checked every elastic_resize_s).
    workers: int | tuple[int, int] = 2
    # Where the workers go: "pack" fills as few nodes as possible (fast all-reduce), "spread" puts
    # them on as many nodes as it can (one node's loss costs fewer workers). Ray's placement strategies.
    placement: Literal["pack", "spread"] = "pack"
    # The learning rate under a changing world size. batch_size is per worker, so the global batch
    # is batch_size x workers; "linear" (Goyal et al. 2017) keeps the step per sample the same by
    # using model lr x workers / MAX (the model's lr is the one for the full-size run, which a
    # fixed-size run always is), "none" keeps the model's lr at every size.
    scale_lr: Literal["linear", "none"] = "linear"
    elastic_resize_s: float = Field(60.0, gt=0)
    # None: use GPUs when the cluster has them.
    use_gpu: bool | None = None
    # The forward passes of training steps under torch.autocast: bf16 (CPU or GPU) or fp16 (GPU
    # only, with a gradient scaler per optimizer step); weights, optimizers and evaluation stay fp32.
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    # Train through torch.compile'd networks (the saved weights are the plain modules').
    compile: bool = False
    cpus_per_worker: float = Field(1.0, gt=0.0)
    # torch intra-op threads per worker; more than cpus_per_worker over-subscribes the cores.
    threads_per_worker: int = Field(1, ge=1, le=256)
    seed: int = Field(0, ge=0)
    keep_checkpoints: int = Field(2, ge=1)  # the best K by the family's metric are kept
    checkpoint_every: int = Field(1, ge=1)  # epochs
    max_failures: int = Field(2, ge=-1)  # worker-group restarts from the latest checkpoint; -1 = forever
    # How long one start of the worker group may wait for its resources (None: Ray Train's
    # RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S, 60 s), and how many starts a run makes before it
    # fails (None: forever for `genray train`, since an autoscaler may be adding nodes; 3 for a
    # Tune trial, which must not wait on CPUs that other trials of its search hold).
    worker_start_timeout_s: float | None = Field(None, gt=0)
    worker_start_tries: int | None = Field(None, ge=1)
    preview_every: int = Field(1, ge=0)  # epochs between TensorBoard image grids; 0 = never
    # Epochs between sample-quality metrics (classifier IS/FID/coverage, genray.metrics) for
    # families that generate digits; 0 = never. The last epoch is always measured.
    quality_every: int = Field(1, ge=0)
    quality_samples: int = Field(500, ge=20, le=100_000)
    # Start from another checkpoint, freeze the base, unfreeze its last blocks later
    # (genray.families.base.FinetuneConfig); off by default.
    finetune: FinetuneConfig = Field(default_factory=FinetuneConfig)

    @field_validator("workers")
    @classmethod
    def _worker_range(cls, value: int | tuple[int, int]) -> int | tuple[int, int]:
        if isinstance(value, int) and not 0 <= value <= 4096:
            raise ValueError("workers takes a number from 0 to 4096, or [MIN, MAX]")
        if not isinstance(value, int) and not 1 <= value[0] <= value[1] <= 4096:
            raise ValueError("elastic workers [MIN, MAX] need 1 <= MIN <= MAX <= 4096")
        return value

    @property
    def elastic(self) -> bool:
        return not isinstance(self.workers, int)

    @property
    def max_workers(self) -> int:
        """The run's full size: train.workers, or its MAX when elastic."""
        return self.workers if isinstance(self.workers, int) else self.workers[1]

    def lr_factor(self, world: int) -> float:
        """What the model's learning rate is multiplied by with `world` workers (scale_lr)."""
        return world / self.max_workers if self.scale_lr == "linear" and self.max_workers > 0 else 1.0


class TrackingConfig(BaseModel):
    """Where rank 0 also records the run, besides its history and TensorBoard (genray.tracking)."""

    model_config = ConfigDict(extra="forbid")

    tracker: Literal["none", "mlflow"] = "none"
    # An MLflow tracking URI: http(s)://host:port (a tracking server: what a run on a cluster of
    # several nodes needs), sqlite:///path/mlflow.db, ... None: a SQLite store in ./mlruns, made
    # absolute on the driver so that every process of the run on this machine writes to it.
    uri: str | None = None
    # None: the family's name for `genray train`, the search's name for `genray tune`.
    experiment: str | None = Field(None, min_length=1, max_length=500)


class RunConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    family: str
    name: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
    # Where runs live: a local folder (or s3:// URI); a run is the folder <storage>/<name>.
    storage: str = "runs"
    model: Any = Field(default_factory=dict)
    data: Any = Field(default_factory=dict)  # the family's DataConfig (images: genray.data.DataConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)

    @field_validator("family")
    @classmethod
    def _known_family(cls, value: str) -> str:
        get_family(value)  # raises with the list of known families
        return value

    @model_validator(mode="after")
    def _validate_sections(self) -> "RunConfig":
        """`model` and `data` are validated by the family's own config classes."""
        family = get_family(self.family)
        for section, schema in (("model", family.Config), ("data", family.DataConfig)):
            value = getattr(self, section)
            if isinstance(value, schema):
                continue
            raw = value.model_dump() if isinstance(value, BaseModel) else value
            try:
                setattr(self, section, schema.model_validate(raw))
            except ValidationError as err:
                raise ConfigError(format_errors(err, prefix=section)) from None
        return self

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict: what checkpoints, Ray workers and run folders store."""
        return self.model_dump(mode="json")


def format_errors(err: ValidationError, prefix: str = "") -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in ((prefix,) if prefix else ()) + tuple(e["loc"]))
        msg = "unknown key" if e["type"] == "extra_forbidden" else e["msg"]
        got = "" if e["type"] == "extra_forbidden" else f" (got {e.get('input')!r})"
        lines.append(f"{key or '<config>'}: {msg}{got}")
    return "; ".join(lines)


def parse_override(text: str) -> tuple[list[str], Any]:
    """'model.latent_dim=8' -> (['model', 'latent_dim'], 8); the value is read as YAML."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override must look like key.path=value, got {text!r}")
    try:
        parsed = yaml.safe_load(value) if value.strip() else ""
    except yaml.YAMLError:
        parsed = value  # a bare string YAML cannot read, e.g. 'a: b'
    return key.strip().split("."), parsed


def apply_override(tree: dict[str, Any], path: list[str], value: Any) -> None:
    node = tree
    for i, part in enumerate(path[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{'.'.join(path[: i + 1])} is a value, not a section; cannot set {'.'.join(path)}")
        node = child
    node[path[-1]] = value


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping, got {type(data).__name__}")
    return data


def build_config(
    family: str | None = None,
    file: str | Path | None = None,
    overrides: list[str] = (),
    base: dict[str, Any] | None = None,
) -> RunConfig:
    """Merge base dict < YAML file < overrides, then validate into a RunConfig."""
    tree: dict[str, Any] = dict(base or {})
    if file is not None:
        tree.update(read_yaml(file))
    if family is not None:
        if tree.get("family", family) != family:
            raise ConfigError(f"family: the command says {family!r} but the config file says {tree['family']!r}")
        tree["family"] = family
    for text in overrides:
        apply_override(tree, *parse_override(text))
    if "family" not in tree:
        raise ConfigError("family: missing (name it on the command line or in the config file)")
    try:
        return RunConfig.model_validate(tree)
    except ConfigError:
        raise
    except ValidationError as err:
        # A ConfigError raised in a validator arrives wrapped; unwrap it to keep its key names.
        inner = [e.get("ctx", {}).get("error") for e in err.errors()]
        if len(inner) == 1 and isinstance(inner[0], ConfigError):
            raise inner[0] from None
        raise ConfigError(format_errors(err)) from None
