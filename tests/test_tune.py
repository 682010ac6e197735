"""Ray Tune over genray's loop: trials in their own process and nested Ray Train runs, ASHA,
PBT, a trial that cannot start, and a killed-and-resumed driver."""

import json
from dataclasses import replace

import pytest

from genray import checkpoint, registry
from genray.config import ConfigError, build_config
from genray.tune import build_tuner, load_space, summarize, to_domain

FAST = ["data.limit=96", "train.quality_every=0", "train.preview_every=0", "train.workers=1"]


@pytest.mark.parametrize("family", ["vae", "ae", "cvae", "gan", "gcn", "mpnn"])
def test_packaged_spaces_name_real_config_keys(family):
    spec = load_space(family, None)
    base = build_config(family).to_dict()
    for key in spec.space:
        section, _, field = key.partition(".")
        assert field in base[section], f"{family}: {key} is not a config key"


def test_space_yaml_is_validated(tmp_path):
    spec = load_space("vae", None)
    assert spec.metric == "val_neg_elbo" and spec.mode == "min" and "model.lr" in spec.space
    bad = tmp_path / "space.yaml"
    bad.write_text("space:\n  model.lr: {gaussian: [0, 1]}\n")
    with pytest.raises(ConfigError, match="space.model.lr: expected one of"):
        load_space("vae", str(bad))
    bad.write_text("spaces: {}\n")
    with pytest.raises(ConfigError, match="unknown keys"):
        load_space("vae", str(bad))


def test_each_searcher_and_scheduler_refuses_a_space_it_cannot_take(tmp_path):
    from genray.tune import plan_search

    def plan(yaml_text: str, **kwargs):
        space = tmp_path / "space.yaml"
        space.write_text(yaml_text)
        return plan_search("vae", space=str(space), overrides=FAST, storage=str(tmp_path), **kwargs)

    spec, _, _ = plan("searcher: optuna\nscheduler: hyperband\nspace:\n  model.lr: {loguniform: [1.0e-4, 1.0e-2]}\n")
    assert (spec.searcher, spec.scheduler) == ("optuna", "hyperband")
    spec, _, _ = plan("searcher: optuna\nspace:\n  model.lr: {loguniform: [1.0e-4, 1.0e-2]}\n", searcher="random")
    assert (spec.searcher, spec.scheduler) == ("random", "asha")  # the command line wins; asha by default
    with pytest.raises(ConfigError, match="grid searcher takes lists of values"):
        plan("space:\n  model.lr: {loguniform: [1.0e-4, 1.0e-2]}\n", searcher="grid")
    with pytest.raises(ConfigError, match="Optuna samples every value itself; model.latent_dim"):
        plan("space:\n  model.latent_dim: {grid: [2, 8]}\n", searcher="optuna")
    with pytest.raises(ConfigError, match="PB2 takes numeric ranges"):
        plan("space:\n  model.lr: {loguniform: [1.0e-4, 1.0e-2]}\nmutations:\n  train.batch_size: {choice: [32, 64]}\n",
             scheduler="pb2")
    with pytest.raises(ConfigError, match="use --searcher random with it"):
        plan("space:\n  model.lr: {loguniform: [1.0e-4, 1.0e-2]}\nmutations:\n  model.lr: {uniform: [0.001, 0.01]}\n",
             scheduler="pbt", searcher="optuna")
    with pytest.raises(ConfigError, match="searcher must be one of random, grid, optuna"):
        plan("searcher: tpe\nspace: {}\n")


@pytest.mark.tune
@pytest.mark.ray
@pytest.mark.parametrize("searcher, scheduler", [("optuna", "asha"), ("grid", "hyperband")])
def test_an_optuna_and_a_hyperband_search_finish_on_a_tiny_budget(ray_session, tmp_path, searcher, scheduler):
    from genray.tune import plan_search

    space = tmp_path / "space.yaml"
    space.write_text("space:\n  model.lr: {choice: [1.0e-3, 3.0e-3, 1.0e-6]}\n")
    spec, base, _ = plan_search("vae", space=str(space), overrides=FAST + ["train.epochs=2"], storage=str(tmp_path),
                                searcher=searcher, scheduler=scheduler)
    results = build_tuner("vae", name="t", storage=tmp_path, spec=spec, base=base,
                          num_samples=3 if searcher == "optuna" else 1, max_concurrent=2, seed=0).fit()
    rows = summarize(results, spec.metric, spec.mode, tmp_path / "t")
    assert len(rows) == 3 and all(r["status"] == "done" for r in rows), rows
    assert all(1 <= r["epochs"] <= 2 for r in rows) and rows[0]["best_val_neg_elbo"] is not None
    stored = json.loads((tmp_path / "t" / "genray_search.json").read_text())
    assert (stored["searcher"], stored["scheduler"]) == (searcher, scheduler)


