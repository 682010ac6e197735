"""Experiment tracking: rank 0's run log (genray.train.loop.RunLog) also records the run in an
experiment tracker, MLflow, when the run config says `tracking.tracker: mlflow`.

What an MLflow run of genray holds:
    params    the run config flattened with dotted keys (model.latent_dim, train.batch_size, ...),
              values as strings cut to MLflow's length limit; not the tracking section itself
              (where the run is recorded, not what it trained; a server URI may carry credentials)
    metrics   every number of each epoch's metrics at step=epoch (as in TensorBoard: without the
              *_at timestamps)
    images    the preview grids the loop makes for TensorBoard, at train.preview_every, by tag and
              step (MLflow's image slider)
    tags      genray.run, genray.run_folder, genray.family; a Tune trial's genray.search and
              genray.trial; genray.model_version once `genray export` made a version of it

One genray run is one MLflow run. Its id is kept in the run folder (tracking.json, written as soon
as the MLflow run exists, straight to the bucket for a run on S3), so that a restarted worker group
and a resumed run (`genray train --resume`) continue that MLflow run instead of starting another.
MLflow params cannot change: a resume that changes a setting (more train.epochs) records the new
value as the tag genray.resumed.<key>. MLflow keeps every value it is sent: an epoch trained again
(a restart from a checkpoint older than the last logged epoch) adds a second value at that step,
the later one by timestamp, which is also what the run shows as the metric's latest value.

A Tune search is an MLflow experiment (named after the search unless tracking.experiment says
otherwise) and each trial one run in it, tagged with the search and trial; the trial's params hold
the hyperparameters it sampled, at the same dotted keys as the search space. Trials are not nested
under a parent run: a parent would have to stay open across the search's resumes, and the
experiment already groups them.

Where the runs go (tracking.uri): by default a SQLite store in ./mlruns (mlruns/mlflow.db, its
artifacts in mlruns/artifacts), made absolute on the driver so that every process of a run on this
machine writes to the same one; see it with
`mlflow server --backend-store-uri sqlite:///mlruns/mlflow.db`. A run on a cluster of several nodes
needs a tracking server, http://host:5000, that every node reaches (a local store is refused there,
as local run storage is). MLflow 3.18 refuses its plain-folder file store (file:...) unless
MLFLOW_ALLOW_FILE_STORE=true is set. A server that does not answer fails the command after MLflow's
own retries (MLFLOW_HTTP_REQUEST_MAX_RETRIES, MLFLOW_HTTP_REQUEST_TIMEOUT).

MLflow is an optional extra (`pip install 'genray[mlflow]'`): it is imported only when a run asks
for it, and genray works without it.
"""

from __future__ import annotations

import io
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable
from urllib.parse import urlparse

from genray.config import ConfigError, RunConfig, TrackingConfig

if TYPE_CHECKING:
    import torch

    from genray.registry import Version
    from genray.runs import RunDir

DEFAULT_STORE = "mlruns"  # under the driver's working directory
INSTALL = "pip install 'genray[mlflow]'"
VERSION_TAG = "genray.model_version"
# MLflow's limits (mlflow.utils.validation), here so that flattening needs no MLflow.
MAX_PARAM_VALUE = 6000
MAX_TAG_VALUE = 8000
MAX_PER_BATCH = 100  # params and tags in one log_batch


def prepare(tracking: TrackingConfig, experiment: str) -> TrackingConfig:
    """On the driver, before any worker starts: `tracking` with its defaults filled in (the local
    store as an absolute URI, `experiment` where none is named), and its experiment created, so
    that a bad URI or a missing MLflow fails the command at once and the trials of a search never
    race to create the experiment. Tracking off: `tracking` as it is."""
    if tracking.tracker == "none":
        return tracking
    resolved = tracking.model_copy(update={"uri": absolute_uri(tracking.uri),
                                           "experiment": tracking.experiment or experiment})
    TRACKERS[resolved.tracker].prepare(resolved)
    return resolved


def require(tracking: TrackingConfig) -> None:
    """Refuse a tracker that is not installed, before anything starts (prepare checks it too)."""
    TRACKERS[tracking.tracker].require()


def absolute_uri(uri: str | None) -> str:
    """A tracking URI whose local path (sqlite:///..., file:...) is absolute: every process of a
    run finds the same store whatever its working directory. None: the SQLite store in ./mlruns."""
    path = local_store(uri)
    if path is None:
        return uri  # a server
    return path.as_uri() if uri is not None and urlparse(uri).scheme == "file" else f"sqlite:///{path}"


