"""Where one LUD forward+backward spends its time: a timer around each part, B=256, C=1000.

Run:  OMP_NUM_THREADS=2 .venv/bin/python benchmarks/lud_parts.py [--calls 21] [--batch 256]
      [--classes 1000]

Wraps the loss's parts (as ``lud.losses.lud.loss`` calls them: the Gram and relation rank terms,
the dynamic temperature, the instance KL; ``lud.losses.ranking``: ``soft_rank``, ``hard_rank``,
``pearson``)
with a wall-clock timer and prints, over ``--calls`` calls, the median forward and backward time
of the whole loss and each part's median time per call (nested parts are counted in both, e.g.
the temperature's hard ranks in ``hard_rank`` and in ``dynamic_temperature``). Environment
variables such as ``MALLOC_TRIM_THRESHOLD_`` apply as for any process.
"""

from __future__ import annotations

import argparse
import collections
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

import lud.losses.lud.loss as lud_loss_module
from lud.losses import build_loss, ranking

PARTS = {
    lud_loss_module: ("gram_correlation_loss", "relation_rank_loss", "dynamic_temperature",
                 "instance_kl"),
    ranking: ("soft_rank", "hard_rank", "pearson"),
}


def _timed(fn: Callable[..., Any], log: list[float]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        out = fn(*args, **kwargs)
        log.append(time.perf_counter() - t0)
        return out

    return wrapper


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=21)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--classes", type=int, default=1000)
    args = ap.parse_args()
    logs: dict[str, list[float]] = collections.defaultdict(list)
    for module, names in PARTS.items():
        for name in names:
            setattr(module, name, _timed(getattr(module, name), logs[name]))
    g = torch.Generator().manual_seed(0)
    teacher = torch.randn(args.batch, args.classes, generator=g) * 3
    student0 = teacher + torch.randn(args.batch, args.classes, generator=g) * 2
    targets = torch.randint(0, args.classes, (args.batch,), generator=g)
    loss = build_loss("lud", rank_backend="linear", validate=False)
    forward, backward = [], []
    for _ in range(args.calls):
        student = student0.clone().requires_grad_(True)
        t0 = time.perf_counter()
        out = loss(student, teacher, targets, epoch=5.0)
        t1 = time.perf_counter()
        out.total.backward()
        forward.append(t1 - t0)
        backward.append(time.perf_counter() - t1)
    ms = lambda xs: statistics.median(xs) * 1e3  # noqa: E731
    print(f"B={args.batch}, C={args.classes}, {torch.get_num_threads()} threads, "
          f"{args.calls} calls: forward {ms(forward):.1f} ms, backward {ms(backward):.1f} ms")
    for name, log in logs.items():
        per = len(log) // args.calls
        if per:
            sums = [sum(log[i * per:(i + 1) * per]) for i in range(args.calls)]
            print(f"  {name}: {per} calls per loss call, {ms(sums):.1f} ms")


if __name__ == "__main__":
    main()
