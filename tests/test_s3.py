"""Run storage and the model store on an S3-compatible endpoint: moto's standalone server on
loopback, reached only through the endpoint override (AWS_ENDPOINT_URL), as MinIO would be.
A training run checkpoints to s3://, a resumed run continues from there, an exported model is
served from s3://, a Tune search keeps its experiment, trials and results there; network errors
and throttling are retried by both clients (boto3's and the pyarrow filesystem Ray writes through)
and a missing object is a clear error."""

import json
import re

import pytest
import requests
from botocore.exceptions import EndpointConnectionError
from typer.testing import CliRunner

from genray import checkpoint, registry, storage
from genray.storage import Location, ObjectNotFound

from s3server import FaultyProxy, s3  # noqa: F401  (the fixture)


def test_missing_objects_are_clear_errors(s3):
    with pytest.raises(ObjectNotFound, match="s3://models/nothing/here.json does not exist"):
        Location("s3://models/nothing/here.json").read_text()
    with pytest.raises(ObjectNotFound, match="s3://no-such-bucket/x does not exist"):
        Location("s3://no-such-bucket/x").read_text()
    with pytest.raises(checkpoint.CheckpointError, match="s3://models/none/manifest.json is missing"):
        checkpoint.load("s3://models/none")
    from genray.deploy import build_app

    with pytest.raises(checkpoint.CheckpointError, match="not a genray checkpoint: s3://models/none"):
        build_app({"model": "s3://models/none"})
    from genray.store import export

    with pytest.raises(checkpoint.CheckpointError, match="run folder not found: s3://runs/none"):
        export("s3://runs/none", "s3://models/x")


def test_network_errors_are_retried_with_backoff(s3, monkeypatch):
    """The first two attempts fail as if the connection dropped; the third one reads the object."""
    retry = Location("s3://models/retry.txt")
    retry.write_text("still here")
    attempts = []

    def flaky(request, **kwargs):
        attempts.append(request.url)
        if len(attempts) <= 2:
            raise EndpointConnectionError(endpoint_url=request.url)

    make_client = storage.s3_client

    def client_with_flaky_network():
        client = make_client()
        client.meta.events.register("before-send.s3.GetObject", flaky)
        return client

    monkeypatch.setattr(storage, "s3_client", client_with_flaky_network)
    assert retry.read_text() == "still here"
    assert len(attempts) == 3
    # Past the attempt budget the network error reaches the caller.
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "2")
    attempts.clear()
    with pytest.raises(EndpointConnectionError):
        retry.read_text()
    assert len(attempts) == 2


@pytest.fixture
def throttled(s3, monkeypatch):
    """The module's S3 reached through a FaultyProxy (AWS_ENDPOINT_URL points at it)."""
    proxy = FaultyProxy(s3["AWS_ENDPOINT_URL"])
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
    try:
        yield proxy
    finally:
        proxy.close()


def test_ray_storage_writes_retry_throttling_and_fail_naming_the_object_past_the_budget(throttled, monkeypatch, tmp_path):
    """Ray Train uploads a checkpoint and Tune its experiment through the pyarrow S3FileSystem of
    Location.ray_storage: each request it sends is retried when S3 answers 503 SlowDown, and
    past AWS_MAX_ATTEMPTS the error names the bucket and key."""
    import pyarrow.fs

    folder = tmp_path / "checkpoint_000001"
    (folder / "weights").mkdir(parents=True)
    (folder / "manifest.json").write_text('{"epoch": 1}')
    (folder / "weights" / "model.pt").write_bytes(bytes(range(256)) * 64)
    storage_path, fs = Location("s3://runs/throttled").ray_storage()
    model = "/runs/throttled/checkpoint_000001/weights/model.pt"
    throttled.fail(under=model, times=1)  # each request of the weights' upload (a retry backs off ~1 s)
    # What Ray Train does with a reported checkpoint: copy its folder into the storage filesystem.
    pyarrow.fs.copy_files(str(folder), f"{storage_path}/checkpoint_000001", destination_filesystem=fs)
    answered: dict[tuple[str, str], list[int]] = {}
    for method, path, status in throttled.seen:
        if path.startswith(model):
            answered.setdefault((method, re.sub(r"[?&]uploadId=[^&]*", "", path)), []).append(status)
    # Its multipart upload: start, the one part (its body sent again) and completion.
    assert set(answered) == {("POST", model + "?uploads"), ("PUT", model + "?partNumber=1"), ("POST", model)}
    assert all(statuses[:2] == [503, 200] for statuses in answered.values()), answered
    throttled.fail(times=0)
    copied = Location("s3://runs/throttled/checkpoint_000001")
    assert copied.list() == ["manifest.json", "weights/model.pt"]
    assert (copied / "weights" / "model.pt").read_bytes() == bytes(range(256)) * 64
    assert (copied / "manifest.json").read_text() == '{"epoch": 1}'

    # A fault that outlasts the budget: every answer a 503, two attempts a request.
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "2")
    _, fs = Location("s3://runs/throttled").ray_storage()
    throttled.seen[:] = []
    throttled.fail(under="/runs/throttled/", times=None)
    with pytest.raises(OSError, match=r"key 'throttled/result.json' in bucket 'runs': AWS Error SLOW_DOWN"):
        with fs.open_output_stream(f"{storage_path}/result.json") as f:
            f.write(b"{}")
    assert [status for _, _, status in throttled.seen] == [503, 503]
    throttled.fail(times=0)
    assert not Location("s3://runs/throttled/result.json").exists()


