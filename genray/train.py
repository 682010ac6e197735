"""Ray Train glue: the per-worker loop and the TorchTrainer around it.

The loop is family-agnostic: it builds the family, restores the latest checkpoint if the run
has one, wraps each network for DDP, shards the training set with a DistributedSampler,
and after every epoch reports metrics (all workers: `ray.train.report` is a barrier) and a
checkpoint (rank 0 only). A run is the folder <storage>/<name>; starting a run again with the
same storage and name makes Ray Train hand the loop its latest checkpoint (Train V2).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
import yaml
from ray.train import CheckpointConfig, FailureConfig, ScalingConfig, UserCallback
from ray.train.torch import TorchTrainer
from torch.utils.data import DataLoader, DistributedSampler, Subset

from genray import checkpoint
from genray.config import ConfigError, RunConfig, build_config
from genray.families import get_family
from genray.metrics import store_root

RUN_CONFIG_FILE = "genray.yaml"
HISTORY_FILE = "history.jsonl"


# --- the worker side ---------------------------------------------------------------------

def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """Runs on every Ray Train worker. `loop_config` = {"run": RunConfig dict, "run_dir": str,
    "store": the model store folder, "init_from": optional checkpoint folder to start from}."""
    cfg = RunConfig.model_validate(loop_config["run"])
    run_dir = Path(loop_config["run_dir"])
    # The metrics classifier is cached in the driver's model store, wherever this worker runs.
    os.environ["GENRAY_STORE"] = loop_config["store"]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(cfg.train.threads_per_worker)
    # The same seed on every rank gives identical initial weights (DDP also broadcasts rank 0's).
    torch.manual_seed(cfg.train.seed)
    device = ray.train.torch.get_device()

    family_cls = get_family(cfg.family)
    family = family_cls(cfg.model, device)
    start_epoch = 0
    restored = ray.train.get_checkpoint()
    if restored is not None:  # this run's own latest checkpoint: a resume or a worker restart
        with restored.as_directory() as folder:
            ckpt = checkpoint.load(folder, map_location=device)
    elif loop_config.get("init_from"):  # another run's checkpoint: a Tune/PBT trial taking it over
        ckpt = checkpoint.load(loop_config["init_from"], map_location=device)
    if restored is not None or loop_config.get("init_from"):
        family.load_state_dict(ckpt.state)
        start_epoch = ckpt.epoch + 1
    if world > 1:
        family.wrap(lambda net: ray.train.torch.prepare_model(net, move_to_device=False))

    train_set, val_set = family_cls.load_data(cfg.data)
    collate = family_cls.collate_fn
    # Different ranks draw different noise (dropout, reparameterisation) after this point.
    torch.manual_seed(cfg.train.seed * 1000 + rank + 7919 * start_epoch)
    sampler = DistributedSampler(train_set, num_replicas=world, rank=rank, shuffle=True, seed=cfg.train.seed)
    loader = DataLoader(train_set, batch_size=cfg.train.batch_size, sampler=sampler, collate_fn=collate)
    # Validation: each rank takes every world-th image; sums are all-reduced, so the mean is exact.
    val_loader = DataLoader(Subset(val_set, range(rank, len(val_set), world)), batch_size=256, collate_fn=collate)
    preview_batch = family.to_device(next(iter(DataLoader(val_set, batch_size=64, collate_fn=collate))))

    writer = None
    if rank == 0:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(run_dir / "tensorboard"), purge_step=start_epoch)

    steps_per_epoch = len(loader)
    for epoch in range(start_epoch, cfg.train.epochs):
        t0 = time.perf_counter()
        sampler.set_epoch(epoch)
        family.train()
        sums: dict[str, float] = {}
        for i, batch in enumerate(loader):
            step = family.train_step(family.to_device(batch), epoch + i / steps_per_epoch)
            for k, v in step.items():
                sums[k] = sums.get(k, 0.0) + v
        sums = all_reduce_sums(sums)
        metrics = {f"train_{k}": v / max(1, steps_per_epoch * world) for k, v in sums.items()}
        metrics.update(evaluate(family, val_loader, len(val_set), device))
        last = epoch == cfg.train.epochs - 1
        # A family ranked by sample quality (GANs: classifier-FID) is measured every epoch:
        # its checkpoints are scored by that metric.
        ranked_by_quality = family_cls.metric.startswith("sample_")
        if rank == 0 and (ranked_by_quality or cfg.train.quality_every and (last or epoch % cfg.train.quality_every == 0)):
            metrics.update(measure_quality(family, cfg.train.quality_samples))
        metrics.update(epoch=epoch, epoch_s=time.perf_counter() - t0, workers=world)

        if writer is not None:
            for k, v in metrics.items():
                writer.add_scalar(k, v, epoch)
            if cfg.train.preview_every and epoch % cfg.train.preview_every == 0:
                from genray.images import grid

                for tag, images in family.preview(preview_batch).items():
                    writer.add_image(tag, grid(images), epoch)
            writer.flush()

        if rank == 0 and (last or (epoch + 1) % cfg.train.checkpoint_every == 0):
            with tempfile.TemporaryDirectory() as tmp:
                checkpoint.save(
                    Path(tmp) / "ckpt",
                    family=cfg.family,
                    config=cfg.to_dict(),
                    state=family.state_dict(),
                    epoch=epoch,
                    metrics=metrics,
                )
                ray.train.report(
                    metrics,
                    checkpoint=ray.train.Checkpoint.from_directory(Path(tmp) / "ckpt"),
                    checkpoint_dir_name=f"checkpoint_epoch{epoch:05d}",
                )
        else:
            ray.train.report(metrics)
    if writer is not None:
        writer.close()


def measure_quality(family, n: int) -> dict[str, float]:
    """Classifier-based sample quality (genray.metrics), for families that generate digits."""
    family.eval()
    drawn = family.quality_samples(n, seed=0)
    if drawn is None:
        return {}
    from genray.metrics import sample_quality

    images, wanted = drawn
    return {f"sample_{k}": v for k, v in sample_quality(images.cpu(), wanted).items()}


@torch.no_grad()
def evaluate(family, loader: DataLoader, total: int, device: torch.device) -> dict[str, float]:
    """Validation means over the whole val set, summed across ranks."""
    family.eval()
    sums: dict[str, float] = {}
    for batch in loader:
        for k, v in family.eval_batch(family.to_device(batch)).items():
            sums[k] = sums.get(k, 0.0) + v
    return {k: v / total for k, v in all_reduce_sums(sums).items()}


def all_reduce_sums(sums: dict[str, float]) -> dict[str, float]:
    """Add up per-rank sums over all ranks (a no-op without a process group)."""
    if not (dist.is_available() and dist.is_initialized()):
        return sums
    # Every rank must all-reduce the same keys in the same order; a rank with an empty
    # shard learns them from rank 0.
    holder = [sorted(sums)]
    dist.broadcast_object_list(holder, src=0)
    keys = holder[0]
    vec = torch.tensor([sums.get(k, 0.0) for k in keys], dtype=torch.float64)
    dist.all_reduce(vec)
    return dict(zip(keys, vec.tolist()))


# --- the driver side -----------------------------------------------------------------------

class ProgressCallback(UserCallback):
    """Prints one line per epoch and appends it to <run>/history.jsonl (on the Train controller)."""

    def __init__(self, run_dir: str, epochs: int, metric: str):
        self.run_dir, self.epochs, self.metric = run_dir, epochs, metric
        self.t0 = time.time()

    def after_report(self, run_context, metrics: list[dict[str, Any]], checkpoint) -> None:
        m = metrics[0]  # rank 0's
        record = {k: v for k, v in m.items() if isinstance(v, (int, float))}
        record["checkpoint"] = checkpoint.path if checkpoint is not None else None
        with open(Path(self.run_dir) / HISTORY_FILE, "a") as f:
            f.write(json.dumps(record) + "\n")
        epoch = int(m["epoch"]) + 1
        width = 20
        done = math.floor(width * epoch / self.epochs)
        loss = m.get("train_loss", float("nan"))
        print(
            f"[{'#' * done}{'.' * (width - done)}] epoch {epoch}/{self.epochs} "
            f"train_loss {loss:.4g}  {self.metric} {m.get(self.metric, float('nan')):.4g}  "
            f"({m['epoch_s']:.1f}s, {time.time() - self.t0:.0f}s total)",
            flush=True,
        )


@dataclass
class TrainSummary:
    name: str
    run_dir: Path
    metrics: dict[str, Any]
    best_checkpoint: Path | None
    wall_s: float
    history: list[dict[str, Any]] = field(default_factory=list)


def run_dir_of(storage: str, name: str) -> Path:
    if storage.startswith("s3://"):
        raise ConfigError("storage: s3:// run storage is not supported yet; use a local folder")
    return Path(storage).expanduser().resolve() / name


def prepare_run(cfg: RunConfig, resume: bool) -> tuple[RunConfig, Path]:
    """Name the run, create or check its folder, and store its config there."""
    if cfg.name is None:
        cfg = cfg.model_copy(update={"name": f"{cfg.family}-{time.strftime('%Y%m%d-%H%M%S')}"})
    run_dir = run_dir_of(cfg.storage, cfg.name)
    config_file = run_dir / RUN_CONFIG_FILE
    if config_file.exists() and not resume:
        raise ConfigError(
            f"name: run {cfg.name!r} already exists in {run_dir.parent}; "
            f"continue it with `genray train --resume {cfg.name}` or pick another --name"
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = config_file.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    os.replace(tmp, config_file)
    return cfg, run_dir


def load_run_config(name_or_dir: str, storage: str = "runs", overrides: list[str] = ()) -> RunConfig:
    """The stored config of an existing run, with `train.*` overrides (e.g. more epochs)."""
    path = Path(name_or_dir)
    run_dir = path if (path / RUN_CONFIG_FILE).exists() else run_dir_of(storage, name_or_dir)
    config_file = run_dir / RUN_CONFIG_FILE
    if not config_file.exists():
        raise ConfigError(f"resume: no run {name_or_dir!r} (looked for {config_file})")
    for text in overrides:
        if not text.startswith("train."):
            raise ConfigError(f"resume: only train.* settings can change when resuming, got {text!r}")
    base = yaml.safe_load(config_file.read_text())
    base["storage"] = str(run_dir.parent)
    return build_config(base=base, overrides=list(overrides))


def read_history(run_dir: Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / HISTORY_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def fit(cfg: RunConfig, *, resume: bool = False, verbose: bool = True) -> TrainSummary:
    """Train `cfg` on the connected Ray cluster (one is started locally if none is)."""
    if not ray.is_initialized():
        ray.init()
    cfg, run_dir = prepare_run(cfg, resume)
    family = get_family(cfg.family)
    use_gpu = cfg.train.use_gpu
    if use_gpu is None:
        use_gpu = ray.cluster_resources().get("GPU", 0) > 0
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"run": cfg.to_dict(), "run_dir": str(run_dir), "store": str(store_root())},
        scaling_config=ScalingConfig(
            num_workers=cfg.train.workers,
            use_gpu=use_gpu,
            resources_per_worker={"CPU": cfg.train.cpus_per_worker, **({"GPU": 1} if use_gpu else {})},
        ),
        run_config=ray.train.RunConfig(
            name=cfg.name,
            storage_path=str(run_dir.parent),
            checkpoint_config=CheckpointConfig(
                num_to_keep=cfg.train.keep_checkpoints,
                checkpoint_score_attribute=family.metric,
                checkpoint_score_order=family.mode,
            ),
            failure_config=FailureConfig(max_failures=cfg.train.max_failures),
            callbacks=[ProgressCallback(str(run_dir), cfg.train.epochs, family.metric)] if verbose else [],
        ),
    )
    t0 = time.perf_counter()
    result = trainer.fit()
    wall = time.perf_counter() - t0
    best = None
    if result.best_checkpoints:
        pick = min if family.mode == "min" else max
        best_ckpt, _ = pick(result.best_checkpoints, key=lambda cm: cm[1][family.metric])
        best = Path(best_ckpt.path)
    return TrainSummary(cfg.name, run_dir, dict(result.metrics or {}), best, wall, read_history(run_dir))
