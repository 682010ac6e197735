"""genray's metrics (genray.telemetry) as Ray exports them: after a short training run and a few
requests, a scrape of the session Ray's own metrics endpoint holds every genray metric with
its labels and the counts that were sent; the Grafana dashboard parses and queries only metrics
that exist; the cluster files wire Prometheus; `genray status` reads it all back.

Ray's agent exports every second here (tests/conftest.py), and a process's series leave the
export when the process exits: the Train workers linger after their last epoch (Linger) while a
poller keeps the last value of every series it saw."""

from __future__ import annotations

import json
import math
import re
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import pytest
import requests
import yaml

from genray import telemetry
from genray.cli.status import PROMETHEUS_QUERIES, app_rates, from_prometheus, scrape
from genray.train.loop import Hooks

REPO = Path(__file__).resolve().parents[1]
DASHBOARD = REPO / "cluster" / "grafana" / "genray.json"
HEAT_REQUESTS = 5
RUN = "observed"
SEARCH = "observe-search"
EXPORT_WAIT_S = 30  # bound on waiting for Ray's agent to export what was recorded


class Linger(Hooks):
    """Keeps a Train worker alive after its last epoch until Ray's agent (every 1 s here) has exported it."""

    def on_end(self, config, rank):
        time.sleep(2.5)


class Poller(threading.Thread):
    """Scrapes the endpoint until stopped; `seen` keeps the last sample of every series."""

    def __init__(self, endpoint: str):
        super().__init__(daemon=True)
        self.endpoint, self.stop, self.seen = endpoint, threading.Event(), {}

    def run(self):
        while not self.stop.is_set():
            for s in scrape([self.endpoint]).samples:
                self.seen[(s.name, tuple(sorted(s.labels.items())))] = s
            time.sleep(0.2)

    def scrape(self) -> telemetry.Scrape:
        return telemetry.Scrape(list(self.seen.values()))


def metrics_endpoint(ray) -> str:
    node = ray.get_runtime_context().get_node_id()
    return f"127.0.0.1:{next(n['MetricsExportPort'] for n in ray.nodes() if n['NodeID'] == node)}"


def wait_for(endpoint: str, ready) -> telemetry.Scrape:
    deadline = time.monotonic() + EXPORT_WAIT_S
    while True:
        now = scrape([endpoint])
        if ready(now) or time.monotonic() > deadline:
            return now
        time.sleep(0.3)


@pytest.fixture(scope="module")
def observed(ray_session, serve_url, tmp_path_factory):
    """The scrape after the requests (serving), every series seen while the run trained (training),
    the apps' route prefixes (apps), the metrics endpoint, the fixture's folder, the run's wall seconds."""
    import deployed
    from ray import cloudpickle

    from genray.config import build_config
    from genray.train import fit
    from genray.tune import TrialCounts

    endpoint = metrics_endpoint(ray_session)
    folder = tmp_path_factory.mktemp("observe")
    pool = ThreadPoolExecutor(1)
    deploying = pool.submit(deployed.deploy, ["heat", "vae"], folder, "observe")  # while the run trains
    try:
        poller = Poller(endpoint)
        poller.start()
        cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Linger travels to the workers
        try:
            cfg = build_config("vae", overrides=[
                f"name={RUN}", f"storage={folder / 'runs'}", "train.workers=1", "train.epochs=2", "data.limit=96",
                "train.batch_size=16", "model.latent_dim=2", "model.arch=dense", "model.hidden=32",
                "train.quality_every=0", "train.preview_every=0"])
            wall = fit(cfg, verbose=False, hooks=[Linger()]).wall_s
        finally:
            cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
            poller.stop.set()
            poller.join()
        names = deploying.result()
        apps = {"heat": f"/{names['heat']}", "vae": f"/{names['vae']}"}
        heat, vae = serve_url + apps["heat"], serve_url + apps["vae"]
        for _ in range(HEAT_REQUESTS):
            assert requests.post(f"{heat}/solve", json={"n": 8, "t_end": 0.01}, timeout=60).status_code == 200
        assert requests.post(f"{heat}/solve", json={"n": 1}, timeout=60).status_code == 422
        sampled = requests.post(f"{vae}/sample", json={"n": 3, "format": "list"}, timeout=60)
        assert sampled.status_code == 200 and len(sampled.json()["images"]) == 3
        counts = TrialCounts(SEARCH, epochs=3)  # the search's driver is this process
        counts.on_experiment_end([Trial("RUNNING", 0), Trial("RUNNING", 1), Trial("TERMINATED", 2),
                                  Trial("TERMINATED", 0), Trial("PENDING", -1)])
        after = wait_for(endpoint, lambda s: s.total("ray_genray_request_seconds_count", app=apps["heat"])
                         == HEAT_REQUESTS + 1 and s.total("ray_genray_items_produced_total", app=apps["vae"]) == 3
                         and s.select("ray_genray_tune_trials"))
        yield SimpleNamespace(serving=after, training=poller.scrape(), apps=apps, endpoint=endpoint, folder=folder,
                              wall=wall)
    finally:
        pool.shutdown()
        if deploying.exception() is None:
            deployed.delete(deploying.result().values())


