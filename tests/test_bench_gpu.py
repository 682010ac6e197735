"""`genray bench gpu` here, on the CPU at toy sizes: the script a GPU machine runs unchanged
produces every row; its claims are decided only from a GPU run at their budgets."""

import copy
import json
import subprocess
import sys

import pytest

from genray.bench import gpu


@pytest.fixture(scope="module")
def quick_result(tmp_path_factory):
    """The command as a GPU machine would run it, with --device cpu --quick (its own Ray)."""
    out = tmp_path_factory.mktemp("bench-gpu")
    subprocess.run([sys.executable, "-m", "genray.cli", "bench", "gpu", "--device", "cpu", "--quick", "--out", str(out)],
                   check=True, capture_output=True, text=True, timeout=400)
    return json.loads((out / "gpu.json").read_text()), (out / "gpu.md").read_text()


def test_the_quick_run_on_the_cpu_gives_every_row(quick_result):
    result, markdown = quick_result
    assert result["device"] == "cpu" and result["quick"]
    rows = result["training"]["rows"]
    assert set(rows) == {f"{f} {p}" for f in gpu.FAMILIES for p in gpu.PRECISIONS}
    for row in rows.values():
        assert len(row["plain"]) == len(row["genray"]) == len(gpu.QUICK["train"]["seeds"])
        assert all(v > 0 for v in row["plain"] + row["genray"])
    assert all(rows[f"{f} bf16"]["bf16_vs_fp32"][0] > 0 for f in gpu.FAMILIES)
    endpoints = result["serving"]["endpoints"]
    assert set(endpoints) == set(gpu.SERVE_CASES)
    for by_c in endpoints.values():
        assert set(by_c) == {str(c) for c in gpu.QUICK["serve"]["concurrency"]}
        for servers in by_c.values():
            assert len(servers) == 2 and all(r["errors"] == 0 and r["throughput_rps"] > 0 for r in servers.values())
    heat = result["heat"]["rows"]
    assert {(r["n"], r["dtype"]) for r in heat} == {(n, d) for n in gpu.QUICK["heat"]["sizes"] for d in gpu.HEAT_DTYPES}
    assert all(r["ms_per_step"] > 0 and r["cg_iterations"] > 0 for r in heat)
    # No claim is decided from toy sizes on a CPU; the table says so, with every claim listed.
    assert all(not d["decided"] for d in gpu.decisions(result))
    assert "no claim is decided" in markdown and markdown.count("not decided") == len(gpu.CLAIMS)


def test_claims_are_decided_from_a_gpu_run_at_their_budgets(quick_result):
    result = copy.deepcopy(quick_result[0])
    assert gpu.claim_values(result) == {}
    # The same figures as if a GPU run at the declared budgets had produced them.
    result.update(device="cuda", quick=False, gpu="a GPU")
    seeds = gpu.TRAIN_BUDGET["seeds"]
    result["training"]["budget"] = gpu.TRAIN_BUDGET
    for key, row in result["training"]["rows"].items():
        row["genray_vs_plain"] = [0.97, 0.99, 0.90]
        if "bf16_vs_fp32" in row:
            row["bf16_vs_fp32"] = [1.6] * len(seeds)
    serving = result["serving"]
    serving.update(requests_per_round=gpu.SERVE_BUDGET["requests"], rounds=gpu.SERVE_BUDGET["rounds"])
    for case in gpu.SERVE_CASES:
        cell = serving["endpoints"][case].setdefault("32", copy.deepcopy(serving["endpoints"][case]["4"]))
        cell["genray (Ray Serve, 1 replica)"]["vs_plain_by_round"] = {"throughput_rps": [3.5, 2.5, 4.0]}
    result["heat"] = {"budget": gpu.HEAT_BUDGET, "rows": [
        {"n": 1024, "dtype": "float64", "device": "cuda:0", "ms_per_step": 4.0, "cg_iterations": 8, "residual": 1e-9},
        {"n": 2048, "dtype": "float64", "device": "cuda:0", "ms_per_step": 16.0, "cg_iterations": 9, "residual": 1e-9},
        {"n": 2048, "dtype": "float64", "device": "cpu", "ms_per_step": 900.0, "cg_iterations": 9, "residual": 1e-9}]}
    decided = {d["claim"]["key"]: d for d in gpu.decisions(result)}
    assert all(d["decided"] for d in decided.values())
    assert decided["train_vae_fp32_vs_plain"]["holds"]  # mean 0.953 >= 0.95, seed 2 short of it
    assert decided["train_vae_fp32_vs_plain"]["seeds_missing"] == [2]
    assert decided["train_gan_bf16_vs_fp32"]["holds"]
    assert decided["serve_gan_sample_vs_plain"]["holds"]  # the median of the rounds, 3.5
    assert decided["heat_1024_float64_ms"]["holds"] and not decided["heat_2048_float64_ms"]["holds"]
    # Another budget decides nothing.
    result["training"]["budget"] = {**gpu.TRAIN_BUDGET, "epochs": 1}
    assert not any(k.startswith("train_") for k in gpu.claim_values(result))


def test_the_compile_bench_table_gives_each_seed_and_the_cost_of_compiling():
    from genray.bench import compile as bench_compile
    from genray.bench import machine

    result = {"machine": machine(), "device": "cpu", "budget": bench_compile.BUDGET, "wall_s": 1.0,
              "rows": {"vae": {"eager": [100.0, 110.0, 90.0], "compiled": [150.0, 160.0, 140.0],
                               "eager_first_epoch_s": [1.0] * 3, "compiled_first_epoch_s": [20.0] * 3,
                               "speedup": [1.5, 160 / 110, 140 / 90]}}}
    table = bench_compile.markdown_table(result)
    assert "| vae | 100 | 150 | 1.50 (1.50, 1.45, 1.56) | 1.0 | 20.0 |" in table
