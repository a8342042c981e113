"""Cost of lud.engine.gradnorms.term_grad_norms per call (B=128, C=100, CPU, fp32).

Run: ``OMP_NUM_THREADS=2 python scripts/bench_gradnorms.py [--reps N] [loss ...]`` (default: kd lud,
200 reps).
Prints, per loss, ms per probe call and ms of the loss forward+backward alone, for comparison.
"""

from __future__ import annotations

import sys
import time

import torch

from lud.engine.gradnorms import term_grad_norms
from lud.losses import build_loss


def bench(name: str, b: int = 128, c: int = 100, reps: int = 200) -> tuple[float, float]:
    torch.manual_seed(0)
    loss_fn = build_loss(name)
    s0, t, y = torch.randn(b, c), torch.randn(b, c) * 3, torch.randint(0, c, (b,))

    def once(probe: bool) -> float:
        s = s0.clone().requires_grad_()
        out = loss_fn(s, t, y, epoch=10.0)
        start = time.perf_counter()
        if probe:
            term_grad_norms(out, s)
        else:
            out.total.backward()
        return time.perf_counter() - start

    for _ in range(20):  # warm-up
        once(True), once(False)
    probe = sorted(once(True) for _ in range(reps))[reps // 2]
    backward = sorted(once(False) for _ in range(reps))[reps // 2]
    return 1e3 * probe, 1e3 * backward


if __name__ == "__main__":
    torch.set_num_threads(2)
    args = sys.argv[1:]
    reps = 200
    if args[:1] == ["--reps"]:
        reps, args = int(args[1]), args[2:]
    for loss_name in args or ["kd", "lud"]:
        p, bw = bench(loss_name, reps=reps)
        print(f"{loss_name}: probe {p:.3f} ms/call (median), loss backward alone {bw:.3f} ms")
