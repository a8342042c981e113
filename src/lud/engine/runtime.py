"""The one place that decides the device, the process rank and the precision.

Under ``torchrun`` (``WORLD_SIZE > 1``) :func:`setup_runtime` also joins the process group
(:mod:`lud.engine.distributed`); every rank uses ``cuda:LOCAL_RANK`` (or the CPU). Nothing else in
the package picks a device: modules and batches go to :attr:`RuntimeContext.device`.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..config import RuntimeConfig
from . import distributed

__all__ = ["DeviceBatches", "RuntimeContext", "autocast_context", "resolve_device", "setup_runtime"]

_AMP_DTYPES = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def autocast_context(device: torch.device, amp: str) -> contextlib.AbstractContextManager[Any]:
    """Autocast for forward passes on ``device`` (``amp``: off | bf16 | fp16; off = no-op)."""
    dtype = _AMP_DTYPES[amp]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def resolve_device(spec: str, local_rank: int = 0) -> torch.device:
    """``auto`` → ``cuda:<local_rank>`` if CUDA is available, else ``cpu``; others verbatim."""
    if spec == "auto":
        return (
            torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
        )
    device = torch.device(spec)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"runtime.device is '{spec}' but CUDA is not available; use 'auto' or 'cpu'"
            )
        index = device.index if device.index is not None else local_rank
        if index >= torch.cuda.device_count():
            raise ValueError(
                f"runtime.device '{spec}': only {torch.cuda.device_count()} CUDA device(s)"
            )
        device = torch.device("cuda", index)
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError("runtime.device is 'mps' but MPS is not available")
    return device


@dataclass
class RuntimeContext:
    """Device, rank and precision of this process."""

    device: torch.device
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    amp: str = "off"
    owns_process_group: bool = False

    @property
    def is_main(self) -> bool:
        """Only the main process writes files and prints progress."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """True when running data-parallel over more than one process."""
        return self.world_size > 1

    def close(self) -> None:
        """Leave the process group if :func:`setup_runtime` created it."""
        if self.owns_process_group:
            distributed.destroy_process_group()
            self.owns_process_group = False

    @property
    def amp_dtype(self) -> torch.dtype | None:
        return _AMP_DTYPES[self.amp]

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """Autocast context for forward passes (a no-op when ``amp`` is off)."""
        return autocast_context(self.device, self.amp)

    def grad_scaler(self) -> torch.amp.GradScaler:
        """A GradScaler, enabled only for fp16 (bf16 has fp32's exponent range and needs none)."""
        return torch.amp.GradScaler(self.device.type, enabled=self.amp == "fp16")


def setup_runtime(cfg: RuntimeConfig) -> RuntimeContext:
    """Read rank/world size from the launcher's environment, pick the device, join the group.

    With ``WORLD_SIZE > 1`` the process group is initialised from the torchrun environment
    (``runtime.dist_backend``: ``auto`` = nccl on CUDA, gloo on CPU) unless the caller already did;
    call :meth:`RuntimeContext.close` when done.

    Raises:
        ValueError: an unusable device, backend or precision; ``runtime.device='cuda:N'`` with
            several processes per node (each process must get its own GPU: use ``auto``/``cuda``);
            ``runtime.sync_bn`` on CPU (SyncBatchNorm has no CPU kernel).
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world_size)))
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"bad launcher environment: RANK={rank}, WORLD_SIZE={world_size}")
    if world_size > 1 and local_world > 1 and cfg.device.startswith("cuda:"):
        raise ValueError(
            f"runtime.device='{cfg.device}' would put all {local_world} processes of a node on one "
            "GPU; use runtime.device=auto (or cuda) so that each process takes cuda:LOCAL_RANK"
        )
    device = resolve_device(cfg.device, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    owns = False
    if world_size > 1:
        if cfg.sync_bn and device.type != "cuda":
            raise ValueError(
                f"runtime.sync_bn needs CUDA devices (SyncBatchNorm has no {device.type} kernel); "
                "use a BatchNorm-free model or accept per-rank BatchNorm statistics"
            )
        distributed.resolve_backend(cfg.dist_backend, device)  # a clear error before connecting
        owns = distributed.init_process_group(cfg.dist_backend, device)
        if distributed.world_size() != world_size or distributed.rank() != rank:
            raise ValueError(
                f"the existing process group (rank {distributed.rank()} of "
                f"{distributed.world_size()}) does not match RANK={rank}, WORLD_SIZE={world_size}"
            )
    ctx = RuntimeContext(
        device=device,
        rank=rank,
        world_size=world_size,
        local_rank=local_rank,
        amp=cfg.amp,
        owns_process_group=owns,
    )
    if cfg.amp != "off":
        try:  # older torch builds lack fp16 autocast on CPU: fail now, not mid-run
            with ctx.autocast():
                torch.ones(2, 2, device=device) @ torch.ones(2, 2, device=device)
        except (RuntimeError, ValueError) as exc:
            ctx.close()
            raise ValueError(
                f"runtime.amp='{cfg.amp}' is not supported on {device}: {exc}"
            ) from None
        if cfg.amp == "fp16" and device.type == "cpu":
            warnings.warn(
                "runtime.amp='fp16' on CPU is slow and rarely useful; prefer 'bf16'", stacklevel=2
            )
    return ctx


class DeviceBatches:
    """Batches cut from an in-memory data set that lives on the device (``runtime.data_on_device``).

    CIFAR-sized data (150 MB as uint8) fits on any GPU; holding it there removes the host→device
    copy of every batch, and the batch augmentation already runs on the device. The sample order
    is that of ``loader`` (:class:`lud.data.BatchLoader`: the same shuffle, shard and batch size),
    so a run gives the same batches with and without this option.

    Args:
        loader: the host-side loader whose order, shard and batch size are used.
        images, labels: the whole split, already on the device.
    """

    def __init__(self, loader: Any, images: Tensor, labels: Tensor) -> None:
        self.loader, self.images, self.labels = loader, images, labels

    def set_epoch(self, epoch: int) -> None:
        self.loader.set_epoch(epoch)

    def indices(self) -> Tensor:
        return self.loader.indices()

    @property
    def batch_size(self) -> int:
        return int(self.loader.batch_size)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        idx = self.loader.indices().to(self.images.device)  # one copy per epoch, not per batch
        bs = self.batch_size
        for b in range(len(self.loader)):
            sel = idx[b * bs : (b + 1) * bs]
            yield self.images.index_select(0, sel), self.labels.index_select(0, sel)
