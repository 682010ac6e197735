"""The user's own image files as a data source, on the local disk or under an s3:// prefix:

    a folder of images    PNG, JPEG or WebP files; class subfolders give the labels
                          (folder/cat/1.png is a "cat"), no subfolders: unlabelled images
    Parquet               one .parquet file, or a folder of them: a column of encoded images
                          (data.image_column) and an optional label column (data.label_column)

No Ray here. This module lists a source (`find_source`), fills in what a run config leaves to
the data (`resolve_source`: the first image's size and colour, the class names), decodes
files into rows (`Decoder`, which genray.data.pipeline runs inside Ray Data's tasks), reads a
small set into memory (`read_source`), and iterates the shard of a streamed split that a Ray
Train worker is handed (`ShardBatches`).

Every file belongs to the train or the validation split by a seeded hash of its name inside
the source (a Parquet row: of its image bytes), so the split never changes between epochs,
runs, workers or copies of the folder. A row is an image (C, S, S) uint8, its label (int64;
-1 for unlabelled images) and `error`: "" for a usable image, else what is wrong with the file.
The reader of the rows (ShardBatches on a worker, read_source here) raises that error, or with
data.on_bad_file: skip leaves the row out and counts it. Decoding never raises inside Ray
Data's tasks, so the error reaches the user as the DataError it is, not as a failed task.
Batches come out as float32 images in [0, 1].
"""

from __future__ import annotations

import hashlib
import io
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Iterator, Literal

import numpy as np
import torch
from torch.utils.data import TensorDataset

from genray.data.images import MNIST_FILES, DataConfig, DataError, ImageSpec
from genray.storage import Location

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")
PARQUET_EXTENSION = ".parquet"
NO_LABEL = -1  # the label of an image in an unlabelled set
# Sources that are not files: the built-in sets (held in memory by genray.data.images).
BUILT_IN = ("digits", "shapes")
IN_PROCESS_VAL_IMAGES = 10_000  # read_source's validation images of an image folder, at most
GREY_MODES = ("1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F")


class BadImage(DataError):
    """A file (or a Parquet row) that is not a usable image; the message names it."""


@dataclass(frozen=True)
class FileSource:
    """A listed source: its kind, the folder that names its files, and its files."""

    kind: Literal["images", "parquet"]
    root: Location  # the folder or prefix; a file's name inside the source is relative to it
    names: tuple[str, ...]  # the files, relative to root, sorted

    def location(self, name: str) -> Location:
        return self.root.join(name)

    def arrow_paths(self, names: tuple[str, ...] | list[str] | None = None) -> list[str]:
        """The files' paths in the source's pyarrow filesystem (bucket/key on S3)."""
        return [self.location(n).pyarrow_path for n in (self.names if names is None else names)]

    def filesystem(self):
        """The pyarrow filesystem that reads the files: S3 with the endpoint and keys of the
        AWS chain (genray.storage), or the local disk."""
        if self.root.on_s3:
            from genray.storage import s3_filesystem

            return s3_filesystem()
        import pyarrow.fs

        return pyarrow.fs.LocalFileSystem()


def _hidden(name: str) -> bool:
    return any(part.startswith(".") for part in name.split("/"))


def find_source(cfg: DataConfig) -> FileSource | None:
    """The files data.source names; None for the built-in sets and MNIST IDX folders."""
    if cfg.source in BUILT_IN:
        return None
    where = Location(cfg.source)
    if where.name.endswith(PARQUET_EXTENSION) and (where.exists() if where.on_s3 else where.path.is_file()):
        return FileSource("parquet", where.parent, (where.name,))
    if not where.on_s3 and where.path.is_file():
        raise DataError(f"data.source: {where} is a file; expected a folder or s3:// prefix of images, "
                        f"of Parquet files or of MNIST IDX files, or one .parquet file")
    names = [n for n in _list(where) if not _hidden(n)]
    if not names:
        if where.on_s3:
            raise DataError(f"data.source: no objects under {where}; is the prefix right (a missing or "
                            f"empty S3 prefix)?")
        if not where.path.exists():
            raise DataError(f"data.source: {where} does not exist; expected digits, or a folder or s3:// "
                            f"prefix of images, Parquet files or MNIST IDX files")
        raise DataError(f"data.source: the folder {where} is empty; put images (PNG, JPEG, WebP; one "
                        f"subfolder per class), Parquet files or MNIST IDX files in it")
    mnist = [stem for pair in MNIST_FILES.values() for stem in pair]
    if any(n.rsplit("/", 1)[-1].startswith(stem) for n in names for stem in mnist):
        return None
    parquet = tuple(n for n in names if n.endswith(PARQUET_EXTENSION))
    if parquet:
        return FileSource("parquet", where, parquet)
    return FileSource("images", where, tuple(names))


