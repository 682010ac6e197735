"""The training loop: plain PyTorch, no Ray.

The loop is family-agnostic: it builds the family, restores the latest checkpoint if the run
has one, wraps each network for DDP, shards the training set with a DistributedSampler (or, for
files streamed through Ray Data, reads the shard its session hands it: genray.data.files), and
after every epoch reports metrics (every rank) and a checkpoint (rank 0 only). What runs it
is a `Session`: this process's rank and device, the run's checkpoint to resume from, DDP and
where reports go. genray.train.worker's session is Ray Train's; the base Session here runs
the loop in one process, without Ray. `Hooks` let a caller watch every step and epoch
(genray bench ode times the steps with them).

Rank 0 writes history.jsonl and TensorBoard events in the run folder (genray.runs); for a run
on S3 it writes them to a local folder and copies them to the bucket after every epoch,
through the pyarrow filesystem the checkpoints are stored with. With tracking on, rank 0 also
records the run in an experiment tracker (genray.tracking).
"""

from __future__ import annotations

import dataclasses
import gc
import json
import math
import shutil
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler, Subset

from genray import checkpoint, telemetry
from genray.config import RunConfig
from genray.data import DataConfig, DataError, augment, resolve
from genray.data.files import ShardBatches
from genray.families import get_family
from genray.families.base import StepMetrics
from genray.metrics import global_throughput
from genray.runs import HISTORY_FILE, TENSORBOARD, TRACKING_FILE, RunDir, parse_history
from genray.storage import Location
from genray.tracking import open_tracker


class Hooks:
    """Callbacks from the loop, on every rank; override the ones you need. They travel to the
    workers inside the loop config, so a subclass must pickle (a module-level class does)."""

    def on_start(self, config: LoopConfig, rank: int) -> None:
        """Before the first step; the family, data and run log are ready."""

    def on_epoch_start(self, epoch: int) -> None:
        """At an epoch's start, before its first batch is read."""

    def before_step(self, epoch: float) -> None:
        """Just before a train step; `epoch` is fractional (epoch + step / steps_per_epoch)."""

    def after_step(self, metrics: StepMetrics) -> None:
        """After a train step, with the step's metrics (0-dim tensors: `float` waits for the device)."""

    def on_batch(self, samples: int) -> None:
        """After a train step, with the samples its batch held on this rank."""

    def on_epoch_end(self, epoch: int, metrics: dict[str, Any]) -> None:
        """After an epoch's metrics are complete, before they are reported."""

    def on_end(self, config: LoopConfig, rank: int) -> None:
        """After the last epoch has been reported and the run log closed."""


@dataclass
class LoopConfig:
    """What the loop needs besides the run config. Ray Train hands the worker a dict
    (to_dict / from_dict): `train_loop_config`."""

    run: RunConfig
    run_dir: RunDir  # where the run is stored: a local folder or an s3:// prefix
    store: str  # the driver's model store folder (the metrics classifier is cached there)
    init_from: str | None = None  # another run's checkpoint to start from (a Tune trial taking one over)
    filesystem: Any = None  # the driver's pyarrow S3 filesystem, for a run on S3 (endpoint and keys)
    hooks: tuple[Hooks, ...] = ()
    # The training rows the driver streams through Ray Data (the session's dataset shards "train"
    # and "val"); None: the family loads its data in memory.
    streamed_rows: int | None = None
    # More tags for the run in the experiment tracker (a Tune trial's search and trial id).
    tags: dict[str, str] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"run": self.run.to_dict(), "run_dir": str(self.run_dir), "store": self.store,
                "init_from": self.init_from, "filesystem": self.filesystem, "hooks": list(self.hooks),
                "streamed_rows": self.streamed_rows, "tags": dict(self.tags)}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> LoopConfig:
        names = [f.name for f in dataclasses.fields(cls)]
        required = {"run", "run_dir", "store"}
        if set(values) - set(names) or required - set(values):
            raise ValueError(f"train_loop_config: expected keys {names} ({sorted(required)} required), "
                             f"got {sorted(values)}")
        return cls(**{**values, "run": RunConfig.model_validate(values["run"]), "run_dir": RunDir.at(values["run_dir"]),
                      "hooks": tuple(values.get("hooks") or ())})

    @property
    def local_run_folder(self) -> Path | None:
        """The run folder when this machine writes it directly; None for a run on S3."""
        return None if self.filesystem is not None else self.run_dir.location.path


