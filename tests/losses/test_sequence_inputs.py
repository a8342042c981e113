"""Token-level inputs for every registered loss: (B, T, C) logits, (B, T) targets, ignore index.

The reference is the same loss on the valid tokens flattened to (N, C) by hand: values, terms
and gradients must be identical, and ignored tokens must receive exactly zero gradient.
"""

from __future__ import annotations

import copy

import pytest
import torch

from lud.losses import available_losses, build_loss

B, T, C = 3, 5, 7


def _inputs(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    teacher = torch.randn(B, T, C, generator=g) * 3
    student = teacher + torch.randn(B, T, C, generator=g)
    targets = torch.randint(0, C, (B, T), generator=g)
    targets[0, 3:] = -100  # padding at the end of a sequence
    targets[2, :2] = -100  # a prompt at the start of another
    return student, teacher, targets


def _call(loss, s, t, y):
    s = s.clone().requires_grad_(True)
    out = loss(s, t, y, epoch=5.0)
    out.total.backward()
    return out, s.grad


@pytest.mark.parametrize("name", available_losses())
def test_masked_tokens_equal_flattened_valid_rows(name: str) -> None:
    loss = build_loss(name)
    ref_loss = copy.deepcopy(loss)  # stateful losses (running thresholds) start alike
    s, t, y = _inputs()
    out, grad = _call(loss, s, t, y)
    keep = y.reshape(-1) != -100
    ref, ref_grad = _call(ref_loss, s.reshape(-1, C)[keep], t.reshape(-1, C)[keep],
                          y.reshape(-1)[keep])
    torch.testing.assert_close(out.total, ref.total, rtol=1e-6, atol=1e-7)
    assert out.terms.keys() == ref.terms.keys()
    for key in ref.terms:
        torch.testing.assert_close(out.terms[key], ref.terms[key], rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(grad.reshape(-1, C)[keep], ref_grad, rtol=1e-5, atol=1e-7)
    assert torch.equal(grad.reshape(-1, C)[~keep], torch.zeros(int((~keep).sum()), C))
    assert torch.isfinite(out.total) and grad.abs().sum() > 0


@pytest.mark.parametrize("name", available_losses())
def test_all_tokens_ignored_gives_zero_not_nan(name: str) -> None:
    s, t, y = _inputs()
    out, grad = _call(build_loss(name), s, t, torch.full_like(y, -100))
    assert out.total.item() == 0.0 and out.terms == {}
    assert torch.equal(grad, torch.zeros_like(grad))


def test_custom_ignore_index_and_unmasked_targets() -> None:
    s, t, y = _inputs()
    loss = build_loss("kd")
    loss.ignore_index = 6  # a real class id used as the marker
    out, _ = _call(loss, s, t, y.clamp_min(0))
    keep = y.clamp_min(0).reshape(-1) != 6
    ref, _ = _call(build_loss("kd"), s.reshape(-1, C)[keep], t.reshape(-1, C)[keep],
                   y.clamp_min(0).reshape(-1)[keep])
    torch.testing.assert_close(out.total, ref.total)
    # no ignore marker at all: the plain flattened computation
    out, _ = _call(build_loss("kd"), s, t, y.clamp_min(0))
    ref, _ = _call(build_loss("kd"), s.reshape(-1, C), t.reshape(-1, C), y.clamp_min(0).reshape(-1))
    torch.testing.assert_close(out.total, ref.total)


def test_bad_token_level_inputs_raise_clear_errors() -> None:
    s, t, y = _inputs()
    loss = build_loss("kd")
    with pytest.raises(ValueError, match="vocabulary mismatch.*7 classes.*9"):
        loss(s, torch.randn(B, T, 9), y)
    with pytest.raises(ValueError, match=r"shape mismatch.*\(3, 5, 7\).*\(3, 4, 7\)"):
        loss(s, t[:, :4], y)
    with pytest.raises(ValueError, match=r"teacher_logits must match.*\(15, 7\)"):
        loss(s, t.reshape(-1, C), y)
    with pytest.raises(ValueError, match=r"targets must have shape \(3, 5\).*got \(15,\)"):
        loss(s, t, y.reshape(-1))
    with pytest.raises(ValueError, match="targets out of range"):
        loss(s, t, y.masked_fill(y == -100, -5))  # not the ignore index: still an error
