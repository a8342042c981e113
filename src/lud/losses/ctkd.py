"""Curriculum Temperature for Knowledge Distillation (Li et al., AAAI 2023), global variant.

KD whose temperature is a learnable scalar,
``T = t_min + (t_max - t_min) * sigmoid(theta)``, trained *adversarially*: the student minimises
the KD loss, the temperature maximises it (it seeks the hardest temperature). One backward pass
does both through a gradient-reversal layer (GRL) on ``theta``: identity forward, gradient
multiplied by ``lambda`` backward, with ``lambda <= 0`` following a cosine curriculum

    ``lambda(epoch) = -lambda_max * (1 - cos(pi * min(epoch, E) / E)) / 2``

from 0 (no adversary) to ``-lambda_max`` after ``E`` epochs.

Defaults are those of the released code (``zhengli97/CTKD``, ``Global_T`` + ``train_student.py``
with ``--t_start 1 --t_end 20 --cosine_decay 1 --decay_max 0 --decay_min -1 --decay_loops 10
-r 0.1 -a 0.9``): ``T = 1 + 20 * sigmoid(theta)`` (so ``t_min = 1, t_max = 21``), ``theta``
initialised to 1 (``T ≈ 15.6``), E = 10, ``lambda_max = 1``, ``ce_weight = 0.1``,
``kd_weight = 0.9``. The released loop calls the curriculum with the 1-based epoch number.

Integration: ``theta`` is an ``nn.Parameter`` of this module, so the trainer must give
``loss.parameters()`` to the optimiser (with the student's) and save ``loss.state_dict()``
with checkpoints. The instance-wise temperature variant of the paper is not implemented.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import DistillationLoss, Epoch, LossOutput
from .kd import kd_divergence
from .params import check_bool, non_negative_param, positive_param
from .registry import register_loss
from .standardize import standardize_logits

__all__ = ["CTKDLoss", "ctkd_lambda", "ctkd_temperature", "gradient_reversal"]


class _GradientReversal(torch.autograd.Function):
    """Identity forward; backward multiplies the incoming gradient by ``lambda_``."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, lambda_: float | Tensor) -> Tensor:
        ctx.lambda_ = lambda_
        return x.clone()

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        return grad * ctx.lambda_, None


def gradient_reversal(x: Tensor, lambda_: float | Tensor) -> Tensor:
    """Gradient-reversal layer (Ganin & Lempitsky, 2015) as CTKD uses it.

    Forward is the identity; backward scales the gradient by ``lambda_`` (CTKD passes
    ``lambda_ <= 0``, so a descent step on ``x`` becomes an ascent step on the loss).
    """
    if isinstance(lambda_, Tensor):
        return _GradientReversal.apply(x, lambda_.detach())
    return _GradientReversal.apply(x, float(lambda_))


def ctkd_lambda(
    epoch: Epoch, curriculum_epochs: float = 10.0, lambda_max: float = 1.0
) -> Epoch:
    """Cosine curriculum of the GRL strength: 0 at ``epoch <= 0``, ``-lambda_max`` from
    ``epoch >= curriculum_epochs`` on (``curriculum_epochs == 0``: ``-lambda_max`` at once).
    A tensor ``epoch`` gives a tensor (see :mod:`lud.losses.base`)."""
    if curriculum_epochs <= 0:
        return -lambda_max
    if isinstance(epoch, Tensor):
        e = epoch.clamp(0.0, curriculum_epochs)
        return -lambda_max * 0.5 * (1.0 - torch.cos(math.pi * e / curriculum_epochs))
    e = min(max(float(epoch), 0.0), curriculum_epochs)
    return -lambda_max * 0.5 * (1.0 - math.cos(math.pi * e / curriculum_epochs))


def ctkd_temperature(theta: Tensor, t_min: float, t_max: float) -> Tensor:
    """``t_min + (t_max - t_min) * sigmoid(theta)``."""
    return t_min + (t_max - t_min) * torch.sigmoid(theta)


