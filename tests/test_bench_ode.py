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
    assert [(r["seed"], r["n_obs"]) for r in rows] == [(0, 30), (0, 50), (0, 100)]  # quick: data seed 0 alone
    for r in rows:
        for key in ("latent_ode_extrap_rmse", "rnn_extrap_rmse", "latent_ode_interp_rmse", "rnn_interp_rmse",
                    "latent_ode_extrap_rmse_refined", "latent_ode_interp_rmse_refined"):
            assert finite(r[key]) and r[key] > 0, (key, r[key])
        # The equal-parameter RNN is within one unit's worth of the latent ODE's parameter count.
        assert r["rnn_hidden"] == 40 and abs(r["rnn_parameters"] - r["latent_ode_parameters"]) < 260
        assert set(r["rnn_widths"]) == {"32", "40", "64"}
        assert r["rnn_widths"]["40"]["extrap_rmse"] == r["rnn_extrap_rmse"]  # trained once
    # Declared claims: a smoke run (in-process path, 1 epoch, one data seed) decides none.
    claims = {d["claim"]["key"]: d for d in data["claims"]}
    assert len(claims) == 12 and not any(d["decided"] for d in claims.values())
    assert claims["ode_code_alone_backprop"]["claim"]["target"] == 1.05
    assert claims["ode_worker_adjoint"]["claim"]["target"] == 1.25
    assert claims["latent_ode_vs_rnn_best_width_100"]["claim"]["seeds"] == [0, 1, 2]

    markdown = (tmp_path / "ode.md").read_text()
    assert "plain torchdiffeq" in markdown and "| 0 | 100 |" in markdown and "z0 refined" in markdown
    assert "| genray's code alone (no Ray) / plain torchdiffeq, ms per iteration, backprop | ≤ 1.05 |" in markdown
    assert "yes" not in markdown.split("| claim |")[1]  # nothing is decided
    text = readme.read_text()
    assert "old table" not in text and "plain torchdiffeq" in text and text.endswith("<!-- /bench:ode -->\nafter\n")

    # A part run alone keeps the other from the previous file, with when it was measured; a variant
    # of the latent ODE trains beside the default and gets its own table.
    alone = CliRunner().invoke(app, ["bench", "ode", "--quick", "--parts", "latent_ode", "--out", str(tmp_path),
                                     "--variant", "encoder=ode_rnn,rnn_hidden=8", "--variant-points", "30"])
    assert alone.exit_code == 0, alone.output
    after = json.loads((tmp_path / "ode.json").read_text())
    assert after["ode"] == data["ode"] and after["ode"]["measured"]["machine"] == data["machine"]
    assert len(after["claims"]) == 12
    (variant,) = after["latent_ode"]["variants"]
    assert variant["model"] == {"encoder": "ode_rnn", "rnn_hidden": 8}
    assert [(r["seed"], r["n_obs"]) for r in variant["rows"]] == [(0, 30)] and finite(variant["rows"][0]["extrap_rmse"])
    assert variant["rows"][0]["parameters"] != after["latent_ode"]["rows"][0]["latent_ode_parameters"]
    assert '| encoder="ode_rnn", rnn_hidden=8 | 0 | 30 |' in (tmp_path / "ode.md").read_text()
    for flags, message in ((["--variant", "encoder=lstm"], "--variant 'encoder=lstm': model.encoder"),
                           (["--variant", "encoder"], "KEY=VALUE pairs"),
                           (["--variant", "latent_dim=2", "--parts", "ode"], "add latent_ode to --parts"),
                           (["--variant", "latent_dim=2", "--variant-points", "40"], "--variant-points takes counts")):
        refused = CliRunner().invoke(app, ["bench", "ode", "--quick", "--out", str(tmp_path), *flags])
        assert refused.exit_code == 2 and message in refused.output, refused.output

    bad = CliRunner().invoke(app, ["bench", "ode", "--quick", "--parts", "ode,spirals", "--out", str(tmp_path)])
    assert bad.exit_code == 2 and "--parts takes ode and latent_ode" in bad.output


