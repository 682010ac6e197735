"""Ray Tune glue: search spaces, schedulers, resume — over genray's own training loop.

Each Tune trial is a function trainable that trains one run of genray's loop and hands every
epoch to Tune with `ray.tune.report(metrics, checkpoint)`. Real Tune checkpoints are what let
PBT exploit a better trial and let `Tuner.restore` restart an interrupted trial where it was;
a trial that starts from a Tune checkpoint passes it to the loop as `init_from`.

A trial of one worker runs the loop in its own process (TrialSession): it reserves that
worker's CPUs (and GPU) itself and starts training within a second or two. A trial of several
workers (or an elastic group) is a small driver of a nested `TorchTrainer.fit()`: the fit runs
in a background thread, the Train controller's callback passes (metrics, checkpoint path)
through a Ray queue, and the trial copies that checkpoint into a Tune checkpoint. Its Train run
(controller, workers, their placement group) lives exactly as long as the trial: when Tune
stops, pauses or fails the trial, the trial aborts its run before it returns (see
train_nested), and a run whose workers cannot start within train.worker_start_timeout_s x
train.worker_start_tries fails the trial with the resources it waited for, so a search never
waits on CPUs that its own stopped trials hold.

A search lives in <storage>/<name>/ (a folder or an s3:// prefix): Tune's experiment folder,
`train/` with every trial's run (so `tensorboard --logdir <storage>/<name>/train` shows all
trials together), and results.csv / results.json once it finishes. On S3, Tune and each trial's
Train run write through the same pyarrow filesystem as `genray train` (genray.storage). With
tracking on, the search is an experiment of the tracker and each trial a run in it, tagged with
the search and the trial (genray.tracking).
"""

from __future__ import annotations

import csv
import gc
import hashlib
import io
import json
import os
import queue as pyqueue
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

import ray
import ray.tune
import yaml
from ray import tune
from ray._common.constants import HEAD_NODE_RESOURCE_NAME
from ray.train import CheckpointConfig, UserCallback
# Ray Train's controller-side hook interface (Ray is pinned): its public UserCallback sees only
# reports, and a trial needs its run's controller before the first one, to abort it.
from ray.train.v2._internal.execution.callback import ControllerCallback
from ray.util.queue import Queue

from genray import checkpoint
from genray.config import ConfigError, RunConfig, apply_override
from genray.data import DataConfig, resolve
from genray.data.files import find_source
from genray.families import get_family
from genray.metrics import store_root
from genray.runs import RunDir
from genray.storage import Location
from genray.tracking import prepare as prepare_tracking
from genray.tracking import require as require_tracker
from genray.train import LoopConfig, Session, failure_config_for, run_loop, scaling_for, start_timeout_s, trainer_for
from genray.train.driver import (check_precision, check_reachable_from_every_node, data_error_in, explain_start_failure,
                                 streams_of)

DOMAINS = {
    "loguniform": lambda a: tune.loguniform(*a),
    "uniform": lambda a: tune.uniform(*a),
    "choice": lambda a: tune.choice(list(a)),
    "randint": lambda a: tune.randint(*a),
    "grid": lambda a: tune.grid_search(list(a)),  # every value, num_samples times each
}
# A nested trial is only a driver: its Train workers ask the cluster for their own CPUs/GPUs. Tune
# refuses an empty request, and any CPU fraction here would leave N trials x 1-CPU workers
# one fraction short of N CPUs (deadlock at max_concurrent = cores), so the driver reserves
# 64 MiB of memory instead. It runs on the head node, as Ray Train's controller and Serve's
# controller do (the same token share of the head's own resource): the trial, and the Train
# controller that follows it, outlive the loss of any worker node, whose Train workers restart
# from the trial run's latest checkpoint.
TRIAL_RESOURCES = {"memory": 64 * 1024 * 1024, HEAD_NODE_RESOURCE_NAME: 0.001}
TRIALS_FOLDER = "train"  # <search>/train/<trial run>: every trial's run


SEARCHERS = ("random", "grid", "optuna")
SCHEDULERS = ("fifo", "asha", "hyperband", "pbt", "pb2")


