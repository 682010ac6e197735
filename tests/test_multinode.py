"""genray across nodes: a Ray cluster of one head and worker nodes (ray.cluster_utils.Cluster,
each node its own raylet, one CPU and a resource that names it), run storage on the moto S3
server because real nodes share no disk, and drivers that join it as a user's would
(`genray train --address`). Worker nodes are removed under running work and added back.

The test process itself never connects to this cluster (it may hold the suite's shared
session); it starts and stops nodes and reads what the runs stored."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from genray.bench.cluster import FAST_NODE_DEATH, Nodes
from genray.runs import RunDir

from s3server import s3  # noqa: F401  (the module's S3 endpoint)

pytestmark = pytest.mark.multinode

# A VAE whose epochs take a few seconds on two 1-CPU workers: long enough to lose a node in the
# middle of a run, short enough for the suite.
TRAIN = ["--set", "model.latent_dim=4", "--set", "data.limit=1024", "--set", "train.batch_size=32",
         "--set", "train.quality_every=0", "--set", "train.preview_every=0", "--set", "train.threads_per_worker=1"]


@pytest.fixture(scope="module")
def nodes(s3):  # noqa: F811
    cluster = Nodes(workers=2, system_config=FAST_NODE_DEATH)
    try:
        yield cluster
    finally:
        cluster.shutdown()


def train(nodes: Nodes, name: str, *args: str) -> subprocess.Popen:
    """`genray train vae` joining the cluster, stored on S3; its output goes to a log file."""
    log = open(f"/tmp/genray-multinode-{name}.log", "w")
    return subprocess.Popen(
        [sys.executable, "-m", "genray.cli", "train", "vae", "--address", nodes.address, "--name", name,
         "--storage", "s3://runs/multinode", *TRAIN, *args],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5"})


def history(name: str) -> list[dict]:
    return RunDir("s3://runs/multinode", name).history()


def wait_for_epoch(name: str, epoch: int, driver: subprocess.Popen, timeout_s: float = 240) -> None:
    deadline = time.monotonic() + timeout_s
    while not any(r["epoch"] >= epoch for r in history(name)):
        assert driver.poll() is None, f"the driver ended (rc {driver.returncode}) before epoch {epoch}"
        assert time.monotonic() < deadline, f"no epoch {epoch} after {timeout_s} s"
        time.sleep(0.5)


def finish(driver: subprocess.Popen, name: str, timeout_s: float = 300) -> str:
    try:
        rc = driver.wait(timeout=timeout_s)
    finally:
        if driver.poll() is None:
            driver.kill()
    log = open(f"/tmp/genray-multinode-{name}.log").read()
    assert rc == 0, log[-3000:]
    return log


def test_a_path_on_this_machine_is_refused_as_storage_on_a_cluster(nodes, tmp_path):
    """The other nodes' workers would write their checkpoints to their own disks: refused
    before anything starts, with what to use instead."""
    refused = subprocess.run(
        [sys.executable, "-m", "genray.cli", "train", "vae", "--address", nodes.address, "--storage", str(tmp_path),
         "--workers", "2", "--epochs", "1"], capture_output=True, text=True, timeout=120)
    assert refused.returncode != 0
    out = refused.stderr + refused.stdout
    assert f"storage {str(tmp_path)!r} is a path on this machine, and this Ray cluster has 3 nodes" in out, out
    assert "s3://" in out and "GENRAY_SHARED_STORAGE" in out and not list(tmp_path.iterdir())


def trained_epochs(log: str) -> list[int]:
    """The epochs the run trained, in order, repeats included: the controller's progress lines."""
    import re

    return [int(m) - 1 for m in re.findall(r"\] epoch (\d+)/\d+ train_loss", log)]


