"""`genray submit` to a Ray cluster of several nodes: the simulated cluster of
tests/test_multinode.py (genray.bench.cluster.Nodes: a head with no CPUs, 1-CPU worker nodes),
its head started with the dashboard (the job API) and token authentication, run storage on the
moto S3 server. A 2-worker job spread over the nodes trains one model across both of them.

Ray's token authentication for nodes that this process starts (ray.cluster_utils):
RAY_AUTH_MODE=token and the token (RAY_AUTH_TOKEN) in this process's environment before the nodes
start, as each node's processes inherit it, and this process's own RayConfig and token cache
refreshed, since it talks to the head's GCS itself (Cluster waits there for its nodes)."""

from __future__ import annotations

import os
import secrets
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests
from typer.testing import CliRunner

from genray.bench.cluster import Nodes
from genray.cli import app
from genray.runs import RunDir

from conftest import free_port
from s3server import s3  # noqa: F401  (the module's S3 endpoint)

pytestmark = pytest.mark.multinode

REPO = Path(__file__).resolve().parents[1]  # the job's working folder
SMOKE = REPO / "jobs" / "smoke.yaml"
STORAGE = "s3://runs/jobs"


@contextmanager
def token_auth():
    """Token authentication for the nodes this process starts and for this process itself, until
    the block ends.

    The token is the one this process already holds when it has one (the suite's shared Ray
    session goes on sending this process's cached token to its own GCS), else a new one. Ray
    reads RAY_AUTH_MODE into its config once per process, hence the refresh on both ends."""
    from ray._private.authentication_test_utils import reset_auth_token_state
    from ray._raylet import AuthenticationTokenLoader

    token = AuthenticationTokenLoader.instance().get_raw_token(ignore_auth_mode=True) or secrets.token_hex(32)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAY_AUTH_MODE", "token")
        mp.setenv("RAY_AUTH_TOKEN", token)
        mp.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
        reset_auth_token_state()
        try:
            yield
        finally:
            mp.undo()
            reset_auth_token_state()


@pytest.fixture(scope="module")
def head(s3):  # noqa: F811  (its env, set here, reaches the job's workers through their raylets)
    """The cluster's dashboard URL: a head with the job API and token auth, two worker nodes."""
    dashboard = free_port()
    with token_auth(), pytest.MonkeyPatch.context() as mp:
        # The job's entrypoint is `python jobs/train.py ...`: this interpreter, with genray's packages.
        mp.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
        # The agent's port is free, not Ray's fixed default, which another Ray on this machine may
        # hold: the job API hands each submission to the head's agent.
        cluster = Nodes(workers=2, head_options={"include_dashboard": True, "dashboard_port": dashboard,
                                                 "dashboard_agent_listen_port": free_port()})
        try:
            yield f"http://127.0.0.1:{dashboard}"
        finally:
            cluster.shutdown()


def test_a_submitted_job_spreads_its_two_workers_over_two_nodes(head):
    assert requests.get(f"{head}/api/jobs/", timeout=10).status_code == 401  # no token: refused

    submitted = CliRunner().invoke(app, [
        "submit", str(SMOKE), "--address", head, "--working-dir", str(REPO),
        "--set", "name=spread", "--set", "workers=2", "--set", f"storage={STORAGE}",
        "--set", "config.train.placement=spread", "--set", "config.train.threads_per_worker=1"])
    assert submitted.exit_code == 0 and submitted.output.rstrip().endswith(": SUCCEEDED"), submitted.output

    epochs = RunDir(STORAGE, "spread").history()
    assert [(r["epoch"], r["workers"], r["nodes"]) for r in epochs] == [(0, 2, 2)], epochs
