"""Every deployment on a real local Serve: a good request answers 200, a bad one a 4xx JSON
error naming the problem, a property-based fuzz of every POST endpoint (tests/fuzz.py) gets no
5xx and restarts no replica (the apps are shared with the client and playground tests:
tests/deployed.py)."""

import numpy as np
import pytest
import requests
from deployed import served
from fuzz import fuzz_deployment

from genray.deploy import DEPLOYMENTS

from genray.deploy.examples import EXAMPLES
from genray.families import GCN_X, IMAGE

# family -> (path, good body, bad body, what the error must say: the field it names, or the whole
# complaint where the field alone would not tell this error from another); the good bodies are
# the deployments' shared examples.
BAD = {
    "vae": ({"n": 0}, "n"),
    "ae": ({"images": []}, "images"),
    "cvae": ({"digit": 11, "n": 2}, "digit"),
    "gan": ({"n": 100000}, "n"),
    "vaegan": ({"n": -1}, "n"),
    "aae": ({"n": "many"}, "n"),
    "gcn": ({"x": GCN_X, "edge_index": [[0], [5]]}, "edge_index"),
    "mpnn": ({"x": [], "edge_index": [[], []]}, "x"),
    "ode": ({"y0": [[2.0, 0.0]], "t": [0.0, 1.0, 0.5]}, "t"),
    "latent_ode": ({"times": [0, 0.3], "values": [[5.1, 0.2]], "query_times": [1.0]},
                   "values: Value error, expected one value per time (2), got 1"),
    "charlm": ({"prompt": "\u0436\u00a7", "n": 20}, "prompt"),
    "unet": ({"image": IMAGE, "mask": [[1.0] * 20] * 20}, "mask"),
}
REQUESTS = {name: (path, good, *BAD[name]) for name, (path, good) in EXAMPLES.items()}


def test_every_deployment_has_a_request_table():
    assert set(REQUESTS) == set(DEPLOYMENTS)


def check(url: str, path: str, good: dict, bad: dict, field: str) -> None:
    ok = requests.post(url + path, json=good, timeout=60)
    assert ok.status_code == 200, ok.text
    assert requests.get(url + "/", timeout=60).status_code == 200
    rejected = requests.post(url + path, json=bad, timeout=60)
    assert 400 <= rejected.status_code < 500, rejected.text
    assert field in rejected.json()["error"], rejected.json()
    assert requests.post(url + path, json=good, timeout=60).status_code == 200  # still alive


@pytest.fixture(scope="module")
def apps(request, serve_url, tmp_path_factory):
    """Every deployment on untrained weights, shared with the client and playground tests."""
    names, _ = served(request, tmp_path_factory)
    return names


@pytest.mark.ray
def test_every_deployment_answers_and_rejects(serve_url, apps):
    assert set(REQUESTS) <= set(apps)
    for family, (path, good, bad, field) in REQUESTS.items():
        name = apps[family]
        check(f"{serve_url}/{name}", path, good, bad, field)
        before = replicas(name)  # may list DEAD replicas of an earlier app with this name
        sent = fuzz_deployment(f"{serve_url}/{name}", path, good)
        assert sent >= 15
        alive = {actor for actor, state in before.items() if state == "ALIVE"}
        assert alive and replicas(name) == before, f"{family}: a replica died or restarted under fuzzing"
        assert requests.post(f"{serve_url}/{name}{path}", json=good, timeout=60).status_code == 200


def replicas(app: str) -> dict[str, str]:
    """Actor id -> state of every replica Serve ever started for the application."""
    import ray
    from ray.util.state import list_actors

    actors = list_actors(address=ray.get_runtime_context().gcs_address, filters=[("ray_namespace", "=", "serve")],
                         limit=10000, raise_on_missing_output=False)
    return {a.actor_id: a.state for a in actors if a.class_name.startswith(f"ServeReplica:{app}:")}


