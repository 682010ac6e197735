"""Versions on a real Serve, with the registry on moto's S3: an app that serves an alias follows
it without a restart and without a failed request under steady traffic, a canary takes its share
of the requests (sticky per client key), rollback and promotion; every answer names its version."""

import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import requests
import torch
from typer.testing import CliRunner

from genray import checkpoint, registry
from genray.cli import app
from genray.config import build_config
from genray.deploy import deployment_for
from genray.deploy.versions import CLIENT_KEY_HEADER, VERSION_HEADER
from genray.families import get_family

from s3server import s3  # noqa: F401  (the fixture)

MODEL = "s3://models/rolled"
CONFIG = build_config("vae", overrides=["model.latent_dim=2"])
Z = [[0.5, -0.25]]


def vae_run(folder: Path, seed: int) -> tuple[Path, object]:
    """A run folder with one checkpoint of a VAE's initial weights from `seed`, and the family."""
    torch.manual_seed(seed)
    family = get_family("vae")(CONFIG.model)
    checkpoint.save(folder / "checkpoint_epoch00000", family="vae", config=CONFIG.to_dict(), state=family.state_dict(),
                    epoch=0, metrics={"val_neg_elbo": 100.0 + seed})
    family.eval()
    return folder, family


def decoded(family) -> np.ndarray:
    with torch.inference_mode():
        return family.decode(torch.tensor(Z))[:, 0].numpy()  # (1, 28, 28)


@pytest.fixture(scope="module")
def rolled(s3, ray_session, serve_url, tmp_path_factory):
    """Versions 1 and 2 of MODEL, production -> 1, served by alias as app `rolled` (one replica
    that reads the registry every 0.2 s)."""
    from ray import serve

    families = {}
    for seed in (1, 2):
        folder, families[seed] = vae_run(tmp_path_factory.mktemp(f"run{seed}"), seed)
        assert registry.publish(folder, MODEL).number == seed
    registry.Model(MODEL).set_alias("production", 1)
    deployment, ref = deployment_for(f"{MODEL}@production")
    assert ref == f"{MODEL}@production"
    env = {**s3, "GENRAY_WATCH_S": "0.2"}
    serve.run(deployment.options(ray_actor_options={"num_cpus": 0, "runtime_env": {"env_vars": env}}).bind(ref),
              name="rolled", route_prefix="/rolled")
    try:
        yield f"{serve_url}/rolled", families
    finally:
        serve.delete("rolled")


def answer(url: str, key: str | None = None) -> tuple[str, np.ndarray]:
    r = requests.post(f"{url}/decode", json={"z": Z, "format": "list"}, timeout=30,
                      headers={CLIENT_KEY_HEADER: key} if key else {})
    r.raise_for_status()
    return r.headers[VERSION_HEADER], np.array(r.json()["images"], dtype=np.float32)