# A trial that ASHA stops or PBT pauses dies mid-fit; its Train workers' placement group is freed
# by Ray Train's PlacementGroupCleaner, which needs the dashboard (ray_session starts it).
@pytest.mark.tune
@pytest.mark.ray
def test_asha_search_stops_the_worst_trial_early_and_exports_the_best(ray_session, tmp_path):
    storage = tmp_path / "searches"
    # Three learning rates, started in this order from the same seeded weights, the first two
    # together. ASHA's one rung before max_t is epoch 1 (grace period 1, reduction factor 2): the
    # third trial barely moves from those weights in its first epoch, so it reaches the rung behind
    # both trials recorded there, below their median, and is stopped.
    spec = replace(load_space("vae", None), space={"model.lr": to_domain("model.lr", {"grid": [3e-3, 1e-3, 1e-6]})})
    base = build_config("vae", overrides=FAST + ["train.epochs=2"])
    tuner = build_tuner("vae", name="s", storage=storage, spec=spec, base=base, scheduler="asha",
                        num_samples=1, max_concurrent=2)
    results = tuner.fit()
    search = storage / "s"
    rows = summarize(results, spec.metric, spec.mode, search)
    assert len(rows) == 3 and all(r["status"] == "done" for r in rows)
    epochs = {r["model.lr"]: r["epochs"] for r in rows}
    assert epochs[1e-6] == 1, epochs  # stopped at the rung
    assert max(epochs.values()) == base.train.epochs, epochs  # the first at the rung always goes on
    assert rows[0]["best_val_neg_elbo"] <= rows[-1]["best_val_neg_elbo"]
    assert (search / "results.csv").is_file() and json.loads((search / "results.json").read_text())
    assert list((search / "train").glob("*/tensorboard"))

    from typer.testing import CliRunner

    from genray.cli import app

    out = CliRunner().invoke(app, ["export", "s", "--best", "--storage", str(storage), "--to", str(tmp_path / "m")])
    assert out.exit_code == 0, out.output
    exported = checkpoint.load(registry.resolve(tmp_path / "m")[0].native())  # its version 1
    assert exported.family == "vae"
    assert exported.metrics["val_neg_elbo"] == pytest.approx(rows[0]["best_val_neg_elbo"])


@pytest.mark.tune
@pytest.mark.ray
def test_pbt_exploits_the_better_trial(ray_session, tmp_path):
    spec = load_space("vae", None)
    base = build_config("vae", overrides=FAST + ["train.epochs=2"])
    tuner = build_tuner("vae", name="p", storage=tmp_path, spec=spec, base=base, scheduler="pbt",
                        num_samples=2, max_concurrent=2, perturbation_interval=1)
    results = tuner.fit()
    assert not results.errors
    assert all(r.metrics["training_iteration"] == 2 for r in results)
    # An exploited trial continues from a checkpoint in a fresh Train run ("<trial>-<hash>"),
    # whose first epoch is the one after the cloned checkpoint's.
    continued = [p for p in (tmp_path / "p" / "train").iterdir() if "-" in p.name]
    assert continued, "PBT never restarted a trial from a checkpoint"
    for run in continued:
        epochs = [checkpoint.load(c, weights=False).epoch for c in run.glob("checkpoint_epoch*")]
        assert epochs and min(epochs) == 1, (run.name, epochs)


