"""genray.client against real deployments: every app deployed once on the session's Serve, every
typed method checked against the same model run in-process; errors carry the server's message;
503s are retried, the API key reaches genray's Guard, and a slow answer times out."""

import time

import numpy as np
import pytest
import torch
from deployed import local_server, served

from genray.checkpoint import load_family
from genray.client import APIError, Client, RequestTimeout
from genray.data.images import digits_28x28

PNG_STEP = 1 / 255  # images travel as 8-bit PNGs

@pytest.fixture(scope="module")
def apps(request, serve_url, tmp_path_factory):
    """family -> (Client, the same model loaded in-process, or None for heat)."""
    names, folder = served(request, tmp_path_factory)
    return {f: (Client(f"{serve_url}/{name}", timeout=60), None if f == "heat" else load_family(folder / f)[0])
            for f, name in names.items()}


@pytest.fixture(scope="module")
def digits():
    images, labels = digits_28x28()
    return images[:4], labels[:4]  # (4, 1, 28, 28), (4,)


def quantized(images: torch.Tensor) -> torch.Tensor:
    return (images * 255).round() / 255


@pytest.mark.ray
def test_vae_sample_encode_decode_interpolate_match_the_model(apps, digits):
    client, family = apps["vae"]
    images, _ = digits
    sampled = client.sample(n=3, seed=7)
    assert sampled.shape == (3, 28, 28) and sampled.dtype == np.float32
    np.testing.assert_allclose(sampled, family.sample(3, seed=7)[:, 0].numpy(), atol=PNG_STEP / 2 + 1e-6)
    assert isinstance(client.sample(n=2, seed=7, output="torch"), torch.Tensor)
    assert client.sample(n=2, seed=7, output="pil")[0].size == (28, 28)

    mu = client.encode(images)  # a (B, 1, 28, 28) tensor goes up as PNGs
    np.testing.assert_allclose(mu, family.encode(quantized(images))[0].numpy(), atol=1e-4)
    mu2, logvar = client.encode_distribution(images.numpy()[:, 0])  # (B, 28, 28) numpy works the same
    np.testing.assert_allclose(mu2, mu, atol=1e-6)
    assert logvar.shape == mu.shape

    decoded = client.decode(mu[:2], output="torch")
    assert decoded.shape == (2, 1, 28, 28)
    np.testing.assert_allclose(decoded.numpy(), family.decode(torch.from_numpy(mu[:2])).numpy(), atol=PNG_STEP)
    strip = client.interpolate(images[0], images[1], steps=5)
    assert strip.shape == (5, 28, 28)
    np.testing.assert_allclose(strip[0], family.interpolate(quantized(images[0]), quantized(images[1]), 5)[0, 0],
                               atol=PNG_STEP)


@pytest.mark.ray
def test_other_image_models(apps, digits):
    images, labels = digits
    cvae, cvae_family = apps["cvae"]
    sevens = cvae.sample(n=2, seed=1, digit=7)
    np.testing.assert_allclose(sevens, cvae_family.sample(7, 2, seed=1)[:, 0].numpy(), atol=PNG_STEP)
    moved = cvae.style_transfer(images, labels.tolist(), digit=3)
    expected = cvae_family.style_transfer(quantized(images), labels, 3)[:, 0].numpy()
    np.testing.assert_allclose(moved, expected, atol=PNG_STEP + 1e-4)
    assert cvae.style_transfer(images[:2], [0, 1], digits=[5, 6]).shape == (2, 28, 28)

    ae, ae_family = apps["ae"]
    np.testing.assert_allclose(ae.reconstruct(images), ae_family.reconstruct(quantized(images))[:, 0].numpy(),
                               atol=PNG_STEP + 1e-4)
    noisy, clean = ae.denoise(images[:2], add_noise=True, seed=0, noise="masking", noise_level=0.5)
    assert noisy.shape == clean.shape == (2, 28, 28) and not np.allclose(noisy, images[:2, 0].numpy(), atol=0.01)
    assert ae.encode(images).shape == (4, ae_family.cfg.latent_dim)
    with pytest.raises(APIError, match="deterministic"):
        ae.encode_distribution(images)
    assert ae.decode(ae.encode(images[:1])).shape == (1, 28, 28)


