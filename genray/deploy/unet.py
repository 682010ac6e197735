"""Serve deployment of a trained UNet; it serves the task the model was trained for.

inpaint model:
POST /inpaint  {"image": ..., "mask": ..., "format": "png" | "list", "method": "unet" | "mean" | "blur"}
               image: a base64 PNG (any mode; read as grey) or H x W nested lists in [0, 1];
               mask: the same size, 1 (white) where the image is missing; values >= 0.5 count
               as missing. H and W between 4 and 256 (the model was trained on 28 x 28).
               -> {"format": "png", "image": base64 PNG} or {"format": "list", "shape", "image"},
                  plus "masked_pixels". "mean" and "blur" are the baselines genray bench reports.
segment model:
POST /segment  {"image": ..., "format": "png" | "list", "method": "unet" | "otsu"}
               image as above (the model was trained on 32 x 32 generated shapes)
               -> the 0/1 mask of the shapes, 1 (white) inside one: {"format": "png", "mask":
                  base64 PNG} or {"format": "list", "shape", "mask"}, plus "foreground_pixels".
                  "otsu" is the baseline genray bench reports.
GET  /         the model's family, task, epoch, metrics, request limits and endpoints

Errors are JSON {"error": "...", "errors": [...]}: 422 for a bad PNG, values outside [0, 1],
ragged rows, a size outside the limits, or a mask whose size differs from the image's; 404 for
the endpoint of the task the model was not trained for.
"""

import base64
import binascii
import io
from typing import Annotated, Literal, Union

import numpy as np
import torch
from PIL import Image
from pydantic import AfterValidator, Field

from genray.deploy.common import BadRequest, ModelReplica, Pixel, StrictModel, deployment, make_api
from genray.images import to_base64_png

MIN_SIDE, MAX_SIDE = 4, 256


def read_plane(value: Union[str, list]) -> torch.Tensor:
    """A validated base64 PNG or H x W nested lists -> (H, W) float32 in [0, 1]."""
    if isinstance(value, str):
        raw = base64.b64decode(value, validate=True)
        with Image.open(io.BytesIO(raw)) as img:
            if not (MIN_SIDE <= img.width <= MAX_SIDE and MIN_SIDE <= img.height <= MAX_SIDE):
                raise ValueError(f"image must be between {MIN_SIDE} and {MAX_SIDE} pixels on each side, "
                                 f"got {img.width}x{img.height}")
            return torch.from_numpy(np.asarray(img.convert("L"), dtype=np.float32) / 255.0)
    return torch.tensor(value, dtype=torch.float32)


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


Plane = Annotated[Union[str, list[list[Pixel]]], AfterValidator(_check_plane)]


class InpaintRequest(StrictModel):
    image: Plane
    mask: Plane
    format: Literal["png", "list"] = "png"
    method: Literal["unet", "mean", "blur"] = "unet"


def inpaint_image(family, req: InpaintRequest) -> dict:
    """The /inpaint math, without HTTP."""
    check_task(family, "inpaint")
    image, mask = read_plane(req.image), read_plane(req.mask)
    if mask.shape != image.shape:
        raise BadRequest(f"mask: must be the image's size {image.shape[1]}x{image.shape[0]}, "
                         f"got {mask.shape[1]}x{mask.shape[0]}")
    mask = (mask >= 0.5).float()
    filled = family.inpaint(image[None, None], mask[None, None], method=req.method)[0].cpu().clamp(0, 1)
    out = {"format": req.format, "method": req.method, "masked_pixels": int(mask.sum())}
    if req.format == "png":
        return {**out, "image": to_base64_png(filled)}
    return {**out, "shape": list(filled.shape[1:]), "image": filled[0].tolist()}


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
            "epoch": self.ckpt.epoch,
            "metrics": self.ckpt.metrics,
            "limits": {"side": [MIN_SIDE, MAX_SIDE]},
            "endpoints": [f"/{self.family.cfg.task}"],
        }

    @api.post("/inpaint")
    def inpaint(self, req: InpaintRequest) -> dict:
        return inpaint_image(self.family, req)

    @api.post("/segment")
    def segment(self, req: SegmentRequest) -> dict:
        return segment_image(self.family, req)