def local_store(uri: str | None) -> Path | None:
    """The absolute path of a store on this machine's disk (the SQLite file, or the file store's
    folder; for None the default, ./mlruns/mlflow.db), or None for a server."""
    if uri is None:
        return (Path.cwd() / DEFAULT_STORE / "mlflow.db").resolve()
    parsed = urlparse(uri)
    if parsed.scheme == "sqlite":
        # sqlite:///relative.db and sqlite:////absolute.db: the path follows the third slash.
        rest = uri[len("sqlite:///"):] if uri.startswith("sqlite:///") else ""
        if not rest or rest == ":memory:":
            raise ConfigError(f"tracking.uri: a SQLite store needs a file, sqlite:///path/mlflow.db, got {uri!r}")
        return Path(rest).expanduser().resolve()
    if parsed.scheme == "file":
        return Path(parsed.path).expanduser().resolve()
    return None


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """A nested config as {dotted key: value as text}: {'model': {'lr': 0.001}} -> {'model.lr': '0.001'}.
    Strings stay as they are, other values are JSON ([1, 2], true, null); an empty section is '{}'.
    Values longer than MLflow takes are cut, ending in '...'."""
    flat: dict[str, str] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{name}."))
            continue
        text = value if isinstance(value, str) else json.dumps(value)
        flat[name] = text if len(text) <= MAX_PARAM_VALUE else text[:MAX_PARAM_VALUE - 3] + "..."
    return flat


def params_of(cfg: RunConfig) -> dict[str, str]:
    """The run's params: its config flattened, less the tracking section."""
    tree = cfg.to_dict()
    tree.pop("tracking")
    return flatten(tree)


class Tracker:
    """An experiment tracker as rank 0's run log uses it. This one is tracking.tracker=none: it
    records nothing and imports nothing.

    A tracker is opened with the run's config, its folder, extra tags and what the folder kept of
    an earlier attempt at the run (`stored`, its `record`), and continues that attempt's run when
    it can. `record`: what the run folder keeps (genray.runs.TRACKING_FILE), None for nothing."""

    record: dict[str, Any] | None = None

    def __init__(self, run: RunConfig, run_dir: RunDir, tags: dict[str, str], stored: dict[str, Any] | None):
        pass

    @classmethod
    def require(cls) -> None:
        """Raise a ConfigError that says how to install the tracker's package when it is missing."""

    @classmethod
    def prepare(cls, tracking: TrackingConfig) -> None:
        """Reach the store and make the experiment, on the driver (see `prepare`)."""

    @classmethod
    def tag(cls, record: dict[str, Any], key: str, value: str) -> str | None:
        """Set a tag on the run a folder's `record` names; returns that run's id."""
        return None

    def log_epoch(self, epoch: int, scalars: dict[str, float], images: dict[str, torch.Tensor]) -> None:
        """An epoch's numbers and its preview grids ((C, H, W) in [0, 1], by tag)."""

    def close(self, status: str) -> None:
        """End the run: FINISHED (its last epoch was logged), KILLED (stopped: a Tune trial its
        scheduler stopped, Ctrl-C) or FAILED (an error; a restarted worker group continues it)."""


def require_mlflow():
    """The mlflow module, or a ConfigError that says how to install it."""
    try:
        import mlflow
    except ImportError as err:
        raise ConfigError(f"tracking.tracker=mlflow needs MLflow, which is not installed here: {INSTALL} "
                          f"({err})") from None
    return mlflow