@dataclass
class SearchSpec:
    space: dict[str, Any]  # config path -> Tune domain
    mutations: dict[str, Any]
    metric: str
    mode: str
    # As written in the YAML: config path -> (domain kind, its arguments); the searchers that
    # take a space of their own (grid, PB2's bounds) are built from these.
    raw_space: dict[str, tuple[str, Any]] = field(default_factory=dict)
    raw_mutations: dict[str, tuple[str, Any]] = field(default_factory=dict)
    searcher: str | None = None  # the YAML's choice; the command line's wins
    scheduler: str | None = None


def load_space(family: str, spec: str | None, data: Any = None) -> SearchSpec:
    """A YAML search space: a path, or None for the family's packaged default. When it names the
    family's own metric (or none) and `data` (the search's resolved data config) cannot give
    that one, the metric that ranks the family on that data."""
    if spec is None:
        packaged = resources.files("genray.spaces") / f"{family}.yaml"
        if not packaged.is_file():
            raise ConfigError(f"space: no packaged search space for {family!r}; pass --space FILE")
        text = packaged.read_text()
    else:
        path = Path(spec)
        if not path.is_file():
            raise ConfigError(f"space: file not found: {spec}")
        text = path.read_text()
    raw = yaml.safe_load(text) or {}
    keys = {"space", "mutations", "metric", "mode", "searcher", "scheduler"}
    unknown = set(raw) - keys
    if unknown:
        raise ConfigError(f"space: unknown keys {sorted(unknown)}; expected {', '.join(sorted(keys))}")
    fam = get_family(family)
    metric, mode = raw.get("metric", fam.metric), raw.get("mode", fam.mode)
    if data is not None and metric == fam.metric and fam.metric_for(data) != metric:
        metric, mode = fam.metric_for(data), fam.mode  # e.g. no sample quality without labels
    space, mutations = raw.get("space") or {}, raw.get("mutations") or {}
    return SearchSpec(
        space={k: to_domain(k, v) for k, v in space.items()},
        mutations={k: to_domain(k, v) for k, v in mutations.items()},
        metric=metric,
        mode=mode,
        raw_space={k: next(iter(v.items())) for k, v in space.items()},
        raw_mutations={k: next(iter(v.items())) for k, v in mutations.items()},
        searcher=check_choice("searcher", raw.get("searcher"), SEARCHERS),
        scheduler=check_choice("scheduler", raw.get("scheduler"), SCHEDULERS),
    )


def check_choice(what: str, value: str | None, allowed: tuple[str, ...]) -> str | None:
    if value is not None and value not in allowed:
        raise ConfigError(f"{what} must be one of {', '.join(allowed)}, got {value!r}")
    return value


def plan_search(family: str, *, space: str | None, overrides: list[str], storage: str, scheduler: str | None = None,
                searcher: str | None = None, name: str | None = None, metric: str | None = None,
                mode: str | None = None) -> tuple[SearchSpec, RunConfig, RunDir]:
    """A new search, checked before any Ray starts: its space (with `metric`/`mode` in place of
    the space's, and spec.searcher / spec.scheduler decided: the ones given here, else the
    YAML's, else random and asha), the base config every trial starts from, and its folder
    (named <family>-<scheduler>-<time> unless `name` is given), which must not hold a search yet."""
    from genray.config import build_config

    base = build_config(family, None, overrides)
    require_tracker(base.tracking)
    if isinstance(base.data, DataConfig):  # every trial records the images' shape and classes
        base = base.model_copy(update={"data": resolve(base.data)})
    spec = load_space(family, space, base.data)
    if metric:
        spec.metric, spec.mode = metric, mode or spec.mode
    spec.searcher = check_choice("searcher", searcher, SEARCHERS) or spec.searcher or "random"
    spec.scheduler = check_choice("scheduler", scheduler, SCHEDULERS) or spec.scheduler or "asha"
    make_searcher(spec, max_concurrent=1, seed=None, num_samples=1)  # refuses a space it cannot take
    make_scheduler(spec.scheduler, spec, base.train.epochs, 1, 2)
    search = RunDir(storage, name or f"{family}-{spec.scheduler}-{time.strftime('%Y%m%d-%H%M%S')}")
    if search.search_spec_file.exists():
        raise ConfigError(f"search {search.name!r} exists in {storage}; continue it with --resume {search.name}")
    return spec, base, search


