"""Forward+backward time of every registered loss, side by side, and LUD's share of a training step.

Run:  OMP_NUM_THREADS=2 .venv/bin/python benchmarks/loss_speed.py [--repeats 30] [--markdown out.md]

Methods are timed round-robin (one call of each per round, rounds repeated) so that machine noise
hits all of them alike; the table reports the median and the ratio to ``kd``. The LUD variants are
timed for every available ranking backend. The last table times a resnet8x4 training step
(forward, backward, SGD update; B=64, 3×32×32, 100 classes) and reports LUD's added time
(LUD loss minus KD loss, forward+backward) as a fraction of that step.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable

import torch

from lud.losses import available_losses, build_loss, ranking
from lud.models import build_model


def _variants() -> dict[str, Callable[[], torch.nn.Module]]:
    """Every registered loss with its defaults, plus LUD once per ranking backend."""
    out: dict[str, Callable[[], torch.nn.Module]] = {}
    for name in available_losses():
        out[name] = lambda name=name: build_loss(name)
    for backend in ranking.available_backends():
        if backend in ("hard", "auto"):
            continue
        out[f"lud[{backend}]"] = lambda backend=backend: build_loss("lud", rank_backend=backend)
    out["lud[pearson]"] = lambda: build_loss("lud", rank_method="pearson")
    return out


def _time_round_robin(
    fns: dict[str, Callable[[], None]], repeats: int, warmup: int = 3
) -> dict[str, float]:
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) * 1e3 for k, v in samples.items()}


def _loss_step(
    loss: torch.nn.Module, batch: int, classes: int, seed: int = 0
) -> Callable[[], None]:
    g = torch.Generator().manual_seed(seed)
    teacher = torch.randn(batch, classes, generator=g) * 3
    student0 = teacher + torch.randn(batch, classes, generator=g) * 2
    targets = torch.randint(0, classes, (batch,), generator=g)
    loss.train()

    def step() -> None:
        student = student0.clone().requires_grad_(True)
        loss(student, teacher, targets, epoch=30.0).total.backward()

    return step


def loss_table(shapes: list[tuple[int, int]], repeats: int) -> list[str]:
    variants = _variants()
    lines = []
    header = "| loss | " + " | ".join(f"B={b}, C={c} ms | × kd" for b, c in shapes) + " |"
    lines += [header, "|" + "---|" * (1 + 2 * len(shapes))]
    per_shape = []
    for b, c in shapes:
        fns = {name: _loss_step(make(), b, c) for name, make in variants.items()}
        per_shape.append(
            _time_round_robin(fns, repeats if b * c <= 10_000 else max(5, repeats // 3))
        )
    for name in variants:
        cells = []
        for res in per_shape:
            cells.append(f"{res[name]:.2f} | {res[name] / res['kd']:.2f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def step_share(repeats: int) -> list[str]:
    """resnet8x4 SGD step vs. the LUD and KD losses at B=64, C=100."""
    torch.manual_seed(0)
    model = build_model("resnet8x4", num_classes=100)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(64, 3, 32, 32)
    y = torch.randint(0, 100, (64,))
    ce = torch.nn.CrossEntropyLoss()

    def train_step() -> None:
        opt.zero_grad(set_to_none=True)
        ce(model(x), y).backward()
        opt.step()

    fns = {
        "resnet8x4 step (CE)": train_step,
        "kd loss": _loss_step(build_loss("kd"), 64, 100),
        "lud loss": _loss_step(build_loss("lud"), 64, 100),
    }
    res = _time_round_robin(fns, max(5, repeats // 2))
    step = res["resnet8x4 step (CE)"]
    added = res["lud loss"] - res["kd loss"]
    return [
        "| item | ms | share of step |",
        "|---|---|---|",
        f"| resnet8x4 train step, B=64, C=100 | {step:.1f} | 1.000 |",
        f"| kd loss fwd+bwd | {res['kd loss']:.2f} | {res['kd loss'] / step:.3f} |",
        f"| lud loss fwd+bwd | {res['lud loss']:.2f} | {res['lud loss'] / step:.3f} |",
        f"| lud added over kd | {added:.2f} | {added / step:.3f} |",
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--markdown", help="also write the tables to this file")
    args = ap.parse_args()
    env = (
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{platform.processor() or platform.machine()}, "
        f"ranking backends: {', '.join(ranking.available_backends())}"
    )
    out = [f"Environment: {env}", "", "Forward+backward per call (median):", ""]
    out += loss_table([(64, 100), (256, 1000)], args.repeats)
    out += ["", "LUD's share of a training step:", ""]
    out += step_share(args.repeats)
    text = "\n".join(out)
    print(text)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
