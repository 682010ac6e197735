"""genray.runs.RunDir on a local folder: naming and lookup, the stored config, history,
checkpoints. The same on S3 is in test_s3.py."""

import json

import pytest

from genray import checkpoint
from genray.checkpoint import CheckpointError
from genray.config import ConfigError, build_config
from genray.runs import RunDir, load_run_config, new_run, read_history
from genray.storage import Location

SMALL = ["model.latent_dim=2", "model.hidden=16", "model.channels=4"]


def test_names_and_lookup(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = RunDir("runs", "a")
    assert run.storage == Location(tmp_path / "runs") and run.location == Location(tmp_path / "runs" / "a")
    assert str(run) == str(tmp_path / "runs" / "a") and run.mirror == tmp_path / "runs" / "a"
    assert run.tensorboard == tmp_path / "runs" / "a" / "tensorboard" and not run.on_s3
    assert RunDir.at(tmp_path / "runs" / "a") == run and RunDir.at("runs/a") == run
    assert RunDir.find("s3://b/runs/a", "elsewhere") == RunDir("s3://b/runs", "a")
    assert RunDir.find("a", "runs") == run  # a name under the storage
    (tmp_path / "a").mkdir()  # a folder in the working directory of the same name
    assert RunDir.find("a", "runs") == RunDir(tmp_path, "a")
    assert RunDir.find("a", "runs", marker="genray.yaml") == run  # it is no run: no genray.yaml


def test_a_run_stores_its_config_and_resumes_from_it(tmp_path):
    cfg = build_config("vae", overrides=[*SMALL, f"storage={tmp_path}"])
    named, run = new_run(cfg, resume=False)
    assert named.name.startswith("vae-") and run == RunDir(tmp_path, named.name) and run.exists()
    assert run.read_config()["model"]["latent_dim"] == 2
    with pytest.raises(ConfigError, match="already exists"):
        new_run(named, resume=False)
    assert new_run(named, resume=True)[1] == run

    for how, storage in [(named.name, str(tmp_path)), (str(run.location), str(tmp_path / "other"))]:
        again = load_run_config(how, storage, ["train.epochs=7"])
        assert again.train.epochs == 7 and again.storage == str(tmp_path) and again.model.latent_dim == 2
    with pytest.raises(ConfigError, match="only train"):
        load_run_config(named.name, str(tmp_path), ["model.latent_dim=3"])
    with pytest.raises(ConfigError, match="no run 'nope'"):
        load_run_config("nope", str(tmp_path))


def test_history_checkpoints_and_searches(tmp_path):
    run = RunDir(tmp_path, "r")
    with pytest.raises(CheckpointError, match="run folder not found"):
        run.checkpoints()
    assert run.history() == [] and read_history(run.location) == []
    run.history_file.write_text("".join(json.dumps({"epoch": e}) + "\n" for e in range(3)))
    assert [h["epoch"] for h in read_history(str(run.location))] == [0, 1, 2]

    cfg = build_config("vae", overrides=SMALL)
    from genray.families import get_family

    state = get_family("vae")(cfg.model).state_dict()
    for epoch, value in [(0, 3.0), (1, 1.0), (2, 2.0)]:
        checkpoint.save(run.location.path / f"checkpoint_epoch{epoch:05d}", family="vae", config=cfg.to_dict(),
                        state=state, epoch=epoch, metrics={"val_neg_elbo": value})
    (run.location.path / "checkpoint_broken").mkdir()  # no manifest: not a candidate
    assert [c.epoch for c in run.checkpoints()] == [0, 1, 2]
    assert run.best_checkpoint().epoch == 1 and run.best_checkpoint("latest").epoch == 2
    assert run.best_checkpoint(metric="val_neg_elbo", mode="max").epoch == 0
    with pytest.raises(CheckpointError, match="reports nope"):
        run.best_checkpoint(metric="nope")
    run.update_mirror()  # a local run is its own mirror: nothing to copy

    search = RunDir(tmp_path, "s")
    with pytest.raises(CheckpointError, match="is not a genray search"):
        search.search_spec()
    search.search_spec_file.write_text(json.dumps({"metric": "m", "mode": "min"}))
    assert search.search_spec() == {"metric": "m", "mode": "min"}