class Session:
    """What runs the loop. This one: a single process without Ray (rank 0 of 1), which writes
    its checkpoints into the local run folder and keeps its reports (`reports`)."""

    rank = 0
    world = 1
    nodes = 1  # the machines the worker group spans

    def __init__(self, device: str | torch.device = "cpu"):
        self.device = torch.device(device)
        self.reports: list[dict[str, Any]] = []

    @contextmanager
    def restored_checkpoint(self) -> Iterator[str | None]:
        """The folder of the run's own latest checkpoint (a resume or a worker restart), or None."""
        yield None

    def dataset_shard(self, name: str):
        """This rank's shard (a ray.data.DataIterator) of the streamed dataset `name`."""
        raise ValueError(f"a run without Ray has no streamed datasets (asked for {name!r}); "
                         "leave LoopConfig.streamed_rows unset to load the data in memory")

    def wrap(self, net: torch.nn.Module) -> torch.nn.Module:
        """A network wrapped for data-parallel training (called only when world > 1)."""
        return net

    def report(self, metrics: dict[str, Any], run_folder: Path | None = None, checkpoint_name: str | None = None,
               write: Callable[[Path], Any] | None = None) -> None:
        """Report an epoch's metrics; with `checkpoint_name`, also the checkpoint `write(folder)` makes."""
        if checkpoint_name is not None:
            if run_folder is None:
                raise ValueError("a run without Ray writes its checkpoints to a local run folder, not to S3")
            write(run_folder / checkpoint_name)
        self.reports.append(metrics)


