"""The loss library's all-gather: every rank's rows of a tensor, optionally differentiable.

Lives here (not in :mod:`lud.engine`) because losses with ``gather=True`` need it and the loss
library imports nothing else of ``lud``; it uses ``torch.distributed`` only. The engine
re-exports :func:`gather_rows` from :mod:`lud.engine.distributed`.

:func:`gather_rows` concatenates equal-sized per-rank tensors along dim 0 and, when asked, keeps
the autograd graph: its backward sums the incoming gradient over ranks and returns this rank's
slice. A loss computed identically on every rank from gathered logits therefore yields, after
DDP's mean over ranks, the gradient of one process on the global batch.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["gather_rows"]


class _GatherRows(torch.autograd.Function):
    """All-gather along dim 0 whose backward sums the gradient over ranks, then slices."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:  # type: ignore[override]
        x = x.contiguous()
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x)
        ctx.rows = x.shape[0]
        ctx.rank = dist.get_rank()
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:  # type: ignore[override]
        # Every rank back-propagates its own copy of the (identical) loss; the gradient reaching
        # this rank's rows is the sum over ranks of what each copy sends to those rows.
        # A copy: all_reduce works in place and the incoming buffer may be shared.
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.rank * ctx.rows : (ctx.rank + 1) * ctx.rows]


def _check_equal_rows(x: Tensor) -> None:
    sizes = torch.tensor([x.shape[0]], dtype=torch.long, device=x.device)
    parts = [torch.empty_like(sizes) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, sizes)
    got = [int(p) for p in parts]
    if len(set(got)) > 1:
        raise ValueError(
            f"gathering logits across ranks needs the same batch size on every rank, got {got}"
        )


def gather_rows(x: Tensor, *, differentiable: bool = False, check: bool = False) -> Tensor:
    """Concatenate every rank's ``x`` along dim 0, in rank order (``x`` itself in one process).

    Args:
        x: this rank's rows; every rank must pass the same shape.
        differentiable: keep the graph (see the module docstring for the gradient convention).
            Otherwise the result is detached.
        check: first verify that every rank has the same number of rows (one extra tiny
            collective; a mismatch raises ``ValueError`` on every rank instead of corrupting).
    """
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return x
    if check:
        _check_equal_rows(x)
    if differentiable and x.requires_grad:
        return _GatherRows.apply(x)
    x = x.detach().contiguous()
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x)
    return torch.cat(parts, dim=0)
