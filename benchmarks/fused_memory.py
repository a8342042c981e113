"""Peak memory and time of forward KL and of vocabulary-scale LUD: unfused, chunked, fused.

Run:  OMP_NUM_THREADS=1 .venv/bin/python benchmarks/fused_memory.py [--tokens 8192]
      [--vocab 131072] [--hidden 2048] [--chunk 1024] [--repeats 3] [--configs a,b,...]
      [--markdown out.md] [--json out.json]

The problem: student hidden states ``(N, H)`` and output layer ``(V, H)`` (float32, both with
gradient), teacher logits ``(N, V)`` (float32, ``3·randn``), uniform targets. One step is the
output layer, the loss and its backward down to the hidden states and the weight:

* ``fkl unfused``: ``logits = hidden @ W.T``, forward KL at T = 1 per token
  (:func:`lud.losses.fused.forward_kl_rows`), mean, backward — what one writes by default;
* ``fkl chunked``: the same full logits, the loss by :func:`lud.losses.fused.chunked_token_loss`;
* ``fkl fused``: :func:`lud.losses.fused.fused_linear_token_loss` (gradient computed in forward);
* ``fkl fused-recompute``: the same with ``grad_in_forward=False``;
* ``lud unfused`` / ``lud chunked`` / ``lud fused``: LUD restricted for language models
  (``category_top_k=32, sample_max_rows=512``, the rest default) called as
  ``build_loss("lud", ...)(logits, ...)``, then :func:`lud.losses.lud_fused.chunked_lud_loss`
  and :func:`lud.losses.lud_fused.fused_linear_lud_loss`.

Each configuration runs in a fresh interpreter: inputs allocated, a small warm-up call (imports,
thread pools), the peak-RSS mark reset (``/proc/self/clear_refs``, Linux), then one step: its peak
RSS minus the RSS before it is the reported peak (the inputs, 4 GiB of teacher logits at full
size, are not counted; the gradients of hidden states and weight are). Then ``repeats`` - 1 more
steps; time = median of all, spread = (max − min) / median. Before the run: CPU model, threads,
load average, available memory. Goals (issue 19): fused fKL ≤ 0.3× the unfused fKL peak at ≤
1.3× its time; fused LUD ≤ 1.2× the fused fKL peak.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import torch

from lud.losses import build_loss
from lud.losses.fused import chunked_token_loss, forward_kl_rows, fused_linear_token_loss
from lud.losses.lud_fused import chunked_lud_loss, fused_linear_lud_loss

CONFIGS = ("fkl unfused", "fkl chunked", "fkl fused", "fkl fused-recompute",
           "lud unfused", "lud chunked", "lud fused")
LUD_PARAMS = {"category_top_k": 32, "sample_max_rows": 512}
EPOCH = 10.0


def _status_mb(key: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"{key} not in /proc/self/status (Linux only)")


def make_inputs(n: int, v: int, h: int, seed: int = 0, device: str = "cpu"):
    """(hidden (N, H), weight (V, H), teacher logits (N, V), targets (N,)) on ``device``."""
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, h, generator=g).to(device).requires_grad_(True)
    weight = (torch.randn(v, h, generator=g) / h**0.5).to(device).requires_grad_(True)
    teacher = torch.empty(n, v, device=device)
    for s in range(0, n, 256):  # filled in slices: no second N x V temporary
        teacher[s:s + 256] = (torch.randn(min(256, n - s), v, generator=g) * 3).to(device)
    targets = torch.randint(0, v, (n,), generator=g).to(device)
    return hidden, weight, teacher, targets


def make_step(config: str, hidden, weight, teacher, targets, chunk: int):
    """One forward+backward of ``config``; gradients land in ``hidden.grad`` and ``weight.grad``."""
    lud = build_loss("lud", **LUD_PARAMS) if config.startswith("lud") else None

    def step() -> float:
        hidden.grad = weight.grad = None
        if config == "fkl unfused":
            loss = forward_kl_rows(hidden @ weight.t(), teacher).mean()
        elif config == "fkl chunked":
            loss = chunked_token_loss(forward_kl_rows, hidden @ weight.t(), teacher, targets, chunk)
        elif config in ("fkl fused", "fkl fused-recompute"):
            loss = fused_linear_token_loss(forward_kl_rows, hidden, weight, None, teacher, targets,
                                           chunk, grad_in_forward=config == "fkl fused")
        elif config == "lud unfused":
            loss = lud(hidden @ weight.t(), teacher, targets, epoch=EPOCH).total
        elif config == "lud chunked":
            loss = chunked_lud_loss(lud, hidden @ weight.t(), teacher, targets, EPOCH, chunk).total
        elif config == "lud fused":
            loss = fused_linear_lud_loss(lud, hidden, weight, None, teacher, targets, EPOCH,
                                         chunk).total
        else:
            raise ValueError(f"unknown configuration {config!r}; choose from {CONFIGS}")
        loss.backward()
        return float(loss.detach())

    return step


def _child(config: str, n: int, v: int, h: int, chunk: int, repeats: int) -> None:
    small = make_inputs(8, 64, 16)
    make_step(config, *small, chunk=4)()  # imports, thread pools: not the step's memory
    del small
    inputs = make_inputs(n, v, h)
    step = make_step(config, *inputs, chunk=chunk)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM
    base = _status_mb("VmRSS")
    t0 = time.perf_counter()
    value = step()
    times = [time.perf_counter() - t0]
    peak = _status_mb("VmHWM") - base
    for _ in range(repeats - 1):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    print(json.dumps({"config": config, "peak_mb": peak, "times_s": times, "loss": value}))


def machine() -> dict[str, object]:
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f
                         if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    avail = None
    try:
        with open("/proc/meminfo") as f:
            avail = next(int(line.split()[1]) // 1024 for line in f
                         if line.startswith("MemAvailable"))
    except (OSError, StopIteration):
        pass
    return {"cpu": model, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
            "load_average": [round(x, 2) for x in os.getloadavg()],
            "mem_available_mb": avail, "torch": torch.__version__,
            "time_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def run(configs: list[str], n: int, v: int, h: int, chunk: int, repeats: int) -> dict:
    env = machine()
    results = {}
    for config in configs:
        cmd = [sys.executable, os.path.abspath(__file__), "--_child", config, str(n), str(v),
               str(h), str(chunk), str(repeats)]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=7200)
        if proc.returncode != 0:
            raise RuntimeError(f"{config} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
        results[config] = json.loads(proc.stdout.strip().splitlines()[-1])
        print(json.dumps(results[config]), file=sys.stderr, flush=True)  # progress
    return {"machine": env, "tokens": n, "vocab": v, "hidden": h, "chunk": chunk,
            "repeats": repeats, "results": results}


def table(report: dict) -> list[str]:
    res, env = report["results"], report["machine"]
    n, v, h = report["tokens"], report["vocab"], report["hidden"]
    lines = [f"N={n} tokens, V={v}, H={h}, float32, chunk {report['chunk']} tokens; "
             f"{report['repeats']} steps per configuration (forward+backward to the hidden states "
             "and weight), the first included; peak = peak RSS of the first step minus RSS "
             "before it, fresh process, inputs allocated.",
             f"Machine: {env['cpu']}, {env['cores']} cores, torch {env['torch']} with "
             f"{env['torch_threads']} threads (OMP_NUM_THREADS={env['OMP_NUM_THREADS']}), load "
             f"average before the run {env['load_average']}, {env['mem_available_mb']} MB "
             f"available, {env['time_utc']}.", "",
             "| configuration | peak MB | s (median) | spread | loss |", "|---|---|---|---|---|"]
    for config, r in res.items():
        med = statistics.median(r["times_s"])
        spread = (max(r["times_s"]) - min(r["times_s"])) / med if len(r["times_s"]) > 1 else 0.0
        lines.append(f"| {config} | {r['peak_mb']:.0f} | {med:.2f} | {spread * 100:.0f} % | "
                     f"{r['loss']:.6g} |")
    lines += ["", f"float32 N×V = {n * v * 4 / 2**20:.0f} MB, V×H = {v * h * 4 / 2**20:.0f} MB "
              "for scale.", ""]

    def med(c: str) -> float:
        return statistics.median(res[c]["times_s"])

    goals = []
    if "fkl unfused" in res and "fkl fused" in res:
        p = res["fkl fused"]["peak_mb"] / res["fkl unfused"]["peak_mb"]
        t = med("fkl fused") / med("fkl unfused")
        goals.append(f"fused fKL peak / unfused fKL peak = {p:.2f} (goal ≤ 0.30: "
                     f"{'met' if p <= 0.3 else 'NOT met'})")
        goals.append(f"fused fKL time / unfused fKL time = {t:.2f} (goal ≤ 1.30: "
                     f"{'met' if t <= 1.3 else 'NOT met'})")
    if "lud fused" in res and "fkl fused" in res:
        p = res["lud fused"]["peak_mb"] / res["fkl fused"]["peak_mb"]
        goals.append(f"fused LUD peak / fused fKL peak = {p:.2f} (goal ≤ 1.20: "
                     f"{'met' if p <= 1.2 else 'NOT met'})")
    for a, b in (("fkl chunked", "fkl unfused"), ("fkl fused-recompute", "fkl unfused"),
                 ("lud fused", "lud unfused"), ("lud chunked", "lud unfused")):
        if a in res and b in res:
            goals.append(f"{a} / {b}: peak {res[a]['peak_mb'] / res[b]['peak_mb']:.2f}, "
                         f"time {med(a) / med(b):.2f}")
    return lines + [f"* {g}" for g in goals]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=8192)
    ap.add_argument("--vocab", type=int, default=131072)
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--chunk", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--configs", default=",".join(CONFIGS),
                    help="comma-separated subset of: " + ", ".join(CONFIGS))
    ap.add_argument("--markdown", help="also write the table to this file")
    ap.add_argument("--json", help="also write the raw figures to this file")
    ap.add_argument("--_child", nargs=6, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._child:
        _child(args._child[0], *(int(x) for x in args._child[1:]))
        return
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    bad = [c for c in configs if c not in CONFIGS]
    if bad:
        raise SystemExit(f"unknown configuration(s) {bad}; choose from {CONFIGS}")
    report = run(configs, args.tokens, args.vocab, args.hidden, args.chunk, args.repeats)
    text = "\n".join(table(report))
    print(text)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(text + "\n")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
