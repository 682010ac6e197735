"""Exporting a checkpoint: choosing a run's checkpoint and copying it, verified, out of the run.

Export picks the best checkpoint of a run by its family's metric (or the latest) and copies it
to a folder or an s3:// prefix (written and read with boto3): a plain model folder, which is a
checkpoint folder (see genray.checkpoint), or a version in the model registry (genray.registry,
what `genray export` writes). Replacing a plain model folder keeps the old one beside it, so an
export never loses one. Locally the copy is renamed into place; on S3 the manifest is written
last, so a reader never takes a half-written model for a whole one.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from genray import checkpoint
from genray.runs import RunDir
from genray.storage import Location


def export(
    run_dir: str | Path | Location | RunDir,
    dest: str | Path | Location,
    *,
    which: str = "best",
    replace: bool = False,
    pattern: str = "checkpoint_*",
    metric: str | None = None,
    mode: str | None = None,
) -> Path | str:
    """Copy a run's (or search's) chosen checkpoint to `dest`, a plain model folder or s3:// URI,
    and verify the copy (genray.registry.publish adds it to a registry model as a version instead)."""
    with chosen_checkpoint(run_dir, which=which, pattern=pattern, metric=metric, mode=mode) as (_, source):
        return copy_checkpoint(source, Location(dest).resolved(), replace=replace).native()


@contextmanager
def chosen_checkpoint(run_dir: str | Path | Location | RunDir, *, which: str = "best", pattern: str = "checkpoint_*",
                      metric: str | None = None, mode: str | None = None) -> Iterator[tuple[checkpoint.Checkpoint, Path]]:
    """The run's checkpoint that `which` picks (see RunDir.best_checkpoint) and a local folder
    holding it (itself, or a download of an S3 one for the block), verified before use."""
    run = run_dir if isinstance(run_dir, RunDir) else RunDir.at(run_dir)
    chosen = run.best_checkpoint(which, pattern=pattern, metric=metric, mode=mode)
    with Location(chosen.path).as_local_folder() as source:
        checkpoint.load(source)  # checksums verified before anything is copied
        yield chosen, source


def named_run(run: str, storage: str | None = None, *, search: bool = False) -> tuple[RunDir, dict[str, str]]:
    """RUN as `genray export` takes it: a run's s3:// URI, a folder, or a name under `storage`
    (default runs); with `search`, a Tune search (default storage: searches), whose trials'
    checkpoints are ranked by the search's metric. Returns (the run or search folder, the
    options of chosen_checkpoint that pick from it)."""
    folder = RunDir.find(run, storage or ("searches" if search else "runs"))
    if not search:
        return folder, {}
    meta = folder.search_spec()
    return folder, {"pattern": "*/checkpoint_*", "metric": meta["metric"], "mode": meta["mode"]}


def copy_checkpoint(source: Path, dest: Location, *, replace: bool = False) -> Location:
    """Copy a local checkpoint folder to `dest` (a folder or s3:// prefix) so that a reader
    finds the whole checkpoint there or none, and verify the copy. An existing `dest` is an
    error, or with `replace` moved aside to <dest>.replaced-<time>."""
    if dest.on_s3:
        return Location(_export_to_s3(source, dest, replace))
    return Location(_export_to_folder(source, dest.path, replace))


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


def _export_to_s3(source: Path, dest: Location, replace: bool) -> str:
    if dest.is_folder():
        if not replace:
            raise FileExistsError(f"{dest} already exists; pass --replace to swap it (the old one is kept)")
        dest.copy_to(Location(f"{dest}.replaced-{_stamp()}"))
        (dest / checkpoint.MANIFEST).remove()
    # Weights first, manifest last: until the new manifest lands a reader finds no model,
    # never the old manifest over the new weights.
    dest.upload_from(source, last=(checkpoint.MANIFEST,))
    checkpoint.load(dest)  # the copy is verified too
    return str(dest)
