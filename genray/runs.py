"""A run folder: everything one training run keeps, at <storage>/<name>.

    genray.yaml          the run's config (RunConfig), written when the run starts
    history.jsonl        one line of metrics per epoch, with the checkpoint it wrote
    tensorboard/         TensorBoard events
    checkpoint_epochN/   checkpoints (genray.checkpoint), kept and pruned by Ray Train
    tracking.json        the experiment tracker's run that records this one (genray.tracking), when
                         tracking is on: a restarted or resumed run continues it

Storage is a local folder or an s3:// prefix (genray.storage). For a run on S3 the driver keeps a
local mirror of the small files (config, history, TensorBoard events) in the cache, so that
TensorBoard and a reader of the history need no bucket; its checkpoints stay in the bucket.

A Tune search is a folder of the same kind (<storage>/<name>, with genray_search.json); each of
its trials' Train runs is a run folder under <search>/train.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import yaml

from genray import checkpoint
from genray.checkpoint import CheckpointError
from genray.config import ConfigError, RunConfig, build_config
from genray.data import DataConfig, resolve
from genray.storage import Location, ObjectNotFound
from genray.tracking import prepare

RUN_CONFIG_FILE = "genray.yaml"
HISTORY_FILE = "history.jsonl"
TENSORBOARD = "tensorboard"
TRACKING_FILE = "tracking.json"
SEARCH_SPEC_FILE = "genray_search.json"
MIRROR_AREA = "runs"  # the mirrors' folder in the cache (genray.storage.cache_dir)


class RunDir:
    """The folder of run `name` under `storage` (a folder or an s3:// prefix, made absolute)."""

    def __init__(self, storage: str | Location, name: str):
        self.storage = Location(storage).resolved()
        self.name = name

    @classmethod
    def at(cls, where: str | Location) -> RunDir:
        """The run whose own folder or URI is `where`."""
        location = Location(where).resolved()
        return cls(location.parent, location.name)

    @classmethod
    def find(cls, run: str, storage: str | Location, marker: str | None = None) -> RunDir:
        """RUN as the commands take it: a run's s3:// URI, a local folder (one that holds the
        file `marker`, when given), or else a name under `storage`."""
        where = Location(run)
        if where.on_s3 or (where.path.is_dir() and (marker is None or (where.path / marker).exists())):
            return cls.at(where)
        return cls(storage, run)

    def __str__(self) -> str:
        return str(self.location)

    def __repr__(self) -> str:
        return f"RunDir({str(self.storage)!r}, {self.name!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RunDir) and self.location == other.location

    def __hash__(self) -> int:
        return hash(self.location)

    @property
    def location(self) -> Location:
        """The run's own folder or prefix: <storage>/<name>."""
        return self.storage / self.name

    @property
    def on_s3(self) -> bool:
        return self.storage.on_s3

    @property
    def config_file(self) -> Location:
        return self.location / RUN_CONFIG_FILE

    @property
    def history_file(self) -> Location:
        return self.location / HISTORY_FILE

    @property
    def tracking_file(self) -> Location:
        return self.location / TRACKING_FILE

    @property
    def mirror(self) -> Path:
        """The run's local folder: the run itself, or for an S3 run the local mirror of its
        config, history and TensorBoard events."""
        return self.location.mirror(MIRROR_AREA)

    @property
    def tensorboard(self) -> Path:
        """The local TensorBoard folder (in the mirror for an S3 run)."""
        return self.mirror / TENSORBOARD

    def exists(self) -> bool:
        """Whether a run was started here (its config is stored)."""
        return self.config_file.exists()

    # --- config ------------------------------------------------------------------------------

    def start(self, cfg: RunConfig, resume: bool) -> None:
        """Create or check the folder and store the run's config there (and in the mirror)."""
        if self.exists() and not resume:
            raise ConfigError(
                f"name: run {self.name!r} already exists in {cfg.storage}; "
                f"continue it with `genray train --resume {self.name}` or pick another --name"
            )
        text = yaml.safe_dump(cfg.to_dict(), sort_keys=False)
        if self.on_s3 and not resume:
            shutil.rmtree(self.mirror, ignore_errors=True)  # a mirror of an older run of that name
        self.mirror.mkdir(parents=True, exist_ok=True)
        Location(self.mirror / RUN_CONFIG_FILE).write_text(text)
        if self.on_s3:
            self.config_file.write_text(text)

    def read_config(self) -> dict[str, Any]:
        """The stored config as a dict; ObjectNotFound when no run was started here."""
        return yaml.safe_load(self.config_file.read_text())

    # --- history and checkpoints ------------------------------------------------------------

    def history(self) -> list[dict[str, Any]]:
        """The run's history.jsonl; [] before its first epoch."""
        try:
            return parse_history(self.history_file.read_text())
        except ObjectNotFound:
            return []

    def checkpoints(self, pattern: str = "checkpoint_*") -> list[checkpoint.Checkpoint]:
        """Every readable checkpoint (manifests only), oldest epoch first. A Tune search folder
        holds its trials' checkpoints one level down: pattern "*/checkpoint_*"."""
        if not self.location.is_folder():
            raise CheckpointError(f"run folder not found: {self}" + (" (no objects under it)" if self.on_s3 else ""))
        found = []
        for folder in self.location.glob(pattern):
            try:
                found.append(checkpoint.load(folder, weights=False))
            except CheckpointError:
                continue  # a foreign or broken folder is not a candidate
        return sorted(found, key=lambda c: c.epoch)

    def best_checkpoint(self, which: str = "best", *, pattern: str = "checkpoint_*", metric: str | None = None,
                        mode: str | None = None) -> checkpoint.Checkpoint:
        """The best checkpoint by `metric` (default: the one that ranks the family on the run's
        data), or the newest ("latest")."""
        from genray.families import get_family

        found = self.checkpoints(pattern)
        if not found:
            raise CheckpointError(f"{self} has no checkpoints")
        if which == "latest":
            return found[-1]
        if which != "best":
            raise ValueError(f"which must be 'best' or 'latest', got {which!r}")
        family = get_family(found[0].family)
        data = family.DataConfig.model_validate(found[0].config.get("data", {}))
        metric, mode = metric or family.metric_for(data), mode or family.mode
        scored = [c for c in found if metric in c.metrics]
        if not scored:
            raise CheckpointError(f"no checkpoint in {self} reports {metric}")
        pick = min if mode == "min" else max
        return pick(scored, key=lambda c: c.metrics[metric])

    def update_mirror(self) -> None:
        """Copy an S3 run's history and TensorBoard events into its local mirror (nothing to do
        for a local run, or before the first epoch)."""
        if not self.on_s3:
            return
        try:
            Location(self.mirror / HISTORY_FILE).write_text(self.history_file.read_text())
            (self.location / TENSORBOARD).download_to(self.tensorboard)
        except ObjectNotFound:
            pass  # no epoch finished

    # --- searches -----------------------------------------------------------------------------

    @property
    def search_spec_file(self) -> Location:
        return self.location / SEARCH_SPEC_FILE

    def search_spec(self) -> dict[str, Any]:
        """A Tune search's stored spec (family, metric, mode, scheduler, base config)."""
        try:
            return json.loads(self.search_spec_file.read_text())
        except ObjectNotFound:
            raise CheckpointError(f"{self} is not a genray search (no {SEARCH_SPEC_FILE})") from None


def parse_history(text: str) -> list[dict[str, Any]]:
    """A history.jsonl's records, one per non-empty line."""
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def new_run(cfg: RunConfig, resume: bool) -> tuple[RunConfig, RunDir]:
    """Name the run (<family>-<time> unless named), create or check its folder and store its config,
    with its tracking settled (genray.tracking.prepare: its store and experiment, by default the
    family's)."""
    if cfg.name is None:
        cfg = cfg.model_copy(update={"name": f"{cfg.family}-{time.strftime('%Y%m%d-%H%M%S')}"})
    if isinstance(cfg.data, DataConfig):  # an image family: record what its images are
        cfg = cfg.model_copy(update={"data": resolve(cfg.data)})
    cfg = cfg.model_copy(update={"tracking": prepare(cfg.tracking, cfg.family)})
    run = RunDir(cfg.storage, cfg.name)
    run.start(cfg, resume)
    return cfg, run


def load_run_config(name_or_dir: str, storage: str = "runs", overrides: list[str] = ()) -> RunConfig:
    """The stored config of an existing run, with `train.*` overrides (e.g. more epochs) and
    `tracking.*` ones (tracking turned on for the rest of a run). `name_or_dir` is a run name under
    `storage`, a run folder, or a run's s3:// URI."""
    for text in overrides:
        if not text.startswith(("train.", "tracking.")):
            raise ConfigError(f"resume: only train.* and tracking.* settings can change when resuming, got {text!r}")
    run = RunDir.find(name_or_dir, storage, marker=RUN_CONFIG_FILE)
    try:
        base = run.read_config()
    except ObjectNotFound:
        raise ConfigError(f"resume: no run {name_or_dir!r} (looked for {run.config_file})") from None
    base["storage"] = str(run.storage)  # where the run is, whichever way it was named
    return build_config(base=base, overrides=list(overrides))


def read_history(run: str | Location) -> list[dict[str, Any]]:
    """The history of the run whose folder or s3:// URI is `run`; [] before its first epoch."""
    return RunDir.at(run).history()
