import pytest
from typer.testing import CliRunner

from genray.cli import app

runner = CliRunner()


@pytest.mark.parametrize("command", ["train", "export", "serve", "demo", "tune", "heat", "bench", "bench quality",
                                     "bench heat", "bench ode", "bench gnn", "bench tune", "bench serve"])
def test_every_command_has_help(command):
    result = runner.invoke(app, [*command.split(), "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


def test_top_level_help_lists_commands():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("train", "export", "serve", "demo"):
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
