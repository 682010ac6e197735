"""train.precision and train.compile, on the CPU: bf16 autocast trains every family, fp16 is
refused without a GPU, and compiled networks train the VAE and the GAN."""

import pytest
import torch
from torch.utils.data import DataLoader

from genray.config import ConfigError, build_config
from genray.families import FAMILIES, get_family


def first_batch(family_cls, cfg, size=64):
    train, _ = family_cls.load_data(cfg.data)
    return next(iter(DataLoader(train, batch_size=size, collate_fn=family_cls.collate_fn)))


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_bf16_autocast_trains_every_family_and_lowers_its_loss(name):
    torch.manual_seed(0)
    cfg = build_config(name)
    family_cls = get_family(name)
    family = family_cls(cfg.model)
    family.set_precision("bf16")
    batch = first_batch(family_cls, cfg)
    family.train()
    losses = []
    for _ in range(15):
        with family.autocast():
            losses.append(family.train_step(batch, epoch=1.0)["loss"])
    assert all(torch.isfinite(torch.tensor(losses))), losses
    if not family.adversarial:
        assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3, f"loss did not decrease: {losses}"
    # The weights and the optimizers' state stay float32: only the forward passes ran in bf16.
    assert all(p.dtype == torch.float32 for net in family.nets.values() for p in net.parameters())


def test_the_forward_pass_runs_in_bf16_and_the_backward_pass_outside_autocast():
    family = get_family("vae")(build_config("vae").model)
    family.set_precision("bf16")
    seen = []
    net = next(iter(family.nets.values()))
    handle = net.register_forward_hook(lambda module, args, out: seen.append(torch.get_autocast_dtype("cpu")
                                                                             if torch.is_autocast_enabled("cpu")
                                                                             else None))
    batch = first_batch(get_family("vae"), build_config("vae"), size=16)
    with family.autocast():
        family.train_step(batch, epoch=1.0)
    handle.remove()
    assert seen and all(dtype == torch.bfloat16 for dtype in seen)


def test_fp16_is_refused_without_a_gpu_before_and_inside_a_worker():
    from genray.train.driver import check_precision

    cfg = build_config("vae", overrides=["train.precision=fp16"])
    with pytest.raises(ConfigError, match="fp16 needs GPUs"):
        check_precision(cfg, use_gpu=False)
    check_precision(cfg, use_gpu=True)
    with pytest.raises(ValueError, match="fp16 needs a CUDA GPU"):
        get_family("vae")(cfg.model).set_precision("fp16")
    with pytest.raises(ValueError, match="precision must be one of"):
        get_family("vae")(cfg.model).set_precision("fp8")


def test_a_family_that_cannot_be_compiled_is_refused_with_its_reason():
    from genray.train.driver import check_precision

    refusing = [name for name in FAMILIES if get_family(name).compile_unsupported]
    assert refusing, "no family says it cannot be compiled"
    cfg = build_config(refusing[0], overrides=["train.compile=true"])
    with pytest.raises(ConfigError, match=f"family {refusing[0]} cannot be compiled: "):
        check_precision(cfg, use_gpu=False)


@pytest.mark.parametrize("name", ["gan"])  # the vae: compiled through the loop, below
def test_compiled_networks_train_the_gan(name):
    torch.manual_seed(0)
    cfg = build_config(name)
    family_cls = get_family(name)
    family = family_cls(cfg.model)
    family.compile()
    assert all(hasattr(net, "_orig_mod") for net in family.train_nets.values())  # torch.compile's wrapper
    batch = first_batch(family_cls, cfg, size=32)
    family.train()
    losses = [family.train_step(batch, epoch=1.0)["loss"] for _ in range(6)]
    assert all(torch.isfinite(torch.tensor(losses))), losses
    if not family.adversarial:
        assert losses[-1] < losses[0], losses
    # What is saved is the plain modules' weights, without the compiled wrapper's prefix.
    assert not any("_orig_mod" in k for net in family.state_dict()["nets"].values() for k in net)


