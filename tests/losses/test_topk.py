"""The sparse top-k teacher (lud.losses.topk): validation, the missing-mass rules, the loss hook."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from lud.losses import TopKTeacher, build_loss, loss_entries, topk_forward_kl
from lud.losses.kd import kl_per_sample
from lud.losses.topk import TAILS, topk_reverse_kl

_ROOT = next(p for p in Path(__file__).resolve().parents if (p / "pyproject.toml").is_file())

N, V = 6, 13


def _logits(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    teacher = torch.randn(N, V, generator=g) * 3
    student = teacher * 0.5 + torch.randn(N, V, generator=g)
    return student, teacher


def _dense_kl(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """sum p (log p - log q) with 0 log 0 = 0 (log_p may hold -inf)."""
    p = log_p.exp()
    return torch.where(p > 0, p * (log_p - log_q), torch.zeros_like(p)).sum(-1)


@pytest.mark.parametrize("tail", TAILS)
def test_k_equal_v_is_the_dense_kl_value_and_gradient(tail: str) -> None:
    s, t = _logits()
    s1 = s.clone().requires_grad_(True)
    s2 = s.clone().requires_grad_(True)
    for temperature in (1.0, 3.0):
        topk = TopKTeacher.from_logits(t, V, temperature, tail=tail)
        got = topk_forward_kl(s1, topk, temperature)
        ref = kl_per_sample(s2, t, temperature)
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)
        g1 = torch.autograd.grad(got.sum(), s1)[0]
        g2 = torch.autograd.grad(ref.sum(), s2)[0]
        torch.testing.assert_close(g1, g2, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("tail", TAILS)
def test_reverse_kl_k_equal_v_is_dense_and_matches_the_densified_teacher(tail: str) -> None:
    s, t = _logits(6)
    s1 = s.clone().requires_grad_(True)
    s2 = s.clone().requires_grad_(True)
    got = topk_reverse_kl(s1, TopKTeacher.from_logits(t, V, tail=tail))
    ref = _dense_kl(torch.log_softmax(s2, -1), torch.log_softmax(t, -1))
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)
    g1, g2 = torch.autograd.grad(got.sum(), s1)[0], torch.autograd.grad(ref.sum(), s2)[0]
    torch.testing.assert_close(g1, g2, rtol=1e-5, atol=1e-6)
    topk = TopKTeacher.from_logits(t, 4, tail=tail)
    log_q = torch.log_softmax(s, -1)
    if tail == "uniform":
        ref = _dense_kl(log_q, topk.densify(V))
    elif tail == "bucket":
        dense = topk.densify(V)
        lq_tail = torch.logsumexp(log_q.scatter(1, topk.indices, -math.inf), 1, keepdim=True)
        lq_b = torch.cat([log_q.gather(1, topk.indices), lq_tail], 1)
        ref = _dense_kl(lq_b, torch.cat([topk.log_probs, dense[:, V:]], 1))
    else:
        lq = log_q.gather(1, topk.indices)
        ref = _dense_kl(lq - lq.logsumexp(1, keepdim=True), topk.densify(V).gather(1, topk.indices))
    torch.testing.assert_close(topk_reverse_kl(s, topk), ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("tail", ["zero", "uniform"])
def test_sparse_kl_equals_kl_against_the_densified_teacher(tail: str) -> None:
    s, t = _logits(1)
    topk = TopKTeacher.from_logits(t, 4, tail=tail)
    dense = topk.densify(V)
    assert dense.shape == (N, V)
    torch.testing.assert_close(torch.logsumexp(dense, -1), torch.zeros(N), atol=1e-6, rtol=0)
    ref = _dense_kl(dense, torch.log_softmax(s, -1))
    torch.testing.assert_close(topk_forward_kl(s, topk), ref, rtol=1e-5, atol=1e-6)


def test_bucket_rule_is_the_kl_over_k_plus_one_classes() -> None:
    s, t = _logits(2)
    topk = TopKTeacher.from_logits(t, 5, tail="bucket")
    dense = topk.densify(V)  # (N, V+1): top-k, -inf elsewhere, the missing mass last
    assert dense.shape == (N, V + 1)
    q = torch.softmax(s.double(), -1)
    q_top = q.gather(1, topk.indices)
    q_bucket = torch.cat([q_top, (1 - q_top.sum(1, keepdim=True))], 1)
    p_bucket = torch.cat([topk.log_probs.double().exp(), dense[:, V:].double().exp()], 1)
    ref = (p_bucket * (p_bucket.log() - q_bucket.log())).sum(1)
    torch.testing.assert_close(topk_forward_kl(s, topk).double(), ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(p_bucket.sum(1), torch.ones(N, dtype=torch.float64))


def test_rules_differ_and_are_non_negative_below_v() -> None:
    s, t = _logits(3)
    values = {tail: topk_forward_kl(s, TopKTeacher.from_logits(t, 3, tail=tail)) for tail in TAILS}
    for v in values.values():
        assert bool((v >= -1e-6).all())
    assert not torch.allclose(values["bucket"], values["zero"])
    assert not torch.allclose(values["bucket"], values["uniform"])
    # a student equal to the teacher: the bucket rule gives 0 (its tail holds the same mass)
    same = topk_forward_kl(t, TopKTeacher.from_logits(t, 3, tail="bucket"))
    torch.testing.assert_close(same, torch.zeros(N), atol=1e-5, rtol=0)


def test_degenerate_inputs_give_no_nan() -> None:
    # one token, constant logits, k = 1, a teacher holding all its mass in the top-k
    const = torch.zeros(1, V)
    peaked = torch.full((1, V), -1e4)
    peaked[0, 2] = 0  # missing mass exactly 0
    for divergence in (topk_forward_kl, topk_reverse_kl):
        for tail in TAILS:
            for teacher, k in [(const, 1), (const, V - 1), (const, V), (peaked, 2)]:
                topk = TopKTeacher.from_logits(teacher, k, tail=tail)
                s = torch.randn(1, V, requires_grad=True)
                out = divergence(s, topk)
                out.sum().backward()
                assert torch.isfinite(out).all() and torch.isfinite(s.grad).all(), (divergence, tail, k)


def test_kd_loss_with_k_equal_v_equals_dense_kd() -> None:
    s, t = _logits(4)
    y = torch.randint(0, V, (N,), generator=torch.Generator().manual_seed(0))
    for temperature in (1.0, 4.0):
        loss = build_loss("kd", temperature=temperature)
        dense = loss(s, t, y)
        sparse = loss(s, TopKTeacher.from_logits(t, V, temperature), y)
        torch.testing.assert_close(sparse.total, dense.total, rtol=1e-5, atol=1e-6)
        assert set(sparse.terms) == {"ce", "kd"}


def test_token_inputs_with_ignore_index_equal_flattened_rows() -> None:
    g = torch.Generator().manual_seed(5)
    b, tt = 3, 4
    teacher = torch.randn(b, tt, V, generator=g)
    student = torch.randn(b, tt, V, generator=g, requires_grad=True)
    y = torch.randint(0, V, (b, tt), generator=g)
    y[0, 2:] = -100
    y[2, :1] = -100
    loss = build_loss("kd", temperature=1.0)
    topk = TopKTeacher.from_logits(teacher, 5)
    out = loss(student, topk, y)
    keep = y.reshape(-1) != -100
    ref = loss(student.reshape(-1, V)[keep], topk.reshape(-1).select(keep), y.reshape(-1)[keep])
    torch.testing.assert_close(out.total, ref.total)
    (g1,) = torch.autograd.grad(out.total, student)
    assert bool((g1[0, 2:] == 0).all()) and bool((g1[2, :1] == 0).all())
    # all ignored: 0, not NaN
    none = loss(student, topk, torch.full((b, tt), -100))
    assert float(none.total.detach()) == 0.0
    with pytest.raises(ValueError, match="top-k teacher must have rows"):
        loss(student, TopKTeacher.from_logits(teacher[:, :3], 5), y)


def test_losses_without_topk_refuse_it_naming_why() -> None:
    s, t = _logits()
    y = torch.zeros(N, dtype=torch.long)
    topk = TopKTeacher.from_logits(t, 4)
    takes = {e.name for e in loss_entries(inputs="topk")}
    assert "kd" in takes
    for name in ("kd+ls", "lud", "dkd", "dist"):
        assert name not in takes
        why = rf"loss '{re_escape(name)}' does not take a top-k teacher.*every class"
        with pytest.raises(ValueError, match=why):
            build_loss(name)(s, topk, y)
    with pytest.raises(ValueError, match="standardize"):
        build_loss("kd", standardize=True)(s, topk, y)
    with pytest.raises(ValueError, match="temperature 1.0, the loss uses 4.0"):
        build_loss("kd")(s, topk, y)


def re_escape(text: str) -> str:
    import re

    return re.escape(text)


def test_bad_topk_inputs_raise_clear_errors() -> None:
    idx = torch.tensor([[0, 1, 2], [3, 4, 5]])
    lp = torch.log(torch.tensor([[0.5, 0.2, 0.1], [0.3, 0.3, 0.3]]))
    TopKTeacher(idx, lp)  # fine
    cases = [
        (dict(indices=idx[:, :2], log_probs=lp), "same shape"),
        (dict(indices=idx.float(), log_probs=lp), "integer"),
        (dict(indices=idx, log_probs=lp.abs()), "<= 0"),
        (dict(indices=idx, log_probs=lp.clone().fill_(math.nan)), "NaN or Inf"),
        (dict(indices=idx, log_probs=torch.full_like(lp, -math.inf)), "NaN or Inf"),
        (dict(indices=torch.tensor([[0, 1, 1], [3, 4, 5]]), log_probs=lp), "repeated within a row"),
        (dict(indices=torch.tensor([[0, -1, 2], [3, 4, 5]]), log_probs=lp), "out of range"),
        (dict(indices=idx, log_probs=lp, vocab_size=5), r"out of range.*\[0, 5\)"),
        (dict(indices=idx, log_probs=torch.log(torch.full((2, 3), 0.6))), "sum to"),
        (dict(indices=idx, log_probs=lp, tail="rest"), "tail must be one of"),
        (dict(indices=idx, log_probs=lp, temperature=0.0), "temperature"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            TopKTeacher(**kwargs)
    # the range against the student's vocabulary is checked by the loss
    s = torch.randn(2, 5)
    with pytest.raises(ValueError, match=r"out of range.*\[0, 5\)"):
        build_loss("kd", temperature=1.0)(s, TopKTeacher(idx, lp), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="batch-size mismatch"):
        y3 = torch.zeros(3, dtype=torch.long)
        build_loss("kd", temperature=1.0)(torch.randn(3, 7), TopKTeacher(idx, lp), y3)
    with pytest.raises(ValueError, match="k must be an int"):
        TopKTeacher.from_logits(torch.randn(2, 5), 6)


def test_matches_distillkit_sparse_kl() -> None:
    """bucket = DistillKit's SYMMETRIC_UNIFORM, zero = its ZERO: per-token values of its
    ``sparse_kl_div`` on fixed inputs (tests/fixtures/distillkit_sparse_kl_reference.json, computed
    with DistillKit's own function outside the repository; see the file's ``source``)."""

    ref = json.loads((_ROOT / "tests" / "fixtures" / "distillkit_sparse_kl_reference.json").read_text())
    s = torch.tensor(ref["student_logits"])
    for prefix, temperature in (("", 1.0), ("t2_", 2.0)):
        for ours, theirs in (("zero", "zero"), ("bucket", "symmetric_uniform")):
            topk = TopKTeacher(torch.tensor(ref[prefix + "indices"]), torch.tensor(ref[prefix + "log_probs"]),
                               ours, temperature)
            got = topk_forward_kl(s, topk, temperature)
            torch.testing.assert_close(got, torch.tensor(ref[prefix + theirs]), rtol=1e-5, atol=1e-6)
