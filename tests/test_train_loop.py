"""The training loop without Ray (genray.train.loop): the loop config Ray Train hands the
worker, the hooks, and what one in-process run leaves in its run folder."""

import ast
from pathlib import Path

import pytest

from genray import checkpoint
from genray.config import build_config
from genray.runs import RunDir
from genray.train.loop import Hooks, LoopConfig, Session, run_loop

from conftest import restored_from


def test_the_loop_module_imports_no_ray():
    import genray.train.loop as loop

    tree = ast.parse(Path(loop.__file__).read_text())
    modules = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    modules += [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert not [m for m in modules if m and m.split(".")[0] == "ray"], modules


def test_loop_config_round_trips_through_rays_dict(tmp_path):
    cfg = build_config("vae", overrides=["model.latent_dim=2"])
    config = LoopConfig(run=cfg, run_dir=RunDir(tmp_path, "r"), store="models", hooks=(Hooks(),))
    back = LoopConfig.from_dict(config.to_dict())
    assert back.run == cfg and back.run_dir == config.run_dir and back.store == "models"
    assert back.init_from is None and back.filesystem is None and len(back.hooks) == 1
    assert back.streamed_rows is None and back.tags == {}
    assert LoopConfig.from_dict({**config.to_dict(), "streamed_rows": 40}).streamed_rows == 40
    assert LoopConfig.from_dict({**config.to_dict(), "tags": {"genray.trial": "t1"}}).tags == {"genray.trial": "t1"}
    assert back.local_run_folder == tmp_path / "r"
    with pytest.raises(ValueError, match="expected keys"):
        LoopConfig.from_dict({**config.to_dict(), "run_uri": "x"})
    with pytest.raises(ValueError, match="required"):
        LoopConfig.from_dict({"run": cfg.to_dict()})


class Counter(Hooks):
    def __init__(self):
        self.calls = []

    def on_start(self, config, rank):
        self.calls.append(("start", rank))

    def before_step(self, epoch):
        self.calls.append(("step", round(epoch, 3)))

    def after_step(self, metrics):
        assert "loss" in metrics

    def on_epoch_end(self, epoch, metrics):
        self.calls.append(("epoch", epoch, "val_neg_elbo" in metrics))

    def on_end(self, config, rank):
        self.calls.append(("end", rank))


def test_an_in_process_run_calls_its_hooks_and_fills_its_folder(tmp_path):
    cfg = build_config("vae", overrides=["model.latent_dim=2", "data.limit=64", "train.batch_size=32",
                                         "train.epochs=2", "train.quality_every=0", "train.preview_every=0"])
    run = RunDir(tmp_path, "r")
    counter, session = Counter(), Session()
    run_loop(LoopConfig(run=cfg, run_dir=run, store=str(tmp_path / "models"), hooks=(counter,)), session)
    steps = [c[1] for c in counter.calls if c[0] == "step"]
    assert steps == [0.0, 0.5, 1.0, 1.5]  # 64 images * 0.9 train split -> 2 batches of 32 per epoch
    assert counter.calls[0] == ("start", 0) and counter.calls[-1] == ("end", 0)
    assert [c for c in counter.calls if c[0] == "epoch"] == [("epoch", 0, True), ("epoch", 1, True)]
    assert [r["epoch"] for r in session.reports] == [0, 1]
    assert [h["epoch"] for h in run.history()] == [0, 1]
    assert [c.epoch for c in run.checkpoints()] == [0, 1] and checkpoint.load(run.history()[1]["checkpoint"]).epoch == 1
    assert list(run.tensorboard.glob("events.out.tfevents.*"))


def test_a_restart_rebuilds_the_history_line_of_a_checkpoint_reported_just_before_the_worker_was_lost(tmp_path):
    """An epoch's history line is appended after its report stored the checkpoint: a worker lost in
    between leaves a checkpoint that history.jsonl lacks, and the restart writes that epoch's line
    from the checkpoint's own metrics, so the history has every epoch once."""
    overrides = ["model.latent_dim=2", "data.limit=64", "train.batch_size=32", "train.quality_every=0",
                 "train.preview_every=0"]
    run = RunDir(tmp_path, "r")
    run_loop(LoopConfig(run=build_config("vae", overrides=[*overrides, "train.epochs=2"]), run_dir=run,
                        store=str(tmp_path / "models")), Session())
    lost = run.history()[1]
    lines = run.history_file.read_text().splitlines(keepends=True)
    run.history_file.write_text(lines[0])  # epoch 1 reported (checkpoint stored), its line never written

    cfg = build_config("vae", overrides=[*overrides, "train.epochs=3"])
    run_loop(LoopConfig(run=cfg, run_dir=run, store=str(tmp_path / "models")), restored_from(run.checkpoints()[-1].path))
    history = run.history()
    assert [h["epoch"] for h in history] == [0, 1, 2]
    assert history[1]["checkpoint"] == lost["checkpoint"] == str(run.checkpoints()[1].path)
    assert history[1]["val_neg_elbo"] == pytest.approx(lost["val_neg_elbo"])
    assert history[1]["train_loss"] == pytest.approx(lost["train_loss"])


def test_an_in_process_run_reads_an_image_folder_and_records_its_shape(tmp_path):
    """Without Ray a folder of files is read into memory; the checkpoint records the images' shape."""
    import numpy as np
    from PIL import Image

    for label, name in enumerate(("a", "b")):
        (tmp_path / "pics" / name).mkdir(parents=True)
        for i in range(6):
            pixels = np.random.default_rng(10 * label + i).integers(0, 256, (20, 20, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / "pics" / name / f"{i}.png")
    cfg = build_config("ae", overrides=[f"data.source={tmp_path / 'pics'}", "data.image_size=16", "train.batch_size=4",
                                        "train.epochs=1", "train.quality_every=0", "train.preview_every=0"])
    run = RunDir(tmp_path, "files")
    session = Session()
    run_loop(LoopConfig(run=cfg, run_dir=run, store=str(tmp_path / "models")), session)
    assert "data_skipped" not in session.reports[0]  # only streamed sets count skipped files
    data = checkpoint.load(run.checkpoints()[-1].path, weights=False).config["data"]
    assert (data["image_size"], data["channels"], data["labels"], data["resize"]) == (16, 3, ["a", "b"], "crop")
