"""Bytes per token and speed of the offline teacher cache (lud.data.teacher_cache) at real vocabularies.

Run:  OMP_NUM_THREADS=2 .venv/bin/python benchmarks/teacher_cache.py [--k 64] [--tokens 8192]
      [--vocab 50257 128256 151936] [--rounds 3]

For each vocabulary a stand-in teacher (fixed random logits, so that the teacher's own cost is not
measured) is cached over ``--tokens`` tokens (sequences of 512) into a temporary folder: the
table gives the bytes per token the manifest reports (shards only; the manifest itself is a few
KB), the codec, and the median over rounds of the time to write (top-k + encode + sha256 + fsync)
and to read back every sequence (checksum + decode) per 1,000 tokens. The machine, threads and
load average before the run are printed with it.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from lud.data.teacher_cache import TeacherCache, write_teacher_cache

SEQ = 512


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run(vocab: int, k: int, tokens: int, rounds: int) -> dict[str, object]:
    g = torch.Generator().manual_seed(0)
    n_seq = max(1, tokens // SEQ)
    seqs = [torch.randint(0, vocab, (SEQ,), generator=g) for _ in range(n_seq)]
    table = torch.randn(SEQ, vocab, generator=g) * 4  # the stand-in teacher's logits per position

    def teacher(ids: torch.Tensor) -> torch.Tensor:
        return table.expand(ids.shape[0], -1, -1)

    writes, reads = [], []
    bpt, codec = 0.0, ""
    for _ in range(rounds):
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            m = write_teacher_cache(Path(tmp) / "c", teacher, seqs, k=k, vocab_size=vocab,
                                    tokenizer_sha256="bench", teacher_sha256="bench", shard_size=4,
                                    batch_size=1)
            writes.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            cache = TeacherCache(Path(tmp) / "c")
            for i in range(len(cache)):
                cache[i]
            reads.append(time.perf_counter() - t0)
            bpt, codec = m["bytes_per_token"], m["codec"]
    per_k = 1000 / (n_seq * SEQ)
    return {"vocab": vocab, "codec": codec, "bytes_per_token": bpt,
            "write_ms": statistics.median(writes) * per_k * 1000,
            "read_ms": statistics.median(reads) * per_k * 1000,
            "spread": (max(writes) - min(writes)) / statistics.median(writes)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--k", type=int, default=64)
    p.add_argument("--tokens", type=int, default=8192)
    p.add_argument("--vocab", type=int, nargs="+", default=[50257, 128256, 151936])
    p.add_argument("--rounds", type=int, default=3)
    a = p.parse_args()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"# {_cpu()}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"load {load:.2f} before the run; k = {a.k}, {a.tokens} tokens, {a.rounds} rounds\n")
    print("| vocabulary | codec | bytes/token | write ms / 1k tokens | read ms / 1k tokens | write spread |")
    print("|---:|---|---:|---:|---:|---:|")
    for vocab in a.vocab:
        r = run(vocab, a.k, a.tokens, a.rounds)
        print(f"| {vocab:,} | {r['codec']} | {r['bytes_per_token']:.0f} | {r['write_ms']:.1f} | "
              f"{r['read_ms']:.1f} | {r['spread']:.0%} |")


if __name__ == "__main__":
    main()
