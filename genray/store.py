"""The model store: exported checkpoints that deployments load.

A stored model is a checkpoint folder (see genray.checkpoint) at <store>/<model name>, where
the store is a local folder or an s3:// prefix (written and read with boto3). Export picks the
best checkpoint of a run by its family's metric and copies it there; replacing a model keeps
the old one beside it, so an export never loses one. Locally the copy is renamed into place;
on S3 the manifest is written last, so a reader never takes a half-written model for a whole one.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

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
    """Copy a run's (or search's) chosen checkpoint to `dest`, a model-store folder or s3:// URI,
    and verify the copy."""
    run = run_dir if isinstance(run_dir, RunDir) else RunDir.at(run_dir)
    chosen = run.best_checkpoint(which, pattern=pattern, metric=metric, mode=mode)
    target = Location(dest).resolved()
    with Location(chosen.path).as_local_folder() as source:
        checkpoint.load(source)  # checksums verified before anything is copied
        if target.on_s3:
            return _export_to_s3(source, target, replace)
        return _export_to_folder(source, target.path, replace)


def export_named(run: str, dest: str, *, storage: str | None = None, which: str = "best", search: bool = False,
                 replace: bool = False) -> tuple[RunDir, Path | str]:
    """`genray export`: RUN is a run's s3:// URI, a folder, or a name under `storage` (default
    runs); with `search`, a Tune search (default storage: searches) whose best trial's best
    checkpoint is exported. Returns (the run or search folder, where the model went)."""
    folder = RunDir.find(run, storage or ("searches" if search else "runs"))
    options = {}
    if search:
        meta = folder.search_spec()
        options = {"pattern": "*/checkpoint_*", "metric": meta["metric"], "mode": meta["mode"]}
    return folder, export(folder, dest, which=which, replace=replace, **options)


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
