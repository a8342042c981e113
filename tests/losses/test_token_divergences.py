"""The token divergences (fkl, rkl, gjsd, skl, srkl, tvd) against the anchors' own numbers.

tests/fixtures/token_divergences.json holds values and student-logit gradients of TRL's
``generalized_jsd_loss``, torchtune's ``ForwardKLLoss``/``ReverseKLLoss``/``SymmetricKLLoss`` and
DistiLLM's ``forward_kl``/``reverse_kl``/``skewed_forward_kl``/``skewed_reverse_kl``/``tv_distance``
on fixed (B, T, V) logits with ignored tokens, computed from their code outside this repository
(the generator is in the fixture's ``generator`` field). The cross-entropy-style anchors differ
from the KL by the teacher's entropy, which the fixture names per case.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from lud.losses import build_loss, loss_entries, token_divergence
from lud.losses.token_divergence import shared_vocabulary

_ROOT = next(p for p in Path(__file__).resolve().parents if (p / "pyproject.toml").is_file())

FIXTURE = json.loads((_ROOT / "tests" / "fixtures" / "token_divergences.json").read_text())
STUDENT = torch.tensor(FIXTURE["inputs"]["student"])
TEACHER = torch.tensor(FIXTURE["inputs"]["teacher"])
LABELS = torch.tensor(FIXTURE["inputs"]["labels"])
NAMES = ("fkl", "rkl", "gjsd", "skl", "srkl", "tvd")


def _labels(kind: str) -> torch.Tensor:
    return LABELS if kind == "labels" else torch.full_like(LABELS, -100)


def _teacher_entropy(labels: torch.Tensor) -> torch.Tensor:
    keep = labels != -100
    if not keep.any():
        return torch.tensor(0.0)
    log_p = F.log_softmax(TEACHER[keep], dim=-1)
    return -(log_p.exp() * log_p).sum(-1).mean()


def _ours(case: dict) -> tuple[torch.Tensor, torch.Tensor]:
    labels = _labels(case["labels"])
    s = STUDENT.clone().requires_grad_(True)
    total = sum(part["weight"] * build_loss(part["loss"], **part["params"])(s, TEACHER, labels).total
                for part in case["ours"])
    total.backward()
    return total.detach() + case["teacher_entropy_weight"] * _teacher_entropy(labels), s.grad


@pytest.mark.parametrize("case", FIXTURE["cases"], ids=lambda c: c["call"])
def test_equals_the_anchor_value_and_gradient(case: dict) -> None:
    value, grad = _ours(case)
    assert float(value) == pytest.approx(case["value"], abs=1e-6, rel=1e-6)
    torch.testing.assert_close(grad, torch.tensor(case["grad"]), atol=1e-6, rtol=1e-5)


def test_fixture_covers_every_token_divergence() -> None:
    covered = {part["loss"] for case in FIXTURE["cases"] for part in case["ours"]}
    token_divergences = {e.name for e in loss_entries(family="token") if e.name != "lud-lm"}
    assert covered == set(NAMES) == token_divergences


def test_gjsd_end_points_are_forward_and_reverse_kl_exactly() -> None:
    args = (STUDENT, TEACHER, LABELS)
    for beta, name in ((0.0, "fkl"), (1.0, "rkl")):
        for temperature in (1.0, 3.0):
            got = build_loss("gjsd", beta=beta, temperature=temperature)(*args).total
            want = build_loss(name, ce_weight=0.0, temperature=temperature)(*args).total
            assert torch.equal(got, want)
    inner = [float(build_loss("gjsd", beta=b)(*args).total) for b in (1e-6, 0.5, 1 - 1e-6)]
    assert inner[0] < 1e-4 and inner[2] < 1e-4 and inner[1] > 0.01  # TRL's scaled JSD inside (0, 1)


@pytest.mark.parametrize("name", ("skl", "srkl"))
def test_skew_at_zero_is_the_kl(name: str) -> None:
    kl = "fkl" if name == "skl" else "rkl"
    got = build_loss(name, alpha=0.0)(STUDENT, TEACHER, LABELS).total
    assert torch.equal(got, build_loss(kl, ce_weight=0.0)(STUDENT, TEACHER, LABELS).total)
    assert float(build_loss(name, alpha=1.0)(STUDENT, TEACHER, LABELS).total) == 0.0


def test_default_mix_is_torchtunes_recipe() -> None:
    # torchtune's recipe: (1 - kd_ratio) * CE + kd_ratio * ForwardKLLoss, kd_ratio 0.5
    case = next(c for c in FIXTURE["cases"] if c["call"].startswith("ForwardKLLoss()(") )
    out = build_loss("fkl")(STUDENT, TEACHER, LABELS)
    ce = F.cross_entropy(STUDENT.reshape(-1, STUDENT.shape[-1]), LABELS.reshape(-1), ignore_index=-100)
    kl = case["value"] - float(_teacher_entropy(LABELS))
    assert float(out.total) == pytest.approx(0.5 * float(ce) + 0.5 * kl, abs=1e-6)
    assert out.terms.keys() == {"ce", "fkl"}
    assert build_loss("fkl", ce_weight=0.0)(STUDENT, TEACHER, LABELS).terms.keys() == {"fkl"}


@pytest.mark.parametrize("name", NAMES)
def test_zero_at_the_teacher_and_positive_elsewhere(name: str) -> None:
    pure = build_loss(name, ce_weight=0.0)
    assert float(pure(TEACHER, TEACHER, LABELS).total) == pytest.approx(0.0, abs=1e-6)
    assert float(pure(STUDENT, TEACHER, LABELS).total) > 1e-3


@pytest.mark.parametrize("name", NAMES)
def test_per_row_temperature_and_function_lookup(name: str) -> None:
    s, t = STUDENT.reshape(-1, STUDENT.shape[-1]), TEACHER.reshape(-1, TEACHER.shape[-1])
    fn = token_divergence(name)
    temps = torch.linspace(0.5, 3.0, s.shape[0])
    rows = fn(s, t, temps)
    assert rows.shape == (s.shape[0],)
    for i in (0, 7, s.shape[0] - 1):
        torch.testing.assert_close(rows[i], fn(s[i:i + 1], t[i:i + 1], float(temps[i]))[0])


@pytest.mark.parametrize("name", NAMES)
def test_degenerate_inputs_are_finite(name: str) -> None:
    loss = build_loss(name)
    one = loss(STUDENT[:1, :1], TEACHER[:1, :1], LABELS[1:2, :1])  # one token
    flat = loss(torch.zeros(2, 3, 13, requires_grad=True), torch.zeros(2, 3, 13), LABELS[1:, :3])
    peaked = loss(STUDENT * 1e4, TEACHER * 1e4, LABELS)
    for out in (one, flat, peaked):
        assert torch.isfinite(out.total)


@pytest.mark.parametrize("name", NAMES)
def test_float32_under_autocast(name: str) -> None:
    loss = build_loss(name)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = loss(STUDENT.bfloat16(), TEACHER.bfloat16(), LABELS)
    assert out.total.dtype == torch.float32
    ref = loss(STUDENT.bfloat16().float(), TEACHER.bfloat16().float(), LABELS)
    torch.testing.assert_close(out.total, ref.total)


# -------------------------------------------------------------------- vocabularies and bad input
def test_padded_vocabularies_need_the_explicit_shared_size() -> None:
    v = STUDENT.shape[-1]
    padded_teacher = torch.cat([TEACHER, torch.randn(*TEACHER.shape[:2], 4) + 50], dim=-1)
    with pytest.raises(ValueError, match=r"vocabulary mismatch: student_logits have 13 columns, "
                                         r"teacher_logits 17.*vocab_size"):
        build_loss("fkl")(STUDENT, padded_teacher, LABELS)
    for name in NAMES:
        got = build_loss(name, vocab_size=v)(STUDENT, padded_teacher, LABELS).total
        assert torch.equal(got, build_loss(name)(STUDENT, TEACHER, LABELS).total)
    with pytest.raises(ValueError, match="beyond padding: student_logits have 13 columns.*vocab_size=15"):
        build_loss("rkl", vocab_size=15)(STUDENT, padded_teacher, LABELS)
    with pytest.raises(ValueError, match="targets out of range"):  # a label in the padding rows
        build_loss("fkl", vocab_size=10)(STUDENT, padded_teacher, LABELS.clamp_max(12))
    s, t = shared_vocabulary(STUDENT, padded_teacher, v)
    assert s is STUDENT and torch.equal(t, TEACHER)


@pytest.mark.parametrize(
    "name, params, match",
    [
        ("gjsd", {"beta": 1.5}, r"beta must lie in \[0.0, 1.0\], got 1.5"),
        ("gjsd", {"beta": -0.1}, r"beta must lie in \[0.0, 1.0\]"),
        ("skl", {"alpha": 2}, r"alpha must lie in \[0.0, 1.0\], got 2"),
        ("srkl", {"alpha": float("nan")}, "alpha must be a finite number"),
        ("fkl", {"temperature": 0.0}, "temperature must be a finite number > 0"),
        ("tvd", {"temperature": -1.0}, "temperature must be a finite number > 0"),
        ("rkl", {"ce_weight": 1.5}, r"ce_weight must lie in \[0.0, 1.0\]"),
        ("fkl", {"vocab_size": 1}, "vocab_size must be an int >= 2"),
        ("fkl", {"beta": 0.5}, "unknown parameter 'beta' for loss 'fkl'"),
    ],
)
def test_bad_parameters_are_named(name: str, params: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        build_loss(name, **params)


def test_lookup_errors_are_named() -> None:
    with pytest.raises(ValueError, match="unknown token divergence 'fk'.*Did you mean 'fkl'"):
        token_divergence("fk")
    with pytest.raises(ValueError, match="unknown parameter 'alpha' for token divergence 'gjsd'"):
        token_divergence("gjsd", alpha=0.1)
    with pytest.raises(ValueError, match=r"beta must lie in \[0.0, 1.0\]"):
        token_divergence("gjsd", beta=3)
    with pytest.raises(ValueError, match="temperature must be a finite number > 0"):
        token_divergence("fkl")(STUDENT[0], TEACHER[0], 0.0)


# ---------------------------------------------------------------------------------- compile
@pytest.mark.parametrize("name", NAMES)
def test_compiles_once_for_every_batch_and_epoch(name: str) -> None:
    dynamo = pytest.importorskip("torch._dynamo")
    from torch._dynamo.utils import counters

    loss = build_loss(name, validate=False, ce_weight=0.3)
    dynamo.reset()
    counters.clear()
    compiled = torch.compile(loss, backend="aot_eager")
    g = torch.Generator().manual_seed(3)
    for epoch in (0.0, 1.5, 7.25):
        t = torch.randn(24, 13, generator=g) * 3
        s0 = t + torch.randn(24, 13, generator=g)
        y = torch.randint(0, 13, (24,), generator=g)
        grads = []
        for fn in (compiled, loss):
            s = s0.clone().requires_grad_(True)
            out = fn(s, t, y, epoch=torch.tensor(epoch))
            out.total.backward()
            grads.append((out.total.detach(), s.grad))
        torch.testing.assert_close(grads[0][0], grads[1][0])
        torch.testing.assert_close(grads[0][1], grads[1][1])
    assert sum(counters["graph_break"].values()) == 0, dict(counters["graph_break"])
    assert counters["stats"]["unique_graphs"] == 1


# ------------------------------------------------- what LUD's instance term would call (item 2)
@pytest.mark.parametrize("shape", [(), (1, 1), (24, 1), (1, 13), (24, 13)])
def test_fkl_with_lud_temperatures_is_luds_instance_kl_bit_for_bit(shape: tuple[int, ...]) -> None:
    from lud.losses.lud import instance_kl, weighted_mean  # (after lud.py's split: its new home)

    g = torch.Generator().manual_seed(4)
    zt = torch.randn(24, 13, generator=g) * 3
    zs = zt + torch.randn(24, 13, generator=g)
    temp = 1.0 + 3.0 * torch.rand(shape, generator=g)
    w = torch.rand(24, generator=g)
    per_token = token_divergence("fkl")(zs, zt, temp)
    t_row = temp.expand_as(zs).mean(dim=1) if temp.dim() else temp
    assert torch.equal(weighted_mean(t_row.pow(2) * per_token, w), instance_kl(zs, zt, temp, w))


# -------------------------------------------------------------------- a top-k teacher
@pytest.mark.parametrize("name", ("fkl", "rkl"))
@pytest.mark.parametrize("tail", ("bucket", "uniform"))
def test_top_k_teacher_with_every_class_equals_the_dense_loss(name: str, tail: str) -> None:
    from lud.losses import TopKTeacher

    s = STUDENT.clone().requires_grad_(True)
    dense = build_loss(name)(s, TEACHER, LABELS)
    (g_dense,) = torch.autograd.grad(dense.total, s)
    topk = TopKTeacher.from_logits(TEACHER, STUDENT.shape[-1], temperature=1.0)
    topk = TopKTeacher(topk.indices, topk.log_probs, tail, topk.temperature)
    sparse = build_loss(name)(s, topk, LABELS)
    (g_sparse,) = torch.autograd.grad(sparse.total, s)
    torch.testing.assert_close(sparse.total, dense.total, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(g_sparse, g_dense, atol=1e-6, rtol=1e-5)
    assert sparse.terms.keys() == dense.terms.keys()


def test_top_k_teacher_is_refused_by_divergences_that_need_every_class() -> None:
    from lud.losses import TopKTeacher

    topk = TopKTeacher.from_logits(TEACHER, 4, temperature=1.0)
    for name in ("gjsd", "skl", "srkl", "tvd"):
        with pytest.raises(ValueError, match="top-k teacher"):
            build_loss(name)(STUDENT, topk, LABELS)
    with pytest.raises(ValueError, match="temperature"):
        build_loss("fkl", temperature=2.0)(STUDENT, topk, LABELS)
