"""Serve deployment of a trained VAE-GAN: encode, decode, sample."""


from typing import Annotated, Optional

import torch
from pydantic import Field
from ray import serve

from genray.checkpoint import load_family
from genray.deploy.common import (
    BadRequest,
    MAX_IMAGES,
    Finite,
    ImageFormat,
    ImageIn,
    StrictModel,
    encode_images,
    images_to_tensor,
    make_api,
)

MAX_CODE = 1e3  # |z| beyond this is no code the decoder has seen; refuse rather than emit noise


class SampleRequest(StrictModel):
    n: int = Field(16, ge=1, le=MAX_IMAGES)
    seed: Optional[int] = Field(None, ge=0, le=2**63 - 1)
    format: ImageFormat = "png"


class EncodeRequest(StrictModel):
    images: list[ImageIn] = Field(min_length=1, max_length=MAX_IMAGES)


class DecodeRequest(StrictModel):
    z: list[list[Annotated[Finite, Field(ge=-MAX_CODE, le=MAX_CODE)]]] = Field(min_length=1, max_length=MAX_IMAGES)
    format: ImageFormat = "png"


def codes_to_tensor(z: list[list[float]], latent_dim: int) -> torch.Tensor:
    """Validated codes -> (B, latent) float32; a code of the wrong size is a 422 naming it."""
    for i, code in enumerate(z):
        if len(code) != latent_dim:
            raise BadRequest(f"z.{i}: expected {latent_dim} values (the latent size), got {len(code)}")
    return torch.tensor(z, dtype=torch.float32)


def sample_many(family, requests: list[tuple[int, Optional[int]]]) -> list[torch.Tensor]:
    """Decode all requests' prior codes in one forward pass; each request's codes come from its
    own seed, so a seeded request gets the same images however it was batched."""
    codes = [family.prior_codes(n, seed) for n, seed in requests]
    images = family.decode(torch.cat(codes))  # (sum n, 1, 28, 28)
    return list(images.split([n for n, _ in requests]))


api = make_api("genray vaegan")


@serve.deployment(ray_actor_options={"num_cpus": 1})
@serve.ingress(api)
class VAEGANDeployment:
    def __init__(self, model_path: str):
        self.family, self.ckpt = load_family(model_path)
        self.latent_dim = self.family.cfg.latent_dim

    @api.get("/")
    def info(self) -> dict:
        return {
            "family": self.ckpt.family,
            "epoch": self.ckpt.epoch,
            "latent_dim": self.latent_dim,
            "metrics": self.ckpt.metrics,
            "endpoints": ["/sample", "/encode", "/decode"],
        }

    @api.get("/healthz")
    def healthz(self) -> dict:
        return {"ok": True}

    @api.post("/sample")
    async def sample(self, req: SampleRequest) -> dict:
        images = await self.sample_batched((req.n, req.seed))
        return encode_images(images, req.format)

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
    async def sample_batched(self, requests: list[tuple[int, Optional[int]]]) -> list[torch.Tensor]:
        return sample_many(self.family, requests)

    @api.post("/encode")
    def encode(self, req: EncodeRequest) -> dict:
        mu, logvar = self.family.encode(images_to_tensor(req.images))
        return {"mu": mu.tolist(), "logvar": logvar.tolist()}

    @api.post("/decode")
    def decode(self, req: DecodeRequest) -> dict:
        z = codes_to_tensor(req.z, self.latent_dim)
        return encode_images(self.family.decode(z), req.format)