@pytest.mark.ray
def test_odes(apps):
    ode, family = apps["ode"]
    t = [0.0, 0.5, 1.0]
    y = ode.integrate([[2.0, 0.0], [1.0, 1.0]], t)
    assert y.shape == (3, 2, 2)
    np.testing.assert_allclose(y, family.integrate(torch.tensor([[2.0, 0.0], [1.0, 1.0]]), torch.tensor(t)).numpy(),
                               rtol=1e-5, atol=1e-6)
    picture = ode.portrait([[2.0, 0.0]], t_end=5.0, points=50)
    assert picture.size[0] > 100 and len(np.unique(np.asarray(picture.convert("L")))) > 10  # drawn, not blank

    latent, family = apps["latent_ode"]
    answer = latent.extrapolate([0.0, 0.3, 0.45, 1.2], [[5.1, 0.2], [4.9, 0.9], [4.7, 1.1], [3.6, 2.4]],
                                [0.0, 0.6, 1.5, 3.0])
    assert answer.mean.shape == (4, family.cfg.obs_dim) and answer.z0_std.shape == (family.cfg.latent_dim,)
    assert np.isfinite(answer.mean).all() and (answer.z0_std > 0).all()
    np.testing.assert_array_equal(answer.z0, answer.z0_mean)
    refined = latent.extrapolate([0.0, 0.3, 0.45, 1.2], [[5.1, 0.2], [4.9, 0.9], [4.7, 1.1], [3.6, 2.4]],
                                 [0.0, 0.6, 1.5, 3.0], refine_steps=5)
    np.testing.assert_array_equal(refined.z0_mean, answer.z0_mean)
    assert np.isfinite(refined.mean).all() and not np.array_equal(refined.z0, refined.z0_mean)


@pytest.mark.ray
def test_heat_matches_the_solver(apps):
    from genray.heat import solve

    heat, _ = apps["heat"]
    u = heat.solve_heat(n=16, dt=0.01, t_end=0.05)
    np.testing.assert_allclose(u, solve(16, 0.01, 0.05, rtol=1e-8).numpy(), atol=1e-6)
    edge = heat.solve_heat(n=16, dt=0.01, t_end=0.05, omega=10.0, points=[[0.0, 0.3]])
    assert edge[0] == pytest.approx(1 - np.exp(-10.0 * 0.05), abs=1e-9)  # u on x1 = 0 is exact
    assert heat.heat_map(n=16, dt=0.01, t_end=0.05).mode in ("RGB", "RGBA")


@pytest.mark.ray
def test_graphs_text_and_inpainting(apps):
    gcn, family = apps["gcn"]
    x = np.random.default_rng(0).normal(size=(5, family.cfg.in_features)).astype(np.float32)
    nodes = gcn.predict_nodes(x, [[0, 1, 2, 3], [1, 2, 3, 4]], undirected=True)
    assert nodes.classes.shape == (5,) and np.allclose(nodes.probabilities.sum(1), 1.0, atol=1e-5)
    mpnn, family = apps["mpnn"]
    cfg = family.cfg
    prediction = mpnn.predict_graph(np.ones((3, cfg.node_features)), [[0, 1, 2], [1, 2, 0]],
                                    np.full((3, cfg.edge_features), 0.3))
    assert set(prediction) == set(cfg.targets) and all(np.isfinite(v) for v in prediction.values())

    charlm, _ = apps["charlm"]
    text = charlm.generate("def ", n=30, temperature=0.8, seed=1)
    assert len(text) == 30 and charlm.generate("def ", n=30, temperature=0.8, seed=1) == text
    assert charlm.score("def f(x):\n    return x\n") > 0

    unet, _ = apps["unet"]
    image = digits_28x28()[0][0, 0].numpy()
    mask = np.zeros((28, 28), dtype=np.float32)
    mask[10:18, 10:18] = 1.0
    filled = unet.inpaint(image, mask)
    known = mask == 0
    np.testing.assert_allclose(filled[known], np.round(image[known] * 255) / 255, atol=PNG_STEP)  # kept


