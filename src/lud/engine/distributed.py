"""Data-parallel plumbing on top of ``torch.distributed``: process group, DDP, collectives.

Everything here degrades to a no-op in a single process, so the trainer calls it
unconditionally. The launcher is ``torchrun`` (``torchrun --nproc_per_node=N -m lud train
CONFIG``), which sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
``MASTER_PORT``; the group is initialised from those (``env://``).

Conventions (see ``docs/distributed.md``):

* ``data.batch_size`` is **per process**; the global batch is ``batch_size × world_size``.
* Gradients are averaged over ranks (DDP for the model; :func:`average_gradients` for a loss
  module with parameters, e.g. CTKD's temperature).
* :func:`gather_rows` (defined in :mod:`lud.losses.distributed`, the loss library's own
  all-gather, and re-exported here) concatenates equal-sized per-rank tensors along dim 0 and,
  when asked, keeps the autograd graph.
"""

from __future__ import annotations

import logging
import math
import os
import sys
from collections.abc import Iterable
from typing import Any, NoReturn

import torch
import torch.distributed as dist
from torch import Tensor, nn

from ..losses.distributed import gather_rows

__all__ = [
    "BACKENDS",
    "all_reduce_max",
    "all_reduce_sum",
    "average_gradients",
    "barrier",
    "broadcast_buffers",
    "broadcast_object",
    "destroy_process_group",
    "exit_worker",
    "gather_object",
    "gather_rows",
    "init_process_group",
    "is_distributed",
    "rank",
    "resolve_backend",
    "shard_size",
    "world_size",
    "wrap_model",
]

#: Values of ``runtime.dist_backend``.
BACKENDS = ("auto", "gloo", "nccl")


def is_distributed() -> bool:
    """True when a process group with more than one rank is initialised."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    """Number of ranks (1 without a process group)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    """This process's rank (0 without a process group)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def resolve_backend(spec: str, device: torch.device) -> str:
    """``auto`` → ``nccl`` for CUDA devices, ``gloo`` otherwise; checks the explicit choices."""
    if spec not in BACKENDS:
        raise ValueError(f"runtime.dist_backend must be one of {BACKENDS}, got {spec!r}")
    if spec == "auto":
        return "nccl" if device.type == "cuda" else "gloo"
    if spec == "nccl" and device.type != "cuda":
        raise ValueError(
            f"runtime.dist_backend='nccl' needs CUDA devices, but this run uses {device}; "
            "use 'gloo' (or 'auto') on CPU"
        )
    if spec == "nccl" and not dist.is_nccl_available():
        raise ValueError("runtime.dist_backend='nccl' but this torch build has no NCCL")
    return spec


def init_process_group(backend: str, device: torch.device) -> bool:
    """Join the group described by the torchrun environment; returns True if this call created it.

    A group that already exists (a caller that set it up itself) is reused, not re-created.
    """
    if not dist.is_available():
        raise ValueError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    if dist.is_initialized():
        return False
    name = resolve_backend(backend, device)
    kwargs: dict[str, Any] = {}
    if name == "nccl":
        # Binding the group to this rank's GPU avoids NCCL guessing (and a warning) in barrier().
        kwargs["device_id"] = device
    dist.init_process_group(backend=name, init_method="env://", **kwargs)
    return True


def destroy_process_group() -> None:
    """Leave the group (no-op without one)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def exit_worker(code: int) -> NoReturn:
    """End this data-parallel worker process with exit status ``code``, without interpreter shutdown.

    Call it last, once the run is written and the group destroyed. A DDP model keeps its
    process group alive on the C++ side past ``destroy_process_group`` (its gloo threads run
    until the interpreter shuts down), and a gloo thread that drops the last reference to a
    finished collective's tensors during that shutdown needs the GIL and aborts the process
    (``terminate called without an active exception``, SIGABRT; pytorch/pytorch#179291). The
    run is complete and saved, yet ``torchrun`` reports the worker as failed: 2 to 5 of 45
    two-process CPU runs (3 launched side by side on the 2-core build VM), still 1 of 90 with
    the barrier that ends :func:`lud.engine.train`, 0 of 90 with this exit. Python's own
    shutdown work that matters here is done first: logging handlers and standard streams are
    flushed (``atexit`` callbacks do not run).
    """
    try:
        logging.shutdown()
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
    finally:
        os._exit(code)


def barrier() -> None:
    """Wait for every rank (no-op in a single process)."""
    if is_distributed():
        dist.barrier()


def all_reduce_sum(t: Tensor) -> Tensor:
    """Sum ``t`` over ranks in place and return it (unchanged in a single process)."""
    if is_distributed():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_reduce_max(t: Tensor) -> Tensor:
    """Element-wise maximum of ``t`` over ranks, in place (unchanged in a single process)."""
    if is_distributed():
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank (pickled; for small control messages only)."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def gather_object(obj: Any) -> list[Any]:
    """Every rank's ``obj`` in rank order, on every rank (``[obj]`` in a single process)."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def shard_size(n: int, rank: int, world_size: int) -> int:
    """Distinct samples rank ``rank`` holds of an unshuffled ``n``-sample set sharded round-robin.

    :func:`lud.data.loader.epoch_indices` pads ``n`` to a multiple of ``world_size`` by repeating
    its head and gives rank ``r`` the positions ``r, r + W, ...``; the padding sits at positions
    ``>= n``, i.e. at the *end* of a rank's list. The first ``shard_size`` samples a rank visits are
    therefore exactly its share of the data set, and the shares of all ranks partition it.
    """
    if world_size < 1 or not 0 <= rank < world_size or n < 0:
        raise ValueError(f"need n >= 0 and 0 <= rank < world_size, got {n}, {rank}, {world_size}")
    return max(0, math.ceil((n - rank) / world_size))


# --------------------------------------------------------------------------- modules
def wrap_model(model: nn.Module, device: torch.device) -> nn.Module:
    """``DistributedDataParallel(model)`` when distributed, else ``model`` itself.

    ``broadcast_buffers`` (the default) copies rank 0's BatchNorm statistics to every rank at each
    forward; ``gradient_as_bucket_view`` saves one gradient-sized copy.
    """
    if not is_distributed():
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(
        model, device_ids=ids, output_device=ids[0] if ids else None, gradient_as_bucket_view=True
    )


def average_gradients(params: Iterable[nn.Parameter]) -> None:
    """Average the gradients of ``params`` over ranks (one collective for all of them).

    For modules outside DDP, e.g. a loss with a learnable temperature. Parameters without a
    gradient are skipped; whether a parameter got one depends on the code path, which is the
    same on every rank, so every rank reduces the same list.
    """
    if not is_distributed():
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= dist.get_world_size()
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def broadcast_buffers(module: nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s buffers (BatchNorm statistics, running thresholds) to every rank.

    DDP does this for the model at every forward; the trainer calls it for the loss module and
    before evaluation, so that what is evaluated and checkpointed is the same on every rank.
    """
    if not is_distributed():
        return
    for buf in module.buffers():
        if buf.dtype == torch.bool:  # not every backend reduces/broadcasts bool tensors
            tmp = buf.data.to(torch.uint8)
            dist.broadcast(tmp, src=src)
            buf.data.copy_(tmp.bool())
        else:
            dist.broadcast(buf.data, src=src)
