"""Views of a Tune search (genray.searches) over search folders written here in the shapes
Tune writes them (experiment_state-<time>.json, run_trial_<id>_.../result.json): no Ray."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
from s3server import s3  # noqa: F401  (the module's S3 endpoint, for the one S3 test)

from genray.config import ConfigError
from genray.searches import (distribution_of, format_status, scale_of, search_status, write_hparams,
                             write_report)
from genray.storage import Location

METRIC = "val_neg_elbo"
STATE_TIME = "2026-12-07_08-10-37"


def trial_folder(trial_id: str, index: int, params: dict) -> str:
    """Tune's name for a trial's folder: <trainable>_<trial id>_<n>_<params>_<date>."""
    tag = ",".join(f"{k.replace('.', '_')}={v}" for k, v in params.items())
    return f"run_trial_{trial_id}_{index}_{tag}_{STATE_TIME}"


def result_lines(trial_id: str, params: dict, values: list[float], first_epoch: int = 0) -> str:
    """A result.json: one line per reported epoch, as Tune's JSON logger writes it."""
    lines = []
    for i, value in enumerate(values):
        epoch = first_epoch + i
        lines.append(json.dumps({
            "train_loss": value + 10, METRIC: value, "epoch": epoch, "checkpoint_dir_name": f"checkpoint_{i:06d}",
            "done": False, "training_iteration": i + 1, "trial_id": trial_id, "date": "2026-12-07_08-10-49",
            "time_this_iter_s": 0.3, "time_total_s": 0.3 * (i + 1), "pid": 1, "hostname": "vm",
            "config": {"train_loop_config": params}, "time_since_restore": 0.3 * (i + 1),
            "iterations_since_restore": i + 1}))
    return "".join(line + "\n" for line in lines)


def tune_state(trials: list[tuple[str, str, dict]]) -> str:
    """An experiment_state file: trial_data holds [trial state JSON, runtime JSON] pairs."""
    trial_data = []
    for index, (trial_id, status, params) in enumerate(trials):
        state = {"stub": False, "trainable_name": "run_trial", "trial_id": trial_id,
                 "config": {"train_loop_config": params},
                 "evaluated_params": {f"train_loop_config/{k}": v for k, v in params.items()},
                 "experiment_tag": f"{index}_params", "status": status,
                 "relative_logdir": trial_folder(trial_id, index, params), "max_failures": 0}
        runtime = {"start_time": 1796631044.3, "num_failures": 0, "num_failures_after_restore": 0,
                   "error_filename": "error.txt" if status == "ERROR" else None, "pickled_error_filename": None,
                   "last_result": {}, "last_result_time": 1796631050.1, "metric_analysis": {}}
        trial_data.append([json.dumps(state), json.dumps(runtime)])
    return json.dumps({"trial_data": trial_data, "runner_data": {"_metric": METRIC}, "stats": {"start_time": 1.0}})


def make_search(storage: Path, trials: list[dict], *, epochs: int = 3, mode: str = "min", name: str = "s") -> Path:
    """A search folder as `genray tune` leaves it. Each trial: params, status (Tune's), values
    (its metric per epoch; none: not started) and optionally `partial` (a half-written line)."""
    search = storage / name
    search.mkdir(parents=True)
    (search / "genray_search.json").write_text(json.dumps(
        {"family": "vae", "metric": METRIC, "mode": mode, "scheduler": "asha",
         "base": {"family": "vae", "model": {"lr": 0.001}, "train": {"epochs": epochs}}}))
    listed = []
    for index, trial in enumerate(trials):
        trial_id = f"ab123_{index:05d}"
        if trial.get("status"):  # None: a trial that started after the newest state file
            listed.append((trial_id, trial["status"], trial["params"]))
        if trial.get("values"):
            folder = search / trial_folder(trial_id, index, trial["params"])
            folder.mkdir()
            (folder / "params.json").write_text(json.dumps({"train_loop_config": trial["params"]}))
            (folder / "result.json").write_text(result_lines(trial_id, trial["params"], trial["values"])
                                                + trial.get("partial", ""))
    (search / f"experiment_state-{STATE_TIME}.json").write_text(tune_state(listed))
    return search


