"""genray's metrics: what serving and training record, through Ray's own metrics export.

Every metric is a `ray.util.metrics` object, created on first use in the process that records
it (a Serve replica, a Train worker, a Tune driver). Ray's metrics agent on each node exports
them with the node's system metrics, in Prometheus text on the node's metrics export port
(`ray start --metrics-export-port`, rayStartParams `metrics-export-port`; ray.nodes() gives each
node's MetricsExportPort), every RAY_metrics_report_interval_ms (10 s by default). Ray names an
application metric `ray_<name>` and a counter `ray_<name>_total`: `exported(name)`. A process
that is not connected to Ray (the plain bench server, a loop run without Ray) records nothing,
and each record call costs one check.

Serving (labels: app = the route prefix Serve gives the request, endpoint = the route's path):
    genray_requests                 counter    app, endpoint, status, version
    genray_request_seconds          histogram  app, endpoint, version      entry to last byte
    genray_batch_size               histogram  app, endpoint               requests in one @serve.batch call
    genray_items_produced           counter    app, endpoint               images sent back
    genray_validation_rejections    counter    app, endpoint, field        one per bad field
    genray_heat_cg_iterations       histogram  app                         a solve's mean CG iterations per step
    genray_heat_solve_seconds       histogram  app                         the batched solve a request was in
Training (every rank of every run, a Tune trial's too):
    genray_train_samples_per_second gauge      run, rank                   the rank's samples / step seconds, last epoch
    genray_train_step_seconds       histogram  run, rank, phase            data | compute | allreduce (TrainMetrics)
    genray_train_phase_seconds      counter    run, rank, phase            the same seconds, summed exactly
    genray_train_loss               gauge      run                         the epoch's train_loss (rank 0)
    genray_train_metric             gauge      run, metric                 the family's metric (val_neg_elbo...; rank 0)
    genray_epoch_seconds            histogram  run                         the epoch's epoch_s (rank 0)
    genray_checkpoint_seconds       histogram  run                         writing one checkpoint (rank 0)
Searches:
    genray_tune_trials              gauge      search, state               trials per state (genray.tune.TrialCounts)

Ray's export keeps a histogram's bucket counts and _count exactly, but rebuilds its _sum from the
buckets' midpoints (an observation above the largest bound counts as twice that bound): quantiles
and counts are exact to the bucket, _sum / _count is an estimate. Where a total matters, the time
a run's steps spend in each phase, a counter carries it (genray_train_phase_seconds).

`RequestMetrics` (an ASGI middleware of every genray app) records requests and latency; the
version is the answer's x-genray-model-version header ("none" for an app without versions).
`parse` and `Scrape` read the export back (genray status).
"""

from __future__ import annotations

import logging
import math
import re
import sys
import threading
import time
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
STEP_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass(frozen=True)
class Metric:
    kind: str  # "counter", "gauge" or "histogram"
    help: str
    labels: tuple[str, ...]
    buckets: tuple[float, ...] = ()


METRICS = {
    "genray_requests": Metric("counter", "HTTP requests answered, by status code",
                              ("app", "endpoint", "status", "version")),
    "genray_request_seconds": Metric("histogram", "Seconds from a request's arrival at the replica to its answer's "
                                     "last byte", ("app", "endpoint", "version"), LATENCY_BUCKETS),
    "genray_batch_size": Metric("histogram", "Requests in one @serve.batch call", ("app", "endpoint"),
                                (1, 2, 4, 8, 16, 32, 64, 128)),
    "genray_items_produced": Metric("counter", "Images sent back", ("app", "endpoint")),
    "genray_validation_rejections": Metric("counter", "Request fields refused by validation (422), one per field",
                                           ("app", "endpoint", "field")),
    "genray_heat_cg_iterations": Metric("histogram", "CG iterations per time step, the mean over one request's solve",
                                        ("app",), (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 50, 100, 200, 500)),
    "genray_heat_solve_seconds": Metric("histogram", "Seconds of the batched heat solve a request was part of",
                                        ("app",), LATENCY_BUCKETS),
    "genray_train_samples_per_second": Metric("gauge", "Samples this rank trained per second of its steps, last epoch",
                                              ("run", "rank")),
    "genray_train_step_seconds": Metric("histogram", "Seconds of one train step's phase: data, compute or allreduce",
                                        ("run", "rank", "phase"), STEP_BUCKETS),
    "genray_train_phase_seconds": Metric("counter", "Seconds of train steps spent in each phase, in all",
                                         ("run", "rank", "phase")),
    "genray_train_loss": Metric("gauge", "The last epoch's mean training loss", ("run",)),
    "genray_train_metric": Metric("gauge", "The last epoch's value of the family's metric", ("run", "metric")),
    "genray_epoch_seconds": Metric("histogram", "Seconds of one epoch: steps, validation, quality", ("run",),
                                   (1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200)),
    "genray_checkpoint_seconds": Metric("histogram", "Seconds to write one checkpoint", ("run",),
                                        (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)),
    "genray_tune_trials": Metric("gauge", "Trials of a search in each state", ("search", "state")),
}