def test_a_fixed_run_that_loses_a_node_restarts_from_its_latest_checkpoint_once_its_workers_fit(nodes):
    # Spread: the two workers sit on the two worker nodes and train one model over gloo.
    driver = train(nodes, "fixed", "--workers", "2", "--epochs", "4", "--set", "train.placement=spread")
    wait_for_epoch("fixed", 1, driver)
    assert all(r["nodes"] == 2 for r in history("fixed"))
    lost_at = time.time()
    nodes.remove(sorted(nodes.workers)[0])
    time.sleep(8)
    assert driver.poll() is None, "the run ended instead of waiting for room for its two workers"
    nodes.add()
    log = finish(driver, "fixed")

    epochs = history("fixed")
    assert [r["epoch"] for r in epochs] == list(range(4))  # none lost
    assert all(r["workers"] == 2 and r["nodes"] == 2 for r in epochs), epochs
    trained = trained_epochs(log)
    assert sorted(set(trained)) == list(range(4))
    repeated = len(trained) - len(set(trained))
    assert repeated <= 1, f"epochs trained twice: {trained}"  # at most the one in flight
    assert any(r["epoch_started_at"] > lost_at for r in epochs)
    assert RunDir("s3://runs/multinode", "fixed").checkpoints()[-1].epoch == 3


def test_an_elastic_run_shrinks_when_a_node_is_lost_and_grows_back_when_one_returns(nodes):
    driver = train(nodes, "elastic", "--epochs", "14", "--set", "train.workers=[1,2]",
                   "--set", "train.placement=spread", "--set", "train.elastic_resize_s=3")
    wait_for_epoch("elastic", 1, driver)
    nodes.remove(sorted(nodes.workers)[0])
    # It goes on with the worker that is left, from its latest checkpoint, without waiting.
    deadline = time.monotonic() + 120
    while not any(r["workers"] == 1 for r in history("elastic")):
        assert driver.poll() is None and time.monotonic() < deadline, "no epoch on one worker"
        time.sleep(0.5)
    # Ray's autoscaling coordinator, which Train's elastic policy asks, looks at the cluster every
    # 20 s: the epochs left (about 2 s each on one worker) outlast that, so the run grows back.
    nodes.add()
    log = finish(driver, "elastic")

    epochs = history("elastic")
    assert [r["epoch"] for r in epochs] == list(range(14))
    sizes = [r["workers"] for r in epochs]
    first_small, last_small = sizes.index(1), len(sizes) - 1 - sizes[::-1].index(1)
    assert sizes[0] == 2 and sizes[-1] == 2 and set(sizes[first_small:last_small + 1]) == {1}, sizes
    # The learning rate follows the world size (train.scale_lr: linear): half of it on one worker.
    assert all(r["lr_factor"] == r["workers"] / 2 for r in epochs)
    trained = trained_epochs(log)
    assert sorted(set(trained)) == list(range(14)) and len(trained) - len(set(trained)) <= 2, trained


def test_a_search_whose_trials_span_nodes_survives_losing_one(nodes):
    """Trial drivers and their Train controllers live on the head; a lost node takes the
    workers of the trials it hosted, which restart from their runs' latest checkpoints."""
    log = open("/tmp/genray-multinode-search.log", "w")
    driver = subprocess.Popen(
        [sys.executable, "-m", "genray.cli", "tune", "vae", "--address", nodes.address, "--name", "search",
         "--storage", "s3://runs/multinode", "--scheduler", "fifo", "--num-samples", "2", "--max-concurrent", "2",
         "--epochs", "4", *TRAIN], stdout=log, stderr=subprocess.STDOUT)
    trials = RunDir("s3://runs/multinode/search", "train")

    def runs() -> dict[str, list[dict]]:
        return {run.name: RunDir(trials.location, run.name).history() for run in trials.location.glob("*")}

    deadline = time.monotonic() + 240
    while not (len(started := runs()) == 2 and all(any(r["epoch"] >= 1 for r in h) for h in started.values())):
        assert driver.poll() is None and time.monotonic() < deadline, "the trials did not both reach epoch 1"
        time.sleep(1)
    lost = sorted(nodes.workers)[0]
    nodes.remove(lost)
    time.sleep(5)
    nodes.add()
    out = finish(driver, "search")

    # One Train run per trial (none started over), every epoch once, both trials done.
    histories = runs()
    assert len(histories) == 2, sorted(histories)
    for name, epochs in histories.items():
        assert [r["epoch"] for r in epochs] == list(range(4)), (name, epochs)
    assert out.count("done") >= 2 and "error" not in out.split("trials by best")[-1], out[-3000:]
