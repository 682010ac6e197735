"""`genray bench cluster`, and the simulated cluster it (and tests/test_multinode.py) runs on:
one head and 1-CPU worker nodes on this machine (ray.cluster_utils.Cluster), each its own raylet,
that can be lost and added under running work."""

from __future__ import annotations


# Ray calls a node dead after health_check_failure_threshold missed checks, one every
# health_check_period_ms (5 x 3 s by default); until then its CPUs still count, and an elastic run
# asks for them. The tests' cluster notices a lost node within ~3 s so that they stay short;
# `genray bench cluster` measures with Ray's defaults.
FAST_NODE_DEATH = {"health_check_period_ms": 1000, "health_check_failure_threshold": 3}


class Nodes:
    """The cluster: a head with no CPUs (drivers and Train controllers live there, never
    workers) and 1-CPU worker nodes named node0, node1, ..."""

    def __init__(self, workers: int, system_config: dict | None = None):
        from ray.cluster_utils import Cluster

        self.cluster = Cluster(initialize_head=True, connect=False,
                               head_node_args={"num_cpus": 0, "resources": {"head": 1},
                                               **({"_system_config": system_config} if system_config else {})})
        self.added = 0
        self.workers = {}
        for _ in range(workers):
            self.add()
        self.cluster.wait_for_nodes()

    @property
    def address(self) -> str:
        return self.cluster.address

    def add(self) -> str:
        name = f"node{self.added}"
        self.added += 1
        self.workers[name] = self.cluster.add_node(num_cpus=1, resources={name: 1})
        return name

    def remove(self, name: str) -> None:
        """The node goes away as a reclaimed machine does: its raylet and every process on it die."""
        self.cluster.remove_node(self.workers.pop(name), allow_graceful=False)

    def shutdown(self) -> None:
        self.cluster.shutdown()
