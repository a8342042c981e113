"""LUD's terms as pure functions: the rank (Spearman) terms and the instance KL.

* **CDL**: rows ``c`` of the C×C Gram matrices ``Pᵀ P`` — weighted mean of ``1 − ρ_c`` with row
  weights ``mask_c·v_c`` (:func:`category_spearman_loss`). **SDL**: the same on the B×B matrices
  ``P Pᵀ`` with ``mask_b·u_b`` (:func:`sample_spearman_loss`). Both through
  :func:`gram_correlation_loss`.
* **inter / intra** (first-order): ``1 − ρ`` between rows of ``P_S`` and ``P_T`` and between
  their columns (:func:`relation_rank_loss`).
* **instance** ``T_b²·KL(p_T ‖ p_S)`` per sample, weighted (:func:`instance_kl`).

``ρ`` is a differentiable Spearman correlation (:func:`rank_correlation`): soft ranks of the
student rows against hard (or soft) ranks of the teacher rows, or Pearson on the raw values.
Teacher inputs are detached. A term with nothing to rank (side < 2, or every weight 0) is 0.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import ranking
from ..registry import suggest

__all__ = [
    "category_spearman_loss",
    "gram_correlation_loss",
    "instance_kl",
    "instance_kl_from_log_probs",
    "matched_scale",
    "rank_correlation",
    "relation_rank_loss",
    "sample_spearman_loss",
    "weighted_mean",
]

RankMethod = Literal["soft", "pearson"]
Reduction = Literal["row", "flat"]
TeacherRank = Literal["hard", "soft"]
RankScale = Literal["linear", "log"]

RANK_METHODS = ("soft", "pearson")
TEACHER_RANKS = ("hard", "soft")
REDUCTIONS = ("row", "flat")
RANK_SCALES = ("linear", "log")


def rank_correlation(
    student: Tensor,
    teacher: Tensor,
    *,
    method: RankMethod = "soft",
    strength: float = 1e-1,
    backend: str = "auto",
    teacher_rank: Literal["hard", "soft"] = "hard",
) -> Tensor:
    """Correlation along the last dim between student rows (differentiable) and teacher rows.

    ``"soft"``: Pearson of soft student ranks and (hard or soft) teacher ranks, i.e. a
    differentiable Spearman ρ; ``"pearson"``: Pearson of the raw values. Constant rows give 0.
    """
    teacher = teacher.detach()
    if method == "pearson":
        return ranking.pearson(student, teacher, dim=-1)
    if method != "soft":
        raise ValueError(f"unknown rank_method {method!r}.{suggest(str(method), RANK_METHODS)}")
    rs = ranking.soft_rank(student, dim=-1, strength=strength, backend=backend)
    if teacher_rank == "hard":
        rt = ranking.hard_rank(teacher, dim=-1)
    else:
        rt = ranking.soft_rank(teacher, dim=-1, strength=strength, backend=backend)
    return ranking.pearson(rs, rt.detach(), dim=-1)


def weighted_mean(values: Tensor, weights: Tensor) -> Tensor:
    """``Σ w·v / Σ w``; 0 when every weight is 0 (no device sync)."""
    den = weights.sum()
    return (weights * values).sum() / den.clamp_min(torch.finfo(den.dtype).tiny)


def _weighted_pearson(a: Tensor, b: Tensor, w: Tensor) -> Tensor:
    """Pearson correlation of 1-D ``a`` and ``b`` under element weights ``w``; 0 if constant.

    The centred vectors are divided by their (detached) largest magnitude first, so that Gram
    entries of size 1e-4 do not underflow the variance product (the same trick as
    :func:`lud.losses.ranking.pearson`).
    """
    w = w / w.sum().clamp_min(torch.finfo(w.dtype).tiny)
    da, db = a - (w * a).sum(), b - (w * b).sum()
    tol = 32 * torch.finfo(a.dtype).eps
    floor = math.sqrt(torch.finfo(a.dtype).tiny)  # below it 1/spread overflows in backward
    sa, sb = da.detach().abs().amax(), db.detach().abs().amax()
    const = ((sa <= tol * a.detach().abs().amax()) | (sb <= tol * b.detach().abs().amax())
             | (sa < floor) | (sb < floor))
    da = da / torch.where(const, torch.ones_like(sa), sa)
    db = db / torch.where(const, torch.ones_like(sb), sb)
    var = (w * da * da).sum() * (w * db * db).sum()
    r = (w * da * db).sum() / var.clamp_min(torch.finfo(var.dtype).tiny).sqrt()
    return torch.where(const, torch.zeros_like(r), r).clamp(-1.0, 1.0)


def gram_correlation_loss(
    gram_student: Tensor,
    gram_teacher: Tensor,
    weights: Tensor,
    *,
    reduction: Reduction = "row",
    method: RankMethod = "soft",
    strength: float = 1e-1,
    backend: str = "auto",
    teacher_rank: Literal["hard", "soft"] = "hard",
    row_scale: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """``1 − ρ`` between two square Gram matrices under row weights; returns (loss, mean ρ).

    ``"row"``: weighted mean over rows r of ``1 − ρ(G_S[r], G_T[r])``; the reported ρ is the
    mean over rows with non-zero weight. ``"flat"``: one correlation over the upper triangle
    (diagonal included) of the Gram matrices restricted to the rows and columns with non-zero
    weight, element weights ``w_r·w_c``.
    Matrices of side < 2 carry no ranking information: loss 0 (ρ reported as 0).
    """
    n = gram_student.shape[-1]
    if n < 2:
        zero = gram_student.sum() * 0.0
        return zero, zero.detach()
    weights = weights.detach()
    if reduction == "row":
        rho = rank_correlation(gram_student, gram_teacher, method=method, strength=strength,
                               backend=backend, teacher_rank=teacher_rank)
        disc = 1.0 - rho if row_scale is None else row_scale.detach() * (1.0 - rho)
        loss = weighted_mean(disc, weights)
        rho_mean = weighted_mean(rho.detach(), (weights > 0).to(rho.dtype))
        return loss, rho_mean
    if reduction != "flat":
        hint = suggest(str(reduction), REDUCTIONS)
        raise ValueError(f"unknown gram_reduction {reduction!r}.{hint}")
    keep = weights > 0
    wk = weights[keep]
    k = wk.shape[0]
    # Gram matrices are symmetric: rank the upper triangle (with the diagonal) only, so that
    # every entry counts once instead of as a float-rounding-broken tie with its mirror.
    iu, ju = torch.triu_indices(k, k, device=weights.device).unbind(0)
    sub_s = gram_student[keep][:, keep][iu, ju].reshape(1, -1)
    sub_t = gram_teacher[keep][:, keep][iu, ju].reshape(1, -1)
    if sub_s.shape[1] < 2:  # nothing (or a single entry) selected
        zero = gram_student.sum() * 0.0
        return zero, zero.detach()
    elem_w = wk[iu] * wk[ju]
    if method == "pearson":
        a, b = sub_s[0], sub_t[0]
    else:
        a = ranking.soft_rank(sub_s, dim=-1, strength=strength, backend=backend)[0]
        if teacher_rank == "hard":
            b = ranking.hard_rank(sub_t, dim=-1)[0]
        else:
            b = ranking.soft_rank(sub_t, dim=-1, strength=strength, backend=backend)[0]
    rho = _weighted_pearson(a, b.detach(), elem_w)
    return 1.0 - rho, rho.detach()


def matched_scale(student: Tensor, teacher: Tensor) -> Tensor:
    """Per-row ``min(1, std(student row) / std(teacher row))``, detached (0 for a flat student
    row, 1 for a flat teacher row).

    A correlation is scale-free, so its gradient grows like ``1 / std(student row)``: at
    initialisation, when a student's logits (hence its probabilities and Gram rows) are nearly
    flat, a correlation term's gradient explodes. Multiplying ``1 − ρ`` by this factor bounds the
    gradient by the teacher's scale instead; once the student's rows are as spread as the
    teacher's the factor is 1 and the term is unchanged.
    """
    s_std = student.detach().std(dim=-1, unbiased=False)
    t_std = teacher.detach().std(dim=-1, unbiased=False)
    ratio = s_std / t_std.clamp_min(torch.finfo(t_std.dtype).tiny)
    return torch.where(t_std > 0, ratio.clamp(max=1.0), torch.ones_like(ratio))


def _identity(x: Tensor) -> Tensor:
    return x


def log_floor(x: Tensor) -> Tensor:
    """``log x`` with x floored at the smallest normal float (probabilities and Gram entries are
    ≥ 0; an underflowed entry gets the floor and no gradient instead of −inf)."""
    return torch.log(x.clamp_min(torch.finfo(x.dtype).tiny))


def rank_scale_fn(rank_scale: RankScale) -> Callable[[Tensor], Tensor]:
    """What the rank terms rank: the values themselves (``"linear"``) or :func:`log_floor` of them."""
    return log_floor if rank_scale == "log" else _identity


def tempered_probs(logits: Tensor, temperature: Tensor | float) -> Tensor:
    """``softmax(logits / temperature)`` over the classes (dim 1)."""
    return torch.softmax(logits / temperature, dim=1)


def category_spearman_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    temperature: Tensor | float,
    class_weights: Tensor,
    *,
    reduction: Reduction = "row",
    method: RankMethod = "soft",
    strength: float = 1e-1,
    backend: str = "auto",
    teacher_rank: Literal["hard", "soft"] = "hard",
) -> tuple[Tensor, Tensor]:
    """CDL: ``1 − ρ`` between rows of the C×C Gram matrices ``Pᵀ P`` (class weights (C,)).

    ``temperature`` broadcasts against (B, C). Returns (loss, mean ρ); see
    :func:`gram_correlation_loss` for the keyword arguments.
    """
    ps = tempered_probs(student_logits, temperature)
    pt = tempered_probs(teacher_logits.detach(), temperature)
    return gram_correlation_loss(ps.t() @ ps, pt.t() @ pt, class_weights, reduction=reduction,
                                 method=method, strength=strength, backend=backend,
                                 teacher_rank=teacher_rank)


def sample_spearman_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    temperature: Tensor | float,
    sample_weights: Tensor,
    *,
    reduction: Reduction = "row",
    method: RankMethod = "soft",
    strength: float = 1e-1,
    backend: str = "auto",
    teacher_rank: Literal["hard", "soft"] = "hard",
) -> tuple[Tensor, Tensor]:
    """SDL: ``1 − ρ`` between rows of the B×B Gram matrices ``P Pᵀ`` (sample weights (B,)).

    ``temperature`` broadcasts against (B, C). Returns (loss, mean ρ).
    """
    ps = tempered_probs(student_logits, temperature)
    pt = tempered_probs(teacher_logits.detach(), temperature)
    return gram_correlation_loss(ps @ ps.t(), pt @ pt.t(), sample_weights, reduction=reduction,
                                 method=method, strength=strength, backend=backend,
                                 teacher_rank=teacher_rank)


def relation_rank_loss(
    student_probs: Tensor,
    teacher_probs: Tensor,
    weights: Tensor,
    *,
    method: RankMethod = "soft",
    strength: float = 1e-1,
    backend: str = "auto",
    teacher_rank: Literal["hard", "soft"] = "hard",
    row_scale: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """First-order relation: weighted mean over rows ``r`` of ``1 − ρ(P_S[r], P_T[r])``.

    Rows are samples (inter-class relation, pass ``P``) or classes (intra-class relation, pass
    ``Pᵀ``); ``weights`` has one entry per row. Rows of length < 2 carry no ranking: loss 0.
    Returns (loss, mean ρ over rows with non-zero weight).
    """
    if student_probs.shape[-1] < 2:
        zero = student_probs.sum() * 0.0
        return zero, zero.detach()
    rho = rank_correlation(student_probs, teacher_probs, method=method, strength=strength,
                           backend=backend, teacher_rank=teacher_rank)
    weights = weights.detach()
    disc = 1.0 - rho if row_scale is None else row_scale.detach() * (1.0 - rho)
    loss = weighted_mean(disc, weights)
    return loss, weighted_mean(rho.detach(), (weights > 0).to(rho.dtype))


def instance_kl(
    student_logits: Tensor, teacher_logits: Tensor, temperature: Tensor | float, weights: Tensor
) -> Tensor:
    """Weighted mean over samples of ``T_b²·KL(p_T ‖ p_S)``; ``T_b`` is the row mean of T."""
    t = torch.as_tensor(temperature, dtype=student_logits.dtype, device=student_logits.device)
    log_ps, log_pt = tempered_log_probs(student_logits, teacher_logits, t)
    return instance_kl_from_log_probs(log_ps, log_pt, t, weights)


def tempered_log_probs(zs: Tensor, zt: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
    """(student, detached teacher) ``log_softmax(z / t)`` over the classes (dim 1)."""
    return F.log_softmax(zs / t, dim=1), F.log_softmax(zt.detach() / t, dim=1)


def instance_kl_from_log_probs(log_ps: Tensor, log_pt: Tensor, t: Tensor, weights: Tensor) -> Tensor:
    """:func:`instance_kl` from the log-probabilities at temperature ``t`` (a tensor)."""
    kl = F.kl_div(log_ps, log_pt.detach(), reduction="none", log_target=True).sum(dim=1)
    t_row = t.expand_as(log_ps).mean(dim=1) if t.dim() else t
    return weighted_mean(t_row.pow(2) * kl, weights.detach())
