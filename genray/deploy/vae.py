"""Serve deployment of a trained VAE: sample, encode, decode, interpolate."""


from typing import Optional

import torch
from pydantic import Field
from ray import serve

from genray.checkpoint import load_family
from genray.deploy.common import (
    sample_many,
    BadRequest,
    DecodeRequest,
    encode_images,
    EncodeRequest,
    ImageFormat,
    ImageIn,
    images_to_tensor,
    make_api,
    SampleRequest,
    StrictModel,
)


class InterpolateRequest(StrictModel):
    a: ImageIn
    b: ImageIn
    steps: int = Field(8, ge=2, le=64)
    format: ImageFormat = "png"


api = make_api("genray vae")


@serve.deployment(ray_actor_options={"num_cpus": 1})
@serve.ingress(api)
class VAEDeployment:
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
            "endpoints": ["/sample", "/encode", "/decode", "/interpolate"],
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
        for i, z in enumerate(req.z):
            if len(z) != self.latent_dim:
                raise BadRequest(f"z.{i}: expected {self.latent_dim} values (the latent size), got {len(z)}")
        return encode_images(self.family.decode(torch.tensor(req.z, dtype=torch.float32)), req.format)

    @api.post("/interpolate")
    def interpolate(self, req: InterpolateRequest) -> dict:
        pair = images_to_tensor([req.a, req.b])
        return encode_images(self.family.interpolate(pair[0], pair[1], req.steps), req.format)
