"""Ray Train glue: the per-worker loop and the TorchTrainer around it.

The loop is family-agnostic: it builds the family, restores the latest checkpoint if the run
has one, wraps each network for DDP, shards the training set with a DistributedSampler,
and after every epoch reports metrics (all workers: `ray.train.report` is a barrier) and a
checkpoint (rank 0 only, see report_with_checkpoint). A run is the folder <storage>/<name>; starting a run again with the
same storage and name makes Ray Train hand the loop its latest checkpoint (Train V2).

Storage is a folder or an s3:// prefix on any S3-compatible store. On S3, Ray Train writes the
checkpoints through a pyarrow S3FileSystem (genray.data.uri.s3_filesystem); rank 0 writes
history.jsonl and TensorBoard events to a local folder and copies them to the bucket after every
epoch; the driver keeps a local mirror of the run's small files (run_dir_of) for TensorBoard.
"""

from __future__ import annotations

import gc
import json
import math
import os
import shutil
import signal
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import ray
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
import yaml
from ray.train import CheckpointConfig, CheckpointUploadMode, FailureConfig, ScalingConfig, UserCallback
from ray.train.torch import TorchTrainer
from torch.utils.data import DataLoader, DistributedSampler, Subset

from genray import checkpoint
from genray.config import ConfigError, RunConfig, build_config
from genray.data import augment, uri
from genray.families import get_family
from genray.metrics import global_throughput, store_root

RUN_CONFIG_FILE = "genray.yaml"
HISTORY_FILE = "history.jsonl"
# Ray Train's controller collects a worker's report only when it polls the workers, every
# RAY_TRAIN_HEALTH_CHECK_INTERVAL_S (2 s by default), and the worker's next report waits until
# the last one was collected (its result queue holds one): every epoch shorter than the interval
# took the whole interval (a 1 s VAE epoch took 2 s). TorchTrainer passes the driver's value on to
# the controller; a value the user set is kept.
REPORT_POLL_ENV = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2"}


def collect_reports_promptly() -> None:
    """Called in the process that builds a TorchTrainer (genray train's driver, a Tune trial)."""
    for key, value in REPORT_POLL_ENV.items():
        os.environ.setdefault(key, value)


