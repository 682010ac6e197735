"""One small, valid request per deployment: what the tests send first and what
`genray bench perf` times each deployment's math on. family -> (endpoint path, JSON body)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

IMAGE = [[0.0] * 28 for _ in range(28)]
GCN_X = [[0.1 * i for i in range(16)], [0.2] * 16]

EXAMPLES: dict[str, tuple[str, dict[str, Any]]] = {
    "vae": ("/sample", {"n": 2, "seed": 1}),
    "ae": ("/encode", {"images": [IMAGE]}),
    "cvae": ("/sample", {"digit": 3, "n": 2}),
    "gan": ("/sample", {"n": 2, "seed": 3}),
    "vaegan": ("/sample", {"n": 2}),
    "aae": ("/sample", {"n": 2}),
    "gcn": ("/predict", {"x": GCN_X, "edge_index": [[0], [1]], "undirected": True}),
    "mpnn": ("/predict", {"x": [[1, 2], [1, 2], [1, 2]], "edge_index": [[0, 1, 2], [1, 2, 0]],
                          "edge_attr": [[0.3], [0.25], [0.35]]}),
    "ode": ("/integrate", {"y0": [[2.0, 0.0]], "t": [0.0, 0.5, 1.0]}),
    "latent_ode": ("/extrapolate", {"times": [0, 0.3, 0.45, 1.2],
                                    "values": [[5.1, 0.2], [4.9, 0.9], [4.7, 1.1], [3.6, 2.4]],
                                    "query_times": [0, 0.6, 1.5]}),
    "charlm": ("/generate", {"prompt": "def ", "n": 20, "temperature": 0.8, "top_k": 5, "seed": 1}),
    "unet": ("/inpaint", {"image": IMAGE, "mask": [[1.0] * 8 + [0.0] * 20] * 28, "format": "list"}),
}


def untrained_model(family: str, folder: Path) -> str:
    """A checkpoint of freshly built weights (the family's default config): it costs the same
    to serve as a trained one, so it is enough to exercise and time the serving path."""
    from genray import checkpoint
    from genray.config import build_config
    from genray.families import get_family

    cfg = build_config(family)
    model = get_family(family)(cfg.model)
    path = Path(folder) / family
    checkpoint.save(path, family=family, config=cfg.to_dict(), state=model.state_dict(), epoch=0, metrics={})
    return str(path)
