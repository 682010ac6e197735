"""`genray bench cluster`, and the simulated cluster it (and tests/test_multinode.py) runs on:
one head and 1-CPU worker nodes on this machine (ray.cluster_utils.Cluster), each its own raylet,
that can be lost and added under running work."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import yaml

from genray.bench.claims import HEADER, Claim, claim_row
from genray.client import APIError, Client
from genray.runs import RunDir

# Ray calls a node dead after health_check_failure_threshold missed checks, one every
# health_check_period_ms (5 x 3 s by default); until then its CPUs still count, and an elastic run
# asks for them. The tests' cluster notices a lost node within ~3 s so that they stay short;
# `genray bench cluster` measures with Ray's defaults.
FAST_NODE_DEATH = {"health_check_period_ms": 1000, "health_check_failure_threshold": 3}


class Nodes:
    """The cluster: a head with no CPUs (drivers and Train controllers live there, never
    workers) and 1-CPU worker nodes named node0, node1, ..."""

    def __init__(self, workers: int, system_config: dict | None = None, head_options: dict | None = None):
        """`head_options`: more of ray.cluster_utils.Cluster's head_node_args (the dashboard and its
        ports, say). Without include_dashboard the head starts none."""
        from ray._common.utils import get_ray_address_file
        from ray.cluster_utils import Cluster

        # Ray records the newest cluster started on this machine in a file that `address="auto"`
        # follows, Ray Train's placement-group cleaner too: the Ray that was there before gets it back.
        self.address_file = Path(get_ray_address_file(None))
        self.previous_address = self.address_file.read_text() if self.address_file.exists() else None
        head = {"num_cpus": 0, "resources": {"head": 1}, "include_dashboard": False, **(head_options or {})}
        if system_config:
            head["_system_config"] = system_config
        self.cluster = Cluster(initialize_head=True, connect=False, head_node_args=head)
        self.added = 0
        self.workers = {}
        try:
            for _ in range(workers):
                self.add()
            self.cluster.wait_for_nodes()
        except BaseException:
            self.shutdown()  # a node that did not start leaves no process behind
            raise

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
        try:
            self.cluster.shutdown()
        finally:
            if self.previous_address is None:
                self.address_file.unlink(missing_ok=True)
            else:
                self.address_file.write_text(self.previous_address)

    def __enter__(self) -> Nodes:
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()


# --- training through a node loss ---------------------------------------------------------------

# A VAE whose epochs take a few seconds on two 1-CPU workers: long enough to lose a node in the
# middle of a run, short enough to repeat.
TRAIN_ARGS = ("--set", "model.latent_dim=4", "--set", "data.limit=1024", "--set", "train.batch_size=32",
              "--set", "train.quality_every=0", "--set", "train.preview_every=0")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class BenchError(RuntimeError):
    """A run on the simulated cluster did not go as the scenario needs (it ended early, took too long)."""


def genray(nodes: Nodes, args: Sequence[str], log: Path) -> subprocess.Popen:
    """A `genray` command joining the cluster as a user's driver would; its output goes to `log`.
    Train's controller collects reports every 0.5 s (genray's own default elsewhere is 0.2 s)."""
    return subprocess.Popen([sys.executable, "-m", "genray.cli", *args, "--address", nodes.address],
                            stdout=log.open("w"), stderr=subprocess.STDOUT,
                            env={**os.environ, "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5"})


def wait_until(done: Callable[[], Any], driver: subprocess.Popen, what: str, timeout_s: float = 300) -> Any:
    """Poll `done` every half second until it returns something true; the driver must keep running."""
    deadline = time.monotonic() + timeout_s
    while not (value := done()):
        if driver.poll() is not None:
            raise BenchError(f"the driver ended (rc {driver.returncode}) before {what}")
        if time.monotonic() > deadline:
            raise BenchError(f"no {what} after {timeout_s:.0f} s")
        time.sleep(0.5)
    return value


def finish(driver: subprocess.Popen, log: Path, timeout_s: float = 400) -> str:
    """The driver's output once it has ended well; BenchError (with its last lines) otherwise."""
    try:
        rc = driver.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        rc = None
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
    text = log.read_text(errors="replace")
    if rc != 0:
        raise BenchError(f"the driver {'timed out' if rc is None else f'failed (rc {rc})'}:\n{text[-3000:]}")
    return text


def trained_epochs(log: str) -> list[int]:
    """The epochs a run trained, in order, repeats included: its controller's progress lines."""
    return [int(m) - 1 for m in re.findall(r"\] epoch (\d+)/\d+ train_loss", log)]


