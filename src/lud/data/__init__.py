"""Data sets, loaders and batch transforms for ``lud``.

Typical use::

    bundle = build_data("cifar100", val_split=0.1, seed=0)
    loader = make_loader(bundle.train, 64, shuffle=True, drop_last=True, seed=0)
    transform = make_batch_transform(bundle, train=True).to(device)
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        for images, labels in loader:             # uint8 B×C×H×W on the CPU
            x = transform(images.to(device))      # float32, augmented and normalised on device

Nothing is downloaded; missing files raise ``FileNotFoundError`` saying where they were expected.
"""

from .augment import AUGMENTATIONS, BatchTransform, make_batch_transform
from .build import available_datasets, build_data
from .bundle import ArrayDataset, DataBundle, stratified_split
from .cifar import write_cifar_like
from .idx import read_idx, write_idx
from .imagefolder import ImageFileDataset
from .loader import BatchLoader, epoch_indices, make_loader
from .synthetic import synthetic_arrays

__all__ = [
    "AUGMENTATIONS",
    "ArrayDataset",
    "BatchLoader",
    "BatchTransform",
    "DataBundle",
    "ImageFileDataset",
    "available_datasets",
    "build_data",
    "epoch_indices",
    "make_batch_transform",
    "make_loader",
    "read_idx",
    "stratified_split",
    "synthetic_arrays",
    "write_cifar_like",
    "write_idx",
]
