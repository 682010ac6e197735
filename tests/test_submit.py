"""Jobs on a real Ray head: `ray start --head` on free loopback ports with token authentication
(RAY_AUTH_MODE=token, a token generated for this test in a temporary HOME, so the user's
~/.ray/auth_token is neither read nor written). The job API refuses requests without the
token; `genray submit` and Ray's `ray job submit` run jobs/smoke.yaml through jobs/train.py;
`genray job` lists, follows and stops jobs; Ray's `serve deploy` puts serve/heat.yaml on the
same head.

The head is this module's own: its processes are stopped by pid at the end (never `ray stop`,
which would stop every Ray on the machine), and the tests' shared Ray session never sees it."""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
import requests
import yaml
from typer.testing import CliRunner

from genray.cli import app
from genray.config import ConfigError
from genray.submit import RAY_JOB_CONFIG, check_job_storage, client, entrypoint_of, load_spec, read_token, submit, wait_for

from conftest import free_port

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SMOKE = REPO / "jobs" / "smoke.yaml"
OUTLIVES = "use s3://bucket/prefix or an absolute path every node of the cluster mounts (e.g. /mnt/shared/runs)"


@dataclass
class Head:
    url: str  # the dashboard: job API and Serve's REST API
    token: str
    env: dict  # what the head runs with: Ray's CLIs given this env find the token
    home: Path


def head_env(home: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}  # no RAY_ADDRESS etc.
    env.update(HOME=str(home), RAY_AUTH_MODE="token", PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}")
    return env


def wait_until_up(url: str, token: str, process: subprocess.Popen, timeout_s: float = 180.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"ray start exited with {process.returncode}")
        try:
            if requests.get(f"{url}/api/jobs/", headers={"Authorization": f"Bearer {token}"}, timeout=5).ok:
                return
        except requests.ConnectionError:
            pass
        time.sleep(1.0)
    raise TimeoutError(f"the head's job API at {url} did not come up in {timeout_s} s")


@pytest.fixture(scope="module")
def head():
    # A short path: Ray's unix sockets live under --temp-dir and must stay under ~107 characters.
    home = Path(tempfile.mkdtemp(prefix="genray-head-", dir="/tmp"))
    env = head_env(home)
    subprocess.run([BIN / "ray", "get-auth-token", "--generate"], env=env, check=True, capture_output=True)
    token = (home / ".ray" / "auth_token").read_text().strip()
    dashboard = free_port()
    ports = {"port": free_port(), "dashboard-port": dashboard, "ray-client-server-port": free_port(),
             "node-manager-port": free_port(), "object-manager-port": free_port(),
             "dashboard-agent-listen-port": free_port(), "dashboard-agent-grpc-port": free_port(),
             "runtime-env-agent-port": free_port(), "metrics-export-port": free_port()}
    command = [str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1",
               "--dashboard-host=127.0.0.1", "--include-dashboard=true", "--num-cpus=4",
               f"--temp-dir={home / 'ray'}", "--disable-usage-stats"]
    command += [f"--{name}={port}" for name, port in ports.items()]
    log = open(home / "head.log", "w")
    # Its own session: the head and everything it starts are this process and its descendants.
    process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{dashboard}"
    try:
        wait_until_up(url, token, process)
        yield Head(url, token, env, home)
    finally:
        stop_head(process)
        log.close()
        shutil.rmtree(home, ignore_errors=True)


