import json

import pytest
import torch

from genray import checkpoint
from genray.checkpoint import CheckpointError
from genray.config import build_config
from genray.runs import RunDir
from genray.store import export


def save(path, epoch, value, cfg=None):
    cfg = cfg or build_config("vae", overrides=["model.latent_dim=2", "model.hidden=16", "model.channels=4"])
    from genray.families import get_family

    family = get_family("vae")(cfg.model)
    return checkpoint.save(path, family="vae", config=cfg.to_dict(), state=family.state_dict(),
                           epoch=epoch, metrics={"val_neg_elbo": value})


def test_manifest_describes_the_checkpoint(tmp_path):
    path = save(tmp_path / "c", 4, 123.0)
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["family"] == "vae" and manifest["epoch"] == 4
    assert manifest["config"]["model"]["latent_dim"] == 2
    assert manifest["files"]["weights.pt"] == checkpoint.sha256(path / "weights.pt")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temporary folder left behind"


def test_refuses_to_overwrite(tmp_path):
    save(tmp_path / "c", 0, 1.0)
    with pytest.raises(CheckpointError, match="refusing to overwrite"):
        save(tmp_path / "c", 1, 1.0)


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete"])
def test_corruption_is_detected_naming_the_file(tmp_path, damage):
    path = save(tmp_path / "c", 0, 1.0)
    weights = path / "weights.pt"
    data = weights.read_bytes()
    if damage == "truncate":
        weights.write_bytes(data[: len(data) // 2])
    elif damage == "flip":
        weights.write_bytes(data[:100] + bytes([data[100] ^ 0xFF]) + data[101:])
    else:
        weights.unlink()
    with pytest.raises(CheckpointError, match="weights.pt"):
        checkpoint.load(path)


def test_not_a_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="manifest.json is missing"):
        checkpoint.load(tmp_path)


def test_export_picks_the_best_and_keeps_replaced_models(tmp_path):
    run = tmp_path / "run"
    for epoch, value in [(0, 300.0), (1, 250.0), (2, 260.0)]:
        save(run / f"checkpoint_epoch{epoch:05d}", epoch, value)
    assert RunDir.at(run).best_checkpoint().epoch == 1
    assert RunDir.at(run).best_checkpoint("latest").epoch == 2
    dest = export(run, tmp_path / "models" / "vae")
    assert checkpoint.load(dest).epoch == 1
    with pytest.raises(FileExistsError, match="--replace"):
        export(run, dest)
    export(run, dest, which="latest", replace=True)
    assert checkpoint.load(dest).epoch == 2
    kept = [p for p in dest.parent.iterdir() if p.name.startswith("vae.replaced-")]
    assert len(kept) == 1 and checkpoint.load(kept[0]).epoch == 1


def test_export_refuses_a_corrupted_best(tmp_path):
    run = tmp_path / "run"
    path = save(run / "checkpoint_epoch00000", 0, 1.0)
    (path / "weights.pt").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        export(run, tmp_path / "models" / "vae")
    assert not (tmp_path / "models" / "vae").exists()


def test_state_round_trip_restores_optimizer(tmp_path):
    from genray.families import get_family

    cfg = build_config("vae", overrides=["model.latent_dim=2", "model.hidden=16", "model.channels=4"])
    family = get_family("vae")(cfg.model)
    family.train_step((torch.rand(8, 1, 28, 28), torch.zeros(8, dtype=torch.long)), epoch=1.0)
    path = checkpoint.save(tmp_path / "c", family="vae", config=cfg.to_dict(), state=family.state_dict(),
                           epoch=0, metrics={})
    other = get_family("vae")(cfg.model)
    other.load_state_dict(checkpoint.load(path).state)
    assert other.optimizers["vae"].state_dict()["state"][0]["step"] == 1


def test_rank_zero_writes_a_local_checkpoint_in_place_and_replaces_an_unreported_attempt(tmp_path, monkeypatch):
    import ray.train
    from ray.train import CheckpointUploadMode

    from genray.train import report_with_checkpoint

    reports = []

    def report(metrics, **kw):  # what Ray Train would persist must be complete when report is called
        reports.append((kw["checkpoint_dir_name"], kw.get("checkpoint_upload_mode", CheckpointUploadMode.SYNC),
                        kw["checkpoint"].path, checkpoint.load(kw["checkpoint"].path, weights=False).epoch))

    monkeypatch.setattr(ray.train, "report", report)
    run_dir = tmp_path / "run"
    stale = run_dir / "checkpoint_epoch00003"
    stale.mkdir(parents=True)
    (stale / "weights.pt").write_bytes(b"half of an earlier attempt")
    report_with_checkpoint({"loss": 1.0}, "checkpoint_epoch00003", run_dir, lambda folder: save(folder, 3, 1.0))
    [(name, mode, path, epoch)] = reports
    assert (name, mode, epoch) == ("checkpoint_epoch00003", CheckpointUploadMode.NO_UPLOAD, 3)
    assert path == str(stale) and checkpoint.load(stale).epoch == 3  # the stale files are gone, checksums hold

    # No local run folder (S3): through a temporary folder, uploaded by Ray Train.
    report_with_checkpoint({"loss": 1.0}, "checkpoint_epoch00004", None, lambda folder: save(folder, 4, 1.0))
    name, mode, path, epoch = reports[-1]
    assert (name, mode, epoch) == ("checkpoint_epoch00004", CheckpointUploadMode.SYNC, 4)
    assert not str(path).startswith(str(run_dir))
