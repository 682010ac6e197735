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
    assert "| `heat/solve` | 40 | 4 | 0 |" in (tmp_path / "serve.md").read_text()
