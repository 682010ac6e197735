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
from dataclasses import dataclass, field
from typing import Any, Iterator

from genray.config import ConfigError
from genray.runs import SEARCH_SPEC_FILE, RunDir
from genray.storage import Location, ObjectNotFound

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