# A Ray that genray starts itself is this machine alone. Ray Train's preemption watcher (one
# helper actor per run, polling the cluster's nodes for spot-preemption notices) then has no other
# node to watch; its process start took 1.6-1.9 CPU-s per run here, alongside the first epochs, on
# 2 cores. The driver's value reaches the controller through TorchTrainer; one the user set is kept.
LOCAL_RAY_ENV = {"RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}


def start_local_ray(**kwargs) -> None:
    """ray.init(address="local", **kwargs) for an embedded, single-machine Ray."""
    for key, value in LOCAL_RAY_ENV.items():
        os.environ.setdefault(key, value)
    ray.init(address="local", **kwargs)


# --- the worker side ---------------------------------------------------------------------

def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """Runs on every Ray Train worker. `loop_config` = {"run": RunConfig dict, "run_dir": str,
    "store": the model store folder, "init_from": optional checkpoint folder to start from,
    "run_uri" and "run_fs": where the run is stored when that is not run_dir (s3://)}."""
    cfg = RunConfig.model_validate(loop_config["run"])
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
            ckpt = restore(folder, loop_config.get("run_uri") or loop_config["run_dir"], device)
    elif loop_config.get("init_from"):  # another run's checkpoint: a Tune/PBT trial taking it over
        ckpt = checkpoint.load(loop_config["init_from"], map_location=device)
    if restored is not None or loop_config.get("init_from"):
        family.load_state_dict(ckpt.state)
        start_epoch = ckpt.epoch + 1
    finetune = cfg.train.finetune
    if finetune.init_from and restored is None and not loop_config.get("init_from"):
        # Fine-tuning starts from another run's weights (a fresh head), at epoch 0.
        loaded = family.init_finetune(checkpoint.load(finetune.init_from, map_location=device).state, finetune)
        if rank == 0:
            print(f"genray: {len(loaded)} tensors from {finetune.init_from}", flush=True)
    family.apply_finetune(finetune, start_epoch)  # before DDP: it syncs only what requires grad
    ddp = lambda net: ray.train.torch.prepare_model(net, move_to_device=False)  # noqa: E731
    if world > 1:
        family.wrap(ddp)

    train_set, val_set = family_cls.load_data(cfg.data)
    collate = family_cls.collate_fn
    # Different ranks draw different noise (dropout, reparameterisation) after this point.
    torch.manual_seed(cfg.train.seed * 1000 + rank + 7919 * start_epoch)
    sampler = DistributedSampler(train_set, num_replicas=world, rank=rank, shuffle=True, seed=cfg.train.seed)
    loader = DataLoader(train_set, batch_size=cfg.train.batch_size, sampler=sampler, collate_fn=collate)
    # Validation: each rank takes every world-th image; sums are all-reduced, so the mean is exact.
    val_loader = DataLoader(Subset(val_set, range(rank, len(val_set), world)), batch_size=256, collate_fn=collate)
    preview_batch = family.to_device(next(iter(DataLoader(val_set, batch_size=64, collate_fn=collate))))

    log = RunLog(loop_config, start_epoch) if rank == 0 else None
    writer = log.writer if log is not None else None

    augmenting = getattr(cfg.data, "augment", None) is not None and cfg.data.augment.enabled
    steps_per_epoch = len(loader)
    first_step_at = None
    # A Ray worker holds ~400k long-lived objects (Ray, pyarrow, pydantic, torch): every full
    # collection walks them all, ~200 ms each, stalling the step it hits. Freeze what setup made,
    # so collections during training see only what training allocates.
    gc.collect()
    gc.freeze()
    for epoch in range(start_epoch, cfg.train.epochs):
        t0, started_at = time.perf_counter(), time.time()
        if family.apply_finetune(finetune, epoch) and world > 1:
            family.wrap(ddp)  # blocks were unfrozen: a new DDP wrapper that syncs their gradients
        sampler.set_epoch(epoch)
        family.train()
        # Training inputs only, transformed on their device; the draws depend on (seed, rank, epoch).
        augment_gen = augment.generator(cfg.train.seed, rank, epoch) if augmenting else None
        sums: dict[str, float] = {}
        samples, t_steps, cpu_steps = 0, time.perf_counter(), time.thread_time()
        for i, batch in enumerate(loader):
            batch = family.to_device(batch)
            if augment_gen is not None:
                batch = family.augment_batch(batch, cfg.data.augment, augment_gen)
                if writer is not None and cfg.train.preview_every and epoch == start_epoch and i == 0:
                    from genray.images import grid

                    writer.add_image("augment/inputs", grid(batch[0][:64].detach().cpu()), epoch)
            step = family.train_step(batch, epoch + i / steps_per_epoch)
            for k, v in step.items():
                sums[k] = sums.get(k, 0.0) + v
            samples += family.batch_size(batch)
            if first_step_at is None:
                first_step_at = time.time()
        _, cpu_seconds = global_throughput(samples, time.thread_time() - cpu_steps)
        samples, seconds = global_throughput(samples, time.perf_counter() - t_steps)
        sums = all_reduce_sums(sums)
        metrics = {f"train_{k}": v / max(1, steps_per_epoch * world) for k, v in sums.items()}
        metrics["train_samples_per_s"] = samples / max(seconds, 1e-9)
        # Per CPU-second of the training thread: what a busy machine disturbs least.
        metrics["train_samples_per_cpu_s"] = samples / max(cpu_seconds, 1e-9)
        metrics["epoch_started_at"] = started_at  # unix time; consecutive ones give the full epoch wall
        if epoch == start_epoch and first_step_at is not None:
            metrics["first_step_at"] = first_step_at  # unix time this worker finished its first step
        metrics.update(evaluate(family, val_loader, len(val_set), device))
        if world > 1 and (finetune.freeze != "none" or finetune.init_from):
            metrics["param_rank_spread"] = rank_spread(family)  # 0 when DDP kept the ranks in step
        last = epoch == cfg.train.epochs - 1
        # A family ranked by sample quality (GANs: classifier-FID) is measured every epoch:
        # its checkpoints are scored by that metric.
        ranked_by_quality = family_cls.metric.startswith("sample_")
        if rank == 0 and (ranked_by_quality or cfg.train.quality_every and (last or epoch % cfg.train.quality_every == 0)):
            metrics.update(measure_quality(family, cfg.train.quality_samples))
        metrics.update(epoch=epoch, epoch_s=time.perf_counter() - t0, workers=world)

        if writer is not None:
            for k, v in metrics.items():
                if not k.endswith("_at"):  # timestamps are for the history, not for plots
                    writer.add_scalar(k, v, epoch)
            if cfg.train.preview_every and epoch % cfg.train.preview_every == 0:
                from genray.images import grid

                for tag, images in family.preview(preview_batch).items():
                    writer.add_image(tag, grid(images), epoch)
            writer.flush()

        checkpoint_name = None
        if rank == 0 and (last or (epoch + 1) % cfg.train.checkpoint_every == 0):
            checkpoint_name = f"checkpoint_epoch{epoch:05d}"
            report_with_checkpoint(
                metrics, checkpoint_name, None if loop_config.get("run_fs") else Path(loop_config["run_dir"]),
                lambda folder: checkpoint.save(folder, family=cfg.family, config=cfg.to_dict(),
                                               state=family.state_dict(), epoch=epoch, metrics=metrics),
            )
        else:
            ray.train.report(metrics)
        if log is not None:  # after report: the checkpoint it names is stored by now
            log.append(metrics, checkpoint_name)
    if log is not None:
        log.close()


def report_with_checkpoint(metrics: dict[str, Any], name: str, run_dir: Path | None,
                           write: Callable[[Path], Any]) -> None:
    """Rank 0's ray.train.report with the checkpoint `write(folder)` makes, named `name`.

    When the run's folder is on this machine's filesystem (`run_dir`, the folder Ray Train
    stores the run in), the checkpoint is written straight into it and reported where it lies
    (NO_UPLOAD): Ray Train's default would copy it there from a temporary folder after the
    report's barrier, with the other ranks already in their next epoch's first all-reduce,
    waiting (a VAE's 20 MB checkpoint every epoch). A folder of that name that is there already
    is an earlier attempt at this epoch that never reported (a restart from an older
    checkpoint): it is replaced. On S3, the checkpoint goes through a temporary folder and Ray
    Train uploads it."""
    if run_dir is not None:
        folder = run_dir / name
        if folder.exists():
            shutil.rmtree(folder)
        write(folder)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder), checkpoint_dir_name=name,
                         checkpoint_upload_mode=CheckpointUploadMode.NO_UPLOAD)
        return
    with tempfile.TemporaryDirectory() as tmp:
        write(Path(tmp) / "ckpt")
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(Path(tmp) / "ckpt"),
                         checkpoint_dir_name=name)


