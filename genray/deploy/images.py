"""The one Serve deployment of every image family, built from what the family can do.

Each capability a family declares (Family.capabilities; genray.families.base.CAPABILITIES) is
one endpoint:
    sample          POST /sample          n images from the prior, optionally seeded (batched)
    sample_digit    POST /sample          n images of a given class, by index or name (batched)
    encode          POST /encode          codes of images: {"z"}, or {"mu", "logvar"} of q(z|x)
    decode          POST /decode          images of codes (batched)
    reconstruct     POST /reconstruct     the images through the autoencoder
    denoise         POST /denoise         noisy images cleaned, or clean ones corrupted first
    interpolate     POST /interpolate     images decoded between the codes of two images
    style_transfer  POST /style_transfer  each image's style drawn as another class
beside GET / (family, epoch, latent_dim, image_shape, labels, the family's `info_fields`, metrics,
endpoints) and make_api's GET /healthz. The request models and each endpoint's math are plain
functions (here and in genray.deploy.common) that tests call without Serve.

Images come and go in the model's shape, family.spec.shape = (C, S, S): in as base64 PNG/JPEG
(converted to C channels) or nested lists (C, S, S) ((S, S) for grey), out as PNGs (RGB for
C = 3), lists (B, C, S, S) ((B, S, S) for grey) or .npy arrays (B, C, S, S). The routes exist
before a replica loads its model, so they take the any-model requests (ImageRequest.for_spec
(None)) and each endpoint checks the images' shape and the classes against the loaded model.

`image_deployment(name, family class)` builds the Serve deployment: a class with one method per
endpoint, named as its path, on its own FastAPI app. The class carries the family class to the
replicas, which rebuild the model from the checkpoint with it: a family needs no registration
beyond its FAMILIES entry, in this process or any other. The deployment is named as serve/*.yaml
configure it: the family's name in capitals + "Deployment" (VAEDeployment).
"""

# No `from __future__ import annotations`: the endpoints' request annotations must be the
# classes themselves, for FastAPI and for `genray bench perf`, which reads them.
import functools
from typing import Any, Literal, Optional, Union

import torch
from pydantic import Field, ValidationInfo, field_validator
from ray import serve

from genray import checkpoint
from genray.deploy.common import (
    MAX_IMAGES,
    BadRequest,
    ClassIn,
    DecodeRequest,
    EncodeRequest,
    ImageFormat,
    ImageIn,
    ImageRequest,
    SampleRequest,
    class_to_index,
    classes_to_tensor,
    codes_to_tensor,
    deployment,
    encode_images,
    image_to_tensor,
    images_to_tensor,
    ModelReplica,
    by_family,
    make_api,
    replica_device,
    sample_many,
)
from genray.families.base import CAPABILITIES, Family

# A batch is whatever queued while the previous one ran: a lone request never waits for company.
BATCH = {"max_batch_size": 32, "batch_wait_timeout_s": 0.0}

class DigitSampleRequest(ImageRequest):
    """n images of one class: `label`, its index or its name, or `digit`, its index (the key of
    the digits models, which name their classes "0".."9")."""

    label: Optional[ClassIn] = None
    digit: Optional[ClassIn] = Field(None, validate_default=True)
    n: int = Field(16, ge=1, le=MAX_IMAGES)
    seed: Optional[int] = Field(None, ge=0, le=2**63 - 1)
    format: ImageFormat = "png"

    @field_validator("digit")
    @classmethod
    def _one_class(cls, digit: Optional[Union[int, str]], info: ValidationInfo) -> Optional[Union[int, str]]:
        if "label" not in info.data:
            return digit  # `label` itself was invalid and has its own error
        if (digit is None) == (info.data["label"] is None):
            raise ValueError("give the class to draw: `label` (its index or name) or `digit` (its index), one of them")
        return digit

    def wanted(self) -> tuple[str, Union[int, str]]:
        """(the field that names the class, its value)."""
        return ("digit", self.digit) if self.digit is not None else ("label", self.label)


class ReconstructRequest(ImageRequest):
    images: list[ImageIn] = Field(min_length=1, max_length=MAX_IMAGES)
    format: ImageFormat = "png"


class DenoiseRequest(ImageRequest):
    images: list[ImageIn] = Field(min_length=1, max_length=MAX_IMAGES)
    # False: the images are already noisy, clean them. True: corrupt them first (seeded), to
    # see what the model does with the noise it was trained on, or with the noise named here.
    add_noise: bool = False
    seed: Optional[int] = Field(None, ge=0, le=2**63 - 1)
    noise: Optional[Literal["gaussian", "masking"]] = None  # default: the model's training noise
    # gaussian: std; masking: the fraction of pixels zeroed. Default: the model's noise_level.
    noise_level: Optional[float] = Field(None, ge=0.0, le=1.0, allow_inf_nan=False)
    format: ImageFormat = "png"


class InterpolateRequest(ImageRequest):
    a: ImageIn
    b: ImageIn
    steps: int = Field(8, ge=2, le=64)
    format: ImageFormat = "png"


