"""What every deployment shares: request validation, JSON errors, image encoding.

Validation lives in pydantic request models, so a bad request never reaches the model:
FastAPI answers it with a 4xx whose JSON names the field, and the replica carries on.
"""

from __future__ import annotations

import base64
import binascii
import io
from typing import Annotated, Any, Callable, Literal, Optional, Union

import numpy as np
import torch
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from genray.checkpoint import load_family
from genray.deploy.guard import Guard
from genray.deploy.playground import add_playground
from genray.images import from_png, grid, to_base64_png

MAX_IMAGES = 256  # per request, for every image-taking or image-returning endpoint
IMAGE_HW = (28, 28)

Finite = Annotated[float, Field(allow_inf_nan=False)]
Pixel = Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]
ImageFormat = Literal["png", "list", "grid"]
# The hot paths (sample, decode) also answer in binary, off JSON: "npy" is the float32 array
# (B, 1, 28, 28) as a .npy file (numpy.load reads it), media type application/x-npy.
FastImageFormat = Literal["png", "list", "grid", "npy"]
NPY_MEDIA_TYPE = "application/x-npy"


def _check_image(value: Union[str, list]) -> Union[str, list]:
    """An image is a base64 PNG string or nested lists of shape 28x28 or 1x28x28."""
    if isinstance(value, str):
        try:
            raw = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("not valid base64") from None
        try:
            from_png(raw, IMAGE_HW)
        except ValueError:
            raise
        except Exception:
            raise ValueError("base64 data is not a readable PNG image") from None
        return value
    rows = value[0] if len(value) == 1 and isinstance(value[0], list) and len(value[0]) == IMAGE_HW[0] else value
    if len(rows) != IMAGE_HW[0] or any(len(r) != IMAGE_HW[1] for r in rows):
        shape = f"{len(rows)}x{'/'.join(sorted({str(len(r)) for r in rows})) or 0}"
        raise ValueError(f"image must be 28x28 (or 1x28x28) values in [0, 1], got {shape}")
    return value


ImageIn = Annotated[Union[str, list[list[Pixel]], list[list[list[Pixel]]]], AfterValidator(_check_image)]


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid")


def images_to_tensor(images: list) -> torch.Tensor:
    """Validated images (see ImageIn) -> (B, 1, 28, 28) float32."""
    out = []
    for value in images:
        if isinstance(value, str):
            out.append(from_png(base64.b64decode(value), IMAGE_HW))
        else:
            t = torch.tensor(value, dtype=torch.float32)
            out.append(t.reshape(1, *IMAGE_HW))
    return torch.stack(out)


def encode_images(images: torch.Tensor, fmt: str) -> Union[dict[str, Any], Response]:
    """(B, C, H, W) in [0, 1] -> JSON (base64 PNGs, nested lists, or one grid PNG), or for
    "npy" a binary response that skips JSON altogether."""
    images = images.detach().cpu().clamp(0, 1)
    if fmt == "npy":
        buffer = io.BytesIO()
        np.save(buffer, images.numpy().astype(np.float32, copy=False), allow_pickle=False)
        return Response(content=buffer.getvalue(), media_type=NPY_MEDIA_TYPE)
    if fmt == "png":
        return {"format": "png", "images": [to_base64_png(img) for img in images]}
    if fmt == "grid":
        return {"format": "grid", "image": to_base64_png(grid(images))}
    return {"format": "list", "shape": list(images.shape), "images": images.squeeze(1).tolist()}


def _field(loc: tuple) -> str:
    parts = [str(p) for p in loc if p != "body"]
    return ".".join(parts) or "body"


async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    """FastAPI's 422 with a one-line message that names each bad field; bad JSON is a 400."""
    errors = exc.errors()
    if any(e.get("type") == "json_invalid" for e in errors):
        return JSONResponse(status_code=400, content={"error": "request body is not valid JSON", "errors": []})
    items = [{"field": _field(e.get("loc", ())), "message": e.get("msg", "invalid")} for e in errors]
    message = "; ".join(f"{i['field']}: {i['message']}" for i in items[:5])
    return JSONResponse(status_code=422, content={"error": message, "errors": items})


class BadRequest(Exception):
    """A request that passed the schema but not a check that needs the model (e.g. code size)."""

    def __init__(self, message: str, status_code: int = 422):
        super().__init__(message)
        self.message, self.status_code = message, status_code