class RunLog:
    """Rank 0's record of a run: history.jsonl (one line per epoch) and TensorBoard events.

    They are written in the run folder; for a run on s3:// they are written in a local folder
    and copied to the bucket after every epoch, through the filesystem Ray Train stores the
    checkpoints with. A restarted or resumed loop drops the history of the epochs it repeats.
    """

    def __init__(self, loop_config: dict[str, Any], start_epoch: int):
        from torch.utils.tensorboard import SummaryWriter

        self.run_uri = loop_config.get("run_uri") or loop_config["run_dir"]
        self.fs = loop_config.get("run_fs")  # None: the run folder is local (or shared)
        if self.fs is None:
            self.local = Path(loop_config["run_dir"])
        else:
            self.local = Path(tempfile.mkdtemp(prefix="genray-run-"))
            self.remote_path = self.run_uri[len("s3://"):]
        self.history = [r for r in self.read_history() if r.get("epoch", -1) < start_epoch]
        self.writer = SummaryWriter(str(self.local / "tensorboard"), purge_step=start_epoch)

    def read_history(self) -> list[dict[str, Any]]:
        if self.fs is None:
            return read_history(self.local)
        try:
            with self.fs.open_input_stream(f"{self.remote_path}/{HISTORY_FILE}") as f:
                text = f.read().decode()
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def append(self, metrics: dict[str, Any], checkpoint_name: str | None) -> None:
        record = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
        record["checkpoint"] = uri.join(self.run_uri, checkpoint_name) if checkpoint_name else None
        self.history.append(record)
        uri.write_text(self.local / HISTORY_FILE, "".join(json.dumps(r) + "\n" for r in self.history))
        self.writer.flush()
        if self.fs is not None:
            import pyarrow.fs

            # The whole folder each epoch: a few small files, and a restarted worker on another
            # node leaves nothing behind.
            pyarrow.fs.copy_files(str(self.local), self.remote_path, destination_filesystem=self.fs)

    def close(self) -> None:
        self.writer.close()
        if self.fs is not None:
            shutil.rmtree(self.local, ignore_errors=True)  # everything is in the bucket by now


