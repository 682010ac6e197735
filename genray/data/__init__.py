"""Datasets: plain torch, no Ray (but genray.data.pipeline, the Ray Data datasets of file sources).
Every loader returns (train, val) TensorDatasets."""

from genray.data.images import DataConfig, DataError, ImageSpec, load_images, resolve

__all__ = ["DataConfig", "DataError", "ImageSpec", "load_images", "resolve"]