@pytest.mark.ray
def test_errors_carry_the_servers_message(apps, serve_url):
    vae, _ = apps["vae"]
    with pytest.raises(APIError) as bad:
        vae.sample(n=0)
    assert bad.value.status == 422 and "n" in bad.value.message and bad.value.errors[0]["field"] == "n"
    with pytest.raises(APIError) as wrong:
        vae.decode([[0.0, 1.0]])  # the latent is bigger than 2
    assert wrong.value.status == 422 and "latent size" in wrong.value.message
    with pytest.raises(APIError) as missing:
        vae.generate("x")  # the vae has no /generate
    assert missing.value.status == 404
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        vae.encode(np.full((1, 28, 28), 2.0))  # refused before sending
    with pytest.raises(APIError, match="cannot connect"):
        Client("http://127.0.0.1:9", retries=1, backoff=0.01).info()


@pytest.fixture
def flaky_app(monkeypatch):
    """genray's own FastAPI app (make_api: Guard and JSON errors) behind uvicorn, keyed, with an
    endpoint that answers 503 twice before it answers, and one that is slow."""
    from fastapi import HTTPException

    from genray.deploy.common import make_api

    monkeypatch.setenv("GENRAY_API_KEY", "s3cret")
    api = make_api("flaky")
    calls = {"n": 0}

    @api.post("/busy")
    def busy() -> dict:
        calls["n"] += 1
        if calls["n"] <= 2:
            raise HTTPException(503, "replica overloaded", headers={"Retry-After": "0"})
        return {"ok": True, "calls": calls["n"]}

    @api.get("/slow")
    def slow() -> dict:
        time.sleep(1.0)
        return {"ok": True}

    with local_server(api) as url:
        yield url, calls


def test_retries_503_sends_the_key_and_times_out(flaky_app):
    url, calls = flaky_app
    with pytest.raises(APIError) as refused:
        Client(url).post("/busy")
    assert refused.value.status == 401 and "API key" in refused.value.message and calls["n"] == 0
    assert Client(url, api_key="s3cret", backoff=0.01).post("/busy") == {"ok": True, "calls": 3}
    calls["n"] = 0
    with pytest.raises(APIError) as busy:
        Client(url, api_key="s3cret", retries=1, backoff=0.01).post("/busy")
    assert busy.value.status == 503 and busy.value.message == "replica overloaded" and calls["n"] == 2
    with pytest.raises(RequestTimeout):
        Client(url, api_key="s3cret", timeout=0.2).request("GET", "/slow")


@pytest.mark.ray
def test_genray_query_prints_the_answer_and_writes_its_images(apps, serve_url, tmp_path):
    from PIL import Image
    from typer.testing import CliRunner

    from genray.cli import app
    from genray.images import save_png

    vae, family = apps["vae"]
    app_name = vae.url.rsplit("/", 1)[1]
    runner = CliRunner()
    result = runner.invoke(app, ["query", app_name, "sample", "--url", serve_url, "--set", "n=4", "--set", "seed=2",
                                 "--out", str(tmp_path / "s.png")])
    assert result.exit_code == 0, result.output
    assert "<base64 PNG" in result.output and "wrote" in result.output
    with Image.open(tmp_path / "s.png") as grid:
        assert grid.size == (2 * 30 + 2, 2 * 30 + 2)  # 2 x 2 tiles of 28 px, 2 px apart
        tile = np.asarray(grid.convert("L"), dtype=np.float32)[2:30, 2:30] / 255
    np.testing.assert_allclose(tile, family.sample(4, seed=2)[0, 0].numpy(), atol=PNG_STEP)

    digit = tmp_path / "digit.png"
    save_png(digits_28x28()[0][0], digit)
    result = runner.invoke(app, ["query", app_name, "encode", "--url", serve_url, "--set", f"images=[\"@{digit}\"]"])
    assert result.exit_code == 0 and '"mu"' in result.output, result.output  # @file reads the image
    result = runner.invoke(app, ["query", app_name, "interpolate", "--url", serve_url, "--set", f"a=@{digit}",
                                 "--set", f"b=@{digit}", "--set", "steps=3", "-o", str(tmp_path / "i.png")])
    assert result.exit_code == 0 and "3 images" in result.output, result.output
    result = runner.invoke(app, ["query", app_name, "sample", "--url", serve_url, "--set", "n=0"])
    assert result.exit_code == 2 and "422: n: Input should be greater than or equal to 1" in result.output
    result = runner.invoke(app, ["query", apps["heat"][0].url.rsplit("/", 1)[1], "solve", "--url", serve_url,
                                 "--set", "n=8", "--set", "t_end=0.01", "--set", "dt=0.01", "-o", str(tmp_path / "h.png")])
    assert result.exit_code == 2 and "format png" in result.output  # a JSON field is not an image


