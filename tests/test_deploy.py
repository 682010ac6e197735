"""Deployments: request validation and the math, without HTTP, and the whole path on a real
local Ray: 2 Ray Train workers -> checkpoint -> export -> Serve -> HTTP -> resume."""

import base64
import concurrent.futures
import io
import re
from pathlib import Path

import numpy as np
import pytest
import requests
import torch
import yaml
from PIL import Image
from pydantic import ValidationError

from genray import checkpoint
from genray.data.images import ImageSpec
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


def test_heat_requests_are_solved_on_the_replicas_device_and_come_back_to_the_cpu():
    """solve_many solves on the device it is given (the replica's: replica_device) and hands the
    fields back on the CPU, one copy per batch, equal to the solver's own answer."""
    from genray.deploy.heat import SolveRequest, solve_many
    from genray.heat import solve

    fields = solve_many([SolveRequest(n=16, omega=5.0), SolveRequest(n=16), SolveRequest(n=8)], torch.device("cpu"))
    assert [f.device.type for f in fields] == ["cpu"] * 3 and [f.shape[0] for f in fields] == [17, 17, 9]
    assert torch.allclose(fields[1], solve(16, 1e-3, 0.1, rtol=1e-8, device="cpu"), rtol=0, atol=1e-12)


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
def test_train_export_serve_query(ray_session, serve_url, tmp_path):
    from ray import serve

    from genray.config import build_config
    from genray.store import export
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

    assert list_actors(address=ray_session.get_runtime_context().gcs_address,
                       filters=[("class_name", "=", "PreemptionWatcher")]) == []
    assert first.history[0]["workers"] == 2
    # Throughput and timing for `genray bench perf`: both ranks' samples, over the slowest rank.
    assert all(h["train_samples_per_s"] > 0 and h["train_samples_per_cpu_s"] > 0 for h in first.history)
    assert first.history[0]["epoch_started_at"] < first.history[0]["first_step_at"] < first.history[1]["epoch_started_at"]
    assert first.best_checkpoint is not None and (first.best_checkpoint / "manifest.json").is_file()
    assert list((first.run_dir / "tensorboard").glob("events.out.tfevents.*"))
    for h in first.history:  # means over the val set, gathered from both ranks' sums
        assert h["val_neg_elbo"] == pytest.approx(h["val_recon"] + h["val_kl"], rel=1e-4)
        assert h["val_kl"] > 0 and 0 < h["val_mse"] < 0.25  # 0.25: a grey guess at every pixel
    assert first.metrics["val_neg_elbo"] == first.history[-1]["val_neg_elbo"]  # the last epoch's

    # Starting the same name again without --resume must not touch the run.
    with pytest.raises(ValueError, match="already exists"):
        fit(cfg)

    # Resuming is test_reliability's (a killed driver, locally) and test_s3's (from the bucket).

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


# --- images of any shape: the digits' 1x28x28 is one ImageSpec among others ----------------------

RGB = ImageSpec(channels=3, size=64, labels=("red", "green", "blue"))
RGB_DATA = {"image_size": 64, "channels": 3, "labels": list(RGB.labels)}


def png(image: torch.Tensor) -> str:
    from genray.images import to_base64_png

    return to_base64_png(image)


def test_requests_are_checked_against_the_models_images_and_classes():
    from genray.deploy.common import BadRequest, classes_to_tensor, image_tensor

    request = EncodeRequest.for_spec(RGB)
    assert request.for_spec(ImageSpec()) is EncodeRequest and request.spec == RGB
    colour = torch.rand(3, 64, 64)
    ok = request(images=[colour.tolist(), png(colour), png(colour[:1])])  # lists, an RGB PNG, a grey PNG
    back = images_to_tensor(ok.images, RGB)
    assert back.shape == (3, 3, 64, 64)
    assert torch.allclose(back[0], colour) and (back[1] - colour).abs().max() <= 0.5 / 255 + 1e-6
    assert torch.equal(back[2][0], back[2][1]) and torch.equal(back[2][1], back[2][2])  # grey made RGB
    wanted = "image must be 3x64x64 (channels x rows x columns) values in [0, 1], got"
    for image, message in [(colour[0].tolist(), f"{wanted} 64x64"),
                           (torch.rand(3, 28, 28).tolist(), f"{wanted} 3x28x28"),
                           (png(torch.rand(3, 28, 28)), "image must be 64x64 pixels, got 28x28")]:
        with pytest.raises(ValidationError, match=re.escape(message)) as err:
            request(images=[colour.tolist(), image])
        assert err.value.errors()[0]["loc"] == ("images", 1)
        # The deployment's route takes any model's images and checks them against its own model.
        anything = EncodeRequest.for_spec(None)(images=[image])
        with pytest.raises(BadRequest, match=re.escape(f"images.0: {message}")):
            images_to_tensor(anything.images, RGB)
    with pytest.raises(ValueError, match="image must be 28x28 \\(or 1x28x28\\) values in \\[0, 1\\], got 3x64x64"):
        image_tensor(colour.tolist(), ImageSpec())
    with pytest.raises(ValidationError, match="not valid base64"):
        EncodeRequest.for_spec(None)(images=["not base64!"])

    assert classes_to_tensor(["blue", 0, "green"], RGB, "labels").tolist() == [2, 0, 1]
    for value, message in [("purple", "labels.0: unknown class 'purple'; this model's classes: red, green, blue"),
                           (3, "labels.0: class index must be in 0..2 (this model has 3 classes), got 3")]:
        with pytest.raises(BadRequest, match=re.escape(message)):
            classes_to_tensor([value], RGB, "labels")
    with pytest.raises(BadRequest, match="no classes"):
        classes_to_tensor([0], ImageSpec(labels=None), "labels")


