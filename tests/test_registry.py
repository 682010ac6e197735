"""The model registry (genray.registry): versions with manifests, aliases, every reference form,
deletes, the errors, exports racing for numbers, locally and on moto's S3 server, and the
`genray export` / `genray models` commands. No Ray and no training: a run is three checkpoints
written with genray.checkpoint.save."""

import hashlib
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from genray import checkpoint, registry
from genray.cli import app
from genray.config import build_config
from genray.deploy import resolve_model_path
from genray.registry import Model, RegistryError
from genray.storage import Location

from s3server import s3  # noqa: F401  (the fixture)

CONFIG = build_config("vae", overrides=["model.latent_dim=2"]).to_dict()
# epoch -> val_neg_elbo: epoch 1 is the best, epoch 2 the latest.
EPOCHS = {0: 300.0, 1: 250.0, 2: 260.0}


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("runs") / "vae-run"
    for epoch, value in EPOCHS.items():
        checkpoint.save(folder / f"checkpoint_epoch{epoch:05d}", family="vae", config=CONFIG,
                        state={"w": torch.full((4,), float(epoch))}, epoch=epoch, metrics={"val_neg_elbo": value})
    return folder


def published(run: Path, model, count: int) -> Model:
    """`model` with versions 1..count of the run's latest checkpoint."""
    for _ in range(count):
        registry.publish(run, model, which="latest")
    return Model(model)


def test_each_export_adds_the_next_version_with_a_manifest_of_its_files(run, tmp_path):
    model = tmp_path / "models" / "vae"
    first = registry.publish(run, model)  # the best checkpoint
    second = registry.publish(run, model, which="latest")
    assert (first.number, second.number) == (1, 2) and Model(model).versions() == [1, 2]
    for version, epoch in ((first, 1), (second, 2)):
        folder = model / "versions" / str(version.number)
        assert version.folder == Location(folder) and str(version) == f"{model}@{version.number}"
        manifest = json.loads((folder / "version.json").read_text())
        assert manifest == version.manifest
        assert {key: manifest[key] for key in ("version", "model", "run", "checkpoint", "family", "epoch")} == {
            "version": version.number, "model": "vae", "run": str(run), "family": "vae", "epoch": epoch,
            "checkpoint": str(run / f"checkpoint_epoch{epoch:05d}")}
        assert manifest["metrics"] == {"val_neg_elbo": EPOCHS[epoch]} and manifest["config"] == CONFIG
        files = sorted(p.name for p in folder.iterdir() if p.name != "version.json")
        assert files == ["manifest.json", "weights.pt"]
        assert manifest["files"] == {name: checkpoint.sha256(folder / name) for name in files}
        assert abs(time.mktime(time.strptime(manifest["created"], "%Y-%m-%dT%H:%M:%SZ")) - time.mktime(time.gmtime())) < 600
        assert checkpoint.load(folder).state["w"].tolist() == [float(epoch)] * 4
    assert not list(model.rglob(".*")), "an export left a temporary file or folder"


def test_aliases_are_set_moved_read_and_removed(run, tmp_path):
    model = published(run, tmp_path / "models" / "vae", 3)
    assert model.set_alias("production", 1) is None
    assert model.set_alias("canary", 3) is None
    assert model.set_alias("production", 2) == 1  # moved: what it pointed at before
    assert model.aliases() == {"production": 2, "canary": 3}
    assert model.alias_version("production") == 2 == registry.current_version(f"{model}@production")
    assert model.remove_alias("canary") == 3 and model.aliases() == {"production": 2}
    assert sorted(p.name for p in (model.location.path / "aliases").iterdir()) == ["production.json"]


def test_every_reference_form_resolves(run, tmp_path, monkeypatch):
    store = tmp_path / "models"
    published(run, store / "vae", 3).set_alias("production", 2)
    monkeypatch.chdir(tmp_path)
    for ref, number in [("models/vae", 3), ("models/vae@latest", 3), ("models/vae@1", 1), ("models/vae@production", 2),
                        (str(store / "vae@2"), 2), (Location(store / "vae@production"), 2), (store / "vae", 3)]:
        assert registry.resolve(ref) == (Location(store / "vae" / "versions" / str(number)), number), ref
        assert registry.current_version(ref) == number
    # A serve config's model, relative to $GENRAY_HOME: the folder of one version.
    monkeypatch.setenv("GENRAY_HOME", str(tmp_path))
    monkeypatch.chdir(run)
    assert resolve_model_path("models/vae@production") == store / "vae" / "versions" / "2"
    assert resolve_model_path("models/vae") == store / "vae" / "versions" / "3"
    assert checkpoint.read_manifest(resolve_model_path("models/vae@1"))["epoch"] == 2
    assert resolve_model_path("models/none") == store / "none"  # nothing there: its reader says so


