"""LUD in passes over token chunks (:mod:`lud.losses.lud_fused`): equal to the unfused
vocabulary-scale LUD (``category_top_k`` / ``sample_max_rows``) in terms, gradients and state."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lud.losses import build_loss
from lud.losses.lud_fused import chunked_lud_loss, fused_linear_lud_loss

EPOCH = 10.0  # past the rank warm-up


def _problem(n: int = 40, h: int = 12, v: int = 60, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, h, generator=g)
    weight = torch.randn(v, h, generator=g)
    bias = torch.randn(v, generator=g) * 0.1
    teacher = (hidden @ weight.t()) * 1.5 + torch.randn(n, v, generator=g) * 2
    targets = torch.randint(0, v, (n,), generator=g)
    return hidden, weight, bias, teacher, targets


CONFIGS = [
    {"category_top_k": 3, "max_categories": 12, "sample_max_rows": 6},
    {"category_top_k": 2},  # SDL on every row
    {"sample_max_rows": 9},  # class features over the whole vocabulary
    {"category_top_k": 4, "max_categories": 1000, "category_tail": "drop", "sample_max_rows": 10,
     "temperature_map": "rank", "rank_scale": "log", "relation_mask": True,
     "instance_mask": True},
    {"category_top_k": 3, "sample_max_rows": 8, "gram_reduction": "flat",
     "dynamic_temperature": "off", "mask_type": "soft", "threshold": "running"},
    {"category_top_k": 3, "sample_max_rows": 8, "rank_grad_scale": "matched",
     "rank_method": "pearson", "temperature_map": "released", "threshold": "fixed",
     "mask_direction": "uncertain", "uncertainty_weighting": False},
    {"category_top_k": 3, "sample_max_rows": 8, "preset": "paper"},
    # no SDL, no CE (the gradient starts from the instance term), masks on, the paper's map
    {"category_top_k": 3, "sample_max_rows": 8, "sdl_weight": 0.0, "ce_weight": 0.0,
     "temperature_map": "paper", "class_mask": True, "sample_mask": True},
    # SDL alone (no CE, instance or class term) at a fixed T = 2, log-scale ranks
    {"category_top_k": 3, "sample_max_rows": 8, "ce_weight": 0.0, "instance_weight": 0.0,
     "cdl_weight": 0.0, "inter_weight": 0.0, "intra_weight": 0.0, "dynamic_temperature": "off",
     "temperature": 2.0, "rank_scale": "log"},
    # the class terms alone, tail dropped, a batch-relative map
    {"category_top_k": 2, "max_categories": 5, "category_tail": "drop", "sdl_weight": 0.0,
     "temperature_map": "minmax", "rank_scale": "log"},
    # the other confidence measures (sample confidences from pass 1)
    {"category_top_k": 3, "sample_max_rows": 8, "confidence_measure": "entropy",
     "instance_mask": True},
    {"category_top_k": 3, "sample_max_rows": 8, "confidence_measure": "margin",
     "weight_direction": "uncertain", "mask_direction": "uncertain"},
]


def _reference(loss, z, t, y):
    out = loss(z, t, y, epoch=EPOCH)
    return {k: float(x.detach()) for k, x in out.terms.items()}, out


def _assert_terms(got, want):
    assert set(got) == set(want)
    for k in want:
        assert got[k] == pytest.approx(want[k], rel=1e-5, abs=1e-6), k


@pytest.mark.parametrize("params", CONFIGS)
@pytest.mark.parametrize("chunk", [7, 64])
def test_chunked_lud_equals_unfused_terms_gradient_and_state(params, chunk) -> None:
    hidden, weight, bias, teacher, targets = _problem()
    z0 = F.linear(hidden, weight, bias)
    ref_loss, our_loss = build_loss("lud", **params), build_loss("lud", **params)
    z = z0.clone().requires_grad_(True)
    want, out = _reference(ref_loss, z, teacher, targets)
    (want_g,) = torch.autograd.grad(out.total, z)
    z2 = z0.clone().requires_grad_(True)
    got_out = chunked_lud_loss(our_loss, z2, teacher, targets, epoch=EPOCH, chunk_size=chunk)
    (got_g,) = torch.autograd.grad(got_out.total, z2)
    _assert_terms({k: float(x) for k, x in got_out.terms.items()}, want)
    assert float(got_out.total.detach()) == pytest.approx(float(out.total.detach()), rel=1e-5)
    torch.testing.assert_close(got_g, want_g, rtol=1e-4, atol=1e-7)
    assert got_out.stats == pytest.approx(out.stats, rel=1e-5, abs=1e-6)
    for key, value in ref_loss.state_dict().items():  # running thresholds, the SDL draw counter
        torch.testing.assert_close(our_loss.state_dict()[key], value, rtol=1e-6, atol=0)


@pytest.mark.parametrize("params", [CONFIGS[0], CONFIGS[3]])
def test_fused_lud_equals_unfused_with_ignored_tokens(params) -> None:
    hidden, weight, bias, teacher, targets = _problem(n=48)
    targets[:5] = -100
    targets[30:33] = -100
    leaves = [x.clone().requires_grad_(True) for x in (hidden, weight, bias)]
    # the unfused reference: token-shaped (1, N, V) input, whose ignored rows LUDLoss drops
    z = F.linear(*leaves).unsqueeze(0)
    want, out = _reference(build_loss("lud", **params), z, teacher.unsqueeze(0),
                           targets.unsqueeze(0))
    want_g = torch.autograd.grad(out.total, leaves)
    leaves2 = [x.clone().requires_grad_(True) for x in (hidden, weight, bias)]
    got_out = fused_linear_lud_loss(build_loss("lud", **params), *leaves2, teacher, targets,
                                    epoch=EPOCH, chunk_size=11)
    got_g = torch.autograd.grad(got_out.total, leaves2)
    _assert_terms({k: float(x) for k, x in got_out.terms.items()}, want)
    for a, b in zip(got_g, want_g):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    assert got_g[0][targets == -100].abs().max() == 0


def test_all_ignored_is_a_finite_zero_and_one_token_works() -> None:
    hidden, weight, bias, teacher, targets = _problem(n=6)
    h = hidden.clone().requires_grad_(True)
    out = fused_linear_lud_loss(build_loss("lud", category_top_k=2), h, weight, None, teacher,
                                torch.full((6,), -100), epoch=EPOCH)
    (g,) = torch.autograd.grad(out.total, h)
    assert float(out.total.detach()) == 0.0 and torch.equal(g, torch.zeros_like(g))
    z = F.linear(hidden[:1], weight).requires_grad_(True)
    want, ref = _reference(build_loss("lud", category_top_k=2), z, teacher[:1], targets[:1])
    (want_g,) = torch.autograd.grad(ref.total, z)
    z2 = z.detach().clone().requires_grad_(True)
    got = chunked_lud_loss(build_loss("lud", category_top_k=2), z2, teacher[:1], targets[:1],
                           epoch=EPOCH)
    (got_g,) = torch.autograd.grad(got.total, z2)
    _assert_terms({k: float(x) for k, x in got.terms.items()}, want)
    torch.testing.assert_close(got_g, want_g, rtol=1e-4, atol=1e-7)


def test_bf16_hidden_states() -> None:
    hidden, weight, bias, teacher, targets = _problem()
    params = CONFIGS[0]
    hb = hidden.bfloat16().requires_grad_(True)
    wb = weight.bfloat16()
    out = fused_linear_lud_loss(build_loss("lud", **params), hb, wb, None, teacher, targets,
                                epoch=EPOCH, chunk_size=16)
    (g,) = torch.autograd.grad(out.total, hb)
    assert g.dtype == torch.bfloat16 and out.total.dtype == torch.float32
    z = F.linear(hb.detach(), wb).float()  # the same bf16 logits, the loss in fp32
    want, _ = _reference(build_loss("lud", **params), z, teacher, targets)
    _assert_terms({k: float(x) for k, x in out.terms.items()}, want)


@pytest.mark.parametrize(("params", "match"), [
    ({}, "category_top_k or sample_max_rows"),
    ({"category_top_k": 2, "dynamic_temperature": "class"}, "dynamic_temperature='class'"),
    ({"category_top_k": 2, "dynamic_temperature": "full"}, "dynamic_temperature='full'"),
    ({"category_top_k": 2, "standardize": True}, "standardize"),
])
def test_unsupported_configurations_say_why(params, match) -> None:
    hidden, weight, bias, teacher, targets = _problem(n=8)
    with pytest.raises(ValueError, match=match):
        chunked_lud_loss(build_loss("lud", **params), hidden @ weight.t(), teacher, targets)


def test_not_a_lud_loss_and_missing_targets_are_refused() -> None:
    hidden, weight, bias, teacher, targets = _problem(n=8)
    with pytest.raises(ValueError, match="LUDLoss"):
        chunked_lud_loss(build_loss("kd"), hidden @ weight.t(), teacher, targets)
    with pytest.raises(ValueError, match="targets are required"):
        chunked_lud_loss(build_loss("lud", category_top_k=2), hidden @ weight.t(), teacher, None)