class Trial:
    """What TrialCounts reads of a Tune trial."""

    def __init__(self, status: str, last_epoch: int):
        self.status, self.config = status, {"train_loop_config": {}}
        self.last_result = {"epoch": last_epoch} if last_epoch >= 0 else {}


@pytest.mark.ray
def test_the_scrape_holds_every_serving_metric_with_its_labels_and_counts(observed):
    s, apps = observed.serving, observed.apps
    heat, vae = apps["heat"], apps["vae"]
    solve = dict(app=heat, endpoint="/solve")
    assert s.total("ray_genray_requests_total", status="200", version="none", **solve) == HEAT_REQUESTS
    assert s.total("ray_genray_requests_total", status="422", **solve) == 1
    count = s.total("ray_genray_request_seconds_count", **solve)
    assert count == HEAT_REQUESTS + 1 == s.total("ray_genray_request_seconds_bucket", le="+Inf", **solve)
    assert 0 < s.total("ray_genray_request_seconds_sum", **solve) < 60 * count
    [sample] = s.select("ray_genray_requests_total", app=vae, endpoint="/sample")
    assert sample.value == 1 and sample.labels["status"] == "200" and sample.labels["version"] != "none"
    # One batch per sequential request; the 422 never reaches the batch. (Ray rebuilds a histogram's
    # _sum from its buckets' midpoints: the buckets and _count are the exact record.)
    assert s.total("ray_genray_batch_size_count", **solve) == HEAT_REQUESTS
    assert s.total("ray_genray_batch_size_bucket", le="1.0", **solve) == HEAT_REQUESTS
    assert s.total("ray_genray_batch_size_count", app=vae, endpoint="/sample") == 1
    assert s.total("ray_genray_items_produced_total", app=vae, endpoint="/sample") == 3
    assert s.total("ray_genray_validation_rejections_total", field="n", **solve) == 1
    assert s.total("ray_genray_heat_cg_iterations_count", app=heat) == HEAT_REQUESTS
    # The multigrid-preconditioned CG takes a few iterations a step, never none, never hundreds.
    assert s.total("ray_genray_heat_cg_iterations_bucket", app=heat, le="1.0") == 0
    assert s.total("ray_genray_heat_cg_iterations_bucket", app=heat, le="50.0") == HEAT_REQUESTS
    assert s.total("ray_genray_heat_solve_seconds_count", app=heat) == HEAT_REQUESTS
    assert s.total("ray_genray_heat_solve_seconds_bucket", app=heat, le="10.0") == HEAT_REQUESTS
    trials = {x.labels["state"]: x.value for x in s.select("ray_genray_tune_trials", search=SEARCH)}
    assert trials == {"running": 2, "pending": 1, "finished": 1, "stopped": 1, "paused": 0, "errored": 0}


