"""Optimiser and a resumable per-iteration learning-rate schedule."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ..config import SolverConfig

__all__ = ["LRSchedule", "build_optimizer", "lr_factor"]


def build_optimizer(
    solver: SolverConfig, model: nn.Module, loss: nn.Module
) -> torch.optim.Optimizer:
    """SGD or AdamW over the trained model's parameters plus the loss module's parameters.

    The loss parameters (e.g. CTKD's temperature) go in their own group without weight decay:
    decaying a temperature's logit towards zero is an arbitrary prior, not regularisation.
    """
    groups: list[dict[str, Any]] = [
        {
            "params": [p for p in model.parameters() if p.requires_grad],
            "weight_decay": solver.weight_decay,
            "name": "model",
        }
    ]
    loss_params = [p for p in loss.parameters() if p.requires_grad]
    if loss_params:
        groups.append({"params": loss_params, "weight_decay": 0.0, "name": "loss"})
    if solver.optimizer == "sgd":
        return torch.optim.SGD(
            groups, lr=solver.lr, momentum=solver.momentum, nesterov=solver.nesterov
        )
    if solver.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=solver.lr)
    raise ValueError(f"unknown optimizer '{solver.optimizer}' (valid: sgd, adamw)")


def lr_factor(solver: SolverConfig, epoch: float) -> float:
    """Multiplier of ``solver.lr`` at fractional, 0-based ``epoch`` (``step / steps_per_epoch``).

    * warm-up: linear over the first ``warmup_epochs``, reaching 1 at the end of warm-up;
    * ``step``: ×``gamma`` for every milestone ``m`` with ``epoch >= m`` (so milestone 150 means
      "after 150 full epochs", as in the mdistiller recipe), floored at ``min_lr``;
    * ``cosine``: from ``lr`` to ``min_lr`` over the epochs after warm-up, per iteration;
    * ``constant``: 1.
    """
    floor = solver.min_lr / solver.lr
    if solver.schedule == "constant":
        base = 1.0
    elif solver.schedule == "step":
        passed = sum(1 for m in solver.milestones if math.floor(epoch + 1e-9) >= m)
        base = max(solver.gamma**passed, floor)
    elif solver.schedule == "cosine":
        span = max(solver.epochs - solver.warmup_epochs, 1e-12)
        progress = min(max((epoch - solver.warmup_epochs) / span, 0.0), 1.0)
        base = floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
    else:
        raise ValueError(f"unknown schedule '{solver.schedule}' (valid: step, cosine, constant)")
    return base


class LRSchedule:
    """Sets every parameter group's learning rate each iteration from :func:`lr_factor`.

    Its only state is the number of steps taken, so a resumed run continues exactly and a
    resumed run may change ``solver.epochs`` (the new schedule applies from that step).
    """

    def __init__(
        self, optimizer: torch.optim.Optimizer, solver: SolverConfig, steps_per_epoch: int
    ) -> None:
        if steps_per_epoch < 1:
            raise ValueError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}")
        self.optimizer = optimizer
        self.solver = solver
        self.steps_per_epoch = steps_per_epoch
        self.step_count = 0
        self._apply()

    def factor(self, step: int) -> float:
        """Learning-rate multiplier for global iteration ``step`` (0-based)."""
        epoch = step / self.steps_per_epoch
        warm_steps = self.solver.warmup_epochs * self.steps_per_epoch
        warm = min((step + 1) / warm_steps, 1.0) if warm_steps > 0 else 1.0
        return warm * lr_factor(self.solver, epoch)

    def _apply(self) -> None:
        f = self.factor(self.step_count)
        for group in self.optimizer.param_groups:
            group["lr"] = self.solver.lr * f

    def step(self) -> None:
        """Advance one iteration (call after ``optimizer.step()``)."""
        self.step_count += 1
        self._apply()

    @property
    def lr(self) -> float:
        """Current learning rate of the first parameter group."""
        return float(self.optimizer.param_groups[0]["lr"])

    def state_dict(self) -> dict[str, Any]:
        return {"step_count": self.step_count, "steps_per_epoch": self.steps_per_epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["steps_per_epoch"] != self.steps_per_epoch:
            raise ValueError(
                "cannot resume the schedule: the checkpoint ran "
                f"{state['steps_per_epoch']} steps per epoch, this run has "
                f"{self.steps_per_epoch} (batch size or data changed?)"
            )
        self.step_count = int(state["step_count"])
        self._apply()
