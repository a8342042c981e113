"""The exact top-k teacher from vocabulary-parallel logits, without gathering ``N x V`` logits.

When a teacher's output layer is split over the vocabulary (tensor/vocabulary parallelism: rank
``r`` holds the logits of classes ``[start_r, start_r + V_r)`` for every token), the dense
``log_softmax`` would need the full row on one rank. :func:`vocab_parallel_topk` instead exchanges,
per token, each rank's ``k`` largest logits with their global indices and its local log-sum-exp:
``P·(k·12 + 4)`` bytes per token for ``P`` ranks instead of ``V·4``. The result on every rank is
the exact top-k of the full row — the same classes and, up to float rounding of the combined
log-sum-exp, the same log-probabilities as :meth:`TopKTeacher.from_logits
<lud.losses.topk.TopKTeacher.from_logits>` on the gathered logits (tested on two gloo processes).

A teacher sharded with FSDP (parameters split over ranks, each rank running the whole model on
its own micro-batch) needs no function at all: every rank already holds its own tokens' full
rows and reduces them with ``TopKTeacher.from_logits``; see ``docs/distributed.md``.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

from .topk import TopKTeacher

__all__ = ["vocab_parallel_topk"]


@torch.no_grad()
def vocab_parallel_topk(
    local_logits: Tensor,
    vocab_start: int,
    vocab_size: int,
    k: int,
    temperature: float = 1.0,
    *,
    tail: str = "bucket",
    group: dist.ProcessGroup | None = None,
) -> TopKTeacher:
    """The top-k of rows split over the vocabulary across the ranks of ``group``.

    Args:
        local_logits: ``(N, V_r)``: this rank's slice of the logits, classes
            ``[vocab_start, vocab_start + V_r)``; the same ``N`` tokens on every rank.
        vocab_start: the first class of this rank's slice.
        vocab_size: ``V``, the full vocabulary (the slices must tile it).
        k: classes kept per token (``<= V``).
        temperature: softmax temperature.
        tail: the missing-mass rule the result carries.
        group: the vocabulary-parallel group (default: the world). Without an initialised
            multi-rank group the slice must be the whole vocabulary.

    Returns:
        the ``(N, k)`` :class:`~lud.losses.topk.TopKTeacher` (float32 log-probabilities), the same
        on every rank.
    """
    if local_logits.dim() != 2 or not local_logits.is_floating_point():
        raise ValueError(f"local_logits must be a floating (N, V_r) tensor, got {tuple(local_logits.shape)}")
    if not 1 <= k <= vocab_size:
        raise ValueError(f"k must be in [1, {vocab_size}], got {k}")
    z = local_logits.float() / float(temperature)
    n, width = z.shape
    distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size(group) > 1
    if not distributed:
        if vocab_start != 0 or width != vocab_size:
            raise ValueError(f"one process holds classes [{vocab_start}, {vocab_start + width}) of "
                             f"{vocab_size}: without a process group the slice must be the whole vocabulary")
        return TopKTeacher.from_logits(local_logits, k, temperature, tail=tail)
    world = dist.get_world_size(group)
    widths = [torch.zeros(1, dtype=torch.long, device=z.device) for _ in range(world)]
    dist.all_gather(widths, torch.tensor([width], device=z.device), group=group)
    if int(sum(int(w) for w in widths)) != vocab_size:
        raise ValueError(f"the ranks' vocabulary slices hold {[int(w) for w in widths]} classes, "
                         f"which do not add up to vocab_size={vocab_size}")
    kk = min(k, width)
    lse = torch.logsumexp(z, dim=-1)  # (N,)
    values, indices = z.topk(kk, dim=-1)
    pad = k - kk  # a narrow slice sends fewer candidates: pad with -inf so every rank sends (N, k)
    if pad:
        values = torch.cat([values, values.new_full((n, pad), float("-inf"))], dim=-1)
        indices = torch.cat([indices, indices.new_full((n, pad), -1)], dim=-1)
    indices = indices + vocab_start
    all_values = [torch.empty_like(values) for _ in range(world)]
    all_indices = [torch.empty_like(indices) for _ in range(world)]
    all_lse = [torch.empty_like(lse) for _ in range(world)]
    dist.all_gather(all_values, values, group=group)
    dist.all_gather(all_indices, indices, group=group)
    dist.all_gather(all_lse, lse, group=group)
    total_lse = torch.logsumexp(torch.stack(all_lse, dim=-1), dim=-1, keepdim=True)
    cand_values = torch.cat(all_values, dim=-1)
    cand_indices = torch.cat(all_indices, dim=-1)
    top_values, pos = cand_values.topk(k, dim=-1)
    return TopKTeacher(cand_indices.gather(-1, pos), top_values - total_lse, tail, temperature, vocab_size,
                       validate=False)
