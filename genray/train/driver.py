"""The driver side of a training run: the TorchTrainer around genray's worker loop, its workers
(scaling_for), its failure handling (failure_config_for), its data when files stream through
Ray Data (genray.data.pipeline), and `fit`, which trains one run.

A Tune trial builds its Train run with the same pieces (genray.tune).
"""

from __future__ import annotations

import math
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import ray
import ray.train
from ray.train import CheckpointConfig, FailureConfig, ScalingConfig, UserCallback
from ray.train.torch import TorchTrainer
from ray.train.v2._internal.exceptions import WorkerGroupStartupTimeoutError

from genray.config import ConfigError, RunConfig, TrackingConfig
from genray.data import DataConfig, DataError
from genray.families import get_family
from genray.metrics import store_root
from genray.runs import RunDir, new_run
from genray.storage import Location
from genray.tracking import local_store
from genray.train.loop import Hooks, LoopConfig
from genray.train.worker import train_loop_per_worker

if TYPE_CHECKING:
    from genray.data.pipeline import Streams

# Ray Train's controller collects a worker's report only when it polls the workers, every
# RAY_TRAIN_HEALTH_CHECK_INTERVAL_S (2 s by default), and the worker's next report waits until
# the last one was collected (its result queue holds one): every epoch shorter than the interval
# would take the whole interval. TorchTrainer passes the driver's value on to the controller; a
# value the user set is kept.
REPORT_POLL_ENV = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2"}


def collect_reports_promptly() -> None:
    """Called in the process that builds a TorchTrainer (genray train's driver, a Tune trial)."""
    for key, value in REPORT_POLL_ENV.items():
        os.environ.setdefault(key, value)


