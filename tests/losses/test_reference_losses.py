"""lud-released, WTTM, RLD and two-view MLKD equal their authors' released code on fixed logits.

The fixtures hold values only: inputs and the outputs of the released functions (run once in a
scratch copy, never committed; each fixture's ``generator`` names the repository, commit, file
and call). Also: the two-view calling convention of :class:`lud.losses.base.DistillationLoss`.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from lud.losses import available_losses, build_loss
from lud.losses.lud_released import released_sample_temperatures
from lud.losses.rld import rld_terms
from lud.losses.standardize import standardize_logits
from lud.losses.wttm import wttm_divergence

ROOT = next(p for p in Path(__file__).resolve().parents if (p / "pyproject.toml").is_file())
FIXTURES = ROOT / "tests" / "fixtures"
REL = 1e-5  # float32 values computed by two different but equivalent formulas
ABS = 1e-6


def _load(name: str) -> dict:
    return json.loads((FIXTURES / name).read_text())


def _cases(name: str) -> list[tuple[dict, dict[str, torch.Tensor]]]:
    data = _load(name)
    out = []
    for case in data["cases"]:
        x = {k: torch.tensor(v) for k, v in data["inputs"][case["input"]].items()}
        x["targets"] = x["targets"].long()
        out.append((case, x))
    return out


def _ids(cases: list) -> list[str]:
    return [f"{i}:{tuple(x['targets'].shape)}:{sorted(c.get('params', {}).items())}"
            for i, (c, x) in enumerate(cases)]


CSKD = _cases("cskd_reference.json")
WTTM = _cases("wttm_reference.json")
RLD = _cases("rld_reference.json")
MLKD2 = _cases("mlkd_two_view_reference.json")


def test_fixtures_name_their_source() -> None:
    for name in ("cskd_reference.json", "wttm_reference.json", "rld_reference.json",
                 "mlkd_two_view_reference.json"):
        gen = _load(name)["generator"]
        assert gen["repo"].startswith("github.com/") and len(gen["commit"]) == 40
    assert {tuple(x["student_weak"].shape) for _, x in CSKD} >= {(16, 100), (12, 100), (5, 7)}


# ------------------------------------------------------------------ lud-released (CSKD)
@pytest.mark.parametrize("case,x", CSKD, ids=_ids(CSKD))
def test_lud_released_equals_release_two_views(case: dict, x: dict) -> None:
    loss = build_loss("lud-released", two_views=True, **case["params"])
    out = loss(x["student_weak"], x["teacher_weak"], x["targets"],
               strong_student_logits=x["student_strong"],
               strong_teacher_logits=x["teacher_strong"])
    assert out.terms.keys() == case["terms"].keys()
    for k, v in case["terms"].items():
        assert float(out.terms[k]) == pytest.approx(v, rel=REL, abs=ABS), k
    # The release's own grouping of the same terms.
    d, t = case["released_losses_dict"], out.terms
    assert float(t["ce"] + t["ce_strong"]) == pytest.approx(d["loss_ce"], rel=REL)
    assert float(t["cs"] + t["cs_strong"]) == pytest.approx(d["loss_kd"], rel=REL, abs=ABS)
    tau = released_sample_temperatures(x["student_weak"], x["teacher_weak"],
                                       case["params"]["low_temperature"],
                                       case["params"]["high_temperature"])
    torch.testing.assert_close(tau, torch.tensor(case["sample_temperature"]), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case,x", CSKD, ids=_ids(CSKD))
def test_lud_released_one_view_is_the_weak_terms(case: dict, x: dict) -> None:
    out = build_loss("lud-released", **case["params"])(
        x["student_weak"], x["teacher_weak"], x["targets"])
    assert set(out.terms) == {"ce", "cs", "cc", "bc"}
    for k, v in out.terms.items():
        assert float(v) == pytest.approx(case["terms"][k], rel=REL, abs=ABS), k


def test_lud_released_temperature_extremes_and_flat_batch() -> None:
    g = torch.Generator().manual_seed(3)
    s, t = torch.randn(9, 10, generator=g), torch.randn(9, 10, generator=g)
    tau = released_sample_temperatures(s, t, 2.0, 6.0)
    cos = F.cosine_similarity(F.softmax(s, 1), F.softmax(t, 1))
    assert float(tau[cos.argmax()]) == pytest.approx(2.0)  # most similar -> lowest
    assert float(tau[cos.argmin()]) == pytest.approx(6.0)
    # One sample (c_min == c_max): the release divides 0 by 0; here the midpoint.
    one = released_sample_temperatures(s[:1], t[:1], 2.0, 6.0)
    assert one.tolist() == [4.0]


def test_lud_released_strong_view_uses_weak_view_temperatures() -> None:
    # Doubling the strong teacher's logits changes cs_strong but not the weak-view terms.
    g = torch.Generator().manual_seed(4)
    s, t, y = torch.randn(6, 8, generator=g), torch.randn(6, 8, generator=g), torch.arange(6)
    s2, t2 = torch.randn(6, 8, generator=g), torch.randn(6, 8, generator=g)
    loss = build_loss("lud-released", two_views=True)
    a = loss(s, t, y, strong_student_logits=s2, strong_teacher_logits=t2)
    b = loss(s, t, y, strong_student_logits=s2, strong_teacher_logits=2 * t2)
    for k in ("ce", "cs", "cc", "bc", "ce_strong"):
        assert float(a.terms[k]) == float(b.terms[k]), k
    assert float(a.terms["cs_strong"]) != float(b.terms["cs_strong"])
    # ce_on_both_views=False drops the strong CE and nothing else.
    c = build_loss("lud-released", two_views=True, ce_on_both_views=False)(
        s, t, y, strong_student_logits=s2, strong_teacher_logits=t2)
    assert "ce_strong" not in c.terms and float(c.terms["cs_strong"]) == float(a.terms["cs_strong"])


# ------------------------------------------------------------------ WTTM
@pytest.mark.parametrize("case,x", WTTM, ids=_ids(WTTM))
def test_wttm_equals_release(case: dict, x: dict) -> None:
    got = wttm_divergence(x["student"], x["teacher"], case["params"]["gamma"])
    assert float(got) == pytest.approx(case["wttm"], rel=REL, abs=ABS)
    out = build_loss("wttm", gamma=case["params"]["gamma"], beta=3.0, ce_weight=0.5)(
        x["student"], x["teacher"], x["targets"])
    assert float(out.terms["wttm"]) == pytest.approx(3.0 * case["wttm"], rel=REL, abs=ABS)
    ce = F.cross_entropy(x["student"], x["targets"])
    assert float(out.terms["ce"]) == pytest.approx(0.5 * float(ce), rel=1e-6)


def test_wttm_gamma_one_is_plain_kl_and_flat_teacher_weighs_most() -> None:
    g = torch.Generator().manual_seed(5)
    s, t = torch.randn(4, 10, generator=g), torch.randn(4, 10, generator=g)
    kl = F.kl_div(F.log_softmax(s, 1), F.log_softmax(t, 1), reduction="batchmean", log_target=True)
    assert float(wttm_divergence(s, t, 1.0)) == pytest.approx(float(kl), rel=1e-6)
    y = torch.zeros(4, dtype=torch.long)
    flat = build_loss("wttm", gamma=0.25)(s, torch.zeros(4, 10), y).stats["weight_mean"]
    sharp = build_loss("wttm", gamma=0.25)(s, 10 * t, y).stats["weight_mean"]
    assert flat == pytest.approx(10 ** 0.75, rel=1e-6) and sharp < flat  # C^(1-γ) for uniform


# ------------------------------------------------------------------ RLD
@pytest.mark.parametrize("case,x", RLD, ids=_ids(RLD))
def test_rld_equals_release(case: dict, x: dict) -> None:
    p = case["params"]
    out = build_loss("rld", **p)(x["student"], x["teacher"], x["targets"], epoch=case["epoch"])
    d = case["released_losses_dict"]
    assert float(out.terms["ce"]) == pytest.approx(d["loss_ce"], rel=REL)
    assert float(out.terms["scd"] + out.terms["mcd"]) == pytest.approx(d["loss_kd"], rel=REL, abs=ABS)
    s, t = x["student"], x["teacher"]
    if p["standardize"]:
        s, t = standardize_logits(s, eps=1e-7), standardize_logits(t, eps=1e-7)
    scd, mcd = rld_terms(s, t, x["targets"], p["temperature"], p["alpha_temperature"])
    assert float(scd) == pytest.approx(case["scd"], rel=REL, abs=ABS)
    assert float(mcd) == pytest.approx(case["mcd"], rel=REL, abs=ABS)


def test_rld_masks_classes_the_teacher_ranks_above_the_label() -> None:
    # Changing the student on a class the teacher ranks above the label leaves MCD unchanged;
    # a class ranked below it changes MCD.
    t = torch.tensor([[5.0, 3.0, 1.0, 0.0, -1.0]])
    s = torch.tensor([[0.5, 0.1, 0.3, -0.2, 0.4]])
    y = torch.tensor([1])
    base = rld_terms(s, t, y, 4.0, 4.0)[1]
    above = s.clone()
    above[0, 0] += 3.0
    below = s.clone()
    below[0, 3] += 3.0
    assert float(rld_terms(above, t, y, 4.0, 4.0)[1]) == pytest.approx(float(base), abs=1e-7)
    assert float(rld_terms(below, t, y, 4.0, 4.0)[1]) != pytest.approx(float(base), abs=1e-4)
    # Teacher puts the label last: nothing left to match, MCD is 0.
    assert float(rld_terms(s, t, torch.tensor([4]), 4.0, 4.0)[1]) == pytest.approx(0.0, abs=1e-7)


def test_rld_warmup_ramps_like_dkd() -> None:
    g = torch.Generator().manual_seed(6)
    s, t, y = torch.randn(5, 6, generator=g), torch.randn(5, 6, generator=g), torch.arange(5)
    loss = build_loss("rld")
    full = loss(s, t, y, epoch=40.0)
    half = loss(s, t, y, epoch=10.0)
    assert float(half.terms["scd"]) == pytest.approx(0.5 * float(full.terms["scd"]), rel=1e-6)
    assert float(half.terms["mcd"]) == pytest.approx(0.5 * float(full.terms["mcd"]), rel=1e-6)
    assert float(loss(s, t, y, epoch=0.0).terms["mcd"]) == 0.0


# ------------------------------------------------------------------ MLKD, two views
@pytest.mark.parametrize("case,x", MLKD2, ids=[str(i) for i in range(len(MLKD2))])
def test_mlkd_two_views_equal_release(case: dict, x: dict) -> None:
    out = build_loss("mlkd", two_views=True)(
        x["student_weak"], x["teacher_weak"], x["targets"],
        strong_student_logits=x["student_strong"], strong_teacher_logits=x["teacher_strong"])
    t, d = out.terms, case["released_losses_dict"]
    assert float(t["ce"] + t["ce_strong"]) == pytest.approx(d["loss_ce"], rel=REL)
    assert float(t["instance"] + t["instance_strong"]) == pytest.approx(d["loss_kd"], rel=REL)
    assert float(t["class"]) == pytest.approx(d["loss_cc"], rel=REL, abs=ABS)
    assert float(t["batch"]) == pytest.approx(d["loss_bc"], rel=REL, abs=ABS)
    # The weak-view terms are the one-view loss, unchanged.
    one = build_loss("mlkd")(x["student_weak"], x["teacher_weak"], x["targets"])
    for k, v in one.terms.items():
        assert float(t[k]) == float(v), k


def test_mlkd_strong_temperatures_all_on_strong_view_when_asked() -> None:
    g = torch.Generator().manual_seed(7)
    s, t, y = torch.randn(6, 8, generator=g), torch.randn(6, 8, generator=g), torch.arange(6)
    s2, t2 = torch.randn(6, 8, generator=g), torch.randn(6, 8, generator=g)
    out = build_loss("mlkd", two_views=True, released_strong_temperatures=False)(
        s, t, y, strong_student_logits=s2, strong_teacher_logits=t2)
    want = sum(T * T * F.kl_div(F.log_softmax(s2 / T, 1), F.log_softmax(t2 / T, 1),
                                reduction="batchmean", log_target=True)
               for T in (4.0, 3.0, 5.0, 2.0, 6.0))
    assert float(out.terms["instance_strong"]) == pytest.approx(0.9 * float(want), rel=1e-5)


# ------------------------------------------------------------------ the two-view call
def _views(seed: int = 8, b: int = 6, c: int = 8):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, c, generator=g), torch.randn(b, c, generator=g),
            torch.randint(0, c, (b,), generator=g), torch.randn(b, c, generator=g),
            torch.randn(b, c, generator=g))


@pytest.mark.parametrize("name", ["lud-released", "mlkd"])
def test_two_view_loss_given_one_view_is_refused(name: str) -> None:
    s, t, y, _, _ = _views()
    loss = build_loss(name, two_views=True)
    assert loss.two_views and loss.ce_on_both_views
    with pytest.raises(ValueError, match="takes two views"):
        loss(s, t, y)


@pytest.mark.parametrize("name", available_losses())
def test_one_view_loss_given_two_views_is_refused(name: str) -> None:
    s, t, y, s2, t2 = _views()
    loss = build_loss(name)
    assert not loss.two_views
    with pytest.raises(ValueError, match="takes one view"):
        loss(s, t, y, strong_student_logits=s2, strong_teacher_logits=t2)


def test_strong_view_needs_both_tensors_of_the_same_shape() -> None:
    s, t, y, s2, t2 = _views()
    loss = build_loss("lud-released", two_views=True)
    with pytest.raises(ValueError, match="strong_teacher_logits is None"):
        loss(s, t, y, strong_student_logits=s2)
    with pytest.raises(ValueError, match="strong_student_logits is None"):
        loss(s, t, y, strong_teacher_logits=t2)
    with pytest.raises(ValueError, match="batch-size mismatch"):
        loss(s, t, y, strong_student_logits=s2, strong_teacher_logits=t2[:3])
    nan = s2.clone()
    nan[0, 0] = float("nan")
    with pytest.raises(ValueError, match="student_logits contain NaN"):
        loss(s, t, y, strong_student_logits=nan, strong_teacher_logits=t2)


@pytest.mark.parametrize("name", ["lud-released", "mlkd"])
def test_two_views_gradients_reach_both_student_views_not_teachers(name: str) -> None:
    s, t, y, s2, t2 = _views()
    s, s2, t2 = s.requires_grad_(True), s2.requires_grad_(True), t2.requires_grad_(True)
    out = build_loss(name, two_views=True)(s, t, y, strong_student_logits=s2,
                                           strong_teacher_logits=t2, epoch=3.0)
    torch.testing.assert_close(out.total, sum(out.terms.values()))
    out.total.backward()
    assert torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0
    assert torch.isfinite(s2.grad).all() and s2.grad.abs().sum() > 0
    assert t2.grad is None


@pytest.mark.parametrize("name", ["lud-released", "mlkd"])
def test_two_views_bf16_and_batch_of_one(name: str) -> None:
    s, t, y, s2, t2 = _views(b=1)
    out = build_loss(name, two_views=True)(s.bfloat16(), t.bfloat16(), y,
                                           strong_student_logits=s2.bfloat16(),
                                           strong_teacher_logits=t2.bfloat16())
    assert out.total.dtype == torch.float32
    assert all(torch.isfinite(v) for v in out.terms.values())
    const = build_loss(name, two_views=True)(torch.zeros(4, 5), torch.zeros(4, 5), y.repeat(4) % 5,
                                             strong_student_logits=torch.zeros(4, 5),
                                             strong_teacher_logits=torch.ones(4, 5))
    assert all(torch.isfinite(v) for v in const.terms.values())