def _list(where: Location) -> list[str]:
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        return where.list()
    except (ClientError, BotoCoreError) as err:
        raise DataError(f"data.source: cannot list {where}: {err}") from None


# --- what a source holds -----------------------------------------------------------------------

def resolve_source(source: FileSource, cfg: DataConfig) -> DataConfig:
    """cfg with image_size, channels, labels and resize filled in from the files; the first
    image gives the size (when image_size is unset) and the colour (when channels is)."""
    if cfg.classes is not None or cfg.per_class_limit is not None:
        raise DataError("data.classes and data.per_class_limit pick digits of the built-in sets and MNIST; "
                        f"for the files of {source.root}, set data.labels or make a folder with the classes you want")
    labels = folder_labels(source, cfg.labels) if source.kind == "images" else parquet_labels(source, cfg)
    if cfg.image_size is not None and cfg.channels is not None and cfg.resize is not None:
        return cfg.model_copy(update={"labels": list(labels or [])})
    name, image = first_image(source, cfg)
    size = cfg.image_size
    if size is None:
        w, h = image.size
        if w != h or not (16 <= w <= 256) or w % 4:
            raise DataError(f"{name} is {w}x{h}; the first image sets the size of a set whose "
                            f"data.image_size is unset, and that must be square, 16 to 256 and a multiple of 4: "
                            f"set data.image_size (e.g. 64) to resize every image")
        size = w
    channels = cfg.channels or (1 if image.mode in GREY_MODES else 3)
    resize = cfg.resize or ("crop" if cfg.image_size is not None else "none")
    return cfg.model_copy(update={"image_size": size, "channels": channels, "labels": list(labels or []),
                                  "resize": resize})


def folder_labels(source: FileSource, wanted: list[str] | None) -> tuple[str, ...] | None:
    """The class names of an image folder: its subfolders, sorted, or `wanted` (data.labels)
    in that order; None when unlabelled (no subfolders, or wanted == [])."""
    classes = sorted({n.split("/", 1)[0] for n in source.names if "/" in n})
    loose = [n for n in source.names if "/" not in n]
    if wanted == []:
        return None
    if not classes:
        if wanted:
            raise DataError(f"data.labels names classes {wanted}, but {source.root} has no class subfolders "
                            f"(a subfolder per class: {source.root}/{wanted[0]}/...)")
        return None
    if loose:
        raise DataError(f"{source.location(loose[0])} lies beside the class subfolders {classes} of {source.root}: "
                        f"move it into one (each subfolder is a class), or use no subfolders for unlabelled images")
    if wanted is None:
        return tuple(classes)
    unknown = [c for c in classes if c not in wanted]
    if unknown:
        raise DataError(f"data.labels {wanted} leaves out the class subfolder(s) {unknown} of {source.root}; "
                        f"name every subfolder, or leave data.labels unset")
    return tuple(wanted)