def restore(folder: str, run: str, device: torch.device) -> checkpoint.Checkpoint:
    """The run's latest checkpoint; when it fails verification (truncated, corrupted), the
    newest earlier checkpoint of the run that passes. Nothing is deleted: the damaged one stays
    for inspection, and the epochs after the fallback are trained (and logged) again."""
    from genray.store import run_checkpoints

    try:
        return checkpoint.load(folder, map_location=device)
    except checkpoint.CheckpointError as err:
        damaged = err
    print(f"genray: the latest checkpoint is unusable: {damaged}; falling back to an earlier one", flush=True)
    for candidate in reversed(run_checkpoints(run)):
        try:
            return checkpoint.load(candidate.path, map_location=device)
        except checkpoint.CheckpointError:
            continue
    raise checkpoint.CheckpointError(f"no usable checkpoint in {run}; the latest: {damaged}")


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


def rank_spread(family) -> float:
    """The largest difference between ranks of any network's summed parameters."""
    total = torch.tensor([float(sum(p.double().sum() for p in net.parameters())) for net in family.nets.values()],
                         dtype=torch.float64)
    high, low = total.clone(), -total
    dist.all_reduce(high, op=dist.ReduceOp.MAX)
    dist.all_reduce(low, op=dist.ReduceOp.MAX)
    return float((high + low).max())


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
    """Prints one line per epoch (on the Train controller; the job's log on a cluster)."""

    def __init__(self, epochs: int, metric: str):
        self.epochs, self.metric = epochs, metric
        self.t0 = time.time()

    def after_report(self, run_context, metrics: list[dict[str, Any]], checkpoint) -> None:
        m = metrics[0]  # rank 0's
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
    run_dir: Path  # the run folder; for s3:// storage, its local mirror (config, history, tensorboard)
    metrics: dict[str, Any]
    best_checkpoint: Path | str | None  # a folder, or an s3:// URI
    wall_s: float
    history: list[dict[str, Any]] = field(default_factory=list)
    run_uri: str = ""  # where the run is stored: the run folder's path, or s3://bucket/.../<name>


def run_uri_of(storage: str, name: str) -> str:
    """Where run `name` is stored: <storage>/<name>, a folder path or an s3:// URI."""
    if uri.is_s3(storage):
        return uri.join(storage, name)
    return str(Path(storage).expanduser().resolve() / name)