def test_export_to_s3_refuses_to_overwrite_and_keeps_replaced_models(s3, trained_vae, tmp_path):
    import shutil

    from genray.store import export

    run = tmp_path / "run"
    shutil.copytree(trained_vae, run / "checkpoint_epoch00000")
    assert export(run, "s3://models/store-test") == "s3://models/store-test"
    with pytest.raises(FileExistsError, match="already exists"):
        export(run, "s3://models/store-test")
    export(run, "s3://models/store-test", replace=True)
    kept = {k.split("/")[0] for k in Location("s3://models").list() if k.startswith("store-test.replaced-")}
    assert len(kept) == 1
    assert checkpoint.load("s3://models/store-test").family == "vae"


def test_locations_on_s3_read_write_list_and_copy(s3, tmp_path):
    root = Location("s3://runs/loc/")
    assert not root.is_folder() and root.list() == [] and not (root / "a.txt").exists()
    (root / "a.txt").write_text("hello")
    (root / "sub" / "b.bin").write_bytes(b"\x00\x01")
    assert (root / "a.txt").read_text() == "hello" and (root / "sub" / "b.bin").read_bytes() == b"\x00\x01"
    assert root.is_folder() and (root / "a.txt").exists() and not root.exists()  # a prefix is no object
    assert root.list() == ["a.txt", "sub/b.bin"] and Location("s3://runs").list()[:2] == ["loc/a.txt", "loc/sub/b.bin"]
    assert root.glob("*.txt") == [root / "a.txt"] and root.glob("sub") == [root / "sub"]
    assert root.glob("*/b.*") == [root / "sub" / "b.bin"]

    with root.as_local_folder() as folder:
        assert (folder / "sub" / "b.bin").read_bytes() == b"\x00\x01"
    with pytest.raises(ObjectNotFound, match="s3://runs/empty does not exist"):
        with Location("s3://runs/empty").as_local_folder():
            pass
    local = tmp_path / "up"
    (local / "m").mkdir(parents=True)
    (local / "m" / "manifest.json").write_text("{}")
    (local / "w.pt").write_text("w")
    (root / "up").upload_from(local, last=("m/manifest.json",))
    root.copy_to(Location("s3://models/loc-copy"))
    assert Location("s3://models/loc-copy").list() == ["a.txt", "sub/b.bin", "up/m/manifest.json", "up/w.pt"]
    Location("s3://models/loc-copy").remove_tree()
    assert Location("s3://models/loc-copy").list() == [] and root.list() == ["a.txt", "sub/b.bin", "up/m/manifest.json", "up/w.pt"]
    (root / "a.txt").remove()
    assert not (root / "a.txt").exists()

    path, fs = root.ray_storage()
    assert path == "runs/loc" and root.from_ray("runs/loc/sub") == root / "sub"
    with fs.open_input_stream("runs/loc/sub/b.bin") as f:  # pyarrow sees what boto3 wrote
        assert f.read() == b"\x00\x01"
    fetched = root.join("sub").fetch(["b."])
    assert (fetched / "b.bin").read_bytes() == b"\x00\x01" and fetched == root.join("sub").fetch(["b."])


def test_a_run_folder_on_s3_keeps_a_local_mirror(s3):
    from genray.checkpoint import CheckpointError
    from genray.config import ConfigError, build_config
    from genray.runs import RunDir, load_run_config, new_run
    from genray.storage import cache_dir

    cfg = build_config("vae", overrides=["name=mirrored", "storage=s3://runs/mirror", "model.latent_dim=2"])
    cfg, run = new_run(cfg, resume=False)
    assert run == RunDir.at("s3://runs/mirror/mirrored") and run.on_s3
    assert run.mirror == cache_dir() / "runs" / "runs" / "mirror" / "mirrored"
    assert run.exists() and (run.mirror / "genray.yaml").is_file()  # the config is in both
    with pytest.raises(ConfigError, match="already exists"):
        new_run(cfg, resume=False)
    assert load_run_config("s3://runs/mirror/mirrored", "elsewhere").storage == "s3://runs/mirror"
    assert load_run_config("mirrored", "s3://runs/mirror/", ["train.epochs=3"]).train.epochs == 3

    assert run.history() == []
    run.update_mirror()  # no epoch yet: nothing to copy
    run.history_file.write_text('{"epoch": 0}\n')
    (run.location / "tensorboard" / "events.out.tfevents.1").write_text("e")
    run.update_mirror()
    assert (run.mirror / "history.jsonl").read_text() == '{"epoch": 0}\n'
    assert (run.tensorboard / "events.out.tfevents.1").read_text() == "e"
    with pytest.raises(CheckpointError, match="has no checkpoints"):
        run.best_checkpoint()


