"""What every deployment shares: request validation, JSON errors, image encoding.

Validation lives in pydantic request models, so a bad request never reaches the model:
FastAPI answers it with a 4xx whose JSON names the field, and the replica carries on. What only
the loaded model knows (the size of its codes, the shape of its images, its classes) the replica
checks before its math, with the same 422 that names the field (BadRequest).
"""

from __future__ import annotations

import base64
import binascii
import io
import functools
from contextvars import ContextVar
from typing import Annotated, Any, Callable, ClassVar, Literal, Optional, Union

import numpy as np
import torch
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from PIL import Image
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, PlainValidator, model_validator

from genray.checkpoint import load_family
from genray.data.images import ImageSpec
from genray.deploy.guard import Guard
from genray.deploy.versions import ModelChoice
from genray.deploy.playground import add_playground
from genray.images import from_png, grid, to_base64_png

MAX_IMAGES = 256  # per request, for every image-taking or image-returning endpoint

Finite = Annotated[float, Field(allow_inf_nan=False)]
Pixel = Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]
ImageFormat = Literal["png", "list", "grid"]
# The hot paths (sample, decode) also answer in binary, off JSON: "npy" is the float32 array
# (B, C, S, S) as a .npy file (numpy.load reads it), media type application/x-npy.
FastImageFormat = Literal["png", "list", "grid", "npy"]
NPY_MEDIA_TYPE = "application/x-npy"


# --- images and classes of a model's ImageSpec -------------------------------------------------
# An image in a request is a base64 PNG or JPEG (converted to the model's channels) or nested
# lists of values in [0, 1]: (C, S, S), or (S, S) for a grey model. A class is its index or its
# name (ImageSpec.labels). The checks that need the model (its size, channels, classes) are the
# two functions below; a request model runs them against its `spec` (ImageRequest), the image
# deployment against the model its replica loaded.

def _list_shape(value: list) -> str:
    """The shape of nested lists as text, e.g. 3x64x64, or 28x27/28 when rows differ in length."""
    if value and isinstance(value[0], list) and value[0] and isinstance(value[0][0], list):
        heights = "/".join(sorted({str(len(channel)) for channel in value}))
        return f"{len(value)}x{heights}x{_widths(row for channel in value for row in channel)}"
    return f"{len(value)}x{_widths(value)}"


def _widths(rows) -> str:
    return "/".join(sorted({str(len(row)) for row in rows})) or "0"


UNREADABLE = "base64 data is not a readable PNG or JPEG image"


def _base64(value: str) -> bytes:
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("not valid base64") from None


def image_tensor(value: Union[str, list], spec: ImageSpec) -> torch.Tensor:
    """One request image -> (C, S, S) float32 for a model of `spec`; a ValueError that names the
    shape the model takes and the one given."""
    channels, size, _ = spec.shape
    if isinstance(value, str):
        raw = _base64(value)
        try:
            return from_png(raw, spec.shape)
        except ValueError:
            raise
        except Exception:
            raise ValueError(UNREADABLE) from None
    given = _list_shape(value)
    wanted = {f"{channels}x{size}x{size}"} | ({f"{size}x{size}"} if channels == 1 else set())
    if given not in wanted:
        if channels == 1:
            raise ValueError(f"image must be {size}x{size} (or 1x{size}x{size}) values in [0, 1], got {given}")
        raise ValueError(f"image must be {channels}x{size}x{size} (channels x rows x columns) values in [0, 1], "
                         f"got {given}")
    return torch.tensor(value, dtype=torch.float32).reshape(spec.shape)


def class_index(value: Union[int, str], spec: ImageSpec) -> int:
    """A request's class (its index, or its name in spec.labels) -> its index; a ValueError that
    says which classes the model has."""
    if not spec.labels:
        raise ValueError("this model has no classes: it was trained on unlabelled images")
    n = len(spec.labels)
    if isinstance(value, str):
        if value in spec.labels:
            return spec.labels.index(value)
        names = ", ".join(spec.labels[:20]) + (f", ... ({n} in all)" if n > 20 else "")
        raise ValueError(f"unknown class {value!r}; this model's classes: {names}")
    if not 0 <= value < n:
        raise ValueError(f"class index must be in 0..{n - 1} (this model has {n} classes), got {value}")
    return value


