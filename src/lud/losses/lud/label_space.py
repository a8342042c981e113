"""Restriction of LUD to large label spaces (language models: V = 32k–150k classes, N tokens).

* **class set** (``category_top_k``): the category-level parts see only K, the union over rows of
  the teacher's top-k classes, capped (:func:`category_subset`); their probabilities are columns
  of the full-vocabulary softmax, optionally with one folded tail column ``1 − Σ_K p``
  (:func:`restrict_columns`).
* **SDL rows** (``sample_max_rows``): the N×N Gram term sees a seeded random subset of rows
  (:func:`sample_rows`); the seed mixes a fixed seed with a call counter (:func:`mix_seed`).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["category_subset", "mix_seed", "restrict_columns", "sample_rows"]


def category_subset(
    teacher_logits: Tensor, class_mass: Tensor, top_k: int, max_categories: int
) -> Tensor:
    """Sorted indices of the restricted class set: the union over rows of the teacher's top-k
    classes; if that union holds more than ``max_categories`` classes, the ``max_categories``
    of them with the largest ``class_mass`` (total teacher probability over the rows).

    No gradient. One device sync: the union's size decides the output's shape.
    """
    with torch.no_grad():
        z = teacher_logits.detach()
        classes = z.shape[1]
        top = z.topk(min(top_k, classes), dim=1).indices.reshape(-1)
        member = torch.zeros(classes, dtype=torch.bool, device=z.device).index_fill_(0, top, True)
        size = min(int(member.sum()), max_categories)  # the sync
        # members score their mass (>= 0), others -1: the top `size` scores are members only
        score = torch.where(member, class_mass.detach().float(), torch.full_like(class_mass, -1.0))
        return score.topk(size).indices.sort().values


def restrict_columns(probs: Tensor, cols: Tensor, fold: bool, log: bool = False) -> Tensor:
    """Columns ``cols`` of row-stochastic ``probs``; with ``fold`` one more column holding the
    rest of each row's mass, ``1 − Σ kept`` (floored at 0 against rounding). Differentiable.
    ``log``: ``probs`` holds log-probabilities; the result is probabilities all the same."""
    kept = probs.index_select(1, cols)
    if log:
        kept = kept.exp()
    if not fold:
        return kept
    tail = (1.0 - kept.sum(dim=1, keepdim=True)).clamp_min(0.0)
    return torch.cat([kept, tail], dim=1)


def mix_seed(seed: int, counter: int) -> int:
    """A 64-bit generator seed from (seed, counter): distinct counters give distinct seeds."""
    return (seed * 0x9E3779B97F4A7C15 + counter) % 2**64


def sample_rows(n: int, max_rows: int, seed: int, calls: int, device: torch.device) -> Tensor | None:
    """Sorted indices of ``max_rows`` of ``n`` rows drawn without replacement by a CPU generator
    seeded with ``mix_seed(seed, calls)``; ``None`` (all rows) when ``n <= max_rows``."""
    if n <= max_rows:
        return None
    g = torch.Generator().manual_seed(mix_seed(seed, calls))
    rows = torch.randperm(n, generator=g)[:max_rows].sort().values
    return rows.to(device)
