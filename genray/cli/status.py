"""`genray status`: one screen on a running cluster.

Runs in progress: the run folders under --storage whose history has fewer epochs than their
config asks for, newest activity first, with the last epoch's value of the family's metric;
"live" when a Train worker of the run exports genray_train_samples_per_second now (a worker's
series leaves the export when it exits). Searches in progress: those under --searches with a
trial pending, running or paused (genray.searches.search_status), with the best value so far.

Apps: every Serve application, with its requests/s and p99 latency, read from genray's metrics
(genray.telemetry): with a Prometheus (--prometheus, default $RAY_PROMETHEUS_HOST, the variable
Ray's dashboard reads), over the last minute, by the dashboard's own queries (rate over [1m],
histogram_quantile of the buckets' rate); without one, from two scrapes of every node's metrics
endpoint --window seconds apart: requests/s = growth of genray_requests_total / the seconds
between the scrapes, p99 = histogram_quantile(0.99) of the growth of each
genray_request_seconds bucket. Ray's agent refreshes the endpoint every
RAY_metrics_report_interval_ms (10 s by default), so a window shorter than two of those can miss
requests.
"""

from __future__ import annotations

import json
import math
import os
import time
import urllib.parse
import urllib.request
from typing import Callable, List, Optional

import typer

from genray import telemetry
from genray.cli.errors import fail

REQUESTS = telemetry.exported("genray_requests")[0]
LATENCY = "ray_genray_request_seconds"
SAMPLES = telemetry.exported("genray_train_samples_per_second")[0]
PROMETHEUS_QUERIES = {  # the Grafana dashboard's panels, cluster/grafana/genray.json, over one minute
    "rps": f"sum by (app) (rate({REQUESTS}[1m]))",
    "p99": f"histogram_quantile(0.99, sum by (app, le) (rate({LATENCY}_bucket[1m])))",
}


def status(
    address: Optional[str] = typer.Option(None, help="Ray cluster address, as ray.init takes it (default: "
                                                     "$RAY_ADDRESS, else the cluster on this machine)."),
    metrics: List[str] = typer.Option([], "--metrics", help="A node's metrics endpoint HOST:PORT (repeatable), in "
                                                            "place of asking Ray for its nodes."),
    prometheus: Optional[str] = typer.Option(None, envvar="RAY_PROMETHEUS_HOST",
                                             help="Prometheus URL: rates over the last minute from it."),
    window: float = typer.Option(10.0, help="Without Prometheus: seconds between the two scrapes."),
    storage: str = typer.Option("runs", help="Folder or s3:// prefix of the runs."),
    searches: str = typer.Option("searches", help="Folder or s3:// prefix of the searches."),
    limit: int = typer.Option(10, help="Runs shown at most, newest first."),
) -> None:
    """Runs and searches in progress with their last metric; apps with requests/s and p99."""
    apps: list[str] = []
    if not metrics:
        try:
            metrics, apps = cluster(address)
        except (ConnectionError, RuntimeError) as err:
            fail(f"cannot reach the Ray cluster ({err}); give --address, or the nodes' --metrics HOST:PORT")
    first = scrape(metrics)
    lines = []
    if prometheus:
        rates = from_prometheus(prometheus)
        how = f"over the last minute, from Prometheus at {prometheus}"
    else:
        time.sleep(max(0.0, window - (time.monotonic() - first.at)))
        second = scrape(metrics)
        rates = app_rates(first, second)
        how = f"over {second.at - first.at:.1f} s between two scrapes"
        first = second
    lines.append(f"genray status: metrics of {len(metrics)} node(s) ({', '.join(metrics) or 'none'}); rates {how}")
    lines += runs_section(storage, first, limit) + searches_section(searches) + apps_section(apps, rates)
    typer.echo("\n".join(lines))


def cluster(address: Optional[str]) -> tuple[list[str], list[str]]:
    """(each live node's metrics endpoint HOST:PORT, the route prefixes of the Serve apps) of the
    cluster this process is connected to, or connects to at `address`."""
    import ray

    if not ray.is_initialized():
        ray.init(address=address or os.environ.get("RAY_ADDRESS") or "auto", log_to_driver=False,
                 logging_level="ERROR")
    endpoints = [f"{n['NodeManagerAddress']}:{n['MetricsExportPort']}" for n in ray.nodes() if n["Alive"]]
    try:
        from ray import serve

        apps = [a.route_prefix or f"/{name}" for name, a in serve.status().applications.items()]
    except Exception:  # no Serve on this cluster
        apps = []
    return endpoints, apps


