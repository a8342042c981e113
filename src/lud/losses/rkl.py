"""Reverse KL, ``KL(p_S || p_T)`` per token (mode-seeking; MiniLLM, torchtune, TRL's GKD at β = 1).

Registered as ``rkl``. Defaults: ``T = 1`` and ``0.5 · CE + 0.5 · KL``, torchtune's recipe mix
(``kd_ratio: 0.5``) with its ``ReverseKLLoss``; ``ce_weight=0`` is the pure reverse KL (TRL's GKD
at ``β = 1``, DistiLLM's ``reverse_kl``). Matched conventions: sum over the vocabulary, mean over
the valid tokens; the values equal torchtune's and DistiLLM's (tests/losses/test_token_divergences.py).
"""

from __future__ import annotations

from torch import Tensor

from .registry import register_loss
from .token_divergence import TokenDivergenceLoss, kl_from_log_probs, register_divergence, scaled_log_softmax
from .topk import topk_reverse_kl

__all__ = ["ReverseKLLoss", "reverse_kl"]


@register_divergence("rkl")
def reverse_kl(student_logits: Tensor, teacher_logits: Tensor, temperature: float | Tensor = 1.0) -> Tensor:
    """``KL(softmax(z_S/T) || softmax(z_T/T))`` per row, shape ``(N,)``."""
    return kl_from_log_probs(scaled_log_softmax(student_logits, temperature),
                             scaled_log_softmax(teacher_logits, temperature))


@register_loss("rkl", family="token", inputs=("dense", "tokens", "topk"),
               summary="reverse KL(p_S‖p_T) per token; T = 1, 0.5·CE + 0.5·KL (torchtune)")
class ReverseKLLoss(TokenDivergenceLoss):
    """Reverse KL per token: ``ce_weight · CE + (1 − ce_weight) · KL(p_S || p_T)``. Terms: ``ce``, ``rkl``.

    Args: see :class:`~lud.losses.token_divergence.TokenDivergenceLoss`.
    """

    divergence_name = "rkl"
    topk_divergence = staticmethod(topk_reverse_kl)

    def __init__(self, temperature: float = 1.0, ce_weight: float = 0.5, vocab_size: int | None = None,
                 validate: bool = True) -> None:
        super().__init__(temperature, ce_weight, vocab_size, validate)