@pytest.mark.ray
def test_heat_deployment_batches_and_limits(serve_url, apps):
    import concurrent.futures
    import math

    url = f"{serve_url}/{apps['heat']}"
    assert requests.get(url + "/", timeout=60).json()["device"] == "cpu"  # no GPU lent to its replica
    body = {"n": 16, "dt": 0.01, "t_end": 0.05, "format": "probe", "points": [[0.5, 0.5], [0.0, 0.3]]}
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda w: requests.post(url + "/solve", json={**body, "omega": w}, timeout=60),
                                [5.0, 10.0, 20.0, 40.0]))
    assert all(a.status_code == 200 for a in answers)
    edge = [a.json()["values"][1] for a in answers]  # on x1 = 0: u = 1 - exp(-omega t) exactly
    for w, value in zip([5.0, 10.0, 20.0, 40.0], edge):
        assert value == pytest.approx(1 - math.exp(-w * 0.05), abs=1e-9)
    png = requests.post(url + "/solve", json={"n": 16, "dt": 0.01, "t_end": 0.05, "format": "png"}, timeout=60)
    assert png.status_code == 200 and png.json()["format"] == "png"
    for bad, field in [({"n": 100000}, "n"), ({"dt": 1e-6, "t_end": 10}, "steps"),
                       ({"format": "probe"}, "points"), ({"k_in": -1}, "k_in")]:
        r = requests.post(url + "/solve", json=bad, timeout=60)
        assert r.status_code == 422 and field in r.json()["error"], r.text


@pytest.mark.ray
def test_rgb_models_answer_in_their_shape_and_name_what_is_wrong(serve_url, apps):
    """64x64 RGB models with named classes (tests/deployed.py) over HTTP: their shape and classes
    in GET /, colour images out and in, and a 422 that names the expected and the given shape."""
    import base64
    import io

    import torch
    from PIL import Image

    from genray.images import to_base64_png

    cvae, ae = (f"{serve_url}/{apps[name]}" for name in ("rgb-cvae", "rgb-ae"))
    info = requests.get(cvae + "/", timeout=60).json()
    assert info["image_shape"] == [3, 64, 64] and info["labels"] == ["red", "green", "blue"]
    listed = requests.post(cvae + "/sample", json={"label": "green", "n": 2, "seed": 1, "format": "list"}, timeout=60)
    assert listed.status_code == 200 and listed.json()["shape"] == [2, 3, 64, 64]
    pngs = requests.post(cvae + "/sample", json={"digit": 1, "n": 2, "seed": 1}, timeout=60).json()["images"]
    images = [Image.open(io.BytesIO(base64.b64decode(p))) for p in pngs]
    assert [(im.mode, im.size) for im in images] == [("RGB", (64, 64))] * 2
    decoded = torch.tensor(listed.json()["images"])
    assert (torch.from_numpy(np.stack([np.asarray(im) for im in images])).permute(0, 3, 1, 2) / 255
            - decoded).abs().max() <= 0.5 / 255 + 1e-6  # the same images, by name or by index

    colour = torch.rand(3, 64, 64)
    again = requests.post(ae + "/reconstruct", json={"images": [to_base64_png(colour), colour.tolist()]}, timeout=60)
    assert again.status_code == 200
    assert {Image.open(io.BytesIO(base64.b64decode(p))).mode for p in again.json()["images"]} == {"RGB"}
    for url, path, body, message in [
        (ae, "/encode", {"images": [to_base64_png(torch.rand(3, 28, 28))]},
         "images.0: image must be 64x64 pixels, got 28x28"),
        (ae, "/reconstruct", {"images": [colour.tolist(), colour[0].tolist()]},
         "images.1: image must be 3x64x64 (channels x rows x columns) values in [0, 1], got 64x64"),
        (cvae, "/sample", {"label": "purple"}, "label: unknown class 'purple'; this model's classes: red, green, blue"),
        (cvae, "/style_transfer", {"images": [colour.tolist()], "labels": [5], "digit": "red"},
         "labels.0: class index must be in 0..2 (this model has 3 classes), got 5"),
    ]:
        r = requests.post(url + path, json=body, timeout=60)
        assert r.status_code == 422 and r.json()["error"] == message, r.text
    assert requests.post(ae + "/encode", json={"images": [colour.tolist()]}, timeout=60).status_code == 200