def parquet_columns(source: FileSource, cfg: DataConfig) -> list[str]:
    """The columns a Parquet source is read with, checked in its first file: an image column of
    bytes, a label column of integers or strings."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    fs = source.filesystem()
    path = source.arrow_paths()[0]
    shown = source.location(source.names[0])
    try:
        schema = pq.read_schema(path, filesystem=fs)
    except (OSError, pa.ArrowException) as err:
        raise DataError(f"{shown}: not a readable Parquet file ({err})") from None
    columns = [cfg.image_column] + ([cfg.label_column] if cfg.label_column else [])
    for key, column in zip(("data.image_column", "data.label_column"), columns):
        if column not in schema.names:
            raise DataError(f"{key}: {shown} has no column {column!r}; its columns: {', '.join(schema.names)}")
    image_type = schema.field(cfg.image_column).type
    if not (_is_bytes(image_type) or (pa.types.is_struct(image_type) and image_type.get_field_index("bytes") >= 0
                                      and _is_bytes(image_type.field("bytes").type))):
        raise DataError(f"data.image_column: column {cfg.image_column!r} of {shown} holds {image_type}; expected "
                        f"encoded images (binary: the bytes of PNG, JPEG or WebP files)")
    if cfg.label_column:
        label_type = schema.field(cfg.label_column).type
        if pa.types.is_dictionary(label_type):
            label_type = label_type.value_type
        if not (pa.types.is_integer(label_type) or pa.types.is_string(label_type) or pa.types.is_large_string(label_type)):
            raise DataError(f"data.label_column: column {cfg.label_column!r} of {shown} holds {label_type}; expected "
                            f"integers (the class index) or strings (the class name)")
    return columns


def _is_bytes(kind) -> bool:
    import pyarrow as pa

    return pa.types.is_binary(kind) or pa.types.is_large_binary(kind) or pa.types.is_fixed_size_binary(kind)


def parquet_labels(source: FileSource, cfg: DataConfig) -> tuple[str, ...] | None:
    """The class names of a Parquet source: data.labels, else the label column's values (strings:
    the distinct names, sorted; integers: "0" .. the largest); None without a label column."""
    columns = parquet_columns(source, cfg)
    if not cfg.label_column or cfg.labels == []:
        return None
    if cfg.labels is not None:
        return tuple(cfg.labels)
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.dataset as pads

    values = pads.dataset(source.arrow_paths(), filesystem=source.filesystem(), format="parquet") \
        .to_table(columns=[columns[1]]).column(0)
    if pa.types.is_dictionary(values.type):
        values = values.cast(values.type.value_type)
    distinct = [v for v in pc.unique(values).to_pylist() if v is not None]
    if not distinct:
        raise DataError(f"data.label_column: column {cfg.label_column!r} of {source.root} holds no labels")
    if pa.types.is_integer(values.type):
        low, high = min(distinct), max(distinct)
        if low < 0:
            raise DataError(f"data.label_column: column {cfg.label_column!r} of {source.root} holds {low}; integer "
                            f"labels are class indices 0, 1, ... (or use strings: class names)")
        return tuple(str(i) for i in range(high + 1))
    return tuple(sorted(distinct))


def first_image(source: FileSource, cfg: DataConfig):
    """(name, PIL image) of the source's first image: the first usable one when skipping bad files."""
    for data, name in _encoded_images(source, cfg):
        try:
            return name, _open(data, name)
        except BadImage as err:
            if cfg.on_bad_file == "error":
                raise BadImage(f"{err}; fix or remove it, or set data.on_bad_file: skip") from None
    raise DataError(f"{source.root}: no usable image (every file was skipped as bad)")


def _encoded_images(source: FileSource, cfg: DataConfig) -> Iterator[tuple[bytes, str]]:
    """The source's encoded images in order, with their names, read one at a time."""
    if source.kind == "images":
        for name in source.names:
            yield source.location(name).read_bytes(), str(source.location(name))
        return
    import pyarrow.parquet as pq

    fs = source.filesystem()
    for name, path in zip(source.names, source.arrow_paths()):
        with fs.open_input_file(path) as f:
            for batch in pq.ParquetFile(f).iter_batches(batch_size=16, columns=[cfg.image_column]):
                for cell in batch.column(0).to_pylist():
                    yield _image_bytes(cell), f"{source.location(name)} (a row of column {cfg.image_column!r})"


# --- decoding ------------------------------------------------------------------------------------

def _open(data: bytes, name: str):
    """A decoded PIL image; BadImage naming `name` when the bytes are not one."""
    from PIL import Image, UnidentifiedImageError

    try:
        image = Image.open(io.BytesIO(data))
        image.load()  # the whole file: a truncated one fails here
    except UnidentifiedImageError:
        raise BadImage(f"{name}: not an image (PNG, JPEG or WebP expected)") from None
    except Exception as err:  # PIL raises OSError, SyntaxError, ValueError, struct.error on damaged files
        raise BadImage(f"{name}: unreadable or truncated image ({type(err).__name__}: {err})") from None
    return image


