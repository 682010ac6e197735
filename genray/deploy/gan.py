"""Serve deployment of a trained GAN: sample n images, optionally seeded."""


from typing import Optional

import torch
from ray import serve

from genray.checkpoint import load_family
from genray.deploy.common import (
    sample_many,
    encode_images,
    make_api,
    SampleRequest,
)


api = make_api("genray gan")


@serve.deployment(ray_actor_options={"num_cpus": 1}, max_ongoing_requests=64)
@serve.ingress(api)
class GANDeployment:
    def __init__(self, model_path: str):
        self.family, self.ckpt = load_family(model_path)

    @api.get("/")
    def info(self) -> dict:
        cfg = self.family.cfg
        return {
            "family": self.ckpt.family,
            "epoch": self.ckpt.epoch,
            "latent_dim": cfg.latent_dim,
            "loss": cfg.loss,
            "metrics": self.ckpt.metrics,
            "endpoints": ["/sample"],
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
