"""lud.integrations.tokens: logits and labels -> the valid rows a loss takes; the Gram-size bound.

Framework-free, so these run without the ``hf`` extra.
"""

from __future__ import annotations

import pytest
import torch

from lud.integrations.tokens import check_gram_budget, gram_sizes, valid_rows
from lud.losses import build_loss


def test_valid_rows_checks_shapes_and_shifts() -> None:
    s, t = torch.randn(2, 5, 7), torch.randn(2, 6, 7)
    y = torch.tensor([[-100, 1, 2, 3, -100], [0, 1, -100, -100, -100]])
    with pytest.raises(ValueError, match="sequence-length mismatch"):
        valid_rows(s, t, y)
    with pytest.raises(ValueError, match="labels of shape"):
        valid_rows(s, s, y[:, :4])
    rs, rt, ry = valid_rows(s, s + 1, y, shift=True)
    # shifted: logit t predicts label t+1 -> pairs (0,1) (1,2) (2,3) of row 0, (0,1) of row 1
    assert torch.equal(ry, torch.tensor([1, 2, 3, 1]))
    assert torch.equal(rs, torch.stack([s[0, 0], s[0, 1], s[0, 2], s[1, 0]]))
    assert torch.equal(rt, rs + 1)


def test_gram_matrices_above_the_bound_are_refused() -> None:
    lud = build_loss("lud")
    with pytest.raises(ValueError, match=r"cdl \(classes x classes\): 1,024,000,000 elements"):
        check_gram_budget(lud, rows=100, classes=32_000, max_elements=2**22)
    check_gram_budget(build_loss("lud", cdl_weight=0.0), rows=100, classes=32_000, max_elements=2**22)
    check_gram_budget(build_loss("kd"), rows=10**5, classes=10**5, max_elements=1)  # no Gram term
    assert gram_sizes(build_loss("mlkd"), rows=10, classes=7) == {
        "class (classes x classes)": 49,
        "batch (tokens x tokens)": 100,
    }


def test_classification_rows_drop_ignored_labels() -> None:
    s = torch.randn(4, 3)
    rs, rt, ry = valid_rows(s, s * 2, torch.tensor([0, -100, 2, 1]))
    assert torch.equal(ry, torch.tensor([0, 2, 1])) and torch.equal(rs, s[[0, 2, 3]])
    with pytest.raises(
        ValueError, match="class count mismatch: the student's logits have 3, the teacher's 5"
    ):
        valid_rows(s, torch.randn(4, 5), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="shift=True"):
        valid_rows(s, s, torch.zeros(4, dtype=torch.long), shift=True)


def test_a_class_restriction_of_the_loss_bounds_the_class_side() -> None:
    lud = build_loss("lud", sdl_weight=0.0)
    assert gram_sizes(lud, rows=10, classes=32_000) == {"cdl (classes x classes)": 32_000**2}
    lud.top_k = 512  # what a top-k class restriction of the loss library would expose
    assert gram_sizes(lud, rows=10, classes=32_000) == {"cdl (classes x classes)": 512**2}
    check_gram_budget(lud, rows=10, classes=32_000, max_elements=2**22)


def test_lud_restrictions_bound_both_sides() -> None:
    lud = build_loss("lud", category_top_k=32, sample_max_rows=512)
    # 4096 tokens x 128k vocabulary: the union of top-32 sets is capped at 1024 (+1 tail column)
    assert gram_sizes(lud, rows=4096, classes=131_072) == {
        "cdl (classes x classes)": 1025**2,
        "sdl (tokens x tokens)": 512**2,
    }
    check_gram_budget(lud, rows=4096, classes=131_072, max_elements=2**22)
    # few tokens: the union holds at most rows * k classes; "drop" has no tail column
    few = build_loss("lud", category_top_k=8, category_tail="drop")
    assert gram_sizes(few, rows=10, classes=32_000) == {
        "cdl (classes x classes)": 80**2,
        "sdl (tokens x tokens)": 100,
    }
    with pytest.raises(ValueError, match="category_top_k=32"):
        check_gram_budget(build_loss("lud"), rows=4096, classes=131_072, max_elements=2**22)
