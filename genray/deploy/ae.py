"""Serve deployment of a trained (denoising) autoencoder: encode, decode, reconstruct, denoise."""


from typing import Annotated, Literal, Optional

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


class EncodeRequest(StrictModel):
    images: list[ImageIn] = Field(min_length=1, max_length=MAX_IMAGES)


class DecodeRequest(StrictModel):
    z: list[list[Annotated[Finite, Field(ge=-MAX_CODE, le=MAX_CODE)]]] = Field(min_length=1, max_length=MAX_IMAGES)
    format: ImageFormat = "png"


class ReconstructRequest(StrictModel):
    images: list[ImageIn] = Field(min_length=1, max_length=MAX_IMAGES)
    format: ImageFormat = "png"


class DenoiseRequest(StrictModel):
    images: list[ImageIn] = Field(min_length=1, max_length=MAX_IMAGES)
    # False: the images are already noisy, clean them. True: corrupt them first (seeded), to
    # see what the model does with the noise it was trained on, or with the noise named here.
    add_noise: bool = False
    seed: Optional[int] = Field(None, ge=0, le=2**63 - 1)
    noise: Optional[Literal["gaussian", "masking"]] = None  # default: the model's training noise
    # gaussian: std; masking: the fraction of pixels zeroed. Default: the model's noise_level.
    noise_level: Optional[float] = Field(None, ge=0.0, le=1.0, allow_inf_nan=False)
    format: ImageFormat = "png"


def denoise_images(family, req: DenoiseRequest) -> tuple[torch.Tensor, torch.Tensor]:
    """(the network's input, its reconstruction), each (B, 1, 28, 28): the /denoise math."""
    x = images_to_tensor(req.images)
    if req.add_noise and req.noise is None and not family.cfg.denoising:
        raise BadRequest("noise: this model was trained without noise; name the noise to add "
                         "('gaussian' or 'masking') and its noise_level")
    return family.denoise(x, add_noise=req.add_noise, seed=req.seed, noise=req.noise, level=req.noise_level)


api = make_api("genray ae")


@serve.deployment(ray_actor_options={"num_cpus": 1})
@serve.ingress(api)
class AEDeployment:
    def __init__(self, model_path: str):
        self.family, self.ckpt = load_family(model_path)
        self.latent_dim = self.family.cfg.latent_dim

    @api.get("/")
    def info(self) -> dict:
        cfg = self.family.cfg
        return {
            "family": self.ckpt.family,
            "epoch": self.ckpt.epoch,
            "latent_dim": self.latent_dim,
            "noise": cfg.noise,
            "noise_level": cfg.noise_level,
            "metrics": self.ckpt.metrics,
            "endpoints": ["/encode", "/decode", "/reconstruct", "/denoise"],
        }

    @api.get("/healthz")
    def healthz(self) -> dict:
        return {"ok": True}

    @api.post("/encode")
    def encode(self, req: EncodeRequest) -> dict:
        return {"z": self.family.encode(images_to_tensor(req.images)).tolist()}

    @api.post("/decode")
    def decode(self, req: DecodeRequest) -> dict:
        for i, z in enumerate(req.z):
            if len(z) != self.latent_dim:
                raise BadRequest(f"z.{i}: expected {self.latent_dim} values (the latent size), got {len(z)}")
        return encode_images(self.family.decode(torch.tensor(req.z, dtype=torch.float32)), req.format)

    @api.post("/reconstruct")
    def reconstruct(self, req: ReconstructRequest) -> dict:
        return encode_images(self.family.reconstruct(images_to_tensor(req.images)), req.format)

    @api.post("/denoise")
    def denoise(self, req: DenoiseRequest) -> dict:
        noisy, clean = denoise_images(self.family, req)
        return {"noisy": encode_images(noisy, req.format), "denoised": encode_images(clean, req.format)}
