"""Forward KL, ``KL(p_T || p_S)`` per token — the divergence of torchtune, DistillKit and ModelOpt.

Registered as ``fkl``. Defaults: ``T = 1`` and ``0.5 · CE + 0.5 · KL``, the mix of torchtune's
knowledge-distillation recipes (``kd_ratio: 0.5``, ``(1 − kd_ratio) · CE + kd_ratio · KD``);
``ce_weight=0`` is the pure KL of TRL's GKD at ``β = 0`` and of ModelOpt.

Conventions of the anchors, matched (tests/losses/test_token_divergences.py): a sum over the vocabulary,
a mean over the tokens whose label is not the ignore index. torchtune's ``ForwardKLLoss`` and
DistiLLM's ``forward_kl`` compute the cross-entropy ``−Σ p_T log p_S``, which is this KL plus the
teacher's entropy: same gradient, values offset by a constant of the teacher. Here the KL itself
(0 when the student matches the teacher).
"""

from __future__ import annotations

from torch import Tensor

from .registry import register_loss
from .token_divergence import TokenDivergenceLoss, kl_from_log_probs, register_divergence, scaled_log_softmax
from .topk import topk_forward_kl

__all__ = ["ForwardKLLoss", "forward_kl"]


@register_divergence("fkl")
def forward_kl(student_logits: Tensor, teacher_logits: Tensor, temperature: float | Tensor = 1.0) -> Tensor:
    """``KL(softmax(z_T/T) || softmax(z_S/T))`` per row, shape ``(N,)``."""
    return kl_from_log_probs(scaled_log_softmax(teacher_logits, temperature),
                             scaled_log_softmax(student_logits, temperature))


@register_loss("fkl", family="token", inputs=("dense", "tokens", "topk"),
               summary="forward KL(p_T‖p_S) per token; T = 1, 0.5·CE + 0.5·KL (torchtune)")
class ForwardKLLoss(TokenDivergenceLoss):
    """Forward KL per token: ``ce_weight · CE + (1 − ce_weight) · KL(p_T || p_S)``. Terms: ``ce``, ``fkl``.

    Args: see :class:`~lud.losses.token_divergence.TokenDivergenceLoss`.
    """

    divergence_name = "fkl"
    topk_divergence = staticmethod(topk_forward_kl)

    def __init__(self, temperature: float = 1.0, ce_weight: float = 0.5, vocab_size: int | None = None,
                 validate: bool = True) -> None:
        super().__init__(temperature, ce_weight, vocab_size, validate)
