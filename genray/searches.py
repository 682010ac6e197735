"""Views of a Ray Tune search that genray ran (genray.tune): where it stands, a TensorBoard
HParams dashboard of its trials, and a report (parallel coordinates and parameter importance).

They read only the search's files, in its folder or s3:// prefix <storage>/<name>/:

    genray_search.json              family, metric, mode, scheduler and base config (RunDir.search_spec)
    experiment_state-<time>.json    Tune's state of every trial; the newest name is the latest
    <trainable>_<trial id>_.../     one folder per started trial: result.json has one JSON line
                                    per epoch the trial reported (genray's metrics and "epoch")

A running search rewrites these as they are read: a state file or a line of result.json that
does not parse (yet) is skipped, and the views use what does.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from genray.config import ConfigError
from genray.runs import SEARCH_SPEC_FILE, RunDir
from genray.storage import Location, ObjectNotFound

HPARAMS_FOLDER = "hparams"  # <search>/hparams: the HParams dashboard's runs

# Tune's trial status -> ours; a TERMINATED trial that trained fewer epochs than its budget is
# "stopped" (early, by the scheduler) rather than "done".
STATES = {"RUNNING": "running", "PENDING": "pending", "PAUSED": "paused", "TERMINATED": "done", "ERROR": "errored"}
STATE_NAMES = {"running": "running", "pending": "pending", "paused": "paused", "done": "done",
               "stopped": "stopped early", "errored": "errored"}

@dataclass
class TrialStatus:
    trial_id: str
    state: str  # a key of STATE_NAMES
    params: dict[str, Any]  # the sampled train_loop_config: {"model.lr": 0.001, ...}
    epochs: int = 0  # epochs its run has trained: its last epoch + 1
    best: float | None = None  # its best value of the search's metric so far
    best_epoch: int | None = None  # the (0-based) epoch that reached it


@dataclass
class SearchStatus:
    name: str
    location: str
    family: str
    metric: str
    mode: str  # "min" or "max"
    scheduler: str
    epochs: int  # each trial's budget (base config's train.epochs)
    trials: list[TrialStatus] = field(default_factory=list)

    def count(self, state: str) -> int:
        return sum(t.state == state for t in self.trials)

    @property
    def epochs_trained(self) -> int:
        return sum(t.epochs for t in self.trials)

    @property
    def best(self) -> TrialStatus | None:
        """The trial with the best value of the metric so far; None before any was reported."""
        scored = [t for t in self.trials if t.best is not None]
        if not scored:
            return None
        pick = min if self.mode == "min" else max
        return pick(scored, key=lambda t: t.best)

    def counts(self) -> str:
        """How many trials are in each state: "2 running, 1 done"; "" when there are none."""
        return ", ".join(f"{n} {STATE_NAMES[s]}" for s in STATE_NAMES if (n := self.count(s)))


# --- status --------------------------------------------------------------------------------------

def search_status(name: str, storage: str) -> SearchStatus:
    """Where search `name` (a name under `storage`, its folder or its s3:// URI) stands: each
    trial's state, epochs and best value so far. Safe to call while the search runs."""
    search = RunDir.find(name, storage, marker=SEARCH_SPEC_FILE)
    if not search.search_spec_file.exists():
        raise ConfigError(f"no search at {search.location} (it has no {SEARCH_SPEC_FILE}); expected the name "
                          f"of a search under {storage}, its folder or its s3:// URI")
    spec = search.search_spec()
    metric, mode, budget = spec["metric"], spec["mode"], int(spec["base"]["train"]["epochs"])
    status = SearchStatus(name=search.name, location=str(search.location), family=spec["family"], metric=metric,
                          mode=mode, scheduler=spec["scheduler"], epochs=budget)
    folders = {f.parent.name: f for f in search.location.glob("*/result.json")}
    for trial in tune_trials(search.location):
        trial_status = TrialStatus(trial["trial_id"], STATES.get(trial["status"], "running"),
                                   trial.get("config", {}).get("train_loop_config", {}))
        result = folders.pop(trial.get("relative_logdir"), None)
        if result is not None:
            read_progress(trial_status, result, metric, mode)
        if trial_status.state == "done" and trial_status.epochs < trial_status.params.get("train.epochs", budget):
            trial_status.state = "stopped"  # a scheduler (ASHA, PBT) ended it before its budget
        status.trials.append(trial_status)
    for result in folders.values():  # started after the newest state file that parses
        trial_status = TrialStatus(result.parent.name, "running", {})
        read_progress(trial_status, result, metric, mode)
        status.trials.append(trial_status)
    return status


def tune_trials(search: Location) -> list[dict[str, Any]]:
    """Each trial's state (trial_id, status, config, relative_logdir, ...) from the newest of
    Tune's experiment_state files that parses; [] before Tune wrote one."""
    for state_file in reversed(search.glob("experiment_state-*.json")):  # names sort by time
        try:
            trial_data = json.loads(state_file.read_text())["trial_data"]
        except (ValueError, KeyError, ObjectNotFound):  # mid-write, or replaced since the glob
            continue
        return [json.loads(state) for state, _runtime in trial_data]  # [state JSON, runtime JSON]
    return []


def read_progress(trial: TrialStatus, result: Location, metric: str, mode: str) -> None:
    """Fill in a trial's epochs and best value from its result.json, line by line: a search of
    hundreds of trials keeps two numbers per trial, not their histories."""
    better = (lambda a, b: a < b) if mode == "min" else (lambda a, b: a > b)
    for line in lines_of(result):
        try:
            record = json.loads(line)
        except ValueError:  # the line Tune is writing now
            continue
        if not isinstance(record, dict):
            continue
        trial.trial_id = record.get("trial_id", trial.trial_id)
        trial.params = trial.params or record.get("config", {}).get("train_loop_config", {})
        # the run's own epoch: Tune's training_iteration restarts when a trial is resumed
        epoch = int(record.get("epoch", record.get("training_iteration", 1) - 1))
        trial.epochs = max(trial.epochs, epoch + 1)
        value = record.get(metric)
        if isinstance(value, (int, float)) and math.isfinite(value) and (trial.best is None or better(value, trial.best)):
            trial.best, trial.best_epoch = float(value), epoch


def lines_of(file: Location) -> Iterator[str]:
    """A file's lines; a local file is streamed (an S3 object is read whole: one trial's)."""
    try:
        if file.on_s3:
            yield from file.read_text().splitlines()
            return
        with file.path.open(errors="replace") as stream:
            yield from stream
    except (FileNotFoundError, ObjectNotFound):  # removed since it was listed
        return


def format_status(status: SearchStatus) -> str:
    """The status as a few lines of text."""
    counts = status.counts()
    lines = [
        f"search {status.name} ({status.family}, scheduler {status.scheduler}) at {status.location}",
        f"metric: {status.metric} ({status.mode}); {status.epochs} epochs per trial",
        f"trials: {len(status.trials)}" + (f" ({counts})" if counts else " (Tune has not started any yet)"),
        f"epochs trained: {status.epochs_trained}",
    ]
    best = status.best
    if best is None:
        lines.append(f"best so far: none (no trial has reported {status.metric} yet)")
    else:
        lines.append(f"best so far: {best.trial_id} {status.metric}={best.best:.6g} at epoch {best.best_epoch} "
                     f"({STATE_NAMES[best.state]}; {', '.join(f'{k}={short(v)}' for k, v in best.params.items())})")
    return "\n".join(lines)


def short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


# --- what a parameter's values look like -------------------------------------------------------

def plain(value: Any) -> bool | int | float | str:
    """A parameter's value as TensorBoard and Optuna take it: a list or dict becomes its JSON."""
    return value if isinstance(value, (bool, int, float, str)) else json.dumps(value)


def scale_of(values: list[Any]) -> str:
    """How a parameter's values spread: "category" (strings, bools or a mix), "log" (numbers,
    all > 0, spanning more than 10x: a loguniform's learning rates) or "linear"."""
    if not values or any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in values):
        return "category"
    return "log" if min(values) > 0 and max(values) > 10 * min(values) else "linear"


