"""genray served across nodes: serve/vae-cluster.yaml on a simulated Ray cluster (genray.bench.cluster,
a head and three 1-CPU worker nodes), the model on the moto S3 server, two replicas on two nodes.
Under steady traffic through the head's proxy the node of one replica is lost; Serve starts its
replacement on the spare node and genray's client, with its default retries, loses no request.

As in tests/test_multinode.py the test process never connects to the cluster: Ray's CLI and small
drivers do, in subprocesses, as a user's would; the app outlives the driver that deployed it."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from conftest import free_port
from genray.bench.cluster import FAST_NODE_DEATH, Nodes
from genray.client import APIError, Client

from s3server import s3  # noqa: F401  (the module's S3 endpoint)

pytestmark = pytest.mark.multinode

REPO = Path(__file__).resolve().parents[1]
SERVE = Path(sys.executable).parent / "serve"  # Ray's CLI
MODEL = "s3://models/vae-cluster"
CONCURRENCY = 8

# Where each replica of every app runs and in what state, twice a second, as JSON lines: Serve's own
# account (the schema of its REST API's GET /api/serve/applications), read from the controller
# because the test cluster's head may have no dashboard (another Ray on the machine may hold its
# port). A node is named by the resource Nodes gives it (node0, node1, ...).
WATCH = r"""
import json, re, sys, time
import ray
from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE
from ray.serve.schema import ServeInstanceDetails

ray.init(address=sys.argv[1], log_to_driver=False, logging_level="ERROR")
controller = ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)
while True:
    names = {n["NodeID"]: next((r for r in n["Resources"] if re.fullmatch(r"node\d+", r)), "head")
             for n in ray.nodes() if n["Alive"]}
    details = ServeInstanceDetails(**ray.get(controller.get_serve_instance_details.remote()))
    replicas = [[r.state.value, names.get(r.node_id, "lost")] for app in details.applications.values()
                for deployment in app.deployments.values() for r in deployment.replicas]
    print(json.dumps({"t": time.time(), "replicas": replicas}), flush=True)
    time.sleep(0.5)
"""
SHUTDOWN = "import ray, sys; from ray import serve; ray.init(address=sys.argv[1]); serve.shutdown()"


def test_the_client_retries_what_a_proxy_answers_for_a_lost_request_and_counts_its_retries():
    """A 503 and a proxy's plain-text 500 (Serve's, for a request whose replica died) are tried
    again, the app's own JSON 500 is not; `retried` counts every try after a request's first."""
    answers = iter([(503, "application/json", b'{"error": "busy"}'),
                    (500, "text/plain", b"Internal Server Error"),
                    (200, "application/json", b'{"ok": true}'),
                    (500, "application/json", b'{"error": "internal error (RuntimeError)", "errors": []}')])

    class Answers(BaseHTTPRequestHandler):
        def do_GET(self):
            status, kind, body = next(answers)
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Answers)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        client = Client(f"http://127.0.0.1:{server.server_address[1]}", backoff=0)
        assert client.retried == 0
        assert client.healthz() and client.retried == 2
        with pytest.raises(APIError, match="internal error") as failed:
            client.healthz()
        assert failed.value.status == 500 and client.retried == 2
    finally:
        server.shutdown()
        server.server_close()
    refused = Client(f"http://127.0.0.1:{free_port()}", retries=2, backoff=0)
    with pytest.raises(APIError, match="cannot connect"):
        refused.info()
    assert refused.retried == 2


@pytest.fixture(scope="module")
def nodes(s3):  # noqa: F811
    # Three worker nodes for two replicas: a lost replica has a node to go to.
    cluster = Nodes(workers=3, system_config=FAST_NODE_DEATH)
    try:
        yield cluster
    finally:
        cluster.shutdown()


@pytest.fixture(scope="module")
def model(s3, trained_vae, tmp_path_factory):  # noqa: F811
    import shutil

    from genray.store import export

    run = tmp_path_factory.mktemp("run") / "vae"
    shutil.copytree(trained_vae, run / "checkpoint_epoch00000")
    return export(run, MODEL)


def cluster_config(folder: Path, model: str, port: int) -> Path:
    """serve/vae-cluster.yaml as it is, but for the model, HTTP port and the ports of a cluster
    whose nodes all live on this machine."""
    config = yaml.safe_load((REPO / "serve" / "vae-cluster.yaml").read_text())
    config["http_options"]["port"] = port
    config["applications"][0]["args"]["model"] = model
    # Real nodes are machines of their own; these share one machine's ports, and other Rays on it
    # may hold Serve's defaults. Every node's HAProxy binds with SO_REUSEPORT, the worker nodes'
    # on a port of their own, so that the config's port is the head's proxy alone, as on a cluster.
    config["controller_options"]["runtime_env"]["env_vars"].update({
        "SERVE_SOCKET_REUSE_PORT_ENABLED": "1",
        "RAY_SERVE_WORKER_PROXY_HTTP_PORT": str(free_port()),
        "RAY_SERVE_HAPROXY_STATS_PORT": str(free_port()),
        "RAY_SERVE_HAPROXY_METRICS_PORT": str(free_port()),
        "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT": str(free_port()),
        # Two busy cores: a proxy's ready check gets more than 3 x 5 s, and a replica stopped at the
        # end drains for 1 s, not 30 (losing a node stops nothing gracefully).
        "RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S": "60",
        "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "1",
    })
    path = folder / "vae-cluster.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


class Replicas:
    """The WATCH driver's latest report: [(state, node name), ...] of every replica."""

    def __init__(self, address: str, log: Path):
        self.latest: list[tuple[str, str]] = []
        self.process = subprocess.Popen([sys.executable, "-c", WATCH, address], stdout=subprocess.PIPE,
                                        stderr=log.open("w"), text=True)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stdout:
            if line.startswith("{"):  # Ray may print a line of its own
                self.latest = [tuple(r) for r in json.loads(line)["replicas"]]

    def running_on(self) -> list[str]:
        """The nodes of the running replicas, one entry a replica."""
        return sorted(node for state, node in self.latest if state == "RUNNING")

    def wait_for_two(self, nodes: Nodes, timeout_s: float) -> float:
        """Seconds until exactly two replicas run, on two of the nodes that are up."""
        start = time.monotonic()
        while not (len(on := self.running_on()) == len(set(on)) == 2 and set(on) <= set(nodes.workers)):
            assert self.process.poll() is None, "the watching driver ended"
            assert time.monotonic() - start < timeout_s, f"not 2 running replicas after {timeout_s} s: {self.latest}"
            time.sleep(0.2)
        return time.monotonic() - start

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait()


