"""The Ray Data pipeline of a file source (genray.data.files): the train and validation
Datasets that the driver hands Ray Train, read and decoded in Ray Data's CPU tasks while the
workers train. The one module of genray.data that imports Ray.

    read_binary_files / read_parquet   through the source's pyarrow filesystem (S3 with the AWS
                                       chain's endpoint and keys, or the local disk); the training
                                       files in a fresh seeded order every epoch
    map_batches(Decoder)               decode, convert the colour, resize: uint8 rows
                                       (image (C, S, S), label, bad)
    Ray Train                          a streaming split per worker (ray.train.DataConfig), each
                                       iterated with files.ShardBatches (iter_torch_batches)

Nothing is materialized: Ray Data streams with backpressure, so a set bigger than the object
store trains in bounded memory. Each epoch is one execution of the datasets.
"""

from __future__ import annotations

from dataclasses import dataclass

import ray.data
import ray.train
from ray.data import FileShuffleConfig

from genray.data import files
from genray.data.images import DataConfig

# Files (or Parquet rows) per call of the decoder: a task holds at most this many decoded
# images at once (64 x 256 x 256 x 3 bytes = 12 MiB at the largest size).
DECODE_BATCH = 64


@dataclass
class Streams:
    """The datasets of one run, by the name each worker asks Ray Train for its shard of."""

    datasets: dict[str, ray.data.Dataset]
    train_rows: int  # training rows (Parquet: estimated from the files' row counts and val_fraction)

    def data_config(self) -> ray.train.DataConfig:
        """Every worker gets an equal share of both splits: the same number of training steps
        (DDP needs it) and a part of the validation set (its sums are all-reduced). Equal shares
        leave out a split's last rows each epoch, fewer than the workers."""
        return ray.train.DataConfig(datasets_to_split=list(self.datasets))


def streams_for(cfg: DataConfig, seed: int) -> Streams | None:
    """The train and val Datasets of a file source (None for the in-memory sets). `seed`
    (train.seed) seeds the order of the training files, a new one each epoch."""
    source = files.find_source(cfg)
    if source is None:
        return None
    cfg = files.resolve_source(source, cfg)
    decoder = files.Decoder.of(source, cfg)
    fs = source.filesystem()
    # reseed_after_execution: each execution (an epoch) draws a new order from (seed, its index).
    shuffle = FileShuffleConfig(seed=seed, reseed_after_execution=True)
    if source.kind == "images":
        train_names, val_names = files.split_names(source, cfg)

        def read_files(names: list[str], order: FileShuffleConfig | None) -> ray.data.Dataset:
            return (ray.data.read_binary_files(source.arrow_paths(names), include_paths=True, filesystem=fs,
                                               shuffle=order)
                    .map_batches(decoder.files, batch_size=DECODE_BATCH, batch_format="numpy"))

        return Streams({"train": read_files(train_names, shuffle), "val": read_files(val_names, None)},
                       len(train_names))

    columns = files.parquet_columns(source, cfg)

    def read_rows(split: str, order: FileShuffleConfig | None) -> ray.data.Dataset:
        # The split is decided row by row (a hash of the image bytes), so both read every file.
        return (ray.data.read_parquet(source.arrow_paths(), columns=columns, include_paths=True, filesystem=fs,
                                      shuffle=order, partitioning=None)
                .map_batches(decoder.parquet, fn_kwargs={"split": split}, batch_size=DECODE_BATCH,
                             batch_format="numpy"))

    import pyarrow.dataset as pads

    total = pads.dataset(source.arrow_paths(), filesystem=fs, format="parquet").count_rows()
    train, train_rows = read_rows("train", shuffle), round(total * (1.0 - cfg.val_fraction))
    if cfg.limit is not None:
        train, train_rows = train.limit(cfg.limit), min(cfg.limit, train_rows)
    return Streams({"train": train, "val": read_rows("val", None)}, max(1, train_rows))
