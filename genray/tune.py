"""Ray Tune glue: search spaces, schedulers, resume — over the very same Ray Train trainer.

Train V2 + Tune: each Tune trial is a small driver (a function trainable) that runs one
`TorchTrainer.fit()` of genray's worker loop. The fit runs in a background thread while the
trial's own thread hands every epoch to Tune with `ray.tune.report(metrics, checkpoint)`:
the Train controller's callback passes (metrics, checkpoint path) through a Ray queue, and the
trial copies that checkpoint into a Tune checkpoint. Real Tune checkpoints are what let PBT
exploit a better trial and let `Tuner.restore` restart an interrupted trial where it was; a
trial that starts from a Tune checkpoint passes it to the worker loop as `init_from`.

A trial's Train run (controller, workers, their placement group) lives exactly as long as the
trial: when Tune stops, pauses or fails the trial, the trial aborts its run before it returns
(see run_trial), and a run whose workers cannot start within train.worker_start_timeout_s x
train.worker_start_tries fails the trial with the resources it waited for, so a search never
waits on CPUs that its own stopped trials hold.

A search lives in <storage>/<name>/ (a folder or an s3:// prefix): Tune's experiment folder,
`train/` with every trial's Train run (so `tensorboard --logdir <storage>/<name>/train` shows all
trials together), and results.csv / results.json once it finishes. On S3, Tune and each trial's
Train run write through the same pyarrow filesystem as `genray train` (genray.storage).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import queue as pyqueue
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
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
from genray.families import get_family
from genray.metrics import store_root
from genray.runs import RunDir
from genray.storage import Location
from genray.train import LoopConfig, failure_config_for, scaling_for, start_timeout_s, trainer_for
from genray.train.driver import check_reachable_from_every_node, data_error_in, explain_start_failure, streams_of

DOMAINS = {
    "loguniform": lambda a: tune.loguniform(*a),
    "uniform": lambda a: tune.uniform(*a),
    "choice": lambda a: tune.choice(list(a)),
    "randint": lambda a: tune.randint(*a),
    "grid": lambda a: tune.grid_search(list(a)),  # every value, num_samples times each
}
# A trial is only a driver: its Train workers ask the cluster for their own CPUs/GPUs. Tune
# refuses an empty request, and any CPU fraction here would leave N trials x 1-CPU workers
# one fraction short of N CPUs (deadlock at max_concurrent = cores), so the driver reserves
# 64 MiB of memory instead. It runs on the head node, as Ray Train's controller and Serve's
# controller do (the same token share of the head's own resource): the trial, and the Train
# controller that follows it, outlive the loss of any worker node, whose Train workers restart
# from the trial run's latest checkpoint.
TRIAL_RESOURCES = {"memory": 64 * 1024 * 1024, HEAD_NODE_RESOURCE_NAME: 0.001}
TRIALS_FOLDER = "train"  # <search>/train/<trial run>: every trial's Train run


@dataclass
class SearchSpec:
    space: dict[str, Any]  # config path -> Tune domain
    mutations: dict[str, Any]
    metric: str
    mode: str


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
    unknown = set(raw) - {"space", "mutations", "metric", "mode"}
    if unknown:
        raise ConfigError(f"space: unknown keys {sorted(unknown)}; expected space, mutations, metric, mode")
    fam = get_family(family)
    metric, mode = raw.get("metric", fam.metric), raw.get("mode", fam.mode)
    if data is not None and metric == fam.metric and fam.metric_for(data) != metric:
        metric, mode = fam.metric_for(data), fam.mode  # e.g. no sample quality without labels
    return SearchSpec(
        space={k: to_domain(k, v) for k, v in (raw.get("space") or {}).items()},
        mutations={k: to_domain(k, v) for k, v in (raw.get("mutations") or {}).items()},
        metric=metric,
        mode=mode,
    )


def plan_search(family: str, *, space: str | None, scheduler: str, overrides: list[str], storage: str,
                name: str | None = None, metric: str | None = None, mode: str | None = None,
                ) -> tuple[SearchSpec, RunConfig, RunDir]:
    """A new search, checked before any Ray starts: its space (with `metric`/`mode` in place of
    the space's), the base config every trial starts from, and its folder (named
    <family>-<scheduler>-<time> unless `name` is given), which must not hold a search yet."""
    from genray.config import build_config

    base = build_config(family, None, overrides)
    if isinstance(base.data, DataConfig):  # every trial records the images' shape and classes
        base = base.model_copy(update={"data": resolve(base.data)})
    spec = load_space(family, space, base.data)
    if metric:
        spec.metric, spec.mode = metric, mode or spec.mode
    search = RunDir(storage, name or f"{family}-{scheduler}-{time.strftime('%Y%m%d-%H%M%S')}")
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


def run_trial(config: dict[str, Any], base: dict[str, Any], train_storage: str, store: str, fs=None) -> None:
    """One Tune trial: drives one Ray Train run of genray's worker loop. `fs`: the driver's
    S3 filesystem when the search is on S3 (it carries the endpoint and credentials, which the
    trial's process may not have in its environment)."""
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
    # A fresh Train run per (trial, starting point): Train V2 would otherwise auto-resume the
    # trial's own older checkpoints instead of the one Tune handed over.
    suffix = "" if init_from is None else "-" + hashlib.sha1(f"{init_from}{time.time()}".encode()).hexdigest()[:6]
    run_dir = RunDir(train_storage, f"{trial_id}{suffix}")
    _, fs = run_dir.storage.ray_storage(fs)
    channel = Queue(maxsize=4, actor_options={"num_cpus": 0})
    scaling = scaling_for(cfg, min_workers=1)
    streams = streams_of(cfg)
    trainer = trainer_for(
        LoopConfig(run=cfg, run_dir=run_dir, store=store, init_from=init_from, filesystem=fs,
                   streamed_rows=streams.train_rows if streams is not None else None),
        scaling=scaling,
        checkpoint_config=CheckpointConfig(num_to_keep=cfg.train.keep_checkpoints),
        failure_config=failure_config_for(cfg, TRIAL_START_TRIES),
        callbacks=[ToTune(channel), ControllerToTrial(channel)],
        streams=streams,
    )
    if not run_dir.on_s3:
        run_dir.location.path.mkdir(parents=True, exist_ok=True)
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


def report(metrics: dict[str, Any], path: str | None, fs) -> None:
    numbers = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
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
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, PopulationBasedTraining

    if kind == "fifo":
        return FIFOScheduler()
    if kind == "asha":
        return ASHAScheduler(time_attr="training_iteration", max_t=epochs, grace_period=1, reduction_factor=2)
    if kind == "pbt":
        if not spec.mutations:
            raise ConfigError("space: PBT needs `mutations` (the hyperparameters it perturbs)")
        return PopulationBasedTraining(
            time_attr="training_iteration",
            perturbation_interval=perturbation_interval,
            hyperparam_mutations={"train_loop_config": spec.mutations},
            # With the default quarter, a population under 4 would never exploit anyone.
            quantile_fraction=0.5 if population < 8 else 0.25,
            # Synchronous: every trial reaches the boundary before anyone is exploited, so
            # the decision does not depend on which trial happened to report first.
            synch=True,
        )
    raise ConfigError(f"scheduler must be asha, pbt or fifo, got {kind!r}")


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
    scheduler: str,
    num_samples: int,
    max_concurrent: int,
    perturbation_interval: int = 1,
    seed: int | None = None,
):
    """The Tuner of a new search. `seed` fixes the sampled configurations (the same seed and
    space give the same trials whatever the scheduler: `genray bench tune` relies on it)."""
    from ray.tune.search.basic_variant import BasicVariantGenerator

    if scheduler != "fifo":
        require_state_api()
    check_reachable_from_every_node(str(storage), base.data)
    search = RunDir(storage, name)
    train_storage = search.location / TRIALS_FOLDER
    if not search.on_s3:
        train_storage.path.mkdir(parents=True, exist_ok=True)
    keep = max(base.train.keep_checkpoints, 4 if scheduler == "pbt" else 2)  # PBT exploits older ones
    base = base.model_copy(update={"train": base.train.model_copy(update={"keep_checkpoints": keep})})
    storage_path, fs = search.storage.ray_storage()
    trainable = tune.with_parameters(run_trial, base=base.to_dict(), train_storage=str(train_storage),
                                     store=str(store_root()), fs=fs)
    trainable = tune.with_resources(trainable, TRIAL_RESOURCES)
    search.search_spec_file.write_text(json.dumps(
        {"family": family, "metric": spec.metric, "mode": spec.mode, "scheduler": scheduler,
         "base": base.to_dict()}))
    return tune.Tuner(
        trainable,
        param_space={"train_loop_config": spec.space},
        tune_config=tune.TuneConfig(
            metric=spec.metric, mode=spec.mode,
            scheduler=make_scheduler(scheduler, spec, base.train.epochs, perturbation_interval, num_samples),
            num_samples=num_samples, max_concurrent_trials=max_concurrent,
            # An explicit generator must carry the concurrency bound itself: Tune ignores
            # max_concurrent_trials for a SearchGenerator passed as search_alg.
            search_alg=(BasicVariantGenerator(random_state=seed, max_concurrent=max_concurrent)
                        if seed is not None else None),
            # A stopped or exploited trial's actor must die: it owns the Train controller and
            # workers of its fit, which a reused actor would leave running, holding their CPUs.
            reuse_actors=False,
        ),
        run_config=tune.RunConfig(
            name=name, storage_path=storage_path, storage_filesystem=fs,
            checkpoint_config=tune.CheckpointConfig(num_to_keep=keep),
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
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, base=meta["base"], train_storage=str(search.location / TRIALS_FOLDER),
                             store=str(store_root()), fs=fs),
        TRIAL_RESOURCES,
    )
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
