"""CIFAR-10 / CIFAR-100 from the official "python version" pickle archives.

Layouts read (``<dir>`` is ``root`` itself or ``root/cifar-100-python`` /
``root/cifar-10-batches-py``, i.e. what ``tar xzf`` of the official archive produces)::

    <dir>/train, <dir>/test, <dir>/meta                       CIFAR-100  (b"data", b"fine_labels")
    <dir>/data_batch_1..5, <dir>/test_batch, <dir>/batches.meta   CIFAR-10  (b"data", b"labels")

``b"data"`` is an ``N×3072`` uint8 array: 1,024 red, then green, then blue values of a row-major
32×32 image. The pickles are read with an unpickler that only admits numpy array reconstruction,
so a tampered file cannot run code. :func:`write_cifar_like` writes tiny files in the same format
for tests and demos.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .bundle import ArraySplits, default_roots, missing_data_error
from .synthetic import synthetic_arrays

__all__ = [
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "CIFAR100_MEAN",
    "CIFAR100_STD",
    "load_cifar",
    "write_cifar_like",
]

# CIFAR-100 constants as in the standard (mdistiller) recipe.
CIFAR100_MEAN = (0.5071, 0.4867, 0.4408)
CIFAR100_STD = (0.2675, 0.2565, 0.2761)
# CIFAR-10 per-channel pixel mean/std over the 50k training images.
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)

_SPECS: dict[int, dict[str, Any]] = {
    100: {
        "name": "cifar100",
        "subdir": "cifar-100-python",
        "train": ["train"],
        "test": "test",
        "meta": "meta",
        "label_key": b"fine_labels",
        "names_key": b"fine_label_names",
        "archive": "cifar-100-python.tar.gz "
        "(https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz)",
    },
    10: {
        "name": "cifar10",
        "subdir": "cifar-10-batches-py",
        "train": [f"data_batch_{i}" for i in range(1, 6)],
        "test": "test_batch",
        "meta": "batches.meta",
        "label_key": b"labels",
        "names_key": b"label_names",
        "archive": "cifar-10-python.tar.gz "
        "(https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz)",
    },
}

# (module, name) pairs a CIFAR pickle legitimately needs: numpy array/dtype reconstruction, and
# _codecs.encode, which protocol-2 pickles written by Python 3 use for bytes.
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def _read_pickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            obj = _NumpyOnlyUnpickler(f, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as err:
        raise ValueError(f"{path}: not a CIFAR python pickle ({err})") from err
    if not isinstance(obj, dict):
        # A file-content problem, not a caller type error: ValueError like every other bad file.
        got = type(obj).__name__
        raise ValueError(f"{path}: expected a pickled dict, got {got}")  # noqa: TRY004
    return obj


def _read_batch(path: Path, label_key: bytes, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    d = _read_pickle(path)
    missing = [k.decode() for k in (b"data", label_key) if k not in d]
    if missing:
        found = ", ".join(repr(k) for k in d)
        raise ValueError(f"{path}: missing key(s) {missing}; found {found}")
    data = d[b"data"]
    if (
        not isinstance(data, np.ndarray)
        or data.dtype != np.uint8
        or data.ndim != 2
        or data.shape[1] != 3072
    ):
        desc = (
            f"{data.dtype} array of shape {data.shape}"
            if isinstance(data, np.ndarray)
            else type(data).__name__
        )
        raise ValueError(f"{path}: b'data' must be a uint8 N×3072 array, got {desc}")
    labels = np.asarray(d[label_key], dtype=np.int64)
    if labels.ndim != 1 or labels.shape[0] != data.shape[0]:
        raise ValueError(
            f"{path}: label count mismatch: {data.shape[0]} images but {labels.size} labels"
        )
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"{path}: labels must lie in [0, {num_classes}), found [{labels.min()}, {labels.max()}]"
        )
    return data.reshape(-1, 3, 32, 32), labels


def _find_dir(
    spec: dict[str, Any], root: str | os.PathLike[str] | None
) -> tuple[Path | None, list[Path]]:
    searched: list[Path] = []
    needed = [*spec["train"], spec["test"]]
    for base in default_roots(spec["name"], root):
        for cand in (base / spec["subdir"], base):
            searched.append(cand)
            if all((cand / f).is_file() for f in needed):
                return cand, searched
    return None, searched


def load_cifar(num_classes: int, root: str | os.PathLike[str] | None = None) -> ArraySplits:
    """Read CIFAR-10 (``num_classes=10``) or CIFAR-100 (``100``) into memory, uint8 N×3×32×32."""
    if num_classes not in _SPECS:
        raise ValueError(f"CIFAR comes with 10 or 100 classes, got num_classes={num_classes}")
    spec = _SPECS[num_classes]
    folder, searched = _find_dir(spec, root)
    if folder is None:
        files = ", ".join([*spec["train"], spec["test"], spec["meta"]])
        raise missing_data_error(
            spec["name"],
            searched,
            f"the files {files} of the official python pickle archive, in one of the folders above",
            f"download {spec['archive']} on a machine with internet and extract it there "
            f"(tar xzf <archive> -C <root>); it unpacks to '{spec['subdir']}/'.",
        )
    parts = [_read_batch(folder / f, spec["label_key"], num_classes) for f in spec["train"]]
    x_train = np.concatenate([p[0] for p in parts])
    y_train = np.concatenate([p[1] for p in parts])
    x_test, y_test = _read_batch(folder / spec["test"], spec["label_key"], num_classes)
    names = None
    meta_path = folder / spec["meta"]
    if meta_path.is_file():
        meta = _read_pickle(meta_path)
        if spec["names_key"] not in meta:
            raise ValueError(f"{meta_path}: missing key {spec['names_key']!r}")
        names = [n.decode() if isinstance(n, bytes) else str(n) for n in meta[spec["names_key"]]]
        if len(names) != num_classes:
            raise ValueError(f"{meta_path}: lists {len(names)} class names, expected {num_classes}")
    mean, std = (CIFAR100_MEAN, CIFAR100_STD) if num_classes == 100 else (CIFAR10_MEAN, CIFAR10_STD)
    return ArraySplits(
        torch.from_numpy(np.ascontiguousarray(x_train)),
        torch.from_numpy(y_train),
        torch.from_numpy(np.ascontiguousarray(x_test)),
        torch.from_numpy(y_test),
        num_classes,
        names,
        mean,
        std,
    )


def _write_batch(
    path: Path, images: torch.Tensor, labels: torch.Tensor, label_key: bytes, tag: str
) -> None:
    n = images.shape[0]
    obj: dict[bytes, Any] = {
        b"batch_label": tag.encode(),
        label_key: [int(v) for v in labels],
        b"data": images.reshape(n, 3072).numpy(),
        b"filenames": [f"synthetic_{i:06d}.png".encode() for i in range(n)],
    }
    if label_key == b"fine_labels":
        # The real coarse (super-class) mapping is not reproduced; a placeholder keeps the key set.
        obj[b"coarse_labels"] = [int(v) // 5 for v in labels]
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def write_cifar_like(
    root: str | os.PathLike[str],
    num_classes: int = 100,
    n_train: int = 500,
    n_test: int = 100,
    seed: int = 0,
) -> Path:
    """Write a tiny learnable data set in the exact CIFAR python-pickle format; return its folder.

    Creates ``root/cifar-100-python/{train,test,meta}`` (``num_classes=100``) or
    ``root/cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}`` (``10``; the training
    images are spread over the five batches). Class names are placeholders ``class_000`` ...
    """
    if num_classes not in _SPECS:
        raise ValueError(f"num_classes must be 10 or 100, got {num_classes}")
    if n_train < 1 or n_test < 1:
        raise ValueError(f"n_train and n_test must be >= 1, got {n_train}, {n_test}")
    spec = _SPECS[num_classes]
    folder = Path(root) / spec["subdir"]
    folder.mkdir(parents=True, exist_ok=True)
    x_train, y_train = synthetic_arrays(num_classes, n_train, seed=2 * seed + 1, template_seed=seed)
    x_test, y_test = synthetic_arrays(num_classes, n_test, seed=2 * seed + 2, template_seed=seed)
    chunks = np.array_split(np.arange(n_train), len(spec["train"]))
    for fname, idx in zip(spec["train"], chunks):
        sel = torch.from_numpy(idx)
        _write_batch(
            folder / fname, x_train[sel], y_train[sel], spec["label_key"], f"training {fname}"
        )
    _write_batch(folder / spec["test"], x_test, y_test, spec["label_key"], "testing batch")
    names = [f"class_{i:03d}".encode() for i in range(num_classes)]
    if num_classes == 100:
        meta: dict[bytes, Any] = {
            b"fine_label_names": names,
            b"coarse_label_names": [f"superclass_{i:02d}".encode() for i in range(20)],
        }
    else:
        meta = {
            b"label_names": names,
            b"num_cases_per_batch": int(chunks[0].size),
            b"num_vis": 3072,
        }
    with open(folder / spec["meta"], "wb") as f:
        pickle.dump(meta, f, protocol=2)
    return folder
