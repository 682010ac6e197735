"""Serve deployment of a trained UNet; it serves the task the model was trained for.

inpaint model (grey or RGB: GET / says its "image_channels"):
POST /inpaint  {"image": ..., "mask": ..., "format": "png" | "list", "method": "unet" | "mean" | "blur"}
               image: a base64 PNG or JPEG (any mode; converted to the model's channels: grey
               or RGB), or nested lists in [0, 1]: H x W for a grey model (or 1 x H x W),
               3 x H x W (channels x rows x columns) for an RGB one;
               mask: H x W, the image's size, 1 (white) where the image is missing in every
               channel; values >= 0.5 count as missing. H and W between 4 and 256 (the model
               was trained on its data's images: 28 x 28 for the built-in sources).
               -> {"format": "png", "image": base64 PNG (RGB for an RGB model)} or
                  {"format": "list", "shape", "image"}: H x W values for a grey model,
                  3 x H x W for an RGB one; plus "masked_pixels" (pixels, not values).
                  "mean" and "blur" are the baselines genray bench reports.
segment model:
POST /segment  {"image": ..., "format": "png" | "list", "method": "unet" | "otsu"}
               image: a base64 PNG or JPEG (read as grey) or H x W nested lists in [0, 1]
               (the model was trained on 32 x 32 generated shapes)
               -> the 0/1 mask of the shapes, 1 (white) inside one: {"format": "png", "mask":
                  base64 PNG} or {"format": "list", "shape", "mask"}, plus "foreground_pixels".
                  "otsu" is the baseline genray bench reports.
GET  /         the model's family, task, image channels, epoch, metrics, request limits and endpoints

Errors are JSON {"error": "...", "errors": [...]}: 422 for a bad PNG, values outside [0, 1],
ragged rows, a size outside the limits, an image with other channels than the model's, or a
mask whose size differs from the image's; 404 for the endpoint of the task the model was not
trained for.
"""

import base64
import binascii
import io
from typing import Annotated, Literal, Union

import numpy as np
import torch
from PIL import Image
from pydantic import AfterValidator

from genray.deploy.common import BadRequest, ModelReplica, Pixel, StrictModel, deployment, make_api
from genray.images import from_png, to_base64_png

MIN_SIDE, MAX_SIDE = 4, 256


def read_planes(value: Union[str, list], channels: int = 1) -> torch.Tensor:
    """A validated base64 PNG/JPEG, converted to `channels` (1 grey, 3 RGB), or nested lists
    (H, W) or (C, H, W) as they are -> (C, H, W) float32 in [0, 1]."""
    if isinstance(value, str):
        raw = base64.b64decode(value, validate=True)
        with Image.open(io.BytesIO(raw)) as img:
            if not (MIN_SIDE <= img.width <= MAX_SIDE and MIN_SIDE <= img.height <= MAX_SIDE):
                raise ValueError(f"image must be between {MIN_SIDE} and {MAX_SIDE} pixels on each side, "
                                 f"got {img.width}x{img.height}")
            size = (img.height, img.width)
        return from_png(raw, (channels, *size))
    planes = torch.tensor(value, dtype=torch.float32)
    return planes[None] if planes.dim() == 2 else planes


def read_plane(value: Union[str, list]) -> torch.Tensor:
    """A validated base64 PNG/JPEG (read as grey) or H x W nested lists -> (H, W) float32 in [0, 1]."""
    return read_planes(value)[0]


def _check_plane(value: Union[str, list]) -> Union[str, list]:
    if isinstance(value, str):
        try:
            read_plane(value)
        except (binascii.Error, ValueError) as err:
            raise ValueError(str(err) if "pixels" in str(err) else "not a base64 PNG image") from None
        except Exception:
            raise ValueError("base64 data is not a readable PNG image") from None
        return value
    widths = {len(row) for row in value}
    if len(widths) > 1:
        raise ValueError(f"rows must all have the same length, got lengths {sorted(widths)[:5]}")
    h, w = len(value), widths.pop() if widths else 0
    if not (MIN_SIDE <= h <= MAX_SIDE and MIN_SIDE <= w <= MAX_SIDE):
        raise ValueError(f"must be between {MIN_SIDE} and {MAX_SIDE} pixels on each side, got {h}x{w}")
    return value


