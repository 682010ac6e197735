"""`genray bench dashboard`: the Grafana dashboard (cluster/grafana/genray.json) drawn from a real run.

A local Ray whose agent exports every REPORT_S seconds, and a real Prometheus (the `prometheus`
binary: Debian's package, or --prometheus PATH) scraping the node's metrics export port. Then what a user of genray does, on that Ray:

    serving   apps gan, heat (and vae once trained) under steady traffic from TRAFFIC_CLIENTS
              clients, one request in INVALID_EVERY invalid (the endpoints reject it with a 422)
    training  `genray train vae` with 2 workers, exported to a model registry as vae@production;
              the vae app serves that alias, and a second export moves it mid-traffic (v1 -> v2)
    search    `genray tune gan`: an ASHA search, two trials at a time

The drivers are `genray` subprocesses joined to the Ray (--address), as a user's are; mid-search
`genray status --prometheus` prints its screen from the same Prometheus. Then every
panel's own PromQL is sent to Prometheus's query_range over that window, the dashboard's
variables set to All and $__rate_interval to RATE_INTERVAL, and the panels are drawn where the
dashboard places them, with its titles, legends and units. Grafana's server is not in this
machine's package registries: the queries are the ones Grafana sends, the drawing is matplotlib's.
Writes dashboard.json (every series of every panel) and dashboard.png.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

import requests
import yaml

from genray.bench import machine

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "cluster" / "grafana" / "genray.json"
REPORT_S = 2  # RAY_metrics_report_interval_ms / 1000: Ray's agent exports this often
SCRAPE_S = 2  # Prometheus scrapes this often
RATE_INTERVAL = "20s"  # $__rate_interval: ten scrapes, so a rate spans several of Ray's exports
STEP_S = 4  # query_range resolution
TRAFFIC_CLIENTS = 3
INVALID_EVERY = 10
VARIABLES = ("SessionName", "Cluster", "App", "Run", "Search")  # the dashboard's, each at All


class DashboardError(RuntimeError):
    pass


# --- the dashboard's queries ------------------------------------------------------------------

def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel in order (rows too), with those nested in collapsed rows brought up."""
    out = []
    for panel in dashboard["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))
    return out


def expand(expr: str, rate_interval: str = RATE_INTERVAL) -> str:
    """A panel's PromQL as Grafana sends it with every variable at All."""
    expr = expr.replace("$__rate_interval", rate_interval)
    for name in VARIABLES:
        expr = expr.replace(f"${{{name}}}", ".*").replace(f"${name}", ".*")
    if "$" in expr:
        raise DashboardError(f"a variable this bench does not set: {expr}")
    return expr


def legend(fmt: str | None, labels: dict[str, str]) -> str:
    """Grafana's legendFormat: {{label}} replaced by the series' value of it."""
    if not fmt:
        return "{" + ", ".join(f"{k}={v}" for k, v in sorted(labels.items())) + "}"
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), fmt)


def query_panels(prometheus: str, dashboard: dict[str, Any], start: float, end: float,
                 step: float = STEP_S) -> list[dict[str, Any]]:
    """Each timeseries panel with its series over [start, end]: title, unit, gridPos and, per
    target, the expanded query and its series {legend, labels, points [[t - start, value]]}."""
    out = []
    for panel in panels(dashboard):
        if panel.get("type") != "timeseries":
            continue
        targets = []
        for target in panel.get("targets", []):
            query = expand(target["expr"])
            answer = requests.get(f"{prometheus}/api/v1/query_range", timeout=60,
                                  params={"query": query, "start": start, "end": end, "step": step}).json()
            if answer.get("status") != "success":
                raise DashboardError(f"Prometheus refused panel {panel['title']!r}: {answer.get('error')} ({query})")
            series = []
            for s in answer["data"]["result"]:
                points = [[round(float(t) - start, 1), float(v)] for t, v in s["values"] if v not in ("NaN", "+Inf", "-Inf")]
                if points:
                    series.append({"legend": legend(target.get("legendFormat"), s["metric"]), "labels": s["metric"],
                                   "points": [[t, float(f"{v:.4g}")] for t, v in points]})
            targets.append({"query": query, "series": series})
        out.append({"title": panel["title"], "unit": panel.get("fieldConfig", {}).get("defaults", {}).get("unit"),
                    "gridPos": panel["gridPos"], "targets": targets})
    return out


# --- drawing ----------------------------------------------------------------------------------

