"""The inpainting UNet: masks, the digits and photo-patch data, the two baselines on cases with
exact answers, the skip connections, beating both baselines after a little training, and the
Ray Train -> export -> Serve path with its request checks."""

import base64
import io

import numpy as np
import pytest
import requests
import torch
from PIL import Image
from pydantic import ValidationError

from genray.config import ConfigError, build_config
from genray.data.inpaint import InpaintDataConfig, load_inpaint, photo_patches, random_mask
from genray.deploy.common import BadRequest
from genray.deploy.unet import InpaintRequest, inpaint_image
from genray.families import get_family
from genray.families.unet import UNet, UNetConfig, blur_fill, masked_mse, mean_fill


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

    ptrain, pval = photo_patches()
    assert ptrain.shape[1:] == pval.shape[1:] == (1, 28, 28)
    assert len(ptrain) > 1500 and len(pval) > 100 and 0.0 <= ptrain.min() and ptrain.max() <= 1.0
    both, _ = load_inpaint(InpaintDataConfig(source="both"))
    assert len(both) == len(ptrain) + 1438
    with pytest.raises(ConfigError, match="min_size must be <= max_size"):
        build_config("unet", overrides=["data.min_size=0.6", "data.max_size=0.5"])


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


def test_unet_takes_any_size_and_uses_its_skip_connections():
    net = UNet(UNetConfig(channels=4, depth=2))
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


@pytest.mark.ray
def test_trains_on_ray_exports_and_serves(ray_session, serve_url, tmp_path):
    from ray import serve

    from genray.deploy import build_app
    from genray.store import export
    from genray.train import fit

    cfg = build_config("unet", overrides=[
        f"storage={tmp_path / 'runs'}", "name=inpaint", "train.workers=1", "train.epochs=2",
        "data.limit=256", "data.val_limit=64", "model.channels=8", "train.quality_every=0",
    ])
    summary = fit(cfg, verbose=False)
    history = summary.history
    assert [h["epoch"] for h in history] == [0, 1]
    assert history[1]["val_masked_mse"] < history[0]["val_masked_mse"] < history[0]["val_mean_fill_mse"]
    model = export(summary.run_dir, tmp_path / "models" / "unet")

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
