"""``fashion_pairs``: a 100-class real-image data set built offline from Fashion-MNIST.

Why: the category-level terms of LUD rank rows of a C×C class Gram matrix; with 10 classes there
is almost nothing to rank. CIFAR-100 cannot be had on this machine, so this set gives 100 classes
whose relations are real and structured: class ``10·a + b`` shows garment class ``a`` on the left
and ``b`` on the right (one channel, 28×56), and classes that share a garment are near each other,
as CIFAR-100's fine classes share a superclass.

How (deterministic; every draw comes from ``numpy.random.default_rng`` seeded as stated):

1. Source pools. Test pairs use only Fashion-MNIST *test* images; train and validation pairs use
   only *train* images. With ``val_split > 0`` the source train images are first split (stratified
   by garment, seeded by ``seed``, the run's seed as for every other data set) into a train pool
   and a validation pool, and pairs are formed *within* each pool — so no validation image ever
   appears in a training pair (pairing after a carve-out would leak: a validation pair would share
   both garments' exact images with training pairs).
2. Pairs. For each class ``(a, b)``, ``n`` distinct ordered pairs ``(left, right)`` are drawn
   uniformly without replacement from all combinations of an image of class ``a`` and an image of
   class ``b`` in the pool (for ``a == b`` the two images differ). Images are therefore reused
   across pairs (6,000 source images per garment make millions of combinations) but no pair occurs
   twice in a split. Train pairs are drawn with ``pair_seed + 1``, validation pairs with
   ``pair_seed + 2``, test pairs with ``pair_seed`` (the test set never depends on the run seed).
3. Balance: every class gets exactly ``train_per_class`` training pairs before the validation
   carve-out (``round(val_split · train_per_class)`` of them come from the validation pool instead),
   and ``test_per_class`` test pairs.
"""

from __future__ import annotations

import os

import numpy as np
import torch

from .bundle import ArraySplits
from .idx import FASHION_MNIST_CLASSES, load_idx_dataset

__all__ = [
    "PAIR_DEFAULTS",
    "PAIR_OPTIONS",
    "fashion_pair_names",
    "load_fashion_pairs",
    "make_pairs",
]

# Provisional sizes (30,000 train / 10,000 test pairs). Measured so far, 200 pairs per class, each
# model alone, SGD 0.05 Nesterov cosine, batch 128, 2-core CPU under load (2026-11-29): cnn_large
# 56.9 % → 68.1 % test after epochs 1 → 2 (still climbing; 542 s), mlp_tiny 66.3 % after 3 epochs
# (12 s), cnn_small 9.0 % after 1 epoch (181 s). That a longer-trained teacher clears 80 % at these
# sizes is still to be measured (a 10-class Fashion-MNIST classifier at ≈ 90 % on each half would
# give ≈ 81 %).
PAIR_DEFAULTS = {"train_per_class": 300, "test_per_class": 100, "pair_seed": 0}
PAIR_OPTIONS = tuple(PAIR_DEFAULTS)


def fashion_pair_names() -> list[str]:
    """Class names ``"<left>|<right>"`` in label order ``10·left + right``."""
    return [f"{a}|{b}" for a in FASHION_MNIST_CLASSES for b in FASHION_MNIST_CLASSES]


def _check_count(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"fashion_pairs: {name} must be a positive integer, got {value!r}")
    return int(value)


def make_pairs(
    images: torch.Tensor, labels: np.ndarray, per_class: int, seed: int, split: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """``per_class`` distinct pairs for each of the 100 classes from one source pool.

    Args:
        images: uint8 ``N×1×28×28`` source images; ``labels`` their garment classes 0..9.
        per_class: pairs per class; must not exceed the distinct combinations available.
        seed: seeds the draw. ``split`` only names the pool in error messages.

    Returns:
        uint8 ``(100·per_class)×1×28×56`` images and int64 labels ``10·left + right``, class-major.
    """
    rng = np.random.default_rng(seed)
    members = [np.flatnonzero(labels == k) for k in range(10)]
    lefts, rights = [], []
    for a in range(10):
        for b in range(10):
            na, nb = len(members[a]), len(members[b])
            combos = na * (nb - 1) if a == b else na * nb
            if per_class > combos:
                raise ValueError(
                    f"fashion_pairs: {per_class} {split} pairs per class cannot be met for class "
                    f"{10 * a + b} ({FASHION_MNIST_CLASSES[a]}|{FASHION_MNIST_CLASSES[b]}): the "
                    f"{split} pool has {na} and {nb} images of these garments, {combos} distinct "
                    "pairs"
                )
            flat = rng.choice(combos, size=per_class, replace=False)
            width = nb - 1 if a == b else nb
            i, j = flat // width, flat % width
            if a == b:  # skip the diagonal: the right image differs from the left one
                j = j + (j >= i)
            lefts.append(members[a][i])
            rights.append(members[b][j])
    left, right = np.concatenate(lefts), np.concatenate(rights)
    pairs = torch.cat([images[torch.from_numpy(left)], images[torch.from_numpy(right)]], dim=3)
    y = torch.from_numpy((10 * labels[left] + labels[right]).astype(np.int64))
    return pairs.contiguous(), y


def load_fashion_pairs(
    root: str | os.PathLike[str] | None = None,
    *,
    train_per_class: int = PAIR_DEFAULTS["train_per_class"],
    test_per_class: int = PAIR_DEFAULTS["test_per_class"],
    pair_seed: int = PAIR_DEFAULTS["pair_seed"],
    val_split: float = 0.0,
    seed: int = 0,
) -> ArraySplits:
    """Build the 100-class pairs (see the module docstring); val pairs in ``ArraySplits.val_*``.

    Raises:
        FileNotFoundError: the Fashion-MNIST IDX files are missing (the message names the folders
            searched and ``apt-get install dataset-fashion-mnist``).
        ValueError: non-positive sizes, a bad seed, or more pairs per class than a pool allows.
    """
    train_per_class = _check_count("train_per_class", train_per_class)
    test_per_class = _check_count("test_per_class", test_per_class)
    if isinstance(pair_seed, bool) or not isinstance(pair_seed, (int, np.integer)) or pair_seed < 0:
        raise ValueError(f"fashion_pairs: pair_seed must be an integer >= 0, got {pair_seed!r}")
    n_val = round(val_split * train_per_class)
    if val_split > 0 and not 1 <= n_val < train_per_class:
        raise ValueError(
            f"fashion_pairs: val_split={val_split} of {train_per_class} pairs per class gives "
            f"{n_val} validation pairs per class; need between 1 and {train_per_class - 1}"
        )
    src = load_idx_dataset("fashion_mnist", root)
    train_y = src.train_labels.numpy()
    val_images = val_labels = None
    if n_val:
        from .bundle import stratified_split

        keep, held = stratified_split(train_y, round(val_split * len(train_y)), seed)
        val_images, val_labels = make_pairs(
            src.train_images[torch.from_numpy(held)], train_y[held], n_val, pair_seed + 2,
            "validation",
        )
        pool_x, pool_y = src.train_images[torch.from_numpy(keep)], train_y[keep]
    else:
        pool_x, pool_y = src.train_images, train_y
    x_train, y_train = make_pairs(
        pool_x, pool_y, train_per_class - n_val, pair_seed + 1, "train"
    )
    x_test, y_test = make_pairs(
        src.test_images, src.test_labels.numpy(), test_per_class, pair_seed, "test"
    )
    return ArraySplits(
        x_train, y_train, x_test, y_test, 100, fashion_pair_names(),
        val_images=val_images, val_labels=val_labels,
    )  # fmt: skip
