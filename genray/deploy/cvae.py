"""Serve deployment of a trained conditional VAE: sample a digit, style transfer."""


from typing import Annotated, Optional

import torch
from pydantic import Field, ValidationInfo, field_validator
from ray import serve

from genray.checkpoint import load_family
from genray.deploy.common import (
    MAX_IMAGES,
    ImageFormat,
    ImageIn,
    StrictModel,
    encode_images,
    images_to_tensor,
    make_api,
)

# A digit is a JSON integer 0..9: strict, so true or 3.5 is an error rather than 1 or 3.
Digit = Annotated[int, Field(ge=0, le=9, strict=True)]


class SampleRequest(StrictModel):
    digit: Digit
    n: int = Field(16, ge=1, le=MAX_IMAGES)
    seed: Optional[int] = Field(None, ge=0, le=2**63 - 1)
    format: ImageFormat = "png"


class StyleTransferRequest(StrictModel):
    images: list[ImageIn] = Field(min_length=1, max_length=MAX_IMAGES)
    labels: list[Digit] = Field(min_length=1, max_length=MAX_IMAGES)  # the digit each image shows
    digit: Optional[Digit] = None  # draw every image as this digit ...
    digits: Optional[list[Digit]] = Field(None, validate_default=True)  # ... or image i as digits[i]
    format: ImageFormat = "png"

    # Field validators run in declaration order, so `images` (and `digit`) are in info.data when
    # they were valid; checking here, not in a model validator, makes the error name the field.
    @field_validator("labels")
    @classmethod
    def _one_label_per_image(cls, labels: list[int], info: ValidationInfo) -> list[int]:
        images = info.data.get("images")
        if images is not None and len(labels) != len(images):
            raise ValueError(f"expected one label per image ({len(images)}), got {len(labels)}")
        return labels

    @field_validator("digits")
    @classmethod
    def _one_target_per_image(cls, digits: Optional[list[int]], info: ValidationInfo) -> Optional[list[int]]:
        if "digit" not in info.data:
            return digits  # `digit` itself was invalid and has its own error
        digit, images = info.data["digit"], info.data.get("images")
        if digits is None and digit is None:
            raise ValueError("give a target: `digit` (one for every image) or `digits` (one per image)")
        if digits is not None and digit is not None:
            raise ValueError("give `digit` or `digits`, not both")
        if digits is not None and images is not None and len(digits) != len(images):
            raise ValueError(f"expected one target digit per image ({len(images)}), got {len(digits)}")
        return digits

    def targets(self) -> torch.Tensor:
        """The digit to draw each image as, (B,)."""
        if self.digits is not None:
            return torch.tensor(self.digits, dtype=torch.long)
        return torch.full((len(self.images),), self.digit, dtype=torch.long)


def sample_many(family, requests: list[tuple[int, int, Optional[int]]]) -> list[torch.Tensor]:
    """Decode all (digit, n, seed) requests in one forward pass. Each request's codes come from
    its own seed, so a seeded request gets the same images however it was batched."""
    codes = torch.cat([family.prior_codes(n, seed) for _, n, seed in requests])  # (sum n, latent)
    digits = torch.cat([torch.full((n,), digit, dtype=torch.long) for digit, n, _ in requests])
    images = family.decode(codes, digits)  # (sum n, 1, 28, 28)
    return list(images.split([n for _, n, _ in requests]))


def style_transfer_images(family, req: StyleTransferRequest) -> torch.Tensor:
    """The /style_transfer math: image i's handwriting drawn as its target digit, (B, 1, 28, 28)."""
    x = images_to_tensor(req.images)
    return family.style_transfer(x, torch.tensor(req.labels, dtype=torch.long), req.targets())


api = make_api("genray cvae")


@serve.deployment(ray_actor_options={"num_cpus": 1})
@serve.ingress(api)
class CVAEDeployment:
    def __init__(self, model_path: str):
        self.family, self.ckpt = load_family(model_path)

    @api.get("/")
    def info(self) -> dict:
        return {
            "family": self.ckpt.family,
            "epoch": self.ckpt.epoch,
            "latent_dim": self.family.cfg.latent_dim,
            "metrics": self.ckpt.metrics,
            "endpoints": ["/sample", "/style_transfer"],
        }

    @api.get("/healthz")
    def healthz(self) -> dict:
        return {"ok": True}

    @api.post("/sample")
    async def sample(self, req: SampleRequest) -> dict:
        images = await self.sample_batched((req.digit, req.n, req.seed))
        return encode_images(images, req.format)

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
    async def sample_batched(self, requests: list[tuple[int, int, Optional[int]]]) -> list[torch.Tensor]:
        return sample_many(self.family, requests)

    @api.post("/style_transfer")
    def style_transfer(self, req: StyleTransferRequest) -> dict:
        return encode_images(style_transfer_images(self.family, req), req.format)