def stop_head(process: subprocess.Popen) -> None:
    """Stop `ray start --block` and every process it started, by pid."""
    try:
        tree = [psutil.Process(process.pid)] + psutil.Process(process.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return
    for p in tree:
        try:
            p.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(tree, timeout=8)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    process.wait(timeout=10)


# --- without a cluster -------------------------------------------------------------------------

@pytest.mark.parametrize("command", ["submit", "job", "job list", "job status", "job logs", "job stop"])
def test_job_commands_have_help(command):
    result = CliRunner().invoke(app, [*command.split(), "--help"])
    assert result.exit_code == 0, result.output
    assert "--address" in result.output or command == "job"  # the group lists its commands


def test_job_spec_errors_name_the_key():
    spec = REPO / "jobs" / "smoke.yaml"
    with pytest.raises(ConfigError, match="model.latent_dim: Input should be greater than or equal to 1"):
        load_spec(spec, ["config.model.latent_dim=0"])
    with pytest.raises(ConfigError, match="gpus: unknown key"):
        load_spec(spec, ["gpus=1"])
    with pytest.raises(ConfigError, match="gpus_per_worker: Input should be less than or equal to 1"):
        load_spec(spec, ["gpus_per_worker=2"])
    with pytest.raises(ConfigError, match="unknown sections"):
        load_spec(spec, ["config.optimizer.lr=1"]).run_config()


def test_submit_checks_the_spec_before_contacting_the_cluster(tmp_path):
    outside = tmp_path / "spec.yaml"
    outside.write_text((REPO / "jobs" / "smoke.yaml").read_text())
    with pytest.raises(ConfigError, match="must be inside the working folder"):
        submit(outside, address="http://127.0.0.1:9", working_dir=REPO)
    with pytest.raises(ConfigError, match="no jobs/nope.py"):
        submit(REPO / "jobs" / "smoke.yaml", address="http://127.0.0.1:9", working_dir=REPO,
               overrides=["entrypoint=nope.py"])


def test_a_relative_storage_or_export_is_refused():
    with pytest.raises(ConfigError) as refused:
        load_spec(SMOKE, ["storage=runs"])
    assert str(refused.value) == (
        "storage 'runs' is a relative path: a job runs in Ray's copy of the working directory, which Ray "
        f"deletes with the session, so the checkpoints would be lost; {OUTLIVES}")
    with pytest.raises(ConfigError) as refused:
        load_spec(SMOKE, ["export=models"])
    assert str(refused.value) == (
        "export 'models' is a relative path: a job runs in Ray's copy of the working directory, which Ray "
        "deletes with the session, so the exported model would be lost; use s3://bucket/prefix or an "
        "absolute path every node of the cluster mounts (e.g. /mnt/shared/models)")


def test_a_spec_must_say_where_its_storage_is(tmp_path):
    bare = tmp_path / "bare.yaml"
    bare.write_text("family: vae\nworkers: 1\n")
    with pytest.raises(ConfigError) as refused:
        load_spec(bare)
    assert str(refused.value) == f"{bare}: storage is required, where the job's checkpoints go; {OUTLIVES}"
    assert load_spec(bare, ["storage=s3://bucket/runs"]).storage == "s3://bucket/runs"


@pytest.mark.parametrize("override, refusal", [
    ("storage=runs", "error: storage 'runs' is a relative path"),
    ("export=models", "error: export 'models' is a relative path"),
])
def test_genray_submit_refuses_a_relative_storage_before_contacting_the_cluster(override, refusal, monkeypatch):
    contacted = []
    monkeypatch.setattr("genray.submit.client", lambda *args, **kwargs: contacted.append(args))
    result = CliRunner().invoke(app, ["submit", str(SMOKE), "--address", "http://127.0.0.1:9",
                                      "--working-dir", str(REPO), "--set", override])
    assert result.exit_code == 2, result.output
    assert refusal in result.output and "which Ray deletes with the session" in result.output, result.output
    assert contacted == []


@pytest.fixture
def in_a_job(tmp_path, monkeypatch):
    """This process as a Ray job's entrypoint: its cwd is Ray's unpacked copy of the working
    folder, and it has the runtime_env that Ray's job supervisor passes to every entrypoint."""
    copy = tmp_path / "session" / "runtime_resources" / "working_dir_files" / "_ray_pkg_0123abcd"
    copy.mkdir(parents=True)
    monkeypatch.chdir(copy)
    monkeypatch.setenv(RAY_JOB_CONFIG, json.dumps(
        {"runtime_env": {"working_dir": "gcs://_ray_pkg_0123abcd.zip"}, "metadata": {}}))
    return copy.resolve()


@pytest.fixture
def job_entrypoint(monkeypatch):
    """jobs/train.py's main, with ray.init refusing to run: a refused spec must stop before it."""
    loader = importlib.util.spec_from_file_location("jobs_train", REPO / "jobs" / "train.py")
    module = importlib.util.module_from_spec(loader)
    loader.loader.exec_module(module)

    def no_cluster(*args, **kwargs):
        raise AssertionError("ray.init was called for a refused spec")

    monkeypatch.setattr(module.ray, "init", no_cluster)
    return module.main


def test_the_job_entrypoint_refuses_storage_that_vanishes_with_the_job(in_a_job, job_entrypoint, capsys):
    assert job_entrypoint([str(SMOKE), "--set", "storage=runs"]) == 2
    assert "error: storage 'runs' is a relative path: a job runs in Ray's copy" in capsys.readouterr().err

    inside = in_a_job / "runs"
    assert job_entrypoint([str(SMOKE), "--set", f"storage={inside}"]) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: storage '{inside}' lies inside this job's copy of the working directory ({in_a_job}), "
        f"which Ray deletes with the session, so the checkpoints would be lost; {OUTLIVES}")

    assert job_entrypoint([str(SMOKE), "--set", f"export={in_a_job / 'models'}"]) == 2
    assert "error: export" in capsys.readouterr().err