@register_loss(
    "ctkd",
    bench=True,
    summary="learnable temperature with gradient reversal (Li et al., AAAI 2023)",
)
class CTKDLoss(DistillationLoss):
    """CTKD (global temperature): ``ce_weight*CE + kd_weight*T^2*KL`` with adversarial ``T``.

    Args:
        t_min, t_max: temperature range, ``0 < t_min < t_max``.
        theta_init: initial value of the temperature logit ``theta``.
        curriculum_epochs: epochs of the cosine ramp of the GRL strength.
        lambda_max: final GRL strength (the gradient reaching ``theta`` is ``-lambda_max`` times
            the plain one once the ramp is done).
        ce_weight, kd_weight: weights of cross-entropy and of the ``T^2``-scaled KL.
        standardize: z-score both logit rows before the temperature (logit standardisation).
        validate: check inputs on every call.

    Terms: ``ce``, ``kd``. Stats: ``temperature``, ``grl_lambda``.
    """

    def __init__(
        self,
        t_min: float = 1.0,
        t_max: float = 21.0,
        theta_init: float = 1.0,
        curriculum_epochs: float = 10.0,
        lambda_max: float = 1.0,
        ce_weight: float = 0.1,
        kd_weight: float = 0.9,
        standardize: bool = False,
        validate: bool = True,
    ) -> None:
        super().__init__(validate=validate)
        self.t_min = positive_param("t_min", t_min)
        self.t_max = positive_param("t_max", t_max)
        if self.t_min >= self.t_max:
            raise ValueError(f"t_min must be < t_max, got t_min={t_min}, t_max={t_max}")
        theta0 = float(theta_init)
        if not math.isfinite(theta0):
            raise ValueError(f"theta_init must be finite, got {theta_init!r}")
        self.theta_init = theta0  # the learnable temperature starts here (``theta`` moves)
        self.curriculum_epochs = non_negative_param("curriculum_epochs", curriculum_epochs)
        self.lambda_max = non_negative_param("lambda_max", lambda_max)
        self.ce_weight = non_negative_param("ce_weight", ce_weight)
        self.kd_weight = non_negative_param("kd_weight", kd_weight)
        self.standardize = check_bool("standardize", standardize)
        self.theta = nn.Parameter(torch.tensor(theta0, dtype=torch.float32))

    @property
    def temperature(self) -> float:
        """Current temperature (no gradient)."""
        with torch.no_grad():
            return float(ctkd_temperature(self.theta.float(), self.t_min, self.t_max))

    def compute(
        self,
        student_logits: Tensor,
        teacher_logits: Tensor | None,
        targets: Tensor | None,
        epoch: Epoch,
    ) -> LossOutput:
        assert teacher_logits is not None and targets is not None
        ce = F.cross_entropy(student_logits, targets)
        lam = ctkd_lambda(epoch, self.curriculum_epochs, self.lambda_max)
        theta = gradient_reversal(
            self.theta.to(device=student_logits.device, dtype=torch.float32), lam
        )
        temp = ctkd_temperature(theta, self.t_min, self.t_max)
        s, t = student_logits, teacher_logits
        if self.standardize:
            s, t = standardize_logits(s), standardize_logits(t)
        kd = kd_divergence(s, t, temp)
        return self.output(
            {"ce": self.ce_weight * ce, "kd": self.kd_weight * kd},
            {"temperature": temp.detach(), "grl_lambda": torch.as_tensor(lam)},
        )

    def extra_repr(self) -> str:
        return (
            f"t_min={self.t_min}, t_max={self.t_max}, curriculum_epochs={self.curriculum_epochs}, "
            f"lambda_max={self.lambda_max}, ce_weight={self.ce_weight}, kd_weight={self.kd_weight}, "
            f"standardize={self.standardize}"
        )
