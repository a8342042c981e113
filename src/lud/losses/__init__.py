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
from .ce import CELoss
from .ctkd import CTKDLoss
from .dist import DISTLoss
from .dkd import DKDLoss
from .fkl import ForwardKLLoss
from .gjsd import GeneralizedJSDLoss
from .kd import KDLoss, KDLSLoss
from .lud import LUDLoss
from .lud_released import LUDReleasedLoss
from .mlkd import MLKDLoss
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
from .rkl import ReverseKLLoss
from .rld import RLDLoss
from .skew import SkewKLLoss, SkewReverseKLLoss
from .standardize import standardize_logits  # noqa: E402
from .token_divergence import token_divergence  # noqa: E402
from .topk import TopKTeacher, topk_forward_kl, topk_reverse_kl  # noqa: E402
from .tvd import TotalVariationLoss
from .wttm import WTTMLoss

__all__ = [
    # the registered loss classes (build_loss(name) builds one of them)
    "CELoss",
    "CTKDLoss",
    "DISTLoss",
    "DKDLoss",
    "ForwardKLLoss",
    "GeneralizedJSDLoss",
    "KDLSLoss",
    "KDLoss",
    "LUDLoss",
    "LUDReleasedLoss",
    "MLKDLoss",
    "RLDLoss",
    "ReverseKLLoss",
    "SkewKLLoss",
    "SkewReverseKLLoss",
    "TotalVariationLoss",
    "WTTMLoss",
    # the interface and the registry
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