def test_a_job_accepts_s3_and_an_absolute_path_outside_its_copy(in_a_job, tmp_path):
    on_s3 = load_spec(SMOKE, ["storage=s3://bucket/runs", "export=s3://bucket/models"])
    check_job_storage(on_s3)
    shared = load_spec(SMOKE, [f"storage={tmp_path / 'shared' / 'runs'}", f"export={tmp_path / 'shared' / 'models'}"])
    check_job_storage(shared)
    assert (on_s3.storage, shared.export) == ("s3://bucket/runs", str(tmp_path / "shared" / "models"))


@pytest.mark.parametrize("runtime_env", [None, {}, {"working_dir": "local:///srv/genray"}])
def test_only_a_job_in_a_copy_of_its_working_folder_has_job_local_paths(runtime_env, tmp_path, monkeypatch):
    # Outside a job, or in a job that runs where it stands, the cwd outlives the job.
    monkeypatch.chdir(tmp_path)
    if runtime_env is None:
        monkeypatch.delenv(RAY_JOB_CONFIG, raising=False)
    else:
        monkeypatch.setenv(RAY_JOB_CONFIG, json.dumps({"runtime_env": runtime_env, "metadata": {}}))
    assert load_spec(SMOKE, [f"storage={tmp_path / 'runs'}"]).storage == str(tmp_path / "runs")


def test_the_entrypoint_quotes_overrides():
    spec = load_spec(REPO / "jobs" / "smoke.yaml")
    assert entrypoint_of(spec, "jobs/smoke.yaml", ["storage=/tmp/a b"]) == \
        "python jobs/train.py jobs/smoke.yaml --set 'storage=/tmp/a b'"


def test_the_token_is_found_where_ray_looks(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
    assert read_token() is None
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("from-home\n")
    assert read_token() == "from-home"
    (tmp_path / "token").write_text("from-path")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "token"))
    assert read_token() == "from-path"
    monkeypatch.setenv("RAY_AUTH_TOKEN", "from-env")
    assert read_token() == "from-env"


# --- on the head ----------------------------------------------------------------------------------

def test_the_job_api_refuses_requests_without_the_token(head):
    assert requests.get(f"{head.url}/api/jobs/", timeout=10).status_code == 401
    wrong = {"Authorization": "Bearer not-the-token"}
    assert requests.get(f"{head.url}/api/jobs/", headers=wrong, timeout=10).status_code == 403
    refused = CliRunner().invoke(app, ["submit", str(REPO / "jobs" / "smoke.yaml"), "--address", head.url,
                                       "--working-dir", str(REPO)], env={"RAY_AUTH_TOKEN": "not-the-token"})
    assert refused.exit_code == 2 and "the token was refused" in refused.output, refused.output
    unknown = CliRunner().invoke(app, ["job", "list", "--address", head.url], env={"RAY_AUTH_TOKEN": "not-the-token"})
    assert unknown.exit_code == 2 and "Forbidden" in unknown.output, unknown.output
    assert client(head.url, head.token).list_jobs() == [], "nothing was submitted"