TRIAL_STATES = ("pending", "running", "paused", "finished", "stopped", "errored")
NO_VERSION = "none"


def exported(name: str) -> list[str]:
    """The names under which Ray exports metric `name`: a histogram's series, a counter's _total."""
    metric = METRICS[name]
    base = f"ray_{name}"
    if metric.kind == "counter":
        return [f"{base}_total"]
    if metric.kind == "histogram":
        return [f"{base}_bucket", f"{base}_count", f"{base}_sum"]
    return [base]


# --- recording ---------------------------------------------------------------------------------

_made: dict[str, Any] = {}
_failed: set[str] = set()
_lock = threading.Lock()
log = logging.getLogger(__name__)


def enabled() -> bool:
    """Whether this process is connected to Ray, and so records."""
    ray = sys.modules.get("ray")
    return ray is not None and ray.is_initialized()


def _get(name: str):
    """Metric `name` of this process, made on first use; None outside Ray."""
    made = _made.get(name)
    if made is not None:
        return made
    if not enabled():
        return None
    from ray.util import metrics

    spec = METRICS[name]
    with _lock:
        if name not in _made:
            if spec.kind == "histogram":
                _made[name] = metrics.Histogram(name, spec.help, boundaries=list(spec.buckets), tag_keys=spec.labels)
            else:
                _made[name] = {"counter": metrics.Counter, "gauge": metrics.Gauge}[spec.kind](name, spec.help,
                                                                                          tag_keys=spec.labels)
    return _made[name]


def record(name: str, value: float, **labels: str) -> None:
    """Add `value` to counter `name`, set gauge `name` to it, or observe it in histogram `name`.
    A metric that cannot be recorded is logged, once per name, and never fails its caller."""
    metric = _get(name)
    if metric is None:
        return
    kind = METRICS[name].kind
    try:
        if kind == "counter":
            if value > 0:
                metric.inc(float(value), tags=labels)
        elif kind == "gauge":
            metric.set(float(value), tags=labels)
        else:
            metric.observe(float(value), tags=labels)
    except Exception as err:  # a metric is never worth a failed request or a dead run
        if name not in _failed:
            _failed.add(name)
            log.warning("genray: cannot record %s %s: %s", name, labels, err)


# --- serving -------------------------------------------------------------------------------------

# (app, endpoint) of the request being answered, for what the endpoint records (items,
# rejections). A @serve.batch method's batches run in a task that Serve starts from the first
# request that calls it; each genray batch method is called from one route only, so the task
# carries that route's endpoint.
REQUEST: ContextVar[tuple[str, str] | None] = ContextVar("genray_request_labels", default=None)
# This process's app (a replica serves one), for what runs outside a request's context.
_app = [""]


def request_labels() -> dict[str, str]:
    current = REQUEST.get()
    app, endpoint = current if current is not None else (_app[0], "")
    return {"app": app, "endpoint": endpoint}


