import pytest
from typer.testing import CliRunner

from genray.cli import app

runner = CliRunner()


@pytest.mark.parametrize("command", ["train", "export", "serve", "demo", "tune", "heat", "bench", "bench quality",
                                     "bench heat", "bench ode", "bench gnn", "bench tune", "bench serve", "models",
                                     "models list", "models show", "models alias", "models unalias", "models delete"])
def test_every_command_has_help(command):
    result = runner.invoke(app, [*command.split(), "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


def test_top_level_help_lists_commands():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("train", "export", "serve", "demo", "models"):
        assert command in result.output


def test_train_rejects_a_bad_key_before_starting_ray(tmp_path):
    result = runner.invoke(app, ["train", "vae", "--set", "model.latent_dim=0", "--storage", str(tmp_path)])
    assert result.exit_code == 2
    assert "model.latent_dim: Input should be greater than or equal to 1" in result.output


def test_train_resume_of_unknown_run(tmp_path):
    result = runner.invoke(app, ["train", "--resume", "nope", "--storage", str(tmp_path)])
    assert result.exit_code == 2 and "no run 'nope'" in result.output


def test_export_of_missing_run(tmp_path):
    result = runner.invoke(app, ["export", "nope", "--storage", str(tmp_path), "--to", str(tmp_path / "m")])
    assert result.exit_code == 2 and "run folder not found" in result.output


def test_serve_without_an_exported_model(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    from pathlib import Path

    config = Path(__file__).resolve().parents[1] / "serve" / "vae.yaml"
    result = runner.invoke(app, ["serve", str(config)])
    assert result.exit_code == 2 and "no exported model" in result.output


def test_heat_command_writes_png_gif_and_probes(tmp_path):
    result = runner.invoke(app, ["heat", "--n", "16", "--dt", "0.01", "--t-end", "0.05", "--frames", "3",
                                 "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "heat.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "heat.gif").read_bytes()[:3] == b"GIF"
    assert "u(0.5, 0.5) = " in result.output


def test_heat_command_rejects_bad_input(tmp_path):
    result = runner.invoke(app, ["heat", "--n", "1", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "n must be >= 2" in result.output


def test_set_fields_read_files_as_json_text_and_png(tmp_path):
    import base64

    import numpy as np

    from genray.client import png_base64
    from genray.config import ConfigError
    from genray.query_files import parse_sets

    (tmp_path / "y0.json").write_text("[[2, 0]]")
    (tmp_path / "prompt.txt").write_text("def ")
    digit = np.linspace(0.0, 1.0, 28 * 28, dtype=np.float32).reshape(28, 28)
    png = png_base64(digit)
    (tmp_path / "d.png").write_bytes(base64.b64decode(png))
    body = parse_sets(["n=8", f"y0=@{tmp_path / 'y0.json'}", f"prompt=@{tmp_path / 'prompt.txt'}",
                       f'images=["@{tmp_path / "d.png"}", "@{tmp_path / "d.png"}"]', "a.b=0.5"])
    assert body == {"n": 8, "y0": [[2, 0]], "prompt": "def ", "images": [png, png], "a": {"b": 0.5}}
    with pytest.raises(ConfigError, match="images: no file"):
        parse_sets([f'images=["@{tmp_path / "missing.png"}"]'])


def test_answer_images_are_written_as_one_png_or_a_grid(tmp_path):
    import base64

    import numpy as np
    from PIL import Image

    from genray.client import png_base64
    from genray.query_files import shown, write_images

    pngs = [png_base64(np.full((28, 28), v, dtype=np.float32)) for v in (0.0, 0.5, 1.0)]
    write_images(pngs[:1], tmp_path / "one.png")
    assert (tmp_path / "one.png").read_bytes() == base64.b64decode(pngs[0])
    write_images(pngs, tmp_path / "sub" / "grid.png")
    assert Image.open(tmp_path / "sub" / "grid.png").size == (2 * 30 + 2, 2 * 30 + 2)  # 2 x 2 tiles, 2 px gaps
    with pytest.raises(ValueError, match="no images to write"):
        write_images([], tmp_path / "none.png")
    with pytest.raises(ValueError, match="differ in size"):
        write_images([pngs[0], png_base64(np.zeros((8, 8), dtype=np.float32))], tmp_path / "bad.png")
    assert pngs[0] not in shown({"image": pngs[0]}, pngs[:1]) and "<base64 PNG," in shown({"image": pngs[0]}, pngs[:1])


@pytest.mark.parametrize("command", ["status", "stop"])
def test_job_commands_say_once_that_the_cluster_is_unreachable(command):
    from typer.testing import CliRunner

    from genray.cli import app

    out = CliRunner().invoke(app, ["job", command, "some-id", "--address", "http://127.0.0.1:9"])
    assert out.exit_code == 2
    assert out.output.count("error:") == 1 and "Failed to connect to Ray" in out.output, out.output
