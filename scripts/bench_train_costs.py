"""Training-time costs of two switches: the second (strong) view, and the gradient-norm probe.

Run (from the repository root; OMP_NUM_THREADS=2):

    python scripts/bench_train_costs.py views [--reps 3] [--out /tmp/lud_costs]
    python scripts/bench_train_costs.py probe --teacher PATH/TO/fashion_pairs-ce-cnn_large/best.pt

Each setting is trained as ``--reps`` one-epoch runs, the settings alternating, and the medians
are printed (on a shared machine the load drifts; alternating spreads it over the settings).

``views``: MLKD, student ``cnn_small`` (live ``cnn_small`` teacher trained here 1 epoch), on a
generated CIFAR-format set (10 classes, 1024 training images 3×32×32, batch 64, crop/flip), one
view vs two views (``data.strong_augment: {num_ops: 2, magnitude: 10}``, ``two_views: true``):
``time/images_per_s``.

``probe``: the packaged ``fashion_pairs/lud/cnn_large_mlp_tiny`` config (LUD, 100 classes,
teacher logits cached, batch 128), made smaller to fit the time on a shared machine (60 training
pairs per class: 5,400 training images after the 10 % validation split, 42 steps per epoch), with
``runtime.grad_norms_every`` 0 (off), 10 and 1: ``time/epoch_s``.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
from pathlib import Path
from typing import Any

from lud.config import config_from_dict, load_config, resolve_config
from lud.data import write_cifar_like
from lud.engine import train
from lud.engine.runlog import read_metrics

RUNTIME = {"progress": False, "tensorboard": False, "log_every": 1000}


def _epochs(run_dir: Path, key: str) -> list[float]:
    return [float(r[key]) for r in read_metrics(run_dir / "metrics.jsonl")]


def _interleaved(settings: dict[str, Any], reps: int, key: str) -> None:
    """Train one 1-epoch run per setting, ``reps`` rounds, the settings alternating within each
    round (so a change in the machine's load hits every setting alike); print the medians."""
    got: dict[str, list[float]] = {label: [] for label in settings}
    for rep in range(reps):
        for label, make in settings.items():
            run_dir = make(f"{label.replace(' ', '_').replace('=', '')}_{rep}")
            got[label] += _epochs(run_dir, key)
    base = statistics.median(next(iter(got.values())))
    for label, values in got.items():
        med = statistics.median(values)
        print(f"{label}: {key} {[round(v, 2) for v in values]}, median {med:.2f} "
              f"({med / base:.2f}x the first)", flush=True)


def views(out: Path, reps: int) -> None:
    write_cifar_like(out / "data", num_classes=10, n_train=1024, n_test=128, seed=0)
    base: dict[str, Any] = {
        "experiment": {"output_dir": str(out / "runs"), "seed": 0},
        "data": {"name": "cifar10", "root": str(out / "data"), "batch_size": 64,
                 "eval_batch_size": 256, "augment": "cifar"},
        "model": {"name": "cnn_small"},
        "solver": {"epochs": 1, "lr": 0.05, "schedule": "constant"},
        "runtime": RUNTIME,
    }
    train(config_from_dict({**base, "experiment": {**base["experiment"], "name": "teacher"}}))
    teacher = {"name": "cnn_small", "checkpoint": str(out / "runs" / "teacher" / "best.pt")}

    def setting(params: dict[str, Any], strong: dict[str, int] | None) -> Any:
        def make(name: str) -> Path:
            raw = {**base, "experiment": {**base["experiment"], "name": name},
                   "teacher": teacher, "loss": {"name": "mlkd", "params": params},
                   "data": {**base["data"], "strong_augment": strong}}
            train(config_from_dict(raw))
            return out / "runs" / name
        return make

    _interleaved({"mlkd one view": setting({}, None),
                  "mlkd two views": setting({"two_views": True},
                                            {"num_ops": 2, "magnitude": 10})},
                 reps, "time/images_per_s")


def probe(out: Path, reps: int, teacher: str) -> None:
    path = resolve_config("fashion_pairs/lud/cnn_large_mlp_tiny")

    def setting(every: int) -> Any:
        def make(name: str) -> Path:
            train(load_config(path, [
                f"experiment.name={name}", f"experiment.output_dir={out}/runs",
                f"teacher.checkpoint={teacher}", "solver.epochs=1", "solver.warmup_epochs=0",
                "data.options.train_per_class=60", "data.options.test_per_class=20",
                f"runtime.grad_norms_every={every}", "runtime.progress=false",
                "runtime.tensorboard=false", "runtime.log_every=1000"]))
            return out / "runs" / name
        return make

    _interleaved({f"lud grad_norms_every={n}": setting(n) for n in (0, 10, 1)},
                 reps, "time/epoch_s")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("what", choices=("views", "probe"))
    p.add_argument("--reps", type=int, default=3, help="1-epoch runs per setting")
    p.add_argument("--out", type=Path, default=Path("/tmp/lud_costs"))
    p.add_argument("--teacher", default="runs/fashion_pairs-ce-cnn_large/best.pt")
    a = p.parse_args()
    out = a.out / a.what
    shutil.rmtree(out, ignore_errors=True)
    views(out, a.reps) if a.what == "views" else probe(out, a.reps, a.teacher)


if __name__ == "__main__":
    main()
