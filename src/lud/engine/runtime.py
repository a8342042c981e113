"""The one place that decides the device, the process rank and the precision.

Distributed training is not implemented yet; the rank/world-size plumbing is here so that a
DDP launcher (``torchrun -m lud train ...``) only has to fill :class:`RuntimeContext`.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from dataclasses import dataclass
from typing import Any

import torch

from ..config import RuntimeConfig

__all__ = ["RuntimeContext", "resolve_device", "setup_runtime"]


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

    @property
    def is_main(self) -> bool:
        """Only the main process writes files and prints progress."""
        return self.rank == 0

    @property
    def amp_dtype(self) -> torch.dtype | None:
        return {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}[self.amp]

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """Autocast context for forward passes (a no-op when ``amp`` is off)."""
        if self.amp == "off":
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def grad_scaler(self) -> torch.amp.GradScaler:
        """A GradScaler, enabled only for fp16 (bf16 has fp32's exponent range and needs none)."""
        return torch.amp.GradScaler(self.device.type, enabled=self.amp == "fp16")


def setup_runtime(cfg: RuntimeConfig) -> RuntimeContext:
    """Read rank/world size from the launcher's environment and pick the device.

    Raises:
        ValueError: ``WORLD_SIZE > 1`` (not supported yet) or an unusable device/precision.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if world_size > 1:
        raise ValueError(
            f"distributed training (WORLD_SIZE={world_size}) is not implemented yet; "
            "run a single process"
        )
    device = resolve_device(cfg.device, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    ctx = RuntimeContext(
        device=device, rank=rank, world_size=world_size, local_rank=local_rank, amp=cfg.amp
    )
    if cfg.amp != "off":
        try:  # older torch builds lack fp16 autocast on CPU: fail now, not mid-run
            with ctx.autocast():
                torch.ones(2, 2, device=device) @ torch.ones(2, 2, device=device)
        except (RuntimeError, ValueError) as exc:
            raise ValueError(
                f"runtime.amp='{cfg.amp}' is not supported on {device}: {exc}"
            ) from None
        if cfg.amp == "fp16" and device.type == "cpu":
            warnings.warn(
                "runtime.amp='fp16' on CPU is slow and rarely useful; prefer 'bf16'", stacklevel=2
            )
    return ctx
