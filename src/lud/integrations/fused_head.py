"""The fused output layer + loss path of :class:`lud.integrations.hf.DistillationTrainer`.

With ``fused_chunk_size=k`` the trainer does not ask the student for logits: it runs the
student's base model (``model.base_model``: the transformer without its output layer) for the
final hidden states, takes the output layer from ``model.get_output_embeddings()`` (an
``nn.Linear``, tied or not), keeps the valid positions (shifted by one for causal LMs), and hands
hidden states, weight and bias to :func:`lud.losses.fused.fused_linear_token_loss` (a loss with a
``row_loss`` method, i.e. a mean over tokens) or :func:`lud.losses.lud_fused.fused_linear_lud_loss`
(LUD with ``category_top_k`` / ``sample_max_rows``), ``k`` tokens at a time: the student's
``(N, V)`` logits are never held. The teacher still produces its logits whole.

Limits (``ValueError`` naming them): the student must be a Hugging Face ``PreTrainedModel`` whose
output embeddings are an ``nn.Linear`` and whose logits are exactly that layer's output (models
that scale or soft-cap their logits — config ``logit_scale``, ``final_logit_softcapping`` — are
refused); single process only (the base model is called outside the DDP wrapper's forward).
Only training steps take this path; evaluation (which needs logits for predictions) keeps the
unfused one.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from lud.losses import DistillationLoss, LossOutput
from lud.losses.fused import fused_linear_token_loss
from lud.losses.lud import LUDLoss
from lud.losses.lud_fused import check_chunkable_lud, fused_linear_lud_loss

__all__ = ["check_fused_student", "fused_loss"]


def check_fused_student(model: nn.Module, loss: DistillationLoss) -> tuple[nn.Module, nn.Linear]:
    """(base model, output layer) of ``model``, or a ``ValueError`` saying why it cannot be fused."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if not isinstance(head, nn.Linear):
        raise ValueError(f"fused_chunk_size needs a student whose get_output_embeddings() is an "
                         f"nn.Linear; {type(model).__name__} gives {type(head).__name__}")
    base = getattr(model, "base_model", None)
    if not isinstance(base, nn.Module) or base is model:
        raise ValueError(f"fused_chunk_size needs a student with a separate base_model (the "
                         f"network without its output layer); {type(model).__name__} has none")
    config = getattr(model, "config", None)
    for name in ("logit_scale", "final_logit_softcapping", "output_multiplier_scale"):
        value = getattr(config, name, None)
        if value not in (None, 1, 1.0):
            raise ValueError(f"fused_chunk_size: the student's config sets {name}={value!r}, so "
                             "its logits are not the output layer's output; use the unfused path")
    if isinstance(loss, LUDLoss):
        check_chunkable_lud(loss)
    elif not callable(getattr(loss, "row_loss", None)):
        raise ValueError(f"fused_chunk_size: loss '{type(loss).__name__}' is neither a mean over "
                         "tokens (no row_loss method) nor LUD; use the unfused path")
    return base, head


def output_tensor(outputs: Any, key: str, missing: str) -> Tensor:
    """``outputs[key]`` of a model's output (a dict, a ``ModelOutput`` or a tuple: its first item);
    ``ValueError`` starting with ``missing`` when that is not a tensor."""
    if isinstance(outputs, dict) or hasattr(outputs, key):
        x = outputs[key] if isinstance(outputs, dict) else getattr(outputs, key)
    else:
        x = outputs[0]
    if not isinstance(x, Tensor):
        raise ValueError(f"{missing} (got {type(x).__name__})")
    return x


def _hidden(outputs: Any) -> Tensor:
    return output_tensor(outputs, "last_hidden_state", "the student's base model returned no hidden states")


def fused_loss(
    model: nn.Module,
    features: dict[str, Any],
    teacher_logits: Tensor,
    labels: Tensor,
    loss: DistillationLoss,
    *,
    shift: bool,
    ignore_index: int,
    chunk_size: int,
    epoch: float,
) -> LossOutput | None:
    """The loss of one training batch through the fused path; ``None`` if no position is valid.

    ``model`` is the unwrapped student, ``teacher_logits`` ``(B, T, V)`` (or ``(B, V)``).
    """
    base, head = check_fused_student(model, loss)
    hidden = _hidden(base(**features))
    if hidden.shape[:-1] != teacher_logits.shape[:-1] or labels.shape != hidden.shape[:-1]:
        raise ValueError(f"hidden states {tuple(hidden.shape)}, teacher logits "
                         f"{tuple(teacher_logits.shape)} and labels {tuple(labels.shape)} do not "
                         "match")
    if head.weight.shape[0] != teacher_logits.shape[-1]:
        raise ValueError(f"vocabulary size mismatch: the student's output layer has "
                         f"{head.weight.shape[0]} rows, the teacher's logits "
                         f"{teacher_logits.shape[-1]} columns")
    h, t, y = hidden, teacher_logits, labels
    if shift:
        h, t, y = h[:, :-1], t[:, :-1], y[:, 1:]
    h, t, y = h.reshape(-1, h.shape[-1]), t.reshape(-1, t.shape[-1]), y.reshape(-1)
    keep = y != ignore_index
    if not bool(keep.any()):
        return None
    h, t, y = h[keep], t[keep], y[keep]
    weight, bias = head.weight, head.bias
    if torch.is_autocast_enabled(h.device.type):  # the output layer in the autocast dtype
        dtype = torch.get_autocast_dtype(h.device.type)
        h = h.to(dtype)
    if isinstance(loss, LUDLoss):
        return fused_linear_lud_loss(loss, h, weight, bias, t, y, epoch, chunk_size)
    total = fused_linear_token_loss(loss, h, weight, bias, t, y, chunk_size)
    return LossOutput(total=total, terms={"loss": total.detach()})
