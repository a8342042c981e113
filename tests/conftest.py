"""Shared test helpers."""

from __future__ import annotations

import random
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


WORDS = (
    "def return import class self value index items print lambda yield while for if else "
    "try except with open read write list dict tuple range len sum max min"
).split()


def lm_corpus(root: Path, n: int = 12) -> Path:
    """A tiny Python-like corpus for the language-model benchmark (``lud lm-bench``) tests."""
    rng = random.Random(0)
    for i in range(n):
        sub = root / ("pkg" if i % 2 else "") / ("tests" if i == 5 else "")
        sub.mkdir(parents=True, exist_ok=True)
        lines = [f"def f{i}_{j}(x):\n    return {' '.join(rng.choices(WORDS, k=8))}\n" for j in range(40)]
        (sub / f"mod{i}.py").write_text("".join(lines))
    (root / "notes.txt").write_text("not a document")
    return root


def lm_config(tmp: Path, corpus: Path) -> Path:
    """A tiny ``lud lm-bench`` config on :func:`lm_corpus` (written to ``tmp/lm.yaml``)."""
    cfg = {
        "data": {"root": str(corpus), "vocab_size": 300, "seed": 0, "fractions": [0.2, 0.2]},
        "model": {"seq_len": 16},
        "teacher": {
            "layers": 1,
            "width": 32,
            "heads": 2,
            "steps": 6,
            "batch_size": 4,
            "lr": 3e-3,
            "warmup": 2,
            "eval_every": 3,
            "checkpoint_every": 1,
            "seed": 0,
        },
        "students": {"tiny": {"layers": 1, "width": 16, "heads": 2}},
        "train": {
            "steps": 4,
            "batch_size": 4,
            "lr": 3e-3,
            "warmup": 1,
            "eval_every": 2,
            "checkpoint_every": 1,
        },
        "eval": {
            "max_tokens": 256,
            "curve_tokens": 64,
            "batch_size": 8,
            "prompts": 3,
            "prompt_tokens": 4,
            "new_tokens": 4,
        },
        "methods": {
            "ce": {"loss": "ce"},
            "fkl": {"loss": "fkl"},
            "kd": {"loss": "kd", "image_defaults": True},
            "lud": {"loss": "lud", "params": {"category_top_k": 4, "sample_max_rows": 16}},
        },
        "stages": {"screen": {"students": ["tiny"], "seeds": [0], "methods": ["ce", "fkl"]}},
    }

    path = tmp / "lm.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path