def test_a_serve_config_names_a_version_or_an_alias(run, tmp_path, monkeypatch):
    from genray import serve_config

    published(run, tmp_path / "models" / "vae", 2).set_alias("production", 1)
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "serve.yaml"
    for model in ("models/vae", "models/vae@production", "models/vae@2"):
        config.write_text(f"applications:\n  - name: vae\n    args: {{model: {model}}}\n")
        assert serve_config.load(config)["applications"][0]["args"]["model"] == model
    config.write_text("applications:\n  - name: vae\n    args: {model: models/vae@canary}\n")
    with pytest.raises(RegistryError, match="vae has no alias 'canary'; aliases: production"):
        serve_config.load(config)


def test_model_folders_exported_before_versions_keep_loading(run, tmp_path, monkeypatch):
    from genray.store import export

    plain = Path(export(run, tmp_path / "models" / "gan"))  # one checkpoint folder, no versions
    assert resolve_model_path(str(plain)) == plain
    assert registry.model_folder(plain) == Location(plain)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RegistryError) as refused:
        registry.publish(run, "models/gan")
    assert str(refused.value) == (
        f"{plain} is a model folder exported before versions (one checkpoint, no versions or aliases): a "
        f"deployment of {plain} still loads it as it is; to give it versions, move it aside (e.g. to gan-unversioned) "
        f"and `genray export RUN --to {plain}`")
    with pytest.raises(RegistryError, match="exported before versions"):
        registry.resolve(f"{plain}@1")
    assert checkpoint.load(plain).epoch == 1, "the refused export left the folder as it was"


def test_delete_is_refused_while_an_alias_points_at_the_version(run, tmp_path):
    model = published(run, tmp_path / "models" / "vae", 3)
    model.set_alias("production", 1)
    model.set_alias("canary", 1)
    with pytest.raises(RegistryError, match=r"version 1 of .*vae is in use: aliases canary, production point at it"):
        model.delete(1)
    assert model.versions() == [1, 2, 3]
    model.set_alias("production", 2)
    model.remove_alias("canary")
    model.delete(1)
    model.delete(3)
    assert model.versions() == [2] and not (model.location.path / "versions" / "1").exists()
    # A deleted number is never given again: the next export is 4, not 3.
    assert registry.publish(run, model.location).number == 4
    with pytest.raises(RegistryError, match=r"has no version 3; versions: 2, 4"):
        registry.resolve(f"{model}@3")
    # Claims lost by hand: the export that takes an existing version's number refuses, and leaves it.
    (model.location.path / "claims" / "4").unlink()
    with pytest.raises(RegistryError, match=r"versions/4 exists though its number 4 was free"):
        registry.publish(run, model.location)
    assert model.versions() == [2, 4] and checkpoint.load(model.folder(4)).epoch == 1
    # An alias that names a deleted version (set while the version was being deleted) says so.
    (model.location / "aliases" / "stale.json").write_text(json.dumps({"version": 3}))
    with pytest.raises(RegistryError, match=r"alias 'stale' of .* points at version 3, which is not there"):
        registry.resolve(f"{model}@stale")


@pytest.fixture(scope="module")
def vae(run, tmp_path_factory) -> Model:
    """A model with versions 1 and 2, production -> 1; the tests that read it change nothing."""
    model = published(run, tmp_path_factory.mktemp("store") / "vae", 2)
    model.set_alias("production", 1)
    return model