def node_loss_run(nodes: Nodes, storage: str, name: str, *, elastic: bool, epochs: int, logs: Path,
                  lose_after_epoch: int = 1, away_s: float = 5.0) -> dict[str, Any]:
    """Train `name` (a VAE) on two workers spread over two worker nodes, fixed or elastic [1, 2];
    once epoch `lose_after_epoch` is stored, lose the node with the lowest name. A fixed run gets a
    new node `away_s` later; an elastic one once it trains on the worker that is left. The run's
    history and progress, and what the loss cost in seconds and epochs."""
    workers = "train.workers=[1,2]" if elastic else "train.workers=2"
    log = logs / f"{name}.log"
    driver = genray(nodes, ["train", "vae", "--name", name, "--storage", storage, "--epochs", str(epochs), *TRAIN_ARGS,
                            "--set", workers, "--set", "train.placement=spread", "--set", "train.elastic_resize_s=3"],
                    log)
    run = RunDir(storage, name)
    try:
        wait_until(lambda: any(r["epoch"] >= lose_after_epoch for r in run.history()), driver,
                   f"epoch {lose_after_epoch}")
        lost_at = time.time()
        nodes.remove(sorted(nodes.workers)[0])
        if elastic:  # it goes on with the worker that is left, without waiting for a new node
            wait_until(lambda: any(r["workers"] == 1 for r in run.history()), driver, "an epoch on one worker")
        else:
            time.sleep(away_s)
        added_at = time.time()
        nodes.add()
        text = finish(driver, log)
    finally:
        if driver.poll() is None:
            driver.kill()
    history = run.history()
    trained = trained_epochs(text)
    # Each start of the worker group (the first, and every restart) stores its first step's time
    # with the first epoch it trains.
    starts = [r for r in history if "first_step_at" in r]
    after_loss = [r["first_step_at"] for r in starts if r["first_step_at"] > lost_at]
    after_return = [r for r in starts if r["epoch_started_at"] > added_at and r["workers"] == 2]
    return {
        "elastic": elastic, "epochs": epochs, "lose_after_epoch": lose_after_epoch,
        "stored_epochs": [r["epoch"] for r in history], "workers": [r["workers"] for r in history],
        "nodes": [r["nodes"] for r in history], "lr_factor": [r["lr_factor"] for r in history],
        "trained": trained, "restarts": len(starts) - 1,
        # An epoch in flight at a restart never reports, so it is not in `trained`: any epoch
        # trained twice there is finished, checkpointed work that the restart threw away.
        "epochs_repeated": len(trained) - len(set(trained)),
        "loss_to_step_s": min(after_loss) - lost_at if after_loss else None,
        "return_to_full_size_s": after_return[0]["first_step_at"] - added_at if after_return else None,
        "away_s": None if elastic else away_s,
        "checkpoints": [c.epoch for c in run.checkpoints()],
    }


# --- serving through a node loss -----------------------------------------------------------------

SERVE_CONFIG = Path(__file__).resolve().parents[2] / "serve" / "vae-cluster.yaml"
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



def cluster_config(folder: Path, model: str, port: int) -> Path:
    """serve/vae-cluster.yaml as it is, but for the model, HTTP port and the ports of a cluster
    whose nodes all live on this machine."""
    config = yaml.safe_load(SERVE_CONFIG.read_text())
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
            if self.process.poll() is not None:
                raise BenchError("the driver watching the replicas ended")
            if time.monotonic() - start > timeout_s:
                raise BenchError(f"not 2 running replicas after {timeout_s} s: {self.latest}")
            time.sleep(0.2)
        return time.monotonic() - start

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait()



class Traffic:
    """CONCURRENCY threads, each sampling in a loop through its own genray Client (default
    retries): how many requests were sent, failed after the client's retries, and retried."""

    def __init__(self, url: str, concurrency: int = CONCURRENCY):
        self.url, self.sent, self.retried, self.failures = url, 0, 0, []
        self.lock, self.stopping = threading.Lock(), threading.Event()
        self.threads = [threading.Thread(target=self._send, args=(i,), daemon=True) for i in range(concurrency)]
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