def test_the_loop_trains_a_run_at_bf16_through_compiled_networks(tmp_path):
    from conftest import train_in_process

    cfg = build_config("vae", overrides=[f"storage={tmp_path}", "name=bf16", "train.epochs=2", "data.limit=128",
                                         "train.precision=bf16", "train.compile=true", "train.quality_every=0",
                                         "train.preview_every=0", "train.workers=1"])
    run = train_in_process(cfg)
    history = run.history()
    assert [r["epoch"] for r in history] == [0, 1] and history[1]["train_loss"] < history[0]["train_loss"]
    assert all(torch.isfinite(torch.tensor(r["val_neg_elbo"])) for r in history)
    # The checkpoint holds the plain modules' weights, without the compiled wrapper's prefix.
    from genray import checkpoint

    nets = checkpoint.load(run.checkpoints()[-1].path).state["nets"]
    assert nets and not any("_orig_mod" in k for net in nets.values() for k in net)


# The reads of tensor values that genray's own code makes in a training step, by family, and
# why each is not a wait for a GPU.
HOST_READS = {
    "gcn": {"check"},  # the labels' range, on the host: to_device checks a batch before its copy
    # The solvers' time grids are checked and split on the host, and the adaptive solver's step
    # control waits for the device on every step anyway; latent_ode's train_step draws the
    # encoded length from the CPU generator.
    "latent_ode": {"train_step", "check_times", "latent_path"},
    "ode": {"check_times"},
    "unet": {"blur_fill"},  # stops early only when the image is on the CPU
}


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_a_train_step_leaves_its_metrics_on_the_device(name, monkeypatch):
    """No `.item()`, `float()`, `bool()` or `.tolist()` of a tensor in genray's code during a
    training step, except the host reads above: the loop reads the metrics once an epoch."""
    import sys

    reads = set()
    for attr in ("item", "__float__", "__int__", "__bool__", "tolist"):
        original = getattr(torch.Tensor, attr)

        def watched(self, *args, _original=original, **kwargs):
            caller = sys._getframe(1).f_code
            if "/genray/" in caller.co_filename:
                reads.add(caller.co_name)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, attr, watched)
    cfg = build_config(name)
    family_cls = get_family(name)
    family = family_cls(cfg.model)
    batch = family.to_device(first_batch(family_cls, cfg, size=16))
    family.train()
    reads.clear()
    step = family.train_step(batch, epoch=1.0)
    assert reads <= HOST_READS.get(name, set()), f"{name} reads tensors in {reads - HOST_READS.get(name, set())}"
    assert all(isinstance(v, float) or (isinstance(v, torch.Tensor) and v.dim() == 0 and not v.requires_grad)
               for v in step.values()), step


@pytest.mark.parametrize("name", ["vae", "gan", "unet"])
def test_channels_last_changes_the_layout_not_the_numbers(name):
    """What the loop and the image replicas do on CUDA, done on the CPU: conv weights and image
    batches in NHWC, and training that follows the same path as in NCHW."""
    # Dropout draws its mask in memory order, so it drops other units in NHWC: none here.
    cfg = build_config(name, overrides=["model.dropout=0"] if name == "gan" else [])
    family_cls = get_family(name)
    batch = first_batch(family_cls, cfg, size=16)
    losses = {}
    for layout in ("nchw", "nhwc"):
        torch.manual_seed(0)
        family = family_cls(cfg.model)
        if layout == "nhwc":
            assert family.use_channels_last()
            convs = [m for net in family.nets.values() for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
            assert convs and all(m.weight.is_contiguous(memory_format=torch.channels_last) for m in convs)
        moved = family.to_device(batch)
        memory_format = torch.channels_last if layout == "nhwc" else torch.contiguous_format
        assert moved[0].is_contiguous(memory_format=memory_format)
        family.train()
        torch.manual_seed(1)
        losses[layout] = [float(family.train_step(moved, epoch=1.0)["loss"]) for _ in range(3)]
    assert losses["nhwc"] == pytest.approx(losses["nchw"], rel=1e-4)
    # A family without 2-D convolutions keeps its layout.
    assert not get_family("charlm")(build_config("charlm").model).use_channels_last()
