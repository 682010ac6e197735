"""Failures that must not cost a run or an endpoint: a killed Train worker, a killed driver
resumed with --resume, a corrupted latest checkpoint passed over on resume, a killed Serve
replica under traffic."""

import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import requests

from genray.config import build_config
from genray.runs import read_history
from genray.train import fit

FAST = ["data.limit=512", "train.quality_every=0", "train.preview_every=0", "train.workers=1"]


def alive_actors(class_name: str) -> list:
    import ray
    from ray.util.state import list_actors

    # This session's own cluster: other Ray instances may run on the same machine.
    return list_actors(address=ray.get_runtime_context().gcs_address,
                       filters=[("class_name", "=", class_name), ("state", "=", "ALIVE")],
                       raise_on_missing_output=False)


def wait_for(condition, timeout: float, what: str, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out after {timeout:.0f} s waiting for {what}"
        time.sleep(interval)


def epochs_of(run_dir) -> list[int]:
    return [r["epoch"] for r in read_history(run_dir)]


@pytest.mark.ray
def test_a_killed_train_worker_costs_no_epoch(ray_session, tmp_path):
    cfg = build_config("vae", overrides=FAST + ["train.epochs=6", "train.max_failures=2", f"storage={tmp_path}",
                                                "name=w"])
    outcome = {}
    runner = threading.Thread(target=lambda: outcome.setdefault("summary", fit(cfg, verbose=False)))
    runner.start()
    run_dir = tmp_path / "w"
    wait_for(lambda: len(epochs_of(run_dir)) >= 2, 240, "two epochs")
    [worker] = wait_for(lambda: alive_actors("RayTrainWorker"), 30, "the Train worker")
    os.kill(worker.pid, signal.SIGKILL)
    wait_for(lambda: any(a.pid != worker.pid for a in alive_actors("RayTrainWorker")), 120,
             "Train to start a new worker group")
    runner.join(timeout=400)
    assert not runner.is_alive() and "summary" in outcome, "the run did not finish after the worker died"
    assert epochs_of(run_dir) == list(range(6)), "an epoch was lost or counted twice"


@pytest.mark.ray
def test_a_killed_driver_resumes_where_it_stopped_and_past_a_corrupted_checkpoint(ray_session, tmp_path):
    from typer.testing import CliRunner

    from genray import checkpoint
    from genray.cli import app
    from genray.runs import load_run_config

    # Every checkpoint kept, so that the one before the latest is there to fall back to.
    fixed = [arg for o in FAST + ["train.epochs=5", "train.keep_checkpoints=5"] for arg in ("--set", o)]
    driver = subprocess.Popen(
        [sys.executable, "-m", "genray.cli", "train", "vae", "--name", "d", "--storage", str(tmp_path),
         "--address", ray_session.get_runtime_context().gcs_address, *fixed],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: len(epochs_of(tmp_path / "d")) >= 2 or driver.poll() is not None, 300, "two epochs")
        assert driver.poll() is None, "the run ended before it could be killed"
    finally:
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait()
    done_before = epochs_of(tmp_path / "d")
    assert 2 <= len(done_before) < 5
    out = CliRunner().invoke(app, ["train", "--resume", "d", "--storage", str(tmp_path)])
    assert out.exit_code == 0, out.output
    assert epochs_of(tmp_path / "d") == list(range(5)), "an epoch was lost or counted twice"

    # The finished run's latest checkpoint, truncated as by a write cut short: a resume for one
    # more epoch starts from the checkpoint before it.
    latest = tmp_path / "d" / "checkpoint_epoch00004"
    weights = latest / "weights.pt"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(checkpoint.CheckpointError, match="weights.pt"):
        checkpoint.load(latest)
    summary = fit(load_run_config("d", str(tmp_path), ["train.epochs=6"]), resume=True, verbose=False)
    assert epochs_of(tmp_path / "d") == list(range(6)), "epoch 4 is trained again from epoch 3's checkpoint"
    assert summary.metrics["epoch"] == 5


@pytest.mark.ray
def test_serve_replaces_a_killed_replica_under_traffic(serve_url):
    from ray import serve

    from genray.deploy.heat import HeatDeployment

    serve.run(HeatDeployment.options(num_replicas=2, ray_actor_options={"num_cpus": 0}).bind(),
              name="sturdy", route_prefix="/sturdy")
    url, body = f"{serve_url}/sturdy/solve", {"n": 16, "dt": 0.01, "t_end": 0.02, "format": "probe",
                                              "points": [[0.5, 0.5]]}
    log: list[tuple[float, bool]] = []
    stop = threading.Event()

    def traffic():
        with requests.Session() as session:
            while not stop.is_set():
                try:
                    ok = session.post(url, json=body, timeout=30).status_code == 200
                except requests.RequestException:
                    ok = False
                log.append((time.monotonic(), ok))

    sender = threading.Thread(target=traffic)
    try:
        sender.start()
        wait_for(lambda: sum(ok for _, ok in log) >= 20, 60, "steady traffic")
        replicas = alive_actors("ServeReplica:sturdy:HeatDeployment")
        assert len(replicas) == 2
        killed_at = time.monotonic()
        os.kill(replicas[0].pid, signal.SIGKILL)
        wait_for(lambda: len(alive_actors("ServeReplica:sturdy:HeatDeployment")) == 2
                 and replicas[0].actor_id not in {a.actor_id for a in alive_actors("ServeReplica:sturdy:HeatDeployment")},
                 90, "Serve to replace the replica", interval=1.0)
        replaced_s = time.monotonic() - killed_at
        wait_for(lambda: sum(ok for t, ok in log if t > killed_at + replaced_s) >= 20, 60, "traffic after")
    finally:
        stop.set()
        sender.join()
        serve.delete("sturdy")
    after = [ok for t, ok in log if t > killed_at]
    failed = after.count(False)
    print(f"replica killed: replaced in {replaced_s:.1f} s; {failed} of {len(after)} requests failed meanwhile")
    assert log[-1][1] and all(ok for t, ok in log if t < killed_at)
    assert failed <= 5, f"{failed} requests failed with a second replica up"
