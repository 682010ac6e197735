"""`genray bench gnn --quick`: the bench trains through Ray Train end to end and writes finite
figures in the expected structure. Accuracy and timing targets are the bench's business, never
a test's."""

import json
import math

import pytest
from typer.testing import CliRunner

from genray.cli import app


def finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@pytest.mark.ray
def test_bench_gnn_quick_writes_json_markdown_and_readme(ray_session, tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# x\n<!-- bench:gnn -->\nold table\n<!-- /bench:gnn -->\nafter\n")
    result = CliRunner().invoke(app, ["bench", "gnn", "--quick", "--out", str(tmp_path / "out"),
                                      "--storage", str(tmp_path / "runs"), "--readme", str(readme)])
    assert result.exit_code == 0, result.output

    data = json.loads((tmp_path / "out" / "gnn.json").read_text())
    assert data["quick"] is True and data["gcn"]["seeds"] == [0]  # a smoke run: one seed
    gcn = {r["dataset"]: r for r in data["gcn"]["runs"]}
    assert set(gcn) == {"sbm", "karate_standard", "karate_genray_split"}
    # The standard split: PyG's one labelled node per class, every other node for test.
    assert (gcn["karate_standard"]["train_nodes"], gcn["karate_standard"]["test_nodes"]) == (4, 30)
    assert gcn["karate_standard"]["val_acc"] is None
    assert gcn["karate_genray_split"]["nodes"] == 34 and gcn["karate_genray_split"]["train_nodes"] == 4
    for row in gcn.values():
        assert 0.0 <= row["test_acc"] <= 1.0 and row["seed"] == 0
        assert row["train_nodes"] + row["val_nodes"] + row["test_nodes"] == row["nodes"]
    # The declared claims: 3 seeds and 200 epochs each, so a smoke run decides none of them.
    claims = {d["claim"]["key"]: d for d in data["gcn_claims"]}
    assert set(claims) == {"gcn_sbm", "gcn_karate_standard", "gcn_karate_genray_split"}
    for d in claims.values():
        assert d["claim"]["seeds"] == [0, 1, 2] and d["claim"]["target"] == 0.9 and d["decided"] is False

    mpnn = data["mpnn"]
    targets = mpnn["targets"]
    assert targets == ["triangles", "avg_shortest_path", "algebraic_connectivity"]
    assert sum(mpnn["graphs"].values()) == data["budget"]["num_graphs"] and mpnn["graphs"]["test"] > 0
    assert set(mpnn["test_mae"]) == {"mpnn", "mean", "degree_mlp"}
    for who, per_target in mpnn["test_mae"].items():
        assert set(per_target) == set(targets)  # (the JSON sorts keys)
        assert all(finite(v) and v >= 0 for v in per_target.values()), (who, per_target)
        assert finite(mpnn["test_mae_over_std"][who])
    assert 0 <= mpnn["epoch"] < mpnn["epochs"] == data["budget"]["mpnn_epochs"]

    assert [t["workers"] for t in data["throughput"]] == [1, 2]
    for t in data["throughput"]:
        assert t["epochs_measured"] >= 1
        assert all(finite(t[k]) and t[k] > 0 for k in ("epoch_s", "graphs_per_s", "nodes_per_s")), t
    all_runs = ["sbm_seed0", "karate_standard_seed0", "karate_genray_split_seed0", "mpnn", "mpnn_2_workers"]
    assert [s["runs"] for s in data["gcn"]["load_average"]] == [all_runs]
    assert all(finite(s["start"]) and finite(s["end"]) for s in data["gcn"]["load_average"])
    assert len(data["claims"]) == 2 and all(isinstance(c["holds"], bool) for c in data["claims"])

    markdown = (tmp_path / "out" / "gnn.md").read_text()
    assert "Quick smoke run" in markdown and "MLP on degree statistics" in markdown
    assert "| GCN test accuracy on KarateClub, standard split (4 labelled nodes, 30 test nodes) | ≥ 0.9 |" in markdown
    assert "not decided: 0 of 3 seeds measured" in markdown  # 2 epochs is not the declared budget
    text = readme.read_text()
    assert "old table" not in text and "| karate_standard |" in text and text.endswith("<!-- /bench:gnn -->\nafter\n")

    # A part run alone keeps the other from the previous file.
    alone = CliRunner().invoke(app, ["bench", "gnn", "--quick", "--parts", "gcn", "--out", str(tmp_path / "out"),
                                     "--storage", str(tmp_path / "runs")])
    assert alone.exit_code == 0, alone.output
    after = json.loads((tmp_path / "out" / "gnn.json").read_text())
    assert after["mpnn"] == data["mpnn"] and after["throughput"] == data["throughput"] and len(after["claims"]) == 2

    bad = CliRunner().invoke(app, ["bench", "gnn", "--quick", "--parts", "gcn,gat", "--out", str(tmp_path / "out")])
    assert bad.exit_code == 2 and "--parts takes gcn and mpnn" in bad.output