def test_a_job_finds_its_working_folder_copy(head):
    # What check_job_storage relies on Ray for: a job's entrypoint knows it runs in Ray's copy.
    jobs = client(head.url, head.token)
    probe = jobs.submit_job(entrypoint="python -c 'from genray.submit import job_working_copy; "
                                       "print(\"copy:\", job_working_copy())'",
                            runtime_env={"working_dir": str(REPO)})
    assert wait_for(probe, set(), address=head.url, token=head.token, timeout_s=120) == "SUCCEEDED", \
        jobs.get_job_logs(probe)
    said = [line for line in jobs.get_job_logs(probe).splitlines() if line.startswith("copy: ")]
    copy = Path(said[0].removeprefix("copy: "))
    assert "runtime_resources" in copy.parts and copy.name.startswith("_ray_pkg_"), said
    assert (copy / "jobs" / "smoke.yaml").is_file()


def test_submit_follow_stop_list_and_serve_deploy(head, tmp_path):
    runner = CliRunner()
    auth = {"RAY_AUTH_TOKEN": head.token}

    def genray(*args):
        result = runner.invoke(app, [*args], env=auth)
        assert result.exit_code == 0, result.output + repr(result.exception)
        return result.output

    # Serve first: it starts while the jobs run.
    serve_port = free_port()
    config = yaml.safe_load((REPO / "serve" / "heat.yaml").read_text())
    config["http_options"]["port"] = serve_port
    (tmp_path / "heat.yaml").write_text(yaml.safe_dump(config))
    deploy = subprocess.run([str(BIN / "serve"), "deploy", str(tmp_path / "heat.yaml"), "--address", head.url],
                            env=head.env, capture_output=True, text=True, timeout=120)
    assert deploy.returncode == 0, deploy.stdout + deploy.stderr

    storage = tmp_path / "runs"
    smoke, long = f"smoke-{uuid.uuid4().hex[:6]}", f"long-{uuid.uuid4().hex[:6]}"
    common = ["--address", head.url, "--working-dir", str(REPO), "--no-follow", "--set", f"storage={storage}"]
    genray("submit", str(REPO / "jobs" / "smoke.yaml"), *common, "--id", smoke, "--set", "name=smoke")
    # The same entrypoint through Ray's own CLI (which finds the token in the head's HOME).
    ray_cli = subprocess.run(
        [str(BIN / "ray"), "job", "submit", "--address", head.url, "--submission-id", long, "--no-wait",
         "--working-dir", str(REPO), "--", "python", "jobs/train.py", "jobs/smoke.yaml",
         "--set", f"storage={storage}", "--set", "name=long", "--set", "config.train.epochs=10000"],
        env=head.env, capture_output=True, text=True, timeout=120)
    assert ray_cli.returncode == 0, ray_cli.stdout + ray_cli.stderr

    assert wait_for(long, {"RUNNING"}, address=head.url, token=head.token, timeout_s=120) == "RUNNING"
    assert "stop requested" in genray("job", "stop", long, "--address", head.url)

    followed = genray("job", "logs", smoke, "--follow", "--address", head.url)
    assert f"job {smoke}: SUCCEEDED" in followed, followed
    assert "epoch 1/1" in followed and "val_neg_elbo" in followed
    assert (storage / "smoke" / "checkpoint_epoch00000" / "manifest.json").is_file()
    assert genray("job", "status", smoke, "--address", head.url).startswith("SUCCEEDED")

    assert wait_for(long, set(), address=head.url, token=head.token, timeout_s=60) == "STOPPED"
    listed = genray("job", "list", "--address", head.url)
    assert f"{smoke}\tSUCCEEDED\tpython jobs/train.py jobs/smoke.yaml" in listed
    assert f"{long}\tSTOPPED" in listed

    # serve deploy's heat app answers on the head's proxy.
    deadline = time.monotonic() + 120
    while True:
        try:
            answer = requests.post(f"http://127.0.0.1:{serve_port}/heat/solve", timeout=30,
                                   json={"n": 8, "dt": 0.01, "t_end": 0.02, "format": "probe", "points": [[0.5, 0.5]]})
            if answer.status_code == 200:
                break
        except requests.ConnectionError:
            pass
        assert time.monotonic() < deadline, "serve deploy's app never answered"
        time.sleep(1.0)
    assert 0.0 <= answer.json()["values"][0] <= 1.0
