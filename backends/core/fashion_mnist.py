"""Fashion-MNIST from Debian's `dataset-fashion-mnist` package (offline, no download)."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np

CLASS_NAMES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


def fashion_mnist_dir() -> Path:
    """Where the idx files lie (``HEADLAB_FMNIST_DIR`` overrides the Debian location)."""
    return Path(os.environ.get("HEADLAB_FMNIST_DIR", "/usr/share/datasets/fashion-mnist"))


def load_fashion_mnist(split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """Images as uint8 [N, 28, 28] and labels as int64 [N] for ``split`` in {'train', 'test'}."""
    if split not in _FILES:
        raise ValueError(f"split must be 'train' or 'test', not {split!r}")
    folder = fashion_mnist_dir()
    images_file, labels_file = (folder / name for name in _FILES[split])
    if not images_file.exists():
        raise FileNotFoundError(
            f"Fashion-MNIST not found in {folder}: run `apt-get install dataset-fashion-mnist`"
        )
    with gzip.open(images_file, "rb") as f:
        images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)
    with gzip.open(labels_file, "rb") as f:
        labels = np.frombuffer(f.read(), np.uint8, offset=8).astype(np.int64)
    return images, labels
