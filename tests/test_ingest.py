"""The user's own files as data (genray.data.files, genray.data.pipeline): image folders and
Parquet files, local and on the moto S3 server, read in this process and streamed to Ray Train
workers through Ray Data, exported and served as serve/<app>.yaml declares; every bad input
is an error that names the file or the key. The data is made here: coloured PNGs in class
subfolders, a Parquet file of PNG bytes."""

import io
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from genray.config import ConfigError, build_config
from genray.data import DataConfig, DataError, load_images, resolve
from genray.data.files import NO_LABEL, Decoder, ShardBatches, find_source, split_names
from genray.storage import Location

from s3server import s3  # noqa: F401  (the fixture)

REPO = Path(__file__).resolve().parents[1]

CLASSES = ("blue", "red")  # the colour of each class's images


def picture(label: int, i: int, size: int = 64) -> np.ndarray:
    """A (size, size, 3) uint8 image: a square of the class's colour on noise, placed by i."""
    rng = np.random.default_rng(1000 * label + i)
    image = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
    at = (7 * i) % (size // 2)
    image[at:at + size // 2, at:at + size // 2, 2 - 2 * label] = 230
    return image


def png(array: np.ndarray, mode: str | None = None) -> bytes:
    out = io.BytesIO()
    Image.fromarray(array, mode).save(out, "PNG")
    return out.getvalue()


def image_folder(root, per_class: int = 10, size: int = 64, classes=CLASSES):
    for label, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            (root / name / f"{i:03d}.png").write_bytes(png(picture(label, i, size)))
    return root


def parquet_file(path, per_class: int = 10, labels: list | None = None, extra_rows: list | None = None):
    import pyarrow as pa
    import pyarrow.parquet as pq

    # Extra rows go first: Ray Train's equal split may drop a split's last rows (fewer than the workers).
    extra = extra_rows or []
    images = [image for image, _ in extra] + [png(picture(label, i)) for label in range(2) for i in range(per_class)]
    names = [name for _, name in extra] + (labels or [CLASSES[label] for label in range(2) for _ in range(per_class)])
    pq.write_table(pa.table({"image": pa.array(images, pa.binary()), "label": names}), path)
    return path


# --- image folders, in this process ------------------------------------------------------------------

def test_an_image_folder_resolves_to_its_size_colour_and_classes(tmp_path):
    root = image_folder(tmp_path / "pets")
    cfg = resolve(DataConfig(source=str(root)))
    assert (cfg.image_size, cfg.channels, cfg.labels, cfg.resize) == (64, 3, list(CLASSES), "none")
    assert cfg.spec().shape == (3, 64, 64) and resolve(cfg) == cfg  # a resolved config stays as it is
    train, val = load_images(cfg)
    x, y = train.tensors
    assert x.shape[1:] == (3, 64, 64) and x.dtype == torch.float32 and 0.0 <= x.min() and x.max() <= 1.0
    assert len(train) + len(val) == 20 and len(val) >= 1
    # Each image is its file, label from its folder: the class colour fills a quarter of it.
    for image, label in zip(x, y.tolist()):
        assert image[2 - 2 * label].gt(0.85).float().mean() >= 0.24
    # data.labels fixes the order of the classes.
    flipped = resolve(DataConfig(source=str(root), labels=["red", "blue"]))
    _, y_flipped = load_images(flipped)[0].tensors
    assert flipped.labels == ["red", "blue"] and torch.equal(y_flipped, 1 - y)


def test_the_split_follows_the_file_names_and_seed_only(tmp_path):
    root = image_folder(tmp_path / "a")
    cfg = resolve(DataConfig(source=str(root)))
    train, val = split_names(find_source(cfg), cfg)
    assert not set(train) & set(val) and len(train) + len(val) == 20
    copy = resolve(DataConfig(source=str(shutil.copytree(root, tmp_path / "elsewhere"))))
    assert split_names(find_source(copy), copy) == (train, val)  # the same files wherever the folder is
    other = cfg.model_copy(update={"split_seed": 1})
    assert split_names(find_source(other), other)[1] != val
    limited = cfg.model_copy(update={"limit": 5})
    assert split_names(find_source(limited), limited) == (train[:5], val)


def test_a_folder_without_subfolders_is_unlabelled_and_grey_images_make_a_grey_set(tmp_path):
    for i in range(5):
        (tmp_path / f"{i}.png").write_bytes(png(picture(0, i, 32)[:, :, 2]))  # mode L
    cfg = resolve(DataConfig(source=str(tmp_path)))
    assert (cfg.image_size, cfg.channels, cfg.labels) == (32, 1, [])
    assert cfg.spec().num_classes == 0
    train, val = load_images(cfg)
    assert train.tensors[0].shape[1:] == (1, 32, 32)
    assert set(train.tensors[1].tolist()) | set(val.tensors[1].tolist()) == {NO_LABEL}
    # A labelled folder read as unlabelled: data.labels = [].
    labelled = image_folder(tmp_path / "labelled", per_class=3)
    assert resolve(DataConfig(source=str(labelled), labels=[])).labels == []


def test_resize_crops_the_centre_or_letterboxes(tmp_path):
    wide = np.zeros((16, 32, 3), np.uint8)
    wide[:, :, 0] = np.arange(32, dtype=np.uint8)[None, :]  # red = x
    spec = DataConfig(image_size=16, channels=3, labels=[]).spec()
    crop = Decoder(spec, "crop", root="").image(png(wide), "wide.png")
    assert crop.shape == (3, 16, 16) and crop[0, 0].tolist() == list(range(8, 24))  # the centre 16 columns
    pad = Decoder(spec, "pad", root="").image(png(wide[::2, ::2]), "half.png")  # 8 x 16: scale 1, letterboxed
    assert pad[0, 4:12, :].tolist() == [list(range(0, 32, 2))] * 8
    assert not pad[:, :4].any() and not pad[:, 12:].any()
    # image_size given without resize: crop.
    root = image_folder(tmp_path / "pets", per_class=3)
    cfg = resolve(DataConfig(source=str(root), image_size=32))
    assert cfg.resize == "crop" and load_images(cfg)[0].tensors[0].shape[1:] == (3, 32, 32)


def test_rgba_palette_and_grey_files_join_an_rgb_set(tmp_path):
    root = image_folder(tmp_path / "pets", per_class=3)
    rgba = np.zeros((64, 64, 4), np.uint8)
    rgba[..., :3] = (10, 20, 30)
    (root / "red" / "rgba.png").write_bytes(png(rgba))  # fully transparent: the colour is kept
    palette = Image.fromarray(picture(1, 0)).convert("P", palette=Image.Palette.ADAPTIVE, colors=8)
    palette.info["transparency"] = 0
    out = io.BytesIO()
    palette.save(out, "PNG", transparency=0)
    (root / "red" / "palette.png").write_bytes(out.getvalue())
    (root / "red" / "grey.png").write_bytes(png(np.full((64, 64), 77, np.uint8)))
    decoder = Decoder(resolve(DataConfig(source=str(root))).spec(), "none", root="")
    assert decoder.image((root / "red" / "rgba.png").read_bytes(), "rgba.png")[:, 0, 0].tolist() == [10, 20, 30]
    expected = np.asarray(palette.convert("RGB")).transpose(2, 0, 1)
    assert np.array_equal(decoder.image(out.getvalue(), "palette.png"), expected)
    assert decoder.image((root / "red" / "grey.png").read_bytes(), "grey.png")[:, 5, 5].tolist() == [77, 77, 77]
    train, val = load_images(resolve(DataConfig(source=str(root))))
    assert len(train) + len(val) == 9


# --- Parquet, in this process ----------------------------------------------------------------------

def test_a_parquet_file_of_png_bytes_with_string_or_integer_labels(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = parquet_file(tmp_path / "pets.parquet")
    cfg = resolve(DataConfig(source=str(path), label_column="label"))
    assert (cfg.image_size, cfg.channels, cfg.labels) == (64, 3, list(CLASSES))
    train, val = load_images(cfg)
    assert len(train) + len(val) == 20 and train.tensors[0].shape[1:] == (3, 64, 64)
    for image, label in zip(train.tensors[0], train.tensors[1].tolist()):
        assert image[2 - 2 * label].gt(0.85).float().mean() >= 0.24
    # The split is a hash of each row's bytes: the same rows whatever the file holds besides.
    again = load_images(cfg)[1].tensors[0]
    assert torch.equal(again, val.tensors[0])
    # Integer labels are class indices; a folder of Parquet files reads them all.
    table = pq.read_table(path)
    ints = table.set_column(1, "label", pa.array([CLASSES.index(v) for v in table.column("label").to_pylist()]))
    (tmp_path / "parts").mkdir()
    pq.write_table(ints.slice(0, 12), tmp_path / "parts" / "a.parquet")
    pq.write_table(ints.slice(12), tmp_path / "parts" / "b.parquet")
    by_index = resolve(DataConfig(source=str(tmp_path / "parts"), label_column="label"))
    assert by_index.labels == ["0", "1"]
    train_i, val_i = load_images(by_index)
    assert torch.equal(val_i.tensors[1], val.tensors[1]) and torch.equal(val_i.tensors[0], val.tensors[0])
    # Without a label column the rows are unlabelled.
    assert resolve(DataConfig(source=str(path))).labels == []


def test_parquet_columns_of_the_wrong_kind_are_named(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"image": [png(picture(0, 0))], "score": [0.5], "pixels": [3]}), path)
    with pytest.raises(DataError, match=r"data.label_column: column 'score' of .*t.parquet holds double; expected "
                                        r"integers \(the class index\) or strings"):
        resolve(DataConfig(source=str(path), label_column="score"))
    with pytest.raises(DataError, match=r"data.image_column: column 'pixels' of .*t.parquet holds int64; expected "
                                        r"encoded images"):
        resolve(DataConfig(source=str(path), image_column="pixels"))
    with pytest.raises(DataError, match=r"data.label_column: .*t.parquet has no column 'label'; its columns: "
                                        r"image, score, pixels"):
        resolve(DataConfig(source=str(path), label_column="label"))
    (tmp_path / "not.parquet").write_bytes(b"PAR1 nonsense")
    with pytest.raises(DataError, match=r"not.parquet: not a readable Parquet file"):
        resolve(DataConfig(source=str(tmp_path / "not.parquet")))


# --- bad input, in this process ----------------------------------------------------------------------

def test_bad_files_are_errors_that_name_them_or_are_skipped_and_counted(tmp_path):
    root = image_folder(tmp_path / "pets", per_class=6)
    good = (root / "red" / "002.png").read_bytes()
    (root / "red" / "003.png").write_bytes(good[: len(good) // 2])  # truncated
    with pytest.raises(DataError, match=r"red/003.png: unreadable or truncated image .*data.on_bad_file: skip"):
        load_images(DataConfig(source=str(root)))
    (root / "red" / "003.png").write_bytes(b"hello, not a picture")
    with pytest.raises(DataError, match=r"red/003.png: not an image \(PNG, JPEG or WebP expected\)"):
        load_images(DataConfig(source=str(root)))
    with pytest.warns(UserWarning, match=r"skipped 1 files .*/red/003.png: not an image"):
        train, val = load_images(DataConfig(source=str(root), on_bad_file="skip"))
    assert len(train) + len(val) == 11
    (root / "red" / "003.png").write_bytes(png(picture(1, 3, 48)))  # another size
    with pytest.raises(DataError, match=r"red/003.png: 48x48, but the set's images are 64x64 .* set data.image_size"):
        load_images(DataConfig(source=str(root)))
    assert len(load_images(DataConfig(source=str(root), image_size=64))[0]) + 1 >= 11  # resized, kept


def test_a_bad_first_image_and_sizes_out_of_range_ask_for_image_size(tmp_path):
    (tmp_path / "big").mkdir()
    (tmp_path / "big" / "a.png").write_bytes(png(np.zeros((300, 300, 3), np.uint8)))
    with pytest.raises(DataError, match=r"big/a.png is 300x300; .* 16 to 256 .* set data.image_size"):
        resolve(DataConfig(source=str(tmp_path / "big")))
    assert resolve(DataConfig(source=str(tmp_path / "big"), image_size=64)).image_size == 64
    with pytest.raises(ConfigError, match=r"data.image_size: Input should be less than or equal to 256"):
        build_config("vae", overrides=["data.image_size=300"])
    (tmp_path / "big" / "0.png").write_bytes(b"\x89PNG\r\n")
    with pytest.raises(DataError, match=r"big/0.png: not an image .* data.on_bad_file: skip"):
        resolve(DataConfig(source=str(tmp_path / "big")))
    # Skipping: the first usable image sets the size.
    assert resolve(DataConfig(source=str(tmp_path / "big"), on_bad_file="skip", image_size=32)).channels == 3


def test_sources_that_hold_no_images_are_clear_errors(tmp_path):
    with pytest.raises(DataError, match=r"data.source: .*nowhere does not exist; expected digits, or a folder"):
        resolve(DataConfig(source=str(tmp_path / "nowhere")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"data.source: the folder .*empty is empty"):
        resolve(DataConfig(source=str(tmp_path / "empty")))
    root = image_folder(tmp_path / "pets", per_class=2)
    (root / "stray.png").write_bytes(png(picture(0, 0)))
    with pytest.raises(DataError, match=r"stray.png lies beside the class subfolders \['blue', 'red'\]"):
        resolve(DataConfig(source=str(root)))
    (root / "stray.png").unlink()
    with pytest.raises(DataError, match=r"data.labels \['blue'\] leaves out the class subfolder\(s\) \['red'\]"):
        resolve(DataConfig(source=str(root), labels=["blue"]))
    with pytest.raises(DataError, match=r"data.classes and data.per_class_limit pick digits"):
        resolve(DataConfig(source=str(root), classes=[1]))
    (root / "blue" / "notes.txt").write_text("the blue ones")
    with pytest.raises(DataError, match=r"blue/notes.txt: not an image"):
        load_images(DataConfig(source=str(root)))


# --- a streamed shard, without Ray ----------------------------------------------------------------

class FakeShard:
    """What ShardBatches asks of a ray.data.DataIterator: iter_torch_batches over numpy batches."""

    def __init__(self, rows: dict[str, np.ndarray]):
        self.rows, self.calls = rows, []

    def iter_torch_batches(self, *, batch_size, collate_fn, prefetch_batches, **shuffle):
        self.calls.append(shuffle)
        n = len(self.rows["label"])
        for start in range(0, n, batch_size):
            yield collate_fn({k: v[start:start + batch_size] for k, v in self.rows.items()})


def test_shard_batches_raise_or_skip_bad_rows_and_reshuffle_by_epoch(tmp_path):
    decoder = Decoder(DataConfig(image_size=64, channels=3, labels=list(CLASSES)).spec(), "none", root="/d")
    rows = decoder.files({"bytes": [png(picture(0, 0)), b"junk", png(picture(1, 1))],
                          "path": ["/d/blue/0.png", "/d/red/x.png", "/d/red/1.png"]})
    assert rows["label"].tolist() == [0, NO_LABEL, 1] and rows["error"][1].startswith("/d/red/x.png: not an image")
    batches = ShardBatches(FakeShard(rows), batch_size=2, prefetch_batches=1, skip_bad=True, shuffle_buffer=8, seed=3)
    got = list(batches.epoch(0))
    assert [len(b[0]) for b in got] == [1, 1] and batches.skipped == 1 and got[1][1].tolist() == [1]
    assert torch.equal(got[0][0][0], torch.from_numpy(picture(0, 0)).permute(2, 0, 1).float() / 255.0)
    list(batches.epoch(1))
    seeds = [c["local_shuffle_seed"] for c in batches.shard.calls]
    assert seeds[0] != seeds[1] and batches.shard.calls[0]["local_shuffle_buffer_size"] == 8
    strict = ShardBatches(FakeShard(rows), batch_size=2, prefetch_batches=1, skip_bad=False)
    with pytest.raises(DataError, match=r"/d/red/x.png: not an image .* data.on_bad_file: skip"):
        list(strict.epoch(0))


# --- S3, in this process -----------------------------------------------------------------------

def upload(folder, prefix: str) -> str:
    Location(prefix).upload_from(folder)
    return prefix


def test_an_s3_folder_reads_as_the_local_one_and_a_missing_prefix_is_named(s3, tmp_path):
    root = image_folder(tmp_path / "pets", per_class=4)
    source = upload(root, "s3://data/local-check/pets")
    local, remote = resolve(DataConfig(source=str(root))), resolve(DataConfig(source=source))
    assert (remote.image_size, remote.channels, remote.labels) == (local.image_size, local.channels, local.labels)
    (lt, lv), (rt, rv) = load_images(local), load_images(remote)
    assert torch.equal(lv.tensors[0], rv.tensors[0]) and torch.equal(lt.tensors[1], rt.tensors[1])
    with pytest.raises(DataError, match=r"data.source: no objects under s3://data/nothing-here; is the prefix right"):
        resolve(DataConfig(source="s3://data/nothing-here"))
    parquet = Location("s3://data/local-check/pets.parquet")
    parquet.write_bytes(parquet_file(tmp_path / "p.parquet").read_bytes())
    assert resolve(DataConfig(source=str(parquet), label_column="label")).labels == list(CLASSES)


def test_a_search_on_files_records_their_shape_and_ranks_by_what_the_data_allows(tmp_path):
    from genray.tune import plan_search

    root = image_folder(tmp_path / "pets", per_class=3)
    spec, base, _ = plan_search("gan", space=None, scheduler="fifo", storage=str(tmp_path / "searches"),
                                overrides=[f"data.source={root}", "data.labels=[]"])
    assert (base.data.image_size, base.data.channels, base.data.labels) == (64, 3, [])
    assert spec.metric == "val_moment_mse"  # sample quality needs labelled images
    spec, base, _ = plan_search("gan", space=None, scheduler="fifo", storage=str(tmp_path / "searches"),
                                overrides=[f"data.source={root}"])
    assert spec.metric == "sample_fid" and base.data.labels == list(CLASSES)


# --- streaming through Ray Data to Ray Train workers ---------------------------------------------------

def streamed_run(family: str, source: str, storage, name: str, *more: str):
    """A 2-worker run on `source`, tiny models; the workers take one of the two CPUs, Ray Data the other."""
    return build_config(family, overrides=[
        f"data.source={source}", "train.workers=2", "train.cpus_per_worker=0.5", "train.epochs=2",
        "train.batch_size=8", "train.quality_every=0", "train.preview_every=1", "train.max_failures=0",
        f"storage={storage}", f"name={name}", "model.latent_dim=4", *more])


def served_samples(app: str, run_dir, models, serve_url: str, n: int = 3) -> np.ndarray:
    """Export the run's best checkpoint to the model store `models`, deploy what serve/<app>.yaml
    declares pointed at it (as `serve run serve/<app>.yaml` would), and sample n images over HTTP."""
    import requests
    import yaml
    from ray import serve

    from genray.deploy import build_app
    from genray.store import export

    model = export(run_dir, models / app)
    spec = yaml.safe_load((REPO / "serve" / f"{app}.yaml").read_text())["applications"][0]
    # Its own app name and route: the session's shared apps (tests/deployed.py) hold the YAML's.
    name = f"{spec['name']}-own-images"
    serve.run(build_app({**spec["args"], "model": str(model)}), name=name, route_prefix=f"/{name}")
    try:
        url = f"{serve_url}/{name}"
        info = requests.get(url + "/", timeout=30).json()
        assert info["image_shape"] == [3, 64, 64]
        answer = requests.post(url + "/sample", json={"n": n, "seed": 1, "format": "npy"}, timeout=60)
        assert answer.status_code == 200, answer.text
        return np.load(io.BytesIO(answer.content))
    finally:
        serve.delete(name)


@pytest.mark.ray
def test_a_vae_trains_on_an_s3_image_folder_through_ray_data(s3, ray_session, serve_url, tmp_path):
    from genray.train import fit

    source = upload(image_folder(tmp_path / "pets", per_class=12), "s3://data/vae/pets")
    summary = fit(streamed_run("vae", source, tmp_path / "runs", "vae-s3"), verbose=False)
    assert [h["epoch"] for h in summary.history] == [0, 1]
    assert all(h["data_skipped"] == 0 and np.isfinite(h["val_neg_elbo"]) for h in summary.history)
    # It trained: the weights moved away from the seeded initialisation the loop starts from.
    from genray.checkpoint import load_family
    from genray.families.vae import VAEFamily

    trained, ckpt = load_family(summary.best_checkpoint)
    torch.manual_seed(0)
    initial = VAEFamily(ckpt.config["model"], spec=trained.spec)
    assert not torch.equal(trained.nets["vae"].to_mu.weight, initial.nets["vae"].to_mu.weight)
    images = served_samples("vae", summary.run_uri, tmp_path / "models", serve_url)
    assert images.shape == (3, 3, 64, 64) and images.dtype == np.float32


@pytest.mark.ray
def test_a_gan_trains_on_parquet_on_s3_skipping_a_bad_row_and_resumes_at_its_next_epoch(s3, ray_session, serve_url,
                                                                                       tmp_path):
    from genray.checkpoint import load, load_family
    from genray.runs import load_run_config
    from genray.train import fit

    path = parquet_file(tmp_path / "pets.parquet", per_class=12, extra_rows=[(b"not a png", "red")])
    source = "s3://data/parquet/pets.parquet"
    Location(source).write_bytes(path.read_bytes())
    # Unlabelled: ranked by val_moment_mse, so no sample-quality classifier is trained here.
    # wgan-gp: the critic's extra steps under DDP on the 2 workers (the only two-player family
    # trained on Ray; that DDP keeps every two-player family's ranks identical is tested without
    # Ray in test_adversarial, gloo).
    first = fit(streamed_run("gan", source, tmp_path / "runs", "gan-parquet", "train.epochs=1", "data.label_column=label",
                             "data.labels=[]", "data.on_bad_file=skip", "model.loss=wgan-gp"), verbose=True)
    assert load(first.best_checkpoint, weights=False).config["data"]["image_size"] == 64
    resumed = fit(load_run_config("gan-parquet", str(tmp_path / "runs"), ["train.epochs=2"]), resume=True, verbose=False)
    assert [h["epoch"] for h in resumed.history] == [0, 1] and resumed.metrics["epoch"] == 1
    assert [h["workers"] for h in resumed.history] == [2, 2]
    restored, ckpt = load_family(resumed.best_checkpoint)
    assert ckpt.config["model"]["loss"] == "wgan-gp"
    assert restored.quality_samples(4, seed=0)[0].shape == (4, 3, 64, 64)
    # The bad row is in one split, read once each epoch: in the first run and in the resumed one.
    assert [h["data_skipped"] for h in resumed.history] == [1, 1]
    assert np.isfinite(resumed.history[1]["val_moment_mse"])
    images = served_samples("gan", resumed.run_uri, tmp_path / "models", serve_url)
    assert images.shape == (3, 3, 64, 64) and 0.0 <= images.min() <= images.max() <= 1.0


@pytest.mark.ray
def test_a_bad_file_found_by_ray_data_stops_the_run_with_its_name(ray_session, tmp_path):
    from genray.train import fit

    root = image_folder(tmp_path / "pets", per_class=8)
    good = (root / "red" / "005.png").read_bytes()
    (root / "red" / "005.png").write_bytes(good[:200])
    # One worker: Ray Data's read tasks decode the file, and the worker whose shard holds it stops
    # the run; the split over two workers is the runs above.
    with pytest.raises(DataError, match=r"red/005.png: unreadable or truncated image .*data.on_bad_file: skip"):
        fit(streamed_run("vae", str(root), tmp_path / "runs", "bad", "train.epochs=1", "train.workers=1"),
            verbose=False)
