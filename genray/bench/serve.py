"""`genray bench serve`: a bounded load test of real Serve deployments on loopback.

For each endpoint, after a warm-up: `requests` requests from `concurrency` client threads (one
keep-alive session each), as fast as answers come back. Reported: errors (any non-200 or
exception), throughput, and p50/p99 latency. Endpoints:

    gan/sample   one seeded 28x28 sample per request (a GAN checkpoint: --gan, or freshly
                 initialised weights, which cost the same to run)
    heat/solve   a small heat problem (n=32, 5 steps), one probe value back

The load generator runs in this process, on the same machine as Serve: on 2 cores it takes CPU
from the replicas, so the figures are a floor, not the capacity of a real node.
"""

from __future__ import annotations

import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

import requests

from genray.bench import machine, machine_line
from genray.bench.loadgen import summarise
from genray.deploy.examples import untrained_model

HEAT_BODY = {"n": 32, "dt": 0.01, "t_end": 0.05, "format": "probe", "points": [[0.5, 0.5]]}


def load(url: str, body: Callable[[int], dict], total: int, concurrency: int) -> dict[str, Any]:
    """`total` POSTs to `url` from `concurrency` threads; latency of each, errors counted."""
    latencies: list[float] = []
    errors: list[str] = []
    counter = iter(range(total))
    lock = threading.Lock()

    def client() -> None:
        with requests.Session() as session:
            while True:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                started = time.perf_counter()
                try:
                    response = session.post(url, json=body(i), timeout=120)
                    ok, what = response.status_code == 200, str(response.status_code)
                except requests.RequestException as err:
                    ok, what = False, type(err).__name__
                elapsed = time.perf_counter() - started
                with lock:
                    (latencies if ok else errors).append(elapsed if ok else what)

    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    return summarise(latencies, errors, total, concurrency, wall)


def run(*, total: int, concurrency: int, warmup: int, gan_model: str | None, port: int) -> dict[str, Any]:
    import ray
    from ray import serve

    from genray.deploy import build_app
    from genray.deploy.heat import HeatDeployment

    if not ray.is_initialized():
        ray.init(address="local", log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    base = f"http://127.0.0.1:{port}"
    results = {}
    with tempfile.TemporaryDirectory(prefix="genray-bench-serve-") as tmp:
        gan_path = gan_model or untrained_model("gan", Path(tmp))
        apps = {
            "gan/sample": (build_app({"model": gan_path}), "gan", lambda i: {"n": 1, "seed": i}),
            "heat/solve": (HeatDeployment.bind(), "heat", lambda i: HEAT_BODY),
        }
        for endpoint, (app, name, body) in apps.items():
            serve.run(app, name=name, route_prefix=f"/{name}")
            try:
                url = f"{base}/{endpoint}"
                load(url, body, warmup, concurrency)
                results[endpoint] = load(url, body, total, concurrency)
            finally:
                serve.delete(name)
    return {"machine": machine(), "gan_model": gan_model or "untrained weights", "warmup": warmup,
            "endpoints": results}


def markdown_table(result: dict[str, Any]) -> str:
    lines = [
        "| endpoint | requests | concurrency | errors | throughput (req/s) | p50 (ms) | p99 (ms) |",
        "|---|---|---|---|---|---|---|",
    ]
    for endpoint, r in result["endpoints"].items():
        lines.append(f"| `{endpoint}` | {r['requests']} | {r['concurrency']} | {r['errors']} | "
                     f"{r['throughput_rps']} | {r['p50_ms']} | {r['p99_ms']} |")
    lines += ["", f"One replica each, load generator on the same machine after "
                  f"{result['warmup']} warm-up requests. " + machine_line(result["machine"]), ""]
    return "\n".join(lines)
