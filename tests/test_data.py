import gzip
import struct

import numpy as np
import pytest
import torch

from genray.data import DataConfig, DataError, load_images
from genray.data.images import read_idx, read_mnist


def test_digits_are_mnist_shaped_and_split_deterministically():
    train, val = load_images(DataConfig())
    x, y = train.tensors
    assert x.shape[1:] == (1, 28, 28) and x.dtype == torch.float32
    assert 0.0 <= x.min() and x.max() <= 1.0
    assert len(train) + len(val) == 1797
    assert set(y.tolist()) == set(range(10))
    # The MNIST layout: a 4-pixel empty border around a 20x20 digit box.
    assert x[:, :, :4].abs().sum() == 0 and x[:, :, :, -4:].abs().sum() == 0
    again, val2 = load_images(DataConfig())
    assert torch.equal(val.tensors[0], val2.tensors[0])
    _, other = load_images(DataConfig(split_seed=1))
    assert not torch.equal(val.tensors[1], other.tensors[1])


def test_the_digits_are_scikit_learns_read_without_importing_it():
    """digits_28x28 reads scikit-learn's data file itself (importing scikit-learn costs ~3 s in
    every worker): the same images and labels as sklearn.datasets.load_digits, resized to 28x28."""
    import subprocess
    import sys

    import torch.nn.functional as F
    from sklearn.datasets import load_digits

    from genray.data.images import digits_28x28

    images, labels = digits_28x28()
    bunch = load_digits()
    expected = torch.from_numpy(bunch.images.astype(np.float32) / 16.0).unsqueeze(1)
    expected = F.pad(F.interpolate(expected, size=(20, 20), mode="bilinear", align_corners=False), (4, 4, 4, 4))
    assert torch.equal(images, expected.clamp(0.0, 1.0)) and torch.equal(labels, torch.from_numpy(bunch.target))
    loaded = subprocess.run([sys.executable, "-c", "import sys; from genray.data.images import digits_28x28; "
                             "digits_28x28(); print('sklearn' in sys.modules)"], capture_output=True, text=True)
    assert loaded.stdout.strip() == "False", loaded.stderr


def test_limit_caps_training_images():
    train, _ = load_images(DataConfig(limit=50))
    assert len(train) == 50


def write_idx(path, array: np.ndarray, code: int = 0x08, compress: bool = False):
    header = struct.pack(">HBB", 0, code, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    raw = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw) if compress else raw)


@pytest.mark.parametrize("compress", [False, True])
def test_mnist_idx_folder_raw_and_gz(tmp_path, compress):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(20, 28, 28))
    labels = rng.integers(0, 10, size=20)
    suffix = ".gz" if compress else ""
    write_idx(tmp_path / f"train-images-idx3-ubyte{suffix}", images, compress=compress)
    write_idx(tmp_path / f"train-labels-idx1-ubyte{suffix}", labels, compress=compress)
    x, y = read_mnist(tmp_path)
    assert x.shape == (20, 1, 28, 28)
    assert torch.allclose(x[3, 0], torch.from_numpy(images[3] / 255.0).float())
    assert y.tolist() == labels.tolist()
    train, val = load_images(DataConfig(source=str(tmp_path), val_fraction=0.25))
    assert (len(train), len(val)) == (15, 5)


def test_mnist_errors_are_clear(tmp_path):
    with pytest.raises(DataError, match="MNIST folder not found"):
        read_mnist(tmp_path / "nowhere")
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte\[\.gz\] not found"):
        read_mnist(tmp_path)
    bad = tmp_path / "bad"
    bad.write_bytes(b"\x12\x34\x08\x03rest")
    with pytest.raises(DataError, match="not an IDX file"):
        read_idx(bad)
    short = tmp_path / "short"
    write_idx(short, np.zeros((4, 28, 28)))
    short.write_bytes(short.read_bytes()[:-10])
    with pytest.raises(DataError, match="header says shape"):
        read_idx(short)
    notgz = tmp_path / "x.gz"
    notgz.write_bytes(b"plain")
    with pytest.raises(DataError, match="not a valid gzip"):
        read_idx(notgz)
    write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((3, 28, 28)))
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(4))
    with pytest.raises(DataError, match="3 images but labels"):
        read_mnist(tmp_path)
