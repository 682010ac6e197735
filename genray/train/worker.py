"""Ray Train glue: the function every Ray Train worker runs, and the session it gives the loop.

A run is the folder <storage>/<name> (genray.runs); starting a run again with the same storage
and name makes Ray Train hand the loop its latest checkpoint (Train V2). On S3, Ray Train
writes the checkpoints through the driver's pyarrow S3FileSystem (genray.storage).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import ray
import ray.train
import ray.train.torch
import torch
from ray.train import CheckpointUploadMode

from genray import telemetry
from genray.train.loop import LoopConfig, Session, run_loop


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """Runs on every Ray Train worker; `loop_config` is a LoopConfig.to_dict()."""
    config = LoopConfig.from_dict(loop_config)
    # The metrics classifier is cached in the driver's model store, wherever this worker runs.
    os.environ["GENRAY_STORE"] = config.store
    run_loop(config, RayTrainSession())


class RayTrainSession(Session):
    """The loop on a Ray Train worker: its rank, its device, DDP, reports to the controller."""

    def __init__(self):
        ctx = ray.train.get_context()
        self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()
        self.device = ray.train.torch.get_device()
        if self.world > 1:
            ids: list[str | None] = [None] * self.world
            torch.distributed.all_gather_object(ids, ray.get_runtime_context().get_node_id())
            self.nodes = len(set(ids))

    @contextmanager
    def restored_checkpoint(self) -> Iterator[str | None]:
        restored = ray.train.get_checkpoint()
        if restored is None:
            yield None
            return
        with restored.as_directory() as folder:
            yield folder

    def dataset_shard(self, name: str):
        return ray.train.get_dataset_shard(name)

    def wrap(self, net: torch.nn.Module) -> torch.nn.Module:
        # The all-reduce timed for genray_train_step_seconds{phase="allreduce"}
        return telemetry.time_allreduce(ray.train.torch.prepare_model(net, move_to_device=False))

    def report(self, metrics: dict[str, Any], run_folder: Path | None = None, checkpoint_name: str | None = None,
               write: Callable[[Path], Any] | None = None) -> None:
        # Every rank reports every epoch: ray.train.report is a barrier.
        if checkpoint_name is None:
            ray.train.report(metrics)
        else:
            report_with_checkpoint(metrics, checkpoint_name, run_folder, write)


def report_with_checkpoint(metrics: dict[str, Any], name: str, run_dir: Path | None,
                           write: Callable[[Path], Any]) -> None:
    """Rank 0's ray.train.report with the checkpoint `write(folder)` makes, named `name`.

    When the run's folder is on this machine's filesystem (`run_dir`, the folder Ray Train
    stores the run in), the checkpoint is written straight into it and reported where it lies
    (NO_UPLOAD): Ray Train's default would copy it there from a temporary folder after the
    report's barrier, with the other ranks already in their next epoch's first all-reduce,
    waiting for the copy. A folder of that name that is there already
    is an earlier attempt at this epoch that never reported (a restart from an older
    checkpoint): it is replaced. On S3, the checkpoint goes through a temporary folder and Ray
    Train uploads it."""
    if run_dir is not None:
        folder = run_dir / name
        if folder.exists():
            shutil.rmtree(folder)
        write(folder)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder), checkpoint_dir_name=name,
                         checkpoint_upload_mode=CheckpointUploadMode.NO_UPLOAD)
        return
    with tempfile.TemporaryDirectory() as tmp:
        write(Path(tmp) / "ckpt")
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(Path(tmp) / "ckpt"),
                         checkpoint_dir_name=name)
