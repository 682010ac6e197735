"""Experiment tracking in MLflow (genray.tracking): a run's params, every epoch's metrics and its
preview grids in a real local store and through a real `mlflow server` on loopback; a resumed run
and a restarted worker continue the same MLflow run; an export tags it; a Tune search's trials;
genray without MLflow."""

import json
import os
import subprocess
import sys
import time
from contextlib import contextmanager

import psutil
import pytest
import requests
from typer.testing import CliRunner

from genray.cli import app
from genray.config import ConfigError, TrackingConfig, build_config
from genray.runs import new_run
from genray.tracking import absolute_uri, flatten, params_of, prepare
from genray.train.loop import LoopConfig, RunLog, Session, run_loop

from conftest import free_port, restored_from, train_in_process
from s3server import s3  # noqa: F401  (the module's moto S3 endpoint, for the run on S3)

FAST = ["data.limit=96", "train.quality_every=0", "train.workers=1", "model.latent_dim=2"]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One SQLite tracking store for the module's runs (making one costs about 2 s)."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlruns') / 'mlflow.db'}"


def tracked_config(storage, name: str, uri: str, epochs: int = 2, *more: str):
    return build_config("vae", overrides=[*FAST, f"train.epochs={epochs}", f"storage={storage}", f"name={name}",
                                          "tracking.tracker=mlflow", f"tracking.uri={uri}", *more])


def mlflow_run(run):
    """The MLflow client and run that a genray run folder names."""
    from mlflow import MlflowClient

    record = json.loads(run.tracking_file.read_text())
    client = MlflowClient(tracking_uri=record["uri"])
    return client, client.get_run(record["run_id"])


