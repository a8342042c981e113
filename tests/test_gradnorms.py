"""The gradient-norm probe: values against a hand computation, no effect on the update, all losses."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from lud.engine.gradnorms import term_grad_norms
from lud.losses import available_losses, build_loss
from lud.losses.base import LossOutput


def _batch(b: int = 16, c: int = 10, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(b, c, generator=g) * 2,
        torch.randn(b, c, generator=g) * 3,
        torch.randint(0, c, (b,), generator=g),
    )


def test_kd_norms_equal_the_analytic_gradient():
    s, t, y = _batch()
    s = s.requires_grad_()
    temp, wce, wkd = 4.0, 0.1, 0.9
    out = build_loss("kd", temperature=temp, ce_weight=wce, kd_weight=wkd)(s, t, y)
    norms = term_grad_norms(out, s)
    b = s.shape[0]
    p_s, p_t = F.softmax(s.detach() / temp, 1), F.softmax(t / temp, 1)
    # d/dz [w · T² · mean_b KL(p_T || p_S)] = w · T · (p_S − p_T) / B
    kd_grad = wkd * temp * (p_s - p_t) / b
    ce_grad = wce * (F.softmax(s.detach(), 1) - F.one_hot(y, 10).float()) / b
    assert set(norms) == {"ce", "kd"}
    assert norms["kd"] == pytest.approx(float(kd_grad.norm()), rel=1e-5)
    assert norms["ce"] == pytest.approx(float(ce_grad.norm()), rel=1e-5)


def test_terms_independent_of_logits_give_zero():
    s, _, _ = _batch()
    s = s.requires_grad_()
    other = torch.randn(3, requires_grad=True)
    out = LossOutput(
        total=s.sum(), terms={"s": s.sum(), "const": torch.tensor(2.0), "other": other.sum()}
    )
    norms = term_grad_norms(out, s)
    assert norms["const"] == 0.0 and norms["other"] == 0.0
    assert norms["s"] == pytest.approx(float(torch.ones_like(s).norm()))


def test_detached_logits_are_refused():
    s, t, y = _batch()
    out = build_loss("kd")(s.requires_grad_(), t, y)
    with pytest.raises(ValueError, match="does not require grad"):
        term_grad_norms(out, s.detach())


def _step(
    loss_name: str, probe: bool
) -> tuple[dict[str, torch.Tensor], dict[str, float], list[str]]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 10))
    loss_fn = build_loss(loss_name)
    params = list(model.parameters()) + list(loss_fn.parameters())  # CTKD's temperature module
    opt = torch.optim.SGD(params, lr=0.5, momentum=0.9)
    g = torch.Generator().manual_seed(1)
    x, t = torch.randn(32, 6, generator=g), torch.randn(32, 10, generator=g) * 3
    y = torch.randint(0, 10, (32,), generator=g)
    norms: dict[str, float] = {}
    for step in range(2):
        logits = model(x)
        out = loss_fn(logits, t, y, epoch=float(step))
        if probe:
            norms = term_grad_norms(out, logits)
        opt.zero_grad()
        out.total.backward()
        opt.step()
    state = {**model.state_dict(), **{f"loss.{k}": v for k, v in loss_fn.state_dict().items()}}
    return copy.deepcopy(state), norms, list(out.terms)


@pytest.mark.parametrize("loss_name", available_losses())
def test_probe_leaves_the_update_unchanged_for_every_loss(loss_name):
    off, _, _ = _step(loss_name, probe=False)
    on, norms, terms = _step(loss_name, probe=True)
    assert off.keys() == on.keys()
    for k in off:
        assert torch.equal(off[k], on[k]), f"{loss_name}: {k} differs with the probe on"
    assert list(norms) == terms
    assert all(v >= 0.0 and v == v for v in norms.values())  # finite, non-negative
    assert any(v > 0.0 for v in norms.values()), f"{loss_name}: every term norm is 0"
