"""`genray bench serve`: a bounded load test of real Serve deployments on loopback.

For each endpoint, after a warm-up: `requests` requests from `concurrency` asyncio clients
(genray.bench.loadgen: one keep-alive connection each), as fast as answers come back. Reported: errors (any non-200 or
exception), throughput, and p50/p99 latency. Endpoints:

    gan/sample   one seeded 28x28 sample per request (a GAN checkpoint: --gan, or freshly
                 initialised weights, which cost the same to run)
    heat/solve   a small heat problem (n=32, 5 steps), one probe value back

Then model versions (genray.deploy.versions):

    multiplex    one app of MULTIPLEX_MODELS VAEs, 2 kept per replica: latency of /decode when the
                 requested model is loaded (warm) and when each request names one that is not
                 (every request loads its model: the models are named in turn), one at a time
    rollout      an app serving vae@production under `requests` at `concurrency` while the alias
                 moves to version 2, a 50% canary of version 1 starts and is promoted: the failed
                 requests (the claim of a rollout: none)

The load generator runs in this process, on the same machine as Serve: on 2 cores it takes CPU
from the replicas, so the figures are a floor, not the capacity of a real node.
"""

from __future__ import annotations

import os
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

    load_at_start = os.getloadavg()[0]  # other work on the machine slows a loopback test
    if not ray.is_initialized():
        ray.init(address="local", log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    base = f"http://127.0.0.1:{port}"
    results = {}
    try:
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
                    serve.delete(name, _blocking=False)
            results_versions = versions(base, Path(tmp), total=total, concurrency=concurrency, warmup=warmup)
    finally:
        # Each app is deleted without waiting: its replica takes seconds to stop (Serve's graceful
        # shutdown), and the next app starts meanwhile. Here run() waits until all of them are gone.
        for name in APPS:
            serve.delete(name)
    return {"machine": machine(), "gan_model": gan_model or "untrained weights", "warmup": warmup,
            "endpoints": results, **results_versions,
            "load_average": {"start": load_at_start, "end": os.getloadavg()[0]}}


APPS = ("gan", "heat", "many", "rolled")  # the apps run() adds, one at a time
MULTIPLEX_MODELS = 8
Z = {"z": [[0.1] * 8], "format": "npy"}  # one code of the default VAE's latent size


def _vae_versions(folder: Path, model: str, seeds: list[int]) -> str:
    """`model` in a registry under `folder` with one version per seed (freshly initialised VAEs)."""
    from genray import registry

    for seed in seeds:
        run = folder / f"run-{model}-{seed}"
        untrained_model("vae", run, name="checkpoint_epoch00000", seed=seed)
        registry.publish(run, folder / "models" / model, which="latest")
    return str(folder / "models" / model)


def versions(base: str, folder: Path, *, total: int, concurrency: int, warmup: int) -> dict[str, Any]:
    import threading
    import time

    import requests
    from ray import serve

    from genray import registry
    from genray.bench.loadgen import percentile
    from genray.deploy import build_app
    from genray.deploy.versions import MODEL_ID_HEADER

    for i in range(MULTIPLEX_MODELS):
        _vae_versions(folder, f"m{i}", [i])
    serve.run(build_app({"models": str(folder / "models"), "family": "vae", "max_models_per_replica": 2}),
              name="many", route_prefix="/many")
    try:
        url = f"{base}/many/decode"
        warm = load(url, Z, total=total, concurrency=1, warmup=warmup, headers={MODEL_ID_HEADER: "m0"})
        cold_ms = []
        for i in range(max(MULTIPLEX_MODELS, total // 10)):
            started = time.perf_counter()
            requests.post(url, json=Z, headers={MODEL_ID_HEADER: f"m{i % MULTIPLEX_MODELS}"}, timeout=60).raise_for_status()
            cold_ms.append(1000 * (time.perf_counter() - started))
    finally:
        serve.delete("many", _blocking=False)
    multiplex = {"models": MULTIPLEX_MODELS, "max_models_per_replica": 2, "warm": warm,
                 "cold": {"requests": len(cold_ms), "p50_ms": round(percentile(cold_ms, 50), 2),
                          "p99_ms": round(percentile(cold_ms, 99), 2)}}

    model = _vae_versions(folder, "vae", [0, 1])
    target = registry.Model(model)
    target.set_alias("production", 1)
    app = build_app({"model": f"{model}@production"})
    bound = app._bound_deployment
    serve.run(bound.options(ray_actor_options={"num_cpus": 1, "runtime_env": {"env_vars": {"GENRAY_WATCH_S": "0.2"}}})
              .bind(*bound.init_args), name="rolled", route_prefix="/rolled")
    steps: list[tuple[float, str]] = []
    out: dict[str, Any] = {}
    try:
        url = f"{base}/rolled/decode"
        load(url, Z, total=warmup or 1, concurrency=concurrency)
        loader = threading.Thread(target=lambda: out.update(load(url, Z, total=total, concurrency=concurrency)))
        started = time.perf_counter()
        loader.start()
        for at, what, step in ((0.2, "alias production -> 2", lambda: target.set_alias("production", 2)),
                               (0.45, "canary 1 at 50%", lambda: target.start_rollout("production", 1, 50)),
                               (0.7, "promote the canary", lambda: target.promote("production"))):
            while loader.is_alive() and time.perf_counter() - started < at * expected_load_s(total):
                time.sleep(0.05)
            step()
            steps.append((round(time.perf_counter() - started, 2), what))
        loader.join()
    finally:
        serve.delete("rolled", _blocking=False)
    return {"multiplex": multiplex, "rollout": {**out, "steps": steps}}


def expected_load_s(total: int) -> float:
    """Seconds a load of `total` requests is expected to last here (about 150 req/s on 2 cores),
    to spread the rollout's steps over it."""
    return max(2.0, total / 150)


def markdown_table(result: dict[str, Any]) -> str:
    lines = [
        "| endpoint | requests | concurrency | errors | throughput (req/s) | p50 (ms) | p99 (ms) |",
        "|---|---|---|---|---|---|---|",
    ]
    for endpoint, r in result["endpoints"].items():
        lines.append(f"| `{endpoint}` | {r['requests']} | {r['concurrency']} | {r['errors']} | "
                     f"{r['throughput_rps']} | {r['p50_ms']} | {r['p99_ms']} |")
    lines += ["", f"One replica each, load generator on the same machine after "
                  f"{result['warmup']} warm-up requests.", ""]
    if "multiplex" in result:
        m, r = result["multiplex"], result["rollout"]
        lines += [f"Many models in one app: {m['models']} VAEs, at most {m['max_models_per_replica']} loaded per "
                  "replica, 1 replica, /decode one request at a time.", "",
                  "| model | requests | p50 (ms) | p99 (ms) |", "|---|---|---|---|",
                  f"| loaded (warm) | {m['warm']['requests']} | {m['warm']['p50_ms']} | {m['warm']['p99_ms']} |",
                  f"| loaded by the request (cold) | {m['cold']['requests']} | {m['cold']['p50_ms']} | "
                  f"{m['cold']['p99_ms']} |", "",
                  f"A rollout under load: {r['requests']} /decode requests at concurrency {r['concurrency']} on "
                  f"vae@production while " + ", ".join(f"{what} ({at} s)" for at, what in r["steps"])
                  + f": **{r['errors']} failed** ({', '.join(r['error_kinds']) or 'none'}); "
                  f"{r['throughput_rps']} req/s, p99 {r['p99_ms']} ms.", ""]
    load = result.get("load_average")
    lines += [machine_line(result["machine"]) + (f" Load average {load['start']:.1f} at the start, {load['end']:.1f} "
                                                 "at the end." if load else ""), ""]
    return "\n".join(lines)
