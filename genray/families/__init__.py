"""Model families: one module each, plain PyTorch, no Ray.

The registry maps a family name to "module:Class"; the module is imported on first use so
that `genray --help` does not pay for torch-geometric or torchdiffeq.
"""

from __future__ import annotations

import importlib

from genray.families.base import Family

FAMILIES: dict[str, str] = {
    "vae": "genray.families.vae:VAEFamily",
    "ae": "genray.families.ae:AEFamily",
    "cvae": "genray.families.cvae:CVAEFamily",
    "classifier": "genray.families.classifier:ClassifierFamily",
    "gan": "genray.families.gan:GANFamily",
    "vaegan": "genray.families.vaegan:VAEGANFamily",
    "aae": "genray.families.aae:AAEFamily",
    "gcn": "genray.families.gcn:GCNFamily",
    "mpnn": "genray.families.mpnn:MPNNFamily",
    "ode": "genray.families.ode:ODEFamily",
    "latent_ode": "genray.families.latent_ode:LatentODEFamily",
    "rnn": "genray.families.rnn:RNNFamily",
    "charlm": "genray.families.charlm:CharLMFamily",
    "unet": "genray.families.unet:UNetFamily",
}


def get_family(name: str) -> type[Family]:
    """The Family class registered under `name`."""
    try:
        target = FAMILIES[name]
    except KeyError:
        raise ValueError(f"unknown family {name!r}; known families: {', '.join(sorted(FAMILIES))}") from None
    module_name, _, class_name = target.partition(":")
    return getattr(importlib.import_module(module_name), class_name)


__all__ = ["FAMILIES", "Family", "get_family"]
