"""Classic knowledge distillation (Hinton et al., 2015) and the KD+LS convenience variant.

``L = ce_weight * CE(z_S, y) + kd_weight * T^2 * KL(softmax(z_T/T) || softmax(z_S/T))``,
the KL averaged over the batch ("batchmean"). Defaults are the CIFAR-100 values of the
mdistiller lineage: ``T = 4, ce_weight = 0.1, kd_weight = 0.9`` (ImageNet uses T = 1, 0.5/0.5).
The ``T^2`` factor keeps the gradient magnitude independent of ``T``.

This module also holds the small parameter checks shared by the baseline losses.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import DistillationLoss, Epoch, LossOutput
from .params import check_bool, non_negative_param, positive_param
from .registry import register_loss
from .standardize import standardize_logits
from .topk import TopKTeacher, topk_forward_kl

__all__ = [
    "KDLSLoss",
    "KDLoss",
    "kd_divergence",
    "kl_per_sample",
]


def _temperature(temperature: float | Tensor, batch: int) -> float | Tensor:
    """A float, a scalar tensor, or a per-sample ``(batch, 1)`` column.

    A float ``T <= 0`` is rejected; tensor values are not inspected (that would cost a device
    synchronisation per call), only their shape.
    """
    if isinstance(temperature, Tensor):
        t = temperature
        if t.dim() == 1:
            t = t.unsqueeze(-1)
        if t.dim() > 2 or (t.dim() == 2 and (t.shape[1] != 1 or t.shape[0] not in (1, batch))):
            raise ValueError(
                f"temperature tensor must be a scalar or have shape ({batch},) / ({batch}, 1), "
                f"got {tuple(temperature.shape)}"
            )
        return t
    return positive_param("temperature", temperature)


def kl_per_sample(
    student_logits: Tensor, teacher_logits: Tensor, temperature: float | Tensor
) -> Tensor:
    """``KL(softmax(z_T/T) || softmax(z_S/T))`` per row, shape ``(batch,)``, no ``T^2`` factor.

    ``temperature`` may be a float, a scalar tensor, or one temperature per sample (``(B,)`` or
    ``(B, 1)``); tensors keep their autograd graph (learnable temperatures).
    Both sides go through ``log_softmax``; zero teacher probabilities contribute exactly 0.
    """
    t = _temperature(temperature, student_logits.shape[0])
    log_p_s = F.log_softmax(student_logits / t, dim=1)
    log_p_t = F.log_softmax(teacher_logits / t, dim=1)
    return F.kl_div(log_p_s, log_p_t, reduction="none", log_target=True).sum(dim=1)


def kd_divergence(
    student_logits: Tensor, teacher_logits: Tensor, temperature: float | Tensor
) -> Tensor:
    """Hinton's distillation term ``mean_b T_b^2 * KL_b`` (batchmean KL scaled by ``T^2``)."""
    kl = kl_per_sample(student_logits, teacher_logits, temperature)
    t = _temperature(temperature, student_logits.shape[0])
    t2 = t.reshape(-1).square() if isinstance(t, Tensor) else t * t
    return (t2 * kl).mean()


@register_loss(
    "kd",
    bench=True,
    inputs=("dense", "tokens", "topk"),
    summary="Hinton et al. 2015: CE + T²·KL at T = 4",
)
class KDLoss(DistillationLoss):
    """Hinton KD: ``ce_weight * CE + kd_weight * T^2 * KL``. Terms: ``ce``, ``kd``.

    Args:
        temperature: softmax temperature ``T`` (> 0).
        ce_weight: weight of the cross-entropy on the (raw) student logits.
        kd_weight: weight of the ``T^2``-scaled KL term.
        standardize: z-score student and teacher logits (:func:`standardize_logits`) before the
            temperature. The defaults stay those of plain KD; the paper's KD+LS values are
            registered as ``"kd+ls"``.
        validate: check inputs on every call (see :class:`DistillationLoss`).
    """

    def __init__(
        self,
        temperature: float = 4.0,
        ce_weight: float = 0.1,
        kd_weight: float = 0.9,
        standardize: bool = False,
        validate: bool = True,
    ) -> None:
        super().__init__(validate=validate)
        self.temperature = positive_param("temperature", temperature)
        self.ce_weight = non_negative_param("ce_weight", ce_weight)
        self.kd_weight = non_negative_param("kd_weight", kd_weight)
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
        kd = kd_divergence(s, t, self.temperature)
        return self.output(
            {"ce": self.ce_weight * ce, "kd": self.kd_weight * kd},
            {"temperature": torch.tensor(self.temperature)},
        )

    def compute_topk(
        self,
        student_logits: Tensor,
        teacher: TopKTeacher,
        targets: Tensor | None,
        epoch: Epoch,
    ) -> LossOutput:
        """KD with a top-k teacher: the KL term is :func:`~lud.losses.topk.topk_forward_kl`.

        The teacher's log-probabilities must have been taken at this loss's temperature
        (``TopKTeacher.from_logits(logits, k, temperature=T)``); standardisation needs the full
        teacher logits and is refused.
        """
        assert targets is not None
        if self.standardize:
            raise ValueError("KD with standardize=True z-scores the teacher's full logits: a top-k "
                             "teacher cannot be standardised (pass dense teacher logits)")
        if teacher.temperature != self.temperature:
            raise ValueError(f"the top-k teacher's log-probabilities were taken at temperature "
                             f"{teacher.temperature}, the loss uses {self.temperature}: build the "
                             "teacher at the loss's temperature")
        ce = F.cross_entropy(student_logits, targets)
        t2 = self.temperature * self.temperature
        kd = t2 * topk_forward_kl(student_logits, teacher, self.temperature).mean()
        return self.output(
            {"ce": self.ce_weight * ce, "kd": self.kd_weight * kd},
            {
                "temperature": torch.tensor(self.temperature),
                "topk_missing_mass": teacher.missing_mass().mean(),
            },
        )

    def extra_repr(self) -> str:
        return (
            f"temperature={self.temperature}, ce_weight={self.ce_weight}, "
            f"kd_weight={self.kd_weight}, standardize={self.standardize}"
        )


@register_loss("kd+ls", bench=True, summary="KD on z-scored logits (Sun et al., CVPR 2024)")
class KDLSLoss(KDLoss):
    """KD with logit standardisation, defaulting to the paper's CIFAR-100 values.

    ``T = 2, ce_weight = 0.1, kd_weight = 9, standardize = True`` (Sun et al., CVPR 2024,
    released code ``--logit-stand --base-temp 2 --kd-weight 9``). Some of its released runs use
    ``T = 3`` (e.g. vgg13→vgg8) — pass ``temperature=3`` for those.
    """

    def __init__(
        self,
        temperature: float = 2.0,
        ce_weight: float = 0.1,
        kd_weight: float = 9.0,
        standardize: bool = True,
        validate: bool = True,
    ) -> None:
        super().__init__(
            temperature=temperature,
            ce_weight=ce_weight,
            kd_weight=kd_weight,
            standardize=standardize,
            validate=validate,
        )
