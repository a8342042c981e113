"""Framework-free pieces of training with a sparse (top-k) teacher, online or from the cache.

:class:`~lud.integrations.hf.DistillationTrainer` gives its loss a
:class:`~lud.losses.topk.TopKTeacher` instead of dense teacher logits in two cases:

* **from the offline cache**: the batch carries ``teacher_topk_indices`` and
  ``teacher_topk_log_probs`` (``(B, T, k)``, from :class:`lud.data.teacher_cache.CachedTeacherDataset`);
  no teacher model is needed at all (``teacher_model=None``);
* **online**: ``teacher_top_k=k`` keeps the teacher's top-k of each position, its log-probabilities
  rounded to float16 exactly as the cache stores them — so training from a cache and training
  with the online top-k teacher see the same numbers, bit for bit.

Either way the teacher's rows go through the same causal shift and ignore-index selection as the
student's logits (:func:`topk_valid_rows`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from lud.data.teacher_cache import INDICES_KEY, LOG_PROBS_KEY, TEMPERATURE_KEY
from lud.losses import DistillationLoss, TopKTeacher
from lud.losses.topk import TAILS

__all__ = ["CACHE_KEYS", "check_topk_options", "online_topk", "pop_cached_teacher", "topk_valid_rows"]

CACHE_KEYS = (INDICES_KEY, LOG_PROBS_KEY, TEMPERATURE_KEY)


def check_topk_options(loss: DistillationLoss, teacher_top_k: int | None, tail: str, cached: bool) -> None:
    """``ValueError`` naming a bad ``teacher_top_k`` or ``tail``, or a loss that cannot take top-k."""
    if teacher_top_k is not None and (
        not isinstance(teacher_top_k, int) or isinstance(teacher_top_k, bool) or teacher_top_k < 1
    ):
        raise ValueError(f"teacher_top_k must be a positive int or None, got {teacher_top_k!r}")
    if tail not in TAILS:
        raise ValueError(f"topk_tail must be one of {TAILS}, got {tail!r}")
    if cached or teacher_top_k is not None:
        loss.check_topk_support()


def pop_cached_teacher(inputs: dict[str, Any], loss: DistillationLoss, tail: str) -> TopKTeacher | None:
    """The batch's cached teacher (removed from ``inputs``), or None if the batch has none."""
    present = [key in inputs for key in (INDICES_KEY, LOG_PROBS_KEY)]
    if not any(present):
        return None
    if not all(present):
        raise ValueError(f"a batch with a cached teacher needs {INDICES_KEY} and {LOG_PROBS_KEY}, got "
                         f"{sorted(inputs)}")
    indices, log_probs = inputs.pop(INDICES_KEY), inputs.pop(LOG_PROBS_KEY)
    temperature = inputs.pop(TEMPERATURE_KEY, None)
    # the temperature the cache was written at (the loss checks it is its own)
    t = _temperature(loss) if temperature is None else float(torch.as_tensor(temperature).reshape(-1)[0])
    return TopKTeacher(indices, log_probs, tail, t, validate=False)


def online_topk(teacher_logits: Tensor, k: int, loss: DistillationLoss, tail: str) -> TopKTeacher:
    """The top-k of dense teacher logits at the loss's temperature, log-probs rounded to float16."""
    return TopKTeacher.from_logits(teacher_logits, k, _temperature(loss), tail=tail,
                                   log_prob_dtype=torch.float16)


def _temperature(loss: DistillationLoss) -> float:
    t = getattr(loss, "temperature", 1.0)
    return float(t) if isinstance(t, (int, float)) else 1.0


def topk_valid_rows(
    student_logits: Tensor,
    teacher: TopKTeacher,
    labels: Tensor,
    *,
    shift: bool,
    ignore_index: int,
) -> tuple[Tensor, TopKTeacher, Tensor]:
    """Like :func:`lud.integrations.tokens.valid_rows`, with a ``(B, T, k)`` top-k teacher."""
    s, y = student_logits, labels
    if teacher.shape != tuple(s.shape[:-1]):
        raise ValueError(f"the top-k teacher covers positions {teacher.shape}, the student's logits "
                         f"{tuple(s.shape[:-1])}: the cache was written over other sequences")
    if y.shape != s.shape[:-1]:
        raise ValueError(f"labels of shape {tuple(y.shape)} do not fit logits of shape {tuple(s.shape)}")
    idx, lp = teacher.indices, teacher.log_probs
    if shift:
        if s.dim() != 3:
            raise ValueError(f"shift=True (causal LM) needs (batch, seq, vocab) logits, got {tuple(s.shape)}")
        s, idx, lp, y = s[:, :-1], idx[:, :-1], lp[:, :-1], y[:, 1:]
    keep = y.reshape(-1) != ignore_index
    k = teacher.k
    rows = TopKTeacher(idx.reshape(-1, k)[keep], lp.reshape(-1, k)[keep], teacher.tail,
                       teacher.temperature, validate=False)
    return s.reshape(-1, s.shape[-1])[keep], rows.to(s.device), y.reshape(-1)[keep]