@pytest.mark.parametrize("action, message", [
    (lambda m: Model(m.location.parent / "va e"), r"model name 'va e' is not allowed: use letters, digits, '\.', '_' "
                                                  r"and '-', starting with a letter or digit, at most 100 characters"),
    (lambda m: registry.resolve(m.location.parent / "nope"), r"no model 'nope' in .*; export one with "
                                                             r"`genray export RUN --to .*nope`"),
    (lambda m: registry.resolve(f"{m}@"), r"ends in '@': name a version number, an alias or latest after it"),
    (lambda m: registry.resolve(f"{m}@0"), r"version '0' is not a version number: versions are numbered 1, 2, 3"),
    (lambda m: registry.resolve(f"{m}@9"), r"vae has no version 9; versions: 1, 2$"),
    (lambda m: registry.resolve(f"{m}@prod"), r"vae has no alias 'prod'; aliases: production; set one with "
                                              r"`genray models alias .*vae prod VERSION`"),
    (lambda m: registry.resolve(f"{m}@Prod"), r"alias 'Prod' is not allowed: use lowercase letters"),
    (lambda m: m.set_alias("3", 1), r"alias '3' is not allowed: .*starting with a letter \(a number names a version\)"),
    (lambda m: m.set_alias("latest", 1), r"alias 'latest' is reserved: a reference @latest always means the newest"),
    (lambda m: m.set_alias("canary", 7), r"vae has no version 7; versions: 1, 2"),
    (lambda m: m.remove_alias("canary"), r"vae has no alias 'canary'; aliases: production"),
    (lambda m: m.delete(5), r"vae has no version 5"),
    (lambda m: m.delete(1), r"version 1 of .*vae is in use: alias production points at it; move production first"),
])
def test_bad_names_versions_and_aliases_are_clear_errors(vae, action, message):
    with pytest.raises(RegistryError, match=message):
        action(vae)
    assert vae.versions() == [1, 2] and vae.aliases() == {"production": 1}


def test_a_bad_alias_is_refused_before_anything_is_exported(run, tmp_path):
    with pytest.raises(RegistryError, match="alias 'Production' is not allowed"):
        registry.publish(run, tmp_path / "vae", alias="Production")
    assert not (tmp_path / "vae").exists()


def export_at_once(run: Path, model, count: int) -> list[int]:
    """`count` exports to `model` from as many threads, none claiming a number before every one
    of them has looked for the highest claim: they all go for the same number first."""
    listed = threading.Barrier(count, timeout=60)
    first = threading.local()
    create = Location.create

    def create_once_all_listed(self, data):
        if not getattr(first, "done", False):
            first.done = True
            listed.wait()
        return create(self, data)

    with pytest.MonkeyPatch.context() as patch, ThreadPoolExecutor(count) as pool:
        patch.setattr(Location, "create", create_once_all_listed)
        futures = [pool.submit(registry.publish, run, model, which="latest") for _ in range(count)]
        return [future.result().number for future in futures]


def test_concurrent_exports_get_distinct_consecutive_numbers(run, tmp_path):
    model = tmp_path / "models" / "vae"
    registry.publish(run, model)
    assert sorted(export_at_once(run, model, 8)) == list(range(2, 10))
    assert Model(model).versions() == list(range(1, 10))
    assert sorted(p.name for p in (model / "claims").iterdir()) == sorted(map(str, range(1, 10)))


@pytest.fixture
def s3_conditional_puts_atomic(s3, monkeypatch):
    """moto answers a put with If-None-Match: * from a check and a write with nothing between them
    to stop another request; S3 decides it in one step. Serialising moto's PutObject gives these
    tests S3's behaviour."""
    from moto.s3.responses import S3Response

    lock = threading.Lock()
    put = S3Response.put_object

    def one_at_a_time(self):
        with lock:
            return put(self)

    monkeypatch.setattr(S3Response, "put_object", one_at_a_time)


