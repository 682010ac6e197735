"""`genray demo` end to end, in its own process with its own embedded Ray, as a new user runs it:
what `make demo` runs (the Makefile's `genray demo` with its defaults: the run in ./runs, the model
in ./models/vae, the PNGs in ./demo_out), but one epoch instead of 20, a free port instead of 8000
and 1 Ray Train worker instead of 2. Two workers double the demo's minute here (two worker
processes on the two cores the suite shares); training under DDP on 2 workers, exporting and
serving the model is tests/test_deploy.py's run."""

import os
import subprocess
import sys
import uuid

import pytest
from PIL import Image

import leaks
from conftest import free_port

from genray import checkpoint, registry
from genray.runs import read_history


@pytest.mark.ray
def test_demo_trains_serves_answers_and_leaves_no_ray_process(tmp_path):
    mark = uuid.uuid4().hex  # tells this demo's Ray processes from the test session's own
    env = {**os.environ, leaks.SESSION_ENV: mark}
    done = subprocess.run(
        [sys.executable, "-m", "genray.cli", "demo", "--workers", "1", "--epochs", "1", "--port", str(free_port())],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=500)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "== 1/4 training vae with 1 Ray Train workers for 1 epochs" in done.stdout, done.stdout[-2000:]
    (run,) = (tmp_path / "runs").glob("vae-demo-*")
    assert [(h["epoch"], h["workers"]) for h in read_history(run)] == [(0, 1)]
    version, number = registry.resolve(tmp_path / "models" / "vae")  # the run is the model's first version
    assert number == 1 and checkpoint.load(version, weights=False).family == "vae"
    assert f"exported model:   {tmp_path / 'models' / 'vae'}@1 ({version})" in done.stdout
    samples = Image.open(tmp_path / "demo_out" / "samples.png")
    assert samples.format == "PNG" and min(samples.size) >= 8 * 28  # the grid of 64 samples
    assert f"samples (PNG):    {(tmp_path / 'demo_out' / 'samples.png').resolve()}" in done.stdout
    assert "bad request:      POST /sample {\"n\": 0} -> 422 n: Input should be greater than or equal to 1" in done.stdout, done.stdout[-2000:]
    assert leaks.processes_left(mark) == [], "genray demo left Ray processes running"
