"""Decoupled Knowledge Distillation (Zhao et al., CVPR 2022).

KD's KL splits into two parts that DKD weights separately:

* **TCKD** (target-class KD): ``T^2 * KL`` between the binary distributions
  ``[p_target, 1 - p_target]`` of teacher and student;
* **NCKD** (non-target-class KD): ``T^2 * KL`` between the distributions over the
  non-target classes only (softmax renormalised without the target class).

``L = ce_weight * CE + min(epoch / warmup, 1) * (alpha * TCKD + beta * NCKD)``.
Normalisation follows mdistiller's ``DKD.py``: each KL is summed over its classes, averaged
over the batch (``sum / batch_size``) and multiplied by ``T^2``. Defaults are its CIFAR-100
config: ``T = 4, alpha = 1, beta = 8, ce_weight = 1, warmup = 20``. Per-pair betas from the
paper: 2 for res56→res20 and res110→res32, 6 for the WRN, VGG and vgg13→MobileNetV2 pairs;
ImageNet ``T = 1`` with beta 0.5 (R34→R18) or 2 (R50→MobileNetV1).

Differences from mdistiller, both numerical only: the binary log-probabilities come from
log-sum-exp rather than ``log`` of summed probabilities (which gives ``-inf`` when a
probability underflows), and the target class is excluded from NCKD by filling its tempered
logit with a very negative finite number of the working dtype instead of subtracting 1000
(exact at any logit scale, never ``-inf``, so never ``0 * inf = NaN``).

``epoch`` is whatever the trainer passes: mdistiller passes the 1-based epoch number, so its
first epoch already has factor 1/20; a trainer passing a 0-based (fractional) epoch starts at 0.

Logit standardisation (``standardize=True``) z-scores both logit rows before the temperature;
the paper's DKD+LS values are ``temperature=2, alpha=9, beta=72`` (1 and 8 times its KD weight 9).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import DistillationLoss, Epoch, LossOutput, linear_warmup
from .params import check_bool, non_negative_param, positive_param
from .registry import register_loss
from .standardize import standardize_logits

__all__ = ["DKDLoss", "dkd_terms", "dkd_warmup_factor"]


def _exclude(logits: Tensor, mask: Tensor) -> Tensor:
    """``logits`` with masked entries replaced by a huge negative finite value.

    A quarter of the dtype's most negative number: ``exp`` of it underflows to exactly 0 and
    ``log_softmax`` stays finite (no overflow when the row maximum is subtracted).
    """
    return logits.masked_fill(mask, torch.finfo(logits.dtype).min / 4)


def _binary_log_probs(scaled: Tensor, target_mask: Tensor) -> Tensor:
    """``log [p_target, 1 - p_target]`` of ``softmax(scaled)``, shape ``(batch, 2)``, stable."""
    lse_all = torch.logsumexp(scaled, dim=1)
    # the target's logit: exact (zeros added), and a fixed shape where masked_select has a
    # data-dependent one (a graph break under torch.compile)
    log_target = scaled.masked_fill(~target_mask, 0.0).sum(dim=1) - lse_all
    log_rest = torch.logsumexp(_exclude(scaled, target_mask), dim=1) - lse_all
    return torch.stack([log_target, log_rest], dim=1)


def dkd_terms(
    student_logits: Tensor, teacher_logits: Tensor, targets: Tensor, temperature: float
) -> tuple[Tensor, Tensor]:
    """``(TCKD, NCKD)``, each ``T^2 * KL`` summed over classes and averaged over the batch.

    Args:
        student_logits, teacher_logits: ``(batch, classes)`` logits.
        targets: ``(batch,)`` integer labels.
        temperature: softmax temperature (> 0).
    """
    t = positive_param("temperature", temperature)
    target_mask = F.one_hot(targets.long(), student_logits.shape[1]).bool()
    s, tt = student_logits / t, teacher_logits / t

    b_s, b_t = _binary_log_probs(s, target_mask), _binary_log_probs(tt, target_mask)
    tckd = F.kl_div(b_s, b_t, reduction="none", log_target=True).sum(dim=1).mean()

    n_s = F.log_softmax(_exclude(s, target_mask), dim=1)
    n_t = F.log_softmax(_exclude(tt, target_mask), dim=1)
    nckd = F.kl_div(n_s, n_t, reduction="none", log_target=True).sum(dim=1).mean()
    return tckd * t * t, nckd * t * t


def dkd_warmup_factor(epoch: Epoch, warmup: float) -> Epoch:
    """``min(max(epoch, 0) / warmup, 1)``; ``warmup == 0`` means no warm-up (factor 1).

    A tensor ``epoch`` gives a tensor factor (:func:`lud.losses.base.linear_warmup`)."""
    return linear_warmup(epoch, warmup)


@register_loss("dkd", bench=True, summary="decoupled KD (Zhao et al., CVPR 2022)")
class DKDLoss(DistillationLoss):
    """DKD: ``ce_weight*CE + warm(epoch) * (alpha*TCKD + beta*NCKD)``. Terms: ``ce, tckd, nckd``.

    Args:
        temperature: softmax temperature ``T`` (> 0).
        alpha: weight of TCKD.
        beta: weight of NCKD.
        ce_weight: weight of the cross-entropy on the raw student logits.
        warmup: epochs over which the distillation weight ramps linearly from 0 to 1
            (``0`` = no ramp).
        standardize: z-score both logit rows before the temperature (logit standardisation).
        validate: check inputs on every call.

    Stats: ``temperature``, ``warmup`` (the current ramp factor).
    """

    def __init__(
        self,
        temperature: float = 4.0,
        alpha: float = 1.0,
        beta: float = 8.0,
        ce_weight: float = 1.0,
        warmup: float = 20.0,
        standardize: bool = False,
        validate: bool = True,
    ) -> None:
        super().__init__(validate=validate)
        self.temperature = positive_param("temperature", temperature)
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
            s, t = standardize_logits(s), standardize_logits(t)
        tckd, nckd = dkd_terms(s, t, targets, self.temperature)
        warm = dkd_warmup_factor(epoch, self.warmup)
        return self.output(
            {
                "ce": self.ce_weight * ce,
                "tckd": (warm * self.alpha) * tckd,
                "nckd": (warm * self.beta) * nckd,
            },
            {"temperature": torch.tensor(self.temperature), "warmup": torch.as_tensor(warm)},
        )

    def extra_repr(self) -> str:
        return (
            f"temperature={self.temperature}, alpha={self.alpha}, beta={self.beta}, "
            f"ce_weight={self.ce_weight}, warmup={self.warmup}, standardize={self.standardize}"
        )