def metric_steps(client, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def check_params_and_metrics(client, logged, run) -> None:
    """The MLflow run holds every flattened config key and every epoch's every number, exactly
    as the run's config and history.jsonl hold them."""
    stored = build_config(base=run.read_config())
    assert logged.data.params == params_of(stored)
    history = run.history()
    numbers = {k for record in history for k, v in record.items()
               if isinstance(v, (int, float)) and not k.endswith("_at")}  # timestamps are no metrics
    assert {"train_loss", "val_neg_elbo", "epoch_s"} <= numbers
    for key in numbers:
        expected = [(r["epoch"], pytest.approx(r[key])) for r in history]
        assert metric_steps(client, logged.info.run_id, key) == expected, key


@pytest.fixture(scope="module")
def tracked(store, tmp_path_factory):
    """A VAE trained for 2 epochs in this process, tracked in the module's store."""
    return train_in_process(tracked_config(tmp_path_factory.mktemp("runs"), "tracked", store))


def test_a_tracked_run_holds_its_params_every_epochs_metrics_and_sample_grids(tracked):
    client, logged = mlflow_run(tracked)
    assert logged.info.status == "FINISHED" and logged.info.run_name == "tracked"
    assert client.get_experiment(logged.info.experiment_id).name == "vae"  # the family's, by default
    assert {"model.latent_dim": "2", "train.batch_size": "32", "train.workers": "1", "data.limit": "96",
            "family": "vae"}.items() <= logged.data.params.items()
    assert not any(k.startswith("tracking.") for k in logged.data.params)
    check_params_and_metrics(client, logged, tracked)
    assert {"genray.run": "tracked", "genray.run_folder": str(tracked.location),
            "genray.family": "vae"}.items() <= logged.data.tags.items()
    # The preview grids, one PNG by tag and epoch: images/<tag>+step+<epoch>+timestamp+...png
    grids = [a.path for a in client.list_artifacts(logged.info.run_id, "images") if a.path.endswith(".png")]
    steps = sorted(tuple(p.removeprefix("images/").split("+")[:3:2]) for p in grids)
    assert steps == [("reconstructions", "0"), ("reconstructions", "1"), ("samples", "0"), ("samples", "1")]


def test_an_export_tags_the_run_with_its_model_version(tracked, tmp_path):
    result = CliRunner().invoke(app, ["export", str(tracked.location), "--to", str(tmp_path / "models" / "vae")])
    assert result.exit_code == 0, result.output
    client, logged = mlflow_run(tracked)
    assert logged.data.tags["genray.model_version"] == f"{tmp_path / 'models' / 'vae'}@1"
    assert f"tracked run {logged.info.run_id}: tag genray.model_version=" in result.output


def test_a_resumed_run_continues_its_mlflow_run(store, tmp_path):
    from genray.metrics import store_root
    from genray.runs import load_run_config

    run = train_in_process(tracked_config(tmp_path, "resumed", store))
    first = json.loads(run.tracking_file.read_text())
    cfg, again = new_run(load_run_config("resumed", str(tmp_path), ["train.epochs=4"]), resume=True)
    run_loop(LoopConfig(run=cfg, run_dir=again, store=str(store_root())), restored_from(run.checkpoints()[-1].path))

    assert json.loads(run.tracking_file.read_text()) == first
    client, logged = mlflow_run(run)
    found = client.search_runs([logged.info.experiment_id], filter_string="tags.`genray.run` = 'resumed'")
    assert [r.info.run_id for r in found] == [first["run_id"]]
    assert logged.info.status == "FINISHED"
    assert [step for step, _ in metric_steps(client, first["run_id"], "val_neg_elbo")] == [0, 1, 2, 3]
    # MLflow params never change: the first value stays, the resume's is a tag.
    assert logged.data.params["train.epochs"] == "2" and logged.data.tags["genray.resumed.train.epochs"] == "4"


class EndsAt(Session):
    """Ends the loop with `error` right after the report of epoch `epoch`: SystemExit is how Tune's
    scheduler stops a trial at a report."""

    def __init__(self, epoch: int, error: BaseException):
        super().__init__()
        self.epoch, self.error = epoch, error

    def report(self, metrics, run_folder=None, checkpoint_name=None, write=None) -> None:
        super().report(metrics, run_folder, checkpoint_name, write)
        if metrics["epoch"] == self.epoch:
            raise self.error


@pytest.mark.parametrize("epoch, error, status", [(0, SystemExit(0), "KILLED"), (1, SystemExit(0), "FINISHED"),
                                                  (0, RuntimeError("a step failed"), "FAILED")],
                         ids=["stopped", "stopped-at-the-last-report", "failed"])
def test_however_the_loop_ends_its_mlflow_run_ends(store, tmp_path, epoch, error, status):
    from genray.metrics import store_root

    cfg, run = new_run(tracked_config(tmp_path, "ended", store, 2, "train.preview_every=0"), resume=False)
    with pytest.raises(type(error)):
        run_loop(LoopConfig(run=cfg, run_dir=run, store=str(store_root())), EndsAt(epoch, error))
    client, logged = mlflow_run(run)
    assert logged.info.status == status  # stopped at the last epoch's report: finished all the same
    assert [step for step, _ in metric_steps(client, logged.info.run_id, "train_loss")] == list(range(epoch + 1))


def test_a_restarted_worker_of_a_run_on_s3_continues_its_mlflow_run(s3, store):  # noqa: F811
    """Rank 0 on S3 writes tracking.json straight to the bucket, through the run's pyarrow filesystem
    (the worker's only way there): a worker group restarted before its first epoch ends continues
    the same MLflow run."""
    from genray.storage import s3_filesystem

    cfg, run = new_run(tracked_config("s3://runs/tracked", "on-s3", store), resume=False)
    config = LoopConfig(run=cfg, run_dir=run, store="unused", filesystem=s3_filesystem())
    log = RunLog(config, start_epoch=0)
    first = log.tracker.run_id
    log.close(RuntimeError("the worker died"))
    assert json.loads(run.tracking_file.read_text())["run_id"] == first  # in the bucket, read with boto3
    client, logged = mlflow_run(run)
    assert logged.info.status == "FAILED"
    log = RunLog(config, start_epoch=0)
    assert log.tracker.run_id == first and client.get_run(first).info.status == "RUNNING"
    log.close(KeyboardInterrupt())
    assert client.get_run(first).info.status == "KILLED"


def test_flattening_and_the_default_store(tmp_path, monkeypatch):
    assert flatten({"model": {"lr": 0.001, "sizes": [1, 2]}, "train": {"finetune": {}, "compile": False},
                    "name": "a", "data": {"source": None}}) == \
        {"model.lr": "0.001", "model.sizes": "[1, 2]", "train.finetune": "{}", "train.compile": "false",
         "name": "a", "data.source": "null"}
    assert flatten({"long": "x" * 7000})["long"] == "x" * 5997 + "..."  # MLflow takes 6000 characters
    monkeypatch.chdir(tmp_path)
    assert absolute_uri("sqlite:///runs.db") == f"sqlite:///{tmp_path / 'runs.db'}"
    assert absolute_uri("file:mlruns") == (tmp_path / "mlruns").as_uri()
    assert absolute_uri("http://127.0.0.1:5000") == "http://127.0.0.1:5000"
    assert prepare(TrackingConfig(), "vae") == TrackingConfig()  # tracking off: nothing to settle
    settled = prepare(TrackingConfig(tracker="mlflow"), "vae")
    assert settled == TrackingConfig(tracker="mlflow", uri=f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}",
                                     experiment="vae")
    assert (tmp_path / "mlruns" / "mlflow.db").is_file()
    # What MLflow refuses, the command refuses at once, with MLflow's reason.
    with pytest.raises(ConfigError, match="tracking.uri: MLflow cannot use 'file:.*MLFLOW_ALLOW_FILE_STORE"):
        prepare(TrackingConfig(tracker="mlflow", uri="file:old-mlruns"), "vae")
    with pytest.raises(ConfigError, match="tracking.uri: MLflow cannot use 'htp://127.0.0.1:1'"):
        prepare(TrackingConfig(tracker="mlflow", uri="htp://127.0.0.1:1"), "vae")