def test_the_registry_on_s3(s3, s3_conditional_puts_atomic, run):
    once = Location("s3://models/once")
    assert once.create(b"first") and not once.create(b"second") and once.read_bytes() == b"first"

    assert sorted(export_at_once(run, "s3://models/vae", 8)) == list(range(1, 9))
    model = Model("s3://models/vae")
    assert model.versions() == list(range(1, 9)) and [m.name for m in registry.models("s3://models")] == ["vae"]
    manifest = model.manifest(3)
    assert sorted(manifest["files"]) == ["manifest.json", "weights.pt"]
    for name, digest in manifest["files"].items():
        assert hashlib.sha256((model.folder(3) / name).read_bytes()).hexdigest() == digest

    model.set_alias("production", 3)
    model.set_alias("canary", 8)
    for ref, number in [("s3://models/vae", 8), ("s3://models/vae@canary", 8), ("s3://models/vae@production", 3),
                        ("s3://models/vae@2", 2), ("s3://models/vae@latest", 8)]:
        assert registry.resolve(ref) == (Location(f"s3://models/vae/versions/{number}"), number), ref
    assert registry.current_version("s3://models/vae@production") == 3
    assert resolve_model_path("s3://models/vae@production") == "s3://models/vae/versions/3"
    assert checkpoint.load(resolve_model_path("s3://models/vae@canary")).epoch == 2

    with pytest.raises(RegistryError, match="version 3 of s3://models/vae is in use: alias production points at it"):
        model.delete(3)
    model.delete(1)
    assert model.versions() == list(range(2, 9)) and Location("s3://models/vae/versions/1").list() == []
    with pytest.raises(RegistryError, match="s3://models/vae has no alias 'staging'; aliases: canary, production"):
        registry.resolve("s3://models/vae@staging")
    with pytest.raises(RegistryError, match="no model 'other' in s3://models"):
        registry.resolve("s3://models/other@production")


def test_the_commands(run, tmp_path):
    from genray.store import export

    runner = CliRunner()
    store = tmp_path / "models"
    model = store / "vae"

    def ok(*args: str) -> str:
        result = runner.invoke(app, list(args))
        assert result.exit_code == 0, result.output
        return result.output

    def refused(*args: str) -> str:
        result = runner.invoke(app, list(args))
        assert result.exit_code == 2, result.output
        (line,) = result.output.strip().splitlines()  # one line
        assert line.startswith("error: ")
        return line[len("error: "):]

    assert ok("models", "list", str(store)) == f"no models in {store} (genray export RUN --to {store}/NAME adds one)\n"
    assert ok("export", str(run), "--to", str(model), "--alias", "production") == (
        f"exported vae (epoch 1) from {run} as version 1: {model}@1, alias production\n")
    assert "(epoch 2) from" in ok("export", str(run), "--to", str(model), "--which", "latest")
    assert ok("models", "list", str(store)) == "vae: versions 1 2; production -> 1\n"
    listing = ok("models", "show", str(model)).splitlines()
    assert listing[0] == f"{model}: 2 versions"
    assert listing[1].split()[:4] == ["1", "vae", "epoch", "1"] and listing[1].split()[5] == "production"
    assert listing[2].split()[:4] == ["2", "vae", "epoch", "2"] and listing[2].split()[5] == "-"
    shown = ok("models", "show", f"{model}@production")
    assert shown.startswith(f"{model}@1  ({model / 'versions' / '1'})\n") and "aliases:    production" in shown
    assert f"sha256:     {checkpoint.sha256(model / 'versions' / '1' / 'weights.pt')}  weights.pt" in shown

    assert ok("models", "alias", str(model), "canary", "2") == f"{model}@canary -> version 2 (set)\n"
    assert ok("models", "alias", str(model), "production", "canary") == (
        f"{model}@production -> version 2 (moved from version 1)\n")
    assert refused("models", "delete", str(model), "2").startswith(
        f"version 2 of {model} is in use: aliases canary, production point at it")
    assert ok("models", "unalias", str(model), "canary") == f"removed {model}@canary (it pointed at version 2)\n"
    assert ok("models", "alias", str(model), "production", "latest") == (
        f"{model}@production -> version 2 (unchanged)\n")
    assert ok("models", "delete", str(model), "1") == f"deleted {model}@1\n"
    assert ok("models", "list", str(store)) == "vae: versions 2; production -> 2\n"

    assert refused("models", "show", str(store / "nope")).startswith(f"no model 'nope' in {store}")
    assert refused("models", "show", f"{model}@7") == f"{model} has no version 7; versions: 2"
    assert refused("models", "alias", str(model), "7", "2").startswith("alias '7' is not allowed")
    assert refused("models", "unalias", str(model), "canary").startswith(f"{model} has no alias 'canary'")
    assert refused("models", "delete", str(model), "x") == "version 'x' is not a version number: versions are numbered 1, 2, 3, ..."
    assert refused("models", "delete", str(model), "1") == f"{model} has no version 1; versions: 2"
    assert refused("export", str(run), "--to", str(store / "b@d")).startswith("model name 'b@d' is not allowed")
    plain = Path(export(run, store / "gan"))  # a model folder from before versions
    assert refused("export", str(run), "--to", str(plain)).startswith(f"{plain} is a model folder exported before versions")