class Traffic:
    """CONCURRENCY threads, each sampling in a loop through its own genray Client (default
    retries): how many requests were sent, failed after the client's retries, and retried."""

    def __init__(self, url: str):
        self.url, self.sent, self.retried, self.failures = url, 0, 0, []
        self.lock, self.stopping = threading.Lock(), threading.Event()
        self.threads = [threading.Thread(target=self._send, args=(i,), daemon=True) for i in range(CONCURRENCY)]
        for thread in self.threads:
            thread.start()

    def _send(self, seed: int) -> None:
        client = Client(self.url)
        while not self.stopping.is_set():
            try:
                shape = client.sample(n=2, seed=seed).shape
                failure = None if shape == (2, 28, 28) else (time.time(), f"images of shape {shape}")
            except APIError as err:
                failure = (time.time(), str(err))
            with self.lock:
                self.sent += 1
                self.failures += [failure] if failure else []
        with self.lock:
            self.retried += client.retried

    def stop(self) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join()


def test_losing_the_node_of_a_replica_under_traffic_loses_no_request(nodes, model, tmp_path, record_property):
    port = free_port()
    config = cluster_config(tmp_path, model, port)
    started = time.monotonic()
    # `serve run --non-blocking` submits the config to the cluster and exits (Ray's `serve deploy`
    # does the same through the head's dashboard); the app lives on in the cluster.
    deploy = subprocess.run([str(SERVE), "run", str(config), "--address", nodes.address, "--non-blocking"],
                            capture_output=True, text=True, timeout=180)
    assert deploy.returncode == 0, deploy.stdout[-3000:] + deploy.stderr[-3000:]
    deploy_s = time.monotonic() - started
    replicas = Replicas(nodes.address, tmp_path / "watch.log")
    traffic = None
    try:
        ready_s = replicas.wait_for_two(nodes, timeout_s=180)
        traffic = Traffic(f"http://127.0.0.1:{port}/vae")
        while traffic.sent < 4 * CONCURRENCY:  # traffic flows before the loss
            assert not traffic.failures, traffic.failures
            time.sleep(0.1)

        lost = replicas.running_on()[0]
        lost_at = time.time()
        nodes.remove(lost)
        recovery_s = replicas.wait_for_two(nodes, timeout_s=90)  # `lost` is no longer one of nodes.workers
        time.sleep(2)  # under traffic while the proxies take the new replica in
        traffic.stop()

        figures = {"sent": traffic.sent, "failed": len(traffic.failures), "retried": traffic.retried,
                   "deploy_s": round(deploy_s, 1), "ready_s": round(ready_s, 1), "recovery_s": round(recovery_s, 1),
                   "lost": lost, "replicas_on": replicas.running_on()}
        for key, value in figures.items():
            record_property(key, value)
        print(f"\nserve across nodes: {figures}")
        assert traffic.sent > 8 * CONCURRENCY, figures
        assert traffic.failures == [], f"{figures}: {[(round(t - lost_at, 1), e) for t, e in traffic.failures[:5]]}"
    finally:
        if traffic is not None:
            traffic.stopping.set()
        replicas.stop()
        shutdown = subprocess.run([sys.executable, "-c", SHUTDOWN, nodes.address], capture_output=True, text=True,
                                  timeout=120)
    assert shutdown.returncode == 0, shutdown.stderr[-3000:]