def run_loop(config: LoopConfig, session: Session) -> None:
    """Train config.run from its latest checkpoint (or the start) to its last epoch."""
    cfg = config.run
    if isinstance(cfg.data, DataConfig):  # the images' shape and classes, as the checkpoints record them
        cfg = cfg.model_copy(update={"data": resolve(cfg.data)})
    rank, world, device = session.rank, session.world, session.device
    # genray_train_* metrics of this rank (a no-op without Ray); last, so other hooks' time is not a step's.
    config = dataclasses.replace(config, hooks=(*config.hooks, telemetry.TrainMetrics(device)))
    torch.set_num_threads(cfg.train.threads_per_worker)
    # The same seed on every rank gives identical initial weights (DDP also broadcasts rank 0's).
    torch.manual_seed(cfg.train.seed)

    family_cls = get_family(cfg.family)
    family = family_cls(cfg.model, device, spec=family_cls.spec_of(cfg.data))
    family.set_precision(cfg.train.precision)  # before a restore: fp16's loss scales are in the checkpoint
    if device.type == "cuda":
        family.use_channels_last()  # conv families only; before the optimizers hold any state
    start_epoch = 0
    with session.restored_checkpoint() as restored:
        if restored is not None:  # this run's own latest checkpoint: a resume or a worker restart
            ckpt = restore(restored, config.run_dir, device)
        elif config.init_from:  # another run's checkpoint: a Tune/PBT trial taking it over
            ckpt = checkpoint.load(config.init_from, map_location=device)
    if restored is not None or config.init_from:
        family.load_state_dict(ckpt.state)
        start_epoch = ckpt.epoch + 1
    finetune = cfg.train.finetune
    if finetune.init_from and restored is None and not config.init_from:
        # Fine-tuning starts from another run's weights (a fresh head), at epoch 0.
        loaded = family.init_finetune(checkpoint.load(finetune.init_from, map_location=device).state, finetune)
        if rank == 0:
            print(f"genray: {len(loaded)} tensors from {finetune.init_from}", flush=True)
    family.apply_finetune(finetune, start_epoch)  # before DDP: it syncs only what requires grad
    if world > 1:
        family.wrap(session.wrap)
    if cfg.train.compile:
        family.compile()
    lr_factor = cfg.train.lr_factor(world)
    if lr_factor != 1.0:
        scale_learning_rates(family, lr_factor)

    streamed = config.streamed_rows is not None
    if not streamed:
        train_set, val_set = family_cls.load_data(cfg.data)
    # Different ranks draw different noise (dropout, reparameterisation) after this point.
    torch.manual_seed(cfg.train.seed * 1000 + rank + 7919 * start_epoch)
    if streamed:
        train_data = ShardBatches(session.dataset_shard("train"), batch_size=cfg.train.batch_size,
                                  prefetch_batches=cfg.data.prefetch_batches, skip_bad=cfg.data.on_bad_file == "skip",
                                  shuffle_buffer=cfg.data.shuffle_buffer, seed=cfg.train.seed, rank=rank)
        # Each rank evaluates its share of the validation shard; counts and sums are all-reduced.
        val_data = ShardBatches(session.dataset_shard("val"), batch_size=256, prefetch_batches=cfg.data.prefetch_batches,
                                skip_bad=cfg.data.on_bad_file == "skip")
        val_total = None
        steps_per_epoch = max(1, math.ceil(config.streamed_rows / world / cfg.train.batch_size))  # for fractional epochs
        preview_batch = None  # the first validation batch, once evaluated
    else:
        collate = family_cls.collate_fn
        # On a GPU, batches are built in page-locked memory, so that their copies to the device
        # (family.to_device, non-blocking) overlap the step before.
        pin = device.type == "cuda"
        sampler = DistributedSampler(train_set, num_replicas=world, rank=rank, shuffle=True, seed=cfg.train.seed)
        train_data = SampledBatches(DataLoader(train_set, batch_size=cfg.train.batch_size, sampler=sampler,
                                               collate_fn=collate, pin_memory=pin), sampler)
        # Validation: each rank takes every world-th image; sums are all-reduced, so the mean is exact.
        val_data = SampledBatches(DataLoader(Subset(val_set, range(rank, len(val_set), world)), batch_size=256,
                                             collate_fn=collate, pin_memory=pin))
        val_total = len(val_set)
        steps_per_epoch = len(train_data.loader)
        preview_batch = family.to_device(next(iter(DataLoader(val_set, batch_size=64, collate_fn=collate))))
    # Skipping bad files can empty one rank's batch: every rank then skips that step (DDP steps together).
    steps_agree = streamed and world > 1 and cfg.data.on_bad_file == "skip"

    log = RunLog(config, start_epoch, ckpt if restored is not None else None) if rank == 0 else None
    writer = log.writer if log is not None else None
    for hook in config.hooks:
        hook.on_start(config, rank)

    augmenting = getattr(cfg.data, "augment", None) is not None and cfg.data.augment.enabled
    first_step_at = None
    # A Ray worker holds hundreds of thousands of long-lived objects (Ray, pyarrow, pydantic,
    # torch): every full collection walks them all, stalling the step it hits. Freeze what setup
    # made, so collections during training see only what training allocates.
    gc.collect()
    gc.freeze()
    # Rank 0's log is closed however the loop ends: a Tune trial that its scheduler stops leaves
    # it at a report, through SystemExit.
    try:
        for epoch in range(start_epoch, cfg.train.epochs):
            t0, started_at = time.perf_counter(), time.time()
            if family.apply_finetune(finetune, epoch) and world > 1:
                family.wrap(session.wrap)  # blocks were unfrozen: a new DDP wrapper that syncs their gradients
            family.train()
            # Training inputs only, transformed on their device; the draws depend on (seed, rank, epoch).
            augment_gen = augment.generator(cfg.train.seed, rank, epoch) if augmenting else None
            sums: dict[str, torch.Tensor | float] = {}
            samples, steps, t_steps, cpu_steps = 0, 0, time.perf_counter(), time.thread_time()
            for hook in config.hooks:
                hook.on_epoch_start(epoch)
            batches = train_data.epoch(epoch)
            if steps_agree:
                batches = nonempty_on_every_rank(batches)
            for i, batch in enumerate(batches):
                batch = family.to_device(batch)
                if augment_gen is not None:
                    batch = family.augment_batch(batch, cfg.data.augment, augment_gen)
                    if writer is not None and cfg.train.preview_every and epoch == start_epoch and i == 0:
                        from genray.images import grid

                        writer.add_image("augment/inputs", grid(batch[0][:64].detach().cpu()), epoch)
                for hook in config.hooks:
                    hook.before_step(epoch + i / steps_per_epoch)
                with family.autocast():
                    step = family.train_step(batch, epoch + i / steps_per_epoch)
                for hook in config.hooks:
                    hook.after_step(step)
                add_step(sums, step)
                batch_samples = family.batch_size(batch)
                samples += batch_samples
                for hook in config.hooks:
                    hook.on_batch(batch_samples)
                steps += 1
                if first_step_at is None:
                    first_step_at = time.time()
            sums = read_sums(sums)  # the epoch's one wait for the device's step metrics
            _, cpu_seconds = global_throughput(samples, time.thread_time() - cpu_steps)
            samples, seconds = global_throughput(samples, time.perf_counter() - t_steps)
            sums = all_reduce_sums({**sums, STEPS: steps, SKIPPED: train_data.skipped})
            steps, skipped = sums.pop(STEPS), sums.pop(SKIPPED)
            metrics = {f"train_{k}": v / max(1, steps) for k, v in sums.items()}
            metrics["train_samples_per_s"] = samples / max(seconds, 1e-9)
            # Per CPU-second of the training thread: what a busy machine disturbs least.
            metrics["train_samples_per_cpu_s"] = samples / max(cpu_seconds, 1e-9)
            metrics["epoch_started_at"] = started_at  # unix time; consecutive ones give the full epoch wall
            if epoch == start_epoch and first_step_at is not None:
                metrics["first_step_at"] = first_step_at  # unix time this worker finished its first step
            metrics.update(evaluate(family, val_data, epoch, val_total))
            if streamed:
                metrics["data_skipped"] = skipped + metrics.pop(SKIPPED)  # bad files left out this epoch
                if preview_batch is None and val_data.first is not None:
                    preview_batch = [t[:64] for t in val_data.first]
            if world > 1 and (finetune.freeze != "none" or finetune.init_from):
                metrics["param_rank_spread"] = rank_spread(family)  # 0 when DDP kept the ranks in step
            last = epoch == cfg.train.epochs - 1
            # A family ranked by sample quality (GANs: classifier-FID) is measured every epoch:
            # its checkpoints are scored by that metric. Sample quality needs labelled images.
            ranked_by_quality = family_cls.metric_for(cfg.data).startswith("sample_")
            labelled = family.spec.num_classes >= 2
            if rank == 0 and labelled and (ranked_by_quality or cfg.train.quality_every
                                           and (last or epoch % cfg.train.quality_every == 0)):
                metrics.update(measure_quality(family, cfg.train.quality_samples, cfg.data))
            # The worker group's size and spread: an elastic run's changes, a placement's effect.
            metrics.update(epoch=epoch, epoch_s=time.perf_counter() - t0, workers=world, nodes=session.nodes,
                           lr_factor=lr_factor)
            for hook in config.hooks:
                hook.on_epoch_end(epoch, metrics)

            if log is not None:  # before report: a Tune trial its scheduler stops never returns from it
                previews = {}
                if cfg.train.preview_every and epoch % cfg.train.preview_every == 0 and preview_batch is not None:
                    from genray.images import grid

                    previews = {tag: grid(images) for tag, images in family.preview(preview_batch).items()}
                log.record_epoch(epoch, metrics, previews)

            checkpoint_name = None
            if rank == 0 and (last or (epoch + 1) % cfg.train.checkpoint_every == 0):
                checkpoint_name = checkpoint_name_of(epoch)
                session.report(metrics, config.local_run_folder, checkpoint_name, telemetry.timed_checkpoint(
                    config.run_dir.name, lambda folder: checkpoint.save(folder, family=cfg.family, config=cfg.to_dict(),
                                                                        state=family.state_dict(), epoch=epoch,
                                                                        metrics=metrics)))
            else:
                session.report(metrics)
            if log is not None:  # after report: the checkpoint it names is stored by now
                log.append(metrics, checkpoint_name)
    except BaseException as err:
        if log is not None:
            log.close(err)
        raise
    if log is not None:
        log.close()
    for hook in config.hooks:
        hook.on_end(config, rank)