# A Ray that genray starts itself is this machine alone. Ray Train's preemption watcher (one
# helper actor per run, polling the cluster's nodes for spot-preemption notices) then has no other
# node to watch, and its process start competes with the first epochs for the machine's CPUs.
# The driver's value reaches the controller through TorchTrainer; one the user set is kept.
LOCAL_RAY_ENV = {"RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}
API_SERVER_ENV = "RAY_API_SERVER_ADDRESS"  # read by Ray's job and state clients before any other address


def start_local_ray(**kwargs) -> None:
    """ray.init(address="local", **kwargs) for an embedded, single-machine Ray.

    With a `dashboard_port`, the Ray's own processes are told where its dashboard is. Otherwise
    a process of it that looks for the state API (Ray Train's placement-group cleaner does) follows
    /tmp/ray/ray_current_cluster, the newest `ray start` head on the machine, which may be another
    Ray or one that has since stopped: the cleaner then fails, and the placement group of a run
    whose driver was killed is never freed. Only the Ray started here inherits the setting, not
    this process (where it would override any address given to a job or state client)."""
    for key, value in LOCAL_RAY_ENV.items():
        os.environ.setdefault(key, value)
    port = kwargs.get("dashboard_port")
    if port is None or API_SERVER_ENV in os.environ:
        ray.init(address="local", **kwargs)
        return
    host = kwargs.get("dashboard_host", "127.0.0.1")
    os.environ[API_SERVER_ENV] = f"http://{'127.0.0.1' if host == '0.0.0.0' else host}:{port}"
    try:
        ray.init(address="local", **kwargs)
    finally:
        del os.environ[API_SERVER_ENV]


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
    run: RunDir
    metrics: dict[str, Any]  # the last epoch's
    best_checkpoint: Path | str | None  # a folder, or an s3:// URI
    wall_s: float
    history: list[dict[str, Any]] = field(default_factory=list)
    metric: str = ""  # what ranked the checkpoints: the family's metric for the run's data

    @property
    def name(self) -> str:
        return self.run.name

    @property
    def run_dir(self) -> Path:
        """The run folder; for s3:// storage, its local mirror (config, history, tensorboard)."""
        return self.run.mirror

    @property
    def run_uri(self) -> str:
        """Where the run is stored: the run folder's path, or s3://bucket/.../<name>."""
        return str(self.run.location)


def scaling_for(cfg: RunConfig, min_workers: int = 0) -> ScalingConfig:
    """The run's workers (a fixed number, or an elastic [MIN, MAX]), their placement, each with
    its CPUs and, when the run asks for GPUs (or leaves train.use_gpu unset on a cluster that has
    them), one GPU. genray train and Tune trials alike."""
    train = cfg.train
    use_gpu = train.use_gpu
    if use_gpu is None:
        use_gpu = ray.cluster_resources().get("GPU", 0) > 0
    check_precision(cfg, use_gpu)
    workers = max(min_workers, train.workers) if not train.elastic else (max(min_workers, train.workers[0]),
                                                                        max(min_workers, train.workers[1]))
    return ScalingConfig(num_workers=workers, use_gpu=use_gpu, placement_strategy=train.placement.upper(),
                         resources_per_worker={"CPU": train.cpus_per_worker, **({"GPU": 1} if use_gpu else {})},
                         elastic_resize_monitor_interval_s=train.elastic_resize_s)


def check_precision(cfg: RunConfig, use_gpu: bool) -> None:
    """Refuse, before any worker starts, what a worker's loop would: fp16 without GPUs, and
    train.compile for a family that cannot be compiled."""
    if cfg.train.precision == "fp16" and not use_gpu:
        raise ConfigError("train.precision=fp16 needs GPUs (train.use_gpu=true, or a cluster with GPUs); "
                          "on CPUs use bf16")
    reason = get_family(cfg.family).compile_unsupported
    if cfg.train.compile and reason:
        raise ConfigError(f"train.compile: family {cfg.family} cannot be compiled: {reason}")


# Paths under these prefixes (separated by os.pathsep) are on a filesystem that every node of the
# cluster mounts (NFS, EFS, a Kubernetes volume): a cluster's setup sets it, genray cannot tell.
SHARED_ENV = "GENRAY_SHARED_STORAGE"


def check_reachable_from_every_node(storage: str | None = None, data: Any = None, model: str | None = None,
                                    tracking: TrackingConfig | None = None) -> None:
    """On a cluster of several nodes, refuse runs stored in `storage`, reading `data` (a data
    config), tracked in a local store (`tracking`) or a served `model` whose place is a path on
    this machine's disk: Ray Train's workers (or Serve's replicas) on the other nodes would write
    the run's checkpoints (and tracking) to (and read the data or model from) their own disks,
    where nothing else finds them."""
    if not ray.is_initialized():
        return
    nodes = sum(1 for node in ray.nodes() if node["Alive"])
    if nodes < 2:
        return
    shared = [Path(p).resolve() for p in os.environ.get(SHARED_ENV, "").split(os.pathsep) if p]
    places = [("storage", storage), ("model", model)]
    source = getattr(data, "source", None)
    if isinstance(source, str) and (os.sep in source or os.path.exists(source)):  # not a built-in name
        places.append(("data.source", source))
    if tracking is not None and tracking.tracker != "none":
        store = local_store(tracking.uri)
        places.append(("tracking.uri", str(store) if store is not None else None))
    for key, where in places:
        if where is None:
            continue
        location = Location(where)
        if location.on_s3 or any(location.path.resolve().is_relative_to(prefix) for prefix in shared):
            continue
        raise ConfigError(
            f"{key} {where!r} is a path on this machine, and this Ray cluster has {nodes} nodes: Ray's workers on "
            f"the other nodes would use their own disks there. Use s3://bucket/prefix, or a filesystem every node "
            f"mounts, declared with {SHARED_ENV}=<its mount point> in the environment of the driver")


# Ray Train's knob for one worker-group start; the process that builds the TorchTrainer passes it
# on to the run's controller.
START_TIMEOUT_ENV = "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"


# An elastic run's wait for its workers to be placed. Right after a node is lost Ray still counts
# its CPUs for a few seconds, and Train's elastic policy asks for the old size: that start must
# fail soon, so the run goes on with the workers that fit instead of waiting Ray's 60 s.
ELASTIC_START_TIMEOUT_S = 15.0


def start_timeout_s(cfg: RunConfig) -> float:
    if cfg.train.worker_start_timeout_s:
        return cfg.train.worker_start_timeout_s
    return ELASTIC_START_TIMEOUT_S if cfg.train.elastic else float(os.environ.get(START_TIMEOUT_ENV, 60.0))


class WorkersDidNotStart(RuntimeError):
    """A run's Train workers found no room in the cluster within the bounded wait."""


def explain_start_failure(err: BaseException, who: str, scaling: ScalingConfig, cfg: RunConfig,
                          default_tries: int | None = None, knobs: str = "") -> BaseException:
    """A run whose workers never started (train.worker_start_tries starts, else `default_tries`),
    as an error that says what it waited for and why; any other error as it is. `knobs`: what
    else the caller can lower, before train.workers."""
    if not isinstance(getattr(err, "controller_failure", None), WorkerGroupStartupTimeoutError):
        return err
    total = ray.cluster_resources()
    free = ray.available_resources()
    wanted = scaling.resources_per_worker
    held = {k: round(total.get(k, 0) - free.get(k, 0), 2) for k in wanted}
    count = scaling.min_workers if scaling.min_workers == scaling.max_workers else f"at least {scaling.min_workers}"
    return WorkersDidNotStart(
        f"{who}: its {count} Ray Train worker(s), {wanted} each, did not start in "
        f"{cfg.train.worker_start_tries or default_tries} tries of {start_timeout_s(cfg):g} s; the cluster has "
        f"{ {k: total.get(k, 0) for k in wanted} } in all, {held} held by other trials, runs or apps. "
        f"Lower {knobs}train.workers or train.cpus_per_worker, or add nodes."
    )


def failure_config_for(cfg: RunConfig, start_tries: int | None = None) -> FailureConfig:
    """Worker-group restarts (train.max_failures) and the bounded wait for workers: at most
    train.worker_start_tries (else `start_tries`; None: forever) starts of start_timeout_s each.
    Sets the start timeout in this process's environment, where TorchTrainer reads it."""
    os.environ[START_TIMEOUT_ENV] = str(start_timeout_s(cfg))
    tries = cfg.train.worker_start_tries or start_tries
    return FailureConfig(max_failures=cfg.train.max_failures,
                         controller_failure_limit=-1 if tries is None else tries - 1)


def streams_of(cfg: RunConfig) -> Streams | None:
    """The Ray Data datasets of a run whose data.source is files; None for in-memory data.

    The pipeline module is imported here, by a run that streams, and by no other: imported by
    every Tune driver and trial, a killed search left a trial's PlacementGroupCleaner actor
    behind (tests/test_tune.py), where without it nothing is left."""
    from genray.data.pipeline import streams_for

    return streams_for(cfg.data, cfg.train.seed) if isinstance(cfg.data, DataConfig) else None


def leave_cpus_for_data(scaling: ScalingConfig) -> None:
    """Ray Data reads and decodes in tasks of one CPU beside the training workers': a run whose
    workers take every CPU of the cluster would wait for its first batch forever."""
    total = ray.cluster_resources().get("CPU", 0.0)
    taken = scaling.max_workers * (scaling.resources_per_worker or {}).get("CPU", 1.0)
    if total - taken < 1.0:
        raise DataError(
            f"train.workers x train.cpus_per_worker take {taken:g} of the cluster's {total:g} CPUs; streaming "
            f"data.source through Ray Data needs at least one more for reading and decoding: lower "
            f"train.cpus_per_worker (e.g. 0.5) or train.workers, or add CPUs")


def data_error_in(err: BaseException) -> DataError | None:
    """The DataError behind a failed run (a bad file found in a Ray Data task, raised again in a
    worker and wrapped by Ray Train), as the same clear message; None when there is none."""
    seen, pending = set(), [err]
    while pending:
        e = pending.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        # Ray's task errors derive from the error they carry too; its own `cause` holds the
        # message alone, without the remote traceback.
        if isinstance(e, DataError) and not isinstance(e, ray.exceptions.RayError):
            return DataError(*e.args)
        pending += [getattr(e, "cause", None), e.__cause__, e.__context__,
                    *getattr(e, "worker_failures", {}).values(), getattr(e, "controller_failure", None)]
    return None


def trainer_for(loop: LoopConfig, *, scaling: ScalingConfig, checkpoint_config: CheckpointConfig,
                failure_config: FailureConfig, callbacks: list, streams: Streams | None = None) -> TorchTrainer:
    """The TorchTrainer of one run of genray's worker loop, stored in loop.run_dir (on S3
    through loop.filesystem); `streams`: the datasets its workers read their shards of."""
    storage_path, fs = loop.run_dir.storage.ray_storage(loop.filesystem)
    collect_reports_promptly()
    data = {}
    if streams is not None:
        leave_cpus_for_data(scaling)
        data = {"datasets": streams.datasets, "dataset_config": streams.data_config()}
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop.to_dict(),
        scaling_config=scaling,
        **data,
        run_config=ray.train.RunConfig(
            name=loop.run_dir.name, storage_path=storage_path, storage_filesystem=fs,
            checkpoint_config=checkpoint_config, failure_config=failure_config, callbacks=callbacks,
        ),
    )


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


