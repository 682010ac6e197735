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

import pytest


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
    start_local_ray(num_cpus=2, include_dashboard=True, dashboard_port=free_port(),
             log_to_driver=False)
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
