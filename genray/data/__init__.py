"""Datasets: plain torch, no Ray. Every loader returns (train, val) TensorDatasets."""

from genray.data.images import DataConfig, DataError, load_images

__all__ = ["DataConfig", "DataError", "load_images"]
