"""Serve deployment of a trained VAE: sample, encode, decode, interpolate."""


from typing import Optional

import torch
from pydantic import Field
from ray import serve

from genray.checkpoint import load_family
from genray.deploy.common import (
    sample_many,
    codes_to_tensor,
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


@serve.deployment(ray_actor_options={"num_cpus": 1}, max_ongoing_requests=64)
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

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.0)
    async def sample_batched(self, requests: list[tuple[int, Optional[int]]]) -> list[torch.Tensor]:
        return sample_many(self.family, requests)

    @api.post("/encode")
    def encode(self, req: EncodeRequest) -> dict:
        mu, logvar = self.family.encode(images_to_tensor(req.images))
        return {"mu": mu.tolist(), "logvar": logvar.tolist()}

    @api.post("/decode")
    async def decode(self, req: DecodeRequest) -> dict:
        images = await self.decode_batched(codes_to_tensor(req.z, self.latent_dim))
        return encode_images(images, req.format)

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.0)
    async def decode_batched(self, codes: list[torch.Tensor]) -> list[torch.Tensor]:
        """All waiting requests' codes through the decoder at once (eval mode: each image is the
        same however the requests were batched)."""
        with torch.inference_mode():
            images = self.family.decode(torch.cat(codes))
        return list(images.split([len(z) for z in codes]))

    @api.post("/interpolate")
    def interpolate(self, req: InterpolateRequest) -> dict:
        pair = images_to_tensor([req.a, req.b])
        return encode_images(self.family.interpolate(pair[0], pair[1], req.steps), req.format)
