"""``build_data(name, ...)``: one entry point for every data set, by name.

In-memory data sets (CIFAR, (Fashion-)MNIST, digits, mnist5k, synthetic) become
:class:`~lud.data.bundle.ArrayDataset` splits; ImageNet-type trees become
:class:`~lud.data.imagefolder.ImageFileDataset` splits decoded per item.

Normalisation: CIFAR uses the published constants; ImageNet, ImageFolder and Tiny-ImageNet use the
ImageNet constants; every other in-memory set has its per-channel mean/std measured on its full
training split at build time (after any resize, before the validation carve-out and subsetting, so
they do not change with ``val_split`` or ``subset``). For the Debian Fashion-MNIST this gives
mean 0.2860, std 0.3530.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np
import torch
from torch.nn import functional as F

from .augment import AUGMENTATIONS
from .bundle import (
    ArrayDataset,
    ArraySplits,
    DataBundle,
    dataset_labels,
    nearest_first,
    select,
    stratified_split,
)
from .cifar import load_cifar
from .fashion_pairs import PAIR_OPTIONS, load_fashion_pairs
from .idx import load_idx_dataset
from .imagefolder import load_image_folder, load_tiny_imagenet
from .small import load_digits_data, load_mnist5k
from .synthetic import build_synthetic

__all__ = ["DATA_OPTIONS", "IMAGENET_MEAN", "IMAGENET_STD", "available_datasets", "build_data"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# name -> (reader(root, image_size, **options) -> ArraySplits, default augmentation)
_ARRAY: dict[str, tuple[Callable[..., ArraySplits], str]] = {
    "cifar100": (lambda root, size: load_cifar(100, root), "cifar"),
    "cifar10": (lambda root, size: load_cifar(10, root), "cifar"),
    "fashion_mnist": (lambda root, size: load_idx_dataset("fashion_mnist", root), "fashion"),
    "mnist": (lambda root, size: load_idx_dataset("mnist", root), "mnist"),
    "digits": (lambda root, size: load_digits_data(), "none"),  # 8×8: a 2-pixel shift is 25 %
    "mnist5k": (lambda root, size: load_mnist5k(), "mnist"),
    "synthetic": (lambda root, size: build_synthetic(size), "cifar"),
    # "none": a flip or shift would move a garment across the seam between the two halves.
    "fashion_pairs": (lambda root, size, **opts: load_fashion_pairs(root, **opts), "none"),
}
# Data sets that take build-time options (``data.options`` in a config), and which.
DATA_OPTIONS: dict[str, tuple[str, ...]] = {"fashion_pairs": PAIR_OPTIONS}
# Data sets whose reader builds the validation split itself (from separate source images).
_OWN_VAL = {"fashion_pairs"}
# name -> (default image size, default augmentation)
_FILES: dict[str, tuple[int, str]] = {
    "imagenet": (224, "imagenet"),
    "imagefolder": (224, "imagenet"),
    "tiny_imagenet": (64, "tiny"),
}


def available_datasets() -> list[str]:
    """Names accepted by :func:`build_data`."""
    return sorted([*_ARRAY, *_FILES])


def _resize(images: torch.Tensor, size: int, chunk: int = 1024) -> torch.Tensor:
    """Bilinear (antialiased when shrinking) resize of uint8 images, in chunks to bound memory."""
    if images.shape[-2:] == (size, size):
        return images
    out = torch.empty((images.shape[0], images.shape[1], size, size), dtype=torch.uint8)
    for s in range(0, images.shape[0], chunk):
        part = images[s : s + chunk].to(torch.float32)
        part = F.interpolate(
            part, size=(size, size), mode="bilinear", align_corners=False, antialias=True
        )
        out[s : s + chunk] = part.round_().clamp_(0, 255).to(torch.uint8)
    return out


def _channel_stats(
    images: torch.Tensor, chunk: int = 4096
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (population) std of uint8 images on the [0, 1] scale.

    Accumulates Σx and Σx² in float64 chunk by chunk (a float64 copy of all of Fashion-MNIST
    would take 376 MB); with values in [0, 1] the ``E[x²] − E[x]²`` cancellation costs nothing
    measurable at float64 precision.
    """
    c = images.shape[1]
    total = torch.zeros(c, dtype=torch.float64)
    total_sq = torch.zeros(c, dtype=torch.float64)
    for s in range(0, images.shape[0], chunk):
        part = images[s : s + chunk].transpose(0, 1).reshape(c, -1).to(torch.float64) / 255.0
        total += part.sum(dim=1)
        total_sq += (part * part).sum(dim=1)
    count = images.numel() // c
    mean = total / count
    std = (total_sq / count - mean * mean).clamp_min(0.0).sqrt()
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


def _check_args(val_split: float, subset: int | None, image_size: int | None) -> None:
    if not (isinstance(val_split, (int, float)) and 0.0 <= float(val_split) < 1.0):
        raise ValueError(f"val_split must be a fraction in [0, 1), got {val_split!r}")
    if subset is not None and (
        isinstance(subset, bool) or not isinstance(subset, int) or subset < 1
    ):
        raise ValueError(f"subset must be a positive integer or None, got {subset!r}")
    if image_size is not None and (not isinstance(image_size, int) or image_size < 1):
        raise ValueError(f"image_size must be a positive integer or None, got {image_size!r}")