class RunLog:
    """Rank 0's record of a run: history.jsonl (one line per epoch), TensorBoard events and, when
    the run config turns tracking on, an experiment tracker's run (genray.tracking).

    They are written in the run folder; for a run on s3:// they are written in a local folder
    and copied to the bucket after every epoch, through the filesystem Ray Train stores the
    checkpoints with. A restarted or resumed loop drops the history of the epochs it repeats, and
    continues the tracker's run that the run folder names (tracking.json, written there at once).
    An epoch's line is appended after its report (which stores its checkpoint), so a worker lost
    between the two leaves a checkpoint the history lacks: the restart rebuilds that line from the
    checkpoint's own metrics.
    """

    def __init__(self, config: LoopConfig, start_epoch: int, restored: checkpoint.Checkpoint | None = None):
        from torch.utils.tensorboard import SummaryWriter

        self.run = config.run_dir
        self.fs = config.filesystem  # None: the run folder is local (or shared)
        if self.fs is None:
            self.local = self.run.location.path
        else:
            self.local = Path(tempfile.mkdtemp(prefix="genray-run-"))
            self.remote_path = self.run.location.pyarrow_path
        self.history = [r for r in parse_history(self.read_text(HISTORY_FILE) or "") if r.get("epoch", -1) < start_epoch]
        if restored is not None and not any(r.get("epoch") == restored.epoch for r in self.history):
            record = {**restored.metrics, "epoch": restored.epoch}
            self.history.append({**record, "checkpoint": self.checkpoint_path(checkpoint_name_of(restored.epoch))})
        self.writer = SummaryWriter(str(self.local / TENSORBOARD), purge_step=start_epoch)
        self.last_epoch = config.run.train.epochs - 1
        self.recorded = start_epoch - 1  # the newest epoch recorded
        stored = self.read_text(TRACKING_FILE)
        stored = json.loads(stored) if stored else None
        self.tracker = open_tracker(config.run, self.run, config.tags, stored)
        if self.tracker.record is not None and self.tracker.record != stored:
            self.write_now(TRACKING_FILE, json.dumps(self.tracker.record))

    def read_text(self, name: str) -> str | None:
        """A file of the run folder; None when it is not there."""
        if self.fs is None:
            path = self.local / name
            return path.read_text() if path.is_file() else None
        try:
            with self.fs.open_input_stream(f"{self.remote_path}/{name}") as f:
                return f.read().decode()
        except FileNotFoundError:
            return None

    def write_now(self, name: str, text: str) -> None:
        """Write a file of the run folder at once (on S3 too, not with the next epoch's copy)."""
        if self.fs is None:
            Location(self.local / name).write_text(text)
            return
        with self.fs.open_output_stream(f"{self.remote_path}/{name}") as f:
            f.write(text.encode())

    def record_epoch(self, epoch: int, metrics: dict[str, Any], previews: dict[str, torch.Tensor]) -> None:
        """The epoch's scalars and preview grids ((C, H, W), by tag) to TensorBoard and the tracker."""
        scalars = {k: v for k, v in metrics.items() if not k.endswith("_at")}  # timestamps are for the history
        for k, v in scalars.items():
            self.writer.add_scalar(k, v, epoch)
        for tag, image in previews.items():
            self.writer.add_image(tag, image, epoch)
        self.writer.flush()
        self.tracker.log_epoch(epoch, scalars, previews)
        self.recorded = epoch

    def append(self, metrics: dict[str, Any], checkpoint_name: str | None) -> None:
        record = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
        record["checkpoint"] = self.checkpoint_path(checkpoint_name) if checkpoint_name else None
        self.history.append(record)
        Location(self.local / HISTORY_FILE).write_text("".join(json.dumps(r) + "\n" for r in self.history))
        self.writer.flush()
        if self.fs is not None:
            import pyarrow.fs

            # The whole folder each epoch: a few small files, and a restarted worker on another
            # node leaves nothing behind.
            pyarrow.fs.copy_files(str(self.local), self.remote_path, destination_filesystem=self.fs)

    def checkpoint_path(self, name: str) -> str:
        return str(self.run.location / name)

    def close(self, error: BaseException | None = None) -> None:
        """Close the log; `error`: what ended the loop early, if anything."""
        self.writer.close()
        if self.recorded == self.last_epoch:
            status = "FINISHED"  # a trial stopped at its last report finished all the same
        else:
            status = "KILLED" if isinstance(error, (SystemExit, KeyboardInterrupt)) else "FAILED"
        try:
            self.tracker.close(status)
        except Exception as err:
            if error is None:
                raise
            # The loop is failing already: its own error is the one to see.
            print(f"genray: could not end the tracker's run ({status}): {err}", flush=True)
        finally:
            if self.fs is not None:
                shutil.rmtree(self.local, ignore_errors=True)  # everything is in the bucket by now