class MLflowTracker(Tracker):
    """The run recorded in MLflow through an MlflowClient (no fluent API: its active-run stack is
    global state that a Tune actor would carry from one trial to the next)."""

    def __init__(self, run: RunConfig, run_dir: RunDir, tags: dict[str, str], stored: dict[str, Any] | None):
        mlflow = require_mlflow()
        tracking = run.tracking
        self.client = mlflow.MlflowClient(tracking_uri=tracking.uri)
        tags = {"genray.run": run_dir.name, "genray.run_folder": str(run_dir.location), "genray.family": run.family,
                **tags}
        params = params_of(run)
        continued = self._continued(stored, tracking.uri)
        if continued is None:
            experiment = _experiment_id(self.client, tracking)
            self.run_id = self.client.create_run(experiment, run_name=run_dir.name).info.run_id
        else:
            self.run_id = continued.info.run_id
            self.client.update_run(self.run_id, status="RUNNING")
            logged = continued.data.params
            tags.update({f"genray.resumed.{k}": v for k, v in params.items() if k in logged and logged[k] != v})
            params = {k: v for k, v in params.items() if k not in logged}
        self._log_batch(params=params, tags=tags)
        self.record = {"tracker": "mlflow", "uri": tracking.uri, "run_id": self.run_id}

    def _continued(self, stored: dict[str, Any] | None, uri: str):
        """The stored MLflow run when it is in this store and still there; else None."""
        if not stored or stored.get("tracker") != "mlflow" or stored.get("uri") != uri:
            return None
        from mlflow.exceptions import MlflowException

        try:
            found = self.client.get_run(stored["run_id"])
        except MlflowException as err:
            if err.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            found = None
        if found is None or found.info.lifecycle_stage == "deleted":
            print(f"genray: MLflow run {stored['run_id']} of this run is gone; starting a new one", flush=True)
            return None
        return found

    @classmethod
    def require(cls) -> None:
        require_mlflow()

    @classmethod
    def prepare(cls, tracking: TrackingConfig) -> None:
        mlflow = require_mlflow()
        store = local_store(tracking.uri)
        if store is not None:
            store.parent.mkdir(parents=True, exist_ok=True)  # SQLite makes the file, not its folder
        try:
            _experiment_id(mlflow.MlflowClient(tracking_uri=tracking.uri), tracking)
        except mlflow.exceptions.MlflowException as err:  # an unknown scheme, a store refused, no server
            raise ConfigError(f"tracking.uri: MLflow cannot use {tracking.uri!r}: {err.message}") from None

    @classmethod
    def tag(cls, record: dict[str, Any], key: str, value: str) -> str | None:
        mlflow = require_mlflow()
        mlflow.MlflowClient(tracking_uri=record["uri"]).set_tag(record["run_id"], key, value[:MAX_TAG_VALUE])
        return record["run_id"]

    def log_epoch(self, epoch: int, scalars: dict[str, float], images: dict[str, torch.Tensor]) -> None:
        from mlflow.entities import Metric
        from PIL import Image

        from genray.images import to_png

        now = int(time.time() * 1000)
        numbers = [Metric(k, float(v), now, epoch) for k, v in scalars.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool)]
        for chunk in _chunks(numbers, 1000):  # MLflow's metrics per log_batch
            self.client.log_batch(self.run_id, metrics=chunk)
        for tag, image in images.items():
            self.client.log_image(self.run_id, Image.open(io.BytesIO(to_png(image))), key=tag, step=epoch)

    def _log_batch(self, params: dict[str, str], tags: dict[str, str]) -> None:
        from mlflow.entities import Param, RunTag

        entries = [Param(k, v) for k, v in params.items()] + [RunTag(k, v[:MAX_TAG_VALUE]) for k, v in tags.items()]
        for chunk in _chunks(entries, MAX_PER_BATCH):
            self.client.log_batch(self.run_id, params=[e for e in chunk if isinstance(e, Param)],
                                  tags=[e for e in chunk if isinstance(e, RunTag)])

    def close(self, status: str) -> None:
        self.client.set_terminated(self.run_id, status=status)


TRACKERS: dict[str, type[Tracker]] = {"none": Tracker, "mlflow": MLflowTracker}


def _experiment_id(client, tracking: TrackingConfig) -> str:
    """The id of the experiment tracking.experiment, made if it is not there (a local SQLite
    store keeps its artifacts beside it, in <store folder>/artifacts)."""
    from mlflow.exceptions import MlflowException

    name = tracking.experiment
    found = client.get_experiment_by_name(name)
    if found is None:
        store = local_store(tracking.uri)
        sqlite = store is not None and urlparse(tracking.uri).scheme == "sqlite"
        artifacts = (store.parent / "artifacts").as_uri() if sqlite else None
        try:
            return client.create_experiment(name, artifact_location=artifacts)
        except MlflowException as err:  # made meanwhile by another process
            if err.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            found = client.get_experiment_by_name(name)
    if found.lifecycle_stage == "deleted":
        raise ConfigError(f"tracking.experiment: MLflow experiment {name!r} is deleted in {tracking.uri}; restore it "
                          "(mlflow experiments restore) or name another")
    return found.experiment_id


def _chunks(items: list, size: int) -> Iterable[list]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def open_tracker(run: RunConfig, run_dir: RunDir, tags: dict[str, str], stored: dict[str, Any] | None) -> Tracker:
    """The tracker run.tracking names, continuing the run `stored` (a run folder's record) when it can."""
    return TRACKERS[run.tracking.tracker](run, run_dir, tags, stored)


def tag_export(version: Version) -> str | None:
    """Tag the tracked run that trained a registry `version` (the run folder of its checkpoint: for
    an export of a search, the trial's) with it, <model>@N; returns the tracker's run id, or None
    when that run was not tracked."""
    from genray.runs import RunDir
    from genray.storage import Location, ObjectNotFound

    run = RunDir.at(Location(version.manifest["checkpoint"]).parent)
    try:
        record = json.loads(run.tracking_file.read_text())
    except ObjectNotFound:
        return None
    return TRACKERS[record["tracker"]].tag(record, VERSION_TAG, str(version))
