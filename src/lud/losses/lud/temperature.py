"""LUD's dynamic temperature: a hard-rank Spearman ρ between student and teacher logits, mapped
into ``[t_min, t_max]``. Detached: no gradient flows through the temperature.

Shapes broadcast over (B, C): ``"sample"`` gives (B, 1) (row ρ), ``"class"`` (1, C) (column ρ),
``"full"`` (B, C) with ``ρ_ij = (ρ_i + ρ_j) / 2``. Maps (:func:`map_temperature`):

* ``"paper"``: ``t_min + (t_max − t_min)(1 − e^{−ρ⁺})``;
* ``"paper_normalized"``: the same divided by ``1 − e^{−1}``, so ρ ∈ [0, 1] spans
  ``[t_min, t_max]``;
* ``"released"``: linear in the batch-relative ρ, most similar → ``t_min`` (all equal → midpoint);
* ``"minmax"``: linear in the batch-relative ρ, most similar → ``t_max``;
* ``"rank"`` / ``"rank_inverse"``: the batch quantile of ρ mapped uniformly onto
  ``[t_min, t_max]`` / ``[t_max, t_min]``.

Every map is finally clamped into ``[t_min, t_max]``.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

from .. import ranking
from ..registry import suggest

__all__ = ["dynamic_temperature", "map_temperature", "temperature_correlation"]

TempMode = Literal["off", "sample", "class", "full"]
TempMap = Literal["paper", "paper_normalized", "released", "minmax", "rank", "rank_inverse"]

TEMP_MODES = ("off", "sample", "class", "full")
TEMP_MAPS = ("paper", "paper_normalized", "released", "minmax", "rank", "rank_inverse")


def temperature_correlation(
    student_logits: Tensor, teacher_logits: Tensor, mode: TempMode
) -> Tensor:
    """Hard-rank Spearman ρ between student and teacher logits, shaped to broadcast over B×C.

    ``"sample"``: per row, (B, 1). ``"class"``: per column, (1, C). ``"full"``: (B, C) with
    ``ρ_ij = (ρ_i + ρ_j) / 2``. Detached. A column of a one-sample batch has no variance: ρ = 0.
    """
    if mode not in ("sample", "class", "full"):
        raise ValueError(f"temperature mode must be 'sample', 'class' or 'full', got {mode!r}")
    with torch.no_grad():
        s, t = student_logits.detach(), teacher_logits.detach()
        if mode == "sample":
            return _hard_spearman(s, t, dim=1).unsqueeze(1)
        col = _hard_spearman(s, t, dim=0).unsqueeze(0)
        if mode == "class":
            return col
        row = _hard_spearman(s, t, dim=1).unsqueeze(1)
        return 0.5 * (row + col)


# Hard ranks of a whole (N, C) matrix allocate about ten int64/float copies of it (sort values
# and permutation, tie bookkeeping): tens of GiB for 4096 tokens x 131k vocabulary. Vectors along
# `dim` are independent, so ranking them a chunk at a time gives the same values in bounded memory
# (rows bit for bit; column chunks may differ in the last bit, their reductions run on other strides).
_TEMP_CHUNK_ELEMENTS = 2**22


def _hard_spearman(s: Tensor, t: Tensor, dim: int) -> Tensor:
    """Hard-rank Spearman ρ along ``dim`` of 2-D ``s`` and ``t``, in chunks of the other dim."""
    other = 1 - dim
    step = max(1, _TEMP_CHUNK_ELEMENTS // max(1, s.shape[dim]))
    if step >= s.shape[other]:
        return ranking.spearman(s, t, dim=dim, backend="hard")
    parts = [ranking.spearman(a, b, dim=dim, backend="hard")
             for a, b in zip(s.split(step, dim=other), t.split(step, dim=other))]
    return torch.cat(parts)


def _batch_position(rho: Tensor) -> Tensor:
    """``(ρ − min) / (max − min)`` over the batch; 0.5 everywhere when all ρ are equal."""
    lo, hi = rho.min(), rho.max()
    rng = hi - lo
    return torch.where(rng > 1e-12, (rho - lo) / rng.clamp_min(1e-12), torch.full_like(rho, 0.5))


def map_temperature(rho: Tensor, t_min: float, t_max: float, temperature_map: TempMap) -> Tensor:
    """Map correlations to temperatures, always within ``[t_min, t_max]``."""
    span = t_max - t_min
    if temperature_map == "paper":
        t = t_min + span * (1.0 - torch.exp(-rho.clamp_min(0.0)))
    elif temperature_map == "paper_normalized":
        t = t_min + span * (1.0 - torch.exp(-rho.clamp_min(0.0))) / (1.0 - math.exp(-1.0))
    elif temperature_map == "released":
        # most similar → lowest T
        t = t_min + span * (1.0 - _batch_position(rho))
    elif temperature_map == "minmax":
        # the paper's direction (more aligned → higher T), spread over the batch's ρ range
        t = t_min + span * _batch_position(rho)
    elif temperature_map in ("rank", "rank_inverse"):
        # batch quantile of ρ (average ranks for ties): uniform over [t_min, t_max] whatever
        # the spread of ρ; "rank" = paper direction, "rank_inverse" = released direction
        # Spearman values of short vectors are discrete and tie often; rounding to 1e-6 keeps
        # mathematically equal values tied despite float noise
        flat = torch.round(rho.reshape(-1) * 1e6)
        n = flat.numel()
        if n < 2:
            frac = torch.full_like(rho, 0.5)
        else:
            frac = ((ranking.hard_rank(flat.unsqueeze(0), dim=-1)[0] - 1.0) / (n - 1)).reshape(
                rho.shape).to(rho.dtype)
        if temperature_map == "rank_inverse":
            frac = 1.0 - frac
        t = t_min + span * frac
    else:
        hint = suggest(str(temperature_map), TEMP_MAPS)
        raise ValueError(f"unknown temperature_map {temperature_map!r}.{hint}")
    return t.clamp(t_min, t_max)


def dynamic_temperature(
    student_logits: Tensor,
    teacher_logits: Tensor,
    mode: TempMode,
    t_min: float,
    t_max: float,
    temperature_map: TempMap = "paper_normalized",
) -> Tensor:
    """Detached temperature tensor broadcastable to (B, C): (B,1), (1,C) or (B,C)."""
    rho = temperature_correlation(student_logits, teacher_logits, mode)
    return map_temperature(rho, t_min, t_max, temperature_map)