def build_data(
    name: str,
    root: str | os.PathLike[str] | None = None,
    *,
    val_split: float = 0.0,
    seed: int = 0,
    subset: int | None = None,
    augment: str = "default",
    image_size: int | None = None,
    options: dict | None = None,
) -> DataBundle:
    """Load data set ``name`` from local files (nothing is ever downloaded).

    Args:
        name: one of :func:`available_datasets` (case and ``-``/``_`` are normalised).
        root: where the files are; default ``$LUD_DATA/<name>`` if set, else ``./data/<name>``
            (Fashion-MNIST also tries ``$LUD_DATA/fashion_mnist`` and Debian's
            ``/usr/share/datasets/fashion-mnist``).
        val_split: fraction of the training split held out as a stratified validation set, drawn
            with ``seed``. The test split is never touched.
        seed: seed for the validation carve-out and the subset.
        subset: keep only this many training samples (stratified, seeded, original order kept);
            a value at least the training size keeps everything.
        augment: ``"default"`` (the data set's usual policy) or a kind from
            :data:`lud.data.augment.AUGMENTATIONS`. ``"imagenet"`` needs file-based data.
        image_size: output side length. File data: crop/resize target (default 224, Tiny-ImageNet
            64). In-memory data: resized once at build time (bilinear), default native size.
        options: build-time options of data sets listed in :data:`DATA_OPTIONS`
            (``fashion_pairs``: ``train_per_class``, ``test_per_class``, ``pair_seed``).

    Raises:
        ValueError: unknown name (valid names listed, nearest first) or bad arguments/files.
        FileNotFoundError: the files are missing; the message lists where they were expected.
    """
    key = str(name).strip().lower().replace("-", "_")
    valid = available_datasets()
    if key not in valid:
        raise ValueError(
            f"unknown data set {name!r}; valid names (nearest first): "
            f"{', '.join(nearest_first(key, valid))}"
        )
    _check_args(val_split, subset, image_size)
    options = dict(options or {})
    unknown = sorted(set(options) - set(DATA_OPTIONS.get(key, ())))
    if unknown:
        allowed = ", ".join(DATA_OPTIONS.get(key, ())) or "none"
        raise ValueError(f"data set {key!r} got unknown options {unknown}; allowed: {allowed}")
    default_aug = _ARRAY[key][1] if key in _ARRAY else _FILES[key][1]
    aug = default_aug if augment == "default" else augment
    if aug not in AUGMENTATIONS:
        raise ValueError(f"unknown augment {augment!r}; valid: default, {', '.join(AUGMENTATIONS)}")

    if key in _ARRAY:
        if aug == "imagenet":
            raise ValueError(
                "augment 'imagenet' (per-image RandomResizedCrop) needs file-based data; for "
                f"{key!r} use one of {', '.join(a for a in AUGMENTATIONS if a != 'imagenet')}"
            )
        if key in _OWN_VAL:
            options.update(val_split=val_split, seed=seed)
        splits = _ARRAY[key][0](root, image_size, **options)
        x_train, x_test = splits.train_images, splits.test_images
        if image_size is not None:
            x_train, x_test = _resize(x_train, image_size), _resize(x_test, image_size)
        if splits.mean is not None and splits.std is not None:
            mean, std = splits.mean, splits.std
        else:
            mean, std = _channel_stats(x_train)
        train = ArrayDataset(x_train, splits.train_labels)
        test = ArrayDataset(x_test, splits.test_labels)
        num_classes, names = splits.num_classes, splits.class_names
        input_shape = tuple(int(v) for v in x_train.shape[1:])
    else:
        size = image_size or _FILES[key][0]
        loader = (
            load_tiny_imagenet
            if key == "tiny_imagenet"
            else (lambda r, s, c: load_image_folder(key, r, s, c))
        )
        train, test, names = loader(root, size, aug == "imagenet")
        num_classes, mean, std = len(names), IMAGENET_MEAN, IMAGENET_STD
        input_shape = (3, size, size)

    val = None
    if key in _OWN_VAL and val_split > 0:
        assert splits.val_images is not None and splits.val_labels is not None
        x_val = splits.val_images
        if image_size is not None:
            x_val = _resize(x_val, image_size)
        val = ArrayDataset(x_val, splits.val_labels)
    elif val_split > 0:
        labels = dataset_labels(train)
        n_val = max(1, round(val_split * len(labels)))
        if n_val >= len(labels):
            raise ValueError(
                f"val_split={val_split} leaves no training data out of {len(labels)} samples"
            )
        keep, held = stratified_split(labels, n_val, seed)
        train, val = select(train, keep, train=True), select(train, held, train=False)
    if subset is not None and subset < len(train):  # type: ignore[arg-type]
        # Distinct stream from the validation draw, so the subset is not correlated with it.
        _, kept = stratified_split(dataset_labels(train), subset, seed + 1_000_003)
        train = select(train, np.sort(kept), train=True)

    return DataBundle(
        name=key,
        num_classes=int(num_classes),
        input_shape=input_shape,  # type: ignore[arg-type]
        train=train,
        val=val,
        test=test,
        mean=tuple(mean),
        std=tuple(std),
        augment=aug,
        class_names=list(names) if names is not None else None,
    )
