"""fashion_pairs: the 100-class set of two Fashion-MNIST garments side by side, on tiny IDX files.

Every source image carries its identity in its pixels: (0, 0) = index in its file, (0, 1) = garment
class, (0, 2) = 1 for the train file and 2 for the test file; the rest is class-dependent noise.
So a pair's halves say which source images and which split they came from.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lud.config import ConfigError, config_from_dict, validate_config
from lud.data import build_data, write_idx
from lud.data import idx as idx_module

PER_CLASS = 10  # source images per garment class in each tiny file


def _write_source(folder, per_class: int = PER_CLASS) -> None:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, tag in (("train", 1), ("t10k", 2)):
        labels = np.repeat(np.arange(10, dtype=np.uint8), per_class)
        rng.shuffle(labels)
        images = rng.integers(0, 256, (labels.size, 28, 28), dtype=np.uint8)
        images[:, 0, 0] = np.arange(labels.size)
        images[:, 0, 1] = labels
        images[:, 0, 2] = tag
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte", labels)


@pytest.fixture
def root(tmp_path, monkeypatch):
    monkeypatch.setenv("LUD_DATA", str(tmp_path / "nowhere"))
    monkeypatch.setattr(idx_module, "DEBIAN_FASHION_MNIST", tmp_path / "no_debian")
    _write_source(tmp_path / "fm")
    return tmp_path / "fm"


def _build(root, val_split=0.0, seed=0, **options):
    opts = {"train_per_class": 12, "test_per_class": 5, **options}
    return build_data("fashion_pairs", root, val_split=val_split, seed=seed, options=opts)


def _halves(ds):
    """(left index, left class, left tag, right index, right class, right tag) per pair."""
    x = ds.images
    return tuple(x[:, 0, 0, k + off].long() for off in (0, 28) for k in range(3))


def test_shape_balance_and_labels_from_pixels(root):
    b = _build(root)
    assert b.num_classes == 100 and b.input_shape == (1, 28, 56) and b.val is None
    assert len(b.class_names) == 100 and b.class_names[10 * 3 + 7] == "Dress|Sneaker"
    for ds, n in ((b.train, 12), (b.test, 5)):
        assert torch.equal(torch.bincount(ds.labels, minlength=100), torch.full((100,), n))
        _, lc, _, _, rc, _ = _halves(ds)
        assert torch.equal(ds.labels, 10 * lc + rc)


def test_halves_are_exact_source_images(root):
    from lud.data.idx import read_idx

    src = read_idx(root / "train-images-idx3-ubyte.gz")
    b = _build(root)
    li, _, _, ri, _, _ = _halves(b.train)
    assert torch.equal(b.train.images[:, 0, :, :28], torch.from_numpy(src[li.numpy()]))
    assert torch.equal(b.train.images[:, 0, :, 28:], torch.from_numpy(src[ri.numpy()]))


def test_train_and_test_pairs_never_mix_sources(root):
    b = _build(root, val_split=0.2)
    for ds, tag in ((b.train, 1), (b.val, 1), (b.test, 2)):
        _, _, lt, _, _, rt = _halves(ds)
        assert (lt == tag).all() and (rt == tag).all()


def test_validation_pairs_use_their_own_source_images(root):
    b = _build(root, val_split=0.2)
    assert torch.equal(torch.bincount(b.val.labels, minlength=100), torch.full((100,), 2))
    assert torch.equal(torch.bincount(b.train.labels, minlength=100), torch.full((100,), 10))
    li, _, _, ri, _, _ = _halves(b.train)
    vli, _, _, vri, _, _ = _halves(b.val)
    train_src = set(li.tolist()) | set(ri.tolist())
    val_src = set(vli.tolist()) | set(vri.tolist())
    assert train_src.isdisjoint(val_src)
    assert len(val_src) == 20  # 2 of the 10 source images per garment held out


def test_no_duplicate_pairs_and_distinct_images_for_same_garment(root):
    b = _build(root, train_per_class=90)  # every distinct same-garment combination (10·9)
    li, lc, _, ri, rc, _ = _halves(b.train)
    keys = set(zip(li.tolist(), ri.tolist()))
    assert len(keys) == len(b.train)
    same = lc == rc
    assert (li[same] != ri[same]).all()


def test_deterministic_and_seeded(root):
    a, b = _build(root), _build(root)
    assert torch.equal(a.train.images, b.train.images) and torch.equal(a.test.images, b.test.images)
    c = _build(root, pair_seed=1)
    assert not torch.equal(a.train.images, c.train.images)
    assert not torch.equal(a.test.images, c.test.images)
    # The run seed moves the validation pool, never the test pairs.
    d, e = _build(root, val_split=0.2, seed=0), _build(root, val_split=0.2, seed=5)
    assert torch.equal(d.test.images, e.test.images)
    assert not torch.equal(d.val.images, e.val.images)


def test_missing_files_name_the_folders_and_the_apt_package(root, tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist") as err:
        _build(tmp_path / "empty")
    assert str(tmp_path / "empty") in str(err.value)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"train_per_class": 91}, "91 train pairs per class cannot be met"),
        ({"test_per_class": 101}, "101 test pairs per class cannot be met"),
        ({"train_per_class": 0}, "train_per_class must be a positive integer"),
        ({"test_per_class": -3}, "test_per_class must be a positive integer"),
        ({"train_per_class": 2.5}, "train_per_class must be a positive integer"),
        ({"pair_seed": -1}, "pair_seed must be an integer >= 0"),
        ({"colour": 1}, "unknown options"),
    ],
)
def test_bad_sizes_and_seeds_are_refused(root, options, message):
    with pytest.raises(ValueError, match=message):
        _build(root, **options)


def test_validation_pool_too_small_is_refused(root):
    # 2 held-out images per garment → 2·1 distinct same-garment validation pairs.
    with pytest.raises(ValueError, match="3 validation pairs per class cannot be met"):
        _build(root, val_split=0.2, train_per_class=15)
    with pytest.raises(ValueError, match="gives 0 validation pairs per class"):
        _build(root, val_split=0.01, train_per_class=12)


def test_options_only_for_data_sets_that_take_them(root):
    with pytest.raises(ValueError, match="allowed: none"):
        build_data("fashion_mnist", root, options={"train_per_class": 3})
    base = {"experiment": {"name": "x"}, "model": {"name": "cnn_small"}}
    validate_config(config_from_dict({**base, "data": {
        "name": "fashion_pairs", "options": {"train_per_class": 5}}}))  # fmt: skip
    with pytest.raises(ConfigError, match=r"data.options \['size'\] not understood"):
        validate_config(config_from_dict({**base, "data": {
            "name": "fashion_pairs", "options": {"size": 5}}}))  # fmt: skip


def test_a_run_config_passes_its_data_options(root):
    """``data.options`` of a run config reach the data set (the trainer's and ``lud eval``'s data)."""
    from lud.engine.build import run_data

    cfg = config_from_dict({
        "experiment": {"name": "pairs", "seed": 0},
        "data": {"name": "fashion_pairs", "root": str(root), "val_split": 0.0,
                 "options": {"train_per_class": 7, "test_per_class": 3, "pair_seed": 1}},
        "model": {"name": "mlp_tiny"},
        "loss": {"name": "ce"},
    })
    bundle = run_data(cfg)
    assert len(bundle.train) == 7 * 100 and len(bundle.test) == 3 * 100