def to_channels(image, channels: int):
    """`image` as 8-bit RGB (channels 3) or grey (1): transparency dropped, a palette looked up,
    16-bit grey scaled down."""
    from PIL import Image

    if image.mode.startswith("I"):  # 16-bit grey; PIL's own conversion would clip it at 255
        image = Image.fromarray((np.clip(np.asarray(image, dtype=np.int64), 0, 65535) >> 8).astype(np.uint8))
    elif image.mode in ("P", "PA"):
        image = image.convert("RGBA")  # the palette's transparency too, which "RGB" would warn about
    return image.convert("RGB" if channels == 3 else "L")


def to_size(image, size: int, resize: str, name: str):
    """`image` brought to size x size: "crop" (short side to size, the centre kept), "pad" (long
    side to size, letterboxed in black) or "none" (it must be that size already)."""
    from PIL import Image

    w, h = image.size
    if (w, h) == (size, size):
        return image
    if resize == "none":
        raise BadImage(f"{name}: {w}x{h}, but the set's images are {size}x{size} (the first image's size); set "
                       f"data.image_size (and data.resize: crop or pad) to bring every image to one size")
    if resize == "crop":
        scale = size / min(w, h)
        nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
        image = image.resize((nw, nh), Image.Resampling.BILINEAR)
        left, top = (nw - size) // 2, (nh - size) // 2
        return image.crop((left, top, left + size, top + size))
    scale = size / max(w, h)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    canvas = Image.new(image.mode, (size, size))
    canvas.paste(image.resize((nw, nh), Image.Resampling.BILINEAR), ((size - nw) // 2, (size - nh) // 2))
    return canvas


def _image_bytes(value: Any) -> bytes:
    """A Parquet cell of an image column: bytes, or a struct with a "bytes" field (the layout
    Hugging Face datasets write)."""
    return value.get("bytes") if isinstance(value, dict) else value


def seeded_hash(key: bytes, seed: int) -> float:
    """A file's (or row's) place in a seeded shuffle: uniform in [0, 1)."""
    digest = hashlib.blake2b(key, digest_size=8, salt=seed.to_bytes(8, "little")).digest()
    return int.from_bytes(digest, "little") / 2.0**64


def in_val(key: bytes, seed: int, val_fraction: float) -> bool:
    """Whether the Parquet row with these image bytes is a validation one."""
    return seeded_hash(key, seed) < val_fraction


def split_names(source: FileSource, cfg: DataConfig) -> tuple[list[str], list[str]]:
    """(train, val) files of an image folder: shuffled by a seeded hash of their names, the
    first val_fraction of them (at least one) are the validation files, as the in-memory sets
    are split. data.limit keeps the first training files: a random subset."""
    names = sorted(source.names, key=lambda n: seeded_hash(n.encode(), cfg.split_seed))
    n_val = max(1, round(len(names) * cfg.val_fraction))
    if n_val >= len(names):
        raise DataError(f"data.val_fraction={cfg.val_fraction} leaves no training images out of the "
                        f"{len(names)} files of {source.root}: add images or lower data.val_fraction")
    train, val = names[n_val:], names[:n_val]
    return (train[: cfg.limit] if cfg.limit is not None else train), val


@dataclass(frozen=True)
class Decoder:
    """Turns batches of files (or Parquet rows) into rows of images, labels and `bad`; Ray Data
    runs it in its CPU tasks (genray.data.pipeline), read_source in this process. Its batches
    are dicts of numpy arrays, as Ray Data's map_batches hands them."""

    spec: ImageSpec
    resize: str
    root: str  # the source folder's pyarrow path: a file's class is its first folder below it
    image_column: str = "image"
    label_column: str | None = None
    val_fraction: float = 0.2
    split_seed: int = 0

    @classmethod
    def of(cls, source: FileSource, cfg: DataConfig) -> Decoder:
        """The decoder of a resolved config."""
        return cls(spec=cfg.spec(), resize=cfg.resize, root=source.root.pyarrow_path, image_column=cfg.image_column,
                   label_column=cfg.label_column if cfg.labels else None,
                   val_fraction=cfg.val_fraction, split_seed=cfg.split_seed)

    def image(self, data: bytes, name: str) -> np.ndarray:
        """One image (C, S, S) uint8; BadImage naming the file when it is not a usable one."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise BadImage(f"{name}: holds no image bytes (got {type(data).__name__})")
        image = to_size(to_channels(_open(bytes(data), name), self.spec.channels), self.spec.size, self.resize, name)
        array = np.asarray(image, dtype=np.uint8)
        return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)

    def rows(self, items: list[tuple[Any, str, int | str]]) -> dict[str, np.ndarray]:
        """(data, name, label) triples as a batch; a bad one is a row of zeros with its error.
        `label` is the row's label, or the message of a label that is no class."""
        c, s = self.spec.channels, self.spec.size
        images = np.zeros((len(items), c, s, s), dtype=np.uint8)
        labels = np.full(len(items), NO_LABEL, dtype=np.int64)
        errors = np.full(len(items), "", dtype=object)
        for i, (data, name, label) in enumerate(items):
            try:
                if isinstance(label, str):
                    raise BadImage(label)
                images[i], labels[i] = self.image(data, name), label
            except BadImage as err:
                errors[i] = str(err)
        return {"image": images, "label": labels, "error": errors}

    def label_of_file(self, path: str) -> int | str:
        """The label of an image-folder file from its class subfolder (or a message: not a class)."""
        if not self.spec.labels:
            return NO_LABEL
        folder = path[len(self.root):].lstrip("/").split("/", 1)[0]
        if folder not in self.spec.labels:
            return f"{path}: its folder {folder!r} is not one of the classes {list(self.spec.labels)}"
        return self.spec.labels.index(folder)

    def files(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """A batch of image files: Ray Data's read_binary_files rows ("bytes", "path")."""
        return self.rows([(data, path, self.label_of_file(path)) for data, path in zip(batch["bytes"], batch["path"])])

    def parquet(self, batch: dict[str, np.ndarray], split: str) -> dict[str, np.ndarray]:
        """A batch of Parquet rows (the image and label columns and "path"), keeping the rows of
        `split` ("train" or "val")."""
        items = []
        labels = batch[self.label_column] if self.label_column else [NO_LABEL] * len(batch["path"])
        for cell, label, path in zip(batch[self.image_column], labels, batch["path"]):
            data = _image_bytes(cell)
            key = bytes(data) if isinstance(data, (bytes, bytearray, memoryview)) else b""
            if in_val(key, self.split_seed, self.val_fraction) != (split == "val"):
                continue
            name = f"{self._shown(path)} (a row of column {self.image_column!r})"
            items.append((data, name, self.parquet_label(label, name)))
        return self.rows(items)

    def parquet_label(self, value: Any, name: str) -> int | str:
        """A label cell as the class index (or a message: not a known class)."""
        if not self.label_column:
            return NO_LABEL
        labels = self.spec.labels
        if value is None:
            return f"{name}: no label in column {self.label_column!r}"
        if isinstance(value, (int, np.integer)):
            if not 0 <= value < len(labels):
                return (f"{name}: label {value} of column {self.label_column!r} is not a class index 0..{len(labels) - 1} "
                        f"(data.labels names {len(labels)} classes)")
            return int(value)
        if value not in labels:
            return f"{name}: label {value!r} of column {self.label_column!r} is not one of data.labels {list(labels)}"
        return labels.index(value)

    def _shown(self, path: str) -> str:
        """A pyarrow path as the user named it (s3:// for a bucket)."""
        if self.root.startswith("/"):
            return path
        return f"s3://{path}"


def read_source(source: FileSource, cfg: DataConfig) -> tuple[TensorDataset, TensorDataset]:
    """The (resolved) source in this process as (train, val) TensorDatasets of float32 images in
    [0, 1] and labels; for small sets (the metrics classifier, tests, in-process runs). An image
    folder gives at most data.limit training and IN_PROCESS_VAL_IMAGES validation images, read
    file by file, so a big bucket is never pulled in whole. Skipped files are left out with a
    warning that counts them."""
    decoder = Decoder.of(source, cfg)
    fs = source.filesystem()
    if source.kind == "images":
        train_names, val_names = split_names(source, cfg)

        def read_file(path: str) -> bytes:
            with fs.open_input_file(path) as f:
                return f.readall()

        def read(names: list[str]) -> dict[str, np.ndarray]:
            paths = source.arrow_paths(names)
            with ThreadPoolExecutor(8) as pool:  # S3 round trips overlap
                return decoder.files({"bytes": list(pool.map(read_file, paths)), "path": paths})

        if cfg.limit is not None:
            train_names = train_names[: cfg.limit]
        train, val = read(train_names), read(val_names[:IN_PROCESS_VAL_IMAGES])
    else:
        import pyarrow.parquet as pq

        columns = parquet_columns(source, cfg)
        parts = {"train": [], "val": []}
        for path in source.arrow_paths():
            table = pq.read_table(path, columns=columns, filesystem=fs)
            batch = {c: np.asarray(table.column(c).to_pylist(), dtype=object) for c in columns}
            batch["path"] = np.asarray([path] * table.num_rows, dtype=object)
            for split in parts:
                parts[split].append(decoder.parquet(batch, split))
        train, val = ({k: np.concatenate([p[k] for p in parts[s]]) for k in ("image", "label", "error")}
                      for s in ("train", "val"))
        if cfg.limit is not None:
            train = {k: v[: cfg.limit] for k, v in train.items()}
    errors = [e for rows in (train, val) for e in rows["error"] if e]
    if errors and cfg.on_bad_file == "error":
        raise BadImage(f"{errors[0]}; fix or remove it, or set data.on_bad_file: skip")
    if errors:
        warnings.warn(f"{source.root}: skipped {len(errors)} files that are not usable images "
                      f"(data.on_bad_file: skip), the first: {errors[0]}")
    sets = tuple(TensorDataset(torch.from_numpy(rows["image"][rows["error"] == ""]).float().div_(255.0),
                               torch.from_numpy(rows["label"][rows["error"] == ""])) for rows in (train, val))
    for name, data in zip(("training", "validation"), sets):
        if len(data) == 0:
            raise DataError(f"{source.root}: no usable {name} images (data.val_fraction={cfg.val_fraction})")
    return sets


# --- a streamed split on a training worker ----------------------------------------------------

class ShardBatches:
    """One rank's batches of a split streamed through Ray Data: the shard (a
    ray.data.DataIterator) that Ray Train hands the worker, read once per epoch.

    `epoch(e)` yields [images (B, C, S, S) float32 in [0, 1], labels (B,)] on the worker's
    device. A bad file raises its DataError, or when skipping (data.on_bad_file: skip) its row
    is dropped and counted in `skipped`. With a shuffle buffer, rows are mixed anew each epoch,
    seeded by (seed, epoch, rank). `first` is the first batch of the last epoch.
    """

    def __init__(self, shard, *, batch_size: int, prefetch_batches: int, skip_bad: bool,
                 shuffle_buffer: int = 0, seed: int = 0, rank: int = 0):
        self.shard, self.batch_size, self.prefetch_batches = shard, batch_size, prefetch_batches
        self.skip_bad, self.shuffle_buffer, self.seed, self.rank = skip_bad, shuffle_buffer, seed, rank
        self.skipped = 0
        self.first: list[torch.Tensor] | None = None
        self.error: str | None = None  # what was wrong with the first bad row collated

    def collate(self, columns: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        """A numpy batch as tensors, in Ray Data's prefetching thread; the first error message (a
        string, which no tensor holds) is kept here."""
        bad = columns["error"] != ""
        if bad.any() and self.error is None:
            self.error = str(columns["error"][bad][0])
        return {"image": torch.from_numpy(columns["image"]), "label": torch.from_numpy(columns["label"]),
                "bad": torch.from_numpy(np.asarray(bad, dtype=bool))}

    def epoch(self, epoch: int) -> Iterator[list[torch.Tensor]]:
        self.skipped, self.first = 0, None
        shuffle = {}
        if self.shuffle_buffer:
            seed = int(np.random.SeedSequence([self.seed, epoch, self.rank]).generate_state(1)[0])
            shuffle = {"local_shuffle_buffer_size": self.shuffle_buffer, "local_shuffle_seed": seed}
        for columns in self.shard.iter_torch_batches(batch_size=self.batch_size, collate_fn=self.collate,
                                                     prefetch_batches=self.prefetch_batches, **shuffle):
            images, labels, bad = columns["image"], columns["label"], columns["bad"]
            if bad.any():
                if not self.skip_bad:
                    raise BadImage(f"{self.error}; fix or remove it, or set data.on_bad_file: skip")
                self.skipped += int(bad.sum())
                images, labels = images[~bad], labels[~bad]
            batch = [images.float().div_(255.0), labels]
            if self.first is None:
                self.first = batch
            yield batch
