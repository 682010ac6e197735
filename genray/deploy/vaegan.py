"""Serve deployment of a trained VAE-GAN: encode, decode, sample."""


from typing import Optional

import torch
from ray import serve

from genray.checkpoint import load_family
from genray.deploy.common import (
    sample_many,
    codes_to_tensor,
    DecodeRequest,
    encode_images,
    EncodeRequest,
    images_to_tensor,
    make_api,
    SampleRequest,
)


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
