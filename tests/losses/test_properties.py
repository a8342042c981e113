"""Property-based tests (hypothesis) for every registered loss and for :mod:`lud.losses.ranking`.

Each test states a property that must hold for *any* input in a described family, and hypothesis
searches that family: batch 1..32, classes 2..50, logit scales 1e-4..1e4 (log-uniform), dtypes
float32 / float64 / bfloat16 / float16 and bf16 autocast, heavy ties, repeated and constant rows.
Examples are derandomised (the same examples on every run, so CI is reproducible) and few, so the
file stays well under a minute on one thread.

A drawn case is a small record (shape, scale, kind, seed); the tensors are built from it with a
seeded :class:`torch.Generator`, so a failure prints a reproducible case.

Tolerances and domains, and why they are what they are
-----------------------------------------------------
* Every loss computes in float32 (``DistillationLoss.forward`` casts). A moved input is built in
  float64 and rounded to float32 once, so each logit moves by up to ``eps32 * M / 2`` for a
  logit magnitude ``M`` (shift included). Terms are compared with ``rtol = 2e-4`` and an
  ``atol`` proportional to ``M`` (:func:`_rounding_atol`, derivation there): the error of a
  ``T^2``-scaled KL grows with the logit magnitude, so no fixed ``atol`` is honest at scale 1e3.
  Shift tests stop at logit scale 1e3.
* Standardised losses: ``standardize_logits`` divides by ``std + eps`` with an absolute
  ``eps = eps32``, so scale invariance holds only to ``eps / std`` relative: the scale tests
  keep the transformed row std within ``[1e-2, 1e3]``, and the tolerance uses ``|x| / std``.
* Invariance inputs are tie-free: MLKD's median masks and LUD's hard ranks are step functions,
  and a tie that the rounding of moved logits breaks either way moves them legitimately.
* LUD is tested on a narrower domain, each restriction measured, none a tolerance knob:
  logit scale >= 0.5 and C >= 3 (see the shift-invariance section); teacher-side moves with
  ``teacher_rank="soft"`` (:func:`_soft_teacher_ranks_if_moved`); draws where the hard-rank
  temperature changed are discarded (:func:`_assume_same_hard_rank_temperature`); z-scored LUD
  without 'peaked' rows (:func:`_well_conditioned_for`). With these, 150-300 random examples
  per test pass repeatedly; ties and degenerate rows are covered by the finiteness tests.
* float16: the exact gradient of a scale-free correlation (DIST, LUD's CDL/SDL, soft ranks)
  grows like 1 / logit scale and can exceed float16's range; an inf gradient in float16 is
  accepted only where the float32 gradient is finite and really beyond 65504.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import pytest
import torch
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from lud.losses import available_losses, build_loss, ranking
from lud.losses.base import LossOutput

# One thread: the CI machine has two cores shared by several jobs; tiny tensors gain nothing.
torch.set_num_threads(1)

FAST = settings(max_examples=20, deadline=None, derandomize=True)
MEDIUM = settings(max_examples=40, deadline=None, derandomize=True)
EPOCH = 30.0  # past DKD's 20-epoch warm-up and CTKD's 10-epoch curriculum: every term is live

KINDS = ("normal", "ties", "repeated_rows", "constant_rows", "all_constant", "peaked")
DTYPES = ("float32", "float64", "bfloat16", "float16", "autocast_bf16")


# --------------------------------------------------------------------------- configurations
LUD_VARIANTS: dict[str, dict[str, Any]] = {
    "dt=off": {"dynamic_temperature": "off"},
    "dt=class": {"dynamic_temperature": "class"},
    "dt=full": {"dynamic_temperature": "full"},
    "thr=running": {"threshold": "running"},
    "thr=fixed": {"threshold": "fixed"},
    "mask=soft": {"mask_type": "soft"},
    "gram=flat": {"gram_reduction": "flat"},
    "rank=pearson": {"rank_method": "pearson"},
    "flat+pearson": {"gram_reduction": "flat", "rank_method": "pearson"},
    "standardize": {"standardize": True},
    "combo": {"dynamic_temperature": "full", "threshold": "running", "mask_type": "soft",
              "gram_reduction": "flat", "standardize": True, "teacher_rank": "soft",
              "mask_direction": "uncertain", "instance_mask": True},
}


def _configs() -> list[tuple[str, dict[str, Any]]]:
    out = [(name, {}) for name in available_losses()]
    out += [("lud", kw) for kw in LUD_VARIANTS.values()]
    return out


def _config_id(cfg: tuple[str, dict[str, Any]]) -> str:
    name, kw = cfg
    if not kw:
        return name
    return f"{name}[{next(k for k, v in LUD_VARIANTS.items() if v is kw)}]"


ALL_CONFIGS = _configs()


def test_every_registered_loss_is_covered() -> None:
    # A loss registered later must not silently escape these properties.
    assert {name for name, _ in ALL_CONFIGS} == set(available_losses())
    assert len(available_losses()) >= 8


# --------------------------------------------------------------------------- input strategy
@dataclass(frozen=True)
class Case:
    """A reproducible input: tensors are a pure function of these fields."""

    batch: int
    classes: int
    scale: float
    student_kind: str
    teacher_kind: str
    seed: int

    def build(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(student, teacher, targets); logits in float64, entries bounded by 5 * scale."""
        g = torch.Generator().manual_seed(self.seed)
        s = _logits(self.batch, self.classes, self.scale, self.student_kind, g)
        t = _logits(self.batch, self.classes, self.scale, self.teacher_kind, g)
        y = torch.randint(0, self.classes, (self.batch,), generator=g)
        return s, t, y