def to_domain(key: str, value: Any):
    if not isinstance(value, dict) or len(value) != 1 or next(iter(value)) not in DOMAINS:
        raise ConfigError(f"space.{key}: expected one of {{{', '.join(DOMAINS)}: ...}}, got {value!r}")
    kind, args = next(iter(value.items()))
    return DOMAINS[kind](args)


def trial_config(base: dict[str, Any], overrides: dict[str, Any]) -> RunConfig:
    tree = json.loads(json.dumps(base))
    for key, value in overrides.items():
        apply_override(tree, key.split("."), value)
    return RunConfig.model_validate(tree)


class ToTune(UserCallback):
    """On the Train controller: hand each epoch's rank-0 metrics and checkpoint path to the trial."""

    def __init__(self, channel: Queue):
        self.channel = channel

    def after_report(self, run_context, metrics, checkpoint) -> None:
        self.channel.put(("report", metrics[0], checkpoint.path if checkpoint is not None else None))


class ControllerToTrial(ControllerCallback):
    """On the Train controller, once it starts: hand the trial its handle, so that the trial can
    abort the run when Tune stops it."""

    def __init__(self, channel: Queue):
        self.channel = channel

    def after_controller_start(self, train_run_context) -> None:
        self.channel.put(("controller", ray.get_runtime_context().current_actor, None))


ABORT_TIMEOUT_S = 30.0
FINISH_GRACE_S = 3.0  # a run stopped at its last epoch is already shutting down by itself
TRIAL_START_TRIES = 3  # worker-group starts a trial's run makes when train.worker_start_tries is unset


class TrialRun:
    """The Train run a trial drives: the fit's thread and, once the run's controller has started,
    the controller's handle (it arrives on the channel, read by whichever of the trial's thread
    and `end` gets to it first). One per trial actor: the search never reuses actors."""

    current: "TrialRun | None" = None

    def __init__(self, channel: Queue, fit_thread: threading.Thread):
        self.channel, self.fit_thread, self.controller = channel, fit_thread, None

    def next_report(self) -> tuple[dict[str, Any], str | None] | None:
        """The run's next (metrics, checkpoint path); None once the run has ended."""
        while True:
            try:
                kind, first, second = self.channel.get(timeout=1.0)
            except pyqueue.Empty:
                if self.fit_thread.is_alive() or not self.channel.empty():
                    continue
                return None
            if kind == "controller":
                self.controller = first
            else:
                return first, second

    def end(self) -> None:
        """End the run if it is still going, and return once its workers and their placement
        group are gone: Ray Train's own abort, or a kill when the controller does not answer."""
        self.fit_thread.join(FINISH_GRACE_S)
        if not self.fit_thread.is_alive():
            return
        while self.controller is None and not self.channel.empty():
            kind, first, _ = self.channel.get_nowait()
            if kind == "controller":
                self.controller = first
        if self.controller is not None:  # else the controller never started: it dies with this actor
            try:
                ray.get(self.controller.abort.remote(), timeout=ABORT_TIMEOUT_S)
            except ray.exceptions.GetTimeoutError:
                ray.kill(self.controller)
            except ray.exceptions.RayActorError:
                pass  # abort ends the controller's process: the call reports the actor gone
        self.fit_thread.join(ABORT_TIMEOUT_S)


class EndsItsRun:
    """Mixed into the trial's Tune Trainable (Tune's `__mixins__` hook for function trainables).

    Tune stops, pauses or exploits a trial by calling the trainable's stop() and then dropping
    its actor, which kills the actor a few seconds later. The trial's Train run belongs to that
    actor, and a kill in the middle of the run's own shutdown (after it has told Train's
    placement-group cleaner to stand down, before it removes the group) leaves the workers'
    placement group, and their CPUs, reserved for good. So stop() ends the run first, and the
    actor goes only once its run has gone.
    """

    def cleanup(self):
        if TrialRun.current is not None:
            TrialRun.current.end()
        super().cleanup()


def runs_in_trial(cfg: RunConfig) -> bool:
    """Whether a trial of `cfg` trains in its own process: a fixed single worker needs no
    data-parallel group, and a nested Train run would cost it about 15 s of start-up here
    (controller, placement group, worker process) before its first step. Several workers, or an
    elastic group, keep the nested TorchTrainer."""
    return not cfg.train.elastic and cfg.train.workers == 1


