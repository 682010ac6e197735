"""Every image family built for images other than the default 1x28x28 digits (colour, other
sides, with or without labels), without Ray: a train step, evaluation, preview, inference shapes
and a checkpoint round trip through the run config's data section; and the default digits'
networks kept exactly as their checkpoints hold them."""

import math

import pytest
import torch

from genray import checkpoint
from genray.config import build_config
from genray.data.images import ImageSpec
from genray.families import get_family
from genray.families.convnets import Stages, num_stages
from genray.families.gan import moment_mse

SHAPES = ["triangle", "square", "circle"]
# The data sections under test, as a run config names them (resolve() fills in the digits' own).
DATA = {
    "rgb64_labelled": {"image_size": 64, "channels": 3, "labels": SHAPES},
    "rgb32_unlabelled": {"image_size": 32, "channels": 3, "labels": []},
    "grey16_digits": {"image_size": 16, "channels": 1},
}
# Narrow widths: each step takes milliseconds even at 64x64.
SMALL = {
    "vae": {"latent_dim": 4, "channels": 8, "hidden": 32},
    "ae": {"latent_dim": 4, "channels": 8, "hidden": 32, "noise": "masking", "noise_level": 0.3},
    "gan": {"latent_dim": 8, "channels": 8},
    "cvae": {"latent_dim": 4, "channels": 8, "hidden": 32},
    "vaegan": {"latent_dim": 8, "channels": 8, "hidden": 32},
    "aae": {"latent_dim": 4, "channels": 8, "hidden": 32, "disc_hidden": 32},
    "classifier": {"channels": 8, "features": 16},
}
NEEDS_LABELS = {"cvae", "classifier"}
CASES = [(name, images) for name in SMALL for images in DATA if not (name in NEEDS_LABELS and "unlabelled" in images)]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Small nets: a second intra-op thread only adds synchronisation on a shared machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def build(name: str, data: dict, model: dict | None = None):
    """(the run config, the family built for its data) as the training loop builds them."""
    cfg = build_config(name, base={"model": SMALL[name] if model is None else model, "data": data})
    family_cls = get_family(name)
    return cfg, family_cls(cfg.model, spec=family_cls.spec_of(cfg.data))


