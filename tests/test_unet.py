"""The UNet: masks, the digits and photo data, a folder of the user's RGB images, the generated
shapes, the baselines (mean and blur fill, Otsu) on cases with exact answers, the skip
connections, beating the baselines after a little training (inpainting; segmentation), task and
data mismatches, grey and RGB requests to the deployment's math, and the train -> export -> Serve
path with its request checks."""

import base64
import io

import numpy as np
import pytest
import requests
import torch
from PIL import Image
from pydantic import ValidationError

from conftest import train_in_process

from genray.config import ConfigError, build_config
from genray.data import DataError
from genray.data.inpaint import InpaintDataConfig, load_inpaint, photo_parts, random_mask
from genray.data.shapes import ShapesConfig, colour_shapes, draw_shapes, load_shapes
from genray.deploy.common import BadRequest
from genray.deploy.unet import InpaintRequest, SegmentRequest, UNetDeployment, inpaint_image, segment_image
from genray.families import get_family
from genray.families.unet import (UNet, UNetConfig, blur_fill, iou, masked_mse, mean_fill, otsu_segment,
                                  otsu_threshold, segment_loss)
from genray.images import save_png


def png(array) -> str:
    buf = io.BytesIO()
    Image.fromarray((np.asarray(array) * 255).round().astype(np.uint8)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


# --- masks and data ----------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["rect", "stroke", "mixed"])
def test_masks_are_binary_seeded_and_sized(kind):
    gen = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    masks = [random_mask(28, 28, kind, 0.25, 0.5, gen()) for _ in range(2)]
    assert torch.equal(masks[0], masks[1])  # the same seed, the same hole
    m = masks[0]
    assert m.shape == (1, 28, 28) and set(m.unique().tolist()) <= {0.0, 1.0}
    assert 0.02 < m.mean() < 0.5
    if kind == "rect":
        rows, cols = m[0].any(1).nonzero().flatten(), m[0].any(0).nonzero().flatten()
        assert 7 <= len(rows) <= 14 and 7 <= len(cols) <= 14  # sides 0.25..0.5 of 28
        assert m.sum() == len(rows) * len(cols)  # one filled rectangle


def test_digits_and_photo_patches_load_with_fresh_train_and_fixed_val_masks():
    train, val = load_inpaint(InpaintDataConfig(limit=40, val_limit=20))
    assert len(train) == 40 and len(val) == 20
    x, m = train[0]
    assert x.shape == m.shape == (1, 28, 28)
    torch.manual_seed(0)
    first = torch.stack([train[i][1] for i in range(10)])
    assert not torch.equal(first, torch.stack([train[i][1] for i in range(10)]))  # drawn on every read
    assert torch.equal(val[3][1], val[3][1])
    _, again = load_inpaint(InpaintDataConfig(limit=40, val_limit=20))
    assert torch.equal(val.masks, again.masks)  # the same holes every epoch and every run

    parts, pval = photo_parts()
    assert [p.shape for p in parts] == [(1, 427, 512), (1, 427, 512)]  # the left 80% of each photo
    assert pval.shape == (464, 1, 28, 28) and 0.0 <= pval.min() and pval.max() <= 1.0
    photos, _ = load_inpaint(InpaintDataConfig(source="photos", photo_crops=64))
    crops = torch.stack([photos[i][0] for i in range(64)])
    assert len(photos) == 64 and crops.shape == (64, 1, 28, 28)
    assert len({round(c.sum().item(), 3) for c in crops}) > 60  # a fresh random crop every read
    both, _ = load_inpaint(InpaintDataConfig(source="both", photo_crops=500))
    assert len(both) == 500 + 1438
    limited, _ = load_inpaint(InpaintDataConfig(source="both", photo_crops=500, limit=100))
    assert len(limited) == 100
    with pytest.raises(ConfigError, match="min_size must be <= max_size"):
        build_config("unet", overrides=["data.min_size=0.6", "data.max_size=0.5"])


def test_colour_photos_and_digits_load_in_three_channels():
    parts, pval = photo_parts(channels=3)
    assert [p.shape for p in parts] == [(3, 427, 512), (3, 427, 512)] and pval.shape == (464, 3, 28, 28)
    luma = (pval * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
    assert torch.allclose(luma, photo_parts()[1], atol=1e-5)  # the grey patches are the colour ones' luma
    train, val = load_inpaint(InpaintDataConfig(source="both", channels=3, photo_crops=8, limit=16, val_limit=8))
    digit, crop = train[0][0], train[len(train) - 1][0]
    assert digit.shape == crop.shape == (3, 28, 28) and train[0][1].shape == (1, 28, 28)
    assert torch.equal(digit[0], digit[2])  # a digit is grey in three channels
    assert val.images.shape == (8, 3, 28, 28) and val.masks.shape == (8, 1, 28, 28)
    with pytest.raises(ConfigError, match="source shapes makes grey images for segmentation: channels must be 1"):
        build_config("unet", overrides=["data.source=shapes", "data.channels=3"])


def test_rgb_inpainting_trains_keeps_known_pixels_and_round_trips(tmp_path):
    from genray import checkpoint

    torch.manual_seed(0)
    cfg = build_config("unet", overrides=["data.source=both", "data.channels=3", "data.limit=16",
                                          "data.val_limit=8", "data.photo_crops=8", "model.channels=4"])
    family_cls = get_family("unet")
    family = family_cls(cfg.model, spec=family_cls.spec_of(cfg.data))
    net = family.nets["unet"]
    assert net.down[0][0].in_channels == 4 and net.head.out_channels == 3  # [R, G, B, mask] -> RGB
    train, val = family.load_data(cfg.data)
    batch = next(iter(torch.utils.data.DataLoader(train, batch_size=8, shuffle=True)))
    assert torch.isfinite(torch.tensor(family.train_step(batch, 0.0)["loss"]))
    family.eval()
    image, mask = next(iter(torch.utils.data.DataLoader(val, batch_size=8)))
    metrics = family.eval_batch((image, mask))
    assert metrics["val_loss"] == metrics["val_masked_mse"] and all(v == v for v in metrics.values())
    filled = family.inpaint(image, mask)
    assert filled.shape == image.shape
    known = (mask == 0).expand_as(image)
    assert torch.equal(filled[known], image[known])
    assert family.preview((image, mask))["inpainting"].shape == (24, 3, 28, 28)
    path = checkpoint.save(tmp_path / "ckpt", family="unet", config=cfg.to_dict(), state=family.state_dict(),
                           epoch=1, metrics=metrics)
    restored, _ = checkpoint.load_family(path)
    assert restored.spec.channels == 3 and torch.equal(restored.inpaint(image, mask), filled)


def rgb_folder(root, n: int = 24, size: int = 32) -> torch.Tensor:
    """n generated RGB PNGs (size x size) in one subfolder per shape kind under `root`; their
    pixels as read back, (n, 3, size, size) on the 1/255 grid."""
    images, labels = colour_shapes(n, size, seed=1)
    for i, (image, label) in enumerate(zip(images, labels)):
        (root / f"kind{int(label)}").mkdir(parents=True, exist_ok=True)
        save_png(image, root / f"kind{int(label)}" / f"{i:02d}.png")
    return (images * 255).round() / 255


def test_a_folder_of_rgb_images_trains_an_rgb_unet_whose_loss_covers_only_the_holes(tmp_path):
    folder = tmp_path / "mine"
    written = rgb_folder(folder)
    cfg = build_config("unet", overrides=[f"data.source={folder}", "data.channels=3", "data.val_limit=4",
                                          "model.channels=4"])
    family_cls = get_family("unet")
    family = family_cls(cfg.model, spec=family_cls.spec_of(cfg.data))
    net = family.nets["unet"]
    assert net.down[0][0].in_channels == 4 and net.head.out_channels == 3  # [R, G, B, mask] -> RGB
    train, val = family.load_data(cfg.data)
    # Every file of every class subfolder is read, at its own size (32), in train or val.
    assert len(train) + 5 == 24 and len(val) == 4  # 20% of 24 validate; val_limit keeps 4 of those 5
    x, m = train[0]
    assert x.shape == (3, 32, 32) and m.shape == (1, 32, 32) and m.sum() > 0
    assert all(any(torch.equal(image, w) for w in written) for image in train.images)
    torch.manual_seed(0)
    holes = torch.stack([train[i][1] for i in range(10)])
    assert not torch.equal(holes, torch.stack([train[i][1] for i in range(10)]))  # fresh holes on every read
    assert torch.equal(val[0][1], val[0][1]) and val.masks.shape == (4, 1, 32, 32)  # fixed ones

    image, mask = next(iter(torch.utils.data.DataLoader(train, batch_size=8)))
    # An untrained blur-prefilled UNet is the blur baseline, so the first step's loss is exactly
    # the baseline's squared error over the masked values: every channel of each hole, nothing else.
    hole_mse = ((blur_fill(image, mask) - image) ** 2 * mask).sum() / (3 * mask.sum())
    before = [p.clone() for p in net.parameters()]
    assert float(family.train_step((image, mask), 0.0)["loss"]) == pytest.approx(hole_mse.item(), rel=1e-5)
    assert any(not torch.equal(a, b) for a, b in zip(before, net.parameters()))
    # Without holes there is nothing to learn from, however far the output is from the image.
    plain = family_cls(UNetConfig(channels=4, prefill="zero"), spec=family.spec)
    no_holes = torch.zeros_like(mask)
    assert not torch.allclose(plain.predict(plain.nets["unet"], image, no_holes), image, atol=0.1)
    assert plain.train_step((image, no_holes), 0.0)["loss"] == 0.0

    small, _ = load_inpaint(InpaintDataConfig(source=str(folder), channels=3, image_size=16, limit=5))
    assert len(small) == 5 and small[0][0].shape == (3, 16, 16)
    grey, _ = load_inpaint(InpaintDataConfig(source=str(folder), limit=2))
    assert grey[0][0].shape == (1, 32, 32)  # channels 1: the colour files read as grey
    # Bad input is genray.data's error, naming the file or the key.
    (folder / "kind0" / "zz.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="zz.png: not an image"):
        load_inpaint(InpaintDataConfig(source=str(folder), channels=3))
    with pytest.warns(UserWarning, match="skipped 1 files"):
        skipped, skipped_val = load_inpaint(InpaintDataConfig(source=str(folder), channels=3, on_bad_file="skip"))
    assert len(skipped) + len(skipped_val) == 24  # every good file, the bad one left out
    with pytest.raises(DataError, match="does not exist"):
        load_inpaint(InpaintDataConfig(source=str(tmp_path / "nowhere")))
    with pytest.raises(ConfigError, match="image_size brings the images of a folder .* source digits makes its own 28x28"):
        build_config("unet", overrides=["data.image_size=32"])
    with pytest.raises(ConfigError, match="image_size"):
        build_config("unet", overrides=[f"data.source={folder}", "data.image_size=300"])


def test_baselines_fill_each_channel_and_count_every_channel_of_the_hole():
    image = torch.stack([torch.full((4, 4), v) for v in (0.2, 0.5, 0.9)])[None]  # (1, 3, 4, 4)
    mask = torch.zeros(1, 1, 4, 4)
    mask[..., :2, :2] = 1.0
    assert torch.allclose(mean_fill(image, mask), image)  # each channel takes its own mean
    assert torch.allclose(blur_fill(image, mask), image)
    # Error 1 in the 4 hole pixels of one channel, 0 in the other two: 4 / (4 * 3).
    pred = image.clone()
    pred[0, 1, :2, :2] += 1.0
    assert masked_mse(pred, image, mask).item() == pytest.approx(1 / 3)


# --- baselines and the network ---------------------------------------------------------------

def test_baselines_are_exact_where_the_answer_is_known():
    image = torch.rand(2, 1, 12, 12)
    mask = torch.zeros(2, 1, 12, 12)
    mask[:, :, 4:8, 4:8] = 1.0
    known_mean = (image * (1 - mask)).flatten(1).sum(1) / (1 - mask).flatten(1).sum(1)
    filled = mean_fill(image, mask)
    assert torch.equal(filled[mask == 0], image[mask == 0])  # known pixels untouched
    assert torch.allclose(filled[0, 0, 5, 5], known_mean[0]) and torch.allclose(filled[1, 0, 4, 7], known_mean[1])
    flat = torch.full((1, 1, 12, 12), 0.3)
    assert torch.allclose(blur_fill(flat, mask[:1]), flat)  # a constant image is filled exactly
    # A one-pixel hole in a linear ramp: its known neighbours are symmetric about it, so the
    # normalized convolution (a weighted mean of them) is the ramp's value there, exactly.
    ramp = torch.linspace(0, 1, 12).repeat(12, 1)[None, None]
    pinhole = torch.zeros_like(ramp)
    pinhole[..., 5, 5] = 1.0
    assert torch.allclose(blur_fill(ramp, pinhole)[0, 0, 5, 5], ramp[0, 0, 5, 5], atol=1e-6)
    assert masked_mse(torch.zeros(1, 1, 2, 2), torch.ones(1, 1, 2, 2), torch.tensor([[[[1.0, 0], [0, 0]]]])).item() == 1.0
    assert masked_mse(torch.zeros(1, 1, 2, 2), torch.ones(1, 1, 2, 2), torch.zeros(1, 1, 2, 2)).item() == 0.0


def test_shapes_are_seeded_binary_and_held_out():
    cfg = ShapesConfig(size=24, max_shapes=2)
    images, masks, counts = draw_shapes(20, cfg, seed=5)
    again, masks_again, _ = draw_shapes(20, cfg, seed=5)
    assert torch.equal(images, again) and torch.equal(masks, masks_again)
    assert images.shape == masks.shape == (20, 1, 24, 24) and 0.0 <= images.min() and images.max() <= 1.0
    assert set(masks.unique().tolist()) == {0.0, 1.0} and set(counts.tolist()) <= {1, 2}
    assert (masks.flatten(1).sum(1) >= 4).all()  # every image shows at least one real shape
    # Noise-free, the shapes sit `contrast` above (or below) the background's mean level.
    clean, clean_masks, _ = draw_shapes(8, cfg.model_copy(update={"noise": 0.0, "gradient": 0.0}), seed=1)
    for x, m in zip(clean[:, 0], clean_masks[:, 0]):
        assert abs(x[m > 0].mean() - x[m == 0].mean()).item() == pytest.approx(0.3, abs=1e-5)
    train, val = load_shapes(ShapesConfig(train_images=16, val_images=8))
    assert len(train) == 16 and len(val) == 8 and len(train[0]) == 3
    assert not any(torch.equal(train.images[i], val.images[j]) for i in range(16) for j in range(8))
    with pytest.raises(ConfigError, match="min_radius must be <= max_radius"):
        build_config("unet", overrides=["data.shapes.min_radius=0.3", "data.shapes.max_radius=0.2"])


def test_otsu_iou_and_segment_loss_are_exact_where_the_answer_is_known():
    # Two grey levels: Otsu's threshold splits them, and the smaller class is taken as the shapes,
    # whichever side it lies on.
    image = torch.full((2, 1, 16, 16), 0.6)
    image[:, :, 4:8, 4:10] = 0.9
    image[1] = 1.0 - image[1]  # the same square, darker than the background
    truth = torch.zeros(2, 1, 16, 16)
    truth[:, :, 4:8, 4:10] = 1.0
    t = otsu_threshold(image)
    assert 0.6 <= t[0] < 0.9 and 0.1 <= t[1] < 0.4
    assert torch.equal(otsu_segment(image, sigma=0.0), truth)
    assert iou(truth, truth).tolist() == [1.0, 1.0]
    half = truth.clone()
    half[:, :, 4:8, 7:10] = 0.0  # half of the square
    assert iou(half, truth).tolist() == [0.5, 0.5]
    assert iou(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 4)).item() == 1.0  # nothing to find, nothing found
    # Confident, right logits: BCE ~ 0 and Dice ~ 1, so the loss ~ 0; wrong ones cost more.
    logits = (truth * 2 - 1) * 30.0
    assert segment_loss(logits, truth).max() < 1e-6
    assert (segment_loss(-logits, truth) > 1.0).all()


def test_unet_takes_any_size_and_uses_its_skip_connections():
    net = UNet(UNetConfig(channels=4, depth=2, norm="none"))
    for h, w in [(28, 28), (13, 31), (4, 4)]:
        assert net(torch.rand(1, 2, h, w)).shape == (1, 1, h, w)
    # The decoder's first level sees the encoder's first-level features directly: changing one
    # input pixel changes the output at that pixel even with the bottleneck zeroed out.
    with torch.no_grad():
        for p in net.down[-1].parameters():
            p.zero_()
        x = torch.rand(1, 2, 28, 28)
        y = x.clone()
        y[0, 0, 3, 3] += 1.0
        diff = (net(x) - net(y)).abs()[0, 0]
    assert diff[3, 3] > 0


def test_inpaint_keeps_known_pixels_and_beats_both_baselines_after_training():
    torch.manual_seed(0)
    cfg = build_config("unet", overrides=["data.limit=512", "data.val_limit=128"])
    family = get_family("unet")(cfg.model)
    train, val = family.load_data(cfg.data)
    for _ in range(4):
        for batch in torch.utils.data.DataLoader(train, batch_size=32, shuffle=True):
            family.train_step(batch, 0.0)
    family.eval()
    image, mask = next(iter(torch.utils.data.DataLoader(val, batch_size=len(val))))
    metrics = {k: v / len(val) for k, v in family.eval_batch((image, mask)).items()}
    assert metrics["val_masked_mse"] < metrics["val_blur_fill_mse"] < metrics["val_mean_fill_mse"], metrics
    filled = family.inpaint(image, mask)
    assert torch.equal(filled[mask == 0], image[mask == 0])
    for method in ("mean", "blur"):
        assert torch.equal(family.inpaint(image, mask, method), {"mean": mean_fill, "blur": blur_fill}[method](image, mask))


def test_untrained_blur_prefilled_unet_is_exactly_the_blur_baseline():
    """With prefill blur the network adds a residual to the blur fill and starts at zero, so
    training starts from the baseline; prefill zero is the plain formulation."""
    image, mask = torch.rand(4, 1, 28, 28), torch.stack([random_mask(28, 28, "rect", 0.25, 0.5) for _ in range(4)])
    family = get_family("unet")(UNetConfig(channels=4))
    assert torch.equal(family.inpaint(image, mask), blur_fill(image, mask).clamp(0, 1))
    plain = get_family("unet")(UNetConfig(channels=4, prefill="zero"))
    assert not torch.allclose(plain.inpaint(image, mask), blur_fill(image, mask))
    decaying = get_family("unet")(UNetConfig(channels=4, lr=0.004, lr_halflife=1.0))
    decaying.train_step((image, mask), epoch=2.0)
    assert decaying.optimizers["unet"].param_groups[0]["lr"] == pytest.approx(0.001)  # halved twice


def test_segmentation_beats_otsu_after_a_little_training_and_tasks_match_their_data():
    torch.manual_seed(0)
    # Small images (16 x 16) keep this to seconds.
    cfg = build_config("unet", overrides=["model.task=segment", "data.source=shapes", "model.channels=8",
                                          "model.lr=0.005", "data.limit=384", "data.val_limit=128",
                                          "data.shapes.size=16", "data.shapes.max_shapes=2"])
    family = get_family("unet")(cfg.model)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in family.nets["unet"].modules())
    train, val = family.load_data(cfg.data)
    for _ in range(8):
        for batch in torch.utils.data.DataLoader(train, batch_size=32, shuffle=True):
            family.train_step(batch, 0.0)
    family.eval()
    metrics = {k: v / len(val) for k, v in family.eval_batch(next(iter(torch.utils.data.DataLoader(val, batch_size=128)))).items()}
    assert metrics["val_iou"] > metrics["val_otsu_iou"] > 0.3, metrics
    image = val.images[:4]
    assert set(family.segment(image).unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(family.segment(image, "otsu"), otsu_segment(image))
    with pytest.raises(ValueError, match="trained for task 'segment', not inpaint"):
        family.inpaint(image, torch.ones_like(image))
    # A task fed the other task's data says what to set.
    with pytest.raises(ValueError, match="needs images with their shapes' masks .* set data.source=shapes"):
        family.train_step(next(iter(torch.utils.data.DataLoader(load_inpaint(InpaintDataConfig(limit=8))[0], batch_size=8))), 0.0)
    inpainter = get_family("unet")(UNetConfig(channels=4))
    with pytest.raises(ValueError, match="got generated shapes .* set model.task=segment"):
        inpainter.eval_batch(next(iter(torch.utils.data.DataLoader(val, batch_size=8))))


# --- the deployment's math, and the whole path on Ray ------------------------------------------

def test_inpaint_request_checks_without_http():
    family = get_family("unet")(UNetConfig(channels=4))
    family.eval()
    image = np.random.default_rng(0).random((20, 24)).round(3)
    mask = np.zeros((20, 24))
    mask[5:10, 6:12] = 1.0
    out = inpaint_image(family, InpaintRequest(image=image.tolist(), mask=mask.tolist(), format="list"))
    assert out["shape"] == [20, 24] and out["masked_pixels"] == 30
    filled = np.array(out["image"])
    assert np.allclose(filled[mask == 0], image[mask == 0], atol=1e-6)
    as_png = inpaint_image(family, InpaintRequest(image=png(image), mask=png(mask), method="blur"))
    with Image.open(io.BytesIO(base64.b64decode(as_png["image"]))) as img:
        assert img.size == (24, 20)
    with pytest.raises(BadRequest, match="mask: must be the image's size 24x20, got 12x10"):
        inpaint_image(family, InpaintRequest(image=image.tolist(), mask=mask[:10, :12].tolist()))
    for bad, field in [({"image": [[0.5] * 3] * 3}, "between 4 and 256"), ({"image": [[0.5] * 5, [0.5] * 4] * 3}, "same length"),
                       ({"image": [[2.0] * 5] * 5}, "less than or equal to 1"), ({"image": "bm90IGEgcG5n"}, "PNG"),
                       ({"image": png(np.zeros((300, 8)))}, "between 4 and 256"), ({"method": "magic"}, "method")]:
        with pytest.raises(ValidationError, match=field):
            InpaintRequest(**{"image": image.tolist(), "mask": mask.tolist(), **bad})


def test_rgb_inpaint_requests_in_colour_without_http(tmp_path):
    from genray import checkpoint
    from genray.bench.perf import user_class

    cfg = build_config("unet", overrides=["data.channels=3", "model.channels=4"])
    family_cls = get_family("unet")
    family = family_cls(cfg.model, spec=family_cls.spec_of(cfg.data))
    path = checkpoint.save(tmp_path / "ckpt", family="unet", config=cfg.to_dict(), state=family.state_dict(),
                           epoch=1, metrics={})
    replica = user_class(UNetDeployment)(str(path))  # the class as written, its model loaded, no Serve
    assert replica.info()["image_channels"] == 3 and replica.info()["endpoints"] == ["/inpaint"]
    image = np.random.default_rng(0).random((3, 20, 24)).round(3)  # (C, H, W)
    mask = np.zeros((20, 24))
    mask[5:10, 6:12] = 1.0
    known = np.broadcast_to(mask == 0, image.shape)

    out = replica.inpaint(InpaintRequest(image=image.tolist(), mask=mask.tolist(), format="list", method="blur"))
    filled = np.array(out["image"])
    assert out["shape"] == [3, 20, 24] and out["masked_pixels"] == 30
    assert np.allclose(filled[known], image[known], atol=1e-6)
    blur = blur_fill(torch.tensor(image, dtype=torch.float32)[None], torch.tensor(mask, dtype=torch.float32)[None, None])
    assert np.allclose(filled, blur[0].numpy(), atol=1e-6)  # the baseline, channel by channel

    colour = (image.transpose(1, 2, 0) * 255).round().astype(np.uint8)  # (H, W, 3)
    answer = replica.inpaint(InpaintRequest(image=png(colour / 255), mask=png(mask)))
    with Image.open(io.BytesIO(base64.b64decode(answer["image"]))) as img:
        assert img.mode == "RGB" and img.size == (24, 20)
        pixels = np.asarray(img)
    assert np.array_equal(pixels[mask == 0], colour[mask == 0])  # the known pixels, in colour, unchanged
    hole = pixels[mask == 1].astype(int)
    assert (hole[:, 0] != hole[:, 1]).any()  # the hole is filled in colour, not grey
    from_grey = replica.inpaint(InpaintRequest(image=png(image[0]), mask=png(mask), format="list"))
    assert from_grey["shape"] == [3, 20, 24]  # a grey PNG is converted to the model's RGB
    assert np.array_equal(np.array(from_grey["image"][0]), np.array(from_grey["image"][2]))

    with pytest.raises(BadRequest, match=r"image: expected 3 x H x W \(channels x rows x columns\) values in "
                                         r"\[0, 1\], for an RGB model; got 20x24") as err:
        replica.inpaint(InpaintRequest(image=image[0].tolist(), mask=mask.tolist()))
    assert err.value.status_code == 422
    grey = get_family("unet")(UNetConfig(channels=4))
    with pytest.raises(BadRequest, match=r"image: expected H x W \(or 1 x H x W\) values in \[0, 1\], for a grey "
                                         r"model; got 3x20x24"):
        inpaint_image(grey, InpaintRequest(image=image.tolist(), mask=mask.tolist()))
    one_plane = inpaint_image(grey, InpaintRequest(image=image[:1].tolist(), mask=mask.tolist(), format="list"))
    assert one_plane["shape"] == [20, 24]  # 1 x H x W is grey too, answered as H x W
    with pytest.raises(BadRequest, match="mask: must be the image's size 24x20, got 12x10"):
        replica.inpaint(InpaintRequest(image=image.tolist(), mask=mask[:10, :12].tolist()))
    with pytest.raises(ValidationError, match="channels must all have the same size, got 10x24, 20x24"):
        InpaintRequest(image=[image[0].tolist(), image[1, :10].tolist(), image[2].tolist()], mask=mask.tolist())
    with pytest.raises(ValidationError, match="mask"):
        InpaintRequest(image=image.tolist(), mask=[mask.tolist()] * 3)  # the mask stays H x W


def test_segment_request_checks_without_http():
    family = get_family("unet")(UNetConfig(task="segment", channels=4))
    family.eval()
    image = np.full((20, 24), 0.2)
    image[5:10, 6:12] = 0.8
    out = segment_image(family, SegmentRequest(image=image.tolist(), format="list", method="otsu"))
    assert out["shape"] == [20, 24] and out["foreground_pixels"] == 30
    assert np.array_equal(np.array(out["mask"]), (image > 0.5).astype(float))
    as_png = segment_image(family, SegmentRequest(image=png(image)))
    with Image.open(io.BytesIO(base64.b64decode(as_png["mask"]))) as img:
        assert img.size == (24, 20) and as_png["method"] == "unet"
    # Each model answers only the task it was trained for.
    with pytest.raises(BadRequest, match="trained for task 'segment', not 'inpaint': POST /segment") as err:
        inpaint_image(family, InpaintRequest(image=image.tolist(), mask=image.tolist()))
    assert err.value.status_code == 404
    with pytest.raises(BadRequest, match="trained for task 'inpaint', not 'segment': POST /inpaint"):
        segment_image(get_family("unet")(UNetConfig(channels=4)), SegmentRequest(image=image.tolist()))
    for bad, field in [({"image": [[0.5] * 3] * 3}, "between 4 and 256"), ({"method": "blur"}, "method"),
                       ({"mask": image.tolist()}, "mask")]:
        with pytest.raises(ValidationError, match=field):
            SegmentRequest(**{"image": image.tolist(), **bad})


# Trained in-process: the run folder is the one Ray Train would fill, and the Ray Train path of
# in-memory data is the other families' (tests/test_deploy.py, test_reliability.py, test_tune.py).
@pytest.mark.ray
def test_trains_exports_and_serves(serve_url, tmp_path):
    from ray import serve

    from genray.deploy import build_app
    from genray.store import export

    cfg = build_config("unet", overrides=[
        f"storage={tmp_path / 'runs'}", "name=inpaint", "train.epochs=2",
        "data.limit=512", "data.val_limit=64", "model.channels=8", "train.quality_every=0",
    ])
    run = train_in_process(cfg)
    history = run.history()
    assert [h["epoch"] for h in history] == [0, 1]
    # The UNet starts at the blur baseline (a zero residual) and must have moved below it.
    assert min(h["val_masked_mse"] for h in history) < history[0]["val_blur_fill_mse"] < history[0]["val_mean_fill_mse"]
    model = export(run, tmp_path / "models" / "unet")

    app = build_app({"model": str(model)})
    app = app._bound_deployment.options(ray_actor_options={"num_cpus": 0}).bind(*app._bound_deployment.init_args)
    serve.run(app, name="unet-test", route_prefix="/unet-test")
    url = f"{serve_url}/unet-test"
    try:
        assert requests.get(url + "/", timeout=60).json()["family"] == "unet"
        _, val = load_inpaint(cfg.data)
        image, mask = val[0]
        body = {"image": image[0].tolist(), "mask": mask[0].tolist(), "format": "list"}
        answer = requests.post(url + "/inpaint", json=body, timeout=60)
        assert answer.status_code == 200, answer.text
        filled = torch.tensor(answer.json()["image"])
        assert torch.allclose(filled[mask[0] == 0], image[0][mask[0] == 0], atol=1e-6)
        as_png = requests.post(url + "/inpaint", json={"image": png(image[0].numpy()), "mask": png(mask[0].numpy())},
                               timeout=60)
        assert as_png.status_code == 200 and as_png.json()["format"] == "png"
        wrong = requests.post(url + "/inpaint", json={**body, "mask": [[1.0] * 5] * 5}, timeout=60)
        assert wrong.status_code == 422 and "mask" in wrong.json()["error"], wrong.text
    finally:
        serve.delete("unet-test")