def run_dir_of(storage: str, name: str) -> Path:
    """The run's local folder: the run itself, or for s3:// storage a local mirror of its
    config, history and TensorBoard events (its checkpoints stay in the bucket)."""
    if uri.is_s3(storage):
        bucket, prefix = uri.split_s3(uri.join(storage, name))
        return uri.cache_dir() / "runs" / bucket / prefix
    return Path(run_uri_of(storage, name))


def run_exists(storage: str, name: str) -> bool:
    return uri.exists(uri.join(run_uri_of(storage, name), RUN_CONFIG_FILE))


def prepare_run(cfg: RunConfig, resume: bool) -> tuple[RunConfig, Path]:
    """Name the run, create or check its folder, and store its config there."""
    if cfg.name is None:
        cfg = cfg.model_copy(update={"name": f"{cfg.family}-{time.strftime('%Y%m%d-%H%M%S')}"})
    run_dir = run_dir_of(cfg.storage, cfg.name)
    if run_exists(cfg.storage, cfg.name) and not resume:
        raise ConfigError(
            f"name: run {cfg.name!r} already exists in {cfg.storage}; "
            f"continue it with `genray train --resume {cfg.name}` or pick another --name"
        )
    text = yaml.safe_dump(cfg.to_dict(), sort_keys=False)
    if uri.is_s3(cfg.storage) and not resume:
        shutil.rmtree(run_dir, ignore_errors=True)  # a mirror of an older run of that name
    run_dir.mkdir(parents=True, exist_ok=True)
    uri.write_text(run_dir / RUN_CONFIG_FILE, text)
    if uri.is_s3(cfg.storage):
        uri.write_text(uri.join(run_uri_of(cfg.storage, cfg.name), RUN_CONFIG_FILE), text)
    return cfg, run_dir


def load_run_config(name_or_dir: str, storage: str = "runs", overrides: list[str] = ()) -> RunConfig:
    """The stored config of an existing run, with `train.*` overrides (e.g. more epochs).
    `name_or_dir` is a run name under `storage`, a run folder, or a run's s3:// URI."""
    if uri.is_s3(name_or_dir):
        run, storage = name_or_dir.rstrip("/"), name_or_dir.rstrip("/").rsplit("/", 1)[0]
    elif (Path(name_or_dir) / RUN_CONFIG_FILE).exists():
        run = str(Path(name_or_dir).resolve())
        storage = str(Path(run).parent)
    else:
        run = run_uri_of(storage, name_or_dir)
    config_file = uri.join(run, RUN_CONFIG_FILE)
    for text in overrides:
        if not text.startswith("train."):
            raise ConfigError(f"resume: only train.* settings can change when resuming, got {text!r}")
    try:
        base = yaml.safe_load(uri.read_text(config_file))
    except uri.ObjectNotFound:
        raise ConfigError(f"resume: no run {name_or_dir!r} (looked for {config_file})") from None
    base["storage"] = storage if uri.is_s3(storage) else str(Path(run).parent)
    return build_config(base=base, overrides=list(overrides))


def read_history(run: str | Path) -> list[dict[str, Any]]:
    """A run's history.jsonl (a run folder or an s3:// URI); [] before its first epoch."""
    try:
        text = uri.read_text(uri.join(run, HISTORY_FILE))
    except uri.ObjectNotFound:
        return []
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def scaling_for(cfg: RunConfig, min_workers: int = 0) -> ScalingConfig:
    """The run's workers, each with its CPUs and, when the run asks for GPUs (or leaves
    train.use_gpu unset on a cluster that has them), one GPU. genray train and Tune trials alike."""
    use_gpu = cfg.train.use_gpu
    if use_gpu is None:
        use_gpu = ray.cluster_resources().get("GPU", 0) > 0
    return ScalingConfig(num_workers=max(min_workers, cfg.train.workers), use_gpu=use_gpu,
                         resources_per_worker={"CPU": cfg.train.cpus_per_worker, **({"GPU": 1} if use_gpu else {})})