@pytest.mark.ray
def test_the_scrape_of_the_run_holds_every_training_metric(observed):
    t, wall = observed.training, observed.wall
    run = dict(run=RUN)
    assert t.total("ray_genray_epoch_seconds_count", **run) == 2  # rank 0, one per epoch
    assert t.total("ray_genray_checkpoint_seconds_count", **run) == 2  # checkpoint_every=1
    assert t.total("ray_genray_checkpoint_seconds_bucket", le="10.0", **run) == 2
    assert t.total("ray_genray_epoch_seconds_bucket", le="600.0", **run) == 2
    [loss] = t.select("ray_genray_train_loss", **run)
    [metric] = t.select("ray_genray_train_metric", **run)
    assert math.isfinite(loss.value) and loss.value > 0 and metric.labels["metric"] == "val_neg_elbo"
    [speed] = t.select("ray_genray_train_samples_per_second", rank="0", **run)
    assert speed.value > 0
    counts = {p: t.total("ray_genray_train_step_seconds_count", rank="0", phase=p, **run) for p in ("data", "compute")}
    # every step has each phase: 86 training images (96 less the 10% val split), 6 steps of 16 an epoch;
    # one worker all-reduces nothing (two ranks' hook: test_the_allreduce_hook_keeps_ddps_gradients...)
    assert counts == {"data": 12, "compute": 12}, counts
    assert not t.select("ray_genray_train_step_seconds_count", phase="allreduce", **run)
    seconds = {p: t.total("ray_genray_train_phase_seconds_total", rank="0", phase=p, **run) for p in counts}
    assert all(v > 0 for v in seconds.values()) and sum(seconds.values()) < wall, seconds


# --- the Grafana dashboard ---------------------------------------------------------------------

FUNCTIONS = {"sum", "avg", "max", "min", "count", "rate", "irate", "increase", "histogram_quantile", "by",
             "without", "on", "ignoring", "label_values", "vector", "or", "and", "unless"}


