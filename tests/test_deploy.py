"""Deployments: request validation and the math, without HTTP, and the whole path on a real
local Ray: 2 Ray Train workers -> checkpoint -> export -> Serve -> HTTP -> resume."""

import base64
import concurrent.futures
import io
from pathlib import Path

import numpy as np
import pytest
import requests
import torch
import yaml
from PIL import Image
from pydantic import ValidationError

from genray import checkpoint
from genray.deploy import build_app, resolve_model_path
from genray.deploy.common import (DecodeRequest, EncodeRequest, SampleRequest, encode_images, images_to_tensor,
                                  sample_many)

REPO = Path(__file__).resolve().parents[1]


def test_batched_sampling_matches_one_by_one(trained_vae):
    family, _ = checkpoint.load_family(trained_vae)
    together = sample_many(family, [(3, 7), (2, 8), (1, 7)])
    assert [t.shape[0] for t in together] == [3, 2, 1]
    assert torch.allclose(together[0], family.sample(3, seed=7), atol=1e-6)
    assert torch.allclose(together[1], family.sample(2, seed=8), atol=1e-6)
    assert torch.allclose(together[2], family.sample(1, seed=7), atol=1e-6)


def test_request_models_name_the_bad_field():
    assert SampleRequest(n=4).n == 4
    for body, field in [({"n": 0}, "n"), ({"n": 10_000}, "n"), ({"seed": -1}, "seed"),
                        ({"format": "jpeg"}, "format"), ({"m": 1}, "m")]:
        with pytest.raises(ValidationError) as err:
            SampleRequest.model_validate(body)
        assert err.value.errors()[0]["loc"][0] == field
    with pytest.raises(ValidationError, match="finite"):
        DecodeRequest.model_validate_json('{"z": [[NaN, 0]]}')
    with pytest.raises(ValidationError, match="28x28"):
        EncodeRequest(images=[[[0.0] * 28] * 27])
    with pytest.raises(ValidationError, match="less than or equal to 1"):
        EncodeRequest(images=[[[2.0] * 28] * 28])
    with pytest.raises(ValidationError, match="base64"):
        EncodeRequest(images=["not base64!"])


def test_images_round_trip_through_png_and_lists():
    x = torch.rand(2, 1, 28, 28)
    pngs = encode_images(x, "png")["images"]
    back = images_to_tensor(pngs)
    assert back.shape == (2, 1, 28, 28) and (back - x).abs().max() <= 0.5 / 255 + 1e-6
    lists = encode_images(x, "list")
    assert lists["shape"] == [2, 1, 28, 28]
    assert torch.allclose(images_to_tensor(lists["images"]), x)


def test_builder_errors(tmp_path):
    with pytest.raises(ValueError, match="'model'"):
        build_app({})
    with pytest.raises(ValueError, match="unknown application args"):
        build_app({"model": "x", "extra": 1})
    with pytest.raises(checkpoint.CheckpointError, match="manifest.json is missing"):
        build_app({"model": str(tmp_path)})


def test_relative_model_paths_resolve_from_genray_home(monkeypatch, tmp_path):
    monkeypatch.setenv("GENRAY_HOME", str(tmp_path))
    assert resolve_model_path("models/vae") == tmp_path / "models" / "vae"


