"""`genray bench ode --quick`: the bench runs end to end and writes finite figures in the
expected structure. Timing targets are the bench's business, never a test's."""

import json
import math

from typer.testing import CliRunner

from genray.cli import app


def finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def test_bench_ode_quick_writes_json_markdown_and_readme(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# x\n<!-- bench:ode -->\nold table\n<!-- /bench:ode -->\nafter\n")
    result = CliRunner().invoke(app, ["bench", "ode", "--quick", "--out", str(tmp_path), "--readme", str(readme)])
    assert result.exit_code == 0, result.output

    data = json.loads((tmp_path / "ode.json").read_text())
    assert data["quick"] is True and "in-process" in data["ode"]["genray_path"]
    configs = data["ode"]["configs"]
    assert [c["adjoint"] for c in configs] == [False, True]
    for c in configs:
        for impl in ("genray", "plain"):
            m = c[impl]
            for key in ("ms_per_iter_median", "iters_per_s", "nfe_per_iter", "final_mse"):
                assert finite(m[key]) and m[key] > 0, (impl, key, m[key])
            assert m["peak_rss_growth_mib"] is None or finite(m["peak_rss_growth_mib"])
        assert finite(c["time_ratio"])
        assert c["plain_loaded_genray"] == []  # the plain loop ran without any genray module
        # Same seed, same batches, same schedule: the two loops train the same weights.
        assert c["genray"]["final_mse"] == c["plain"]["final_mse"] or \
            abs(c["genray"]["final_mse"] / c["plain"]["final_mse"] - 1) < 1e-3
        assert c["genray"]["nfe_per_iter"] == c["plain"]["nfe_per_iter"]
    backprop, adjoint = configs
    assert backprop["genray"]["nfe_backward_per_iter"] == 0 and adjoint["genray"]["nfe_backward_per_iter"] > 0

    rows = data["latent_ode"]["rows"]
    assert [r["n_obs"] for r in rows] == [30, 50, 100]
    for r in rows:
        for key in ("latent_ode_extrap_rmse", "rnn_extrap_rmse", "latent_ode_interp_rmse", "rnn_interp_rmse",
                    "latent_ode_extrap_rmse_refined", "latent_ode_interp_rmse_refined"):
            assert finite(r[key]) and r[key] > 0, (key, r[key])
    assert len(data["targets"]) == 5 and all(isinstance(t["holds"], bool) for t in data["targets"])

    markdown = (tmp_path / "ode.md").read_text()
    assert "plain torchdiffeq" in markdown and "| 100 |" in markdown and "z0 refined" in markdown
    text = readme.read_text()
    assert "old table" not in text and "plain torchdiffeq" in text and text.endswith("<!-- /bench:ode -->\nafter\n")

    # A part run alone keeps the other from the previous file, with when it was measured.
    alone = CliRunner().invoke(app, ["bench", "ode", "--quick", "--parts", "latent_ode", "--out", str(tmp_path)])
    assert alone.exit_code == 0, alone.output
    after = json.loads((tmp_path / "ode.json").read_text())
    assert after["ode"] == data["ode"] and after["ode"]["measured"]["machine"] == data["machine"]
    assert len(after["targets"]) == 5

    bad = CliRunner().invoke(app, ["bench", "ode", "--quick", "--parts", "ode,spirals", "--out", str(tmp_path)])
    assert bad.exit_code == 2 and "--parts takes ode and latent_ode" in bad.output
