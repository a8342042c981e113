"""The objective that LUD's public code trains (``llieeai/lud``, its ``CSKD`` distiller), exactly.

Registered as ``"lud-released"``: one name for one idea, "what the LUD paper's public repository
runs". Its distiller class is called ``CSKD`` (it follows cosine-similarity KD, Ham et al.,
arXiv 2311.14307), but the objective here is that file's ``CSKD.forward_train`` term by term,
not a re-derivation of Ham et al.'s paper, so it is not registered as ``"cskd"``.

Notation: ``P^τ = softmax(z / τ)`` row-wise (B×C); ``cos⁺(a, b) = |a·b| / (‖a‖‖b‖ + 1e-8)``
(absolute value, no centring); ``D(X, Y) = 1 − mean_rows cos⁺(X_r, Y_r)``. For a temperature τ
(a number, or one per sample):

* ``cs(τ) = 2·τ̄²·D(P_Sᵀ, P_Tᵀ)`` — class *columns* (each class's vector over the batch);
  ``τ̄`` is the mean of the per-sample temperatures (τ itself for a number);
* ``cc(τ) = D(G_T, G_S)`` on the C×C Grams ``G = Pᵀ P`` (rows), no ``τ²``;
* ``bc(τ) = D(H_T, H_S)`` on the B×B Grams ``H = P Pᵀ`` (rows), no ``τ²``.

Per-sample temperature (the code's "CSWT"): ``c_b = cos⁺(softmax(z_S[b]), softmax(z_T[b]))`` on
the weak view at τ = 1, detached; ``τ_b = (τ_hi − τ_lo)/(c_min − c_max)·(c_b − c_max) + τ_lo`` —
the most similar sample gets ``τ_lo`` = 2, the least similar ``τ_hi`` = 6.

Masks (from the weak view's teacher at τ = 1, like MLKD's): ``m_b = [max_c p_T[b, c] ≤ median]``,
``k_c = [Σ_b p_T[b, c] ≤ median]``. Each term is a scalar, so ``(term·m).mean()`` only rescales
it by the kept fraction ``m̄`` (samples) or ``k̄`` (classes).

Terms (``w`` = ``kd_weight``, 1 in the released config):

* ``ce = ce_weight·CE(z_S^weak, y)``; ``ce_strong = ce_weight·CE(z_S^strong, y)`` (two views,
  ``ce_on_both_views``);
* ``cs = w·m̄·(cs(4) + cs(τ_b))`` on the weak view; ``cs_strong = w·(cs(4) + cs(τ_b))`` on the
  strong view, **unmasked**, with the temperatures ``τ_b`` of the weak view;
* ``cc = w·k̄·(cc(4) + cc(τ_b))`` and ``bc = w·m̄·(bc(4) + bc(τ_b))``, weak view only (the
  released code computes no Gram terms on the strong view).

The released ``losses_dict`` groups them as ``loss_ce = ce + ce_strong``,
``loss_kd = cs + cs_strong``, ``loss_cc = cc``, ``loss_bc = bc``. One view
(``two_views=False``): the weak-view terms alone. Defaults = ``mdistiller/engine/cfg.py`` and
``configs/cifar100/lud/*.yaml`` of the release: ``temperature=4``, ``low_temperature=2``,
``high_temperature=6``, ``ce_weight=kd_weight=1``, two views (RandAugment(2, 10) strong view;
``two_views=True``, which the generated ``lud-released`` configs set — the constructor default is
one view so that the loss is callable like every other),
recipe 480 epochs, batch 64, SGD lr 0.025 (0.01 for ShuffleNet/MobileNet students), ×0.1 at
150/180/210, weight decay 5e-4. Checked against the release on fixed logits
(``tests/fixtures/cskd_reference.json``).

Where this departs from the paper (docs/lud_design.md, "Paper, released code") — line by line:

* cosine similarity with an absolute value, not Spearman; no ranks anywhere;
* a first-order class-column term ``cs`` with weight ``2·τ²`` that the paper does not have;
* masks keep ``conf ≤ median`` (the paper keeps the confident side) and only rescale;
* ``τ_b`` is linear in the batch-relative cosine, most similar → lowest (the paper's
  ``t_min + (t_max − t_min)(1 − e^{−ρ})`` rises with the similarity);
* every term twice, at the fixed τ = 4 and at ``τ_b``; two views, CE on both; all weights 1;
* the confidences come from the teacher at τ = 1.

Where it departs from our ``lud`` (:mod:`lud.losses.lud`): ``lud`` minimises ``1 − ρ`` with soft
Spearman ranks, selects rows with the mask instead of rescaling, weights rows by uncertainty,
maps the temperature with the paper's formula by default, has an uncertainty-weighted KL instance
term instead of ``cs``, does not repeat terms at T = 4 and takes one view.

Numerical differences from the release (none on its fixtures): a batch in which every sample has
the same cosine (``c_min = c_max``, e.g. a batch of one) gets the midpoint temperature
``(τ_lo + τ_hi)/2`` for all samples (as ``lud``'s ``temperature_map="released"``) where the
release divides 0 by 0 and returns NaN.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import DistillationLoss, Epoch, LossOutput
from .mlkd import mlkd_confidence_masks
from .params import check_bool, non_negative_param, positive_param
from .registry import register_loss

__all__ = [
    "LUDReleasedLoss",
    "abs_cosine_rows",
    "class_column_term",
    "gram_cosine_terms",
    "released_sample_temperatures",
]

_COS_EPS = 1e-8  # the release's eps, added to the product of the norms


def abs_cosine_rows(a: Tensor, b: Tensor) -> Tensor:
    """``|a_r·b_r| / (‖a_r‖‖b_r‖ + 1e-8)`` for every row ``r`` (the release's cosine)."""
    return (a * b).sum(dim=1).abs() / (a.norm(dim=1) * b.norm(dim=1) + _COS_EPS)


def _distance(x: Tensor, y: Tensor) -> Tensor:
    return 1.0 - abs_cosine_rows(x, y).mean()


def _probs(logits: Tensor, temperature: float | Tensor) -> Tensor:
    t = temperature.unsqueeze(1) if isinstance(temperature, Tensor) else temperature
    return F.softmax(logits / t, dim=1)


def class_column_term(
    student_logits: Tensor, teacher_logits: Tensor, temperature: float | Tensor
) -> Tensor:
    """``2·τ̄²·(1 − mean_c cos⁺(P_S[:, c], P_T[:, c]))``; ``τ`` a number or one per sample."""
    p_s, p_t = _probs(student_logits, temperature), _probs(teacher_logits, temperature)
    tau = temperature.mean() if isinstance(temperature, Tensor) else temperature
    return 2.0 * tau**2 * _distance(p_s.t(), p_t.t())


def gram_cosine_terms(
    student_logits: Tensor, teacher_logits: Tensor, temperature: float | Tensor
) -> tuple[Tensor, Tensor]:
    """``(cc, bc)``: ``1 − mean cos⁺`` over the rows of the C×C and of the B×B Gram matrices."""
    p_s, p_t = _probs(student_logits, temperature), _probs(teacher_logits, temperature)
    cc = _distance(p_t.t() @ p_t, p_s.t() @ p_s)
    bc = _distance(p_t @ p_t.t(), p_s @ p_s.t())
    return cc, bc


def released_sample_temperatures(
    student_logits: Tensor, teacher_logits: Tensor, low: float, high: float
) -> Tensor:
    """Per-sample ``τ_b`` (B,), detached: most similar sample → ``low``, least → ``high``.

    All samples equally similar (a batch of one, identical rows): the midpoint, where the
    release divides 0 by 0. So is a span of cosines below the smallest normal float (one-hot
    softmax rows at large logit scales), where the slope would overflow to inf and give NaN.
    """
    with torch.no_grad():
        c = abs_cosine_rows(F.softmax(student_logits, dim=1), F.softmax(teacher_logits, dim=1))
        c_min, c_max = c.min(), c.max()
        span = c_min - c_max
        flat = span.abs() < torch.finfo(span.dtype).tiny
        slope = (high - low) / torch.where(flat, torch.ones_like(span), span)
        tau = slope * (c - c_max) + low
        return torch.where(flat, torch.full_like(tau, 0.5 * (low + high)), tau)


@register_loss(
    "lud-released",
    family="lud",
    bench=True,
    inputs=("dense", "tokens", "two_views"),
    summary="LUD as the authors' released code runs it",
)
class LUDReleasedLoss(DistillationLoss):
    """The released LUD code's objective. Terms: ``ce, cs, cc, bc`` (+ ``ce_strong, cs_strong``).

    Args:
        temperature: the fixed temperature every term is also computed at (release: 4).
        low_temperature, high_temperature: range of the per-sample temperature (2, 6).
        ce_weight: weight of each view's cross-entropy (1).
        kd_weight: weight of every distillation term (1).
        two_views: called with the strong view too (the released recipe; its configs set it).
            ``False`` (default, so that the loss is callable like every other) = the weak-view
            terms only.
        ce_on_both_views: with two views, add the strong view's CE (the release does).
        validate: check inputs on every call.

    Stats: ``sample_keep``, ``class_keep`` (mask fractions), ``temperature_mean``,
    ``temperature_min``, ``temperature_max`` (of the per-sample temperatures).
    """

    def __init__(
        self,
        temperature: float = 4.0,
        low_temperature: float = 2.0,
        high_temperature: float = 6.0,
        ce_weight: float = 1.0,
        kd_weight: float = 1.0,
        two_views: bool = False,
        ce_on_both_views: bool = True,
        validate: bool = True,
    ) -> None:
        super().__init__(validate=validate)
        self.temperature = positive_param("temperature", temperature)
        self.low_temperature = positive_param("low_temperature", low_temperature)
        self.high_temperature = positive_param("high_temperature", high_temperature)
        if self.high_temperature < self.low_temperature:
            raise ValueError(
                f"high_temperature ({high_temperature}) must be >= low_temperature ({low_temperature})"
            )
        self.ce_weight = non_negative_param("ce_weight", ce_weight)
        self.kd_weight = non_negative_param("kd_weight", kd_weight)
        self.two_views = check_bool("two_views", two_views)
        self.ce_on_both_views = check_bool("ce_on_both_views", ce_on_both_views) and self.two_views

    def _weak_terms(self, s: Tensor, t: Tensor, y: Tensor) -> tuple[dict, dict, Tensor]:
        sample_mask, class_mask = mlkd_confidence_masks(t)
        m, k = sample_mask.float().mean(), class_mask.float().mean()
        tau = released_sample_temperatures(s, t, self.low_temperature, self.high_temperature)
        cc_fix, bc_fix = gram_cosine_terms(s, t, self.temperature)
        cc_dyn, bc_dyn = gram_cosine_terms(s, t, tau)
        w = self.kd_weight
        cs = class_column_term(s, t, self.temperature) + class_column_term(s, t, tau)
        terms = {
            "ce": self.ce_weight * F.cross_entropy(s, y),
            "cs": w * m * cs,
            "cc": w * k * (cc_fix + cc_dyn),
            "bc": w * m * (bc_fix + bc_dyn),
        }
        stats = {
            "sample_keep": m,
            "class_keep": k,
            "temperature_mean": tau.mean(),
            "temperature_min": tau.min(),
            "temperature_max": tau.max(),
        }
        return terms, stats, tau

    def compute(
        self,
        student_logits: Tensor,
        teacher_logits: Tensor | None,
        targets: Tensor | None,
        epoch: Epoch,
    ) -> LossOutput:
        assert teacher_logits is not None and targets is not None
        terms, stats, _ = self._weak_terms(student_logits, teacher_logits, targets)
        return self.output(terms, stats)

    def compute_two_views(
        self,
        student_logits: Tensor,
        teacher_logits: Tensor | None,
        targets: Tensor | None,
        epoch: Epoch,
        strong_student_logits: Tensor,
        strong_teacher_logits: Tensor,
    ) -> LossOutput:
        assert teacher_logits is not None and targets is not None
        terms, stats, tau = self._weak_terms(student_logits, teacher_logits, targets)
        s2, t2 = strong_student_logits, strong_teacher_logits
        if self.ce_on_both_views:
            terms["ce_strong"] = self.ce_weight * F.cross_entropy(s2, targets)
        terms["cs_strong"] = self.kd_weight * (
            class_column_term(s2, t2, self.temperature) + class_column_term(s2, t2, tau)
        )
        return self.output(terms, stats)

    def extra_repr(self) -> str:
        return (
            f"temperature={self.temperature}, low_temperature={self.low_temperature}, "
            f"high_temperature={self.high_temperature}, ce_weight={self.ce_weight}, "
            f"kd_weight={self.kd_weight}, two_views={self.two_views}, "
            f"ce_on_both_views={self.ce_on_both_views}"
        )
