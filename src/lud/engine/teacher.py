"""The frozen teacher: build, load, freeze, and optionally pre-compute its training logits."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..config import TeacherConfig
from .checkpoint import (
    CHECKPOINT_FORMAT,
    CheckpointError,
    atomic_save,
    content_digest,
    read_torch_file,
    verify_checkpoint,
)
from .metrics import predict_logits
from .runtime import RuntimeContext

__all__ = ["TeacherLogitCache", "build_teacher"]


def build_teacher(
    cfg: TeacherConfig, num_classes: int, input_shape: tuple[int, int, int], ctx: RuntimeContext
) -> nn.Module:
    """Build ``cfg.name``, load ``cfg.checkpoint``, freeze it and put it in eval mode.

    A lud run checkpoint records its class count and architecture, so a mismatch is reported
    with both numbers before any weight is touched; other files (mdistiller's ``*_best.pth``,
    raw state dicts) are checked key by key by :func:`lud.models.load_checkpoint_weights`.
    """
    from ..models import build_model, load_checkpoint_weights, resolve_model_name

    assert cfg.name is not None and cfg.checkpoint is not None
    path = Path(cfg.checkpoint).expanduser()
    obj = read_torch_file(path, what="teacher.checkpoint")
    if isinstance(obj, dict) and obj.get("format") == CHECKPOINT_FORMAT:
        try:
            verify_checkpoint(obj, path)
        except CheckpointError as exc:
            raise ValueError(f"teacher.checkpoint: {exc}") from None
        saved_classes = int(obj["num_classes"])
        if saved_classes != num_classes:
            raise ValueError(
                f"class-count mismatch: teacher checkpoint {path} was trained for {saved_classes} "
                f"classes but the data set has {num_classes}"
            )
        saved_model = str(obj["model_name"])
        if resolve_model_name(saved_model) != resolve_model_name(cfg.name):
            raise ValueError(
                f"teacher.name is '{cfg.name}' but {path} holds a '{saved_model}'; "
                f"set teacher.name={saved_model}"
            )
    teacher = build_model(
        cfg.name, num_classes, in_channels=input_shape[0], input_shape=input_shape, **cfg.kwargs
    )
    try:
        load_checkpoint_weights(teacher, obj, strict=True)
    except ValueError as exc:
        raise ValueError(
            f"teacher.checkpoint {path} (data set has {num_classes} classes): {exc}"
        ) from None
    teacher.requires_grad_(False)
    teacher.eval()
    return teacher.to(ctx.device)


class TeacherLogitCache:
    """Teacher logits of every training sample, index-aligned with the training data set.

    Valid only without random augmentation (checked by the trainer): each sample is then the
    same tensor every epoch, so one teacher pass replaces one per epoch. Batches are looked up
    by the data-set indices the loader visits (:meth:`lud.data.BatchLoader.indices`), so the
    shuffle order is exactly that of an uncached run.
    """

    def __init__(self, logits: Tensor) -> None:
        self.logits = logits  # (N, C) float32, CPU

    @classmethod
    def compute(
        cls,
        teacher: nn.Module,
        dataset: Any,
        transform: nn.Module,
        ctx: RuntimeContext,
        batch_size: int,
        channels_last: bool,
    ) -> TeacherLogitCache:
        from ..data import make_loader

        loader = make_loader(dataset, batch_size, shuffle=False)
        return cls(
            predict_logits(
                teacher, loader, transform, ctx.device, amp=ctx.amp, channels_last=channels_last
            )
        )

    @classmethod
    def shared(
        cls,
        folder: str | os.PathLike[str],
        teacher: nn.Module,
        dataset: Any,
        transform: nn.Module,
        ctx: RuntimeContext,
        batch_size: int,
        channels_last: bool,
    ) -> tuple[TeacherLogitCache, bool]:
        """The cache from ``folder`` if an earlier run stored the same one there, else computed
        and stored; returns ``(cache, reused)``.

        The file is named by a SHA-256 of everything the logits depend on: the teacher's weights
        and buffers, the training images and labels, the (evaluation-mode) preprocessing's state,
        the mixed-precision mode and memory format. Any change makes a new file; a file that
        fails to load is recomputed and replaced (written atomically, so a killed run leaves none
        half-written).
        """
        key = content_digest({
            "teacher": type(teacher).__name__,
            "weights": teacher.state_dict(),
            "images": getattr(dataset, "images", None),
            "labels": getattr(dataset, "labels", None),
            "transform": (type(transform).__name__, repr(transform), transform.state_dict()),
            "amp": ctx.amp,
            "channels_last": channels_last,
        })
        path = Path(folder) / f"teacher_logits-{key[:32]}.pt"
        n = len(dataset)
        if path.is_file():
            try:
                logits = torch.load(path, map_location="cpu", weights_only=True)
                if isinstance(logits, Tensor) and logits.dim() == 2 and logits.shape[0] == n:
                    return cls(logits), True
            except Exception:  # noqa: BLE001 - a damaged file is recomputed, not fatal
                pass
        cache = cls.compute(teacher, dataset, transform, ctx, batch_size, channels_last)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_save(cache.logits, path)
        return cache, False

    def lookup(self, indices: Tensor, device: torch.device) -> Tensor:
        """Logits of the given data-set indices, on ``device``."""
        return self.logits.index_select(0, indices.cpu()).to(device, non_blocking=True)
