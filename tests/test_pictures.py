"""genray.pictures and `genray picture`: each picture shows what the model computes (the scatter's
points are the model's codes, the manifold's tiles its decodings, the style sheet its transfers),
files and TensorBoard figures are written, and a wrong model or option is a clear error."""

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader
from typer.testing import CliRunner

from genray import checkpoint, pictures
from genray.cli import app
from genray.config import build_config
from genray.data import load_images
from genray.families import get_family


def saved(folder, name: str, overrides=(), steps: int = 0) -> str:
    """A checkpoint of `name` after `steps` in-process training steps (no Ray), built for the
    images its data config names."""
    torch.manual_seed(0)
    cfg = build_config(name, overrides=list(overrides))
    family_cls = get_family(name)
    family = family_cls(cfg.model, spec=family_cls.spec_of(cfg.data))
    if steps:
        train, _ = load_images(cfg.data)
        for i, batch in zip(range(steps), DataLoader(train, batch_size=64, shuffle=True)):
            family.train_step(batch, epoch=i / steps)
    path = folder / name
    checkpoint.save(path, family=name, config=cfg.to_dict(), state=family.state_dict(), epoch=0, metrics={})
    return str(path)


@pytest.fixture(scope="module")
def vae_2d(tmp_path_factory):
    path = saved(tmp_path_factory.mktemp("pictures"), "vae", ["model.latent_dim=2"], steps=8)
    family, ckpt = checkpoint.load_family(path)
    return path, family, pictures.validation_images(ckpt.config)


def test_codes_and_manifold_show_the_models_codes_and_decodings(vae_2d):
    _, family, (images, labels) = vae_2d
    scatter = pictures.codes(family, images, labels).axes[0].collections[0]
    np.testing.assert_allclose(scatter.get_offsets(), family.encode(images)[0].numpy(), atol=1e-6)
    np.testing.assert_array_equal(scatter.get_array(), labels.numpy())  # coloured by digit

    fig = pictures.manifold(family, images, n=6, quantile=0.05)
    canvas = fig.axes[0].images[0].get_array()
    assert canvas.shape == (6 * 28, 6 * 28)
    z = pictures.codes_of(family, images)
    lo, hi = torch.quantile(z, 0.05, dim=0), torch.quantile(z, 0.95, dim=0)
    top_left = family.decode(torch.stack([lo[0], hi[1]])[None])[0, 0].numpy()  # z2 grows upwards
    np.testing.assert_allclose(canvas[:28, :28], top_left, atol=1e-5)

    strips = pictures.interpolation(family, images, labels, pairs=[(3, 8)], steps=4)
    tiles = [ax.images[0].get_array() for ax in strips.axes]
    three = images[int((labels == 3).nonzero()[0])]
    np.testing.assert_allclose(tiles[0], three[0].numpy())  # the real input at the left end
    np.testing.assert_allclose(tiles[1], family.decode(family.encode(three[None])[0])[0, 0].numpy(), atol=1e-5)


def test_style_portrait_and_heat(tmp_path):
    cvae, _ = checkpoint.load_family(saved(tmp_path, "cvae"))
    images, labels = pictures.validation_images(build_config("cvae").to_dict())
    sheet = pictures.style(cvae, images, labels, rows=(2, 7))
    assert len(sheet.axes) == 2 * 11
    seven = images[int((labels == 7).nonzero()[0])]
    as_four = cvae.style_transfer(seven[None], torch.tensor([7]), torch.tensor([4]))[0, 0].numpy()
    np.testing.assert_allclose(sheet.axes[11 + 5].images[0].get_array(), as_four, atol=1e-5)  # row 7, column "4"

    ode, _ = checkpoint.load_family(saved(tmp_path, "ode"))
    fig = pictures.portrait(ode, y0=[[2.0, 0.0]], t_end=2.0, points=20)
    learned = [line for line in fig.axes[0].lines if line.get_label() == "learned"][0]
    expected = ode.integrate(torch.tensor([[2.0, 0.0]]), torch.linspace(0.0, 2.0, 20))[:, 0].numpy()
    np.testing.assert_allclose(np.stack(learned.get_data(), 1), expected, atol=1e-5)

    from genray.heat import solve_frames

    times, fields = solve_frames(16, 0.01, 0.1, 20.0, 50.0, 1.0, num_frames=6)
    panels = pictures.heat(times, fields, panels=3)
    shown = [ax.images[0].get_array() for ax in panels.axes if ax.images]
    np.testing.assert_allclose(shown[-1], fields[-1].numpy().T)  # x2 up, x1 across
    assert len(panels.axes[0].patches) == 1  # the triangle