def test_without_mlflow_asking_for_it_says_how_to_install_it_and_no_tracker_never_imports_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # `import mlflow` now fails, as where it is not installed
    with pytest.raises(ConfigError, match=r"needs MLflow, which is not installed here: pip install 'genray\[mlflow\]'"):
        prepare(TrackingConfig(tracker="mlflow"), "vae")
    result = CliRunner().invoke(app, ["train", "vae", "--tracker", "mlflow", "--storage", str(tmp_path)])
    assert result.exit_code == 2 and "pip install 'genray[mlflow]'" in result.output  # before Ray starts
    run = train_in_process(build_config("vae", overrides=[*FAST, "train.epochs=1", f"storage={tmp_path}"]))
    assert len(run.history()) == 1 and not run.tracking_file.exists()


@contextmanager
def mlflow_server(folder):
    """A real `mlflow server` on a free loopback port, its store in `folder`; stopped, with the
    server process it starts, by their pids."""
    port = free_port()
    # No job runner: it would start consumer processes of its own.
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with open(folder / "server.log", "wb") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
             "--backend-store-uri", f"sqlite:///{folder / 'server.db'}", "--artifacts-destination",
             str(folder / "artifacts")], cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            assert server.poll() is None, (folder / "server.log").read_text()
            try:
                if requests.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            assert time.monotonic() < deadline, f"no answer in 90 s:\n{(folder / 'server.log').read_text()}"
            time.sleep(0.25)
        yield url
    finally:
        started = psutil.Process(server.pid).children(recursive=True) if server.poll() is None else []
        server.terminate()  # forwarded to its uvicorn
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=10)
        _, alive = psutil.wait_procs(started, timeout=10)
        for process in alive:
            process.kill()


def test_a_run_tracked_on_a_real_mlflow_server(tmp_path):
    (tmp_path / "server").mkdir()
    with mlflow_server(tmp_path / "server") as url:
        run = train_in_process(tracked_config(tmp_path / "runs", "served", url))
        client, logged = mlflow_run(run)
        assert client.tracking_uri == url and logged.info.status == "FINISHED"
        check_params_and_metrics(client, logged, run)
        grids = [a.path for a in client.list_artifacts(logged.info.run_id, "images")]
        assert any(path.startswith("images/samples+step+1+") for path in grids), grids
    assert list((tmp_path / "server" / "artifacts").rglob("samples+step+1+*.png"))  # stored by the server


@pytest.mark.tune
@pytest.mark.ray
def test_each_trial_of_a_search_is_an_mlflow_run_with_its_sampled_params(ray_session, store, tmp_path):
    from dataclasses import replace

    from mlflow import MlflowClient

    from genray.tune import build_tuner, load_space, to_domain

    spec = replace(load_space("vae", None), space={"model.lr": to_domain("model.lr", {"grid": [1e-3, 3e-3]})})
    base = build_config("vae", overrides=[*FAST, "train.epochs=1", "train.preview_every=0",
                                          "tracking.tracker=mlflow", f"tracking.uri={store}"])
    results = build_tuner("vae", name="searched", storage=tmp_path, spec=spec, base=base, scheduler="fifo",
                          num_samples=1, max_concurrent=2).fit()
    assert not results.errors
    client = MlflowClient(tracking_uri=store)
    experiment = client.get_experiment_by_name("searched")  # the search's name, by default
    runs = {r.data.tags["genray.trial"]: r for r in client.search_runs([experiment.experiment_id])}
    assert len(runs) == 2
    for result in results:
        logged = runs[result.metrics["trial_id"]]
        assert logged.data.tags["genray.search"] == "searched" and logged.info.status == "FINISHED"
        assert float(logged.data.params["model.lr"]) == result.config["train_loop_config"]["model.lr"]
        assert metric_steps(client, logged.info.run_id, "val_neg_elbo") == [
            (0, pytest.approx(result.metrics["val_neg_elbo"]))]