def wait_until(condition, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


@pytest.mark.ray
def test_an_alias_move_is_followed_in_place_with_no_failed_request(rolled):
    url, families = rolled
    info = requests.get(f"{url}/", timeout=30).json()
    assert info["model"] == f"{MODEL}@production" and info["version"] == "rolled@1" and "canary" not in info
    version, images = answer(url)
    assert version == "rolled@1"
    np.testing.assert_allclose(images, decoded(families[1]), atol=1e-6)

    # Steady traffic at concurrency 8 while the alias moves to version 2.
    seen: list[tuple[float, str]] = []
    failures: list[str] = []
    stop = threading.Event()

    def client() -> None:
        while not stop.is_set():
            try:
                seen.append((time.monotonic(), answer(url)[0]))
            except Exception as err:  # every failure counts, whatever it is
                failures.append(repr(err))

    threads = [threading.Thread(target=client) for _ in range(8)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    result = CliRunner().invoke(app, ["models", "alias", MODEL, "production", "2"])
    assert result.exit_code == 0, result.output
    moved = time.monotonic()
    wait_until(lambda: any(t > moved and v == "rolled@2" for t, v in seen))
    time.sleep(1.0)
    stop.set()
    for t in threads:
        t.join()
    assert failures == []
    versions = [v for _, v in sorted(seen)]
    assert versions[0] == "rolled@1" and versions[-1] == "rolled@2" and set(versions) == {"rolled@1", "rolled@2"}
    first_new = versions.index("rolled@2")
    assert versions[first_new:].count("rolled@1") <= 8  # at most the requests already in flight at the swap
    version, images = answer(url)
    assert version == "rolled@2"
    np.testing.assert_allclose(images, decoded(families[2]), atol=1e-6)
    assert requests.get(f"{url}/", timeout=30).json()["version"] == "rolled@2"


@pytest.mark.ray
def test_a_canary_takes_its_share_sticks_to_client_keys_and_rolls_back_or_is_promoted(rolled):
    url, families = rolled
    runner = CliRunner()
    registry.Model(MODEL).set_alias("production", 2)
    base = ["--url", url.rsplit("/", 1)[0], "--wait", "30"]
    result = runner.invoke(app, ["rollout", "rolled", "--to", "1", "--canary", "10", *base])
    assert result.exit_code == 0, result.output
    assert "canary rolled@1 takes 10% of rolled's requests" in result.output
    info = requests.get(f"{url}/", timeout=30).json()
    assert info["version"] == "rolled@2" and info["canary"] == {"version": "rolled@1", "percent": 10.0}

    counts = Counter(answer(url)[0] for _ in range(1000))
    assert counts.keys() == {"rolled@1", "rolled@2"}
    assert abs(counts["rolled@1"] / 1000 - 0.10) <= 0.03, counts
    # A client that sends a key stays with one version; over many keys the share holds too.
    for key in ("alice", "bob", "carol"):
        assert len({answer(url, key)[0] for _ in range(10)}) == 1
    by_key = Counter(answer(url, f"user-{i}")[0] for i in range(300))
    assert abs(by_key["rolled@1"] / 300 - 0.10) <= 0.05, by_key
    # Each version answers with its own weights.
    for _ in range(40):
        version, images = answer(url)
        np.testing.assert_allclose(images, decoded(families[int(version[-1])]), atol=1e-6)

    result = runner.invoke(app, ["rollout", "rolled", "--rollback", *base])
    assert result.exit_code == 0, result.output
    assert {answer(url)[0] for _ in range(50)} == {"rolled@2"}

    assert runner.invoke(app, ["rollout", "rolled", "--to", "1", "--canary", "50", *base]).exit_code == 0
    result = runner.invoke(app, ["rollout", "rolled", "--promote", *base])
    assert result.exit_code == 0 and "promoted rolled@1" in result.output, result.output
    assert registry.Model(MODEL).alias_version("production") == 1
    assert {answer(url)[0] for _ in range(50)} == {"rolled@1"}
    # With no rollout under way, a rollback moves the alias back to where it was.
    result = runner.invoke(app, ["rollout", "rolled", "--rollback", *base])
    assert result.exit_code == 0 and "rolled@2" in result.output, result.output
    assert {answer(url)[0] for _ in range(50)} == {"rolled@2"}


@pytest.mark.ray
def test_rollout_refusals_name_what_is_wrong(rolled):
    url, _ = rolled
    runner = CliRunner()
    base = ["--url", url.rsplit("/", 1)[0], "--wait", "0"]
    cases = [
        (["rollout", "rolled", "--promote", "--rollback", *base], "give one of --to VERSION"),
        (["rollout", "rolled", "--canary", "10", *base], "--canary goes with --to VERSION"),
        (["rollout", "rolled", "--to", "9", "--canary", "10", *base], "has no version 9"),
        (["rollout", "rolled", "--to", "2", "--canary", "10", *base], "already points at version 2"),
        (["rollout", "rolled", "--to", "1", "--canary", "0", *base], "more than 0 and at most 100 percent"),
        (["rollout", "rolled", "--to", "1", "--canary", "10", "--model", f"{MODEL}@3", *base], "a rollout moves an alias"),
        (["rollout", "rolled", "--promote", *base], "no rollout under way"),
    ]
    registry.Model(MODEL).set_alias("production", 2)
    for args, message in cases:
        result = runner.invoke(app, args)
        assert result.exit_code == 2 and message in result.output, (args, result.output)
    registry.Model(MODEL).start_rollout("production", 1, 10)
    with pytest.raises(registry.RegistryError, match="is the canary of a rollout on production"):
        registry.Model(MODEL).delete(1)
    registry.Model(MODEL).rollback("production")
