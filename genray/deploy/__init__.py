"""Ray Serve deployments and the application builder that serve/*.yaml names.

`serve run serve/vae.yaml` imports `genray.deploy:build_app` with the YAML's `args`; the
builder reads the stored model's manifest and binds its family's deployment, as the family's
registry entry (genray.families.FAMILIES) says: the image deployment built from the family's
capabilities (genray.deploy.images), or a hand-written one where the API is the family's own
(gnn, ode, latent_ode, charlm, unet; heat, which has no model, is its own app). A model is a
reference into the model store (genray.registry), resolved here to one version's folder or
s3:// URI; a replica reads it with boto3 (endpoint and credentials from the AWS chain of the
replica's node, or the application's runtime_env).
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from genray.checkpoint import read_manifest
from genray.families import FAMILIES, Entry, get_family
from genray.registry import model_folder
from genray.storage import Location

IMAGE_DEPLOYMENT = "genray.deploy.images:image_deployment"


class Served(Mapping):
    """family -> what `of` reads from its registry entry, for every family the registry serves
    (an entry with an example request); read from genray.families.FAMILIES at each use."""

    def __init__(self, of: Callable[[Entry], Any]):
        self.of = of

    def _entries(self) -> dict[str, Entry]:
        return {name: entry for name, entry in FAMILIES.items() if entry.example is not None}

    def __getitem__(self, name: str) -> Any:
        return self.of(self._entries()[name])

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries())

    def __len__(self) -> int:
        return len(self._entries())


# family -> its deployment: a hand-written one ("module:Class") or the image deployment.
DEPLOYMENTS = Served(lambda entry: entry.deployment or IMAGE_DEPLOYMENT)


def absolute_reference(model: str) -> str:
    """A serve YAML's model as every replica reads it, wherever it runs: an s3:// URI as it is, a
    local path made absolute (relative to $GENRAY_HOME, default cwd), a registry selector
    (@3, @production) kept."""
    location = Location(model)
    if location.on_s3:
        return location.native()
    path = Path(model).expanduser()
    if not path.is_absolute():
        path = Path(os.environ.get("GENRAY_HOME", os.getcwd())) / path
    return str(path.resolve())


def resolve_model_path(model: str) -> Path | str:
    """The folder a serve YAML's model names: an s3:// URI, an absolute path, or a path relative
    to $GENRAY_HOME (default: cwd). A registry reference (genray.registry: models/vae, the latest
    version; models/vae@3; models/vae@production) is the folder of that one version, so that
    every replica loads the same immutable version."""
    return model_folder(Location(absolute_reference(model))).native()  # an S3 URI without a trailing slash


def build_app(args: dict[str, Any]):
    """Serve application builder. args = {"model": a stored model or registry reference}, or,
    for many models of one family in one app (each request names its own: genray.deploy.versions),
    {"models": a model store, "family": NAME, "max_models_per_replica": N}."""
    from genray.train.driver import check_reachable_from_every_node

    if "models" in args:
        unknown = set(args) - {"models", "family", "max_models_per_replica"}
        if unknown or "family" not in args:
            raise ValueError(f"a multiplexed app takes args 'models' (a store), 'family' and 'max_models_per_replica'"
                             f"{f'; unknown: {sorted(unknown)}' if unknown else '; family is missing'}")
        size = args.get("max_models_per_replica", 4)
        if not isinstance(size, int) or isinstance(size, bool) or size < 1:
            raise ValueError(f"max_models_per_replica must be an integer >= 1, got {size!r}")
        store = absolute_reference(str(args["models"]))
        check_reachable_from_every_node(model=store)
        return family_deployment(str(args["family"])).bind(store, size)
    unknown = set(args) - {"model"}
    if unknown:
        raise ValueError(f"unknown application args {sorted(unknown)}; expected 'model' (or 'models' and 'family')")
    if "model" not in args:
        raise ValueError("application args need 'model': the path of an exported model")
    deployment, path = deployment_for(str(args["model"]))
    check_reachable_from_every_node(model=path)  # every replica, on any node, loads it
    return deployment.bind(path)


def deployment_for(model: str):
    """(the Serve deployment of the stored model's family, the reference its replicas load: the
    model made absolute, its selector kept, so that they follow an alias or the latest version)."""
    family = read_manifest(resolve_model_path(model))["family"]  # clear error if the path holds no model
    return family_deployment(family), absolute_reference(model)


def family_deployment(name: str):
    """The Serve deployment of a registered family."""
    entry = FAMILIES.get(name)
    if entry is None or entry.example is None:
        raise ValueError(f"no deployment for family {name!r}; deployable: {sorted(DEPLOYMENTS)}")
    if entry.deployment is None:
        from genray.deploy.images import image_deployment

        return image_deployment(name, get_family(name))
    module_name, _, class_name = entry.deployment.partition(":")
    return getattr(importlib.import_module(module_name), class_name)


def client_methods(name: str) -> tuple[str, ...]:
    """The genray.client.Client methods that query a served family's endpoints (beside info and
    healthz, which every app has)."""
    entry = FAMILIES[name]
    if entry.deployment is not None:
        return entry.client
    from genray.client import CAPABILITY_METHODS

    return tuple(method for capability in get_family(name).capabilities for method in CAPABILITY_METHODS[capability])