def _endpoint(scope) -> str:
    """The path of the app's route that matches the request (its template, e.g. /sample), or
    "other": raw paths would make a series per typo. Matched before the app runs, so that a
    request the Guard refuses has its endpoint too."""
    from starlette.routing import Match

    partial = None

    def search(routes) -> str | None:
        nonlocal partial
        for route in routes:
            included = getattr(route, "original_router", None)  # FastAPI's include_router node (Serve's ingress)
            if included is not None:
                found = search(included.routes)
                if found is not None:
                    return found
                continue
            match, _ = route.matches(scope)
            if match == Match.FULL:
                return getattr(route, "path", None)
            if match == Match.PARTIAL and partial is None:
                partial = getattr(route, "path", None)  # the path exists, not for this method (405)
        return None

    return search(getattr(scope.get("app"), "routes", ())) or partial or "other"


class RequestMetrics:
    """ASGI middleware, outermost: each HTTP request's status, latency and model version."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not enabled():
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        app = scope.get("root_path") or "/"
        endpoint = _endpoint(scope)
        _app[0] = app
        token = REQUEST.set((app, endpoint))
        answer = {"status": "500", "version": NO_VERSION}

        async def watched(message):
            if message["type"] == "http.response.start":
                answer["status"] = str(message["status"])
                for key, value in message.get("headers", ()):
                    if key.lower() == b"x-genray-model-version":
                        answer["version"] = value.decode("latin-1")
            await send(message)

        try:
            await self.app(scope, receive, watched)
        finally:
            REQUEST.reset(token)
            record("genray_requests", 1, app=app, endpoint=endpoint, **answer)
            record("genray_request_seconds", time.perf_counter() - start, app=app, endpoint=endpoint,
                   version=answer["version"])


def batch_formed(size: int) -> None:
    record("genray_batch_size", size, **request_labels())


def items_produced(n: int) -> None:
    record("genray_items_produced", n, **request_labels())


_FIELD = re.compile(r"[A-Za-z_][A-Za-z0-9_.]{0,63}")
UNKNOWN_FIELD = "(unknown)"  # a key that is no field of the request: a client's keys must not make series


def rejected(fields: Iterable[str]) -> None:
    """One rejection per distinct field; indices are dropped (images.3 -> images)."""
    labels = request_labels()
    names = {".".join(p for p in f.split(".") if not p.isdigit()) or "body" for f in fields}
    for name in sorted({n if _FIELD.fullmatch(n) else UNKNOWN_FIELD for n in names}):
        record("genray_validation_rejections", 1, field=name, **labels)


def heat_solved(iterations_per_step: Iterable[float], seconds: float) -> None:
    """A batched solve: each member's mean CG iterations per step, and the solve's seconds."""
    app = request_labels()["app"]
    for mean in iterations_per_step:
        record("genray_heat_cg_iterations", mean, app=app)
        record("genray_heat_solve_seconds", seconds, app=app)


# --- training ------------------------------------------------------------------------------------
# A step's time is split into three phases that add up to the step's wall time on a CPU:
#   data       the host's time between the end of one step and the start of the next: the next
#              batch from the loader, its copy to the device, augmentation (the first step of an
#              epoch: from the epoch's start)
#   allreduce  the gradient all-reduce the step waited for: for each backward pass, from the
#              launch of DDP's last bucket (every gradient computed by then) to the completion of
#              the last all-reduce; what overlapped the backward computation is not counted,
#              since the step did not wait for it. Measured by a DDP communication hook (the
#              default all-reduce, timed); not recorded with one worker, which has none.
#   compute    the rest of the step: forward, backward, optimizer
# On CUDA, compute and allreduce are read from CUDA events recorded at the same points, at the
# end of the epoch (when the loop has waited for the device anyway), so no step waits for them.


class _Clock:
    """Stamps on the host (perf_counter) or, on CUDA, events on the current stream."""

    def __init__(self, cuda: bool):
        self.cuda = cuda

    def stamp(self):
        if not self.cuda:
            return time.perf_counter()
        import torch

        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def seconds(self, a, b) -> float:
        return max(0.0, a.elapsed_time(b) / 1000.0 if self.cuda else b - a)


@dataclass
class _Round:
    """One backward pass's all-reduce: the last bucket's launch, the last completion."""

    launched: Any = None
    done: Any = None


class AllReduceClock:
    """The DDP communication hook of this process (time_allreduce) and what it measured."""

    def __init__(self):
        self.clock = _Clock(False)
        self.rounds: list[_Round] = []

    def hook(self, process_group, bucket):
        from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

        if bucket.index() == 0 or not self.rounds:
            self.rounds.append(_Round())
        this = self.rounds[-1]
        if bucket.is_last():
            this.launched = self.clock.stamp()
        future = allreduce_hook(process_group, bucket)

        def done(fut):
            this.done = self.clock.stamp()  # the completion that runs last overwrites the others
            return fut.value()

        return future.then(done)

    def take(self) -> list[_Round]:
        """The rounds since the last take (the step's backward passes)."""
        rounds, self.rounds = self.rounds, []
        return rounds


ALLREDUCE = AllReduceClock()


def time_allreduce(net):
    """`net` (a DistributedDataParallel) with its all-reduce timed by ALLREDUCE; returns it."""
    from torch.nn.parallel import DistributedDataParallel

    if isinstance(net, DistributedDataParallel):
        ALLREDUCE.clock = _Clock(next(net.parameters()).is_cuda)
        net.register_comm_hook(net.process_group, ALLREDUCE.hook)
    return net


class TrainMetrics:
    """The loop's hooks that record genray_train_* for one rank of a run. It has the methods of
    genray.train.loop.Hooks without subclassing it: that package imports Ray Train, which a Serve
    replica importing this module must not. Steps are recorded PENDING at a time (a record costs
    ~4 us) and at the end of each epoch; on CUDA, a step once the device has passed its events
    (asked without waiting), and all at the end of the epoch, when the loop has waited for the
    device anyway."""

    PENDING = 64

    def __init__(self, device):
        self.clock = _Clock(getattr(device, "type", str(device)) == "cuda")
        self.on = False
        self.steps: list[tuple[float, Any, Any, list[_Round]]] = []  # (data s, start, end, all-reduce rounds)

    def on_start(self, config, rank: int) -> None:
        from genray.families import get_family

        self.on = enabled()
        self.run, self.rank = config.run_dir.name, str(rank)
        self.metric = get_family(config.run.family).metric_for(config.run.data)
        ALLREDUCE.take()

    def on_epoch_start(self, epoch: int) -> None:
        self.epoch_start = self.last_end = time.perf_counter()
        self.samples = 0

    def before_step(self, epoch: float) -> None:
        if self.on:
            self.data = time.perf_counter() - self.last_end
            ALLREDUCE.take()  # nothing of an earlier backward (validation has none) is this step's
            self.start = self.clock.stamp()

    def after_step(self, metrics) -> None:
        if self.on:
            self.steps.append((self.data, self.start, self.clock.stamp(), ALLREDUCE.take()))
            if len(self.steps) >= self.PENDING:
                self._record_steps(wait=False)

    def on_batch(self, samples: int) -> None:
        self.samples += samples
        self.last_end = time.perf_counter()

    def _record_steps(self, wait: bool) -> None:
        """Record the steps whose times can be read (all of them with `wait`), oldest first."""
        run, rank = self.run, self.rank
        total: dict[str, float] = {}
        done = 0
        for data, start, end, rounds in self.steps:
            if self.clock.cuda and not wait and not (end.query() and all(r.done is None or r.done.query()
                                                                         for r in rounds)):
                break
            allreduce = sum(ALLREDUCE.clock.seconds(r.launched, r.done) for r in rounds
                            if r.launched is not None and r.done is not None)
            phases = {"data": data, "compute": max(0.0, self.clock.seconds(start, end) - allreduce)}
            if rounds:
                phases["allreduce"] = allreduce
            for phase, seconds in phases.items():
                record("genray_train_step_seconds", seconds, run=run, rank=rank, phase=phase)
                total[phase] = total.get(phase, 0.0) + seconds
            done += 1
        del self.steps[:done]
        for phase, seconds in total.items():
            record("genray_train_phase_seconds", seconds, run=run, rank=rank, phase=phase)

    def on_epoch_end(self, epoch: int, metrics: dict[str, Any]) -> None:
        if not self.on:
            return
        self._record_steps(wait=True)
        run, rank = self.run, self.rank
        record("genray_train_samples_per_second", self.samples / max(self.last_end - self.epoch_start, 1e-9),
               run=run, rank=rank)
        if rank == "0":
            if "train_loss" in metrics:
                record("genray_train_loss", metrics["train_loss"], run=run)
            if self.metric in metrics:
                record("genray_train_metric", metrics[self.metric], run=run, metric=self.metric)
            record("genray_epoch_seconds", metrics["epoch_s"], run=run)

    def on_end(self, config, rank: int) -> None:
        """Nothing: every epoch recorded its own."""


def timed_checkpoint(run: str, write: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """`write(folder)` that records its seconds in genray_checkpoint_seconds."""
    def timed(folder):
        start = time.perf_counter()
        try:
            return write(folder)
        finally:
            record("genray_checkpoint_seconds", time.perf_counter() - start, run=run)

    return timed


def tune_trials(search: str, counts: dict[str, int]) -> None:
    """Set genray_tune_trials for every state (0 for those not in `counts`)."""
    for state in TRIAL_STATES:
        record("genray_tune_trials", counts.get(state, 0), search=search, state=state)


# --- reading the export back -------------------------------------------------------------------

_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


@dataclass(frozen=True)
class Sample:
    name: str
    labels: dict[str, str]
    value: float


def parse(text: str, prefix: str = "ray_genray_") -> list[Sample]:
    """The samples of Prometheus text whose names start with `prefix`."""
    out = []
    for line in text.splitlines():
        if not line.startswith(prefix):
            continue
        m = _SAMPLE.match(line)
        if m is None:
            continue
        labels = {k: bytes(v, "utf-8").decode("unicode_escape") for k, v in _LABEL.findall(m.group(2) or "")}
        out.append(Sample(m.group(1), labels, float(m.group(3))))
    return out


# Labels that tell apart the processes exporting one series (Ray adds them), not what it counts.
PROCESS_LABELS = ("WorkerId", "Component", "NodeAddress", "SessionName", "Version", "instance", "job",
                  "otel_scope_name", "otel_scope_schema_url", "otel_scope_version")


@dataclass
class Scrape:
    """One read of every node's metrics endpoint, at `at` (time.monotonic())."""

    samples: list[Sample]
    at: float = field(default_factory=time.monotonic)

    def select(self, name: str, **labels: str) -> list[Sample]:
        return [s for s in self.samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]

    def total(self, name: str, **labels: str) -> float:
        return sum(s.value for s in self.select(name, **labels))

    def values(self, name: str, label: str) -> set[str]:
        return {s.labels[label] for s in self.samples if s.name == name and label in s.labels}


def _key(sample: Sample) -> tuple:
    return sample.name, tuple(sorted(sample.labels.items()))


def increase(before: Scrape, after: Scrape, name: str, **labels: str) -> float:
    """How much the counter series `name` (those with `labels`) grew between two scrapes: per
    series, after - before, or after alone where it restarted (a new process) or is new."""
    was = {_key(s): s.value for s in before.select(name, **labels)}
    grown = 0.0
    for s in after.select(name, **labels):
        old = was.get(_key(s), 0.0)
        grown += s.value - old if s.value >= old else s.value
    return grown


def quantile(q: float, buckets: dict[float, float]) -> float | None:
    """Prometheus's histogram_quantile: `buckets` maps each upper bound (math.inf last) to its
    cumulative count; linear inside the bucket that holds the q-th observation. None when empty."""
    bounds = sorted(buckets)
    total = buckets[bounds[-1]] if bounds else 0.0
    if total <= 0:
        return None
    rank, lower, below = q * total, 0.0, 0.0
    for upper in bounds:
        count = buckets[upper]
        if count >= rank:
            if math.isinf(upper):
                return lower  # above the largest finite bound: that bound, as Prometheus answers
            return lower + (upper - lower) * (rank - below) / max(count - below, 1e-12)
        lower, below = upper, count
    return lower


def quantile_between(q: float, before: Scrape, after: Scrape, name: str, **labels: str) -> float | None:
    """The q-quantile of histogram `name`'s observations made between two scrapes."""
    buckets: dict[float, float] = {}
    for le in after.values(f"{name}_bucket", "le"):
        buckets[float(le)] = increase(before, after, f"{name}_bucket", le=le, **labels)
    return quantile(q, buckets)