async def bad_request(request: Request, exc: BadRequest) -> JSONResponse:
    return JSONResponse(status_code=exc.status_code, content={"error": exc.message, "errors": []})


async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    """FastAPI's own errors (unparseable body, unknown path, wrong method) in genray's shape."""
    return JSONResponse(status_code=exc.status_code, content={"error": str(exc.detail), "errors": []},
                        headers=getattr(exc, "headers", None))


async def internal_error(request: Request, exc: Exception) -> JSONResponse:
    """A bug, not a bad request: still JSON, and nothing about the request echoed back."""
    return JSONResponse(status_code=500, content={"error": f"internal error ({type(exc).__name__})", "errors": []})


def make_api(title: str) -> FastAPI:
    """The FastAPI app of a deployment: JSON errors, the Guard (API key, body cap) in front,
    GET /healthz (open, like the playground page: genray.deploy.guard.OPEN_PATHS)."""
    api = FastAPI(title=title)
    api.add_exception_handler(RequestValidationError, validation_error)
    api.add_exception_handler(BadRequest, bad_request)
    api.add_exception_handler(StarletteHTTPException, http_error)
    api.add_exception_handler(Exception, internal_error)
    api.add_middleware(Guard)
    add_playground(api)  # GET /playground: the page that queries this API from a browser

    @api.get("/healthz")
    def healthz() -> dict:
        return {"ok": True}

    return api


def deployment(api: FastAPI, **options: Any) -> Callable[[type], Any]:
    """A class decorator: the Serve deployment of the class behind `api` (its routes are the
    class's methods), one CPU a replica unless `options` (Serve's) or serve/*.yaml say otherwise."""
    from ray import serve  # here, not above: genray.bench.plain_server uses this module without Ray

    options = {"ray_actor_options": {"num_cpus": 1}, **options}

    def wrap(cls: type):
        return serve.deployment(**options)(serve.ingress(api)(cls))

    return wrap


class ModelReplica:
    """What a replica of a model's deployment holds: the stored model's family, rebuilt in eval
    mode, and its checkpoint (family, epoch, metrics, config)."""

    def __init__(self, model_path: str):
        self.family, self.ckpt = load_family(model_path)

    def describe(self, **fields: Any) -> dict:
        """GET /'s answer: the model's family, checkpoint epoch and metrics, then `fields`."""
        return {"family": self.ckpt.family, "epoch": self.ckpt.epoch, "metrics": self.ckpt.metrics, **fields}


# --- request models shared by the image-generating deployments (vae, aae, vaegan, gan) -----
MAX_CODE = 1e3  # |z| beyond this is no code a decoder has seen; refuse rather than emit noise


class SampleRequest(StrictModel):
    n: int = Field(16, ge=1, le=MAX_IMAGES)
    seed: Optional[int] = Field(None, ge=0, le=2**63 - 1)
    format: FastImageFormat = "png"


class EncodeRequest(StrictModel):
    images: list[ImageIn] = Field(min_length=1, max_length=MAX_IMAGES)


class DecodeRequest(StrictModel):
    z: list[list[Annotated[Finite, Field(ge=-MAX_CODE, le=MAX_CODE)]]] = Field(min_length=1, max_length=MAX_IMAGES)
    format: FastImageFormat = "png"


def codes_to_tensor(z: list[list[float]], latent_dim: int) -> torch.Tensor:
    """Validated codes -> (B, latent) float32; a code of the wrong size is a 422 naming it."""
    for i, code in enumerate(z):
        if len(code) != latent_dim:
            raise BadRequest(f"z.{i}: expected {latent_dim} values (the latent size), got {len(code)}")
    return torch.tensor(z, dtype=torch.float32)


def sample_many(family, requests: list[tuple[int, Optional[int]]]) -> list[torch.Tensor]:
    """Decode all (n, seed) requests' prior codes in one forward pass. Each request's codes come
    from its own seed and the networks run in eval mode, so a seeded request gets the same images
    however it was batched."""
    codes = [family.prior_codes(n, seed) for n, seed in requests]
    with torch.inference_mode():
        images = family.decode(torch.cat(codes))  # (sum n, 1, 28, 28)
    return list(images.split([n for n, _ in requests]))