def lr_params(lr: float, latent: int = 8) -> dict:
    return {"model.lr": lr, "model.latent_dim": latent, "train.batch_size": 32}


def test_status_counts_trials_by_state_while_tune_writes(tmp_path):
    search = make_search(tmp_path, [
        {"params": lr_params(1e-3), "status": "TERMINATED", "values": [300.0, 250.0, 200.0]},  # done
        {"params": lr_params(1e-4), "status": "TERMINATED", "values": [400.0]},  # stopped by ASHA
        # running, its next line half written (it would be the best value if it parsed)
        {"params": lr_params(3e-3, 2), "status": "RUNNING", "values": [350.0, 190.0],
         "partial": '{"val_neg_elbo": 1.0, "epo'},
        {"params": lr_params(1e-2), "status": "ERROR", "values": [500.0]},
        {"params": lr_params(2e-3), "status": "PENDING"},
        {"params": lr_params(5e-4), "status": "PAUSED", "values": [320.0, 310.0]},
        {"params": lr_params(7e-4), "status": None, "values": [330.0]},  # newer than the state file
    ])
    # An older state (every trial pending) and a newer one that Tune is writing now.
    (search / "experiment_state-2026-12-07_08-00-00.json").write_text(tune_state([("ab123_00000", "PENDING", {})]))
    (search / "experiment_state-2026-12-07_09-00-00.json").write_text(tune_state([])[:40])

    status = search_status("s", str(tmp_path))

    assert (status.family, status.metric, status.mode, status.scheduler, status.epochs) == ("vae", METRIC, "min",
                                                                                           "asha", 3)
    states = {t.trial_id: t.state for t in status.trials}
    assert states == {"ab123_00000": "done", "ab123_00001": "stopped", "ab123_00002": "running",
                      "ab123_00003": "errored", "ab123_00004": "pending", "ab123_00005": "paused",
                      "ab123_00006": "running"}
    assert status.epochs_trained == 3 + 1 + 2 + 1 + 0 + 2 + 1
    best = status.best
    assert (best.trial_id, best.best, best.best_epoch, best.params) == ("ab123_00002", 190.0, 1, lr_params(3e-3, 2))
    text = format_status(status)
    assert "trials: 7 (2 running, 1 pending, 1 paused, 1 done, 1 stopped early, 1 errored)" in text
    assert "epochs trained: 10" in text
    assert "best so far: ab123_00002 val_neg_elbo=190 at epoch 1 (running; model.lr=0.003" in text


def test_status_of_a_search_that_is_not_there(tmp_path):
    (tmp_path / "other").mkdir()
    with pytest.raises(ConfigError, match=r"no search at .*nope .*genray_search.json"):
        search_status("nope", str(tmp_path))
    with pytest.raises(ConfigError, match="no search"):  # a folder, but not a search's
        search_status(str(tmp_path / "other"), "runs")


def test_status_before_tune_wrote_anything(tmp_path):
    make_search(tmp_path, [])
    (tmp_path / "s" / f"experiment_state-{STATE_TIME}.json").unlink()
    text = format_status(search_status("s", str(tmp_path)))
    assert "trials: 0 (Tune has not started any yet)" in text and "best so far: none" in text


def test_parameter_scales_and_distributions():
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    assert scale_of([1e-4, 1e-2]) == "log" and scale_of([0.1, 0.9]) == "linear" and scale_of([0.0, 5.0]) == "linear"
    assert scale_of(["conv", "mlp"]) == "category" and scale_of([True, False]) == "category"
    assert distribution_of([1e-4, 1e-2]) == FloatDistribution(1e-4, 1e-2, log=True)
    assert distribution_of([2, 16, 64]) == IntDistribution(2, 64, log=True)
    assert distribution_of([2, 8]) == IntDistribution(2, 8)
    assert distribution_of(["mlp", "conv"]) == CategoricalDistribution(["conv", "mlp"])