def fit(cfg: RunConfig, *, resume: bool = False, verbose: bool = True, hooks: Sequence[Hooks] = ()) -> TrainSummary:
    """Train `cfg` on the connected Ray cluster (one is started locally if none is). `hooks`
    run inside the worker loop, on every worker."""
    if not ray.is_initialized():
        ray.init()
    check_reachable_from_every_node(cfg.storage, cfg.data, tracking=cfg.tracking)
    cfg, run = new_run(cfg, resume)
    # On S3, Ray Train and rank 0's run log share one filesystem that knows the endpoint.
    _, fs = run.storage.ray_storage()
    family = get_family(cfg.family)
    metric = family.metric_for(cfg.data)
    streams = streams_of(cfg)
    loop = LoopConfig(run=cfg, run_dir=run, store=str(store_root()), filesystem=fs, hooks=tuple(hooks),
                      streamed_rows=streams.train_rows if streams is not None else None)
    scaling = scaling_for(cfg)
    trainer = trainer_for(
        loop,
        scaling=scaling,
        checkpoint_config=CheckpointConfig(num_to_keep=cfg.train.keep_checkpoints,
                                           checkpoint_score_attribute=metric,
                                           checkpoint_score_order=family.mode),
        failure_config=failure_config_for(cfg),
        callbacks=[ProgressCallback(cfg.train.epochs, metric)] if verbose else [],
        streams=streams,
    )
    t0 = time.perf_counter()
    try:
        result = fit_and_let_go(trainer)
    except ray.train.TrainingFailedError as err:
        data_error = data_error_in(err)
        if data_error is not None:
            raise data_error from None
        failure = explain_start_failure(err, f"run {cfg.name}", scaling, cfg)
        if failure is err:
            raise
        raise failure from err
    wall = time.perf_counter() - t0
    best = None
    if result.best_checkpoints:
        pick = min if family.mode == "min" else max
        best_ckpt, _ = pick(result.best_checkpoints, key=lambda cm: cm[1][metric])
        best = run.storage.from_ray(best_ckpt.path).native()
    run.update_mirror()
    return TrainSummary(run, dict(result.metrics or {}), best, wall, run.history(), metric)