def serve_node_loss(nodes: Nodes, model: str, folder: Path, recovery_timeout_s: float = 90.0) -> dict[str, Any]:
    """serve/vae-cluster.yaml serving `model` on the cluster (three worker nodes or more: two
    replicas and room for a third); under traffic at CONCURRENCY through the head's proxy, the node
    of one replica is lost. Requests sent, failed after the client's default retries, retried, and
    seconds until two replicas run again on the nodes left. The app is shut down at the end."""
    port = free_port()
    config = cluster_config(folder, model, port)
    started = time.monotonic()
    # `serve run --non-blocking` submits the config to the cluster and exits (Ray's `serve deploy`
    # does the same through the head's dashboard); the app lives on in the cluster.
    deploy = subprocess.run([str(Path(sys.executable).parent / "serve"), "run", str(config), "--address", nodes.address,
                             "--non-blocking"], capture_output=True, text=True, timeout=180)
    if deploy.returncode != 0:
        raise BenchError(f"serve run failed:\n{deploy.stdout[-3000:]}{deploy.stderr[-3000:]}")
    deploy_s = time.monotonic() - started
    replicas = Replicas(nodes.address, folder / "watch.log")
    traffic = None
    try:
        ready_s = replicas.wait_for_two(nodes, timeout_s=180)
        traffic = Traffic(f"http://127.0.0.1:{port}/vae")
        while traffic.sent < 4 * CONCURRENCY and not traffic.failures:  # traffic flows before the loss
            time.sleep(0.1)
        lost = replicas.running_on()[0]
        lost_at = time.time()
        nodes.remove(lost)
        recovery_s = replicas.wait_for_two(nodes, timeout_s=recovery_timeout_s)  # `lost` is gone from nodes.workers
        time.sleep(2)  # under traffic while the proxies take the new replica in
        traffic.stop()
    finally:
        if traffic is not None:
            traffic.stop()
        replicas.stop()
        shutdown = subprocess.run([sys.executable, "-c", SHUTDOWN, nodes.address], capture_output=True, text=True,
                                  timeout=120)
    if shutdown.returncode != 0:
        raise BenchError(f"serve shutdown failed:\n{shutdown.stderr[-3000:]}")
    return {"sent": traffic.sent, "failed": len(traffic.failures), "retried": traffic.retried,
            "failures": [(round(t - lost_at, 1), e) for t, e in traffic.failures[:5]], "concurrency": CONCURRENCY,
            "deploy_s": deploy_s, "ready_s": ready_s, "recovery_s": recovery_s, "lost": lost,
            "replicas_on": replicas.running_on()}


# --- the bench ----------------------------------------------------------------------------------

ROUNDS = (0, 1, 2)  # each round loses a node under a fixed run, an elastic run and a served app
BUDGET = {"epochs": {"fixed": 6, "elastic": 20}, "lose_after_epoch": 1, "away_s": 5.0, "workers": 2,
          "worker_nodes": 2, "serve_worker_nodes": 3, "node_cpus": 1, "node_death": "Ray's defaults",
          "concurrency": CONCURRENCY, "client": "genray.client.Client, default retries"}
BACK_TARGET_S = 60.0
CLAIMS = {
    "fixed_repeats": Claim(
        key="cluster_fixed_epochs_repeated", metric="epochs_repeated", target=0, direction="<=", budget=BUDGET,
        seeds=ROUNDS, every_seed=True, text="fixed run, node lost: finished epochs trained again (only the one in flight may be lost)"),
    "fixed_back": Claim(
        key="cluster_fixed_back_s", metric="return_to_full_size_s", target=BACK_TARGET_S, direction="<",
        budget=BUDGET, seeds=ROUNDS, every_seed=True,
        text="fixed run: seconds from a new node to the next training step, every round"),
    "elastic_repeats": Claim(
        key="cluster_elastic_epochs_repeated", metric="epochs_repeated", target=0, direction="<=",
        budget=BUDGET, seeds=ROUNDS, every_seed=True,
        text="elastic run, node lost and back: finished epochs trained again (only those in flight may be lost)"),
    "elastic_back": Claim(
        key="cluster_elastic_back_s", metric="loss_to_step_s", target=BACK_TARGET_S, direction="<",
        budget=BUDGET, seeds=ROUNDS, every_seed=True,
        text="elastic run: seconds from the node loss to the next training step, every round"),
    "serve_failed": Claim(
        key="cluster_serve_failed", metric="failed", target=0, direction="<=", budget=BUDGET, seeds=ROUNDS,
        every_seed=True, text=f"serving, a replica's node lost under traffic at concurrency {CONCURRENCY}: "
                              f"requests failed after the client's retries"),
}
QUICK = {"rounds": (0,), "epochs": {"fixed": 3, "elastic": 14}}


