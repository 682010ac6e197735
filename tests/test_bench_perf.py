"""`genray bench perf`'s parts on tiny budgets: they run, measure what they say, and compare like
with like. The figures themselves live in bench_results/perf.md, never in assertions."""

import io
import json
import subprocess
import sys

import numpy as np
import pytest

from genray.bench import perf
from genray.deploy import DEPLOYMENTS


def test_plain_training_loop_reports_throughput_per_epoch():
    out = subprocess.run([sys.executable, "-m", "genray.bench.plain_train", "vae", "--epochs", "2", "--batch-size", "32",
                          "--set", "data.limit=96"], capture_output=True, text=True, timeout=120, check=True)
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["world"] == 1 and len(report["epochs"]) == 2
    assert all(e["samples"] > 0 and e["seconds"] > 0 and e["cpu_seconds"] > 0 for e in report["epochs"])
    assert report["first_step_at"] > 0


def test_inference_times_every_deployment_without_http():
    result = perf.inference(lambda line: None, budget_s=0.05)
    timed = {key.split("/")[0] for key in result}
    assert set(DEPLOYMENTS) | {"heat"} <= timed
    assert all(r["ms"] > 0 for r in result.values())


def test_plain_server_and_load_generator(tmp_path):
    """The baseline server answers the deployments' own request shapes, and the load generator
    counts what it sends: 200s as latencies, the rest as errors by status."""
    import requests

    from genray.deploy.examples import untrained_model

    gan, vae = untrained_model("gan", tmp_path), untrained_model("vae", tmp_path)
    port = perf.free_port()
    server = subprocess.Popen([sys.executable, "-m", "genray.bench.plain_server", "--gan", gan, "--vae", vae,
                               "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        base = f"http://127.0.0.1:{port}"
        perf.wait_until_up(base + "/healthz", timeout=60)
        raw = requests.post(base + "/gan/sample", json={"n": 2, "seed": 1, "format": "npy"}, timeout=10)
        assert np.load(io.BytesIO(raw.content)).shape == (2, 1, 28, 28)
        good = perf.run_load(base + "/vae/decode", {"z": [[0.0] * 8], "format": "npy"}, 40, 4, 5)
        assert good["errors"] == 0 and good["throughput_rps"] > 0 and good["p50_ms"] <= good["p99_ms"]
        bad = perf.run_load(base + "/vae/decode", {"z": [[0.0] * 3]}, 10, 2, 0)
        assert bad["errors"] == 10 and bad["error_kinds"] == ["422"]
    finally:
        server.terminate()
        server.wait(timeout=20)


@pytest.mark.parametrize("result, holds", [
    ({"training": {"ratios": {"genray x1 / plain": 0.97, "genray x2 / torchrun x2": 0.85}}}, [True, False]),
])
def test_targets_are_judged_from_the_ratios(result, holds):
    assert [t["holds"] for t in perf.targets(result)] == holds


def test_serving_targets_are_judged_for_every_replica_setting_against_the_plain_server():
    def cell(rps, p50):
        return {"throughput_rps": rps, "p50_ms": p50}

    one, two = f"{perf.GENRAY}, 1 replica)", f"{perf.GENRAY}, 2 replicas)"
    result = {"serving": {"endpoints": {"gan/sample": {
        "1": {one: cell(300, 2.9), perf.PLAIN: cell(500, 2.0), two: cell(250, 3.1)},
        "32": {one: cell(1100, 27), perf.PLAIN: cell(500, 60), two: cell(900, 30)},
    }}}}
    judged = {t["target"]: t["holds"] for t in perf.targets(result)}
    assert judged == {
        f"gan/sample, {one}: throughput at concurrency 32 >= 2 x plain": True,
        f"gan/sample, {one}: p50 at concurrency 1 <= 1.5 x plain": True,
        f"gan/sample, {two}: throughput at concurrency 32 >= 2 x plain": False,
        f"gan/sample, {two}: p50 at concurrency 1 <= 1.5 x plain": False,
    }


def test_a_part_not_run_is_kept_from_the_previous_results_with_when_it_was_measured(monkeypatch):
    from genray.bench import machine

    monkeypatch.setattr(perf, "inference", lambda log: {"vae/decode": {"ms": 0.9}})
    earlier = {**machine(), "date": "2026-11-23", "cpu": "AMD EPYC"}
    training = {"family": "vae", "epochs": 8, "batch_size": 64, "overrides": [], "ratios": {
        "genray x1 / plain": 0.97, "genray x2 / torchrun x2": 0.85},
        "runs": {what: {"samples_per_s": 2000.0, "samples_per_cpu_s": 2000.0, "first_step_s": 9.0, "epoch_wall_s": None,
                        "rounds": [{}, {}]} for what in ("plain", "genray x1", "torchrun x2", "genray x2")}}
    previous = {"machine": earlier, "load_average": {"start": 0.5, "end": 1.5}, "training": training}
    result = perf.run(parts=["inference"], previous=previous, log=lambda line: None)
    assert result["training"]["ratios"] == training["ratios"]
    assert result["measured"]["training"]["machine"]["date"] == "2026-11-23"
    assert result["measured"]["inference"]["machine"] == result["machine"]
    assert [t["target"] for t in result["targets"]][:2] == [t["target"] for t in perf.targets({"training": training})]
    table = perf.markdown_table(result)
    assert "Training: measured 2026-11-23 on AMD EPYC" in table and "Load average 0.5 at the start, 1.5 at the end." in table
    assert f"Inference: measured {result['machine']['date']}" in table
    assert "serving" not in result  # nothing to keep: no earlier serving figures


def test_training_ratios_come_with_the_same_ratio_round_by_round(monkeypatch, tmp_path):
    speeds = {"plain": [1000, 1200], "genray x1": [950, 1260], "torchrun x2": [1800, 2000], "genray x2": [1700, 1900]}
    taken = {k: iter(v) for k, v in speeds.items()}

    def figures(what):
        return {"samples_per_s": float(next(taken[what])), "samples_per_cpu_s": 1.0, "first_step_s": 1.0,
                "epoch_wall_s": 1.0}

    monkeypatch.setattr(perf, "plain_training", lambda family, epochs, batch, world, overrides, log:
                        figures("plain" if world == 1 else "torchrun x2"))
    monkeypatch.setattr(perf, "genray_training", lambda family, epochs, batch, workers, overrides, storage, name, log:
                        figures(f"genray x{workers}"))
    t = perf.training("vae", 3, 64, 2, [], tmp_path, lambda line: None)
    assert t["ratios"]["genray x1 / plain"] == pytest.approx(1105 / 1100)  # medians of the rounds
    assert t["ratios_by_round"]["genray x1 / plain"] == pytest.approx([0.95, 1.05])
    assert t["ratios_by_round"]["genray x2 / torchrun x2"] == pytest.approx([1700 / 1800, 0.95])
    from genray.bench import machine

    table = perf.markdown_table({"training": t, "machine": machine(), "load_average": {"start": 1.0, "end": 1.0}})
    assert "genray x1 / plain = 1.005 (rounds: 0.950, 1.050)" in table
