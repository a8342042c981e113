"""Refined Logit Distillation, RLD (Sun et al., 2024; code ``zju-SWJ/RLD``, mdistiller-based).

The teacher's logits are refined with the label before they are matched: the teacher is never
asked to teach a wrong top-1, yet the class correlations below the label are kept.

* **SCD** (sample confidence distillation): binary distributions at ``alpha_temperature`` τ_α —
  the student's ``[p_S,y, 1 − p_S,y]`` (label vs rest) against the teacher's
  ``[p_T,k, 1 − p_T,k]`` with ``k = argmax z_T`` (its *own* top class vs rest);
  ``scd = τ_α²·mean_b KL(teacher ‖ student)``.
* **MCD** (masked correlation distillation): the classes that the teacher ranks at or above the
  label (``z_T,c ≥ z_T,y``, the label included) are removed from both softmaxes at τ;
  ``mcd = τ²·mean_b KL(p_T^masked ‖ p_S^masked)``. A row in which the teacher puts the label
  last keeps no class: both sides are then uniform over all classes and contribute 0.

``L = ce_weight·CE + min(epoch / warmup, 1)·(alpha·scd + beta·mcd)`` (the warm-up of DKD;
``epoch`` as the trainer passes it, mdistiller's is 1-based). Logit standardisation
(``standardize=True``, the release's ``--logit-stand``) z-scores both rows first (unbiased std,
``eps = 1e-7`` as the release); the release's LS setting multiplies ``alpha`` and ``beta`` by 9
and sets both temperatures to 2.

Defaults (CIFAR-100): the release's ``mdistiller/engine/cfg.py`` gives ``alpha=1, beta=8, T=4,
warmup=20, ce_weight=1`` and ``ALPHA_T=1``, but its README trains RLD with ``--same-t``, which sets
``ALPHA_T = T``: ``alpha_temperature=4`` here. Its CIFAR-100 configs set no RLD values (all
pairs use these). ImageNet (``configs/imagenet/*/rld.yaml``): ``T=1`` (so τ_α = 1), ``warmup=1``,
``beta=0.5`` (R34→R18) or ``2`` (R50→MobileNetV1); recipe 100 epochs, batch 512, lr 0.2.

Differences from the release, numerical only (none on ``tests/fixtures/rld_reference.json``):
the binary log-probabilities come from log-sum-exp (the release takes ``log`` of summed
probabilities, ``-inf`` on underflow) and masked classes get the most negative finite number / 4
of the dtype instead of ``-1e9`` (which is not far enough below logits at a small τ).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import DistillationLoss, Epoch, LossOutput
from .dkd import _binary_log_probs, _exclude, dkd_warmup_factor
from .params import check_bool, non_negative_param, positive_param
from .registry import register_loss
from .standardize import standardize_logits

__all__ = ["RLDLoss", "rld_terms"]

_RELEASE_EPS = 1e-7  # the release's ``normalize`` adds 1e-7 to the std


def rld_terms(
    student_logits: Tensor,
    teacher_logits: Tensor,
    targets: Tensor,
    temperature: float,
    alpha_temperature: float,
) -> tuple[Tensor, Tensor]:
    """``(scd, mcd)``, unweighted, each with its ``τ²`` factor and averaged over the batch."""
    t = positive_param("temperature", temperature)
    ta = positive_param("alpha_temperature", alpha_temperature)
    classes = student_logits.shape[1]
    label = F.one_hot(targets.long(), classes).bool()
    top = F.one_hot(teacher_logits.argmax(dim=1), classes).bool()

    b_s = _binary_log_probs(student_logits / ta, label)
    b_t = _binary_log_probs(teacher_logits / ta, top)
    scd = F.kl_div(b_s, b_t, reduction="none", log_target=True).sum(dim=1).mean() * ta * ta

    at_or_above = teacher_logits >= teacher_logits.gather(1, targets.long().unsqueeze(1))
    log_s = F.log_softmax(_exclude(student_logits / t, at_or_above), dim=1)
    log_t = F.log_softmax(_exclude(teacher_logits / t, at_or_above), dim=1)
    mcd = F.kl_div(log_s, log_t, reduction="none", log_target=True).sum(dim=1).mean() * t * t
    return scd, mcd


@register_loss("rld", bench=True, summary="refined logit distillation (2024)")
class RLDLoss(DistillationLoss):
    """RLD: ``ce_weight·CE + warm(epoch)·(alpha·scd + beta·mcd)``. Terms: ``ce, scd, mcd``.

    Args:
        temperature: τ of the masked correlation term.
        alpha_temperature: τ_α of the sample-confidence term.
        alpha: weight of SCD.
        beta: weight of MCD.
        ce_weight: weight of the cross-entropy on the raw student logits.
        warmup: epochs of the linear ramp of the distillation weight (``0`` = none).
        standardize: z-score both logit rows first (logit standardisation).
        validate: check inputs on every call.

    Stats: ``warmup`` (the current ramp factor), ``teacher_top_is_label`` (fraction of rows whose
    teacher top-1 is the label).
    """

    def __init__(
        self,
        temperature: float = 4.0,
        alpha_temperature: float = 4.0,
        alpha: float = 1.0,
        beta: float = 8.0,
        ce_weight: float = 1.0,
        warmup: float = 20.0,
        standardize: bool = False,
        validate: bool = True,
    ) -> None:
        super().__init__(validate=validate)
        self.temperature = positive_param("temperature", temperature)
        self.alpha_temperature = positive_param("alpha_temperature", alpha_temperature)
        self.alpha = non_negative_param("alpha", alpha)
        self.beta = non_negative_param("beta", beta)
        self.ce_weight = non_negative_param("ce_weight", ce_weight)
        self.warmup = non_negative_param("warmup", warmup)
        self.standardize = check_bool("standardize", standardize)

    def compute(
        self,
        student_logits: Tensor,
        teacher_logits: Tensor | None,
        targets: Tensor | None,
        epoch: Epoch,
    ) -> LossOutput:
        assert teacher_logits is not None and targets is not None
        ce = F.cross_entropy(student_logits, targets)
        s, t = student_logits, teacher_logits
        if self.standardize:
            s = standardize_logits(s, eps=_RELEASE_EPS)
            t = standardize_logits(t, eps=_RELEASE_EPS)
        scd, mcd = rld_terms(s, t, targets, self.temperature, self.alpha_temperature)
        warm = dkd_warmup_factor(epoch, self.warmup)
        top_is_label = (t.argmax(dim=1) == targets).float().mean()
        return self.output(
            {
                "ce": self.ce_weight * ce,
                "scd": (warm * self.alpha) * scd,
                "mcd": (warm * self.beta) * mcd,
            },
            {"warmup": torch.as_tensor(warm), "teacher_top_is_label": top_is_label},
        )

    def extra_repr(self) -> str:
        return (
            f"temperature={self.temperature}, alpha_temperature={self.alpha_temperature}, "
            f"alpha={self.alpha}, beta={self.beta}, ce_weight={self.ce_weight}, "
            f"warmup={self.warmup}, standardize={self.standardize}"
        )