def call(cls, replica, endpoint: str, body: dict):
    """An endpoint of the image deployment as its route runs it: the body validated by the route's
    request model, the method called (awaited when async)."""
    import asyncio
    import typing

    method = getattr(cls, endpoint)
    hints = typing.get_type_hints(method)
    args = [hints["req"].model_validate(body)] if "req" in hints else []
    out = method(replica, *args)
    return asyncio.run(out) if asyncio.iscoroutine(out) else out


@pytest.mark.parametrize("family", ["vae", "ae", "cvae"])
def test_the_image_deployment_serves_a_64x64_rgb_model(family, tmp_path):
    """Every image endpoint of an RGB model, as its replica runs it (no Serve): the images it
    answers are the model's own, (B, 3, 64, 64), in colour."""
    from genray.bench.perf import unbatched, user_class
    from genray.deploy import deployment_for
    from genray.deploy.common import BadRequest
    from genray.deploy.examples import untrained_model

    deployment, path = deployment_for(untrained_model(family, tmp_path, RGB_DATA))
    cls = user_class(deployment)
    replica = unbatched(cls(path))
    model = replica.family
    info = call(cls, replica, "info", {})
    assert info["image_shape"] == [3, 64, 64] and info["labels"] == ["red", "green", "blue"]
    x = torch.rand(2, 3, 64, 64)
    lists = {"images": x.tolist(), "format": "list"}

    if family == "cvae":
        by_name = call(cls, replica, "sample", {"label": "blue", "n": 2, "seed": 4, "format": "list"})
        assert by_name["shape"] == [2, 3, 64, 64]
        assert torch.allclose(torch.tensor(by_name["images"]), model.sample(2, 2, seed=4), atol=1e-6)
        by_index = call(cls, replica, "sample", {"digit": 2, "n": 2, "seed": 4, "format": "list"})
        assert by_index["images"] == by_name["images"]
        with pytest.raises(BadRequest, match=re.escape("label: unknown class 'cyan'")):
            call(cls, replica, "sample", {"label": "cyan"})
        with pytest.raises(ValidationError, match="give the class to draw"):
            call(cls, replica, "sample", {"n": 2})
        moved = call(cls, replica, "style_transfer", {**lists, "labels": ["red", 1], "digits": ["green", "blue"]})
        assert torch.allclose(torch.tensor(moved["images"]),
                              model.style_transfer(x, torch.tensor([0, 1]), torch.tensor([1, 2])), atol=1e-5)
        return

    codes = call(cls, replica, "encode", {"images": x.tolist()})
    mu = torch.tensor(codes["mu"] if "mu" in codes else codes["z"])
    expected = model.encode(x)
    assert torch.allclose(mu, expected[0] if isinstance(expected, tuple) else expected, atol=1e-5)
    decoded = call(cls, replica, "decode", {"z": mu.tolist(), "format": "list"})
    assert decoded["shape"] == [2, 3, 64, 64]
    assert torch.allclose(torch.tensor(decoded["images"]), model.decode(mu), atol=1e-5)
    pngs = call(cls, replica, "decode", {"z": mu.tolist(), "format": "png"})["images"]
    colours = [Image.open(io.BytesIO(base64.b64decode(p))) for p in pngs]
    assert [(im.mode, im.size) for im in colours] == [("RGB", (64, 64))] * 2
    raw = call(cls, replica, "decode", {"z": mu.tolist(), "format": "npy"})
    assert np.load(io.BytesIO(raw.body)).shape == (2, 3, 64, 64)
    if family == "ae":
        again = call(cls, replica, "reconstruct", {"images": [png(x[0]), x[1].tolist()], "format": "list"})
        assert torch.allclose(torch.tensor(again["images"][1]), model.reconstruct(x[1:])[0], atol=1e-5)
        noisy = call(cls, replica, "denoise", {**lists, "add_noise": True, "noise": "masking", "noise_level": 0.5,
                                               "seed": 1})
        assert torch.tensor(noisy["noisy"]["images"]).shape == (2, 3, 64, 64)
    else:
        strip = call(cls, replica, "interpolate", {"a": png(x[0]), "b": x[1].tolist(), "steps": 3, "format": "list"})
        assert strip["shape"] == [3, 3, 64, 64]
        sampled = call(cls, replica, "sample", {"n": 2, "seed": 3, "format": "list"})
        assert torch.allclose(torch.tensor(sampled["images"]), model.sample(2, seed=3), atol=1e-6)
    with pytest.raises(BadRequest, match=re.escape("images.1: image must be 64x64 pixels, got 28x28")):
        call(cls, replica, "encode", {"images": [png(x[0]), png(torch.rand(1, 28, 28))]})
    with pytest.raises(BadRequest, match=re.escape("images.0: image must be 3x64x64 (channels x rows x columns) "
                                                   "values in [0, 1], got 64x64")):
        call(cls, replica, "encode", {"images": [x[0, 0].tolist()]})


def test_serve_yaml_of_an_image_family_serves_an_rgb_model(tmp_path):
    """serve/<family>.yaml names the deployment the builder makes of any model of that family, RGB
    or grey: its settings apply, and its one argument is the model, which the user sets."""
    from genray.deploy.examples import untrained_model

    for family in ("vae", "cvae", "gan"):
        spec = yaml.safe_load((REPO / "serve" / f"{family}.yaml").read_text())["applications"][0]
        assert spec["import_path"] == "genray.deploy:build_app" and set(spec["args"]) == {"model"}
        app = build_app({**spec["args"], "model": untrained_model(family, tmp_path, RGB_DATA)})
        assert [d["name"] for d in spec["deployments"]] == [app._bound_deployment.name]