# Ray Train's knob for one worker-group start; the process that builds the TorchTrainer passes it
# on to the run's controller.
START_TIMEOUT_ENV = "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"


def start_timeout_s(cfg: RunConfig) -> float:
    return cfg.train.worker_start_timeout_s or float(os.environ.get(START_TIMEOUT_ENV, 60.0))


def failure_config_for(cfg: RunConfig, start_tries: int | None = None) -> FailureConfig:
    """Worker-group restarts (train.max_failures) and the bounded wait for workers: at most
    train.worker_start_tries (else `start_tries`; None: forever) starts of start_timeout_s each.
    Sets the start timeout in this process's environment, where TorchTrainer reads it."""
    os.environ[START_TIMEOUT_ENV] = str(start_timeout_s(cfg))
    tries = cfg.train.worker_start_tries or start_tries
    return FailureConfig(max_failures=cfg.train.max_failures,
                         controller_failure_limit=-1 if tries is None else tries - 1)


def fit(cfg: RunConfig, *, resume: bool = False, verbose: bool = True) -> TrainSummary:
    """Train `cfg` on the connected Ray cluster (one is started locally if none is)."""
    if not ray.is_initialized():
        ray.init()
    cfg, run_dir = prepare_run(cfg, resume)
    run_uri = run_uri_of(cfg.storage, cfg.name)
    remote = uri.is_s3(cfg.storage)
    # On S3, Ray Train takes the bucket path without its scheme plus a filesystem that knows
    # the endpoint; the same filesystem goes to rank 0 for history and TensorBoard.
    fs = uri.s3_filesystem() if remote else None
    storage_path = cfg.storage[len("s3://"):].rstrip("/") if remote else str(run_dir.parent)
    family = get_family(cfg.family)
    collect_reports_promptly()
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"run": cfg.to_dict(), "run_dir": str(run_dir), "store": str(store_root()),
                           "run_uri": run_uri, "run_fs": fs},
        scaling_config=scaling_for(cfg),
        run_config=ray.train.RunConfig(
            name=cfg.name,
            storage_path=storage_path,
            storage_filesystem=fs,
            checkpoint_config=CheckpointConfig(
                num_to_keep=cfg.train.keep_checkpoints,
                checkpoint_score_attribute=family.metric,
                checkpoint_score_order=family.mode,
            ),
            failure_config=failure_config_for(cfg),
            callbacks=[ProgressCallback(cfg.train.epochs, family.metric)] if verbose else [],
        ),
    )
    t0 = time.perf_counter()
    result = fit_and_let_go(trainer)
    wall = time.perf_counter() - t0
    best = None
    if result.best_checkpoints:
        pick = min if family.mode == "min" else max
        best_ckpt, _ = pick(result.best_checkpoints, key=lambda cm: cm[1][family.metric])
        best = f"s3://{best_ckpt.path}" if remote else Path(best_ckpt.path)
    if remote:
        mirror_run(run_uri, run_dir)
    return TrainSummary(cfg.name, run_dir, dict(result.metrics or {}), best, wall, read_history(run_dir), run_uri)


def fit_and_let_go(trainer: TorchTrainer):
    """trainer.fit(), then let go of the run's controller. On the main thread Ray Train installs a
    Ctrl-C handler (abort the run) that holds the controller's handle and stays installed after
    fit returns, so the finished controller and its DatasetManager would live on in this process
    until its next fit; the process's own handler comes back instead."""
    handler = signal.getsignal(signal.SIGINT)
    try:
        return trainer.fit()
    finally:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, handler)


def mirror_run(run_uri: str, run_dir: Path) -> None:
    """Copy an s3:// run's history and TensorBoard events into its local mirror."""
    try:
        uri.write_text(run_dir / HISTORY_FILE, uri.read_text(uri.join(run_uri, HISTORY_FILE)))
        uri.download_folder(uri.join(run_uri, "tensorboard"), run_dir / "tensorboard")
    except uri.ObjectNotFound:
        pass  # no epoch finished
