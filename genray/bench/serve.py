"""`genray bench serve`: a bounded load test of real Serve deployments on loopback.

For each endpoint, after a warm-up: `requests` requests from `concurrency` asyncio clients
(genray.bench.loadgen: one keep-alive connection each), as fast as answers come back. Reported: errors (any non-200 or
exception), throughput, and p50/p99 latency. Endpoints:

    gan/sample   one seeded 28x28 sample per request (a GAN checkpoint: --gan, or freshly
                 initialised weights, which cost the same to run)
    heat/solve   a small heat problem (n=32, 5 steps), one probe value back

The load generator runs in this process, on the same machine as Serve: on 2 cores it takes CPU
from the replicas, so the figures are a floor, not the capacity of a real node.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from genray.bench import machine, machine_line
from genray.bench.loadgen import load
from genray.deploy.examples import untrained_model

HEAT_BODY = {"n": 32, "dt": 0.01, "t_end": 0.05, "format": "probe", "points": [[0.5, 0.5]]}


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
            "gan/sample": (build_app({"model": gan_path}), "gan", {"n": 1, "seed": 0}),  # seed: the request's index
            "heat/solve": (HeatDeployment.bind(), "heat", HEAT_BODY),
        }
        for endpoint, (app, name, body) in apps.items():
            serve.run(app, name=name, route_prefix=f"/{name}")
            try:
                url = f"{base}/{endpoint}"
                results[endpoint] = load(url, body, total=total, concurrency=concurrency, warmup=warmup)
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
