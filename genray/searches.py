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
REPORT_PLOT, REPORT_TABLES = "report.png", "report.md"
TOP_TRIALS = 10  # rows of the report's table of trials
IMPORTANCE_SEED = 0  # fANOVA's random forest: the same search gives the same importances

# Tune's trial status -> ours; a TERMINATED trial that trained fewer epochs than its budget is
# "stopped" (early, by the scheduler) rather than "done".
STATES = {"RUNNING": "running", "PENDING": "pending", "PAUSED": "paused", "TERMINATED": "done", "ERROR": "errored"}
STATE_NAMES = {"running": "running", "pending": "pending", "paused": "paused", "done": "done",
               "stopped": "stopped early", "errored": "errored"}
FINISHED = ("done", "stopped")


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

    def ranked(self, states: tuple[str, ...]) -> list[TrialStatus]:
        """The trials in `states` that have a value of the metric, best first."""
        scored = [t for t in self.trials if t.state in states and t.best is not None]
        return sorted(scored, key=lambda t: t.best, reverse=self.mode == "max")


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
    trials, since = tune_trials(search.location)
    for trial in trials:
        trial_status = TrialStatus(trial["trial_id"], STATES.get(trial["status"], "running"),
                                   trial.get("config", {}).get("train_loop_config", {}))
        result = folders.pop(trial.get("relative_logdir"), None)
        if result is not None:
            read_progress(trial_status, result, metric, mode)
        if trial_status.state == "done" and trial_status.epochs < trial_status.params.get("train.epochs", budget):
            trial_status.state = "stopped"  # a scheduler (ASHA, PBT) ended it before its budget
        status.trials.append(trial_status)
    listed = {trial["trial_id"] for trial in trials}
    for result in folders.values():  # started after the newest state file that parses
        trial_id = "_".join(result.parent.name.split("_")[2:4])  # run_trial_<id: xxxxx_nnnnn>_<n>_...
        if trial_id in listed or since is not None and result.parent.name[-len(since):] < since:
            # A trial of a driver that was killed before Tune recorded it: the resumed search
            # sampled that trial again (in another folder) or ran another in its place.
            continue
        trial_status = TrialStatus(result.parent.name, "running", {})
        read_progress(trial_status, result, metric, mode)
        status.trials.append(trial_status)
    return status


def tune_trials(search: Location) -> tuple[list[dict[str, Any]], str | None]:
    """Each trial's state (trial_id, status, config, relative_logdir, ...) from the newest of
    Tune's experiment_state files that parses, and the time its session began (the file's
    name: experiment_state-<YYYY-mm-dd_HH-MM-SS>.json, which trial folders' names end with too);
    ([], None) before Tune wrote one."""
    for state_file in reversed(search.glob("experiment_state-*.json")):  # names sort by time
        try:
            trial_data = json.loads(state_file.read_text())["trial_data"]
        except (ValueError, KeyError, ObjectNotFound):  # mid-write, or replaced since the glob
            continue
        since = state_file.name.removeprefix("experiment_state-").removesuffix(".json")
        return [json.loads(state) for state, _runtime in trial_data], since  # [state JSON, runtime JSON]
    return [], None


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


# --- report ---------------------------------------------------------------------------------------

def write_report(name: str, storage: str, out: Path) -> list[Path]:
    """A report of search `name` over its finished trials (done, or stopped early by the
    scheduler; a running search is reported so far): report.png, a parallel-coordinates plot
    of every trial's parameters and best metric, and report.md, the top trials and how much of
    the metric's variance each parameter explains (Optuna's fANOVA). Returns both paths."""
    status = search_status(name, storage)
    trials = status.ranked(FINISHED)
    if len(trials) < 2:
        raise ConfigError(f"report: search {status.name!r} has {len(trials)} finished trial(s) with a value of "
                          f"{status.metric}; a report compares at least 2 (the search's status shows where its trials are)")
    shared = [k for k in dict.fromkeys(k for t in trials for k in t.params) if all(k in t.params for t in trials)]
    varying = [k for k in shared if len({json.dumps(t.params[k]) for t in trials}) > 1]
    constant = [k for k in shared if k not in varying]
    spread = len({t.best for t in trials}) > 1  # fANOVA apportions variance: there must be some
    importance = importances(trials, varying, status.mode) if varying and spread else {}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    plot, tables = out / REPORT_PLOT, out / REPORT_TABLES
    parallel_coordinates(status, trials, varying).savefig(plot)
    tables.write_text(report_markdown(status, trials, varying, constant, importance))
    return [plot, tables]


def importances(trials: list[TrialStatus], names: list[str], mode: str) -> dict[str, float]:
    """Each parameter's share of the variance of the trials' best values (fANOVA, summing to 1):
    the trials go into an in-memory Optuna study, whichever search algorithm sampled them."""
    import optuna
    from optuna.importance import FanovaImportanceEvaluator, get_param_importances

    distributions = {name: distribution_of([plain(t.params[name]) for t in trials]) for name in names}
    previous = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # not "A new study created in memory ..."
    try:
        study = optuna.create_study(direction="minimize" if mode == "min" else "maximize")
    finally:
        optuna.logging.set_verbosity(previous)
    study.add_trials([optuna.trial.create_trial(params={n: plain(t.params[n]) for n in names},
                                                distributions=distributions, value=t.best) for t in trials])
    found = get_param_importances(study, evaluator=FanovaImportanceEvaluator(seed=IMPORTANCE_SEED), params=names)
    return {name: float(value) for name, value in found.items()}


