"""Skew KL and skew reverse KL with ``α`` (DistiLLM, Ko et al., ICML 2024).

Registered as ``skl`` and ``srkl``::

    skl:  KL(p_T || α · p_T + (1 − α) · p_S)
    srkl: KL(p_S || (1 − α) · p_T + α · p_S)

``α = 0`` is the forward / reverse KL; ``α`` is checked to lie in [0, 1]. Defaults: ``α = 0.1``,
``T = 1`` and the pure divergence (``ce_weight = 0``), as DistiLLM's released scripts
(``--loss-eps 0.1 --kd-ratio 1.0``). Matched conventions: sum over the vocabulary, mean over the
valid tokens; the mixture's log by ``logsumexp`` rather than DistiLLM's ``log`` of a sum.
DistiLLM's ``skewed_forward_kl`` is the cross-entropy ``−Σ p_T log M``: the ``skl`` value plus the
teacher's entropy, with the same gradient; ``srkl`` equals ``skewed_reverse_kl``
(tests/losses/test_token_divergences.py).
"""

from __future__ import annotations

from torch import Tensor

from .registry import register_loss
from .token_divergence import (
    TokenDivergenceLoss,
    kl_from_log_probs,
    log_mixture,
    register_divergence,
    scaled_log_softmax,
    unit_interval,
)

__all__ = ["SkewKLLoss", "SkewReverseKLLoss", "skew_kl", "skew_reverse_kl"]


@register_divergence("skl", alpha=unit_interval)
def skew_kl(student_logits: Tensor, teacher_logits: Tensor, temperature: float | Tensor = 1.0,
            alpha: float = 0.1) -> Tensor:
    """``KL(p_T || α p_T + (1 − α) p_S)`` per row, shape ``(N,)``."""
    log_s = scaled_log_softmax(student_logits, temperature)
    log_t = scaled_log_softmax(teacher_logits, temperature)
    if alpha == 0:
        return kl_from_log_probs(log_t, log_s)
    if alpha == 1:
        return kl_from_log_probs(log_t, log_t)
    return kl_from_log_probs(log_t, log_mixture(log_t, log_s, alpha))


@register_divergence("srkl", alpha=unit_interval)
def skew_reverse_kl(student_logits: Tensor, teacher_logits: Tensor, temperature: float | Tensor = 1.0,
                    alpha: float = 0.1) -> Tensor:
    """``KL(p_S || (1 − α) p_T + α p_S)`` per row, shape ``(N,)``."""
    log_s = scaled_log_softmax(student_logits, temperature)
    log_t = scaled_log_softmax(teacher_logits, temperature)
    if alpha == 0:
        return kl_from_log_probs(log_s, log_t)
    if alpha == 1:
        return kl_from_log_probs(log_s, log_s)
    return kl_from_log_probs(log_s, log_mixture(log_s, log_t, alpha))


@register_loss("skl", family="token", inputs=("dense", "tokens"),
               summary="skew KL (DistiLLM); α = 0.1, T = 1, pure (ce_weight = 0)")
class SkewKLLoss(TokenDivergenceLoss):
    """Skew KL per token, ``ce_weight · CE + (1 − ce_weight) · SKL_α``. Terms: ``ce``, ``skl``.

    Args:
        alpha: skew ``α`` in [0, 1] (0: forward KL).
        temperature, ce_weight, vocab_size, validate: see
            :class:`~lud.losses.token_divergence.TokenDivergenceLoss`.
    """

    divergence_name = "skl"

    def __init__(self, alpha: float = 0.1, temperature: float = 1.0, ce_weight: float = 0.0,
                 vocab_size: int | None = None, validate: bool = True) -> None:
        super().__init__(temperature, ce_weight, vocab_size, validate, alpha=alpha)
        self.alpha = self.divergence_params["alpha"] = unit_interval("alpha", alpha)


@register_loss("srkl", family="token", inputs=("dense", "tokens"),
               summary="skew reverse KL (DistiLLM); α = 0.1, T = 1, pure (ce_weight = 0)")
class SkewReverseKLLoss(SkewKLLoss):
    """Skew reverse KL per token, ``ce_weight · CE + (1 − ce_weight) · SRKL_α``. Terms: ``ce``, ``srkl``.

    Args: as :class:`SkewKLLoss` (``alpha = 0``: reverse KL).
    """

    divergence_name = "srkl"
