"""Generalized Jensen–Shannon divergence with ``β`` (Agarwal et al., ICLR 2024; TRL's GKD).

Registered as ``gjsd``. At TRL's convention, with ``M = β · p_T + (1 − β) · p_S``::

    D_β = β · KL(p_T || M) + (1 − β) · KL(p_S || M)    for 0 < β < 1,
    D_0 = KL(p_T || p_S) (forward KL),    D_1 = KL(p_S || p_T) (reverse KL)  — exactly.

(``D_β`` goes to 0 as ``β`` goes to 0 or 1; TRL defines the end points as the two KLs, and so does
this loss, so that ``β = 0`` / ``β = 1`` equal ``fkl`` / ``rkl`` bit for bit.) Defaults: ``β = 0.5``,
``T = 1``, pure divergence (``ce_weight = 0``), as TRL's ``GKDConfig``. Matched conventions: sum
over the vocabulary, mean over the valid tokens, logits divided by ``T`` and no ``T^2`` factor;
the values equal ``GKDTrainer.generalized_jsd_loss`` (tests/losses/test_token_divergences.py).
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

__all__ = ["GeneralizedJSDLoss", "generalized_jsd"]


@register_divergence("gjsd", beta=unit_interval)
def generalized_jsd(student_logits: Tensor, teacher_logits: Tensor, temperature: float | Tensor = 1.0,
                    beta: float = 0.5) -> Tensor:
    """TRL's generalized JSD per row, shape ``(N,)`` (``β`` in [0, 1], see the module docstring)."""
    log_s = scaled_log_softmax(student_logits, temperature)
    log_t = scaled_log_softmax(teacher_logits, temperature)
    if beta == 0:
        return kl_from_log_probs(log_t, log_s)
    if beta == 1:
        return kl_from_log_probs(log_s, log_t)
    log_m = log_mixture(log_t, log_s, beta)
    return beta * kl_from_log_probs(log_t, log_m) + (1 - beta) * kl_from_log_probs(log_s, log_m)


@register_loss("gjsd", family="token", inputs=("dense", "tokens"),
               summary="generalized JSD (TRL GKD); β = 0.5, T = 1, pure (ce_weight = 0)")
class GeneralizedJSDLoss(TokenDivergenceLoss):
    """Generalized JSD per token, ``ce_weight · CE + (1 − ce_weight) · D_β``. Terms: ``ce``, ``gjsd``.

    Args:
        beta: ``β`` in [0, 1]; 0 is forward KL, 1 reverse KL.
        temperature, ce_weight, vocab_size, validate: see
            :class:`~lud.losses.token_divergence.TokenDivergenceLoss`.
    """

    divergence_name = "gjsd"

    def __init__(self, beta: float = 0.5, temperature: float = 1.0, ce_weight: float = 0.0,
                 vocab_size: int | None = None, validate: bool = True) -> None:
        super().__init__(temperature, ce_weight, vocab_size, validate, beta=beta)
        self.beta = self.divergence_params["beta"] = unit_interval("beta", beta)