def _logits(b: int, c: int, scale: float, kind: str, g: torch.Generator) -> torch.Tensor:
    # Entries stay within +-5 * scale, so scale 1e4 still fits float16 (max 65504).
    if kind == "ties":  # few distinct integer levels: heavy ties within rows and columns
        x = torch.randint(-2, 3, (b, c), generator=g).double()
    elif kind == "repeated_rows":  # every sample identical: columns are constant
        x = torch.randn(1, c, generator=g, dtype=torch.float64).clamp(-5, 5).expand(b, c).clone()
    elif kind == "constant_rows":  # some rows constant (uniform softmax), others random
        x = torch.randn(b, c, generator=g, dtype=torch.float64).clamp(-5, 5)
        rows = torch.rand(b, generator=g) < 0.5
        x[rows] = torch.randn(int(rows.sum()), 1, generator=g, dtype=torch.float64).clamp(-5, 5)
    elif kind == "all_constant":
        x = torch.full((b, c), float(torch.randn((), generator=g).clamp(-5, 5)),
                       dtype=torch.float64)
    elif kind == "peaked":  # one dominant logit per row (a confident teacher), tie-free
        x = torch.randn(b, c, generator=g, dtype=torch.float64).clamp(-5, 5) * 0.2
        x[torch.arange(b), torch.randint(0, c, (b,), generator=g)] += 4.0
    else:
        x = torch.randn(b, c, generator=g, dtype=torch.float64).clamp(-5, 5)
    return x * scale


def log_uniform(lo: float, hi: float) -> st.SearchStrategy[float]:
    return st.floats(math.log10(lo), math.log10(hi)).map(lambda e: 10.0 ** e)


def cases(
    *,
    kinds: tuple[str, ...] = KINDS,
    min_scale: float = 1e-4,
    max_scale: float = 1e4,
    min_batch: int = 1,
    max_batch: int = 32,
    min_classes: int = 2,
    max_classes: int = 50,
) -> st.SearchStrategy[Case]:
    return st.builds(
        Case,
        batch=st.integers(min_batch, max_batch),
        classes=st.integers(min_classes, max_classes),
        scale=log_uniform(min_scale, max_scale),
        student_kind=st.sampled_from(kinds),
        teacher_kind=st.sampled_from(kinds),
        seed=st.integers(0, 2**31 - 1),
    )