@pytest.mark.ray
def test_train_export_serve_query_resume(ray_session, serve_url, tmp_path):
    from ray import serve

    from genray.config import build_config
    from genray.store import export
    from genray.runs import load_run_config, read_history
    from genray.train import fit

    storage = tmp_path / "runs"
    cfg = build_config("vae", overrides=[
        "name=e2e", f"storage={storage}", "train.workers=2", "train.epochs=2",
        "data.limit=192", "model.latent_dim=4",
    ])
    first = fit(cfg)
    assert [h["epoch"] for h in first.history] == [0, 1]
    # The session's Ray is genray's embedded one (start_local_ray): no preemption watcher.
    from ray.util.state import list_actors

    assert list_actors(filters=[("class_name", "=", "PreemptionWatcher")]) == []
    assert first.history[0]["workers"] == 2
    # Throughput and timing for `genray bench perf`: both ranks' samples, over the slowest rank.
    assert all(h["train_samples_per_s"] > 0 and h["train_samples_per_cpu_s"] > 0 for h in first.history)
    assert first.history[0]["epoch_started_at"] < first.history[0]["first_step_at"] < first.history[1]["epoch_started_at"]
    assert first.best_checkpoint is not None and (first.best_checkpoint / "manifest.json").is_file()
    assert list((first.run_dir / "tensorboard").glob("events.out.tfevents.*"))
    for key in ("val_neg_elbo", "val_recon", "val_kl", "val_mse"):
        assert first.metrics[key] == first.metrics[key]  # reported and not NaN

    # Starting the same name again without --resume must not touch the run.
    with pytest.raises(ValueError, match="already exists"):
        fit(cfg)

    # Resume: one more epoch, continuing from the latest checkpoint (epoch 1), not from scratch.
    resumed = fit(load_run_config("e2e", str(storage), ["train.epochs=3"]), resume=True)
    assert [h["epoch"] for h in read_history(first.run_dir)] == [0, 1, 2]
    assert resumed.metrics["epoch"] == 2

    model = export(first.run_dir, tmp_path / "models" / "vae")
    # Deploy exactly what serve/vae.yaml declares, pointed at this test's model.
    spec = yaml.safe_load((REPO / "serve" / "vae.yaml").read_text())["applications"][0]
    assert spec["import_path"] == "genray.deploy:build_app"
    serve.run(build_app({**spec["args"], "model": str(model)}), name=spec["name"],
              route_prefix=spec["route_prefix"])
    try:
        url = serve_url + spec["route_prefix"]
        info = requests.get(url + "/", timeout=30).json()
        assert info["family"] == "vae" and info["latent_dim"] == 4

        one = requests.post(url + "/sample", json={"n": 3, "seed": 5, "format": "png"}, timeout=30)
        assert one.status_code == 200
        images = [Image.open(io.BytesIO(base64.b64decode(s))) for s in one.json()["images"]]
        assert [im.size for im in images] == [(28, 28)] * 3
        two = requests.post(url + "/sample", json={"n": 3, "seed": 5, "format": "png"}, timeout=30)
        assert two.json()["images"] == one.json()["images"], "a seeded request must be reproducible"

        digit = [[0.0] * 28 for _ in range(28)]
        codes = requests.post(url + "/encode", json={"images": [digit, digit]}, timeout=30).json()
        assert len(codes["mu"]) == 2 and len(codes["mu"][0]) == 4
        decoded = requests.post(url + "/decode", json={"z": codes["mu"], "format": "list"}, timeout=30).json()
        assert decoded["shape"] == [2, 1, 28, 28]
        # The binary answer (off JSON) holds the same array; concurrent decodes are batched
        # together and each still gets exactly its own images.
        raw = requests.post(url + "/decode", json={"z": codes["mu"], "format": "npy"}, timeout=30)
        assert raw.headers["content-type"] == "application/x-npy"
        array = np.load(io.BytesIO(raw.content))
        assert array.dtype == np.float32 and np.allclose(array[:, 0], decoded["images"], atol=1e-6)
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            zs = [[[0.3 * i] * 4] for i in range(8)]
            answers = list(pool.map(lambda z: requests.post(url + "/decode", json={"z": z, "format": "npy"},
                                                            timeout=30).content, zs))
        for z, answer in zip(zs, answers):
            alone = requests.post(url + "/decode", json={"z": z, "format": "npy"}, timeout=30).content
            assert np.allclose(np.load(io.BytesIO(answer)), np.load(io.BytesIO(alone)), atol=1e-6)
        strip = requests.post(url + "/interpolate", json={"a": digit, "b": digit, "steps": 5}, timeout=30)
        assert len(strip.json()["images"]) == 5

        bad = [
            ("/sample", {"n": 0}, 422, "n"),
            ("/sample", {"n": 5000}, 422, "n"),
            ("/sample", {"n": 2, "seed": "abc"}, 422, "seed"),
            ("/decode", {"z": [[0.0, 1.0]]}, 422, "z.0"),
            ("/encode", {"images": [[[0.5] * 27] * 28]}, 422, "images.0"),
            ("/interpolate", {"a": digit}, 422, "b"),
        ]
        for path, body, status, field in bad:
            r = requests.post(url + path, json=body, timeout=30)
            assert r.status_code == status, (path, body, r.text)
            assert r.json()["error"].startswith(field), r.json()
        r = requests.post(url + "/sample", data="{not json", headers={"content-type": "application/json"}, timeout=30)
        assert r.status_code == 400 and "JSON" in r.json()["error"]
        r = requests.post(url + "/decode", data='{"z": [[NaN, 0, 0, 0]]}',
                          headers={"content-type": "application/json"}, timeout=30)
        assert r.status_code == 422 and "finite" in r.json()["error"]
        # The replica is still up and answering after all of that.
        assert requests.post(url + "/sample", json={"n": 1}, timeout=30).status_code == 200
    finally:
        serve.delete(spec["name"])


def test_the_train_controller_is_told_to_collect_reports_promptly(monkeypatch):
    """Ray Train's controller takes a worker's report only when it polls (2 s by default) and the
    worker's next report waits for that: genray's drivers ask for a short interval, and a user's
    own setting wins."""
    from ray.train.v2._internal.constants import get_env_vars_to_propagate

    from genray.train import REPORT_POLL_ENV, collect_reports_promptly

    (key, value), = REPORT_POLL_ENV.items()
    monkeypatch.delenv(key, raising=False)
    collect_reports_promptly()
    assert get_env_vars_to_propagate()[key] == value and float(value) <= 0.25
    monkeypatch.setenv(key, "1.5")
    collect_reports_promptly()
    assert get_env_vars_to_propagate()[key] == "1.5"
