"""Many models in one app on a real Serve: 30 VAEs of a store over 2 replicas that keep at most 4
each, every request naming its model by header or body field; each answer is that model's own,
and bad names are refused clearly."""

import numpy as np
import pytest
import requests
import torch

from genray import checkpoint, registry
from genray.config import build_config
from genray.deploy import build_app
from genray.deploy.versions import MODEL_ID_HEADER, VERSION_HEADER
from genray.families import get_family

MODELS = 30
CONFIG = build_config("vae", overrides=["model.latent_dim=2", "model.channels=8"])
Z = [[0.3, -0.6]]


@pytest.fixture(scope="module")
def multiplexed(ray_session, serve_url, tmp_path_factory):
    """Models m0..m29 (m_i: version 1, the weights of seed i) in a store, served by one app."""
    from ray import serve

    store = tmp_path_factory.mktemp("store")
    expected = {}
    for i in range(MODELS):
        torch.manual_seed(i)
        family = get_family("vae")(CONFIG.model)
        run = tmp_path_factory.mktemp(f"run{i}")
        checkpoint.save(run / "checkpoint_epoch00000", family="vae", config=CONFIG.to_dict(),
                        state=family.state_dict(), epoch=0, metrics={"val_neg_elbo": float(i)})
        registry.publish(run, store / f"m{i}")
        family.eval()
        with torch.inference_mode():
            expected[f"m{i}"] = family.decode(torch.tensor(Z))[:, 0].numpy()
    registry.Model(store / "m3").set_alias("production", 1)
    app = build_app({"models": str(store), "family": "vae", "max_models_per_replica": 4})
    bound = app._bound_deployment
    serve.run(bound.options(num_replicas=2, ray_actor_options={"num_cpus": 0}).bind(*bound.init_args), name="many",
              route_prefix="/many")
    try:
        yield f"{serve_url}/many", expected
    finally:
        serve.delete("many")


def decode(url: str, model: str, by: str = "header") -> requests.Response:
    body = {"z": Z, "format": "list"}
    if by == "header":
        return requests.post(f"{url}/decode", json=body, headers={MODEL_ID_HEADER: model}, timeout=60)
    return requests.post(f"{url}/decode", json={**body, "model": model}, timeout=60)


@pytest.mark.ray
def test_thirty_models_over_two_replicas_each_answer_as_themselves(multiplexed):
    url, expected = multiplexed
    info = requests.get(f"{url}/", timeout=30).json()
    assert info["family"] == "vae" and info["max_models_per_replica"] == 4 and "/decode" in info["endpoints"]
    order = [f"m{i}" for i in range(MODELS)] * 2 + [f"m{i}" for i in (5, 5, 7, 5)]
    for n, name in enumerate(order):
        r = decode(url, name, by="header" if n % 2 == 0 else "body")
        assert r.status_code == 200, r.text
        assert r.headers[VERSION_HEADER] == f"{name}@1"
        np.testing.assert_allclose(np.array(r.json()["images"], dtype=np.float32), expected[name], atol=1e-6)
    # Version and alias references name the same weights.
    for ref in ("m3@1", "m3@production", "m3@latest"):
        r = decode(url, ref)
        assert r.status_code == 200 and r.headers[VERSION_HEADER] == "m3@1"
        np.testing.assert_allclose(np.array(r.json()["images"], dtype=np.float32), expected["m3"], atol=1e-6)
    # 30 models, 2 replicas of 4: most were loaded more than once (evicted, then asked again).
    loads = {requests.get(f"{url}/", timeout=30).json()["loads"] for _ in range(20)}
    assert sum(loads) >= MODELS


@pytest.mark.ray
def test_a_request_must_name_a_model_that_is_there(multiplexed):
    url, _ = multiplexed
    r = requests.post(f"{url}/decode", json={"z": Z}, timeout=30)
    assert r.status_code == 400 and MODEL_ID_HEADER in r.json()["error"]
    for ref, message in (("m99", "no model 'm99'"), ("m3@7", "has no version 7"), ("m3@canary", "has no alias 'canary'"),
                         ("../m3", "name a model of the store")):
        r = decode(url, ref)
        assert r.status_code == 404 and message in r.json()["error"], (ref, r.text)
    r = requests.post(f"{url}/decode", json={"z": Z, "model": "m1", "extra": 1}, timeout=30)
    assert r.status_code == 422 and "extra" in r.text  # the model field is taken out; others are checked


@pytest.mark.ray
def test_the_client_and_genray_query_name_a_model_and_say_which_version_answered(multiplexed):
    from typer.testing import CliRunner

    from genray.cli import app
    from genray.client import Client

    url, expected = multiplexed
    client = Client(url, model="m3@production")
    images = client.decode(Z)
    assert client.version == "m3@1"
    np.testing.assert_allclose(images, expected["m3"], atol=0.5 / 255 + 1e-6)  # PNGs: 8 bits a pixel
    result = CliRunner().invoke(app, ["query", "many", "decode", "--set", f"z={Z}", "--model", "m4@1",
                                      "--url", url.rsplit("/", 1)[0]])
    assert result.exit_code == 0 and "answered by m4@1" in result.output, result.output
