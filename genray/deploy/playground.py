"""The playground: `GET /playground` on every app, one static page that queries the HTTP API.

The page (playground.html, plain JS, no framework) lists the applications from the Serve
proxy's route table (`GET /-/routes`: route prefix -> app name), builds the form of the chosen
endpoint from that app's `/openapi.json`, posts JSON to the same API a client uses, and shows
the returned images (base64 PNGs), text or JSON; an error answer shows the server's `error`.

The page is open like `/healthz` (genray.deploy.guard.OPEN_PATHS): a browser cannot put a
header on the address it navigates to, so a keyed page would be unreachable. It holds no
data; everything it shows comes from API calls that carry the key typed into its key field.

Required fields get example values so that "Run" works at once: digits from scikit-learn's
set (which ships in the package) for image fields, a spiral state for the ODEs, and so on.
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources

from fastapi import FastAPI
from fastapi.responses import HTMLResponse

EXAMPLES_MARK = "/*EXAMPLES*/null"  # replaced by the JSON of examples() in the page


@lru_cache(maxsize=1)
def examples() -> dict:
    """Example values by request field name, for fields that have no default."""
    import torch

    from genray.data.images import digits_28x28
    from genray.images import to_base64_png

    images, labels = digits_28x28()
    three, eight = (images[int((labels == d).nonzero()[0])] for d in (3, 8))  # (1, 28, 28) each
    mask = torch.zeros(1, 28, 28)
    mask[:, 9:19, 9:19] = 1.0  # a square hole in the middle
    return {
        "images": [to_base64_png(three)],
        "labels": [3],
        "a": to_base64_png(three),
        "b": to_base64_png(eight),
        "image": to_base64_png(three),
        "mask": to_base64_png(mask),
        "y0": [[2.0, 0.0]],
        "t": [0.0, 0.5, 1.0, 1.5, 2.0],
        "times": [0.0, 0.3, 0.45, 1.2],
        "values": [[5.1, 0.2], [4.9, 0.9], [4.7, 1.1], [3.6, 2.4]],
        "query_times": [0.0, 0.6, 1.5, 3.0],
        "text": "def f(x):\n    return x\n",
        "digit": 3,
    }


@lru_cache(maxsize=1)
def page() -> str:
    html = resources.files("genray.deploy").joinpath("playground.html").read_text()
    return html.replace(EXAMPLES_MARK, json.dumps(examples()))


def add_playground(api: FastAPI) -> None:
    """GET /playground: the page (left out of the OpenAPI schema, so the fuzzer and the page's
    own endpoint list see only the API)."""

    @api.get("/playground", include_in_schema=False)
    def playground() -> HTMLResponse:
        return HTMLResponse(page())