def batch(spec: ImageSpec, n: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random images (n, C, S, S) in [0, 1] and labels of spec's classes (zeros when unlabelled)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(n, *spec.shape, generator=gen), torch.randint(max(1, spec.num_classes), (n,), generator=gen)


def in_unit_range(images: torch.Tensor) -> bool:
    return 0.0 <= images.min().item() and images.max().item() <= 1.0


def check_inference(family, x: torch.Tensor, y: torch.Tensor) -> None:
    """Every capability the family declares answers images of its spec's shape."""
    shape, caps, n = family.spec.shape, family.capabilities, len(x)
    if "sample" in caps:
        images = family.sample(3, seed=0)
        assert images.shape == (3, *shape) and in_unit_range(images)
        assert torch.equal(images, family.sample(3, seed=0))
    if "sample_digit" in caps:
        images = family.sample(int(y[0]), 3, seed=0)
        assert images.shape == (3, *shape) and in_unit_range(images)
    if "encode" in caps:
        codes = family.encode(x)
        mu = codes[0] if isinstance(codes, tuple) else codes
        assert mu.shape == (n, family.cfg.latent_dim)
        if "decode" in caps:
            assert family.decode(mu).shape == x.shape
    if "reconstruct" in caps:
        assert family.reconstruct(x).shape == x.shape
    if "denoise" in caps:
        noisy, clean = family.denoise(x, add_noise=True, seed=0)
        assert noisy.shape == clean.shape == x.shape and in_unit_range(clean)
    if "interpolate" in caps:
        assert family.interpolate(x[0], x[1], 4).shape == (4, *shape)
    if "style_transfer" in caps:
        assert family.style_transfer(x, y, (y + 1) % family.spec.num_classes).shape == x.shape
    if family.name == "classifier":
        assert family.predict_proba(x).shape == (n, family.spec.num_classes)
        # Fine-tuning's blocks are the conv stages: four at 64x64, two at 28x28 and 16x16.
        assert len(family.parts().blocks) == {64: 4, 32: 3, 16: 2}[family.spec.size]
    drawn = family.quality_samples(5, seed=0)
    if drawn is not None:
        assert drawn[0].shape == (5, *shape)


@pytest.mark.parametrize("name,images", CASES)
def test_family_trains_evaluates_serves_and_round_trips(name, images, tmp_path):
    torch.manual_seed(0)
    cfg, family = build(name, DATA[images])
    spec = cfg.data.spec()
    assert family.spec == spec
    x, y = batch(spec)
    before = {k: [p.detach().clone() for p in net.parameters()] for k, net in family.nets.items()}

    family.train()
    for step in range(2):
        out = family.train_step((x, y), epoch=0.5 * step)
        assert all(math.isfinite(v) for v in out.values()), out
    for k, net in family.nets.items():
        assert any(not torch.equal(a, b) for a, b in zip(before[k], net.parameters())), f"{k} was not trained"

    family.eval()
    metrics = family.eval_batch((x, y))
    assert metrics and all(math.isfinite(v) for v in metrics.values()), metrics
    metric = type(family).metric_for(cfg.data)
    assert metric in metrics or metric.startswith("sample_"), f"{metric} is neither reported nor measured"
    previews = family.preview((x, y))
    for tag, images in previews.items():
        assert images.shape[1:] == spec.shape and in_unit_range(images), tag
    check_inference(family, x, y)

    path = checkpoint.save(tmp_path / "ckpt", family=name, config=cfg.to_dict(), state=family.state_dict(),
                           epoch=1, metrics=metrics)
    restored, ckpt = checkpoint.load_family(path)
    assert ckpt.config["data"]["image_size"] == spec.size and restored.spec == spec
    for k, net in family.nets.items():
        theirs = restored.nets[k].state_dict()
        assert all(torch.equal(t, theirs[p]) for p, t in net.state_dict().items()), k
    for tag, images in restored.preview((x, y)).items():
        assert torch.allclose(images, previews[tag]), tag


def test_the_number_of_stages_follows_the_side_and_the_width_is_capped():
    assert [num_stages(s) for s in (16, 20, 28, 32, 64, 100, 256)] == [2, 2, 2, 3, 4, 2, 6]
    # 28 -> 14 -> 7: the default digits' two stages, c and 2c wide.
    digits = Stages.of(ImageSpec(), 32)
    assert digits.widths == (32, 64) and digits.bottom == (64, 7, 7) and digits.features == 3136
    big = Stages.of(ImageSpec(channels=3, size=256, labels=None), 32)
    assert big.widths == (32, 64, 128, 256, 256, 256) and big.bottom == (256, 4, 4)
    with pytest.raises(ValueError, match="side must be even and >= 8"):
        Stages.of(ImageSpec(size=6), 32)


def test_64x64_rgb_models_at_default_width_stay_small():
    """The width cap keeps a default 64x64 RGB model within a few million parameters (a dense
    layer over an uncapped 8x8x512 map would alone take 8M)."""
    rgb64 = {"image_size": 64, "channels": 3, "labels": SHAPES}
    assert build("gan", rgb64, model={})[1].num_parameters() < 3_000_000  # G, D and the averaged G
    assert build("vae", rgb64, model={})[1].num_parameters() < 4_000_000


def test_masking_noise_drops_whole_pixels_of_colour_images():
    from genray.families.ae import corrupt

    x = torch.full((2, 3, 16, 16), 0.5)
    masked = corrupt(x, "masking", 0.25, torch.Generator().manual_seed(0))
    dropped = (masked == 0).all(dim=1)  # (B, H, W): every channel of a dropped pixel is zero
    assert ((masked == 0).any(dim=1) == dropped).all()
    assert (dropped.flatten(1).sum(1) == 64).all()  # round(0.25 * 256) pixels per image


def test_moment_mse_pools_large_images_and_keeps_small_ones_as_they_are():
    gen = torch.Generator().manual_seed(0)
    a, b = torch.rand(16, 1, 28, 28, generator=gen), torch.rand(16, 1, 28, 28, generator=gen)
    fa, fb = a.flatten(1).double(), b.flatten(1).double()
    ca, cb = torch.cov(fa.T), torch.cov(fb.T)
    exact = (fa.mean(0) - fb.mean(0)).pow(2).mean() + (ca - cb).pow(2).mean()
    assert moment_mse(a, b).item() == pytest.approx(exact.item(), rel=1e-9)
    big_a, big_b = torch.rand(8, 3, 64, 64, generator=gen), torch.rand(8, 3, 64, 64, generator=gen)
    pooled = moment_mse(torch.nn.functional.adaptive_avg_pool2d(big_a, 18),
                        torch.nn.functional.adaptive_avg_pool2d(big_b, 18))
    assert moment_mse(big_a, big_b).item() == pytest.approx(pooled.item())  # 3x18x18 = 972 values
    assert moment_mse(big_a, big_a).item() == 0.0


@pytest.mark.parametrize("name", sorted(NEEDS_LABELS))
def test_families_that_need_labels_refuse_unlabelled_images(name):
    with pytest.raises(ValueError, match=f"{name} needs labelled images .* no labels \\(data.labels is empty\\)"):
        build(name, DATA["rgb32_unlabelled"])
    with pytest.raises(ValueError, match=r"the data has one class \(data.labels = \['cat'\]\)"):
        build(name, {"image_size": 32, "channels": 3, "labels": ["cat"]})


def test_cvae_draws_the_datas_classes():
    _, family = build("cvae", DATA["rgb64_labelled"])
    family.eval()
    assert family.sample(2, 1, seed=0).shape == (1, 3, 64, 64)
    with pytest.raises(ValueError, match=r"label must be in 0..2 \(the data's 3 classes\), got 3"):
        family.sample(3, 1)
    _, wanted = family.quality_samples(7, seed=0)
    assert wanted.tolist() == [0, 1, 2, 0, 1, 2, 0]


@pytest.mark.parametrize("name", ["gan", "vaegan"])
def test_sample_quality_families_fall_back_to_a_reported_metric_on_unlabelled_data(name):
    family_cls = get_family(name)
    assert family_cls.metric_for(build_config(name).data) == "sample_fid"
    assert family_cls.metric_for(build_config(name, base={"data": DATA["rgb64_labelled"]}).data) == "sample_fid"
    unlabelled = build_config(name, base={"data": DATA["rgb32_unlabelled"]}).data
    assert family_cls.metric_for(unlabelled) == "val_moment_mse"


# What the default digits' networks hold, name by name: checkpoints written before the networks
# followed the data's ImageSpec must keep loading, so the default networks keep these exactly.
DIGITS_STATE = {
    "vae": {
        "vae.trunk.0.weight": (32, 1, 4, 4), "vae.trunk.0.bias": (32,), "vae.trunk.2.weight": (64, 32, 4, 4),
        "vae.trunk.2.bias": (64,), "vae.trunk.5.weight": (256, 3136), "vae.trunk.5.bias": (256,),
        "vae.to_mu.weight": (8, 256), "vae.to_mu.bias": (8,), "vae.to_logvar.weight": (8, 256),
        "vae.to_logvar.bias": (8,), "vae.decoder.0.weight": (256, 8), "vae.decoder.0.bias": (256,),
        "vae.decoder.2.weight": (3136, 256), "vae.decoder.2.bias": (3136,),
        "vae.decoder.5.weight": (64, 32, 4, 4), "vae.decoder.5.bias": (32,),
        "vae.decoder.7.weight": (32, 1, 4, 4), "vae.decoder.7.bias": (1,),
    },
    "ae": {
        "ae.trunk.0.weight": (32, 1, 4, 4), "ae.trunk.0.bias": (32,), "ae.trunk.2.weight": (64, 32, 4, 4),
        "ae.trunk.2.bias": (64,), "ae.trunk.5.weight": (256, 3136), "ae.trunk.5.bias": (256,),
        "ae.to_code.weight": (16, 256), "ae.to_code.bias": (16,), "ae.decoder.0.weight": (256, 16),
        "ae.decoder.0.bias": (256,), "ae.decoder.2.weight": (3136, 256), "ae.decoder.2.bias": (3136,),
        "ae.decoder.5.weight": (64, 32, 4, 4), "ae.decoder.5.bias": (32,),
        "ae.decoder.7.weight": (32, 1, 4, 4), "ae.decoder.7.bias": (1,),
    },
    "cvae": {
        "cvae.trunk.0.weight": (32, 1, 4, 4), "cvae.trunk.0.bias": (32,),
        "cvae.trunk.2.weight": (64, 32, 4, 4), "cvae.trunk.2.bias": (64,), "cvae.trunk.5.weight": (256, 3136),
        "cvae.trunk.5.bias": (256,), "cvae.merge.0.weight": (256, 266), "cvae.merge.0.bias": (256,),
        "cvae.to_mu.weight": (8, 256), "cvae.to_mu.bias": (8,), "cvae.to_logvar.weight": (8, 256),
        "cvae.to_logvar.bias": (8,), "cvae.decoder.0.weight": (256, 18), "cvae.decoder.0.bias": (256,),
        "cvae.decoder.2.weight": (3136, 256), "cvae.decoder.2.bias": (3136,),
        "cvae.decoder.5.weight": (64, 32, 4, 4), "cvae.decoder.5.bias": (32,),
        "cvae.decoder.7.weight": (32, 1, 4, 4), "cvae.decoder.7.bias": (1,),
    },
    "gan": {
        "generator.net.0.weight": (3136, 32), "generator.net.2.weight": (64,), "generator.net.2.bias": (64,),
        "generator.net.2.running_mean": (64,), "generator.net.2.running_var": (64,),
        "generator.net.2.num_batches_tracked": (), "generator.net.4.weight": (64, 32, 4, 4),
        "generator.net.5.weight": (32,), "generator.net.5.bias": (32,), "generator.net.5.running_mean": (32,),
        "generator.net.5.running_var": (32,), "generator.net.5.num_batches_tracked": (),
        "generator.net.7.weight": (32, 1, 4, 4), "generator.net.7.bias": (1,),
        "discriminator.net.0.weight": (32, 1, 4, 4), "discriminator.net.0.bias": (32,),
        "discriminator.net.3.weight": (64, 32, 4, 4), "discriminator.net.3.bias": (64,),
        "discriminator.net.8.weight": (1, 3136), "discriminator.net.8.bias": (1,),
    },
    "vaegan": {
        "encoder.trunk.0.weight": (32, 1, 4, 4), "encoder.trunk.0.bias": (32,),
        "encoder.trunk.2.weight": (64, 32, 4, 4), "encoder.trunk.2.bias": (64,),
        "encoder.trunk.5.weight": (256, 3136), "encoder.trunk.5.bias": (256,),
        "encoder.to_mu.weight": (16, 256), "encoder.to_mu.bias": (16,), "encoder.to_logvar.weight": (16, 256),
        "encoder.to_logvar.bias": (16,), "decoder.net.0.weight": (3136, 16), "decoder.net.2.weight": (64,),
        "decoder.net.2.bias": (64,), "decoder.net.2.running_mean": (64,), "decoder.net.2.running_var": (64,),
        "decoder.net.2.num_batches_tracked": (), "decoder.net.4.weight": (64, 32, 4, 4),
        "decoder.net.5.weight": (32,), "decoder.net.5.bias": (32,), "decoder.net.5.running_mean": (32,),
        "decoder.net.5.running_var": (32,), "decoder.net.5.num_batches_tracked": (),
        "decoder.net.7.weight": (32, 1, 4, 4), "decoder.net.7.bias": (1,),
        "discriminator.features.0.weight": (32, 1, 4, 4), "discriminator.features.0.bias": (32,),
        "discriminator.features.2.weight": (64, 32, 4, 4), "discriminator.features.2.bias": (64,),
        "discriminator.head.1.weight": (1, 3136), "discriminator.head.1.bias": (1,),
    },
    "aae": {
        "encoder.net.0.weight": (32, 1, 4, 4), "encoder.net.0.bias": (32,),
        "encoder.net.2.weight": (64, 32, 4, 4), "encoder.net.2.bias": (64,),
        "encoder.net.5.weight": (256, 3136), "encoder.net.5.bias": (256,), "encoder.net.7.weight": (8, 256),
        "encoder.net.7.bias": (8,), "decoder.net.0.weight": (256, 8), "decoder.net.0.bias": (256,),
        "decoder.net.2.weight": (3136, 256), "decoder.net.2.bias": (3136,),
        "decoder.net.5.weight": (64, 32, 4, 4), "decoder.net.5.bias": (32,),
        "decoder.net.7.weight": (32, 1, 4, 4), "decoder.net.7.bias": (1,),
        "discriminator.net.0.weight": (256, 8), "discriminator.net.0.bias": (256,),
        "discriminator.net.2.weight": (256, 256), "discriminator.net.2.bias": (256,),
        "discriminator.net.4.weight": (1, 256), "discriminator.net.4.bias": (1,),
    },
    "classifier": {
        "classifier.body.0.weight": (32, 1, 3, 3), "classifier.body.0.bias": (32,),
        "classifier.body.3.weight": (64, 32, 3, 3), "classifier.body.3.bias": (64,),
        "classifier.body.8.weight": (64, 3136), "classifier.body.8.bias": (64,),
        "classifier.head.weight": (10, 64), "classifier.head.bias": (10,),
    },
}


@pytest.mark.parametrize("name", sorted(DIGITS_STATE))
def test_the_default_digits_networks_keep_their_names_and_shapes(name):
    family = get_family(name)({})
    state = {f"{k}.{p}": tuple(t.shape) for k, net in family.nets.items() for p, t in net.state_dict().items()}
    expected = dict(DIGITS_STATE[name])
    if name == "gan":  # the averaged generator is a copy of the generator
        expected.update({k.replace("generator.", "generator_ema.", 1): v for k, v in expected.items()
                         if k.startswith("generator.")})
    assert state == expected