def trial_resources(base: dict[str, Any], nested: bool = False):
    """What a trial of the search reserves, given its config. A trial that trains in its own
    process (runs_in_trial) reserves its one worker's CPUs (and GPU) when some node of the
    cluster has that many; otherwise, and for several workers, the trial is only the driver of a
    nested run (TRIAL_RESOURCES), whose workers ask for their own and which fails clearly after
    a bounded wait for them (Tune itself would leave a trial that fits no node pending forever).
    `nested`: every trial drives a nested run (genray bench trials compares the two kinds)."""
    base_cfg = RunConfig.model_validate(base)
    use_gpu = base_cfg.train.use_gpu
    if use_gpu is None:  # decided once, on the driver, as scaling_for decides it for a run
        use_gpu = ray.cluster_resources().get("GPU", 0) > 0
    check_precision(base_cfg, use_gpu)
    # Files streamed through Ray Data are read and decoded by tasks of their own, which need CPUs
    # beside the trials': a nested run refuses to take them all (leave_cpus_for_data), where
    # trials in their own processes would hold every CPU and wait for their first batch forever.
    streamed = isinstance(base_cfg.data, DataConfig) and find_source(base_cfg.data) is not None

    def of(config: dict[str, Any]) -> tune.PlacementGroupFactory:
        cfg = trial_config(base, config.get("train_loop_config", {}))
        worker = {"CPU": cfg.train.cpus_per_worker, **({"GPU": 1} if use_gpu else {})}
        if not nested and not streamed and runs_in_trial(cfg) and any(all(node["Resources"].get(k, 0) >= v for k, v in worker.items())
                                      for node in ray.nodes() if node["Alive"]):
            return tune.PlacementGroupFactory([worker])
        return tune.PlacementGroupFactory([TRIAL_RESOURCES])

    return of


def every_trial_in_process(resources, spec: SearchSpec) -> bool:
    """Whether every trial of the search trains in its own process: the base config's does (its
    `resources`, from trial_resources, reserve a worker's CPUs), and the search varies nothing
    that could make a trial nested."""
    varied = set(spec.space) | set(spec.mutations)
    if varied & {"train.workers", "train.cpus_per_worker", "train.use_gpu"}:
        return False
    return "CPU" in resources({}).bundles[0]


def trainable_for(base: dict[str, Any], train_storage: str, fs, resources) -> Any:
    """The search's trainable: run_trial with its fixed arguments and `resources` (trial_resources)."""
    trainable = tune.with_parameters(run_trial, base=base, train_storage=train_storage, store=str(store_root()), fs=fs)
    return tune.with_resources(trainable, resources)


def run_trial(config: dict[str, Any], base: dict[str, Any], train_storage: str, store: str, fs=None) -> None:
    """One Tune trial: trains one run of genray's loop, in this process (runs_in_trial) or as a
    nested Ray Train run. `fs`: the driver's S3 filesystem when the search is on S3 (it carries
    the endpoint and credentials, which the trial's process may not have in its environment)."""
    cfg = trial_config(base, config["train_loop_config"])
    trial_id = ray.tune.get_context().get_trial_id()
    init_from = None
    started = ray.tune.get_checkpoint()
    if started is not None:  # PBT exploit or Tuner.restore: continue from this Tune checkpoint
        init_dir = Path(tempfile.mkdtemp(prefix="genray-init-"))
        with started.as_directory() as folder:
            shutil.copytree(folder, init_dir, dirs_exist_ok=True)
        init_from = str(init_dir)
        if checkpoint.load(init_from, weights=False).epoch + 1 >= cfg.train.epochs:
            return  # exploited (PBT) or restored after its last epoch: nothing left to train
    in_trial = "CPU" in ray.get_runtime_context().get_assigned_resources()  # its worker's (trial_resources)
    # A trial in its own process that starts again from its own checkpoint (it failed, or the
    # search was resumed) continues its run folder, dropping the epochs it repeats. Any other
    # start from a checkpoint (PBT's exploit of another trial; a nested run, which Train V2 would
    # auto-resume from its own older checkpoints instead) gets a fresh run: "<trial>-<hash>".
    own = in_trial and started is not None and f"_{trial_id}_" in Path(started.path).parent.name
    suffix = "" if init_from is None or own else "-" + hashlib.sha1(f"{init_from}{time.time()}".encode()).hexdigest()[:6]
    run_dir = RunDir(train_storage, f"{trial_id}{suffix}")
    _, fs = run_dir.storage.ray_storage(fs)
    if not run_dir.on_s3:
        run_dir.location.path.mkdir(parents=True, exist_ok=True)
    streams = streams_of(cfg)
    loop = LoopConfig(run=cfg, run_dir=run_dir, store=store, init_from=init_from, filesystem=fs,
                      streamed_rows=streams.train_rows if streams is not None else None,
                      tags={"genray.search": Location(train_storage).parent.name, "genray.trial": trial_id})
    if in_trial:
        train_in_trial(loop)
    else:
        train_nested(loop, streams, trial_id)