def test_cli_writes_files_and_tensorboard_and_refuses_bad_requests(vae_2d, trained_vae, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    path, _, _ = vae_2d
    runner = CliRunner()
    result = runner.invoke(app, ["picture", "codes", path, "--out", str(tmp_path / "codes.png"),
                                 "--logdir", str(tmp_path / "tb")])
    assert result.exit_code == 0, result.output
    with Image.open(tmp_path / "codes.png") as image:
        assert image.size[0] >= 500 and len(np.unique(np.asarray(image.convert("RGB")).reshape(-1, 3), axis=0)) > 20
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    assert events.Tags()["images"] == ["pictures/codes"]

    result = runner.invoke(app, ["picture", "heat", "--out", str(tmp_path / "heat.gif"), "--set", "n=12",
                                 "--set", "frames=5", "--set", "t_end=0.05"])
    assert result.exit_code == 0, result.output
    with Image.open(tmp_path / "heat.gif") as gif:
        assert gif.n_frames == 5

    for args, message in [
        (["picture", "manifold", str(trained_vae), "-o", str(tmp_path / "m.png")], "model.latent_dim=2"),
        (["picture", "style", path, "-o", str(tmp_path / "s.png")], "draws cvae models"),
        (["picture", "manifold", path, "-o", str(tmp_path / "m.png"), "--set", "size=3"], "takes n, quantile"),
        (["picture", "sketch", path, "-o", str(tmp_path / "m.png")], "pictures: codes, manifold"),
        (["picture", "codes", path], "--out FILE and/or --logdir"),
    ]:
        result = runner.invoke(app, args)
        assert result.exit_code == 2 and message in result.output, (args, result.output)


def test_pictures_of_an_rgb_model_show_its_colour_size_and_classes(tmp_path):
    """A 64x64 RGB model with named classes (the digits brought to that shape): tiles are the
    model's own images in colour, the style sheet has one column per class, named."""
    rgb = ["data.image_size=64", "data.channels=3", 'data.labels=["zero","one","two","three","four","five",'
           '"six","seven","eight","nine"]']
    vae, ckpt = checkpoint.load_family(saved(tmp_path, "vae", ["model.latent_dim=2", *rgb]))
    images, labels = pictures.validation_images(ckpt.config)
    assert images.shape[1:] == (3, 64, 64)
    fig = pictures.manifold(vae, images, n=3)
    canvas = fig.axes[0].images[0].get_array()
    assert canvas.shape == (3 * 64, 3 * 64, 3)
    z = pictures.codes_of(vae, images)
    top_left = vae.decode(torch.stack([torch.quantile(z[:, 0], 0.02), torch.quantile(z[:, 1], 0.98)])[None])[0]
    np.testing.assert_allclose(canvas[:64, :64], top_left.permute(1, 2, 0).numpy(), atol=1e-5)
    strips = pictures.interpolation(vae, images, labels, pairs=[("three", 8)], steps=3)
    three = images[int((labels == 3).nonzero()[0])]
    np.testing.assert_allclose(strips.axes[0].images[0].get_array(), three.permute(1, 2, 0).numpy())
    scatter = pictures.codes(vae, images, labels)
    assert [t.get_text() for t in scatter.axes[1].get_yticklabels()][:2] == ["zero", "one"]  # the colour bar

    cvae, ckpt = checkpoint.load_family(saved(tmp_path, "cvae", rgb))
    sheet = pictures.style(cvae, images, labels, rows=("seven",))
    assert [ax.get_title() for ax in sheet.axes[:3]] == ["input", "zero", "one"]
    seven = images[int((labels == 7).nonzero()[0])]
    as_four = cvae.style_transfer(seven[None], torch.tensor([7]), torch.tensor([4]))[0]
    np.testing.assert_allclose(sheet.axes[5].images[0].get_array(), as_four.permute(1, 2, 0).numpy(), atol=1e-5)
    with pytest.raises(ValueError, match="no validation image of class 'ten'"):
        pictures.style(cvae, images, labels, rows=("ten",))
