"""Plain cross-entropy: the "student trained alone" baseline, no teacher needed."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from .base import DistillationLoss, Epoch, LossOutput
from .registry import register_loss

__all__ = ["CELoss"]


@register_loss(
    "ce",
    family="teacher",
    summary="cross-entropy alone, no teacher (a teacher, or the student alone)",
)
class CELoss(DistillationLoss):
    """Cross-entropy on the student logits; ``teacher_logits`` may be ``None`` and is ignored.

    Args:
        label_smoothing: mass spread uniformly over all classes, in ``[0, 1)``
            (``torch.nn.functional.cross_entropy`` semantics).
        validate: check inputs on every call (see :class:`DistillationLoss`).

    Terms: ``ce``.
    """

    requires_teacher = False

    def __init__(self, label_smoothing: float = 0.0, validate: bool = True) -> None:
        super().__init__(validate=validate)
        try:
            ls = float(label_smoothing)
        except (TypeError, ValueError):
            raise ValueError(f"label_smoothing must be a number, got {label_smoothing!r}") from None
        if not 0.0 <= ls < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing!r}")
        self.label_smoothing = ls

    def compute(
        self,
        student_logits: Tensor,
        teacher_logits: Tensor | None,
        targets: Tensor | None,
        epoch: Epoch,
    ) -> LossOutput:
        assert targets is not None
        ce = F.cross_entropy(student_logits, targets, label_smoothing=self.label_smoothing)
        return self.output({"ce": ce})

    def extra_repr(self) -> str:
        return f"label_smoothing={self.label_smoothing}"