def train_in_trial(loop: LoopConfig) -> None:
    """The loop in this trial's process: rank 0 of 1, on the trial's GPU if it reserved one, on
    in-memory data (trial_resources sends a search of streamed files to nested runs)."""
    os.environ["GENRAY_STORE"] = loop.store  # where the metrics classifier is cached, as on a worker
    try:
        run_loop(loop, TrialSession(loop))
    finally:
        gc.unfreeze()  # the loop froze what its setup made; the next trial in this process frees it


class TrialSession(Session):
    """The loop inside a Tune trial: every epoch goes to Tune, and each checkpoint is written
    into the trial's run folder, where the run keeps its latest train.keep_checkpoints as a Ray
    Train run does, and handed to Tune, which keeps its own copy. The run folder holds what a
    nested trial's holds (history, TensorBoard events, checkpoints), without Ray Train's own
    bookkeeping."""

    def __init__(self, loop: LoopConfig):
        super().__init__("cuda" if ray.get_gpu_ids() else "cpu")
        self.run_dir, self.fs = loop.run_dir, loop.filesystem
        self.keep = loop.run.train.keep_checkpoints

    def report(self, metrics: dict[str, Any], run_folder: Path | None = None, checkpoint_name: str | None = None,
               write=None) -> None:
        if checkpoint_name is None:
            ray.tune.report(numbers_of(metrics))
            return
        if run_folder is not None:
            folder = run_folder / checkpoint_name
            if folder.exists():  # an earlier attempt at this epoch that never reported
                shutil.rmtree(folder)
            write(folder)
            ray.tune.report(numbers_of(metrics), checkpoint=ray.tune.Checkpoint.from_directory(folder))
            for old in sorted(run_folder.glob("checkpoint_*"))[:-self.keep]:
                shutil.rmtree(old, ignore_errors=True)
            return
        import pyarrow.fs

        remote = self.run_dir.location.pyarrow_path
        with tempfile.TemporaryDirectory() as tmp:
            write(Path(tmp) / "ckpt")
            pyarrow.fs.copy_files(str(Path(tmp) / "ckpt"), f"{remote}/{checkpoint_name}",
                                  source_filesystem=pyarrow.fs.LocalFileSystem(), destination_filesystem=self.fs)
            ray.tune.report(numbers_of(metrics), checkpoint=ray.tune.Checkpoint.from_directory(Path(tmp) / "ckpt"))
        found = self.fs.get_file_info(pyarrow.fs.FileSelector(remote))
        kept = sorted(i.path for i in found if i.type == pyarrow.fs.FileType.Directory
                      and i.base_name.startswith("checkpoint_"))
        for old in kept[:-self.keep]:
            self.fs.delete_dir(old)


def train_nested(loop: LoopConfig, streams, trial_id: str) -> None:
    """The loop as a nested Ray Train run that this trial drives: the fit runs in a background
    thread while this thread hands each of its epochs to Tune (see the module's docstring)."""
    cfg, fs = loop.run, loop.filesystem
    channel = Queue(maxsize=4, actor_options={"num_cpus": 0})
    scaling = scaling_for(cfg, min_workers=1)
    trainer = trainer_for(
        loop,
        scaling=scaling,
        checkpoint_config=CheckpointConfig(num_to_keep=cfg.train.keep_checkpoints),
        failure_config=failure_config_for(cfg, TRIAL_START_TRIES),
        callbacks=[ToTune(channel), ControllerToTrial(channel)],
        streams=streams,
    )
    outcome: dict[str, Any] = {}

    def fit() -> None:
        try:
            outcome["result"] = trainer.fit()
        except BaseException as err:  # re-raised in the trial's thread below
            outcome["error"] = err

    worker = threading.Thread(target=fit, name=f"genray-fit-{trial_id}", daemon=True)
    worker.start()
    run = TrialRun.current = TrialRun(channel, worker)
    try:
        while (item := run.next_report()) is not None:
            report(*item, fs)
        worker.join()
    finally:
        run.end()  # this thread failed: the run must not outlive the trial
    if "error" in outcome:
        err = outcome["error"]
        raise (data_error_in(err) or explain_start_failure(err, f"trial {trial_id}", scaling, cfg, TRIAL_START_TRIES,
                                                           knobs="--max-concurrent, ")) from err


