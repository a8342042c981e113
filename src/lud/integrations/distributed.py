"""Multi-process training: keep parameters that live outside the DDP-wrapped model in step.

A distillation loss with parameters (CTKD's temperature) is not part of the model that DDP or
accelerate wraps, so its gradients are not all-reduced: each rank would step its own copy.
:func:`average_gradients` does that all-reduce; the Trainer integration calls it before every
optimizer step.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.distributed as dist
from torch import nn

__all__ = ["average_gradients"]


def average_gradients(params: Iterable[nn.Parameter]) -> None:
    """Replace each gradient by its mean over the ranks (identity without a process group).

    A missing gradient (a rank whose batch held no valid token) counts as zero, so every rank
    makes the same collective calls in the same order and none waits forever.
    """
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return
    world = dist.get_world_size()
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        dist.all_reduce(p.grad)
        p.grad.div_(world)