def _check_planes(value: Union[str, list]) -> Union[str, list]:
    """An image of any channels: a PNG, or one plane (H x W), or planes (C x H x W) of one size;
    whether C is the model's channels the replica checks (inpaint_image)."""
    if isinstance(value, str) or not (value and value[0] and isinstance(value[0][0], list)):
        return _check_plane(value)
    for plane in value:
        _check_plane(plane)
    sizes = sorted({f"{len(plane)}x{len(plane[0])}" for plane in value})
    if len(sizes) > 1:
        raise ValueError(f"channels must all have the same size, got {', '.join(sizes[:5])}")
    return value


Plane = Annotated[Union[str, list[list[Pixel]]], AfterValidator(_check_plane)]
Planes = Annotated[Union[str, list[list[Pixel]], list[list[list[Pixel]]]], AfterValidator(_check_planes)]


class InpaintRequest(StrictModel):
    image: Planes
    mask: Plane
    format: Literal["png", "list"] = "png"
    method: Literal["unet", "mean", "blur"] = "unet"


def model_image(family, value: Union[str, list]) -> torch.Tensor:
    """A request's image as the model's (C, H, W); a 422 that says what the model takes when
    its lists hold other channels (a PNG or JPEG is converted)."""
    channels = family.spec.channels
    image = read_planes(value, channels)
    if image.shape[0] != channels:
        given = "x".join(str(n) for n in np.shape(value))  # as sent: H x W or C x H x W
        wanted = ("H x W (or 1 x H x W) values in [0, 1], for a grey model" if channels == 1 else
                  f"{channels} x H x W (channels x rows x columns) values in [0, 1], for an RGB model")
        raise BadRequest(f"image: expected {wanted}; got {given}")
    return image


def inpaint_image(family, req: InpaintRequest) -> dict:
    """The /inpaint math, without HTTP."""
    check_task(family, "inpaint")
    image, mask = model_image(family, req.image), read_plane(req.mask)  # (C, H, W), (H, W)
    if mask.shape != image.shape[1:]:
        raise BadRequest(f"mask: must be the image's size {image.shape[2]}x{image.shape[1]}, "
                         f"got {mask.shape[1]}x{mask.shape[0]}")
    mask = (mask >= 0.5).float()
    filled = family.inpaint(image[None], mask[None, None], method=req.method)[0].cpu().clamp(0, 1)  # (C, H, W)
    out = {"format": req.format, "method": req.method, "masked_pixels": int(mask.sum())}
    if req.format == "png":
        return {**out, "image": to_base64_png(filled)}
    planes = filled[0] if filled.shape[0] == 1 else filled  # grey: (H, W), as the request's
    return {**out, "shape": list(planes.shape), "image": planes.tolist()}


class SegmentRequest(StrictModel):
    image: Plane
    format: Literal["png", "list"] = "png"
    method: Literal["unet", "otsu"] = "unet"


def check_task(family, task: str) -> None:
    trained = family.cfg.task
    if trained != task:
        raise BadRequest(f"this model was trained for task {trained!r}, not {task!r}: POST /{trained}", 404)


def segment_image(family, req: SegmentRequest) -> dict:
    """The /segment math, without HTTP."""
    check_task(family, "segment")
    image = read_plane(req.image)
    mask = family.segment(image[None, None], method=req.method)[0].cpu()
    out = {"format": req.format, "method": req.method, "foreground_pixels": int(mask.sum())}
    if req.format == "png":
        return {**out, "mask": to_base64_png(mask)}
    return {**out, "shape": list(mask.shape[1:]), "mask": mask[0].tolist()}


api = make_api("genray unet")


@deployment(api)
class UNetDeployment(ModelReplica):
    @api.get("/")
    def info(self) -> dict:
        return {
            "family": self.ckpt.family,
            "task": self.family.cfg.task,
            "image_channels": self.family.spec.channels,
            "epoch": self.ckpt.epoch,
            "metrics": self.ckpt.metrics,
            "limits": {"side": [MIN_SIDE, MAX_SIDE]},
            "endpoints": [f"/{self.family.cfg.task}"],
            **self.served.describe(),
        }

    @api.post("/inpaint")
    def inpaint(self, req: InpaintRequest) -> dict:
        return inpaint_image(self.family, req)

    @api.post("/segment")
    def segment(self, req: SegmentRequest) -> dict:
        return segment_image(self.family, req)
