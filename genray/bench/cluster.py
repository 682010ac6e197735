"""`genray bench cluster`, and the simulated cluster it (and tests/test_multinode.py) runs on:
one head and 1-CPU worker nodes on this machine (ray.cluster_utils.Cluster), each its own raylet,
that can be lost and added under running work."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from genray.bench.claims import HEADER, Claim, claim_row
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
        from ray.cluster_utils import Cluster

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
        self.cluster.shutdown()


# --- training through a node loss ---------------------------------------------------------------

# A VAE whose epochs take a few seconds on two 1-CPU workers: long enough to lose a node in the
# middle of a run, short enough to repeat.
TRAIN_ARGS = ("--set", "model.latent_dim=4", "--set", "data.limit=1024", "--set", "train.batch_size=32",
              "--set", "train.quality_every=0", "--set", "train.preview_every=0")


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
        "epochs_repeated": len(trained) - len(set(trained)),
        # Beyond one in-flight epoch per restart: the work a restart threw away that a checkpoint held.
        "extra_epochs_repeated": len(trained) - len(set(trained)) - (len(starts) - 1),
        "loss_to_step_s": min(after_loss) - lost_at if after_loss else None,
        "return_to_full_size_s": after_return[0]["first_step_at"] - added_at if after_return else None,
        "away_s": None if elastic else away_s,
        "checkpoints": [c.epoch for c in run.checkpoints()],
    }


# --- the bench ----------------------------------------------------------------------------------

ROUNDS = (0, 1, 2)  # each round loses a node under a fixed run and under an elastic one
BUDGET = {"epochs": {"fixed": 6, "elastic": 14}, "lose_after_epoch": 1, "away_s": 5.0, "workers": 2,
          "worker_nodes": 2, "node_cpus": 1, "node_death": "Ray's defaults"}
BACK_TARGET_S = 60.0
CLAIMS = {
    "fixed_extra_repeats": Claim(
        key="cluster_fixed_extra_epochs", metric="extra_epochs_repeated", target=0, direction="<=", budget=BUDGET,
        seeds=ROUNDS, every_seed=True, text="fixed run, node lost: epochs trained again beyond the one in flight"),
    "fixed_back": Claim(
        key="cluster_fixed_back_s", metric="return_to_full_size_s", target=BACK_TARGET_S, direction="<",
        budget=BUDGET, seeds=ROUNDS, every_seed=True,
        text="fixed run: seconds from a new node to the next training step, every round"),
    "elastic_extra_repeats": Claim(
        key="cluster_elastic_extra_epochs", metric="extra_epochs_repeated", target=0, direction="<=",
        budget=BUDGET, seeds=ROUNDS, every_seed=True,
        text="elastic run, node lost and back: epochs trained again beyond one in flight per restart"),
    "elastic_back": Claim(
        key="cluster_elastic_back_s", metric="loss_to_step_s", target=BACK_TARGET_S, direction="<",
        budget=BUDGET, seeds=ROUNDS, every_seed=True,
        text="elastic run: seconds from the node loss to the next training step, every round"),
}
QUICK = {"rounds": (0,), "epochs": {"fixed": 3, "elastic": 10}}


def run(storage: Path, quick: bool = False, log=print) -> dict[str, Any]:
    """Every round on one simulated cluster with Ray's own node-death timing; the runs are stored
    in `storage`, a folder on this machine that every simulated node shares (GENRAY_SHARED_STORAGE
    says so: on one machine it is true)."""
    from genray.bench import machine
    from genray.train.driver import SHARED_ENV

    storage.mkdir(parents=True, exist_ok=True)
    rounds = QUICK["rounds"] if quick else ROUNDS
    epochs = QUICK["epochs"] if quick else BUDGET["epochs"]
    stamp = time.strftime("%Y%m%d-%H%M%S")
    previous = os.environ.get(SHARED_ENV)
    os.environ[SHARED_ENV] = str(storage)  # the nodes and the drivers inherit it
    nodes = Nodes(workers=BUDGET["worker_nodes"])
    results: dict[str, list[dict[str, Any]]] = {"fixed": [], "elastic": []}
    try:
        for r in rounds:
            for kind in ("fixed", "elastic"):
                name = f"bench-cluster-{kind}-{stamp}-r{r}"
                load = os.getloadavg()[0]
                figures = node_loss_run(nodes, str(storage), name, elastic=kind == "elastic", epochs=epochs[kind],
                                        logs=storage, lose_after_epoch=BUDGET["lose_after_epoch"],
                                        away_s=BUDGET["away_s"])
                results[kind].append({"round": r, **figures, "load_average": [load, os.getloadavg()[0]]})
                log(f"bench cluster: round {r}, {kind}: back to a step {figures['loss_to_step_s']:.1f} s after the "
                    f"loss, epochs trained {figures['trained']}")
    finally:
        nodes.shutdown()
        if previous is None:
            os.environ.pop(SHARED_ENV, None)
        else:
            os.environ[SHARED_ENV] = previous
    return {"machine": machine(), "quick": quick, "budget": {**BUDGET, "epochs": epochs, "rounds": list(rounds)},
            "train": results}


def decisions(result: dict[str, Any]) -> list[dict[str, Any]]:
    """CLAIMS from the rounds' figures; a quick run, or another budget, decides nothing."""
    budget = {k: v for k, v in result["budget"].items() if k != "rounds"}
    decided = not result["quick"] and budget == BUDGET
    out = []
    for key, claim in CLAIMS.items():
        kind = key.split("_")[0]
        values = {row["round"]: row[claim.metric] for row in result["train"][kind]} if decided else {}
        out.append(claim.decide(values))
    return out


def markdown_table(result: dict[str, Any]) -> str:
    from genray.bench import machine_line

    b = result["budget"]
    lines = [
        f"A node lost under training on a simulated cluster (ray.cluster_utils: a head and {b['worker_nodes']} "
        f"worker nodes of {b['node_cpus']} CPU, {b['node_death']} for calling a node dead): a VAE on "
        f"{b['workers']} spread workers, the node with one of them killed after epoch {b['lose_after_epoch']}. "
        f"The fixed run waits for a new node ({b['away_s']:g} s later); the elastic [1, 2] run goes on with one "
        f"worker, and a node is added once it does."
        + (" Quick smoke run: decides nothing." if result["quick"] else ""),
        "",
        "| run | round | epochs trained (repeats are work lost) | workers per epoch | restarts | loss → next step | "
        "new node → step at full size |",
        "|---|---|---|---|---|---|---|",
    ]
    for kind, rows in result["train"].items():
        for row in rows:
            seconds = [("—" if row[k] is None else f"{row[k]:.1f} s") for k in ("loss_to_step_s", "return_to_full_size_s")]
            lines.append(f"| {kind} | {row['round']} | {' '.join(map(str, row['trained']))} | "
                         f"{' '.join(map(str, row['workers']))} | {row['restarts']} | {seconds[0]} | {seconds[1]} |")
    lines += ["", *HEADER, *(claim_row(d, fmt=".1f") for d in decisions(result)), "",
              machine_line(result["machine"])]
    return "\n".join(lines) + "\n"