def test_bench_ode_decides_its_claims_from_declared_runs():
    """Fixed figures: the overhead claims are medians of per-round ratios on the ray-train path
    with the declared budget; a stored single-seed latent ODE row is 'not decided'."""
    from genray.bench.claims import verdict
    from genray.bench.ode import ODE_BUDGET, SERIES_BUDGET, latent_decisions, overhead_decisions

    def config(adjoint, genray, inproc, plain):
        return {"adjoint": adjoint, "ms_per_iter_per_round": {"genray": genray, "genray-in-process": inproc,
                                                              "plain": plain}}

    ode = {"genray_path": "genray.train.fit: 1 Ray Train worker", "rounds": ODE_BUDGET["rounds"],
           "settings": {k: v for k, v in ODE_BUDGET.items() if k != "rounds"},
           "configs": [config(False, [9.0, 12.0, 9.3], [7.6, 7.5, 7.9], [7.5, 7.4, 7.4]),
                       config(True, [48.0, 47.0, 60.0], [46.0, 50.0, 45.0], [44.0, 44.0, 44.0])]}
    got = {d["claim"]["key"]: d for d in overhead_decisions(ode)}
    # backprop, code alone: rounds 1.013, 1.014, 1.068 -> median 1.014; worker: 1.2, 1.62, 1.26 -> 1.26
    assert abs(got["ode_code_alone_backprop"]["mean"] - 7.5 / 7.4) < 1e-9 and got["ode_code_alone_backprop"]["holds"]
    assert abs(got["ode_worker_backprop"]["mean"] - 9.3 / 7.4) < 1e-9 and got["ode_worker_backprop"]["holds"] is False
    assert got["ode_worker_first_target_adjoint"]["holds"] is False and got["ode_worker_adjoint"]["holds"] is True
    # adjoint, code alone: rounds 1.045, 1.136, 1.023 -> median 1.045 (their mean, 1.068, would miss)
    assert got["ode_code_alone_adjoint"]["holds"] is True
    assert abs(got["ode_code_alone_adjoint"]["mean"] - 46.0 / 44.0) < 1e-9
    ode["rounds"] = 1  # another budget measures nothing towards the claims
    assert not any(d["seeds_measured"] for d in overhead_decisions(ode))

    row = {"n_obs": 100, "latent_ode_extrap_rmse": 0.277, "rnn_extrap_rmse": 0.322}
    latent = {"budget": {**SERIES_BUDGET, "seed": 0}, "rows": [row]}  # stored before seeds were an option
    got = {d["claim"]["key"]: d for d in latent_decisions(latent)}
    assert verdict(got["latent_ode_vs_rnn_equal_parameters_100"]) == "not decided: 1 of 3 seeds measured"
    assert verdict(got["latent_ode_vs_rnn_best_width_100"]) == "not decided: 0 of 3 seeds measured"
    rows = [{"seed": s, "n_obs": 100, "latent_ode_extrap_rmse": 0.25, "rnn_extrap_rmse": rnn,
             "rnn_widths": {"32": {"extrap_rmse": 0.4}, "40": {"extrap_rmse": rnn}, "64": {"extrap_rmse": 0.2}}}
            for s, rnn in ((0, 0.3), (1, 0.24), (2, 0.3))]
    got = {d["claim"]["key"]: d for d in latent_decisions({"budget": {**SERIES_BUDGET, "seed": 0}, "rows": rows})}
    equal = got["latent_ode_vs_rnn_equal_parameters_100"]
    assert equal["holds"] is True and equal["seeds_missing"] == [1]  # the mean holds, seed 1 misses
    assert got["latent_ode_vs_rnn_best_width_100"]["holds"] is False  # the 64-unit RNN wins at every seed


def test_series_trainings_are_kept_by_their_whole_config(tmp_path, monkeypatch):
    """A finished training of the latent_ode part is read back instead of trained again; another
    model config, data seed or budget (a default changed included) trains anew."""
    from genray.bench import ode

    budget = ode.series_budget(quick=True)
    first = ode.cached_series_model("rnn", 5, budget, {"hidden": 4}, tmp_path)
    assert [p.name.startswith("rnn-n5-seed0-") for p in tmp_path.iterdir()] == [True]

    def trains(*args, **kwargs):
        raise AssertionError("trained again")

    monkeypatch.setattr(ode, "train_series_model", trains)
    assert ode.cached_series_model("rnn", 5, budget, {"hidden": 4}, tmp_path) == first
    for other in [("rnn", 5, budget, {"hidden": 5}), ("rnn", 5, {**budget, "seed": 1}, {"hidden": 4}),
                  ("rnn", 5, {**budget, "epochs": 2}, {"hidden": 4}), ("rnn", 6, budget, {"hidden": 4}),
                  ("rnn", 5, budget, {"hidden": 4, "lr_decay": 0.99})]:
        try:
            ode.cached_series_model(*other, cache=tmp_path)
        except AssertionError as err:
            assert "trained again" in str(err)
        else:
            raise AssertionError(f"{other} was read from the cache")
