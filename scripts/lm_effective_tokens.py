"""How many tokens LUD's uncertainty weights leave doing the work, on the lm-bench teacher.

Run (after ``lud lm-bench data`` and ``teacher``)::

    OMP_NUM_THREADS=1 .venv/bin/python scripts/lm_effective_tokens.py [--work-dir runs/lm]

For 8 training batches (seed 0, steps 0-7, as the benchmark draws them) it prints the teacher's
top-1 statistics and, per confidence measure and weight direction, the effective sample size of
``u = sample_weights(conf, direction)`` as a fraction of the batch, ``(Σu)² / (N·Σu²)``
(docs/lm_benchmark.md, "Gradient probe").
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch

from lud.experiments import lm_bench
from lud.losses.lud import sample_weights, teacher_confidence


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work-dir", default="runs/lm")
    ap.add_argument("--config", default="stdlib_bpe8k")
    args = ap.parse_args()
    cfg = lm_bench.load_lm_config(args.config)
    work = Path(args.work_dir)
    data = lm_bench.stage_data(cfg, work, lambda _m: None)
    teacher = lm_bench._load_teacher(cfg, work, data)
    seq, batch = int(cfg["model"]["seq_len"]), int(cfg["train"]["batch_size"])
    rows: dict[str, list[float]] = {}
    for step in range(8):
        ids = lm_bench._batch(data.tokens("train"), seq, batch, 0, step)
        with torch.no_grad():
            z = teacher(input_ids=ids).logits[:, :-1].reshape(-1, data.vocab_size).float()
        p = torch.softmax(z, -1)
        top1 = p.amax(-1)
        rows.setdefault("top-1 median", []).append(float(top1.median()))
        rows.setdefault("top-1 mean", []).append(float(top1.mean()))
        rows.setdefault("share of tokens with top-1 > 0.9", []).append(float((top1 > 0.9).float().mean()))
        ent = -(p * torch.log_softmax(z, -1)).sum(-1)
        rows.setdefault("entropy (nats), mean", []).append(float(ent.mean()))
        for measure in ("max_prob", "entropy", "margin"):
            conf = teacher_confidence(z, 1.0, measure)
            for direction in ("confident", "uncertain"):
                u = sample_weights(conf, direction)
                ess = float(u.sum() ** 2 / (u.pow(2).sum() * u.numel()))
                rows.setdefault(f"effective tokens, {measure} / {direction}", []).append(ess)
    for name, values in rows.items():
        print(f"{name}: {statistics.mean(values):.3f}")


if __name__ == "__main__":
    main()
