"""Batched RandAugment (the strong view) and BatchTransform.two_views."""

from __future__ import annotations

import pytest
import torch

from lud.data import BatchTransform
from lud.data.randaugment import OPS, BatchRandAugment, _apply, check_randaugment

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


def _batch(b: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.rand(b, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def test_same_seed_same_views_other_seed_other_views() -> None:
    x = _batch()
    ra = BatchRandAugment(2, 10)
    a = ra(x, torch.Generator().manual_seed(1))
    b = ra(x, torch.Generator().manual_seed(1))
    c = ra(x, torch.Generator().manual_seed(2))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert a.shape == x.shape and a.dtype == x.dtype
    assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0
    assert not torch.equal(a, x)


def test_grouped_batch_equals_one_image_at_a_time() -> None:
    # The grouping by (operation, sign) is an implementation detail: each image must get
    # exactly the operations drawn for it, in order.
    x = _batch(24, seed=3)
    ra = BatchRandAugment(3, 17)
    ops, signs = ra.sample_params(24, torch.Generator().manual_seed(5))
    batched = ra.apply_params(x, ops, signs)
    for i in range(24):
        one = x[i : i + 1]
        for k in range(3):
            one = _apply(OPS[int(ops[i, k])], one, 17, float(signs[i, k])).clamp(0, 1)
        torch.testing.assert_close(batched[i : i + 1], one)


@pytest.mark.parametrize("op", OPS)
def test_every_operation_keeps_shape_dtype_and_range(op: str) -> None:
    x = _batch(4, seed=7)
    for sign in (1.0, -1.0):
        y = _apply(op, x, 30, sign)
        assert y.shape == x.shape and y.dtype == x.dtype and torch.isfinite(y).all()
    if op == "identity":
        assert torch.equal(_apply(op, x, 30, 1.0), x)
    else:
        assert not torch.equal(_apply(op, x, 30, 1.0), x), op  # magnitude 30 changes the image


def test_zero_ops_and_magnitude_zero_geometry_are_identity() -> None:
    x = _batch(5)
    assert torch.equal(BatchRandAugment(0, 10)(x, torch.Generator().manual_seed(0)), x)
    for op in ("shear_x", "shear_y", "translate_x", "translate_y", "rotate", "brightness"):
        torch.testing.assert_close(_apply(op, x, 0, 1.0), x)


@pytest.mark.parametrize(
    "n,m,problem",
    [(-1, 10, "num_ops"), (2.5, 10, "num_ops"), (True, 10, "num_ops"), (2, 31, "magnitude"),
     (2, -1, "magnitude"), (2, 9.0, "magnitude"), (2, "10", "magnitude")],
)
def test_bad_parameters_name_the_parameter(n: object, m: object, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        check_randaugment(n, m)
    with pytest.raises(ValueError, match=problem):
        BatchRandAugment(n, m)  # type: ignore[arg-type]


def test_bad_batch_refused() -> None:
    with pytest.raises(ValueError, match="float B×C×H×W"):
        BatchRandAugment()(torch.zeros(2, 3, 8, 8, dtype=torch.uint8))


def test_two_views_weak_equals_forward_and_strong_differs() -> None:
    x = (_batch(8) * 255).to(torch.uint8)
    tf = BatchTransform(MEAN, STD, "cifar", train=True, strong=BatchRandAugment(2, 10))
    weak, strong = tf.two_views(x, torch.Generator().manual_seed(4))
    plain = tf(x, torch.Generator().manual_seed(4))
    assert torch.equal(weak, plain)
    assert strong.shape == weak.shape and strong.dtype == torch.float32
    assert not torch.equal(strong, weak)
    again = tf.two_views(x, torch.Generator().manual_seed(4))
    assert torch.equal(again[0], weak) and torch.equal(again[1], strong)


def test_two_views_needs_strong_and_training() -> None:
    x = _batch(2)
    with pytest.raises(ValueError, match="strong augmentation"):
        BatchTransform(MEAN, STD, "cifar", train=True).two_views(x)
    tf = BatchTransform(MEAN, STD, "cifar", train=True, strong=BatchRandAugment())
    tf.eval()
    with pytest.raises(ValueError, match="eval mode"):
        tf.two_views(x)
    with pytest.raises(ValueError, match="BatchRandAugment"):
        BatchTransform(MEAN, STD, "cifar", train=True, strong="randaugment")  # type: ignore[arg-type]