def referenced(expr: str) -> list[tuple[str, set[str]]]:
    """(metric, the labels named with it: its selector's and the groupings') of a PromQL
    expression or a Grafana label_values() query."""
    groupings = set()
    variable = re.fullmatch(r"label_values\((.*),\s*([a-zA-Z_][a-zA-Z0-9_]*)\)", expr)
    if variable:  # label_values(SELECTOR, LABEL)
        expr, groupings = variable.group(1), {variable.group(2)}
    for body in re.findall(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)", expr):
        groupings |= {x.strip() for x in body.split(",") if x.strip()}
    bare = re.sub(r"\b(?:by|without|on|ignoring)\s*\([^)]*\)", " ", expr)
    found = []
    for name, selector in re.findall(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(\{[^}]*\})?", re.sub(r"\[[^\]]*\]", " ", bare)):
        if name in FUNCTIONS or re.fullmatch(r"[0-9.e]+", name):
            continue
        labels = set(re.findall(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)", selector or ""))
        found.append((name, labels | groupings))
    return found


def dashboard_queries() -> list[str]:
    board = json.loads(DASHBOARD.read_text())
    queries = [t["expr"] for p in board["panels"] if p["type"] != "row" for t in p["targets"]]
    queries += [v["query"]["query"] for v in board["templating"]["list"] if v["type"] == "query"]
    return queries


def test_the_grafana_dashboard_is_importable_and_queries_genray_metrics_with_their_labels():
    board = json.loads(DASHBOARD.read_text())
    assert board["uid"] == "genray" and board["title"]
    [source] = [v for v in board["templating"]["list"] if v["type"] == "datasource"]
    assert source["query"] == "prometheus"
    panels = [p for p in board["panels"] if p["type"] != "row"]
    for panel in panels:
        assert panel["datasource"]["uid"] == "${" + source["name"] + "}" and panel["targets"], panel["title"]
        assert len({t["refId"] for t in panel["targets"]}) == len(panel["targets"])
    genray_names = {name: metric for name, metric in telemetry.METRICS.items()}
    exported = {e: name for name in genray_names for e in telemetry.exported(name)}
    seen = set()
    for expr in dashboard_queries():
        assert expr.count("(") == expr.count(")") and expr.count("{") == expr.count("}"), expr
        refs = referenced(expr)
        assert refs, f"no metric in {expr}"
        for name, labels in refs:
            if name.startswith("ray_genray_"):
                assert name in exported, f"{name} is no metric of genray.telemetry ({expr})"
                allowed = {*genray_names[exported[name]].labels, *telemetry.PROCESS_LABELS, "le", "ray_io_cluster"}
                assert labels <= allowed, f"{name}: labels {labels - allowed} it does not have ({expr})"
                seen.add(exported[name])
    assert seen == set(telemetry.METRICS), f"no panel for {set(telemetry.METRICS) - seen}"


@pytest.mark.ray
def test_the_dashboards_ray_metrics_exist_in_the_scrape(observed):
    wanted = {name: expr for expr in dashboard_queries() for name, _ in referenced(expr)
              if not name.startswith("ray_genray_")}
    present: set[str] = set()
    deadline = time.monotonic() + EXPORT_WAIT_S  # the node's own metrics come and go between reports
    while set(wanted) - present and time.monotonic() < deadline:
        text = requests.get(f"http://{observed.endpoint}/metrics", timeout=10).text
        present |= {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and line[0] != "#"}
        time.sleep(0.5)
    assert not set(wanted) - present, {name: wanted[name] for name in set(wanted) - present}


# --- the cluster files -----------------------------------------------------------------------------

def test_the_launcher_clusters_export_metrics_on_a_fixed_port_and_run_prometheus_on_the_head():
    for path in ("cluster/aws-gpu.yaml", "cluster/local.yaml"):
        config = yaml.safe_load((REPO / path).read_text())
        commands = config["head_start_ray_commands"] + config["worker_start_ray_commands"]
        starts = [c for c in commands if "ray start" in c]
        assert len(starts) == 2 and all("--metrics-export-port=8080" in c for c in starts), path
        head = " ".join(config["head_start_ray_commands"])
        assert "ray metrics launch-prometheus" in head and "RAY_PROMETHEUS_HOST=http://127.0.0.1:9090" in head, path


def test_every_kuberay_pod_exports_metrics_on_the_port_the_podmonitors_scrape():
    from test_cluster import KUBERAY, load, ray_cluster_spec

    for kind, path in KUBERAY.items():
        spec = ray_cluster_spec(load(path))
        for group in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]:
            assert group["rayStartParams"]["metrics-export-port"] == "8080", path
            ports = {p["name"]: p["containerPort"] for p in group["template"]["spec"]["containers"][0]["ports"]}
            assert ports["metrics"] == 8080, path
    monitors = list(yaml.safe_load_all((REPO / "cluster" / "kuberay" / "podmonitor.yaml").read_text()))
    assert {m["spec"]["selector"]["matchLabels"]["ray.io/node-type"] for m in monitors} == {"head", "worker"}
    for monitor in monitors:
        assert monitor["kind"] == "PodMonitor" and monitor["metadata"]["labels"]["release"] == "prometheus"
        [endpoint] = monitor["spec"]["podMetricsEndpoints"]
        assert endpoint["port"] == "metrics"
        assert endpoint["relabelings"][0]["targetLabel"] == "ray_io_cluster"


# --- genray status ---------------------------------------------------------------------------------