def checkpoint_name_of(epoch: int) -> str:
    """The folder name of epoch `epoch`'s checkpoint in the run folder."""
    return f"checkpoint_epoch{epoch:05d}"


def restore(folder: str, run: RunDir, device: torch.device) -> checkpoint.Checkpoint:
    """The run's latest checkpoint; when it fails verification (truncated, corrupted), the
    newest earlier checkpoint of the run that passes. Nothing is deleted: the damaged one stays
    for inspection, and the epochs after the fallback are trained (and logged) again."""
    try:
        return checkpoint.load(folder, map_location=device)
    except checkpoint.CheckpointError as err:
        damaged = err
    print(f"genray: the latest checkpoint is unusable: {damaged}; falling back to an earlier one", flush=True)
    for candidate in reversed(run.checkpoints()):
        try:
            return checkpoint.load(candidate.path, map_location=device)
        except checkpoint.CheckpointError:
            continue
    raise checkpoint.CheckpointError(f"no usable checkpoint in {run}; the latest: {damaged}")


def scale_learning_rates(family, factor: float) -> None:
    """Every optimizer of `family` steps with its learning rates x `factor` (train.scale_lr).
    The rates are multiplied just before each step and put back right after, so whatever sets
    them (a family's decay schedule, fine-tuning) works on the unscaled values, and checkpoints
    store those."""
    saved: dict[int, list[float]] = {}

    def before(opt, args, kwargs):
        saved[id(opt)] = [group["lr"] for group in opt.param_groups]
        for group in opt.param_groups:
            group["lr"] = group["lr"] * factor

    def after(opt, args, kwargs):
        for group, lr in zip(opt.param_groups, saved.pop(id(opt))):
            group["lr"] = lr

    for opt in family.optimizers.values():
        opt.register_step_pre_hook(before)
        opt.register_step_post_hook(after)