@pytest.mark.ray
def test_train_resume_export_and_serve_on_s3(s3, ray_session, serve_url):
    from ray import serve

    from genray.cli import app
    from genray.config import ConfigError, build_config
    from genray.deploy import deployment_for
    from genray.runs import load_run_config, read_history
    from genray.train import fit

    storage = "s3://runs/experiments"
    cfg = build_config("vae", overrides=[
        "name=on-s3", f"storage={storage}", "train.workers=1", "train.epochs=1", "data.limit=128",
        "model.latent_dim=4", "train.quality_every=0", "train.preview_every=0",
    ])
    first = fit(cfg, verbose=False)
    run = f"{storage}/on-s3"
    assert first.run_uri == run and first.best_checkpoint == f"{run}/checkpoint_epoch00000"
    keys = Location(run).list()
    for key in ("genray.yaml", "history.jsonl", "checkpoint_epoch00000/manifest.json", "checkpoint_epoch00000/weights.pt"):
        assert key in keys, keys
    assert any(k.startswith("tensorboard/events.out.tfevents.") for k in keys)
    assert [h["epoch"] for h in first.history] == [0]
    assert list((first.run_dir / "tensorboard").glob("events.out.tfevents.*")), "the local mirror has the events"

    with pytest.raises(ConfigError, match="already exists"):
        fit(cfg, verbose=False)

    # Resume from the bucket: epoch 1 only, starting from the epoch-0 checkpoint.
    resumed = fit(load_run_config("on-s3", storage, ["train.epochs=2"]), resume=True, verbose=False)
    assert resumed.metrics["epoch"] == 1
    assert [h["epoch"] for h in read_history(run)] == [0, 1]
    assert checkpoint.load(resumed.best_checkpoint).epoch in (0, 1)

    result = CliRunner().invoke(app, ["export", "on-s3", "--storage", storage, "--which", "latest",
                                      "--to", "s3://models/vae"])
    assert result.exit_code == 0, result.output
    assert "epoch 1" in result.output

    # The replica reads the model with boto3; its process gets the endpoint as a Serve
    # application would from its runtime_env.
    deployment, path = deployment_for("s3://models/vae")
    serve.run(deployment.options(ray_actor_options={"num_cpus": 0.5, "runtime_env": {"env_vars": s3}}).bind(path),
              name="vae-s3", route_prefix="/vae-s3")
    try:
        info = requests.get(f"{serve_url}/vae-s3/", timeout=30).json()
        assert info["family"] == "vae" and info["epoch"] == 1
        sample = requests.post(f"{serve_url}/vae-s3/sample", json={"n": 2, "seed": 1}, timeout=30)
        assert sample.status_code == 200 and len(sample.json()["images"]) == 2
    finally:
        serve.delete("vae-s3")


@pytest.mark.tune
@pytest.mark.ray
def test_search_on_s3_finishes_resumes_and_exports_the_best(s3, ray_session):
    """Tune's experiment, every trial's Train run and the results live in the bucket."""
    from genray.cli import app

    storage = "s3://runs/searches"
    fixed = [arg for o in ["data.limit=96", "train.quality_every=0", "train.preview_every=0", "model.latent_dim=4"]
             for arg in ("--set", o)]
    out = CliRunner().invoke(app, ["tune", "vae", "--scheduler", "fifo", "--num-samples", "2", "--max-concurrent", "2",
                                   "--epochs", "1", "--name", "t", "--storage", storage, *fixed])
    assert out.exit_code == 0, out.output
    rows = json.loads(Location(f"{storage}/t/results.json").read_text())
    assert len(rows) == 2 and all(r["status"] == "done" for r in rows)
    keys = Location(f"{storage}/t").list()
    assert "results.csv" in keys and any(k.startswith("train/") and k.endswith("/manifest.json") for k in keys)
    assert any(k.startswith("experiment_state-") for k in keys), "Tune's own state is in the bucket"

    again = CliRunner().invoke(app, ["tune", "--resume", "t", "--storage", storage])  # nothing left to run
    assert again.exit_code == 0, again.output
    assert len(json.loads(Location(f"{storage}/t/results.json").read_text())) == 2

    best = CliRunner().invoke(app, ["export", "t", "--best", "--storage", storage, "--to", "s3://models/tuned"])
    assert best.exit_code == 0, best.output
    exported = checkpoint.load(registry.resolve("s3://models/tuned@1")[0])
    assert exported.family == "vae"
    assert exported.metrics["val_neg_elbo"] == pytest.approx(min(r["best_val_neg_elbo"] for r in rows))