run_trial.__mixins__ = (EndsItsRun,)


def numbers_of(metrics: dict[str, Any]) -> dict[str, Any]:
    """The metrics Tune records: the numbers."""
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float))}


def report(metrics: dict[str, Any], path: str | None, fs) -> None:
    """A nested run's epoch to Tune, with a copy of its checkpoint at `path` (if any)."""
    numbers = numbers_of(metrics)
    if path is None:
        ray.tune.report(numbers)
        return
    with tempfile.TemporaryDirectory() as tmp:  # a self-contained copy: survives Train's pruning
        if fs is not None:  # Train's checkpoint on S3: bucket/key in that filesystem
            import pyarrow.fs

            pyarrow.fs.copy_files(path, tmp, source_filesystem=fs, destination_filesystem=pyarrow.fs.LocalFileSystem())
        else:
            shutil.copytree(path, tmp, dirs_exist_ok=True)
        ray.tune.report(numbers, checkpoint=ray.tune.Checkpoint.from_directory(tmp))


def make_scheduler(kind: str, spec: SearchSpec, epochs: int, perturbation_interval: int, population: int):
    """The trial scheduler: fifo (none), asha, hyperband, pbt or pb2; time is in epochs."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, HyperBandScheduler, PopulationBasedTraining

    if kind == "fifo":
        return FIFOScheduler()
    if kind == "asha":
        return ASHAScheduler(time_attr="training_iteration", max_t=epochs, grace_period=1, reduction_factor=2)
    if kind == "hyperband":
        # Synchronous brackets: it pauses trials at each rung and resumes the best from their
        # checkpoints (a paused trial's actor ends; its run continues in its own folder).
        return HyperBandScheduler(time_attr="training_iteration", max_t=epochs, reduction_factor=2)
    if kind in ("pbt", "pb2"):
        if not spec.mutations:
            raise ConfigError(f"space: {kind.upper()} needs `mutations` (the hyperparameters it perturbs)")
        common = dict(
            time_attr="training_iteration", perturbation_interval=perturbation_interval,
            # With the default quarter, a population under 4 would never exploit anyone.
            quantile_fraction=0.5 if population < 8 else 0.25,
            # Synchronous: every trial reaches the boundary before anyone is exploited, so
            # the decision does not depend on which trial happened to report first.
            synch=True)
        if kind == "pbt":
            return PopulationBasedTraining(hyperparam_mutations={"train_loop_config": spec.mutations}, **common)
        from ray.tune.schedulers.pb2 import PB2

        # PB2 fits a Gaussian process to the population's progress and picks the next values
        # inside these bounds: it takes numeric ranges only.
        bounds = {}
        for key, (kind_, args) in spec.raw_mutations.items():
            if kind_ not in ("uniform", "loguniform", "randint"):
                raise ConfigError(f"mutations.{key}: PB2 takes numeric ranges (uniform, loguniform, randint), "
                                  f"got {kind_}; use --scheduler pbt for choices")
            bounds[key] = [float(args[0]), float(args[1])]
        return PB2(hyperparam_bounds={"train_loop_config": bounds}, **common)
    raise ConfigError(f"scheduler must be one of {', '.join(SCHEDULERS)}, got {kind!r}")


def make_searcher(spec: SearchSpec, *, max_concurrent: int, seed: int | None, num_samples: int):
    """The search algorithm and the param space it samples from: random (Tune's variant
    generator, grid domains expanded), grid (every domain a list of values, all combinations),
    or optuna (Optuna's TPE, through Ray Tune's OptunaSearch). The concurrency bound is part of
    it: Tune ignores max_concurrent_trials for a search algorithm passed explicitly. TPE samples
    at random until it has seen a quarter of the search's trials (at least 2, at most Optuna's
    default 10): with the default, a search of 10 trials or fewer would be random search."""
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.basic_variant import BasicVariantGenerator

    kind = spec.searcher or "random"
    space = dict(spec.space)
    if kind == "grid":
        for key, (domain, args) in spec.raw_space.items():
            if domain not in ("grid", "choice"):
                raise ConfigError(f"space.{key}: the grid searcher takes lists of values ({{grid: [...]}} or "
                                  f"{{choice: [...]}}), got {domain}")
            space[key] = tune.grid_search(list(args))
    if kind in ("random", "grid"):
        return BasicVariantGenerator(random_state=seed, max_concurrent=max_concurrent), space
    if kind == "optuna":
        grids = [key for key, (domain, _) in spec.raw_space.items() if domain == "grid"]
        if grids:
            raise ConfigError(f"space: Optuna samples every value itself; {', '.join(grids)} use grid "
                              f"(write {{choice: [...]}}, or use --searcher grid or random)")
        if spec.scheduler in ("pbt", "pb2"):
            raise ConfigError(f"searcher optuna: {spec.scheduler} changes the trials' hyperparameters itself; "
                              "use --searcher random with it")
        import optuna
        from ray.tune.search.optuna import OptunaSearch

        sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(2, min(10, num_samples // 4)))
        tpe = OptunaSearch(metric=spec.metric, mode=spec.mode, sampler=sampler)
        return ConcurrencyLimiter(tpe, max_concurrent=max_concurrent), space
    raise ConfigError(f"searcher must be one of {', '.join(SEARCHERS)}, got {kind!r}")


def require_state_api() -> None:
    """Refuse to search on a cluster without Ray's state API (served by the dashboard).

    When Tune stops a trial early or pauses it, the trial's actor dies mid-fit. The placement
    group of its Train workers belongs to the job, not to that actor, so it outlives it; Ray
    Train's PlacementGroupCleaner removes it once the state API says the controller is dead.
    Without the dashboard that check never succeeds: the CPUs stay reserved and, on a small
    cluster, the next trials wait for them forever.
    """
    from ray.util.state import list_actors

    try:  # this cluster's own dashboard, found through its GCS (not the newest Ray on the machine)
        list_actors(address=ray.get_runtime_context().gcs_address, limit=1, timeout=10,
                    raise_on_missing_output=False)
    except Exception as err:  # ServerUnavailable, RayStateApiException, connection errors
        raise ConfigError(
            "tune needs Ray's dashboard (the state API) so that stopped trials free their Train "
            "workers' CPUs; start Ray with the dashboard (ray.init(include_dashboard=True), "
            f"`ray start --head` without --include-dashboard=false). ({type(err).__name__})"
        ) from None


def build_tuner(
    family: str,
    *,
    name: str,
    storage: str | Path,
    spec: SearchSpec,
    base: RunConfig,
    scheduler: str | None = None,
    num_samples: int,
    max_concurrent: int,
    perturbation_interval: int = 1,
    seed: int | None = None,
    callbacks: list | None = None,
    nested: bool = False,
):
    """The Tuner of a new search. `scheduler`: in place of spec.scheduler (default asha);
    spec.searcher picks the searcher (default random). `seed` fixes the sampled configurations
    (the same seed and space give the same trials whatever the scheduler: `genray bench tune`
    relies on it). `callbacks`: Tune callbacks on the driver; `nested`: see trial_resources."""
    scheduler = scheduler or spec.scheduler or "asha"
    spec = replace(spec, scheduler=scheduler, searcher=spec.searcher or "random")
    if scheduler != "fifo":
        require_state_api()
    check_reachable_from_every_node(str(storage), base.data, tracking=base.tracking)
    search_alg, space = make_searcher(spec, max_concurrent=max_concurrent, seed=seed, num_samples=num_samples)
    search = RunDir(storage, name)
    train_storage = search.location / TRIALS_FOLDER
    if not search.on_s3:
        train_storage.path.mkdir(parents=True, exist_ok=True)
    # PBT and PB2 exploit older checkpoints.
    keep = max(base.train.keep_checkpoints, 4 if scheduler in ("pbt", "pb2") else 2)
    base = base.model_copy(update={"train": base.train.model_copy(update={"keep_checkpoints": keep}),
                                   # the search is the tracker's experiment unless it names one
                                   "tracking": prepare_tracking(base.tracking, name)})
    storage_path, fs = search.storage.ray_storage()
    resources = trial_resources(base.to_dict(), nested)  # lists a streamed source's files once
    trainable = trainable_for(base.to_dict(), str(train_storage), fs, resources)
    search.search_spec_file.write_text(json.dumps(
        {"family": family, "metric": spec.metric, "mode": spec.mode, "scheduler": scheduler,
         "searcher": spec.searcher, "nested": nested, "base": base.to_dict()}))
    return tune.Tuner(
        trainable,
        param_space={"train_loop_config": space},
        tune_config=tune.TuneConfig(
            metric=spec.metric, mode=spec.mode,
            scheduler=make_scheduler(scheduler, spec, base.train.epochs, perturbation_interval, num_samples),
            num_samples=num_samples, max_concurrent_trials=max_concurrent, search_alg=search_alg,
            # A trial that trains in its own process leaves nothing running when it ends, so its
            # actor (a process with torch and genray imported: most of a trial's start-up) takes
            # the next trial. A nested trial's actor must die: it owns the Train controller and
            # workers of its fit, which a reused actor would leave running, holding their CPUs.
            reuse_actors=not nested and every_trial_in_process(resources, spec),
        ),
        run_config=tune.RunConfig(
            name=name, storage_path=storage_path, storage_filesystem=fs,
            checkpoint_config=tune.CheckpointConfig(num_to_keep=keep),
            # A trial that trains in its own process and dies (its node lost, its process killed)
            # starts again from its latest checkpoint, as Ray Train restarts a nested run's
            # workers (which makes a second, outer round of retries pointless for those).
            failure_config=tune.FailureConfig(
                max_failures=base.train.max_failures if runs_in_trial(base) and not nested else 0),
            callbacks=callbacks,
            verbose=1,
        ),
    )


def restore_tuner(name: str, storage: str | Path):
    """Tuner.restore of an interrupted search: finished trials stay finished, others continue."""
    search = RunDir(storage, name)
    _, fs = search.storage.ray_storage()
    experiment = search.location.pyarrow_path
    if not search.search_spec_file.exists() or not tune.Tuner.can_restore(experiment, storage_filesystem=fs):
        raise ConfigError(f"resume: no search {name!r} in {storage}")
    meta = search.search_spec()
    if meta["scheduler"] != "fifo":
        require_state_api()
    # Tune needs the trainable again: the same one, rebuilt from what the search stored.
    trainable = trainable_for(meta["base"], str(search.location / TRIALS_FOLDER), fs,
                              trial_resources(meta["base"], meta.get("nested", False)))
    return tune.Tuner.restore(experiment, trainable=trainable, resume_errored=True, storage_filesystem=fs), meta


def summarize(results, metric: str, mode: str, search: str | Path | Location) -> list[dict[str, Any]]:
    """Trials sorted best first; also written to results.csv and results.json."""
    rows = []
    for result in results:
        if result.metrics is None:
            continue
        hist = result.metrics_dataframe
        best_value = None
        if hist is not None and metric in hist:
            series = hist[metric].dropna()
            if len(series):
                best_value = float(series.min() if mode == "min" else series.max())
        row = {"trial": result.metrics.get("trial_id", Path(result.path).name), "best_" + metric: best_value,
               # the run's own epoch count: Tune's training_iteration restarts when a search resumes
               # a trial that had reported but not yet been saved in the experiment's state
               "epochs": int(result.metrics.get("epoch", result.metrics.get("training_iteration", 0) - 1)) + 1,
               "status": "error" if result.error else "done"}
        row.update({k: v for k, v in result.config.get("train_loop_config", {}).items()})
        rows.append(row)
    missing = float("inf") if mode == "min" else float("-inf")
    rows.sort(key=lambda r: r["best_" + metric] if r["best_" + metric] is not None else missing,
              reverse=(mode == "max"))
    search = Location(search)
    (search / "results.json").write_text(json.dumps(rows, indent=2))
    if rows:
        table = io.StringIO()
        writer = csv.DictWriter(table, fieldnames=list(dict.fromkeys(k for r in rows for k in r)))
        writer.writeheader()
        writer.writerows(rows)
        (search / "results.csv").write_text(table.getvalue())
    return rows
