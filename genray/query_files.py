"""The files around a query: `--set` fields that read `@file`s into a request body, and an
answer's base64 PNGs written to one image file. `genray query` and `genray picture` use them."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

from genray.config import ConfigError, apply_override, parse_override

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif")


def parse_sets(items: list[str]) -> dict:
    """--set key=value items -> a dict; values read as YAML (--set n=8, --set 'y0=[[2, 0]]',
    --set 'prompt="def "'); a value @file, also inside a list (--set 'images=["@a.png", "@b.png"]'),
    reads the file: an image as a base64 PNG, .json as JSON, anything else as text."""
    body: dict = {}
    for item in items:
        path, value = parse_override(item)
        apply_override(body, path, read_files(value, ".".join(path)))
    return body


def read_files(value: Any, field: str) -> Any:
    """`value` with every "@file" string (also inside lists) replaced by the file's content."""
    if isinstance(value, list):
        return [read_files(v, field) for v in value]
    if not (isinstance(value, str) and value.startswith("@")):
        return value
    source = Path(value[1:])
    if not source.is_file():
        raise ConfigError(f"{field}: no file {source}")
    if source.suffix.lower() == ".json":
        return json.loads(source.read_text())
    if source.suffix.lower() in IMAGE_SUFFIXES:
        from genray.client import png_base64

        return png_base64(str(source))
    return source.read_text()


def write_images(pngs: list[str], out: Path) -> None:
    """One base64 PNG as it is; several as a grid (genray.images.grid); a ValueError if there are
    none or they differ in size."""
    from genray.client import as_output
    from genray.images import grid, save_png

    if not pngs:
        raise ValueError("the answer has no images to write (ask for format png or grid, e.g. --set format=png)")
    out.parent.mkdir(parents=True, exist_ok=True)
    if len(pngs) == 1:
        out.write_bytes(base64.b64decode(pngs[0]))
        return
    try:
        batch = as_output(pngs, "torch")  # (B, C, H, W)
    except ValueError:
        raise ValueError("the answer's images differ in size; write them one by one with genray.client") from None
    save_png(grid(batch), out)


def shown(answer: dict, pngs: list[str]) -> str:
    """The answer as indented JSON with each of its base64 PNGs replaced by its size."""
    text = json.dumps(answer, indent=1, default=str)
    for png in pngs:
        text = text.replace(png, f"<base64 PNG, {len(png) * 3 // 4} bytes>")
    return text