def distribution_of(values: list[Any]):
    """The Optuna distribution that `values` were (most likely) sampled from."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    scale = scale_of(values)
    if scale == "category":
        return CategoricalDistribution(categories(values))
    if integers(values):
        return IntDistribution(min(values), max(values), log=scale == "log")
    return FloatDistribution(float(min(values)), float(max(values)), log=scale == "log")


class Axis:
    """One axis of the parallel-coordinates plot: where each of its values sits, in [0, 1]
    (categories evenly spaced, in order; log-scale numbers by their logarithm)."""

    def __init__(self, name: str, values: list[Any]):
        self.name, self.scale = name, scale_of(values)
        if self.scale == "category":
            self.choices = categories(values)
        else:
            self.low, self.high = self.scaled(min(values)), self.scaled(max(values))

    def scaled(self, value: float) -> float:
        return math.log10(value) if self.scale == "log" else float(value)

    def position(self, value: Any) -> float:
        if self.scale == "category":
            return self.choices.index(value) / max(len(self.choices) - 1, 1)
        return 0.5 if self.high == self.low else (self.scaled(value) - self.low) / (self.high - self.low)

    def ticks(self) -> list[tuple[float, str]]:
        if self.scale == "category":
            return [(self.position(c), short(c)) for c in self.choices]
        unscaled = (lambda x: 10 ** x) if self.scale == "log" else (lambda x: x)
        return [(f, short(float(unscaled(self.low + f * (self.high - self.low))))) for f in (0.0, 0.5, 1.0)]


def parallel_coordinates(status: SearchStatus, trials: list[TrialStatus], names: list[str]):
    """One line per trial (ranked best first) through its parameters and its best value,
    coloured by that value, brighter for better; the best trial drawn on top, thicker."""
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure

    metric = f"best {status.metric}"
    axes = [Axis(n, [plain(t.params[n]) for t in trials]) for n in names] + [Axis(metric, [t.best for t in trials])]
    fig = Figure(figsize=(max(6.0, 1.8 * len(axes) + 2), 4.5), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    colours = matplotlib.colormaps["viridis" if status.mode == "max" else "viridis_r"]
    norm = Normalize(min(t.best for t in trials), max(t.best for t in trials))
    for rank, trial in reversed(list(enumerate(trials))):
        values = [plain(trial.params[n]) for n in names] + [trial.best]
        ax.plot(range(len(axes)), [axis.position(v) for axis, v in zip(axes, values)],
                color=colours(norm(trial.best)), lw=2.5 if rank == 0 else 1.2, alpha=0.9)
    for x, axis in enumerate(axes):
        ax.axvline(x, color="0.3", lw=0.8)
        for y, label in axis.ticks():
            ax.text(x, y, f" {label}", fontsize=7, va="center", ha="left")
    ax.set_xticks(range(len(axes)), [f"{a.name}\n({a.scale})" for a in axes], fontsize=8)
    ax.set_yticks([])
    ax.set_xlim(-0.2, len(axes) - 0.5)
    ax.set_ylim(-0.05, 1.05)
    for spine in ax.spines.values():
        spine.set_visible(False)
    fig.colorbar(ScalarMappable(norm, colours), ax=ax, label=f"{metric} ({status.mode})")
    ax.set_title(f"{status.name}: {len(trials)} finished trials", fontsize=10)
    return fig


def report_markdown(status: SearchStatus, trials: list[TrialStatus], varying: list[str], constant: list[str],
                    importance: dict[str, float]) -> str:
    metric, goal = status.metric, "lower" if status.mode == "min" else "higher"
    params = varying + constant
    lines = [
        f"# Search {status.name}", "",
        f"{status.family}, scheduler {status.scheduler}, at `{status.location}`; metric `{metric}` "
        f"({status.mode}: {goal} is better), {status.epochs} epochs per trial.", "",
        f"Trials: {status.counts()}. This report compares the {len(trials)} that finished (done or stopped early), "
        f"each by the best {metric} it reached; a trial stopped early reached it in fewer epochs.", "",
        "## Top trials", "",
        "| rank | trial | best " + metric + " | epoch | epochs | state | " + " | ".join(params) + " |",
        "|---:|---|---:|---:|---:|---|" + "---|" * len(params),
    ]
    for rank, t in enumerate(trials[:TOP_TRIALS], 1):
        cells = [str(rank), t.trial_id, f"{t.best:.6g}", str(t.best_epoch), str(t.epochs), STATE_NAMES[t.state],
                 *(short(t.params[p]) for p in params)]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "## Parameter importance", ""]
    if importance:
        lines += [f"fANOVA (Optuna's FanovaImportanceEvaluator, seed {IMPORTANCE_SEED}) over the {len(trials)} "
                  f"finished trials: the share of the variance of best {metric} that each parameter explains"
                  + (" (few trials: a rough ranking)." if len(trials) < 10 else "."), "",
                  "| parameter | importance | scale | range |", "|---|---:|---|---|"]
        for name, value in importance.items():
            values = [plain(t.params[name]) for t in trials]
            axis = Axis(name, values)
            span = ", ".join(short(c) for c in axis.choices) if axis.scale == "category" else \
                f"{short(min(values))} – {short(max(values))}"
            lines.append(f"| {name} | {value:.3f} | {axis.scale} | {span} |")
    elif varying:
        lines.append(f"Every finished trial reached the same best {metric}: no variance to apportion.")
    else:
        lines.append("No parameter varies across the finished trials: nothing to rank.")
    if constant:
        lines += ["", "Not ranked (the same in every finished trial): "
                  + ", ".join(f"{k} = {short(trials[0].params[k])}" for k in constant) + "."]
    lines += ["", f"![parallel coordinates]({REPORT_PLOT})", ""]
    return "\n".join(lines)
