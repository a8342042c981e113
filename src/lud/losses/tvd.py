"""Total variation distance ``½ Σ_v |p_T(v) − p_S(v)|`` per token (DistiLLM, DistillKit).

Registered as ``tvd``. Defaults: ``T = 1`` and the pure distance (``ce_weight = 0``), as
DistiLLM's ``tv_distance`` with ``--kd-ratio 1.0``. Matched conventions: sum over the vocabulary,
mean over the valid tokens; equals ``tv_distance`` (tests/losses/test_token_divergences.py). Bounded in
[0, 1]; its gradient does not vanish as the student approaches the teacher the way KL's does.
"""

from __future__ import annotations

from torch import Tensor

from .registry import register_loss
from .token_divergence import TokenDivergenceLoss, register_divergence, scaled_log_softmax

__all__ = ["TotalVariationLoss", "total_variation"]


@register_divergence("tvd")
def total_variation(student_logits: Tensor, teacher_logits: Tensor,
                    temperature: float | Tensor = 1.0) -> Tensor:
    """``½ Σ |softmax(z_T/T) − softmax(z_S/T)|`` per row, shape ``(N,)``."""
    p_s = scaled_log_softmax(student_logits, temperature).exp()
    p_t = scaled_log_softmax(teacher_logits, temperature).exp()
    return 0.5 * (p_t - p_s).abs().sum(dim=-1)


@register_loss("tvd", family="token", inputs=("dense", "tokens"),
               summary="total variation distance (DistiLLM); T = 1, pure (ce_weight = 0)")
class TotalVariationLoss(TokenDivergenceLoss):
    """TVD per token, ``ce_weight · CE + (1 − ce_weight) · TVD``. Terms: ``ce``, ``tvd``.

    Args: see :class:`~lud.losses.token_divergence.TokenDivergenceLoss`.
    """

    divergence_name = "tvd"

    def __init__(self, temperature: float = 1.0, ce_weight: float = 0.0, vocab_size: int | None = None,
                 validate: bool = True) -> None:
        super().__init__(temperature, ce_weight, vocab_size, validate)
