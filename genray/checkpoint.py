"""Self-describing checkpoints: the only interface between training and serving.

A checkpoint is a folder:
    manifest.json   {"format": 1, "family", "config", "epoch", "metrics", "files": {name: sha256}}
    weights.pt      {"nets": {name: state_dict}, "optimizers": {...}} (DDP already unwrapped)
The manifest carries the whole run config, so loading rebuilds the model without the
training code's arguments (as nanoGPT does). Folders are written under a temporary name and
renamed into place, so a reader never sees half a checkpoint; the checksums catch a file
that was truncated or corrupted afterwards. Checkpoints are read from a folder or an s3://
prefix (a Ray Train run on S3, or the model store there).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from genray.storage import Location, ObjectNotFound

FORMAT = 1
MANIFEST = "manifest.json"
WEIGHTS = "weights.pt"


class CheckpointError(ValueError):
    """A checkpoint is missing, incomplete or corrupted."""


@dataclass
class Checkpoint:
    path: Path | str  # a folder, or an s3:// URI
    family: str
    config: dict[str, Any]  # the full RunConfig as a dict
    epoch: int
    metrics: dict[str, float]
    state: dict[str, Any] | None  # None when loaded with weights=False


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def save(
    directory: str | Path,
    *,
    family: str,
    config: dict[str, Any],
    state: dict[str, Any],
    epoch: int,
    metrics: dict[str, float],
) -> Path:
    """Write a checkpoint folder atomically; an existing folder at `directory` is an error."""
    directory = Path(directory)
    if directory.exists() and any(directory.iterdir()):
        raise CheckpointError(f"refusing to overwrite non-empty folder {directory}")
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        torch.save(state, tmp / WEIGHTS)
        manifest = {
            "format": FORMAT,
            "family": family,
            "config": config,
            "epoch": int(epoch),
            "metrics": {k: float(v) for k, v in metrics.items()},
            "files": {WEIGHTS: sha256(tmp / WEIGHTS)},
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
        if directory.exists():
            directory.rmdir()  # empty (checked above); os.replace needs the name free
        os.replace(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


def read_manifest(directory: str | Path | Location) -> dict[str, Any]:
    path = Location(directory) / MANIFEST
    try:
        text = path.read_text()
    except ObjectNotFound:
        raise CheckpointError(f"not a genray checkpoint: {path} is missing") from None
    try:
        manifest = json.loads(text)
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path}: corrupted manifest ({err})") from None
    if manifest.get("format") != FORMAT:
        raise CheckpointError(f"{path}: format {manifest.get('format')!r}, this genray reads format {FORMAT}")
    return manifest


def load(directory: str | Path | Location, *, weights: bool = True,
         map_location: str | torch.device = "cpu") -> Checkpoint:
    """Read and verify a checkpoint; every file's checksum is checked before use. An s3://
    checkpoint is downloaded to a temporary folder first (its path stays the URI)."""
    where = Location(directory)
    if where.on_s3:
        if not weights:
            return _from_manifest(str(where), read_manifest(where), None)
        read_manifest(where)  # "not a genray checkpoint" before anything is downloaded
        with where.as_local_folder() as folder:
            local = load(folder, map_location=map_location)
        local.path = str(where)
        return local
    directory = where.path
    manifest = read_manifest(directory)
    state = None
    if weights:
        for name, digest in manifest["files"].items():
            path = directory / name
            if not path.is_file():
                raise CheckpointError(f"checkpoint file missing: {path}")
            if sha256(path) != digest:
                raise CheckpointError(f"checkpoint file corrupted (checksum mismatch): {path}")
        # weights_only: a checkpoint is data, never code to run.
        state = torch.load(directory / WEIGHTS, map_location=map_location, weights_only=True)
    return _from_manifest(directory, manifest, state)


def _from_manifest(path: Path | str, manifest: dict[str, Any], state: dict[str, Any] | None) -> Checkpoint:
    return Checkpoint(
        path=path,
        family=manifest["family"],
        config=manifest["config"],
        epoch=manifest["epoch"],
        metrics=manifest["metrics"],
        state=state,
    )


def load_family(directory: str | Path, device: str | torch.device = "cpu"):
    """Rebuild a family from a checkpoint, in eval mode, ready for inference."""
    from genray.config import RunConfig

    ckpt = load(directory, map_location=device)
    config = RunConfig.model_validate(ckpt.config)  # the whole run config, not only its model part
    return config_family(config).from_checkpoint(ckpt, device), ckpt


def config_family(config):
    from genray.families import get_family

    return get_family(config.family)
