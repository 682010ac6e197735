"""The model store: exported checkpoints that deployments load.

A stored model is a checkpoint folder (see genray.checkpoint) at <store>/<model name>, where
the store is a local folder or an s3:// prefix (written and read with boto3). Export picks the
best checkpoint of a run by its family's metric and copies it there; replacing a model keeps
the old one beside it, so an export never loses one. Locally the copy is renamed into place;
on S3 the manifest is written last, so a reader never takes a half-written model for a whole one.
"""

from __future__ import annotations

import fnmatch
import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

from genray import checkpoint
from genray.checkpoint import CheckpointError
from genray.data import uri
from genray.families import get_family


def run_checkpoints(run_dir: str | Path, pattern: str = "checkpoint_*") -> list[checkpoint.Checkpoint]:
    """Every readable checkpoint of a run (manifests only), oldest epoch first. A Tune search
    folder holds its trials' checkpoints one level down: pattern "*/checkpoint_*".
    `run_dir` is a folder or an s3:// URI."""
    found = []
    for folder in checkpoint_folders(run_dir, pattern):
        try:
            found.append(checkpoint.load(folder, weights=False))
        except CheckpointError:
            continue  # a foreign or broken folder is not a candidate
    return sorted(found, key=lambda c: c.epoch)


def checkpoint_folders(run_dir: str | Path, pattern: str) -> list[str | Path]:
    """Folders under a run that match `pattern` and hold a manifest."""
    if uri.is_s3(run_dir):
        suffix = "/" + checkpoint.MANIFEST
        names = [k[: -len(suffix)] for k in uri.list_keys(str(run_dir)) if k.endswith(suffix)]
        matched = [uri.join(run_dir, n) for n in names if fnmatch.fnmatchcase(n, pattern) and n.count("/") == pattern.count("/")]
        if not matched and not uri.list_keys(str(run_dir)):
            raise CheckpointError(f"run folder not found: {run_dir} (no objects under it)")
        return matched
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"run folder not found: {run_dir}")
    return sorted(run_dir.glob(pattern))


def best_checkpoint(
    run_dir: str | Path,
    which: str = "best",
    *,
    pattern: str = "checkpoint_*",
    metric: str | None = None,
    mode: str | None = None,
) -> checkpoint.Checkpoint:
    """The best checkpoint by `metric` (default: the family's), or the newest ("latest")."""
    found = run_checkpoints(run_dir, pattern)
    if not found:
        raise CheckpointError(f"{run_dir} has no checkpoints")
    if which == "latest":
        return found[-1]
    if which != "best":
        raise ValueError(f"which must be 'best' or 'latest', got {which!r}")
    family = get_family(found[0].family)
    metric, mode = metric or family.metric, mode or family.mode
    scored = [c for c in found if metric in c.metrics]
    if not scored:
        raise CheckpointError(f"no checkpoint in {run_dir} reports {metric}")
    pick = min if mode == "min" else max
    return pick(scored, key=lambda c: c.metrics[metric])


@contextmanager
def local_folder(path: str | Path):
    """A checkpoint as a local folder: itself, or a temporary download of an s3:// one."""
    if not uri.is_s3(path):
        yield Path(path)
        return
    with tempfile.TemporaryDirectory(prefix="genray-export-") as tmp:
        yield uri.download_folder(str(path), tmp)


def export(
    run_dir: str | Path,
    dest: str | Path,
    *,
    which: str = "best",
    replace: bool = False,
    pattern: str = "checkpoint_*",
    metric: str | None = None,
    mode: str | None = None,
) -> Path | str:
    """Copy a run's (or search's) chosen checkpoint to `dest`, a model-store folder or s3:// URI,
    and verify the copy."""
    chosen = best_checkpoint(run_dir, which, pattern=pattern, metric=metric, mode=mode)
    with local_folder(chosen.path) as source:
        checkpoint.load(source)  # checksums verified before anything is copied
        if uri.is_s3(dest):
            return _export_to_s3(source, str(dest).rstrip("/"), replace)
        return _export_to_folder(source, Path(dest).expanduser().resolve(), replace)


def _stamp() -> str:
    return time.strftime("%Y%m%d-%H%M%S")


def _export_to_folder(source: Path, dest: Path, replace: bool) -> Path:
    if dest.exists():
        if not replace:
            raise FileExistsError(f"{dest} already exists; pass --replace to swap it (the old one is kept)")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        shutil.copytree(source, tmp, dirs_exist_ok=True)
        checkpoint.load(tmp)  # the copy is verified too
        if dest.exists():
            os.replace(dest, dest.with_name(f"{dest.name}.replaced-{_stamp()}"))
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def _export_to_s3(source: Path, dest: str, replace: bool) -> str:
    if uri.list_keys(dest):
        if not replace:
            raise FileExistsError(f"{dest} already exists; pass --replace to swap it (the old one is kept)")
        uri.copy_folder(dest, f"{dest}.replaced-{_stamp()}")
        bucket, key = uri.split_s3(uri.join(dest, checkpoint.MANIFEST))
        uri.s3_client().delete_object(Bucket=bucket, Key=key)
    # Weights first, manifest last: until the new manifest lands a reader finds no model,
    # never the old manifest over the new weights.
    uri.upload_folder(source, dest, last=(checkpoint.MANIFEST,))
    checkpoint.load(dest)  # the copy is verified too
    return dest