LEGEND_MAX = 8


def blank_handle():
    from matplotlib.lines import Line2D

    return Line2D([], [], linestyle="none")


UNITS = {  # Grafana unit -> (factor, axis label)
    "s": (1.0, "s"), "ms": (1.0, "ms"), "reqps": (1.0, "req/s"), "percentunit": (100.0, "%"),
    "percent": (1.0, "%"), "short": (1.0, ""),
}


def draw(drawn: list[dict[str, Any]], dashboard: dict[str, Any], title: str):
    """A matplotlib Figure of the panels (query_panels' output) at the dashboard's gridPos: 24
    columns; rows (the dashboard's row panels) as headings."""
    from matplotlib.figure import Figure

    rows = [p for p in panels(dashboard) if p.get("type") == "row"]
    bottom = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in [*drawn, *rows])
    unit_h, top = 0.3, 0.7  # inches per grid unit, above the grid for the title
    height = bottom * unit_h + top
    fig = Figure(figsize=(18, height), facecolor="#111217")

    def box(pos):  # gridPos -> figure fraction [left, bottom, width, height]
        return (pos["x"] / 24, 1 - (top + (pos["y"] + pos["h"]) * unit_h) / height, pos["w"] / 24,
                pos["h"] * unit_h / height)

    fig.text(0.01, 1 - 0.3 / height, title + " (x: seconds)", color="white", fontsize=12, va="center")
    for row in rows:
        left, low, _, h = box(row["gridPos"])
        fig.text(left + 0.005, low + h / 2, row["title"], color="#d8d9da", fontsize=12, weight="bold", va="center")
    for panel in drawn:
        left, low, width, h = box(panel["gridPos"])
        ax = fig.add_axes((left + 0.035, low + 0.22 * h, width - 0.045, 0.66 * h), facecolor="#181b1f")
        factor, label = UNITS.get(panel["unit"] or "short", (1.0, panel["unit"]))
        series = [s for t in panel["targets"] for s in t["series"]]
        if panel["unit"] == "s" and series and max(v for s in series for _, v in s["points"]) < 1:
            factor, label = 1000.0, "ms"
        for s in series:
            ts, vs = zip(*s["points"])
            ax.plot(ts, [v * factor for v in vs], linewidth=1.2, label=s["legend"])
        ax.set_title(panel["title"], color="#d8d9da", fontsize=9, loc="left")
        ax.set_ylabel(label, color="#8e8e8e", fontsize=7)
        ax.tick_params(colors="#8e8e8e", labelsize=7)
        for spine in ax.spines.values():
            spine.set_color("#2c3235")
        ax.grid(color="#2c3235", linewidth=0.5)
        if series:  # at most LEGEND_MAX entries under the plot, as many as fit the panel's foot
            handles, labels = ax.get_legend_handles_labels()
            if len(handles) > LEGEND_MAX:
                handles, labels = handles[:LEGEND_MAX - 1], labels[:LEGEND_MAX - 1] + [f"+{len(labels) - LEGEND_MAX + 1} more"]
                handles.append(blank_handle())
            ax.legend(handles, [label[:32] for label in labels], fontsize=5.5, loc="upper left",
                      bbox_to_anchor=(0, -0.12), ncol=4, frameon=False, labelcolor="#c7d0d9", handlelength=1.2)
        else:
            ax.text(0.5, 0.5, "No data", transform=ax.transAxes, color="#8e8e8e", ha="center", va="center")
    return fig


# --- the run ----------------------------------------------------------------------------------

class Traffic(threading.Thread):
    """Requests from one client, round-robin over the endpoints it is given (more can be added
    while it runs), until stopped; every INVALID_EVERY-th is invalid. Counts answers by endpoint
    and status."""

    def __init__(self, base: str, counts: Counter, lock: threading.Lock, pause_s: float = 0.05):
        super().__init__(daemon=True)
        self.base, self.counts, self.lock, self.pause_s = base, counts, lock, pause_s
        self.endpoints: list[tuple[str, dict, dict]] = []  # (path, valid body, invalid body)
        self.stop = threading.Event()

    def run(self):
        session = requests.Session()
        for i in itertools.count():
            if self.stop.is_set():
                return
            if not self.endpoints:
                time.sleep(0.1)
                continue
            path, valid, invalid = self.endpoints[i % len(self.endpoints)]
            body = invalid if i % INVALID_EVERY == INVALID_EVERY - 1 else valid
            try:
                status = str(session.post(self.base + path, json=body, timeout=60).status_code)
            except requests.RequestException as err:
                status = type(err).__name__
            with self.lock:
                self.counts[f"{path} {status}"] += 1
            time.sleep(self.pause_s)