def hparams_of(folder: Path):
    """The hparams plugin's contents (tag -> bytes) and the scalars of one run's events."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder))
    events.Reload()
    scalars = {tag: events.Scalars(tag)[0].value for tag in events.Tags()["scalars"]}
    return events.PluginTagToContent("hparams"), scalars


def test_hparams_dashboard_reads_back(tmp_path):
    from tensorboard.plugins.hparams import metadata

    rows = [
        {"trial": "ab123_00000", f"best_{METRIC}": 200.5, "epochs": 3, "status": "done",
         "model.lr": 1e-3, "model.latent_dim": 8, "model.arch": "conv"},
        {"trial": "ab123_00001", f"best_{METRIC}": 380.0, "epochs": 1, "status": "done",
         "model.lr": 1e-4, "model.latent_dim": 2, "model.arch": "mlp"},
        {"trial": "ab123_00002", f"best_{METRIC}": None, "epochs": 0, "status": "error",
         "model.lr": 1e-2, "model.latent_dim": 16, "model.arch": "conv"},
    ]
    search = tmp_path / "s"
    folder = write_hparams(search, rows, METRIC, "min")
    assert folder == Location(search / "hparams")

    content, _ = hparams_of(search / "hparams")
    experiment = metadata.parse_experiment_plugin_data(content[metadata.EXPERIMENT_TAG])
    assert {h.name for h in experiment.hparam_infos} == {"model.lr", "model.latent_dim", "model.arch"}
    assert [m.name.tag for m in experiment.metric_infos] == [f"best_{METRIC}", "epochs"]
    arch = next(h for h in experiment.hparam_infos if h.name == "model.arch")
    assert list(arch.domain_discrete) == ["conv", "mlp"]

    content, scalars = hparams_of(search / "hparams" / "ab123_00001")
    start = metadata.parse_session_start_info_plugin_data(content[metadata.SESSION_START_INFO_TAG])
    assert start.group_name == "ab123_00001"
    assert start.hparams["model.lr"].number_value == pytest.approx(1e-4)
    assert start.hparams["model.latent_dim"].number_value == 2 and start.hparams["model.arch"].string_value == "mlp"
    assert scalars == {f"best_{METRIC}": pytest.approx(380.0), "epochs": 1.0}
    assert hparams_of(search / "hparams" / "ab123_00002")[1] == {"epochs": 0.0}  # no value to show

    write_hparams(search, rows[:1], METRIC, "min")  # a later view replaces the earlier one
    assert sorted(p.name for p in (search / "hparams").iterdir() if p.is_dir()) == ["ab123_00000"]
    assert len(list((search / "hparams").glob("events.out.tfevents.*"))) == 1


def test_status_and_hparams_of_a_search_on_s3(tmp_path, s3):  # noqa: F811
    local = make_search(tmp_path, [
        {"params": lr_params(1e-3), "status": "TERMINATED", "values": [300.0, 250.0, 200.0]},
        {"params": lr_params(1e-4), "status": "RUNNING", "values": [400.0], "partial": '{"val_n'},
    ])
    Location("s3://runs/searches/s").upload_from(local)

    status = search_status("s", "s3://runs/searches")
    assert [(t.state, t.epochs, t.best) for t in status.trials] == [("done", 3, 200.0), ("running", 1, 400.0)]

    rows = [{"trial": t.trial_id, f"best_{METRIC}": t.best, "epochs": t.epochs, "status": "done", **t.params}
            for t in status.trials]
    write_hparams("s3://runs/searches/s", rows, METRIC, "min")
    written = Location("s3://runs/searches/s/hparams").list()
    assert len(written) == 3 and sum(name.startswith("ab123_00001/events.out.tfevents") for name in written) == 1


def test_report_ranks_the_parameter_that_drives_the_metric(tmp_path):
    rng = random.Random(0)
    trials = []
    for i in range(10):
        lr = 10 ** rng.uniform(-5, -1)
        params = {"model.lr": lr, "model.latent_dim": rng.choice([2, 8, 16]), "model.arch": rng.choice(["conv", "mlp"]),
                  "model.kl_warmup_epochs": rng.uniform(0, 2), "train.batch_size": 32}
        best = 100 - 20 * math.log10(lr) + rng.uniform(0, 2)  # from 120 (lr 0.1) to 200 (1e-5)
        values = [best + 50, best + 20, best]
        status = "TERMINATED"
        if i in (1, 2):
            values = [best]  # stopped early by the scheduler: still finished, by its best value
        if i == 3:
            status = "ERROR"
        if i == 4:
            status = "RUNNING"
        trials.append({"params": params, "status": status, "values": values})
    make_search(tmp_path, trials)

    written = write_report("s", str(tmp_path), tmp_path / "report")

    assert [p.name for p in written] == ["report.png", "report.md"]
    from PIL import Image

    with Image.open(written[0]) as image:
        assert image.width >= 600 and image.height >= 300
    text = written[1].read_text()
    assert "This report compares the 8 that finished" in text
    importance = {}
    table = text.split("## Parameter importance")[1]
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if line.startswith("| model."):
            importance[cells[0]] = float(cells[1])
    assert set(importance) == {"model.lr", "model.latent_dim", "model.arch", "model.kl_warmup_epochs"}
    assert max(importance, key=importance.get) == "model.lr" and importance["model.lr"] > 0.5
    assert sum(importance.values()) == pytest.approx(1.0, abs=0.01)
    assert "| model.lr |" in table and "| log |" in table
    assert "Not ranked (the same in every finished trial): train.batch_size = 32." in text
    top = text.split("## Top trials")[1].splitlines()[4]  # the header, its rule, then the best trial
    assert top.startswith("| 1 | ab123_0000")


def test_report_needs_two_finished_trials(tmp_path):
    make_search(tmp_path, [
        {"params": lr_params(1e-3), "status": "TERMINATED", "values": [300.0, 250.0, 200.0]},
        {"params": lr_params(1e-4), "status": "RUNNING", "values": [400.0]},
    ])
    with pytest.raises(ConfigError, match=r"1 finished trial\(s\).*at least 2"):
        write_report("s", str(tmp_path), tmp_path / "report")
    assert not (tmp_path / "report").exists()


def test_report_of_trials_that_tie(tmp_path):
    make_search(tmp_path, [
        {"params": lr_params(1e-3), "status": "TERMINATED", "values": [300.0, 250.0, 200.0]},
        {"params": lr_params(1e-4), "status": "TERMINATED", "values": [400.0, 300.0, 200.0]},
    ])
    text = write_report("s", str(tmp_path), tmp_path / "report")[1].read_text()
    assert "Every finished trial reached the same best val_neg_elbo: no variance to apportion." in text


def test_status_leaves_out_a_trial_that_a_killed_driver_started_but_never_recorded(tmp_path):
    search = make_search(tmp_path, [{"params": lr_params(1e-3), "status": "TERMINATED", "values": [300.0, 250.0, 200.0]}])
    orphan = search / trial_folder("cd456_00007", 7, lr_params(1e-4)).replace(STATE_TIME, "2026-12-07_07-59-59")
    orphan.mkdir()
    (orphan / "result.json").write_text(result_lines("cd456_00007", lr_params(1e-4), [100.0]))
    status = search_status("s", str(tmp_path))
    assert [t.trial_id for t in status.trials] == ["ab123_00000"] and status.best.best == 200.0


def test_status_leaves_out_the_first_folder_of_a_trial_the_resumed_search_sampled_again(tmp_path):
    search = make_search(tmp_path, [{"params": lr_params(1e-3), "status": "TERMINATED", "values": [300.0, 250.0, 200.0]}])
    first = search / trial_folder("ab123_00000", 0, lr_params(5e-3))  # the killed driver's sample of that trial
    first.mkdir()
    (first / "result.json").write_text(result_lines("ab123_00000", lr_params(5e-3), [100.0]))
    status = search_status("s", str(tmp_path))
    assert len(status.trials) == 1 and status.best.best == 200.0
