"""A new image family is its module and one registry entry. A tiny one defined here, registered
with one line, is trained a step, exported, served through the image deployment built from its
capabilities and queried through the client, with no other edit. Also: the capability tables of
the deployment, the client and the families agree."""

import sys

import numpy as np
import pytest
import requests
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn
from torch.utils.data import DataLoader

from genray import checkpoint
from genray.client import CAPABILITY_METHODS, APIError, Client
from genray.config import build_config
from genray.data import load_images
from genray.families import FAMILIES, Entry, get_family
from genray.families.base import CAPABILITIES, Family, seeded_normal


class TinyConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    latent_dim: int = Field(3, ge=1, le=64)
    lr: float = Field(1e-2, gt=0.0, le=1.0)


class TinyAutoencoder(nn.Module):
    def __init__(self, latent_dim: int):
        super().__init__()
        self.encoder = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, latent_dim))  # (B, latent)
        self.decoder = nn.Sequential(nn.Linear(latent_dim, 28 * 28), nn.Unflatten(1, (1, 28, 28)))  # logits


class TinyFamily(Family):
    name = "tiny"
    Config = TinyConfig
    metric = "val_mse"
    capabilities = ("sample", "encode", "decode", "reconstruct")
    info_fields = ("lr",)

    def build(self):
        return {"ae": TinyAutoencoder(self.cfg.latent_dim)}

    def make_optimizers(self):
        return {"ae": torch.optim.Adam(self.nets["ae"].parameters(), lr=self.cfg.lr)}

    def train_step(self, batch, epoch: float):
        x, _ = batch
        ae = self.train_nets["ae"]
        loss = (torch.sigmoid(ae.decoder(ae.encoder(x))) - x).pow(2).mean()
        self.optimizer_step(loss, "ae")
        return {"loss": loss.item()}

    @torch.no_grad()
    def eval_batch(self, batch):
        x, _ = batch
        return {"val_mse": (self.reconstruct(x) - x).pow(2).flatten(1).mean(1).sum().item()}

    def prior_codes(self, n: int, seed):
        return seeded_normal(n, self.cfg.latent_dim, seed)

    @torch.no_grad()
    def encode(self, x):
        return self.nets["ae"].encoder(x.to(self.device))

    @torch.no_grad()
    def decode(self, z):
        return torch.sigmoid(self.nets["ae"].decoder(z.to(self.device)))

    @torch.no_grad()
    def reconstruct(self, x):
        return self.decode(self.encode(x))


@pytest.fixture
def tiny(monkeypatch, tmp_path):
    """The tiny family registered (the one line), trained one step, exported to a model folder;
    (the trained family, the exported model's path)."""
    from genray.store import export

    monkeypatch.setitem(FAMILIES, "tiny", Entry(f"{__name__}:TinyFamily", ("/sample", {"n": 2, "seed": 0})))
    torch.manual_seed(0)
    cfg = build_config("tiny", overrides=["data.limit=64"])
    family = get_family("tiny")(cfg.model)
    train, val = load_images(cfg.data)
    family.train()
    family.train_step(next(iter(DataLoader(train, batch_size=32))), epoch=0.0)
    family.eval()
    metrics = family.eval_batch(next(iter(DataLoader(val, batch_size=32))))
    checkpoint.save(tmp_path / "run" / "checkpoint_epoch00000", family="tiny", config=cfg.to_dict(),
                    state=family.state_dict(), epoch=0, metrics=metrics)
    return family, export(tmp_path / "run", tmp_path / "models" / "tiny")


def test_the_tiny_family_is_served_by_its_capabilities(tiny):
    import typing

    from genray.bench.perf import unbatched, user_class
    from genray.deploy import client_methods, deployment_for

    family, model = tiny
    deployment, path = deployment_for(str(model))
    assert deployment.name == "TINYDeployment"
    assert client_methods("tiny") == ("sample", "encode", "encode_distribution", "decode", "reconstruct")

    # The deployment's math as `genray bench perf` calls it: no Serve, batch methods with a batch of one.
    cls = user_class(deployment)
    replica = unbatched(cls(path))
    info = cls.info(replica)
    assert info["family"] == "tiny" and info["latent_dim"] == 3 and info["lr"] == 1e-2
    assert info["endpoints"] == ["/sample", "/encode", "/decode", "/reconstruct"]
    assert info["device"] == "cpu"  # no GPU here (a replica given one answers "cuda")
    request = typing.get_type_hints(cls.encode)["req"].model_validate({"images": [[[0.5] * 28] * 28]})
    z = torch.tensor(cls.encode(replica, request)["z"])
    assert torch.allclose(z, family.encode(torch.full((1, 1, 28, 28), 0.5)), atol=1e-6)


@pytest.mark.ray
def test_the_tiny_family_trains_exports_serves_and_answers_the_client(tiny, serve_url):
    from ray import cloudpickle, serve

    from genray.deploy import build_app

    family, model = tiny
    # A replica cannot import a test module: its classes travel with the deployment by value.
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    bound = build_app({"model": str(model)})._bound_deployment
    serve.run(bound.options(ray_actor_options={"num_cpus": 0}).bind(*bound.init_args), name="tiny",
              route_prefix="/tiny")
    try:
        client = Client(f"{serve_url}/tiny")
        assert client.healthz() and client.info()["endpoints"] == ["/sample", "/encode", "/decode", "/reconstruct"]
        path, body = FAMILIES["tiny"].example
        assert requests.post(f"{serve_url}/tiny{path}", json=body, timeout=60).status_code == 200

        images = client.sample(n=3, seed=7)
        assert images.shape == (3, 28, 28)
        assert np.allclose(images, family.decode(family.prior_codes(3, 7))[:, 0].numpy(), atol=1 / 255)
        digits = torch.rand(2, 28, 28)
        codes = client.encode(digits)
        pngs = torch.from_numpy(np.round(digits.numpy() * 255) / 255).float()  # what the PNGs carry
        assert np.allclose(codes, family.encode(pngs[:, None]).numpy(), atol=1e-5)
        assert client.decode(codes).shape == (2, 28, 28)
        assert client.reconstruct(digits).shape == (2, 28, 28)
        with pytest.raises(APIError, match="z.0: expected 3 values") as err:
            client.decode([[0.0] * 4])
        assert err.value.status == 422
        with pytest.raises(APIError) as err:
            client.interpolate(digits[0], digits[1])  # not a capability of this family
        assert err.value.status == 404
    finally:
        serve.delete("tiny")


def test_every_capability_has_an_endpoint_and_client_methods():
    from genray.deploy.images import ENDPOINTS

    assert set(ENDPOINTS) == set(CAPABILITIES) == set(CAPABILITY_METHODS)
    for methods in CAPABILITY_METHODS.values():
        assert all(callable(getattr(Client, m, None)) for m in methods), methods


def test_every_served_family_names_client_methods_the_client_has():
    from genray.deploy import DEPLOYMENTS, client_methods

    for name in DEPLOYMENTS:
        methods = client_methods(name)
        assert methods and all(callable(getattr(Client, m, None)) for m in methods), (name, methods)


def test_capabilities_are_checked_when_a_family_is_defined():
    with pytest.raises(TypeError, match="unknown \\['paint'\\]; known: sample, sample_digit, encode"):
        type("Painter", (TinyFamily,), {"capabilities": ("decode", "paint")})
    with pytest.raises(TypeError, match="'sample' or 'sample_digit', not both"):
        type("Both", (TinyFamily,), {"capabilities": ("sample", "sample_digit")})
