"""`genray bench serve` on the shared Serve: a small load, every request answered."""

import json

import pytest


@pytest.mark.ray
def test_bench_serve_smoke(serve_url, tmp_path):
    from typer.testing import CliRunner

    from genray.cli import app

    port = serve_url.rsplit(":", 1)[1]
    out = CliRunner().invoke(app, ["bench", "serve", "--requests", "40", "--concurrency", "4", "--warmup", "4",
                                   "--port", port, "--out", str(tmp_path)])
    assert out.exit_code == 0, out.output
    result = json.loads((tmp_path / "serve.json").read_text())
    for endpoint in ("gan/sample", "heat/solve"):
        r = result["endpoints"][endpoint]
        assert r["requests"] == 40 and r["errors"] == 0, r
        assert 0 < r["p50_ms"] <= r["p99_ms"] and r["throughput_rps"] > 0
    markdown = (tmp_path / "serve.md").read_text()
    assert "| `heat/solve` | 40 | 4 | 0 |" in markdown
    multiplex, rollout = result["multiplex"], result["rollout"]
    assert multiplex["warm"]["errors"] == 0 and multiplex["cold"]["requests"] >= multiplex["models"]
    assert 0 < multiplex["warm"]["p50_ms"] and 0 < multiplex["cold"]["p50_ms"] <= multiplex["cold"]["p99_ms"]
    assert rollout["requests"] == 40 and rollout["errors"] == 0 and len(rollout["steps"]) == 3
    assert "loaded by the request (cold)" in markdown and "**0 failed**" in markdown