def measure_quality(family, n: int, data) -> dict[str, float]:
    """Classifier-based sample quality (genray.metrics), for families that generate digits."""
    family.eval()
    drawn = family.quality_samples(n, seed=0)
    if drawn is None:
        return {}
    from genray.metrics import sample_quality

    images, wanted = drawn
    return {f"sample_{k}": v for k, v in sample_quality(images.cpu(), wanted, data=data).items()}


def add_step(sums: dict[str, torch.Tensor | float], step: StepMetrics) -> None:
    """Add a step's metrics to the epoch's sums where they are: a tensor stays on its device
    (in float64, so a long epoch of bf16 losses adds up exactly), a number stays a number."""
    for k, v in step.items():
        if isinstance(v, torch.Tensor):
            v = v.detach().to(torch.float64)
        sums[k] = sums.get(k, 0.0) + v


def read_sums(sums: dict[str, torch.Tensor | float]) -> dict[str, float]:
    """The sums as numbers, with one copy from each device they are on."""
    out = {k: float(v) for k, v in sums.items() if not isinstance(v, torch.Tensor)}
    on_device = {k: v for k, v in sums.items() if isinstance(v, torch.Tensor)}
    if on_device:
        out.update(zip(on_device, torch.stack(list(on_device.values())).tolist()))
    return out


# Keys of the per-epoch sums that are counts, not metrics.
STEPS, ROWS, SKIPPED = "_steps", "_rows", "_skipped"


class SampledBatches:
    """An in-memory set's batches: this rank's share, reshuffled every epoch by a sampler."""

    skipped = 0

    def __init__(self, loader: DataLoader, sampler: DistributedSampler | None = None):
        self.loader, self.sampler = loader, sampler

    def epoch(self, epoch: int) -> DataLoader:
        if self.sampler is not None:
            self.sampler.set_epoch(epoch)
        return self.loader


def nonempty_on_every_rank(batches: Iterator[list[torch.Tensor]]) -> Iterator[list[torch.Tensor]]:
    """The batches of a streamed shard whose counterparts on every rank kept rows (a skipped bad
    file leaves a batch short): a step that one rank skips, every rank skips. Streamed shards
    are equal, so every rank sees as many batches."""
    for batch in batches:
        kept = torch.tensor([len(batch[0])], dtype=torch.int64)
        dist.all_reduce(kept, op=dist.ReduceOp.MIN)
        if kept.item() > 0:
            yield batch


@torch.no_grad()
def evaluate(family, data: SampledBatches | ShardBatches, epoch: int, total: int | None) -> dict[str, float]:
    """Validation means over the whole val set, summed across ranks. `total`: the set's size,
    or None to count the rows of a streamed one (whose skipped files come back as SKIPPED)."""
    family.eval()
    sums: dict[str, float] = {}
    rows = 0
    for batch in data.epoch(epoch):
        if total is None and len(batch[0]) == 0:
            continue  # every file of the batch was skipped
        for k, v in family.eval_batch(family.to_device(batch)).items():
            sums[k] = sums.get(k, 0.0) + v
        if total is None:
            rows += family.batch_size(batch)
    if total is not None:
        return {k: v / total for k, v in all_reduce_sums(sums).items()}
    sums = all_reduce_sums({**sums, ROWS: rows, SKIPPED: data.skipped})
    rows, skipped = sums.pop(ROWS), sums.pop(SKIPPED)
    if rows == 0:
        raise DataError(f"the validation split holds no usable images ({int(skipped)} skipped); "
                        "add images or raise data.val_fraction")
    return {**{k: v / rows for k, v in sums.items()}, SKIPPED: skipped}


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
