"""Shared test helpers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from lud.cli import main
from lud.config import config_from_dict
from lud.data import write_cifar_like
from lud.engine import train


def kd_project(root: Path, *, n_train: int, eval_batch_size: int, seed: int,
               solver: dict[str, Any]) -> dict[str, Path]:
    """A small KD setup on generated CIFAR-10 files, and its uninterrupted reference run.

    An MLP teacher trained for one epoch, then ``root/kd.yaml``: cnn_small (BatchNorm) distilled
    with KD, a 25 % validation split; ``main(["train", kd.yaml, "--name", "ref"])`` has run it.
    """
    write_cifar_like(root / "data", num_classes=10, n_train=n_train, n_test=64, seed=0)
    data = {"name": "cifar10", "root": str(root / "data"), "batch_size": 32,
            "eval_batch_size": eval_batch_size, "val_split": 0.25}
    runtime = {"progress": False, "tensorboard": False, "log_every": 2}
    train(config_from_dict({
        "experiment": {"name": "teacher", "output_dir": str(root / "runs")},
        "data": {**data, "augment": "none"},
        "model": {"name": "mlp"},
        "solver": {"epochs": 1, "lr": 0.05, "milestones": []},
        "runtime": runtime,
    }))
    teacher = root / "runs" / "teacher" / "best.pt"
    student = {
        "experiment": {"output_dir": str(root / "runs"), "seed": seed},
        "data": data,
        "model": {"name": "cnn_small"},
        "teacher": {"name": "mlp", "checkpoint": str(teacher)},
        "loss": {"name": "kd"},
        "solver": solver,
        "runtime": runtime,
    }
    (root / "kd.yaml").write_text(yaml.safe_dump(student))
    assert main(["train", str(root / "kd.yaml"), "--name", "ref"]) == 0
    return {"root": root, "config": root / "kd.yaml", "runs": root / "runs", "teacher": teacher}