def test_rates_and_p99_between_two_scrapes_are_prometheus_rate_and_histogram_quantile():
    def at(t, count, buckets):
        labels = {"app": "/a", "status": "200", "WorkerId": "w"}
        samples = [telemetry.Sample("ray_genray_requests_total", labels, count)]
        samples += [telemetry.Sample("ray_genray_request_seconds_bucket", {"app": "/a", "le": le, "WorkerId": "w"}, n)
                    for le, n in buckets.items()]
        return telemetry.Scrape(samples, at=t)

    before = at(100.0, 10, {"0.1": 5, "1.0": 10, "+Inf": 10})
    after = at(110.0, 110, {"0.1": 55, "1.0": 108, "+Inf": 110})  # 100 more: 50 <= 0.1 s, 48 in (0.1, 1], 2 above
    rps, p99 = app_rates(before, after)["/a"]
    assert rps == pytest.approx(10.0)
    assert p99 == pytest.approx(1.0)  # the 99th of 100 lies above 1 s: the largest finite bound
    assert telemetry.quantile(0.5, {0.1: 50, 1.0: 98, math.inf: 100}) == pytest.approx(0.1)
    assert telemetry.quantile(0.75, {0.1: 50, 1.0: 100, math.inf: 100}) == pytest.approx(0.55)
    # A process that restarted counts from 0 again: its new total is its increase.
    assert telemetry.increase(at(0, 50, {}), at(1, 7, {}), "ray_genray_requests_total") == 7


def test_status_over_prometheus_asks_for_the_last_minute_of_genray_metrics():
    asked = []

    def get(url):
        asked.append(url)
        if "histogram_quantile" in url:
            return json.dumps({"data": {"result": [{"metric": {"app": "/heat"}, "value": [0, "0.25"]},
                                                   {"metric": {"app": "/vae"}, "value": [0, "NaN"]}]}})
        return json.dumps({"data": {"result": [{"metric": {"app": "/heat"}, "value": [0, "2.5"]},
                                               {"metric": {"app": "/vae"}, "value": [0, "0"]}]}})

    assert from_prometheus("http://prom:9090/", get) == {"/heat": (2.5, 0.25), "/vae": (0.0, None)}
    assert len(asked) == 2 and all(u.startswith("http://prom:9090/api/v1/query?query=") for u in asked)
    exported = {e for name in telemetry.METRICS for e in telemetry.exported(name)}
    for query in PROMETHEUS_QUERIES.values():
        assert "[1m]" in query and {n for n, _ in referenced(query)} <= exported


def test_the_allreduce_hook_keeps_ddps_gradients_and_times_each_backward_pass(tmp_path):
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        nets = [torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.ReLU(), torch.nn.Linear(64, 4)) for _ in "ab"]
        nets[1].load_state_dict(nets[0].state_dict())
        timed = telemetry.time_allreduce(DDP(nets[0], bucket_cap_mb=0.001))  # several buckets
        plain = DDP(nets[1], bucket_cap_mb=0.001)
        telemetry.ALLREDUCE.take()
        x = torch.randn(8, 16)
        for _ in range(2):
            for ddp in (timed, plain):
                ddp(x).square().sum().backward()
        rounds = telemetry.ALLREDUCE.take()
        assert len(rounds) == 2 and all(0 < r.launched <= r.done for r in rounds)  # one round a backward pass
        for a, b in zip(nets[0].parameters(), nets[1].parameters()):
            assert torch.equal(a.grad, b.grad)
    finally:
        dist.destroy_process_group()


def test_train_metrics_answers_every_hook_of_the_loop():
    hooks = {name for name in vars(Hooks) if not name.startswith("_")}
    assert hooks <= {name for name in vars(telemetry.TrainMetrics) if not name.startswith("_")}


class Recorded:
    """A stand-in for a ray.util.metrics object: what it was given, or an error."""

    def __init__(self, error: Exception | None = None):
        self.calls, self.error = [], error

    def inc(self, value, tags):
        if self.error:
            raise self.error
        self.calls.append((value, tags))


def test_a_rejected_field_is_a_bounded_label_and_recording_never_fails_the_caller(monkeypatch):
    counter = Recorded()
    monkeypatch.setattr(telemetry, "_made", {"genray_validation_rejections": counter})
    telemetry.rejected(["images.3", "images.0", "\u0080", telemetry.UNKNOWN_FIELD, "z.0.1", "a" * 65])
    assert sorted(tags["field"] for _, tags in counter.calls) == ["(unknown)", "images", "z"]
    failing = Recorded(UnicodeEncodeError("ascii", "", 0, 1, "not ascii"))
    monkeypatch.setattr(telemetry, "_made", {"genray_items_produced": failing})
    telemetry.items_produced(3)  # logged, not raised


