"""What a test leaves behind in the shared Ray session, and Ray processes left on the machine.

A test that leaves a Train controller, a worker, a Tune trial, a placement group or a Serve app
alive takes CPUs from every test after it: on 2 cores the next search waits for them forever.
The fixtures in conftest.py take a snapshot before each test (and each module) and fail it when
something new is still alive after a short grace period (Ray Train's placement-group cleaner and
Serve's replica shutdown take a few seconds). Listed through Ray's state API, the same view
`ray list actors` gives.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import psutil

# Ray's own session-wide actors, started on first use and meant to outlive any one test.
SYSTEM_ACTORS = {"ServeController", "ProxyActor", "_AutoscalingCoordinatorActor", "_StatsActor"}
GRACE_S = 30.0


@dataclass
class Snapshot:
    actors: dict[str, str] = field(default_factory=dict)  # actor id -> class name
    placement_groups: set[str] = field(default_factory=set)
    apps: set[str] = field(default_factory=set)


def snapshot() -> Snapshot:
    """What is alive in the connected Ray cluster now."""
    import ray
    from ray.util.state import list_actors, list_placement_groups

    if not ray.is_initialized():
        return Snapshot()
    address = ray.get_runtime_context().gcs_address
    actors = {a.actor_id: a.class_name
              for a in list_actors(address=address, filters=[("state", "!=", "DEAD")], limit=10_000,
                                   raise_on_missing_output=False)}
    groups = {p.placement_group_id
              for p in list_placement_groups(address=address, filters=[("state", "!=", "REMOVED")],
                                             limit=10_000, raise_on_missing_output=False)}
    apps: set[str] = set()
    if "ServeController" in actors.values():
        from ray import serve

        apps = set(serve.status().applications)
    return Snapshot(actors, groups, apps)


def new_since(before: Snapshot, now: Snapshot, shared_apps: set[str]) -> list[str]:
    """Lines naming what is alive now and was not before; `shared_apps` (and their replicas)
    are apps that later tests still use on purpose."""
    lines = []
    for actor_id, name in now.actors.items():
        replica_of = name.split(":")[1] if name.startswith("ServeReplica:") else None
        if actor_id in before.actors or name in SYSTEM_ACTORS or replica_of in shared_apps:
            continue
        lines.append(f"actor {name} ({actor_id[:12]})")
    lines += [f"placement group {pg[:12]}" for pg in now.placement_groups - before.placement_groups]
    lines += [f"Serve app {app!r}" for app in sorted(now.apps - before.apps - shared_apps)]
    return lines


def leftovers(before: Snapshot, shared_apps: set[str] = frozenset(), grace_s: float = GRACE_S) -> list[str]:
    """What is still alive `grace_s` after the test that started it ended ([] once clean)."""
    deadline = time.monotonic() + grace_s
    while True:
        lines = new_since(before, snapshot(), set(shared_apps))
        if not lines or time.monotonic() > deadline:
            return lines
        time.sleep(0.5)


# Ray's processes: GCS, raylet, dashboard and its agents, and workers (`ray::Name` titles).
RAY_PROCESS_MARKS = ("gcs_server", "raylet", "ray/dashboard", "ray/_private", "default_worker.py", "ray::")
# Set by conftest for the test session; every process it starts (an embedded Ray, a `genray`
# subprocess and the Ray it starts) inherits it, which tells them from other Rays on the machine.
SESSION_ENV = "GENRAY_TEST_SESSION"


def ray_processes(session: str) -> dict[int, str]:
    """pid -> command line of every Ray process started under test session `session`."""
    found = {}
    for proc in psutil.process_iter(["pid", "cmdline"]):
        line = " ".join(proc.info["cmdline"] or [])
        if not any(mark in line for mark in RAY_PROCESS_MARKS):
            continue
        try:
            if proc.environ().get(SESSION_ENV) == session:
                found[proc.info["pid"]] = line[:160]
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def processes_left(session: str, grace_s: float = GRACE_S) -> list[str]:
    """Ray processes of the test session still running `grace_s` from now ([] once none are)."""
    deadline = time.monotonic() + grace_s
    while True:
        left = ray_processes(session)
        if not left or time.monotonic() > deadline:
            return [f"pid {pid}: {line}" for pid, line in sorted(left.items())]
        time.sleep(0.5)
