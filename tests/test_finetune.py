"""Fine-tuning as config (train.finetune): init_from with a fresh head, a frozen base, the last
blocks unfrozen later at a lower learning rate; in process and through 2 Ray Train workers."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader

from genray import checkpoint
from genray.config import ConfigError, build_config
from genray.data import load_images
from genray.families import get_family

BASE = ["classifier.body.0", "classifier.body.3"]  # the conv base; the FC layers are the head
HEAD = ["classifier.body.8", "classifier.head"]
SMALL = ["model.channels=4", "model.features=16", "data.limit=64"]


def params(family) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in family.named_parameters()}


def under(name: str, prefix: str) -> bool:
    return name.startswith(prefix + ".")


def one_epoch(family, cfg) -> None:
    train, _ = load_images(cfg.data)
    family.train()
    for batch in DataLoader(train, batch_size=32):
        family.train_step(batch, 0.0)


def trained_checkpoint(path, overrides=(), steps_cfg=("data.classes=[0,1,2,3,4]",)):
    """A classifier trained for an epoch on digits 0-4 (in process), saved as a checkpoint."""
    torch.manual_seed(1)
    cfg = build_config("classifier", overrides=[*SMALL, *steps_cfg, *overrides])
    family = get_family("classifier")(cfg.model)
    one_epoch(family, cfg)
    checkpoint.save(path, family="classifier", config=cfg.to_dict(), state=family.state_dict(), epoch=0,
                    metrics={"val_acc": 0.5})
    return checkpoint.load(path)


def test_frozen_base_stays_unchanged_then_last_block_trains_at_the_lower_lr():
    cfg = build_config("classifier", overrides=[
        *SMALL, "model.lr=0.01", "train.finetune.freeze=base", "train.finetune.unfreeze_after_epochs=1",
        "train.finetune.unfreeze_blocks=1", "train.finetune.lr_after_unfreeze=0.0001"])
    ft = cfg.train.finetune
    family = get_family("classifier")(cfg.model)
    assert family.apply_finetune(ft, 0) and family.frozen == BASE
    before = params(family)
    one_epoch(family, cfg)
    after = params(family)
    for name in before:
        moved = not torch.equal(before[name], after[name])
        assert moved == any(under(name, h) for h in HEAD), name  # only the head trained

    # Epoch 1: the last block (the second conv block) trains again, at lr 1e-4.
    assert family.apply_finetune(ft, 1) and family.frozen == BASE[:1]
    assert not family.apply_finetune(ft, 1)  # nothing changes within the phase
    assert [g["lr"] for g in family.optimizers["classifier"].param_groups] == [1e-4]
    train, _ = load_images(cfg.data)
    family.train()
    family.train_step(next(iter(DataLoader(train, batch_size=32))), 1.0)
    stepped = params(family)
    for name in after:
        delta = (stepped[name] - after[name]).abs().max().item()
        if under(name, "classifier.body.0"):
            assert delta == 0, name
        elif under(name, "classifier.body.3"):
            # Adam's first step on a parameter moves each entry by at most lr.
            assert 0 < delta <= 1e-4 * 1.001, (name, delta)


def test_init_from_loads_matching_weights_with_a_fresh_head(tmp_path):
    source = trained_checkpoint(tmp_path / "src")
    theirs = source.state["nets"]["classifier"]
    cfg = build_config("classifier", overrides=[*SMALL, f"train.finetune.init_from={tmp_path / 'src'}"])
    torch.manual_seed(2)
    family = get_family("classifier")(cfg.model)
    fresh_head = family.nets["classifier"].head.weight.detach().clone()
    loaded = family.init_finetune(source.state, cfg.train.finetune)
    fresh = ("head.", "body.8.")
    assert sorted(loaded) == sorted(f"classifier.{k}" for k in theirs if not k.startswith(fresh))
    mine = family.nets["classifier"].state_dict()
    for k in theirs:
        assert torch.equal(mine[k], theirs[k]) == (not k.startswith(fresh)), k
    assert torch.equal(mine["head.weight"], fresh_head)

    keep = build_config("classifier", overrides=[*SMALL, "train.finetune.load_head=true"]).train.finetune
    family.init_finetune(source.state, keep)
    assert torch.equal(family.nets["classifier"].head.weight, theirs["head.weight"])

    # Nothing of the base matches a wider network: an error, not a silent no-op.
    wide = get_family("classifier")(build_config("classifier", overrides=["model.channels=8"]).model)
    with pytest.raises(ValueError, match="none of its tensors matches"):
        wide.init_finetune(source.state, cfg.train.finetune)


def test_schedule_errors_say_what_is_missing():
    with pytest.raises(ConfigError, match="unfreeze_after_epochs needs freeze: base"):
        build_config("classifier", overrides=["train.finetune.unfreeze_after_epochs=2"])
    with pytest.raises(ConfigError, match="lr_after_unfreeze needs unfreeze_after_epochs"):
        build_config("classifier", overrides=["train.finetune.freeze=base", "train.finetune.lr_after_unfreeze=0.1"])
    vae = build_config("vae", overrides=["train.finetune.freeze=base"])
    with pytest.raises(ValueError, match="cannot be fine-tuned"):
        get_family("vae")(vae.model).apply_finetune(vae.train.finetune, 0)


@pytest.mark.ray
def test_two_worker_ddp_finetune_with_augmentation(ray_session, tmp_path):
    """Train digits 5-9 from a 0-4 checkpoint on 2 gloo workers: the base frozen in epoch 0, its
    last block unfrozen from epoch 1 (a rebuilt DDP wrapper), augmented inputs throughout."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from genray.train import fit

    source = trained_checkpoint(tmp_path / "src").state["nets"]["classifier"]
    cfg = build_config("classifier", overrides=[
        *SMALL, "name=ft", f"storage={tmp_path / 'runs'}", "train.workers=2", "train.epochs=3",
        "train.batch_size=16", "train.quality_every=0", "train.preview_every=1", "train.keep_checkpoints=5",
        "data.classes=[5,6,7,8,9]", "data.augment.enabled=true",
        f"train.finetune.init_from={tmp_path / 'src'}", "train.finetune.freeze=base",
        "train.finetune.unfreeze_after_epochs=2", "train.finetune.lr_after_unfreeze=0.0005",
    ])
    summary = fit(cfg, verbose=False)
    assert [h["epoch"] for h in summary.history] == [0, 1, 2]
    # The ranks hold the same weights after every epoch, the unfreezing included.
    assert [h["param_rank_spread"] for h in summary.history] == [0.0, 0.0, 0.0]

    states = {checkpoint.load(c.path).epoch: checkpoint.load(c.path).state["nets"]["classifier"]
              for c in summary.run.checkpoints()}
    assert sorted(states) == [0, 1, 2]
    for k, theirs in source.items():
        frozen_until = {"body.0": 3, "body.3": 2, "body.8": 0, "head": 0}[k.rsplit(".", 1)[0]]
        for epoch, state in states.items():
            assert torch.equal(state[k], theirs) == (epoch < frozen_until), (k, epoch)

    events = EventAccumulator(str(summary.run_dir / "tensorboard"), size_guidance={"images": 0})
    events.Reload()
    assert len(events.Images("augment/inputs")) == 1  # once per run, from rank 0