def integers(values: list[Any]) -> bool:
    return all(isinstance(v, int) and not isinstance(v, bool) for v in values)


def categories(values: list[Any]) -> list[Any]:
    return sorted(set(values), key=lambda v: (type(v).__name__, v))


# --- TensorBoard HParams ----------------------------------------------------------------------------

def write_hparams(search: str | Location, rows: list[dict[str, Any]], metric: str, mode: str) -> Location:
    """The search's TensorBoard HParams dashboard in <search>/hparams: the experiment (each
    sampled parameter and the two metrics, best_<metric> and epochs) and one run per trial
    with its parameters and metrics. `rows` are genray.tune.summarize's. A dashboard written
    before is replaced. Returns the folder."""
    from tensorboard.compat.proto.summary_pb2 import Summary
    from tensorboard.plugins.hparams import summary_v2 as hp

    target = Location(search) / HPARAMS_FOLDER
    best = f"best_{metric}"
    names = [k for k in dict.fromkeys(k for row in rows for k in row) if k not in {"trial", best, "epochs", "status"}]
    params = []
    for name in names:
        values = [plain(row[name]) for row in rows if row.get(name) is not None]
        scale = scale_of(values)
        if scale == "category":
            kinds = {type(v) for v in values}
            domain = hp.Discrete(categories(values)) if len(kinds) == 1 else None
        elif integers(values):
            domain = hp.IntInterval(min(values), max(values))
        else:
            domain = hp.RealInterval(float(min(values)), float(max(values)))
        params.append(hp.HParam(name, domain))
    goal = "lower" if mode == "min" else "higher"
    experiment = hp.hparams_config_pb(params, [
        hp.Metric(best, description=f"the trial's best {metric} ({goal} is better)"),
        hp.Metric("epochs", description="epochs the trial trained (fewer: a scheduler stopped it)")])
    with tempfile.TemporaryDirectory(prefix="genray-hparams-") as tmp:
        write_events(Path(tmp), [experiment])
        for row in rows:
            values = {k: plain(row[k]) for k in names if row.get(k) is not None}
            scalars = Summary(value=[Summary.Value(tag=k, simple_value=float(row[k]))
                                     for k in (best, "epochs") if row.get(k) is not None])
            write_events(Path(tmp) / str(row["trial"]), [hp.hparams_pb(values, trial_id=str(row["trial"])), scalars])
        if target.on_s3:
            for old in target.list():
                (target / old).remove()
            target.upload_from(tmp)
        else:
            shutil.rmtree(target.path, ignore_errors=True)
            shutil.copytree(tmp, target.path)
    return target


def write_events(folder: Path, summaries: list) -> None:
    """One TensorBoard event file in `folder` holding `summaries`, at step 0."""
    from tensorboard.compat.proto.event_pb2 import Event
    from tensorboard.summary.writer.event_file_writer import EventFileWriter

    folder.mkdir(parents=True, exist_ok=True)
    writer = EventFileWriter(str(folder))
    for summary in summaries:
        writer.add_event(Event(wall_time=time.time(), step=0, summary=summary))
    writer.close()