# The spec that ImageIn and ClassIn check against while an ImageRequest is validated (a field's
# validator cannot see the model class it belongs to; ImageRequest sets this around validation).
_SPEC: ContextVar[Optional[ImageSpec]] = ContextVar("genray_request_spec", default=ImageSpec())


def _check_image(value: Union[str, list]) -> Union[str, list]:
    spec = _SPEC.get()
    if spec is not None:
        image_tensor(value, spec)
    elif isinstance(value, str):  # for any model, still base64 of a readable image
        try:
            with Image.open(io.BytesIO(_base64(value))) as img:
                img.verify()
        except ValueError:
            raise
        except Exception:
            raise ValueError(UNREADABLE) from None
    return value


def _check_class(value: Any) -> Union[int, str]:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError(f"a class is its index (an integer) or its name (a string), got {value!r}")
    spec = _SPEC.get()
    if spec is not None:
        return class_index(value, spec)
    if isinstance(value, int) and value < 0:
        raise ValueError(f"a class index is >= 0, got {value}")
    return value


ImageIn = Annotated[Union[str, list[list[Pixel]], list[list[list[Pixel]]]], AfterValidator(_check_image)]
ClassIn = Annotated[Union[int, str], PlainValidator(_check_class, json_schema_input_type=Union[int, str])]


def _validated_against(spec: Optional[ImageSpec], data: Any, handler: Any) -> Any:
    # A module function, not the validator's body: the deployment's request classes travel to
    # its replicas by value, with the globals their validators name, and a ContextVar does not pickle.
    token = _SPEC.set(spec)
    try:
        return handler(data)
    finally:
        _SPEC.reset(token)


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ImageRequest(StrictModel):
    """A request whose ImageIn and ClassIn fields are checked against `spec`, the images a model
    takes (the digits' 1x28x28 here). `for_spec` gives the same request for another model; for
    spec None, for any model: the image deployment takes those, since its routes exist before a
    replica loads its model, and checks the rest against that model (images_to_tensor,
    class_to_index), the way it checks a code's size."""

    spec: ClassVar[Optional[ImageSpec]] = ImageSpec()

    @model_validator(mode="wrap")
    @classmethod
    def _against_spec(cls, data: Any, handler: Any) -> Any:
        return _validated_against(cls.spec, data, handler)

    @classmethod
    def for_spec(cls, spec: Optional[ImageSpec]) -> type["ImageRequest"]:
        written = _WRITTEN.get(cls, cls)  # the class as defined in code
        return written if spec == written.spec else _specialised(written, spec)


_WRITTEN: dict[type, type] = {}  # a class made by _specialised -> the class it was made from


@functools.lru_cache(maxsize=None)
def _specialised(cls: type[ImageRequest], spec: Optional[ImageSpec]) -> type[ImageRequest]:
    # Named as the class itself: the name is what a deployment's OpenAPI schema shows.
    made = type(cls.__name__, (cls,), {"spec": spec, "__module__": cls.__module__, "__qualname__": cls.__qualname__})
    _WRITTEN[made] = cls
    return made


def _bad_field(field: str, check: Callable[[], Any]) -> Any:
    try:
        return check()
    except ValueError as err:
        raise BadRequest(f"{field}: {err}") from None


def images_to_tensor(images: list, spec: ImageSpec = ImageSpec(), field: str = "images") -> torch.Tensor:
    """Request images (see ImageIn) -> (B, C, S, S) float32 for a model of `spec`; an image of
    another shape is a 422 that names it (`field`.i) and both shapes."""
    return torch.stack([_bad_field(f"{field}.{i}", lambda v=v: image_tensor(v, spec)) for i, v in enumerate(images)])


def image_to_tensor(image: Union[str, list], spec: ImageSpec, field: str) -> torch.Tensor:
    """One request image (field `field`) -> (C, S, S), as images_to_tensor."""
    return _bad_field(field, lambda: image_tensor(image, spec))


