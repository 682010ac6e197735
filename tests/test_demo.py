"""`genray demo` end to end, in its own process with its own embedded Ray, as a new user runs it."""

import os
import subprocess
import sys
import uuid

import pytest

import leaks
from conftest import free_port


@pytest.mark.ray
def test_demo_trains_serves_answers_and_leaves_no_ray_process(tmp_path):
    mark = uuid.uuid4().hex  # tells this demo's Ray processes from the test session's own
    env = {**os.environ, leaks.SESSION_ENV: mark}
    done = subprocess.run(
        [sys.executable, "-m", "genray.cli", "demo", "--workers", "1", "--epochs", "1",
         "--out", str(tmp_path / "out"), "--storage", str(tmp_path / "runs"), "--store", str(tmp_path / "vae"),
         "--port", str(free_port())],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=500)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert (tmp_path / "out" / "samples.png").stat().st_size > 0
    assert "bad request:      POST /sample {\"n\": 0} -> 422 n: Input should be greater than or equal to 1" in done.stdout, done.stdout[-2000:]
    assert leaks.processes_left(mark) == [], "genray demo left Ray processes running"
