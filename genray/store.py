"""The model store: exported checkpoints that deployments load.

A stored model is a checkpoint folder (see genray.checkpoint) at <store>/<model name>.
Export picks the best checkpoint of a run by its family's metric and copies it there
atomically; replacing a model keeps the old one beside it, so an export never loses one.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

from genray import checkpoint
from genray.checkpoint import CheckpointError
from genray.families import get_family


def run_checkpoints(run_dir: str | Path, pattern: str = "checkpoint_*") -> list[checkpoint.Checkpoint]:
    """Every readable checkpoint of a run (manifests only), oldest epoch first. A Tune search
    folder holds its trials' checkpoints one level down: pattern "*/checkpoint_*"."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"run folder not found: {run_dir}")
    found = []
    for folder in sorted(run_dir.glob(pattern)):
        try:
            found.append(checkpoint.load(folder, weights=False))
        except CheckpointError:
            continue  # a foreign or broken folder is not a candidate
    return sorted(found, key=lambda c: c.epoch)


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


def export(
    run_dir: str | Path,
    dest: str | Path,
    *,
    which: str = "best",
    replace: bool = False,
    pattern: str = "checkpoint_*",
    metric: str | None = None,
    mode: str | None = None,
) -> Path:
    """Copy a run's (or search's) chosen checkpoint to `dest`, a model-store folder, and verify the copy."""
    chosen = best_checkpoint(run_dir, which, pattern=pattern, metric=metric, mode=mode)
    checkpoint.load(chosen.path)  # checksums verified before anything is copied
    dest = Path(dest).expanduser().resolve()
    if dest.exists():
        if not replace:
            raise FileExistsError(f"{dest} already exists; pass --replace to swap it (the old one is kept)")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        shutil.copytree(chosen.path, tmp, dirs_exist_ok=True)
        checkpoint.load(tmp)  # the copy is verified too
        if dest.exists():
            os.replace(dest, dest.with_name(f"{dest.name}.replaced-{time.strftime('%Y%m%d-%H%M%S')}"))
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest
