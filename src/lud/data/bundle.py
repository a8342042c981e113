"""The containers every data set is returned in, and the split helpers they share.

* :class:`DataBundle` — what :func:`lud.data.build_data` returns: the splits plus what a model
  and a trainer need to know about them (class count, input shape, normalisation, augmentation).
* :class:`ArrayDataset` — an in-memory data set: ``uint8`` images ``N×C×H×W``, ``int64`` labels.
  Small data and CIFAR live like this so that a loader can cut batches by index slicing instead of
  collating one item at a time (see :mod:`lud.data.loader`).
* :func:`stratified_split` — a seeded, stratified hold-out used for validation sets, fixed test
  splits and training subsets.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

__all__ = [
    "ArrayDataset",
    "ArraySplits",
    "DataBundle",
    "dataset_labels",
    "default_roots",
    "missing_data_error",
    "nearest_first",
    "select",
    "stratified_split",
]


@dataclass
class DataBundle:
    """A data set ready for training.

    Attributes:
        name: registry name (``"cifar100"``, ``"fashion_mnist"``, ...).
        num_classes: number of classes; labels are ``0 .. num_classes - 1``.
        input_shape: ``(C, H, W)`` of one model input.
        train: training split (never contains test samples; the validation part is removed).
        val: validation split carved out of the training files, or ``None``.
        test: the data set's official test split (ImageNet/Tiny-ImageNet: the labelled val split).
        mean, std: per-channel normalisation statistics on the ``[0, 1]`` pixel scale.
        augment: train-time augmentation kind understood by
            :class:`lud.data.augment.BatchTransform` (``"cifar"``, ``"mnist"``, ``"fashion"``,
            ``"tiny"``, ``"imagenet"`` or ``"none"``).
        class_names: human-readable class names when the files provide them.
    """

    name: str
    num_classes: int
    input_shape: tuple[int, int, int]
    train: Dataset
    val: Dataset | None
    test: Dataset
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: str
    class_names: list[str] | None = None


class ArrayDataset(Dataset):
    """In-memory images (``uint8``, ``N×C×H×W``) with ``int64`` labels.

    Items are ``(image, label)`` with ``image`` a ``C×H×W`` uint8 tensor and ``label`` a 0-d
    int64 tensor, so a generic ``DataLoader`` also works; :func:`lud.data.make_loader` slices
    whole batches instead.
    """

    def __init__(self, images: Tensor, labels: Tensor) -> None:
        if not isinstance(images, Tensor) or images.dtype != torch.uint8 or images.dim() != 4:
            got = (
                f"{images.dtype} tensor of shape {tuple(images.shape)}"
                if isinstance(images, Tensor)
                else type(images).__name__
            )
            raise ValueError(f"ArrayDataset images must be a uint8 N×C×H×W tensor, got {got}")
        labels = torch.as_tensor(labels)
        if labels.dim() != 1 or labels.dtype.is_floating_point or labels.dtype == torch.bool:
            raise ValueError(
                f"ArrayDataset labels must be a 1-d integer tensor, got {labels.dtype} "
                f"of shape {tuple(labels.shape)}"
            )
        if labels.shape[0] != images.shape[0]:
            raise ValueError(
                f"label count mismatch: {images.shape[0]} images but {labels.shape[0]} labels"
            )
        if labels.numel() and int(labels.min()) < 0:
            raise ValueError(f"labels must be >= 0, found {int(labels.min())}")
        self.images = images.contiguous()
        self.labels = labels.to(torch.int64).contiguous()

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __repr__(self) -> str:
        return f"ArrayDataset(n={len(self)}, image_shape={tuple(self.images.shape[1:])})"

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        return self.images[index], self.labels[index]

    @property
    def targets(self) -> list[int]:
        """Labels as a Python list (the attribute name torchvision data sets use)."""
        return self.labels.tolist()

    def select(
        self, indices: Sequence[int] | np.ndarray | Tensor, train: bool = True
    ) -> ArrayDataset:
        """A new data set holding copies of the given rows (``train`` is ignored: no per-item
        augmentation lives here)."""
        idx = torch.as_tensor(np.asarray(indices, dtype=np.int64))
        return ArrayDataset(self.images.index_select(0, idx), self.labels.index_select(0, idx))


@dataclass
class ArraySplits:
    """What an in-memory loader reads from disk, before splitting and normalisation.

    ``mean``/``std`` are given for data sets with published constants (CIFAR) and left ``None``
    to have :func:`lud.data.build_data` measure them on the full training split.
    ``val_images``/``val_labels`` are set by readers that build their own leak-free validation
    split (``fashion_pairs``); :func:`lud.data.build_data` then uses it instead of a carve-out.
    """

    train_images: Tensor
    train_labels: Tensor
    test_images: Tensor
    test_labels: Tensor
    num_classes: int
    class_names: list[str] | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    val_images: Tensor | None = None
    val_labels: Tensor | None = None


def dataset_labels(dataset: Dataset) -> np.ndarray:
    """All labels of a data set as an int64 array, without decoding any image."""
    if isinstance(dataset, ArrayDataset):
        return dataset.labels.numpy()
    targets = getattr(dataset, "targets", None)
    if targets is None:
        raise ValueError(
            f"{type(dataset).__name__} exposes no labels "
            "(needs an ArrayDataset or a .targets attribute)"
        )
    return np.asarray(targets, dtype=np.int64)


def select(dataset: Dataset, indices: np.ndarray, *, train: bool) -> Dataset:
    """Subset ``dataset`` to ``indices``; ``train`` picks per-item augmentation for file data."""
    if not hasattr(dataset, "select"):
        raise ValueError(f"{type(dataset).__name__} does not support splitting (no .select method)")
    return dataset.select(indices, train=train)  # type: ignore[attr-defined]


def stratified_split(
    labels: np.ndarray | Sequence[int], n_holdout: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded stratified split into ``(keep, holdout)`` index arrays, both sorted ascending.

    Class ``k`` with ``n_k`` of ``N`` samples contributes ``floor(n_k · n_holdout / N)`` samples to
    the hold-out, and the ``n_holdout − Σ floor`` leftover places go to the classes with the
    largest remainders (ties broken by the seed) — so the total is exact and every class is within
    one sample of proportional. Integer arithmetic keeps this independent of float rounding.
    """
    y = np.asarray(labels, dtype=np.int64)
    n = int(y.shape[0])
    if not 0 <= n_holdout <= n:
        raise ValueError(f"cannot hold out {n_holdout} of {n} samples")
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(y, return_counts=True)
    take = counts * n_holdout // max(n, 1)
    remainder = counts * n_holdout % max(n, 1)
    leftover = n_holdout - int(take.sum())
    # lexsort: last key is primary -> largest remainder first, random tie-break second.
    order = np.lexsort((rng.random(len(classes)), -remainder))
    take[order[:leftover]] += 1
    held = []
    for cls, k in zip(classes, take):
        members = np.flatnonzero(y == cls)
        held.append(members[rng.permutation(members.shape[0])[:k]])
    holdout = np.sort(np.concatenate(held)) if held else np.zeros(0, dtype=np.int64)
    keep = np.setdiff1d(np.arange(n), holdout, assume_unique=True)
    return keep.astype(np.int64), holdout.astype(np.int64)


def default_roots(name: str, root: str | os.PathLike[str] | None) -> list[Path]:
    """Where to look for data set ``name``: ``root`` if given, else ``$LUD_DATA/<name>`` (when the
    variable is set) or ``./data/<name>``."""
    if root is not None:
        return [Path(root).expanduser()]
    base = os.environ.get("LUD_DATA")
    return [Path(base).expanduser() / name] if base else [Path("data") / name]


def missing_data_error(
    name: str, searched: Sequence[Path], expected: str, how: str
) -> FileNotFoundError:
    """A FileNotFoundError that says what was looked for, where, and how to obtain it."""
    where = "\n".join(f"  - {p.resolve() if not p.is_absolute() else p}" for p in searched)
    return FileNotFoundError(
        f"data set '{name}' not found. Searched:\n{where}\nExpected: {expected}\n"
        f"How to get it: {how}\n"
        "(lud never downloads data; pass root=... or set $LUD_DATA.)"
    )


def nearest_first(name: str, valid: Sequence[str]) -> list[str]:
    """``valid`` ordered by similarity to ``name`` (most similar first, then alphabetical)."""
    return sorted(valid, key=lambda v: (-difflib.SequenceMatcher(None, name, v).ratio(), v))