@pytest.mark.tune
@pytest.mark.ray
def test_a_trial_whose_workers_cannot_start_fails_and_the_search_goes_on(ray_session, tmp_path):
    """One trial asks for 8 CPUs a worker on a 2-CPU session: it fails after its bounded wait
    with the resources it waited for, and the other trial trains to the end."""
    space = tmp_path / "space.yaml"
    space.write_text("space:\n  train.cpus_per_worker: {grid: [1.0, 8.0]}\n")
    spec = load_space("vae", str(space))
    base = build_config("vae", overrides=FAST + ["train.epochs=1", "train.worker_start_timeout_s=3",
                                                 "train.worker_start_tries=2"])
    tuner = build_tuner("vae", name="w", storage=tmp_path, spec=spec, base=base, scheduler="fifo",
                        num_samples=1, max_concurrent=2)
    results = tuner.fit()
    by_cpus = {r.config["train_loop_config"]["train.cpus_per_worker"]: r for r in results}
    assert by_cpus[1.0].error is None and by_cpus[1.0].metrics["training_iteration"] == 1
    message = str(by_cpus[8.0].error)
    assert "did not start in 2 tries of 3 s" in message and "'CPU': 8.0" in message, message


# Ray Train's own bookkeeping in a nested run's folder; genray's files are the same in both kinds.
TRAIN_BOOKKEEPING = {".validate_storage_marker", "checkpoint_manager_snapshot.json"}


@pytest.mark.tune
@pytest.mark.ray
def test_a_one_worker_trial_in_its_process_and_a_two_worker_nested_trial_leave_the_same_run(ray_session, tmp_path):
    from genray.runs import RunDir
    from genray.store import export

    space = tmp_path / "space.yaml"
    space.write_text("space:\n  train.workers: {grid: [1, 2]}\n")
    spec = load_space("vae", str(space))
    base = build_config("vae", overrides=FAST + ["train.epochs=2"])
    results = build_tuner("vae", name="k", storage=tmp_path, spec=spec, base=base, scheduler="fifo", num_samples=1,
                          max_concurrent=1).fit()
    assert not results.errors
    runs = {}
    for folder in (tmp_path / "k" / "train").iterdir():
        run = RunDir(tmp_path / "k" / "train", folder.name)
        workers = {r["workers"] for r in run.history()}
        layout = {str(p.relative_to(folder)) for p in folder.rglob("*") if "tensorboard" not in p.parts}
        runs[workers.pop()] = (run, layout - TRAIN_BOOKKEEPING, list((folder / "tensorboard").iterdir()))
    assert sorted(runs) == [1, 2]
    (one, one_layout, one_events), (two, two_layout, two_events) = runs[1], runs[2]
    assert one_layout == two_layout == {"history.jsonl", "checkpoint_epoch00000", "checkpoint_epoch00000/manifest.json",
                                        "checkpoint_epoch00000/weights.pt", "checkpoint_epoch00001",
                                        "checkpoint_epoch00001/manifest.json", "checkpoint_epoch00001/weights.pt"}
    assert one_events and two_events
    assert [sorted(r) for r in one.history()] == [sorted(r) for r in two.history()]  # the same metrics
    for run in (one, two):
        assert [r["epoch"] for r in run.history()] == [0, 1]
        model = export(run, tmp_path / "models" / run.name, which="latest")
        assert checkpoint.load(model, weights=False).epoch == 1


@pytest.mark.ray
def test_trials_of_streamed_files_drive_nested_runs_and_the_others_train_in_their_process(ray_session, tmp_path):
    """Ray Data's read tasks need CPUs beside the trials': in-process trials at max_concurrent =
    cores would hold them all, so trials of streamed files keep the nested run (and its check)."""
    import numpy as np
    from PIL import Image

    from genray.tune import TRIAL_RESOURCES, trial_resources

    for label in ("a", "b"):
        (tmp_path / "images" / label).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(np.full((16, 16), 40 * i, np.uint8)).save(tmp_path / "images" / label / f"{i}.png")
    in_memory = build_config("vae", overrides=FAST).to_dict()
    streamed = build_config("vae", overrides=FAST + [f"data.source={tmp_path / 'images'}"]).to_dict()
    assert trial_resources(in_memory)({}).bundles == [{"CPU": 1.0}]
    assert trial_resources(streamed)({}).bundles == [TRIAL_RESOURCES]
    assert trial_resources(in_memory, nested=True)({}).bundles == [TRIAL_RESOURCES]
    two = {"train_loop_config": {"train.workers": 2}}
    assert trial_resources(in_memory)(two).bundles == [TRIAL_RESOURCES]