def test_recording_outside_ray_is_a_no_op(monkeypatch):
    monkeypatch.setattr(telemetry, "enabled", lambda: False)
    monkeypatch.setattr(telemetry, "_made", {})
    telemetry.record("genray_requests", 1, app="/a", endpoint="/b", status="200", version="none")
    telemetry.items_produced(3)
    assert telemetry._made == {}


@pytest.mark.ray
def test_status_shows_runs_searches_and_apps_with_their_rates(observed, serve_url, tmp_path):
    from typer.testing import CliRunner

    from genray.cli import app

    apps, folder = observed.apps, observed.folder
    runs, searches = tmp_path / "runs", tmp_path / "searches"
    # A run at epoch 1 of 3, and the finished run of the fixture (not in progress).
    (runs / "half").mkdir(parents=True)
    config = yaml.safe_load((folder / "runs" / RUN / "genray.yaml").read_text())
    (runs / "half" / "genray.yaml").write_text(yaml.safe_dump({**config, "name": "half",
                                                               "train": {**config["train"], "epochs": 3}}))
    (runs / "half" / "history.jsonl").write_text(json.dumps({"epoch": 0, "val_neg_elbo": 321.5, "epoch_s": 2.0,
                                                             "epoch_started_at": time.time() - 60}) + "\n")
    (runs / RUN).symlink_to(folder / "runs" / RUN)
    # A search with a trial running and one done.
    search = searches / "s1"
    (search / "run_trial_a").mkdir(parents=True)
    (search / "genray_search.json").write_text(json.dumps({"family": "vae", "metric": "val_neg_elbo", "mode": "min",
                                                           "scheduler": "asha", "base": {"train": {"epochs": 3}}}))
    trials = [[json.dumps({"trial_id": t, "status": s, "config": {"train_loop_config": {"model.lr": 0.01}},
                           "relative_logdir": f"run_trial_{t}"}), "{}"]
              for t, s in (("a", "RUNNING"), ("b", "TERMINATED"))]
    (search / "experiment_state-2026-01-01_00-00-00.json").write_text(json.dumps({"trial_data": trials}))
    (search / "run_trial_a" / "result.json").write_text(json.dumps({"epoch": 0, "val_neg_elbo": 250.0}) + "\n")

    stop = threading.Event()

    def load():  # steady requests while status scrapes twice
        while not stop.is_set():
            requests.post(f"{serve_url}{apps['heat']}/solve", json={"n": 8, "t_end": 0.01}, timeout=60)
            time.sleep(0.1)

    sender = threading.Thread(target=load, daemon=True)
    sender.start()
    try:
        time.sleep(1.2)  # the first requests are exported before the first scrape
        result = CliRunner().invoke(app, ["status", "--window", "3", "--storage", str(runs), "--searches",
                                          str(searches)])
    finally:
        stop.set()
        sender.join()
    assert result.exit_code == 0, result.output
    out = result.output
    assert re.search(r"runs in progress .*\n\s+half\s+vae\s+epoch 1/3\s+val_neg_elbo=321\.5\s+idle 1 min ago", out)
    assert f" {RUN} " not in out  # finished
    assert re.search(r"s1\s+vae\s+1 running, 1 stopped early\s+best val_neg_elbo=250", out), out
    heat = re.search(re.escape(apps["heat"]) + r"\s+([0-9.]+)\s+([0-9.]+) ms", out)
    assert heat and 0.5 < float(heat.group(1)) < 20 and 0 < float(heat.group(2)) < 10_000, out
    assert re.search(re.escape(apps["vae"]) + r"\s+0\.00\s+-", out), out  # no request in the window

