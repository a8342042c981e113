"""LUD's confidences, confidence masks and uncertainty weights (all detached, no device sync).

* **confidence** ``conf_b = max_c softmax(z_T[b] / T)`` (``confidence_measure="max_prob"``, the
  paper's), or the top-1 minus top-2 probability (``"margin"``), or one minus the normalised
  entropy ``1 − H(p_b) / log C`` (``"entropy"``) — all in [0, 1], 1 = certain; **class confidence**
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
    "confidence_of",
    "confidence_weights",
    "sample_weights",
    "teacher_confidence",
]

ConfidenceMeasure = Literal["max_prob", "margin", "entropy"]
MaskDirection = Literal["confident", "uncertain"]
MaskType = Literal["hard", "soft"]
Threshold = Literal["batch", "running", "fixed"]

CONFIDENCE_MEASURES = ("max_prob", "margin", "entropy")
DIRECTIONS = ("confident", "uncertain")
MASK_TYPES = ("hard", "soft")
THRESHOLDS = ("batch", "running", "fixed")


def teacher_confidence(
    teacher_logits: Tensor, temperature: float, measure: ConfidenceMeasure = "max_prob"
) -> Tensor:
    """Per-sample confidence of the tempered teacher, shape (B,), detached, in [0, 1].

    ``measure``: ``"max_prob"`` ``max_c p_c`` (the paper's), ``"margin"`` the top-1 minus the
    top-2 probability, ``"entropy"`` ``1 − H(p) / log C`` (with ``p = softmax(z_T / T)``; one
    class: 1)."""
    z = teacher_logits.detach() / temperature
    return confidence_of(torch.softmax(z, dim=1), measure, z)


def confidence_of(p: Tensor, measure: ConfidenceMeasure = "max_prob", z: Tensor | None = None
                  ) -> Tensor:
    """:func:`teacher_confidence` from the probability rows ``p`` (B, C); ``z``, the tempered
    logits they came from, gives the entropy through ``log_softmax`` (else ``log`` of ``p``
    floored at the dtype's tiny)."""
    if measure == "max_prob":
        return p.amax(dim=1)
    classes = p.shape[1]
    if classes == 1:
        return torch.ones(p.shape[0], dtype=p.dtype, device=p.device)
    if measure == "margin":
        top = p.topk(2, dim=1).values
        return top[:, 0] - top[:, 1]
    if measure == "entropy":
        log_p = torch.log_softmax(z, dim=1) if z is not None else p.clamp_min(
            torch.finfo(p.dtype).tiny).log()
        h = -(p * log_p).sum(dim=1)
        return (1.0 - h / math.log(classes)).clamp(0.0, 1.0)
    raise ValueError(f"confidence_measure must be one of {CONFIDENCE_MEASURES}, got {measure!r}")


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


def sample_weights(conf: Tensor, direction: MaskDirection = "confident") -> Tensor:
    """The per-sample uncertainty weights ``u``, mean 1, detached: ``conf / mean(conf)``
    (``"confident"``, the paper's: trust the teacher where it is certain) or
    ``(1 − conf) / mean(1 − conf)`` (``"uncertain"``: weigh most the samples it is unsure of).
    All ones when the mean is 0."""
    return confidence_weights(conf if direction == "confident" else 1.0 - conf)


def confidence_weights(conf: Tensor) -> Tensor:
    """Uncertainty weights ``conf / mean(conf)`` (mean 1, detached; all ones if conf is all 0)."""
    conf = conf.detach()
    mean = conf.mean()
    return torch.where(mean > 0, conf / mean.clamp_min(torch.finfo(conf.dtype).tiny),
                       torch.ones_like(conf))
