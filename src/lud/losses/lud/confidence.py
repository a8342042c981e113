"""LUD's confidences, confidence masks and uncertainty weights (all detached, no device sync).

* **confidence** ``conf_b = max_c softmax(z_T[b] / T)``; **class confidence**
  ``cconf_c = mean_b softmax(z_T[b] / T)_c``.
* **mask**: row weights in [0, 1] from a threshold on the confidences; a term averages over the
  rows it keeps.
* **uncertainty weights** ``u = conf / mean(conf)`` (samples) and ``v = cconf / mean(cconf)``
  (classes), mean 1.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

__all__ = [
    "batch_quantile",
    "class_confidence",
    "confidence_mask",
    "confidence_weights",
    "teacher_confidence",
]

MaskDirection = Literal["confident", "uncertain"]
MaskType = Literal["hard", "soft"]
Threshold = Literal["batch", "running", "fixed"]

DIRECTIONS = ("confident", "uncertain")
MASK_TYPES = ("hard", "soft")
THRESHOLDS = ("batch", "running", "fixed")


def teacher_confidence(teacher_logits: Tensor, temperature: float) -> Tensor:
    """Per-sample confidence ``max_c softmax(z_T / temperature)``, shape (B,), detached."""
    return torch.softmax(teacher_logits.detach() / temperature, dim=1).amax(dim=1)


def class_confidence(teacher_logits: Tensor, temperature: float) -> Tensor:
    """Per-class confidence: batch mean of the tempered teacher probabilities, shape (C,)."""
    return torch.softmax(teacher_logits.detach() / temperature, dim=1).mean(dim=0)


def batch_quantile(values: Tensor, q: float = 0.5) -> Tensor:
    """Linear-interpolation quantile of the values (``numpy.quantile``'s default), a 0-d tensor.

    Written with a sort and static indices rather than :func:`torch.quantile`, so that it never
    reads a value back to the host (no device sync in the training step).
    """
    v = values.detach().float().reshape(-1).sort().values
    pos = q * (v.numel() - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, v.numel() - 1)
    return v[lo] + (pos - lo) * (v[hi] - v[lo])


def confidence_mask(
    conf: Tensor,
    threshold: Tensor | float,
    direction: MaskDirection = "confident",
    mask_type: MaskType = "hard",
    softness: float = 0.1,
) -> Tensor:
    """Row weights in [0, 1] from confidences and a threshold.

    ``"confident"`` keeps ``conf > threshold`` (paper), ``"uncertain"`` keeps
    ``conf <= threshold`` (released code). ``"soft"`` replaces the step by a sigmoid whose width
    is ``softness`` times the mean confidence.
    """
    conf = conf.detach()
    thr = torch.as_tensor(threshold, dtype=conf.dtype, device=conf.device)
    sign = 1.0 if direction == "confident" else -1.0
    if mask_type == "soft":
        scale = softness * conf.mean().clamp_min(torch.finfo(conf.dtype).tiny)
        return torch.sigmoid(sign * (conf - thr) / scale)
    keep = conf > thr if direction == "confident" else conf <= thr
    return keep.to(conf.dtype)


def confidence_weights(conf: Tensor) -> Tensor:
    """Uncertainty weights ``conf / mean(conf)`` (mean 1, detached; all ones if conf is all 0)."""
    conf = conf.detach()
    mean = conf.mean()
    return torch.where(mean > 0, conf / mean.clamp_min(torch.finfo(conf.dtype).tiny),
                       torch.ones_like(conf))
