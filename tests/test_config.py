import pytest

from genray.config import ConfigError, build_config


def test_defaults_and_overrides_are_typed():
    cfg = build_config("vae", overrides=["model.latent_dim=4", "train.epochs=2", "train.use_gpu=false"])
    assert cfg.model.latent_dim == 4 and isinstance(cfg.model.latent_dim, int)
    assert cfg.train.epochs == 2 and cfg.train.use_gpu is False
    assert cfg.data.source == "digits"


def test_yaml_file_then_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("family: vae\nmodel:\n  latent_dim: 3\ntrain:\n  epochs: 5\n")
    cfg = build_config(None, path, ["train.epochs=7"])
    assert (cfg.model.latent_dim, cfg.train.epochs) == (3, 7)


@pytest.mark.parametrize(
    "override, message",
    [
        ("model.latent_dim=0", "model.latent_dim: Input should be greater than or equal to 1"),
        ("model.latnt_dim=3", "model.latnt_dim: unknown key"),
        ("train.epochs=abc", "train.epochs: Input should be a valid integer"),
        ("bogus=1", "bogus: unknown key"),
        ("data.val_fraction=1.5", "data.val_fraction"),
        ("name=has space", "name:"),
        ("noequals", "key.path=value"),
        ("train.epochs.x=1", "train.epochs: Input should be a valid integer"),
    ],
)
def test_bad_config_names_the_key(override, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        build_config("vae", overrides=[override])


def test_unknown_family_lists_known_ones():
    with pytest.raises((ConfigError, ValueError), match="unknown family 'nope'.*vae"):
        build_config("nope")


def test_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        build_config("vae", tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a list\n- not a mapping\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        build_config("vae", bad)
    other = tmp_path / "other.yaml"
    other.write_text("family: gan\n")
    with pytest.raises(ConfigError, match="the command says 'vae'"):
        build_config("vae", other)


def test_workers_get_a_gpu_each_when_asked_or_when_the_cluster_has_them(monkeypatch):
    """genray train and Tune trials size their workers with one function (a trial had taken an
    unset train.use_gpu as no GPU, even on a GPU cluster)."""
    import ray

    from genray.train import scaling_for

    cfg = build_config("vae", overrides=["train.workers=2", "train.cpus_per_worker=3"])
    assert cfg.train.use_gpu is None
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 16.0, "GPU": 2.0})
    gpus = scaling_for(cfg)
    assert gpus.num_workers == 2 and gpus.use_gpu and gpus.resources_per_worker == {"CPU": 3, "GPU": 1}
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 2.0})
    cpus = scaling_for(cfg)
    assert not cpus.use_gpu and cpus.resources_per_worker == {"CPU": 3}
    off = scaling_for(build_config("vae", overrides=["train.workers=0", "train.use_gpu=false"]), min_workers=1)
    assert off.num_workers == 1 and not off.use_gpu
