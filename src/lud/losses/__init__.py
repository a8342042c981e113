"""Logit-distillation losses behind one interface (see :mod:`lud.losses.base`).

>>> from lud.losses import build_loss
>>> loss = build_loss("lud")
>>> out = loss(student_logits, teacher_logits, targets, epoch=3.0)  # doctest: +SKIP
>>> out.total.backward()  # doctest: +SKIP
"""

# Importing the method modules registers them.
from . import (  # noqa: E402,F401  (registration side effect)
    ce,
    ctkd,
    dist,
    dkd,
    fkl,
    gjsd,
    kd,
    lud,
    lud_released,
    mlkd,
    rkl,
    rld,
    skew,
    tvd,
    wttm,
)
from .base import DistillationLoss, LossOutput, validate_logits
from .registry import (
    LossEntry,
    available_losses,
    build_loss,
    loss_class,
    loss_entries,
    loss_entry,
    register_loss,
    register_preset,
)
from .standardize import standardize_logits  # noqa: E402
from .token_divergence import token_divergence  # noqa: E402
from .topk import TopKTeacher, topk_forward_kl, topk_reverse_kl  # noqa: E402

__all__ = [
    "DistillationLoss",
    "LossEntry",
    "LossOutput",
    "validate_logits",
    "available_losses",
    "build_loss",
    "loss_class",
    "loss_entries",
    "loss_entry",
    "register_loss",
    "register_preset",
    "standardize_logits",
    "token_divergence",
    "TopKTeacher",
    "topk_forward_kl",
    "topk_reverse_kl",
]
