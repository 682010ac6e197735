"""Ray Serve deployments, one per family, and the application builder that serve/*.yaml names.

`serve run serve/vae.yaml` imports `genray.deploy:build_app` with the YAML's `args`; the
builder reads the stored model's manifest and binds the deployment of its family. A model is
a folder or an s3:// URI in the model store; a replica reads it with boto3 (endpoint and
credentials from the AWS chain of the replica's node, or the application's runtime_env).
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any

from genray.checkpoint import read_manifest
from genray import storage as uri

# family -> "module:DeploymentClass"; imported on use, like the family registry.
DEPLOYMENTS: dict[str, str] = {
    "vae": "genray.deploy.vae:VAEDeployment",
    "ae": "genray.deploy.ae:AEDeployment",
    "cvae": "genray.deploy.cvae:CVAEDeployment",
    "gan": "genray.deploy.gan:GANDeployment",
    "vaegan": "genray.deploy.vaegan:VAEGANDeployment",
    "aae": "genray.deploy.aae:AAEDeployment",
    "gcn": "genray.deploy.gnn:GCNDeployment",
    "mpnn": "genray.deploy.gnn:MPNNDeployment",
    "ode": "genray.deploy.ode:ODEDeployment",
    "latent_ode": "genray.deploy.latent_ode:LatentODEDeployment",
    "charlm": "genray.deploy.charlm:CharLMDeployment",
    "unet": "genray.deploy.unet:UNetDeployment",
}


def resolve_model_path(model: str) -> Path | str:
    """A store path from serve YAML: an s3:// URI, an absolute path, or a path relative to
    $GENRAY_HOME (default: cwd)."""
    if uri.is_s3(model):
        return model.rstrip("/")
    path = Path(model).expanduser()
    if not path.is_absolute():
        path = Path(os.environ.get("GENRAY_HOME", os.getcwd())) / path
    return path.resolve()


def build_app(args: dict[str, Any]):
    """Serve application builder: args = {"model": path to a stored model}."""
    unknown = set(args) - {"model"}
    if unknown:
        raise ValueError(f"unknown application args {sorted(unknown)}; expected 'model'")
    if "model" not in args:
        raise ValueError("application args need 'model': the path of an exported model")
    deployment, path = deployment_for(str(args["model"]))
    return deployment.bind(path)


def deployment_for(model: str):
    """(the Serve deployment of the stored model's family, the model's resolved path or URI)."""
    path = resolve_model_path(model)
    family = read_manifest(path)["family"]  # clear error if the path holds no model
    if family not in DEPLOYMENTS:
        raise ValueError(f"no deployment for family {family!r}; deployable: {sorted(DEPLOYMENTS)}")
    module_name, _, class_name = DEPLOYMENTS[family].partition(":")
    return getattr(importlib.import_module(module_name), class_name), str(path)
