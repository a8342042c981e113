"""Integrations of the loss library with other training frameworks (front layer, optional).

``lud.integrations.hf`` (the ``hf`` extra: ``pip install 'lud[hf]'``) holds
:class:`~lud.integrations.hf.DistillationTrainer`, a ``transformers.Trainer`` that distils from a
frozen teacher with any registered loss. Importing :mod:`lud.integrations` itself imports neither
``transformers`` nor ``accelerate``: the names below are resolved on first use.

``lud.integrations.trl`` (the ``trl`` extra) holds
:class:`~lud.integrations.trl.GKDDistillationTrainer`: TRL's GKD trainer (on-policy student samples
mixed in with probability λ, sequence-level KD) with any registered loss as its divergence. Both
share :func:`lud.integrations.loss_step.distillation_loss_step`.

Only the command line may import this package (import-linter contract in ``pyproject.toml``).
"""

from __future__ import annotations

from typing import Any

__all__ = ["DistillationTrainer", "GKDDistillationTrainer"]


def __getattr__(name: str) -> Any:
    # lazy: `import lud.integrations` must work (and stay cheap) without transformers installed
    if name == "DistillationTrainer":
        from .hf import DistillationTrainer

        return DistillationTrainer
    if name == "GKDDistillationTrainer":
        from .trl import GKDDistillationTrainer

        return GKDDistillationTrainer
    raise AttributeError(f"module 'lud.integrations' has no attribute {name!r}")