# --------------------------------------------------------------------------- helpers
def _run(loss: torch.nn.Module, s: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> LossOutput:
    return loss(s, t, y, epoch=EPOCH)


def _assert_total_is_sum(out: LossOutput) -> None:
    assert out.terms, "a loss must report at least one term"
    for name, v in out.terms.items():
        assert v.dim() == 0, f"term {name} is not a scalar: {tuple(v.shape)}"
        assert torch.isfinite(v), f"term {name} is {float(v)}"
    assert out.total.dtype == torch.float32
    expected = math.fsum(float(v.detach()) for v in out.terms.values())
    assert math.isclose(float(out.total.detach()), expected, rel_tol=1e-6, abs_tol=1e-6), (
        float(out.total.detach()), {k: float(v.detach()) for k, v in out.terms.items()})


def _close(a: float, b: float, rtol: float, atol: float) -> bool:
    return abs(a - b) <= atol + rtol * max(abs(a), abs(b))


def _assert_terms_close(
    ref: LossOutput, other: LossOutput, *, rtol: float, atol: float, skip: tuple[str, ...] = ()
) -> None:
    assert ref.terms.keys() == other.terms.keys()
    for name in ref.terms:
        if name in skip:
            continue
        a, b = float(ref.terms[name].detach()), float(other.terms[name].detach())
        assert _close(a, b, rtol, atol), f"term {name}: {a!r} vs {b!r}"


def _rounding_atol(*xs: torch.Tensor, standardized: bool = False) -> float:
    """Absolute tolerance for a loss term when its float32 inputs move by rounding only.

    A float32 logit of magnitude M is rounded by up to eps32 * M / 2 = 6e-8 * M; a log-softmax
    difference carries two such errors, and a ``T^2``-scaled KL multiplies log-probability errors
    by up to ``T`` (``T^2 * 1/T``), at most 21 here (CTKD's t_max): ~2.5e-6 * M. ``1e-5 * M``
    leaves a 4x margin. For z-scored inputs the error that matters is relative to the row's std,
    so M is the largest ``|x| / std`` of a row instead of the largest ``|x|``.
    """
    if standardized:
        m = max(float((x.abs().amax(-1) / x.std(-1).clamp_min(1e-300)).max()) for x in xs)
    else:
        m = max(float(x.abs().max()) for x in xs)
    return 1e-5 * (1.0 + m)


def _row_shift(case: Case, g: torch.Generator, x: torch.Tensor) -> torch.Tensor:
    return (torch.rand(x.shape[0], 1, generator=g, dtype=torch.float64) * 20 - 10) * case.scale


# --------------------------------------------------------------------------- finiteness
@pytest.mark.parametrize("cfg", ALL_CONFIGS, ids=_config_id)
@FAST
@given(case=cases(), dtype=st.sampled_from(DTYPES))
# Regression: a one-hot-ish batch whose C x C Gram row for a never-predicted class is
# [0, ..., 0, 5e-43] (subnormal spread); soft_rank's 1/spread overflowed to inf -> NaN gradient.
@example(case=Case(5, 10, 1000.0, "normal", "normal", 0), dtype="float32")
# DIST at logit scale 1e-4 has a true gradient of ~1e5, beyond float16's range (see below).
@example(case=Case(3, 3, 1e-4, "ties", "ties", 424151), dtype="float16")
# Regression: lud-released on one-hot rows; its per-sample temperature divided by a subnormal span
# of cosines (4.6e-43): an inf slope, then inf/NaN temperatures.
@example(case=Case(9, 25, 365.1741272548377, "normal", "normal", 8227), dtype="float32")
def test_finite_loss_and_gradients(cfg: tuple[str, dict[str, Any]], case: Case, dtype: str) -> None:
    """Any shape, scale, dtype, ties or constant rows: finite terms, total = sum of terms, and
    finite gradients on the student logits in the student's own dtype.

    One exception, float16 only: correlation losses (DIST, LUD's CDL/SDL) are nearly invariant
    to the scale of near-uniform predictions, so their exact gradient grows like 1 / logit scale
    (~1e5 for DIST at scale 1e-4) and can exceed float16's maximum, 65504. The loss computes in
    float32 and autograd casts that gradient to float16, where it becomes inf. That is accepted
    only when the float32 gradient is finite and really beyond float16's range.
    """
    name, kw = cfg
    loss = build_loss(name, **kw)
    s64, t64, y = case.build()
    if dtype == "autocast_bf16":
        leaf = s64.float().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            # a matmul under autocast yields bf16 logits, as a real student head would
            s = leaf @ torch.eye(case.classes)
            assert s.dtype == torch.bfloat16
            out = _run(loss, s, t64.to(torch.bfloat16), y)
    else:
        dt = getattr(torch, dtype)
        leaf = s64.to(dt).requires_grad_(True)
        out = _run(loss, leaf, t64.to(dt), y)
    _assert_total_is_sum(out)
    for k, v in out.stats.items():
        assert math.isfinite(v), f"stat {k} = {v}"
    out.total.backward()
    assert leaf.grad is not None and leaf.grad.dtype == leaf.dtype
    if leaf.dtype == torch.float16 and not torch.isfinite(leaf.grad).all():
        ref = leaf.detach().float().requires_grad_(True)
        _run(build_loss(name, **kw), ref, t64.to(torch.float16).float(), y).total.backward()
        assert ref.grad is not None and torch.isfinite(ref.grad).all()
        assert float(ref.grad.abs().max()) >= torch.finfo(torch.float16).max, (
            "float16 gradient is non-finite although the float32 one fits float16")
        return
    assert torch.isfinite(leaf.grad).all(), f"non-finite student gradient: {leaf.grad}"


def test_lud_flat_pearson_gradient_finite_for_underflowing_gram() -> None:
    """Minimal reproducer: the teacher keeps classes 0 and 1 (class mask), the student puts
    ~all its mass on classes 2 and 3, so its kept C x C Gram entries are ~1e-40 (subnormal)."""
    t = torch.tensor([[8.0, 0.0, 0.0, 0.0], [1.0, 6.0, 0.0, 0.0]])
    s = torch.tensor([[0.0, -6.0, 184.0, 0.0], [-3.0, 0.0, 0.0, 184.0]], requires_grad=True)
    loss = build_loss("lud", gram_reduction="flat", rank_method="pearson",
                      dynamic_temperature="off", ce_weight=0.0, instance_weight=0.0,
                      sdl_weight=0.0)
    out = loss(s, t)
    assert torch.isfinite(out.total)
    out.total.backward()
    assert s.grad is not None and torch.isfinite(s.grad).all(), s.grad


# --------------------------------------------------------------------------- shift invariance
# The softmax of a row does not change when a constant is added to it, so neither does any loss
# built from softmaxes, hard ranks of a row or its z-score. Inputs are tie-free: MLKD's median
# masks and LUD's hard teacher ranks, masks and temperatures are step functions, and a tie that
# float32 rounding of the shifted logits breaks one way or the other moves them legitimately.
#
# LUD's domain is narrower, for two measured reasons (not tolerance tuning):
# * logit scale >= 0.5: a Gram entry is sum_c p_ic p_jc, whose variation along a row is of
#   second order in scale / T, so below ~0.5 a row's spread approaches float32 noise (below
#   ~1e-2 it is noise, and the row is declared constant). The scale-free rank correlation then
#   magnifies the rounding of the shifted logits: SDL moved by up to 1e-2 relative at scales
#   0.01-0.5 in a 600-case sweep, by < 3e-5 at scales 0.5-1000.
# * classes >= 3: a z-scored row of two logits is always (+-1/sqrt(2)), so with standardize=True
#   all rows are tied up to rounding and hard ranks of them are rounding noise.
# LUD's class-wise temperatures ('class', 'full') rank *columns* of the logits, which a per-row
# shift would reorder: LUDLoss centres every row first (regression tests below).
# LUD and its presets with rank terms (lud-lm) are checked on well-conditioned inputs (below)
_RANKED_LUD = {"lud", "lud-lm"}
BASELINE_CONFIGS = [c for c in ALL_CONFIGS if c[0] not in _RANKED_LUD]
LUD_SHIFT_CONFIGS = [pytest.param(c, id=_config_id(c)) for c in ALL_CONFIGS if c[0] in _RANKED_LUD]


def _soft_teacher_ranks_if_moved(name: str, kw: dict[str, Any], side: str) -> dict[str, Any]:
    """LUD's default hard teacher ranks, when the *teacher* logits move by rounding.

    Hard ranks of a teacher Gram row are a step function of its entries, and entries within
    float32 rounding of each other occur (hypothesis found B=11, C=11, scale 0.9, two entries
    0.092177017 and 0.092177033 in float64: 2 ulps apart in float32). Rounding of the shifted
    teacher decides such a near-tie either way, and the swap of two ranks moves a row's rho by
    up to 12 / (n (n + 1)). No tolerance describes that honestly, so teacher-side moves are
    checked with teacher_rank="soft" (continuous); student-side moves keep the configuration
    as is (the teacher Gram is then bit-identical, given identical hard-rank temperatures).
    """
    if name == "lud" and side != "student":
        return {**kw, "teacher_rank": "soft"}
    return kw


_T_STATS = ("temperature_min", "temperature_mean", "temperature_max")


def _assume_same_hard_rank_temperature(
    kw: dict[str, Any], ref: LossOutput, moved: LossOutput
) -> None:
    """Skip the draw if LUD's dynamic temperature differs between the two calls.

    The temperature comes from *hard* ranks of the logit rows: a step function. Two logits of a
    row within float32 rounding of each other (a few draws in a thousand at C = 50) are ordered
    by the rounding of the moved logits, and the temperature jumps. Such draws say nothing
    about invariance, and are discarded. A systematic violation is still caught: the
    temperatures would then differ on most draws and hypothesis fails the test for filtering
    too much.
    """
    assume(all(ref.stats[k] == moved.stats[k] for k in _T_STATS if k in ref.stats))


def _well_conditioned_for(name: str, kw: dict[str, Any], case: Case) -> Case:
    """``case`` with 'peaked' rows replaced by 'normal' ones for z-scored LUD.

    A z-scored peaked row is one pattern (the peak near sqrt(C), the rest near -1/sqrt(C)) plus
    noise 20x smaller; two samples peaked on the same class give nearly equal probability rows,
    and with B = 3 a whole Gram row is constant to ~1e-3 of its magnitude. Its correlation then
    magnifies float32 rounding ~1000-fold (found by hypothesis: B = C = 3, SDL 0.5124 vs 0.5140).
    That is conditioning of a correlation of a near-constant vector, not a broken invariance.
    """
    if name == "lud" and kw.get("standardize"):
        return replace(case, student_kind="normal", teacher_kind="normal")
    return case


def _check_shift(cfg: tuple[str, dict[str, Any]], case: Case, side: str) -> None:
    name, kw = cfg
    kw = _soft_teacher_ranks_if_moved(name, kw, side)
    case = _well_conditioned_for(name, kw, case)
    s, t, y = case.build()
    g = torch.Generator().manual_seed(case.seed + 1)
    s2 = s + _row_shift(case, g, s) if side in ("student", "both") else s
    t2 = t + _row_shift(case, g, t) if side in ("teacher", "both") else t
    # Fresh modules: the running threshold must not carry state from one call to the next.
    ref = _run(build_loss(name, **kw), s.float(), t.float(), y)
    shifted = _run(build_loss(name, **kw), s2.float(), t2.float(), y)
    _assume_same_hard_rank_temperature(kw, ref, shifted)
    _assert_terms_close(ref, shifted, rtol=2e-4, atol=_rounding_atol(s, t, s2, t2))


@pytest.mark.parametrize("cfg", BASELINE_CONFIGS, ids=_config_id)
@FAST
@given(case=cases(kinds=("normal", "peaked"), min_scale=1e-4, max_scale=1e3),
       side=st.sampled_from(("student", "teacher", "both")))
def test_baseline_losses_shift_invariant(cfg: tuple[str, dict[str, Any]], case: Case,
                                         side: str) -> None:
    _check_shift(cfg, case, side)


@pytest.mark.parametrize("cfg", LUD_SHIFT_CONFIGS)
@FAST
@given(case=cases(kinds=("normal", "peaked"), min_scale=0.5, max_scale=1e3, min_classes=3),
       side=st.sampled_from(("student", "teacher", "both")))
def test_lud_shift_invariant(cfg: tuple[str, dict[str, Any]], case: Case, side: str) -> None:
    _check_shift(cfg, case, side)


@pytest.mark.parametrize("mode", ["class", "full"])
def test_lud_class_temperature_shift_invariant(mode: str) -> None:
    """Minimal reproducer: two samples, three classes, student row 1 shifted by +10.

    Column ranks of the student go from [[1, 2, 2], [2, 1, 1]] to [[1, 1, 1], [2, 2, 2]], so the
    per-class correlations flip from [1, -1, 1] to [1, 1, -1] and the per-class temperatures with
    them; the instance term goes from 1.81 to 17.56 (mode 'class'). A per-class temperature also
    breaks the shift invariance of softmax(z / T_c) itself, so centring the rows for the
    correlation alone is not enough. Fix: in LUDLoss.compute, centre zs and zt along dim 1
    (``z - z.mean(1, keepdim=True)``) before the temperature correlation and before every
    division by a class-varying temperature (a no-op for 'off' and 'sample').
    """
    s = torch.tensor([[0.0, 1.0, 2.0], [2.0, 0.0, 1.0]])
    t = torch.tensor([[0.0, 1.0, 2.0], [1.0, 2.0, 0.0]])
    y = torch.tensor([2, 1])
    shift = torch.tensor([[0.0], [10.0]])
    loss = build_loss("lud", dynamic_temperature=mode)
    a, b = _run(loss, s, t, y), _run(loss, s + shift, t, y)
    _assert_terms_close(a, b, rtol=2e-4, atol=1e-5)


# --------------------------------------------------------------------------- standardisation
# z-scoring both rows makes the distillation terms invariant to per-row shift *and* positive
# scale of either side. CE stays on raw logits (skipped). MLKD+LS standardises only its instance
# term (the Gram alignments use raw logits, as in the LS paper's code), and its default
# mask_mode="scale" multiplies by a kept fraction taken from raw teacher confidences, so MLKD is
# checked with mask_mode="none" on that term alone.
STANDARDIZED: list[tuple[str, dict[str, Any], tuple[str, ...]]] = [
    ("kd+ls", {}, ("ce",)),
    ("kd", {"standardize": True}, ("ce",)),
    ("dkd", {"standardize": True}, ("ce",)),
    ("ctkd", {"standardize": True}, ("ce",)),
    ("mlkd", {"standardize": True, "mask_mode": "none"}, ("ce", "class", "batch")),
    ("lud", {"standardize": True}, ("ce",)),
    ("lud", {"standardize": True, "dynamic_temperature": "full", "mask_type": "soft",
             "gram_reduction": "flat", "teacher_rank": "soft"}, ("ce",)),
    ("lud", {"standardize": True, "rank_method": "pearson", "dynamic_temperature": "class"},
     ("ce",)),
]


@pytest.mark.parametrize("name,kw,skip", STANDARDIZED,
                         ids=[f"{n}{sorted(k.items())}" for n, k, _ in STANDARDIZED])
@FAST
@given(case=cases(kinds=("normal", "peaked"), min_scale=1e-1, max_scale=1e2, min_classes=3),
       side=st.sampled_from(("student", "teacher", "both")))
def test_standardized_losses_shift_and_scale_invariant(
    name: str, kw: dict[str, Any], skip: tuple[str, ...], case: Case, side: str
) -> None:
    case = _well_conditioned_for(name, kw, case)
    s, t, y = case.build()
    g = torch.Generator().manual_seed(case.seed + 2)

    def affine(x: torch.Tensor) -> torch.Tensor:
        # per-row positive factor in [0.1, 10]: the row std stays within [1e-2, 1e3]; the shift
        # (up to 10x the original scale, applied before the factor) scales with the row
        a = 10.0 ** (torch.rand(x.shape[0], 1, generator=g, dtype=torch.float64) * 2 - 1)
        return a * (x + _row_shift(case, g, x))

    s2 = affine(s) if side in ("student", "both") else s
    t2 = affine(t) if side in ("teacher", "both") else t
    kw = _soft_teacher_ranks_if_moved(name, kw, side)
    ref = _run(build_loss(name, **kw), s.float(), t.float(), y)
    moved = _run(build_loss(name, **kw), s2.float(), t2.float(), y)
    _assume_same_hard_rank_temperature(kw, ref, moved)
    atol = _rounding_atol(s, t, s2, t2, standardized=True)
    _assert_terms_close(ref, moved, rtol=2e-4, atol=atol, skip=skip)


# --------------------------------------------------------------------------- LUD statistics
@MEDIUM
@given(
    case=cases(),
    mode=st.sampled_from(("off", "sample", "class", "full")),
    tmap=st.sampled_from(("paper", "paper_normalized", "released")),
    threshold=st.sampled_from(("batch", "running", "fixed")),
    mask_type=st.sampled_from(("hard", "soft")),
    direction=st.sampled_from(("confident", "uncertain")),
    t_range=st.tuples(st.floats(0.1, 10.0), st.floats(0.0, 10.0)),
    quantile=st.floats(0.0, 1.0),
    fixed=st.floats(0.0, 1.0),
    train=st.booleans(),
)
def test_lud_kept_fractions_and_temperatures_in_range(
    case: Case, mode: str, tmap: str, threshold: str, mask_type: str, direction: str,
    t_range: tuple[float, float], quantile: float, fixed: float, train: bool,
) -> None:
    t_min, t_max = t_range[0], t_range[0] + t_range[1]
    loss = build_loss("lud", dynamic_temperature=mode, temperature_map=tmap, threshold=threshold,
                      mask_type=mask_type, mask_direction=direction, t_min=t_min, t_max=t_max,
                      quantile=quantile, fixed_threshold=fixed)
    loss.train(train)
    s, t, y = case.build()
    for _ in range(2):  # the second call sees an initialised running threshold
        st_ = _run(loss, s.float(), t.float(), y).stats
        for key in ("kept_samples", "kept_classes"):
            assert 0.0 <= st_[key] <= 1.0, (key, st_[key])
        if mode == "off":
            assert st_["temperature_min"] == st_["temperature_max"] == pytest.approx(4.0)
        else:
            tol = 1e-6 * t_max
            assert t_min - tol <= st_["temperature_min"] <= st_["temperature_mean"] + tol
            assert st_["temperature_mean"] <= st_["temperature_max"] + tol
            assert st_["temperature_max"] <= t_max + tol


# --------------------------------------------------------------------------- ranking
def _rows(case: Case) -> torch.Tensor:
    return case.build()[0]


@MEDIUM
@given(case=cases(), other=cases(), backend=st.sampled_from(("pairwise", "linear", "hard")),
       strength=log_uniform(1e-4, 10.0), dtype=st.sampled_from(("float32", "float64", "bfloat16",
                                                                 "float16")))
def test_spearman_bounded_symmetric_and_finite(
    case: Case, other: Case, backend: str, strength: float, dtype: str
) -> None:
    dt = getattr(torch, dtype)
    a = _rows(case).to(dt)
    b = _logits(case.batch, case.classes, other.scale, other.student_kind,
                torch.Generator().manual_seed(other.seed)).to(dt)
    a.requires_grad_(backend != "hard")
    r = ranking.spearman(a, b, strength=strength, backend=backend)
    assert r.shape == (case.batch,)
    assert torch.isfinite(r).all()
    assert ((r >= -1.0) & (r <= 1.0)).all()
    r_ba = ranking.spearman(b, a.detach(), strength=strength, backend=backend)
    torch.testing.assert_close(r.detach(), r_ba, rtol=0.0, atol=1e-6)
    if backend != "hard":
        weights = torch.linspace(-1, 1, r.numel(), dtype=r.dtype)
        (r * weights).sum().backward()
        assert a.grad is not None and a.grad.dtype == dt
        if dt == torch.float16 and not torch.isfinite(a.grad).all():
            # Ranks are scale-free, so the exact gradient is ~1 / (strength * std): at std 1e-4
            # and strength 1e-2 that is beyond float16's 65504 (the same exception as in
            # test_finite_loss_and_gradients). Accept inf only where float32 agrees it is out
            # of range.
            a32 = a.detach().float().requires_grad_(True)
            r32 = ranking.spearman(a32, b.float(), strength=strength, backend=backend)
            (g32,) = torch.autograd.grad((r32 * weights).sum(), a32)
            assert torch.isfinite(g32).all()
            assert float(g32.abs().max()) >= torch.finfo(torch.float16).max
        else:
            assert torch.isfinite(a.grad).all()
    p = ranking.pearson(a.detach(), b)
    assert torch.isfinite(p).all() and ((p >= -1.0) & (p <= 1.0)).all()


@MEDIUM
@given(case=cases(kinds=("normal", "ties", "peaked", "constant_rows")))
def test_spearman_of_a_with_itself_is_one(case: Case) -> None:
    a = _rows(case).float()
    r = ranking.spearman(a, a, backend="hard")
    fin = torch.finfo(torch.float32)
    spread = (a - a.mean(-1, keepdim=True)).abs().amax(-1)
    # "constant" means constant up to the module's rounding tolerance (32 ulps of the row's
    # magnitude, see lud.losses.ranking): those rows correlate 0 by definition.
    clearly_varying = spread > 64 * fin.eps * a.abs().amax(-1)
    constant = spread == 0
    torch.testing.assert_close(r[clearly_varying], torch.ones_like(r[clearly_varying]),
                               rtol=0, atol=1e-6)
    assert (r[constant] == 0).all()


# Strictly increasing maps, applied in float64 on inputs whose values are integers in [-20, 20]
# scaled into a moderate range, so that the image keeps every strict order and every tie.
MONOTONE = {
    "affine": lambda x: 3.0 * x - 7.0,
    "cube": lambda x: x ** 3,
    "exp": torch.exp,
    "sinh": torch.sinh,
    "atan": torch.atan,
    "cube+x": lambda x: 0.1 * x ** 3 + x,
}


@MEDIUM
@given(
    batch=st.integers(1, 8),
    n=st.integers(2, 40),
    seed=st.integers(0, 2**31 - 1),
    fa=st.sampled_from(sorted(MONOTONE)),
    fb=st.sampled_from(sorted(MONOTONE)),
)
def test_spearman_invariant_to_increasing_transforms(
    batch: int, n: int, seed: int, fa: str, fb: str
) -> None:
    g = torch.Generator().manual_seed(seed)
    a = torch.randint(-20, 21, (batch, n), generator=g).double() / 5.0  # within [-4, 4], ties
    b = torch.randint(-20, 21, (batch, n), generator=g).double() / 5.0
    # Map each distinct value once and gather: torch's vectorised float64 sinh/exp can differ in
    # the last bit between SIMD lanes and the scalar tail, which would break exact ties.
    ua, ia = a.unique(return_inverse=True)
    ub, ib = b.unique(return_inverse=True)
    ta, tb = MONOTONE[fa](ua)[ia], MONOTONE[fb](ub)[ib]

    def order(x: torch.Tensor) -> torch.Tensor:
        return torch.sign(x.unsqueeze(-1) - x.unsqueeze(-2))

    # every strict order and every tie survives the float64 evaluation of the map
    assert torch.equal(order(ta), order(a)) and torch.equal(order(tb), order(b))
    # hard backend: identical ranks, hence bit-identical correlations
    assert torch.equal(ranking.spearman(a, b, backend="hard"),
                       ranking.spearman(ta, tb, backend="hard"))
    # soft backend at a strength far below the smallest gap of the standardised values: the
    # sigmoids are saturated (error ~ n * exp(-50)), so soft = hard up to float rounding
    gaps = []
    for x in (a, b, ta, tb):
        z = ranking._standardize(x, -1).sort(-1).values.diff(dim=-1)
        gaps.append(z[z > 0].min() if (z > 0).any() else torch.tensor(1.0, dtype=z.dtype))
    strength = float(min(gaps)) / 50
    soft = ranking.spearman(ta, tb, backend="pairwise", strength=strength)
    torch.testing.assert_close(soft, ranking.spearman(a, b, backend="hard"), rtol=0, atol=1e-9)


@MEDIUM
@given(case=cases(), strength=log_uniform(1e-4, 10.0),
       backend=st.sampled_from(("pairwise", "linear", "hard")), standardize=st.booleans())
def test_soft_rank_is_permutation_equivariant(
    case: Case, strength: float, backend: str, standardize: bool
) -> None:
    x = _rows(case)
    perm = torch.randperm(case.classes, generator=torch.Generator().manual_seed(case.seed))
    r = ranking.soft_rank(x, strength=strength, backend=backend, standardize=standardize)
    r_perm = ranking.soft_rank(x[:, perm], strength=strength, backend=backend,
                               standardize=standardize)
    # float64 input: the only difference is the summation order of n terms of size <= 1
    torch.testing.assert_close(r_perm, r[:, perm], rtol=0, atol=1e-9 * case.classes)


@MEDIUM
@given(case=cases(), strength=log_uniform(1e-4, 1e3),
       dtype=st.sampled_from(("float32", "float64", "bfloat16", "float16")),
       standardize=st.booleans(), backend=st.sampled_from(("pairwise", "linear")))
def test_soft_ranks_sum_to_n_n_plus_1_over_2(
    case: Case, strength: float, dtype: str, standardize: bool, backend: str
) -> None:
    x = _rows(case).to(getattr(torch, dtype)).requires_grad_(True)
    r = ranking.soft_rank(x, strength=strength, backend=backend, standardize=standardize)
    n = case.classes
    assert ((r >= 1 - 1e-4) & (r <= n + 1e-4)).all()  # each sigmoid is in [0, 1]
    # sum_i sum_j tanh(u_i - u_j) cancels pairwise (tanh is odd; likewise k(d) + k(-d) = 1 for
    # the linear kernel); float32 rounding of n^2 terms of size <= 1 leaves at most ~n^2 * eps
    tol = 1e-12 if r.dtype == torch.float64 else 4 * n * n * torch.finfo(torch.float32).eps
    torch.testing.assert_close(r.sum(-1), torch.full((case.batch,), n * (n + 1) / 2,
                                                     dtype=r.dtype), rtol=0, atol=tol)
    r.sum().backward()  # a constant of x: its gradient is zero, and must be finite
    assert x.grad is not None and torch.isfinite(x.grad).all()


@MEDIUM
@given(case=cases(kinds=("normal", "ties", "peaked")),
       dtype=st.sampled_from(("float32", "float64")), exponent=st.floats(0.0, 1.0))
def test_ranking_finite_down_to_subnormal_magnitudes(case: Case, dtype: str,
                                                     exponent: float) -> None:
    """Rows scaled into (and just above) the subnormal range: finite correlations and gradients.

    Regression for the NaN gradient LUD's CDL produced on a Gram row ``[0, ..., 0, 5e-43]``:
    ``1 / spread`` overflowed. Such rows are now treated as constant (zero gradient).
    """
    dt = getattr(torch, dtype)
    fin = torch.finfo(dt)
    # magnitudes from the smallest subnormal up to ~1e6 * sqrt(tiny), log-uniformly
    lo, hi = math.log10(fin.smallest_normal * fin.eps), math.log10(math.sqrt(fin.tiny)) + 6
    x64, y64, _ = case.build()
    unit = x64 / x64.abs().amax().clamp_min(1e-300)
    a = (unit * 10.0 ** (lo + exponent * (hi - lo))).to(dt).requires_grad_(True)
    b = y64.to(dt)
    for r in (ranking.soft_rank(a, backend="pairwise", strength=0.1),
              ranking.spearman(a, b, backend="pairwise", strength=0.1),
              ranking.soft_rank(a, backend="linear", strength=0.1),
              ranking.spearman(a, b, backend="linear", strength=0.1),
              ranking.pearson(a, b)):
        assert torch.isfinite(r).all()
        (grad,) = torch.autograd.grad((r * torch.linspace(-1, 1, r.shape[-1], dtype=r.dtype)).sum(),
                                      a)
        assert torch.isfinite(grad).all(), grad