def scrape(endpoints: list[str], get: Callable[[str], str] | None = None) -> telemetry.Scrape:
    """genray's samples from every endpoint's /metrics; an unreachable one is left out."""
    get = get or (lambda url: urllib.request.urlopen(url, timeout=5).read().decode())
    samples = []
    for endpoint in endpoints:
        try:
            samples += telemetry.parse(get(f"http://{endpoint}/metrics"))
        except OSError:
            continue
    return telemetry.Scrape(samples)


def app_rates(before: telemetry.Scrape, after: telemetry.Scrape) -> dict[str, tuple[float, float | None]]:
    """app -> (requests/s, p99 seconds or None) between two scrapes."""
    seconds = max(after.at - before.at, 1e-9)
    return {app: (telemetry.increase(before, after, REQUESTS, app=app) / seconds,
                  telemetry.quantile_between(0.99, before, after, LATENCY, app=app))
            for app in after.values(REQUESTS, "app")}


def from_prometheus(url: str, get: Callable[[str], str] | None = None) -> dict[str, tuple[float, float | None]]:
    """app -> (requests/s, p99 seconds or None) over the last minute, from Prometheus."""
    get = get or (lambda u: urllib.request.urlopen(u, timeout=10).read().decode())
    answers = {}
    for key, query in PROMETHEUS_QUERIES.items():
        try:
            body = json.loads(get(f"{url.rstrip('/')}/api/v1/query?query={urllib.parse.quote(query)}"))
        except (OSError, ValueError) as err:
            fail(f"Prometheus at {url}: {err}")
        answers[key] = {r["metric"].get("app", ""): float(r["value"][1]) for r in body["data"]["result"]}
    return {app: (rps, None if math.isnan(answers["p99"].get(app, math.nan)) else answers["p99"][app])
            for app, rps in answers["rps"].items()}


def runs_section(storage: str, now: telemetry.Scrape, limit: int) -> list[str]:
    from genray.families import get_family
    from genray.runs import RUN_CONFIG_FILE, RunDir
    from genray.storage import Location

    live = {}
    for s in now.select(SAMPLES):
        live[s.labels["run"]] = live.get(s.labels["run"], 0.0) + s.value
    rows = []
    for config_file in Location(storage).glob(f"*/{RUN_CONFIG_FILE}"):
        run = RunDir.at(config_file.parent)
        try:
            cfg = run.read_config()
            history = run.history()
            family = get_family(cfg["family"])
            metric = family.metric_for(family.DataConfig.model_validate(cfg.get("data", {})))
        except Exception:  # a folder being written, or not a run of this genray
            continue
        epochs = int(cfg.get("train", {}).get("epochs", 0))
        last = history[-1] if history else {}
        done = int(last.get("epoch", -1)) + 1
        if done >= epochs:
            continue
        active = last.get("epoch_started_at", 0.0) + last.get("epoch_s", 0.0)
        value = f"{metric}={last[metric]:.5g}" if metric in last else f"{metric}: no epoch yet"
        state = f"live, {live[run.name]:.0f} samples/s" if run.name in live else \
            (f"idle {ago(active)}" if active else "not started")
        rows.append((run.name in live, active, f"  {run.name:<28} {cfg['family']:<10} epoch {done}/{epochs:<5} "
                                                f"{value:<28} {state}"))
    rows.sort(key=lambda r: (r[0], r[1]), reverse=True)
    return [f"runs in progress ({storage}):"] + ([r[2] for r in rows[:limit]] or ["  none"])


def searches_section(storage: str) -> list[str]:
    from genray.runs import SEARCH_SPEC_FILE
    from genray.searches import search_status
    from genray.storage import Location

    rows = []
    for spec in Location(storage).glob(f"*/{SEARCH_SPEC_FILE}"):
        try:
            found = search_status(spec.parent.name, storage)
        except Exception:  # a search being written, or not genray's
            continue
        if not any(found.count(s) for s in ("pending", "running", "paused")):
            continue
        best = found.best
        value = f"best {found.metric}={best.best:.5g} ({best.trial_id})" if best else f"no {found.metric} yet"
        rows.append(f"  {found.name:<28} {found.family:<10} {found.counts():<36} {value}")
    return [f"searches in progress ({storage}):"] + (rows or ["  none"])


def apps_section(apps: list[str], rates: dict[str, tuple[float, float | None]]) -> list[str]:
    lines = ["apps:", f"  {'APP':<28} {'REQ/S':>8} {'P99':>10}"]
    for app in sorted(set(apps) | set(rates)):
        rps, p99 = rates.get(app, (0.0, None))
        lines.append(f"  {app:<28} {rps:>8.2f} {f'{p99 * 1000:.1f} ms' if p99 is not None else '-':>10}")
    return lines if len(lines) > 2 else lines[:1] + ["  none"]


def ago(unix: float) -> str:
    seconds = max(0.0, time.time() - unix)
    return f"{seconds / 3600:.1f} h ago" if seconds >= 3600 else f"{seconds / 60:.0f} min ago"
