"""genray across nodes: a Ray cluster of one head and worker nodes (ray.cluster_utils.Cluster,
each node its own raylet, one CPU and a resource that names it), run storage on the moto S3
server because real nodes share no disk, and drivers that join it as a user's would
(`genray train --address`). Worker nodes are removed under running work and added back.

The test process itself never connects to this cluster (it may hold the suite's shared
session); it starts and stops nodes and reads what the runs stored."""

from __future__ import annotations

import subprocess
import sys

import pytest

from genray.bench.cluster import FAST_NODE_DEATH, TRAIN_ARGS, Nodes, finish, genray, node_loss_run, wait_until
from genray.runs import RunDir

from s3server import s3  # noqa: F401  (the module's S3 endpoint)

pytestmark = pytest.mark.multinode
STORAGE = "s3://runs/multinode"


@pytest.fixture(scope="module")
def nodes(s3):  # noqa: F811
    with Nodes(workers=2, system_config=FAST_NODE_DEATH) as cluster:
        yield cluster


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


def test_a_fixed_run_that_loses_a_node_restarts_from_its_latest_checkpoint_once_its_workers_fit(nodes, tmp_path):
    # Spread: the two workers sit on the two worker nodes and train one model over gloo. The node
    # goes once epoch 0 is stored: a restart from scratch would train epoch 0 again (a repeat),
    # one from the checkpoint trains epochs 1 and 2 only.
    run = node_loss_run(nodes, STORAGE, "fixed", elastic=False, epochs=3, lose_after_epoch=0, logs=tmp_path)
    assert run["stored_epochs"] == list(range(3))  # none lost
    assert run["workers"] == [2] * 3 and run["nodes"] == [2] * 3, run
    assert run["restarts"] == 1 and sorted(set(run["trained"])) == list(range(3))
    assert run["epochs_repeated"] == 0, run["trained"]  # only the epoch in flight (never reported) is lost
    assert run["checkpoints"][-1] == 2 and run["loss_to_step_s"] > run["away_s"]


def test_an_elastic_run_shrinks_when_a_node_is_lost_and_grows_back_when_one_returns(nodes, tmp_path):
    # Ray's autoscaling coordinator, which Train's elastic policy asks, looks at the cluster every
    # 20 s: the epochs left (1-2 s each on one worker) outlast that, so the run grows back. The node
    # goes once epoch 0 is stored, so 39 epochs leave as many for the one-worker stretch as 40
    # did with the loss after epoch 1.
    run = node_loss_run(nodes, STORAGE, "elastic", elastic=True, epochs=39, lose_after_epoch=0, logs=tmp_path)
    assert run["stored_epochs"] == list(range(39))
    sizes = run["workers"]
    first_small, last_small = sizes.index(1), len(sizes) - 1 - sizes[::-1].index(1)
    assert sizes[0] == 2 and sizes[-1] == 2 and set(sizes[first_small:last_small + 1]) == {1}, sizes
    # The learning rate follows the world size (train.scale_lr: linear): half of it on one worker.
    assert run["lr_factor"] == [w / 2 for w in sizes]
    assert run["restarts"] == 2 and run["epochs_repeated"] == 0, run["trained"]
    assert run["loss_to_step_s"] is not None and run["return_to_full_size_s"] is not None


def test_a_search_whose_trials_span_nodes_survives_losing_one(nodes, tmp_path):
    """One-worker trials train in their own process, one per 1-CPU node; a lost node takes the
    trial it hosted, which Tune starts again from its latest checkpoint, in the same run."""
    log = tmp_path / "search.log"
    driver = genray(nodes, ["tune", "vae", "--name", "search", "--storage", STORAGE, "--scheduler", "fifo",
                            "--num-samples", "2", "--max-concurrent", "2", "--epochs", "3", *TRAIN_ARGS], log)
    trials = RunDir(f"{STORAGE}/search", "train").location

    def runs() -> dict[str, list[dict]]:
        return {run.name: RunDir(trials, run.name).history() for run in trials.glob("*")}

    # Both trials have a checkpoint (epoch 0's): the lost one goes on from it, not from scratch.
    wait_until(lambda: len(started := runs()) == 2 and all(any(r["epoch"] >= 0 for r in h) for h in started.values()),
               driver, "both trials past epoch 0")
    nodes.remove(sorted(nodes.workers)[0])  # it hosts one trial: each node has room for one
    # The replacement starts while Ray notices the loss, as an autoscaler's would: the lost
    # trial has no CPU to restart on before it joins either way.
    nodes.add()
    out = finish(driver, log)

    # One run per trial (none started over), every epoch once, both trials done.
    histories = runs()
    assert len(histories) == 2, sorted(histories)
    for name, epochs in histories.items():
        assert [r["epoch"] for r in epochs] == list(range(3)), (name, epochs)
    # The results table's rows (the log lines after it may speak of a lost node's connection errors).
    table = out.split("trials by best")[-1].split("└")[0]
    assert table.count("│ done ") == 2 and "│ error " not in table, out[-3000:]