def start_prometheus(binary: str, targets: list[str], folder: Path, port: int) -> subprocess.Popen:
    """Prometheus scraping `targets` (host:port of the nodes' metrics exports) every SCRAPE_S;
    its data in `folder`."""
    config = folder / "prometheus.yml"
    config.write_text(yaml.safe_dump({
        "global": {"scrape_interval": f"{SCRAPE_S}s", "evaluation_interval": f"{SCRAPE_S}s"},
        "scrape_configs": [{"job_name": "ray", "static_configs": [{"targets": targets}]}]}))
    log = open(folder / "prometheus.log", "w")
    proc = subprocess.Popen([binary, f"--config.file={config}", f"--storage.tsdb.path={folder / 'data'}",
                             f"--web.listen-address=127.0.0.1:{port}"], stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while True:
        try:
            if requests.get(f"http://127.0.0.1:{port}/-/ready", timeout=2).status_code == 200:
                return proc
        except requests.RequestException:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise DashboardError(f"Prometheus did not start; its log: {folder / 'prometheus.log'}")
        time.sleep(0.5)


def genray(args: list[str], log: Callable[[str], None], folder: Path) -> None:
    """Run a genray command as a user would (its output in folder/<command>.log)."""
    out = folder / f"{args[0]}.log"
    log(f"genray {' '.join(args)}")
    with open(out, "a") as f:
        done = subprocess.run([sys.executable, "-m", "genray.cli", *args], stdout=f, stderr=subprocess.STDOUT,
                              cwd=folder)
    if done.returncode != 0:
        raise DashboardError(f"genray {args[0]} failed ({done.returncode}); see {out}")


def run(*, quick: bool, port: int, prometheus: str | None, log: Callable[[str], None] = print) -> tuple[dict, Any]:
    """The run, the queries and the figure: (result, Figure)."""
    import ray
    from ray import serve

    from genray.bench.serve import HEAT_BODY
    from genray.deploy import build_app
    from genray.deploy.examples import untrained_model
    from genray.deploy.heat import HeatDeployment
    from genray.train import start_local_ray

    binary = prometheus or shutil.which("prometheus")
    if binary is None:
        raise DashboardError("no `prometheus` binary on PATH: install Prometheus (Debian: apt-get install "
                             "prometheus) or name it with --prometheus PATH")
    dashboard = json.loads(DASHBOARD.read_text())
    load_at_start = os.getloadavg()[0]
    epochs, limit, trials = (2, 256, 2) if quick else (6, 1536, 4)
    folder = Path(tempfile.mkdtemp(prefix="genray-bench-dashboard-"))
    os.environ["RAY_metrics_report_interval_ms"] = str(REPORT_S * 1000)  # this Ray's processes inherit it
    from genray.bench.perf import free_port

    start_local_ray(num_cpus=6, include_dashboard=True, dashboard_port=free_port(), log_to_driver=False)
    prom = None
    traffic: list[Traffic] = []
    counts, lock = Counter(), threading.Lock()
    try:
        prom_port = free_port()
        targets = [f"{n['NodeManagerAddress']}:{n['MetricsExportPort']}" for n in ray.nodes() if n["Alive"]]
        prom = start_prometheus(binary, targets, folder, prom_port)
        address = ray.get_runtime_context().gcs_address
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        base = f"http://127.0.0.1:{port}"
        serve.run(build_app({"model": untrained_model("gan", folder)}), name="gan", route_prefix="/gan")
        serve.run(HeatDeployment.bind(), name="heat", route_prefix="/heat")
        start = time.time()
        log("apps gan and heat up; traffic starts")
        traffic = [Traffic(base, counts, lock) for _ in range(TRAFFIC_CLIENTS)]
        for client in traffic:
            client.endpoints += [("/gan/sample", {"n": 4, "seed": 0}, {"n": -1}),
                                 ("/heat/solve", HEAT_BODY, {**HEAT_BODY, "n": 1})]
            client.start()
        common = [f"data.limit={limit}", "train.quality_every=0", "train.preview_every=0"]
        train = ["train", "vae", "--address", address, "--workers", "2", "--epochs", str(epochs), "--name", "observed",
                 "--storage", str(folder / "runs"), *itertools.chain.from_iterable(("--set", s) for s in common)]
        genray(train, log, folder)
        models = folder / "models" / "vae"
        genray(["export", str(folder / "runs" / "observed"), "--to", str(models), "--alias", "production"], log, folder)
        serve.run(build_app({"model": f"{models}@production"}), name="vae", route_prefix="/vae")
        for client in traffic:
            client.endpoints.append(("/vae/sample", {"n": 4, "seed": 0}, {"n": 0}))
        log("app vae up (vae@production, v1)")
        search = ThreadPoolExecutor(1).submit(genray, *(
            ["tune", "gan", "--address", address, "--num-samples", str(trials), "--epochs", str(epochs // 2 + 1),
             "--max-concurrent", "2", "--name", "observe-search", "--storage", str(folder / "searches"),
             *itertools.chain.from_iterable(("--set", s) for s in common)], log, folder))
        time.sleep(20)
        genray(["export", str(folder / "runs" / "observed"), "--to", str(models), "--alias", "production"], log, folder)
        # What `genray status` prints mid-search, its rates read from this Prometheus.
        shown = subprocess.run([sys.executable, "-m", "genray.cli", "status", "--address", address, "--prometheus",
                                f"http://127.0.0.1:{prom_port}", "--storage", "runs", "--searches", "searches"],
                               cwd=folder, capture_output=True, text=True, timeout=120)
        status_text = shown.stdout if shown.returncode == 0 else f"failed ({shown.returncode}): {shown.stderr[-2000:]}"
        log(status_text)
        search.result()  # its error, if it failed
        time.sleep(3 * max(REPORT_S, SCRAPE_S) + 2)  # the last exports scraped
        end = time.time()
        for client in traffic:
            client.stop.set()
        log("querying Prometheus")
        drawn = query_panels(f"http://127.0.0.1:{prom_port}", dashboard, start, end)
    finally:
        for client in traffic:
            client.stop.set()
        if prom is not None:
            prom.terminate()
            prom.wait(30)
        serve.shutdown()
        ray.shutdown()
        os.environ.pop("RAY_metrics_report_interval_ms", None)
    empty = [p["title"] for p in drawn if not any(t["series"] for t in p["targets"])]
    result = {
        "machine": machine(),
        "quick": quick,
        "window_s": round(end - start, 1),
        "load_average": [round(load_at_start, 1), round(os.getloadavg()[0], 1)],  # other work slows every panel
        "report_s": REPORT_S, "scrape_s": SCRAPE_S, "rate_interval": RATE_INTERVAL, "step_s": STEP_S,
        "requests": dict(sorted(counts.items())),
        "genray_status": status_text,
        "panels": len(drawn),
        "empty_panels": empty,
        "drawn": drawn,
    }
    shutil.rmtree(folder, ignore_errors=True)
    return result, figure_of(result)


def figure_of(result: dict[str, Any]):
    """The picture of a run's result (what dashboard.json holds)."""
    title = (f"cluster/grafana/genray.json, every panel from Prometheus over a {result['window_s']:.0f} s run: "
             f"3 apps under traffic, a 2-worker run, a search")
    if "load_average" in result:
        title += f"; load average {result['load_average'][0]:.0f}-{result['load_average'][1]:.0f} on 2 cores"
    return draw(result["drawn"], json.loads(DASHBOARD.read_text()), title)


def markdown_table(result: dict[str, Any]) -> str:
    lines = [f"Dashboard from a real run ({result['window_s']:.0f} s; Ray exports every {result['report_s']} s, "
             f"Prometheus scrapes every {result['scrape_s']} s, rates over {result['rate_interval']}):",
             "", "![genray dashboard](dashboard.png)", "", "| panel | series |", "|---|---|"]
    for panel in result["drawn"]:
        lines.append(f"| {panel['title']} | {sum(len(t['series']) for t in panel['targets'])} |")
    lines += ["", "Requests sent (endpoint, status): "
              + ", ".join(f"{k}: {v}" for k, v in result["requests"].items()), ""]
    if result["empty_panels"]:  # as Grafana shows them: a ratio of errors when none was answered, say
        lines.append("Panels without data (nothing of theirs happened): " + ", ".join(result["empty_panels"]))
    lines += ["", "`genray status --prometheus` during the search:", "", "```", result["genray_status"].rstrip(), "```"]
    return "\n".join(lines) + "\n"
