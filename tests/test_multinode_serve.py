"""genray served across nodes: serve/vae-cluster.yaml on a simulated Ray cluster (genray.bench.cluster,
a head and three 1-CPU worker nodes), the model on the moto S3 server, two replicas on two nodes.
Under steady traffic through the head's proxy the node of one replica is lost; Serve starts its
replacement on the spare node and genray's client, with its default retries, loses no request.

As in tests/test_multinode.py the test process never connects to the cluster: Ray's CLI and small
drivers do, in subprocesses, as a user's would; the app outlives the driver that deployed it."""

from __future__ import annotations

import pytest

from genray.bench.cluster import CONCURRENCY, FAST_NODE_DEATH, Nodes, serve_node_loss

from s3server import s3  # noqa: F401  (the module's S3 endpoint)

pytestmark = pytest.mark.multinode

MODEL = "s3://models/vae-cluster"


@pytest.fixture(scope="module")
def nodes(s3):  # noqa: F811
    # Three worker nodes for two replicas: a lost replica has a node to go to.
    with Nodes(workers=3, system_config=FAST_NODE_DEATH) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def model(s3, trained_vae, tmp_path_factory):  # noqa: F811
    import shutil

    from genray.store import export

    run = tmp_path_factory.mktemp("run") / "vae"
    shutil.copytree(trained_vae, run / "checkpoint_epoch00000")
    return export(run, MODEL)


def test_losing_the_node_of_a_replica_under_traffic_loses_no_request(nodes, model, tmp_path, record_property):
    figures = serve_node_loss(nodes, model, tmp_path)
    for key, value in figures.items():
        record_property(key, value)
    assert figures["sent"] > 8 * CONCURRENCY, figures
    assert figures["failed"] == 0, figures  # the client's default retries cover the lost replica's requests
    # Two replicas run again, on two of the nodes left (never two on one: max_replicas_per_node).
    assert len(set(figures["replicas_on"])) == 2 and figures["lost"] not in figures["replicas_on"], figures