@pytest.mark.ray
def test_rgb_models_through_the_client_and_genray_query(apps, serve_url, tmp_path):
    """A 64x64 RGB model's images go up and come back (B, 3, 64, 64), classes by name; `genray
    query` writes its samples as a colour grid."""
    from PIL import Image
    from typer.testing import CliRunner

    from genray.cli import app

    cvae, cvae_family = apps["rgb-cvae"]
    blue = cvae.sample(n=2, seed=5, label="blue")
    assert blue.shape == (2, 3, 64, 64) and blue.dtype == np.float32
    np.testing.assert_allclose(blue, cvae_family.sample(2, 2, seed=5).numpy(), atol=PNG_STEP / 2 + 1e-6)
    assert cvae.sample(n=2, seed=5, label="blue", output="torch").shape == (2, 3, 64, 64)
    assert cvae.sample(n=1, seed=5, digit=2, output="pil")[0].mode == "RGB"
    x = torch.rand(2, 3, 64, 64)
    moved = cvae.style_transfer(x, ["red", "green"], digit="blue")
    expected = cvae_family.style_transfer(quantized(x), torch.tensor([0, 1]), 2).numpy()
    np.testing.assert_allclose(moved, expected, atol=PNG_STEP + 1e-4)

    ae, ae_family = apps["rgb-ae"]
    codes = ae.encode(x)  # a (B, 3, 64, 64) tensor goes up as RGB PNGs
    np.testing.assert_allclose(codes, ae_family.encode(quantized(x)).numpy(), atol=1e-4)
    np.testing.assert_allclose(ae.decode(codes), ae_family.decode(torch.from_numpy(codes)).numpy(), atol=PNG_STEP)
    np.testing.assert_allclose(ae.reconstruct(x.numpy()), ae_family.reconstruct(quantized(x)).numpy(),
                               atol=PNG_STEP + 1e-4)
    with pytest.raises(APIError, match="images.0: image must be 64x64 pixels, got 28x28") as wrong:
        ae.encode(torch.rand(1, 28, 28))
    assert wrong.value.status == 422

    name = cvae.url.rsplit("/", 1)[1]
    result = CliRunner().invoke(app, ["query", name, "sample", "--url", serve_url, "--set", "label=red",
                                      "--set", "n=4", "--set", "seed=2", "--out", str(tmp_path / "rgb.png")])
    assert result.exit_code == 0 and "4 images" in result.output, result.output
    with Image.open(tmp_path / "rgb.png") as grid:
        assert grid.mode == "RGB" and grid.size == (2 * 66 + 2, 2 * 66 + 2)  # 2 x 2 tiles of 64 px, 2 px apart
        tile = np.asarray(grid, dtype=np.float32)[2:66, 2:66].transpose(2, 0, 1) / 255
    np.testing.assert_allclose(tile, cvae_family.sample(0, 4, seed=2)[0].numpy(), atol=PNG_STEP)