class StyleTransferRequest(ImageRequest):
    """Classes are indices or names, as in DigitSampleRequest."""

    images: list[ImageIn] = Field(min_length=1, max_length=MAX_IMAGES)
    labels: list[ClassIn] = Field(min_length=1, max_length=MAX_IMAGES)  # the class each image shows
    digit: Optional[ClassIn] = None  # draw every image as this class ...
    digits: Optional[list[ClassIn]] = Field(None, validate_default=True)  # ... or image i as digits[i]
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


# --- each endpoint's math, without HTTP ---------------------------------------------------------

def sample_digits_many(family, requests: list[tuple[int, int, Optional[int]]]) -> list[torch.Tensor]:
    """Decode all (class index, n, seed) requests in one forward pass. Each request's codes come
    from its own seed, so a seeded request gets the same images however it was batched."""
    codes = torch.cat([family.prior_codes(n, seed) for _, n, seed in requests])  # (sum n, latent)
    digits = torch.cat([torch.full((n,), digit, dtype=torch.long) for digit, n, _ in requests])
    images = family.decode(codes, digits)  # (sum n, C, S, S), on the family's device
    return list(images.cpu().split([n for _, n, _ in requests]))  # one copy back for the batch


def decode_many(family, codes: list[torch.Tensor]) -> list[torch.Tensor]:
    """All waiting requests' codes through the decoder at once (eval mode: each image is the same
    however the requests were batched)."""
    with torch.inference_mode():
        images = family.decode(torch.cat(codes))  # codes built on the host, copied once
    return list(images.cpu().split([len(z) for z in codes]))


def encoded(family, req: EncodeRequest) -> dict:
    """The /encode answer: {"z": codes} of a deterministic encoder, {"mu", "logvar"} of q(z|x)."""
    codes = family.encode(images_to_tensor(req.images, family.spec))
    if isinstance(codes, tuple):
        mu, logvar = codes
        return {"mu": mu.tolist(), "logvar": logvar.tolist()}
    return {"z": codes.tolist()}


def denoise_images(family, req: DenoiseRequest) -> tuple[torch.Tensor, torch.Tensor]:
    """(the network's input, its reconstruction), each (B, C, S, S): the /denoise math."""
    x = images_to_tensor(req.images, family.spec)
    if req.add_noise and req.noise is None and not family.cfg.denoising:
        raise BadRequest("noise: this model was trained without noise; name the noise to add "
                         "('gaussian' or 'masking') and its noise_level")
    return family.denoise(x, add_noise=req.add_noise, seed=req.seed, noise=req.noise, level=req.noise_level)


def style_transfer_images(family, req: StyleTransferRequest) -> torch.Tensor:
    """The /style_transfer math: image i's style drawn as its target class, (B, C, S, S)."""
    x = images_to_tensor(req.images, family.spec)
    labels = classes_to_tensor(req.labels, family.spec, "labels")
    if req.digits is not None:
        targets = classes_to_tensor(req.digits, family.spec, "digits")
    else:
        targets = torch.full((len(x),), class_to_index(req.digit, family.spec, "digit"), dtype=torch.long)
    return family.style_transfer(x, labels, targets)


def sampled_class(family, req: DigitSampleRequest) -> int:
    """The index of the class a /sample request of a conditional model asks for."""
    field, value = req.wanted()
    return class_to_index(value, family.spec, field)


# --- the endpoints of each capability -----------------------------------------------------------

def any_model(request: type[ImageRequest]) -> type[ImageRequest]:
    """`request` as a route takes it: for any model's images and classes; the endpoint checks
    them against the model its replica loaded."""
    return request.for_spec(None)

# Each function below returns fresh methods (Serve binds a FastAPI route to one class only):
# the endpoint, named as its path, and the @serve.batch method it awaits, if any.

def _sample() -> dict[str, Any]:
    async def sample(self, req: SampleRequest) -> dict:
        return encode_images(await self.sample_batched((self.family, req.n, req.seed)), req.format)

    @serve.batch(**BATCH)
    async def sample_batched(self, requests: list[tuple[Family, int, Optional[int]]]) -> list[torch.Tensor]:
        return by_family(requests, sample_many)

    return {"sample": sample, "sample_batched": sample_batched}


def _sample_digit() -> dict[str, Any]:
    async def sample(self, req: any_model(DigitSampleRequest)) -> dict:
        family = self.family
        return encode_images(await self.sample_batched((family, sampled_class(family, req), req.n, req.seed)),
                             req.format)

    @serve.batch(**BATCH)
    async def sample_batched(self, requests: list[tuple[Family, int, int, Optional[int]]]) -> list[torch.Tensor]:
        return by_family(requests, sample_digits_many)

    return {"sample": sample, "sample_batched": sample_batched}


def _encode() -> dict[str, Any]:
    def encode(self, req: any_model(EncodeRequest)) -> dict:
        return encoded(self.family, req)

    return {"encode": encode}


