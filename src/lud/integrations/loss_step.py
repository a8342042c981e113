"""One distillation loss on model outputs: the step the Trainer and TRL integrations share.

:func:`distillation_loss_step` takes the student's and teacher's logits of one micro-batch and its
labels, and returns the scalar to back-propagate with the loss's output:

1. **shared vocabulary** — ``vocab_size`` cuts both logits to their first ``vocab_size``
   columns, for teachers and students whose output layers differ only by padding rows (e.g.
   152,064 vs 151,936); never implicit: without it, different widths are a ``ValueError``;
2. **valid positions** — :func:`~lud.integrations.tokens.valid_rows` (causal shift, ignore index);
3. **budget** — :func:`~lud.integrations.tokens.check_gram_budget`;
4. **loss** — the :mod:`lud.losses` loss on the ``(N, V)`` rows (a mean over them);
5. **token normalisation** — given ``num_items_in_batch`` (the valid positions of the whole
   accumulated batch, as ``transformers.Trainer`` counts them), the mean is rescaled to
   ``mean · N / num_items_in_batch``: the micro-batch's *sum* over the global count. Summed over
   k accumulated micro-batches this is exactly the loss of the one batch k times the size for
   every loss that is a mean over tokens (CE, KD, the token divergences), however the valid
   tokens fall between micro-batches.

Losses with batch-level terms (LUD's category/sample Gram terms, its masks and thresholds, DIST,
MLKD) are computed on each micro-batch's rows alone, so accumulation is *not* the large batch for
them: the rule above makes the accumulated loss the token-weighted mean of the micro-batch losses,
``Σ_i (N_i / N) · L(batch_i)`` (tests/integrations/test_token_normalisation.py checks both statements).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from lud.losses import DistillationLoss, LossOutput, TopKTeacher, build_loss
from lud.losses.token_divergence import shared_vocabulary

from .tokens import IGNORE_INDEX, check_gram_budget, valid_rows
from .topk_teacher import topk_valid_rows

__all__ = ["distillation_loss_step", "resolve_loss", "token_normalised"]


def resolve_loss(loss: str | DistillationLoss, params: dict[str, Any] | None) -> DistillationLoss:
    """A built one-view loss from a registered name (with ``params``) or a built loss.

    ``ValueError`` for ``params`` with a built loss, another type, or a two-view loss (the
    integrations feed one view).
    """
    if isinstance(loss, str):
        built = build_loss(loss, **(params or {}))
    elif isinstance(loss, DistillationLoss):
        if params:
            raise ValueError("loss_params is only for a loss given by name; this loss is already built")
        built = loss
    else:
        raise ValueError("loss must be a registered name or a DistillationLoss, "
                         f"got {type(loss).__name__}")
    if built.two_views:
        raise ValueError(f"loss '{type(built).__name__}' takes two augmented views; the Trainer "
                         "integration feeds one view (build it with two_views=False)")
    return built


def distillation_loss_step(
    loss: DistillationLoss,
    student_logits: Tensor,
    teacher_logits: Tensor | TopKTeacher,
    labels: Tensor,
    *,
    shift: bool,
    epoch: float = 0.0,
    train: bool = True,
    ignore_index: int = IGNORE_INDEX,
    vocab_size: int | None = None,
    max_gram_elements: int | None = None,
    num_items_in_batch: Tensor | int | None = None,
) -> tuple[Tensor, LossOutput | None]:
    """``(scalar, output)`` of ``loss`` on the valid positions of one (micro-)batch.

    Args:
        loss: a built loss of :mod:`lud.losses`.
        student_logits: ``(B, C)`` or ``(B, T, V)``, attached to the graph.
        teacher_logits: same layout (width may exceed ``vocab_size``), or a
            :class:`~lud.losses.TopKTeacher` over the same positions (for losses that take one).
        labels: ``(B,)`` or ``(B, T)``; ``ignore_index`` marks positions that do not count.
        shift: causal language modelling (logit ``t`` predicts label ``t + 1``).
        epoch: passed to the loss.
        train: put the loss in training mode (its running buffers move) or eval mode.
        vocab_size: the shared vocabulary size (see the module docstring); ``None``: equal widths.
        max_gram_elements: refuse Gram matrices above this many elements (``None``: no check).
        num_items_in_batch: valid positions of the whole accumulated batch (see the module doc);
            ``None``: the micro-batch mean.

    Returns:
        The scalar (0 connected to the graph when no position is valid) and the loss's output
        (``None`` then). ``output.total`` is the unscaled micro-batch mean.
    """
    if isinstance(teacher_logits, TopKTeacher):
        if vocab_size is not None:
            student_logits, _ = shared_vocabulary(student_logits, student_logits, vocab_size)
        s, t, y = topk_valid_rows(student_logits, teacher_logits, labels, shift=shift,
                                  ignore_index=ignore_index)
    else:
        if vocab_size is not None:
            student_logits, teacher_logits = shared_vocabulary(student_logits, teacher_logits, vocab_size)
        s, t, y = valid_rows(student_logits, teacher_logits, labels, shift=shift, ignore_index=ignore_index)
    if s.shape[0] == 0:
        # nothing to learn from: a zero that keeps the graph (DDP expects every rank to backward)
        return student_logits.sum() * 0.0, None
    if max_gram_elements is not None:
        check_gram_budget(loss, s.shape[0], s.shape[1], max_gram_elements)
    loss.train(train)  # running buffers move in training only
    out = loss(s, t, y, epoch=epoch)
    total = out.total
    if num_items_in_batch is not None:
        total = token_normalised(total, s.shape[0], num_items_in_batch)
    return total, out


def token_normalised(mean: Tensor, valid: int | Tensor, num_items_in_batch: Tensor | int | Any) -> Tensor:
    """``mean · valid / num_items_in_batch``: a micro-batch's mean over its ``valid`` positions as
    its sum over the accumulated batch's count (see the module docstring)."""
    return mean * (valid / _count(num_items_in_batch, mean.device))


def _count(num_items: Tensor | int | Any, device: torch.device) -> Tensor | float:
    if isinstance(num_items, Tensor):
        if num_items.numel() != 1:
            raise ValueError(f"num_items_in_batch must be one count, got shape {tuple(num_items.shape)}")
        return num_items.to(device=device, dtype=torch.float32).reshape(()).clamp_min(1.0)
    try:
        return max(float(num_items), 1.0)
    except (TypeError, ValueError):
        raise ValueError(f"num_items_in_batch must be a number or a tensor, got {num_items!r}") from None