def trial_statuses(search_dir) -> dict[str, str]:
    """Trial id -> status, as Tune last saved them in the search's experiment state."""
    states = sorted(search_dir.glob("experiment_state-*.json"), key=lambda p: p.stat().st_mtime)
    if not states:
        return {}
    try:
        data = json.loads(states[-1].read_text())
    except ValueError:  # caught mid-write
        return {}
    trials = [json.loads(state) for state, _ in data["trial_data"]]
    return {t["trial_id"]: t["status"] for t in trials}


@pytest.mark.tune
@pytest.mark.ray
def test_killed_search_resumes_without_rerunning_finished_trials(ray_session, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    from typer.testing import CliRunner

    from genray.cli import app

    storage, search = tmp_path / "searches", tmp_path / "searches" / "k"
    fixed = [arg for o in FAST for arg in ("--set", o)]
    driver = subprocess.Popen(
        [sys.executable, "-m", "genray.cli", "tune", "vae", "--scheduler", "fifo", "--num-samples", "16",
         "--max-concurrent", "2", "--epochs", "2", "--name", "k", "--storage", str(storage),
         "--address", ray_session.get_runtime_context().gcs_address, *fixed],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def histories() -> dict[str, str]:
        return {run.name: (run / "history.jsonl").read_text() for run in (search / "train").glob("*")
                if (run / "history.jsonl").is_file()}

    def mid_search() -> bool:
        """Five trials finished (as the search's saved state says) and another has reported an epoch."""
        done = [t for t, status in trial_statuses(search).items() if status == "TERMINATED"]
        return len(done) >= 5 and any(text.strip() for run, text in histories().items()
                                       if not any(run.startswith(t) for t in done))

    try:
        deadline = time.monotonic() + 300
        while not mid_search():
            assert driver.poll() is None, "the search ended before it could be killed"
            assert time.monotonic() < deadline, "five trials did not finish in 300 s"
            time.sleep(0.1)
    finally:
        os.kill(driver.pid, signal.SIGKILL)  # the driver, mid-search: no chance to save anything
        driver.wait()
    before = trial_statuses(search)
    finished = {t for t, status in before.items() if status == "TERMINATED"}
    assert 5 <= len(finished) < 16, before
    trained = histories()
    runs_of = {t: {run: text for run, text in trained.items() if run.startswith(t)} for t in finished}

    out = CliRunner().invoke(app, ["tune", "--resume", "k", "--storage", str(storage)])
    assert out.exit_code == 0, out.output
    rows = json.loads((search / "results.json").read_text())
    assert len(rows) == 16 and set(before) <= {r["trial"] for r in rows}, "every trial is accounted for, once"
    assert all(r["status"] == "done" and r["epochs"] == 2 for r in rows), rows
    after = histories()
    for trial, runs in runs_of.items():  # a trial finished before the kill was not trained again
        assert {run: text for run, text in after.items() if run.startswith(trial)} == runs, trial
    assert (search / "hparams").is_dir() and "HParams" in out.output
    status = CliRunner().invoke(app, ["tune", "--status", "k", "--storage", str(storage)])
    assert status.exit_code == 0 and "trials: 16 (16 done)" in status.output, status.output
    report = CliRunner().invoke(app, ["tune", "--report", "k", "--storage", str(storage)])
    assert report.exit_code == 0 and (search / "report" / "report.png").is_file(), report.output


def test_tune_refuses_a_cluster_without_the_state_api(monkeypatch):
    import ray.util.state

    from genray.tune import require_state_api

    def unreachable(**kwargs):
        raise ConnectionError("no dashboard")

    monkeypatch.setattr(ray.util.state, "list_actors", unreachable)
    monkeypatch.setattr("genray.tune.ray.get_runtime_context", lambda: type("C", (), {"gcs_address": "x:1"})())
    with pytest.raises(ConfigError, match="needs Ray's dashboard"):
        require_state_api()