def _decode() -> dict[str, Any]:
    async def decode(self, req: DecodeRequest) -> dict:
        family = self.family
        images = await self.decode_batched((family, codes_to_tensor(req.z, family.cfg.latent_dim)))
        return encode_images(images, req.format)

    @serve.batch(**BATCH)
    async def decode_batched(self, requests: list[tuple[Family, torch.Tensor]]) -> list[torch.Tensor]:
        return by_family(requests, lambda family, args: decode_many(family, [z for z, in args]))

    return {"decode": decode, "decode_batched": decode_batched}


def _reconstruct() -> dict[str, Any]:
    def reconstruct(self, req: any_model(ReconstructRequest)) -> dict:
        return encode_images(self.family.reconstruct(images_to_tensor(req.images, self.family.spec)), req.format)

    return {"reconstruct": reconstruct}


def _denoise() -> dict[str, Any]:
    def denoise(self, req: any_model(DenoiseRequest)) -> dict:
        noisy, clean = denoise_images(self.family, req)
        return {"noisy": encode_images(noisy, req.format), "denoised": encode_images(clean, req.format)}

    return {"denoise": denoise}


def _interpolate() -> dict[str, Any]:
    def interpolate(self, req: any_model(InterpolateRequest)) -> dict:
        a, b = (image_to_tensor(image, self.family.spec, field) for image, field in ((req.a, "a"), (req.b, "b")))
        return encode_images(self.family.interpolate(a, b, req.steps), req.format)

    return {"interpolate": interpolate}


def _style_transfer() -> dict[str, Any]:
    def style_transfer(self, req: any_model(StyleTransferRequest)) -> dict:
        return encode_images(style_transfer_images(self.family, req), req.format)

    return {"style_transfer": style_transfer}


# capability -> (its path, its methods); the endpoint method is named as the path.
ENDPOINTS = {
    "sample": ("/sample", _sample),
    "sample_digit": ("/sample", _sample_digit),
    "encode": ("/encode", _encode),
    "decode": ("/decode", _decode),
    "reconstruct": ("/reconstruct", _reconstruct),
    "denoise": ("/denoise", _denoise),
    "interpolate": ("/interpolate", _interpolate),
    "style_transfer": ("/style_transfer", _style_transfer),
}


class ImageReplica(ModelReplica):
    """A replica's model: the family class that image_deployment set, rebuilt from each version's
    checkpoint on the replica's device (its GPU when it was given one: replica_device)."""

    family_name: str
    family_cls: type[Family]

    def load(self, folder: str) -> tuple[Family, Any]:
        ckpt = checkpoint.load(folder)
        if ckpt.family != self.family_name:
            raise ValueError(f"{folder} holds a {ckpt.family} model; this deployment serves {self.family_name}")
        family = self.family_cls.from_checkpoint(ckpt, replica_device())
        if family.device.type == "cuda":
            family.use_channels_last()
        return family, ckpt

    def warm(self, family: Family) -> None:
        """One image through the decoder (the network every generating endpoint runs)."""
        with torch.inference_mode():
            if "sample" in family.capabilities:
                family.decode(family.prior_codes(1, 0))
            elif "sample_digit" in family.capabilities:
                family.decode(family.prior_codes(1, 0), torch.zeros(1, dtype=torch.long))
            elif "decode" in family.capabilities:
                family.decode(torch.zeros(1, family.cfg.latent_dim))


@functools.lru_cache(maxsize=None)
def image_deployment(name: str, family_cls: type[Family]):
    """The Serve deployment of image family `name`: one endpoint per capability it declares."""
    if not family_cls.capabilities:
        raise ValueError(f"family {name!r} declares no capabilities ({', '.join(CAPABILITIES)}): the image "
                         f"deployment has nothing to serve; give it capabilities or a hand-written deployment")
    capabilities = [c for c in CAPABILITIES if c in family_cls.capabilities]
    paths = [ENDPOINTS[c][0] for c in capabilities]

    def info(self) -> dict:
        if not hasattr(self.served, "stable"):  # many models, each request names its own
            return {"family": name, "endpoints": paths, **self.served.describe()}
        cfg, spec = self.family.cfg, self.family.spec
        return {"family": self.ckpt.family, "epoch": self.ckpt.epoch, "latent_dim": cfg.latent_dim,
                "image_shape": list(spec.shape), "labels": list(spec.labels) if spec.labels else None,
                **{field: getattr(cfg, field) for field in family_cls.info_fields},
                "metrics": self.ckpt.metrics, "endpoints": paths, "device": str(self.family.device),
                **self.served.describe()}

    class_name = f"{name.upper()}Deployment"
    methods = {"info": info}
    for capability in capabilities:
        methods.update(ENDPOINTS[capability][1]())
    for method in methods.values():
        # Serve's class-based view finds a class's routes by their qualified names.
        method.__qualname__ = f"{class_name}.{method.__name__}"
    cls = type(class_name, (ImageReplica,), {**methods, "__module__": __name__, "__qualname__": class_name,
                                             "family_name": name, "family_cls": family_cls})
    api = make_api(f"genray {name}")
    api.get("/")(info)
    for path in paths:
        api.post(path)(methods[path.strip("/")])
    return deployment(api, max_ongoing_requests=64)(cls)
