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
    assert data["quick"] is True
    gcn = {r["dataset"]: r for r in data["gcn"]}
    assert set(gcn) == {"sbm", "karate"} and gcn["sbm"]["target"] == 0.9
    assert gcn["karate"]["nodes"] == 34 and gcn["karate"]["train_nodes"] == 4  # one per class
    for row in gcn.values():
        assert 0.0 <= row["test_acc"] <= 1.0 and 0.0 <= row["val_acc"] <= 1.0
        assert row["train_nodes"] + row["val_nodes"] + row["test_nodes"] == row["nodes"]

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
    assert [s["runs"] for s in data["load_average"]] == [["sbm", "karate", "mpnn", "mpnn_2_workers"]]
    assert all(finite(s["start"]) and finite(s["end"]) for s in data["load_average"])
    assert len(data["claims"]) == 3 and all(isinstance(c["holds"], bool) for c in data["claims"])

    markdown = (tmp_path / "out" / "gnn.md").read_text()
    assert "Quick smoke run" in markdown and "MLP on degree statistics" in markdown
    text = readme.read_text()
    assert "old table" not in text and "| karate |" in text and text.endswith("<!-- /bench:gnn -->\nafter\n")