def classes_to_tensor(values: list, spec: ImageSpec, field: str) -> torch.Tensor:
    """Request classes (indices or names) -> their indices (B,); an unknown one is a 422 naming it."""
    return torch.tensor([_bad_field(f"{field}.{i}", lambda v=v: class_index(v, spec)) for i, v in enumerate(values)],
                        dtype=torch.long)


def class_to_index(value: Union[int, str], spec: ImageSpec, field: str) -> int:
    """One request class (field `field`) -> its index, as classes_to_tensor."""
    return _bad_field(field, lambda: class_index(value, spec))


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
    api.add_middleware(ModelChoice)  # inner: a refused request never counts towards a canary's share
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


def replica_device() -> torch.device:
    """Where a replica computes: its GPU when Serve gave it one (`num_gpus` in its
    ray_actor_options, a fraction such as 0.25 included: Ray then shows it one device through
    CUDA_VISIBLE_DEVICES), else the CPU. Outside Ray: the GPU when there is one."""
    import ray

    if not torch.cuda.is_available():
        return torch.device("cpu")
    if ray.is_initialized() and not ray.get_gpu_ids():
        return torch.device("cpu")  # a replica that asked for no GPU leaves it to those that did
    return torch.device("cuda")


class ModelReplica:
    """What a replica of a model's deployment holds: the version its model reference names
    (genray.deploy.versions.ServedModel: reloaded when an alias moves, a canary beside it during
    a rollout), rebuilt in eval mode; `family` and `ckpt` are those of the version the current
    request was given. Batched methods get the family from their requests, never from `self`."""

    def __init__(self, model_ref: str, max_models_per_replica: int = 0):
        from genray.deploy.versions import MultiplexedModels, ServedModel

        if max_models_per_replica:  # model_ref is a store; each request names its model
            self.served = MultiplexedModels(model_ref, self.load, self.warm, max_models_per_replica)
        else:
            self.served = ServedModel(model_ref, self.load, self.warm)

    def load(self, folder: str) -> tuple[Any, Any]:
        """(family, checkpoint) of a checkpoint folder, on the CPU."""
        return load_family(folder)

    def warm(self, family: Any) -> None:
        """One forward pass of a freshly loaded version, before it takes requests; none here."""

    @property
    def loaded(self):
        from genray.deploy.versions import CHOICE

        loaded = CHOICE.get() or getattr(self.served, "stable", None)
        if loaded is None:
            raise BadRequest(f"this app serves many models: name one ({self.served.describe()['models']})")
        return loaded

    @property
    def family(self):
        return self.loaded.family

    @property
    def ckpt(self):
        return self.loaded.ckpt

    def describe(self, **fields: Any) -> dict:
        """GET /'s answer: the model's family, checkpoint epoch and metrics, then `fields`; the
        reference served, its version (and a canary's) last."""
        return {"family": self.ckpt.family, "epoch": self.ckpt.epoch, "metrics": self.ckpt.metrics, **fields,
                **self.served.describe()}


def by_family(requests: list[tuple], run) -> list:
    """A batch's answers in order when its requests carry (family, *args): each family's requests
    in one call of run(family, [args, ...]) (during a rollout a batch may mix two versions)."""
    answers: list = [None] * len(requests)
    for family in {id(r[0]): r[0] for r in requests}.values():
        mine = [i for i, r in enumerate(requests) if r[0] is family]
        for i, answer in zip(mine, run(family, [requests[i][1:] for i in mine])):
            answers[i] = answer
    return answers


# --- request models shared by the image-generating deployments (vae, aae, vaegan, gan) -----
MAX_CODE = 1e3  # |z| beyond this is no code a decoder has seen; refuse rather than emit noise


class SampleRequest(StrictModel):
    n: int = Field(16, ge=1, le=MAX_IMAGES)
    seed: Optional[int] = Field(None, ge=0, le=2**63 - 1)
    format: FastImageFormat = "png"


class EncodeRequest(ImageRequest):
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
        images = family.decode(torch.cat(codes))  # (sum n, C, S, S), on the family's device
    return list(images.cpu().split([n for n, _ in requests]))  # one copy back for the whole batch
