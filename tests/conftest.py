"""Shared fixtures. One local Ray session serves every test that needs Ray: starting Ray
costs seconds and a TorchTrainer.fit() about 25 s here, so tests share it, each run gets its
own storage folder, and trains a few steps only."""

from __future__ import annotations

import os
import socket
import tempfile

import torch

# Two threads on two shared cores make these tiny models several times slower.
torch.set_num_threads(1)

# The metrics classifier is cached in the model store: one per test session, never ./models.
os.environ.setdefault("GENRAY_STORE", tempfile.mkdtemp(prefix="genray-test-store-"))

import uuid

import leaks
import pytest

# Every process this session starts carries the mark (leaks.ray_processes tells them apart by it).
os.environ[leaks.SESSION_ENV] = uuid.uuid4().hex


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def ray_session():
    import ray

    from genray.train import start_local_ray

    # The dashboard serves Ray's state API, which Ray Train's PlacementGroupCleaner needs to see
    # that a stopped Tune trial's controller is dead and free its workers' placement group.
    # Ray's metrics agent exports every second, not every 10 s (tests/test_observe.py reads what
    # genray records); only this Ray's processes inherit the setting.
    interval = "RAY_metrics_report_interval_ms"
    ours = interval not in os.environ
    os.environ.setdefault(interval, "1000")
    try:
        start_local_ray(num_cpus=2, include_dashboard=True, dashboard_port=free_port(), log_to_driver=False)
    finally:
        if ours:
            del os.environ[interval]
    try:
        yield ray
    finally:
        from ray import serve

        try:
            serve.shutdown()
        finally:
            ray.shutdown()


@pytest.fixture(scope="session")
def serve_url(ray_session):
    """Serve's HTTP proxy on a free loopback port; apps are deleted by the tests that add them."""
    from ray import serve

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    return f"http://127.0.0.1:{port}"


@pytest.fixture(scope="session")
def trained_vae(tmp_path_factory):
    """A VAE trained for a few steps without Ray (in-process), saved as a checkpoint."""
    import torch
    from torch.utils.data import DataLoader

    from genray import checkpoint
    from genray.config import build_config
    from genray.data import load_images
    from genray.families import get_family

    torch.manual_seed(0)
    cfg = build_config("vae", overrides=["model.latent_dim=4", "data.limit=128"])
    family = get_family("vae")(cfg.model)
    train, _ = load_images(cfg.data)
    for i, batch in enumerate(DataLoader(train, batch_size=32)):
        family.train_step(batch, epoch=i / 4)
    path = tmp_path_factory.mktemp("store") / "vae"
    checkpoint.save(path, family="vae", config=cfg.to_dict(), state=family.state_dict(), epoch=0,
                    metrics={"val_neg_elbo": 300.0})
    return path


def train_in_process(cfg):
    """Train `cfg` with genray's loop in this process, without Ray (rank 0 of 1), into its run
    folder <storage>/<name> as a Ray Train run lays it out (config, history, checkpoints); returns
    the RunDir. For tests that need a family's trained run but test no Ray Train path."""
    from genray.metrics import store_root
    from genray.runs import new_run
    from genray.train.loop import LoopConfig, Session, run_loop

    cfg, run = new_run(cfg, resume=False)
    run_loop(LoopConfig(run=cfg, run_dir=run, store=str(store_root())), Session())
    return run


def restored_from(folder):
    """A Session of genray's loop in this process that is handed `folder` as its run's latest
    checkpoint, as Ray Train hands one to a resumed run's or a restarted group's workers."""
    from contextlib import contextmanager

    from genray.train.loop import Session

    class Restored(Session):
        @contextmanager
        def restored_checkpoint(self):
            yield str(folder)

    return Restored()


# --- nothing left behind -------------------------------------------------------------------

@pytest.fixture(scope="session", autouse=True)
def no_ray_process_left():
    """The suite leaves no Ray process behind: every Ray it started (the shared session, a
    `genray` subprocess's embedded Ray, a test's own head node) is gone when it ends."""
    yield
    left = leaks.processes_left(os.environ[leaks.SESSION_ENV])
    if left:
        pytest.fail("Ray processes left running after the test session:\n  " + "\n  ".join(left))


def pytest_collection_modifyitems(items):
    """The modules that query the shared apps (tests/deployed.py) run one after the other, from
    where the first of them was collected: the apps live from the first module's deploy to the
    last one's teardown, and fifteen idle replicas and their Serve controller cost the tests
    between them about a tenth of the two cores."""
    import deployed

    sharing = {item.module for item in items if getattr(item.module, "served", None) is deployed.served}
    first = next((i for i, item in enumerate(items) if item.module in sharing), len(items))
    rest = items[first:]
    items[first:] = [i for i in rest if i.module in sharing] + [i for i in rest if i.module not in sharing]
    # The simulated multi-node clusters last: whatever of theirs outlives them (Ray's record of the
    # newest cluster, moto's buckets) reaches no test of the shared session.
    items[:] = [i for i in items if not i.get_closest_marker("multinode")] + \
               [i for i in items if i.get_closest_marker("multinode")]


def shared_apps() -> set[str]:
    """Serve apps deployed on purpose for several modules (tests/deployed.py)."""
    import deployed

    return set(deployed._live.get("names", {}).values())


def check_nothing_left(before, what: str) -> None:
    left = leaks.leftovers(before, shared_apps())
    if left:
        pytest.fail(f"{what} left behind in the shared Ray session:\n  " + "\n  ".join(left))


@pytest.fixture(scope="module", autouse=True)
def nothing_left_by_the_module(request):
    """Module fixtures (apps shared by a module's tests) are gone once the module ends."""
    before = leaks.snapshot()
    yield
    import ray

    if ray.is_initialized():
        check_nothing_left(before, f"{request.module.__name__}")


@pytest.fixture(autouse=True)
def nothing_left_by_the_test(request):
    """A test on the shared Ray session ends everything it started: Train runs (controller,
    workers, placement group), Tune trials, Serve apps."""
    if "ray_session" not in request.fixturenames:
        yield
        return
    request.getfixturevalue("ray_session")
    before = leaks.snapshot()
    yield
    check_nothing_left(before, request.node.name)