def run(storage: Path, quick: bool = False, log=print) -> dict[str, Any]:
    """Every round on one simulated cluster with Ray's own node-death timing: training first (the
    last fixed run's model is then served), then serving. The runs and the model are stored in
    `storage`, a folder on this machine that every simulated node shares (GENRAY_SHARED_STORAGE
    says so: on one machine it is true)."""
    from genray.bench import machine
    from genray.store import export
    from genray.train.driver import SHARED_ENV

    storage.mkdir(parents=True, exist_ok=True)
    rounds = QUICK["rounds"] if quick else ROUNDS
    epochs = QUICK["epochs"] if quick else BUDGET["epochs"]
    stamp = time.strftime("%Y%m%d-%H%M%S")
    previous = os.environ.get(SHARED_ENV)
    os.environ[SHARED_ENV] = str(storage)  # the nodes and the drivers inherit it
    results: dict[str, list[dict[str, Any]]] = {"fixed": [], "elastic": [], "serve": []}
    try:
        with Nodes(workers=BUDGET["worker_nodes"]) as nodes:
            for r in rounds:
                for kind in ("fixed", "elastic"):
                    name = f"bench-cluster-{kind}-{stamp}-r{r}"
                    load = os.getloadavg()[0]
                    figures = node_loss_run(nodes, str(storage), name, elastic=kind == "elastic",
                                            epochs=epochs[kind], logs=storage,
                                            lose_after_epoch=BUDGET["lose_after_epoch"], away_s=BUDGET["away_s"])
                    results[kind].append({"round": r, **figures, "load_average": [load, os.getloadavg()[0]]})
                    log(f"bench cluster: round {r}, {kind}: epochs trained {figures['trained']}, workers "
                        f"{figures['workers']}, loss -> step {figures['loss_to_step_s']} s")
            model = export(RunDir(str(storage), f"bench-cluster-fixed-{stamp}-r{rounds[-1]}").location,
                           storage / "models" / f"vae-{stamp}")
            for r in rounds:
                while len(nodes.workers) < BUDGET["serve_worker_nodes"]:
                    nodes.add()
                folder = storage / f"bench-cluster-serve-{stamp}-r{r}"
                folder.mkdir()
                load = os.getloadavg()[0]
                figures = serve_node_loss(nodes, str(model), folder)
                results["serve"].append({"round": r, **figures, "load_average": [load, os.getloadavg()[0]]})
                log(f"bench cluster: round {r}, serve: {figures['sent']} sent, {figures['failed']} failed, "
                    f"{figures['retried']} retried, 2 replicas again after {figures['recovery_s']:.1f} s")
    finally:
        if previous is None:
            os.environ.pop(SHARED_ENV, None)
        else:
            os.environ[SHARED_ENV] = previous
    return {"machine": machine(), "quick": quick, "budget": {**BUDGET, "epochs": epochs, "rounds": list(rounds)},
            **results}


def decisions(result: dict[str, Any]) -> list[dict[str, Any]]:
    """CLAIMS from the rounds' figures; a quick run, or another budget, decides nothing."""
    budget = {k: v for k, v in result["budget"].items() if k != "rounds"}
    decided = not result["quick"] and budget == BUDGET
    out = []
    for key, claim in CLAIMS.items():
        kind = key.split("_")[0]
        values = {row["round"]: row[claim.metric] for row in result[kind]} if decided else {}
        out.append(claim.decide(values))
    return out


def markdown_table(result: dict[str, Any]) -> str:
    from genray.bench import machine_line

    b = result["budget"]
    lines = [
        f"Nodes lost on a simulated cluster (ray.cluster_utils: a head and 1-CPU worker nodes, {b['node_death']} "
        f"for calling a node dead). Training: a VAE on {b['workers']} spread workers over {b['worker_nodes']} "
        f"nodes, one node killed after epoch {b['lose_after_epoch']}; the fixed run waits for a new node "
        f"({b['away_s']:g} s later), the elastic [1, 2] run goes on with one worker and a node is added once it "
        f"does." + (" Quick smoke run: decides nothing." if result["quick"] else ""),
        "",
        "| run | round | epochs trained and reported (a repeat is finished work lost) | workers per epoch | restarts | loss → next step | "
        "new node → step at full size |",
        "|---|---|---|---|---|---|---|",
    ]
    for kind in ("fixed", "elastic"):
        for row in result[kind]:
            seconds = [("—" if row[k] is None else f"{row[k]:.1f} s") for k in ("loss_to_step_s", "return_to_full_size_s")]
            lines.append(f"| {kind} | {row['round']} | {' '.join(map(str, row['trained']))} | "
                         f"{' '.join(map(str, row['workers']))} | {row['restarts']} | {seconds[0]} | {seconds[1]} |")
    lines += [
        "",
        f"Serving: serve/vae-cluster.yaml (2 replicas, one a node) on {b['serve_worker_nodes']} worker nodes; "
        f"{b['concurrency']} client threads ({b['client']}) sample through the head's proxy while the node of one "
        f"replica is killed.",
        "",
        "| round | requests sent | failed | retried by the client | 2 replicas running again after |",
        "|---|---|---|---|---|",
        *(f"| {row['round']} | {row['sent']} | {row['failed']} | {row['retried']} | {row['recovery_s']:.1f} s |"
          for row in result["serve"]),
        "", *HEADER, *(claim_row(d, fmt=".1f") for d in decisions(result)), "", machine_line(result["machine"]),
    ]
    return "\n".join(lines) + "\n"
