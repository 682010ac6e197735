"""Model families: one module each, plain PyTorch, no Ray.

The registry holds one Entry per family: where its class is ("module:Class", imported on first
use so that `genray --help` does not pay for torch-geometric or torchdiffeq) and, for a served
family, one small valid request to its deployment. An image family (one that declares
`capabilities`, see genray.families.base.CAPABILITIES) is served by the one image deployment
built from them (genray.deploy.images), and the Client methods that query it follow from them
too; the other served families name their hand-written deployment and its Client methods.
A new image family is its module and one line here (and a serve YAML to serve it by config).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from genray.families.base import Family


@dataclass(frozen=True)
class Entry:
    family: str  # "module:Class"
    # One small valid request to the family's deployment, (endpoint path, JSON body): what the
    # tests send first and `genray bench perf` times. None: the family is not served.
    example: tuple[str, dict[str, Any]] | None = None
    # A hand-written deployment ("module:Class") and the genray.client.Client methods that query
    # it; None: the image deployment, whose endpoints and Client methods follow the capabilities.
    deployment: str | None = None
    client: tuple[str, ...] = ()


IMAGE = [[0.0] * 28 for _ in range(28)]  # a blank 28x28 image as nested lists
GCN_X = [[0.1 * i for i in range(16)], [0.2] * 16]  # two nodes of the 16-feature default graph
GCN_GRAPH = {"x": GCN_X, "edge_index": [[0], [1]], "undirected": True}
MPNN_GRAPH = {"x": [[1, 2], [1, 2], [1, 2]], "edge_index": [[0, 1, 2], [1, 2, 0]], "edge_attr": [[0.3], [0.25], [0.35]]}
SERIES = {"times": [0, 0.3, 0.45, 1.2], "values": [[5.1, 0.2], [4.9, 0.9], [4.7, 1.1], [3.6, 2.4]],
          "query_times": [0, 0.6, 1.5]}
PROMPT = {"prompt": "def ", "n": 20, "temperature": 0.8, "top_k": 5, "seed": 1}
HOLE = {"image": IMAGE, "mask": [[1.0] * 8 + [0.0] * 20] * 28, "format": "list"}

FAMILIES: dict[str, Entry] = {
    "vae": Entry("genray.families.vae:VAEFamily", ("/sample", {"n": 2, "seed": 1})),
    "ae": Entry("genray.families.ae:AEFamily", ("/encode", {"images": [IMAGE]})),
    "cvae": Entry("genray.families.cvae:CVAEFamily", ("/sample", {"digit": 3, "n": 2})),
    "classifier": Entry("genray.families.classifier:ClassifierFamily"),
    "gan": Entry("genray.families.gan:GANFamily", ("/sample", {"n": 2, "seed": 3})),
    "vaegan": Entry("genray.families.vaegan:VAEGANFamily", ("/sample", {"n": 2})),
    "aae": Entry("genray.families.aae:AAEFamily", ("/sample", {"n": 2})),
    "gcn": Entry("genray.families.gcn:GCNFamily", ("/predict", GCN_GRAPH), "genray.deploy.gnn:GCNDeployment",
                 ("predict_nodes",)),
    "mpnn": Entry("genray.families.mpnn:MPNNFamily", ("/predict", MPNN_GRAPH), "genray.deploy.gnn:MPNNDeployment",
                  ("predict_graph",)),
    "ode": Entry("genray.families.ode:ODEFamily", ("/integrate", {"y0": [[2.0, 0.0]], "t": [0.0, 0.5, 1.0]}),
                 "genray.deploy.ode:ODEDeployment", ("integrate", "portrait")),
    "latent_ode": Entry("genray.families.latent_ode:LatentODEFamily", ("/extrapolate", SERIES),
                        "genray.deploy.latent_ode:LatentODEDeployment", ("extrapolate",)),
    "rnn": Entry("genray.families.rnn:RNNFamily"),
    "charlm": Entry("genray.families.charlm:CharLMFamily", ("/generate", PROMPT),
                    "genray.deploy.charlm:CharLMDeployment", ("generate", "score")),
    "unet": Entry("genray.families.unet:UNetFamily", ("/inpaint", HOLE), "genray.deploy.unet:UNetDeployment",
                  ("inpaint",)),
}


def get_family(name: str) -> type[Family]:
    """The Family class registered under `name`."""
    try:
        target = FAMILIES[name].family
    except KeyError:
        raise ValueError(f"unknown family {name!r}; known families: {', '.join(sorted(FAMILIES))}") from None
    module_name, _, class_name = target.partition(":")
    return getattr(importlib.import_module(module_name), class_name)


__all__ = ["Entry", "FAMILIES", "Family", "get_family"]
