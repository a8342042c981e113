"""Logit standardisation (Sun et al., "Logit Standardization in Knowledge Distillation", CVPR 2024).

Each logit row is z-scored, ``(x - mean(x)) / (std(x) + eps)``, before the temperature is
applied. The student then only has to match the teacher's *relative* logit pattern, not its
range: the loss becomes invariant to adding a constant to a row and to scaling it by a positive
factor (up to ``eps``).

Values of the paper's released code (``sunshangquan/logit-standardization-KD``, CIFAR-100):
base temperature 2 and distillation weight 9 for every method it modifies —

* KD+LS: ``T=2, ce_weight=0.1, kd_weight=9`` (registered here as ``"kd+ls"``);
* DKD+LS: ``T=2, alpha=1*9, beta=8*9`` (CE weight 1) — use ``build_loss("dkd", standardize=True, ...)``;
* MLKD+LS: base ``T=2`` (so the temperature set becomes 2, 3, 5, 2, 6), all distillation
  weights 9 — use ``build_loss("mlkd", standardize=True, ...)``.

The released code uses the unbiased standard deviation (``torch.std``) and ``eps = 1e-7``; the
default ``eps`` here is the machine epsilon of the input dtype (``1.19e-7`` for float32).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["standardize_logits"]


def standardize_logits(x: Tensor, eps: float | None = None, unbiased: bool = True) -> Tensor:
    """Z-score ``x`` along its last dimension: ``(x - mean) / (std + eps)``.

    Args:
        x: logits of shape ``(..., classes)``; any floating dtype.
        eps: added to the standard deviation. ``None`` = machine epsilon of ``x.dtype``.
        unbiased: Bessel-corrected standard deviation, as the paper's released code uses.

    Returns:
        Tensor of the same shape and dtype as ``x``. Rows that are constant (up to rounding
        noise) map to zeros, with zero gradient, instead of 0/0.

    Raises:
        ValueError: if ``x`` is not a floating tensor with at least one dimension, or ``eps``
            is negative or not finite.
    """
    if not isinstance(x, Tensor) or not x.is_floating_point() or x.dim() < 1:
        raise ValueError("standardize_logits needs a floating-point tensor of shape (..., classes)")
    if eps is None:
        eps = torch.finfo(x.dtype).eps
    if not math.isfinite(eps) or eps < 0:
        raise ValueError(f"eps must be a finite non-negative number, got {eps}")
    n = x.shape[-1]
    if n < 2:
        return torch.zeros_like(x)
    # Statistics of bf16/fp16 rows are computed in float32: their 8/11-bit mantissas would
    # otherwise swamp the centred values with rounding error.
    work = x.to(torch.promote_types(x.dtype, torch.float32))
    centred = work - work.mean(dim=-1, keepdim=True)
    var = centred.square().sum(dim=-1, keepdim=True) / (n - 1 if unbiased else n)
    # A constant row leaves only rounding noise of the mean in ``centred`` (a few ulps of the
    # row's magnitude). Treat such rows as constant: output zeros. Selecting *before* sqrt
    # keeps the backward pass free of the 1/sqrt(0) that would otherwise give NaN gradients.
    fin = torch.finfo(work.dtype)
    scale = work.detach().abs().amax(dim=-1, keepdim=True)
    noise_std = 4.0 * math.sqrt(n) * fin.eps * scale
    constant = var.detach() <= noise_std.square() + fin.tiny
    std = torch.sqrt(torch.where(constant, torch.ones_like(var), var))
    out = torch.where(constant, torch.zeros_like(centred), centred / (std + eps))
    return out.to(x.dtype)
