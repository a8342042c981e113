"""Forward+backward time of every registered loss, side by side, and LUD's share of a training step.

Run:  OMP_NUM_THREADS=2 .venv/bin/python benchmarks/loss_speed.py [--repeats 30] [--markdown out.md]
      [--compile] [--no-memory] [--keep-freed-memory]
      --vocab [--tokens 4096] [--vocab-size 131072] [--vocab-repeats 3]: only KD against LUD
      restricted for language models (category_top_k=32, sample_max_rows=512), time and peak memory
      of each in a fresh process

Methods are timed round-robin (one call of each per round, rounds repeated) so that machine noise
hits all of them alike; the table reports the median and the ratio to ``kd``. The LUD variants are
timed for every available ranking backend. The last table times a resnet8x4 training step
(forward, backward, SGD update; B=64, 3×32×32, 100 classes) and reports LUD's added time
(LUD loss minus KD loss, forward+backward) as a fraction of that step.

Also, for KD and the LUD variants: the peak resident memory of one forward+backward at each shape
(each in a fresh interpreter: the peak RSS ``VmHWM``, reset just before the call, minus the RSS
then; inputs already allocated; Linux only), and the number of ATen operations of one LUD
forward+backward counted with ``torch.profiler`` — all of them (nested calls included) and the
top-level ones (those not called from inside another ATen op: roughly the kernels launched).
``--compile`` adds LUD under ``torch.compile(fullgraph=True)``: compile time, step time and op
count (the fused Inductor kernels counted separately); and the losses whose weights depend on the
epoch compiled the way a training loop calls them (a new fractional epoch per call): Dynamo's
graph count with the epoch as a float and as a 0-d tensor, eager against compiled time.
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
from collections.abc import Callable
from typing import Any

import torch

from lud.engine.malloc import keep_freed_memory
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
    # which backend the plain "lud" row (rank_backend="auto") ran
    out[f"lud (auto = {ranking.resolve_backend('auto')})"] = out.pop("lud")
    out["lud[pearson]"] = lambda: build_loss("lud", rank_method="pearson")
    return out


# Environment variables that change what the timed code runs: thread pools, BLAS / numpy SIMD
# dispatch (the ranks sort with numpy: AVX-512 or not changes LUD's time), the allocator.
_ENV_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OPENBLAS_CORETYPE",
             "NPY_DISABLE_CPU_FEATURES", "NPY_ENABLE_CPU_FEATURES", "MALLOC_MMAP_THRESHOLD_",
             "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES", "LD_PRELOAD")


def environment() -> str:
    """One line: what decides the figures — CPU, threads (and who set them), load before the
    run, the ranking backends (torchsort installed makes it ``auto``), numpy's sort SIMD level,
    and the environment variables above that are set."""
    import numpy as np

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        from numpy._core._multiarray_umath import __cpu_features__ as feats
        simd = "AVX512F" if feats.get("AVX512F") else ("AVX2" if feats.get("AVX2") else "none")
    except ImportError:
        simd = "unknown"
    set_vars = {k: os.environ[k] for k in _ENV_VARS if os.environ.get(k)}
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    omp = os.environ.get("OMP_NUM_THREADS")
    return (f"torch {torch.__version__}, {torch.get_num_threads()} threads "
            f"(OMP_NUM_THREADS {'=' + omp if omp else 'unset'}), "
            f"{cpu} ({os.cpu_count()} CPUs), load average {load} before the run, "
            f"ranking backends: {', '.join(ranking.available_backends())} (auto = "
            f"{ranking.resolve_backend('auto')}), numpy {np.__version__} SIMD {simd}, "
            f"env: {set_vars or 'none of ' + '/'.join(_ENV_VARS[:4]) + '/... set'}"
            + (f"; WARNING: load {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs, the "
               "figures are not an idle machine's" if os.getloadavg()[0] > 0.5 else ""))


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


def _inputs(batch: int, classes: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """(teacher logits 3·randn, student logits teacher + 2·randn, uniform targets)."""
    g = torch.Generator().manual_seed(seed)
    teacher = torch.randn(batch, classes, generator=g) * 3
    student0 = teacher + torch.randn(batch, classes, generator=g) * 2
    return teacher, student0, torch.randint(0, classes, (batch,), generator=g)


def _loss_step(loss: Callable[..., Any], batch: int, classes: int, seed: int = 0,
               epoch: float | torch.Tensor = 30.0) -> Callable[[], None]:
    """One forward+backward of ``loss`` (a module or its compiled wrapper) on :func:`_inputs`."""
    teacher, student0, targets = _inputs(batch, classes, seed)
    loss.train()

    def step() -> None:
        student = student0.clone().requires_grad_(True)
        loss(student, teacher, targets, epoch=epoch).total.backward()

    return step


def loss_table(
    shapes: list[tuple[int, int]], repeats: int, slow_repeats: int = 3
) -> list[str]:
    """Median ms per forward+backward and the ratio to KD. The pairwise backend at C >= 1000
    (~1.5 s per call) runs ``slow_repeats`` rounds in a round-robin of its own."""
    variants = _variants()
    lines = []
    header = "| loss | " + " | ".join(f"B={b}, C={c} ms | × kd" for b, c in shapes) + " |"
    lines += [header, "|" + "---|" * (1 + 2 * len(shapes))]
    per_shape = []
    for b, c in shapes:
        slow = {"lud[pairwise]"} if c >= 1000 else set()
        fns = {name: _loss_step(make(), b, c) for name, make in variants.items() if name not in slow}
        res = _time_round_robin(fns, repeats if b * c <= 10_000 else max(5, repeats // 3))
        if slow:
            slow_fns = {n: _loss_step(variants[n](), b, c) for n in slow}
            slow_fns["kd"] = fns["kd"]
            slow_res = _time_round_robin(slow_fns, slow_repeats, warmup=1)
            # ratios within the slow round-robin, rescaled to the main run's KD time
            res.update({n: slow_res[n] / slow_res["kd"] * res["kd"] for n in slow})
        per_shape.append(res)
    for name in variants:
        cells = []
        for res in per_shape:
            cells.append(f"{res[name]:.2f} | {res[name] / res['kd']:.2f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


MEMORY_VARIANTS = ("kd", "lud[linear]", "lud[pairwise]", "lud[torchsort]", "lud[pearson]")


def _peak_rss_mb(name: str, batch: int, classes: int) -> float:
    """Peak RSS increase (MB) of one forward+backward of variant ``name``, in a fresh process."""
    cmd = [sys.executable, os.path.abspath(__file__), "--_peak", name, str(batch), str(classes)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=True)
    return float(json.loads(proc.stdout.strip().splitlines()[-1])["peak_mb"])


def _proc_status_mb(key: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"{key} not in /proc/self/status (Linux only)")


def _peak_child(name: str, batch: int, classes: int) -> None:
    variants = _variants()
    step = _loss_step(variants[name](), batch, classes)
    # a small call first: imports, thread pools and allocator set-up are not the loss's memory
    _loss_step(variants[name](), 4, 10)()
    # reset the peak-RSS mark (VmHWM; Linux >= 4.0): importing torch peaks above what follows
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    base = _proc_status_mb("VmRSS")
    step()
    print(json.dumps({"peak_mb": _proc_status_mb("VmHWM") - base}))


def memory_table(shapes: list[tuple[int, int]]) -> list[str]:
    names = [n for n in MEMORY_VARIANTS if n in _variants()]
    lines = ["| loss | " + " | ".join(f"B={b}, C={c} peak MB" for b, c in shapes) + " |",
             "|" + "---|" * (1 + len(shapes))]
    for name in names:
        cells = [f"{_peak_rss_mb(name, b, c):.1f}" for b, c in shapes]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    inputs = ", ".join(f"B·C = {b * c * 4 / 2**20:.2f} MB, C² = {c * c * 4 / 2**20:.2f} MB"
                       for b, c in shapes)
    lines += ["", f"float32 sizes for scale: {inputs}."]
    return lines


VOCAB_LUD = {"category_top_k": 32, "sample_max_rows": 512}
VOCAB_VARIANTS: dict[str, dict[str, object]] = {
    "kd": {},
    "lud restricted (soft ranks)": {**VOCAB_LUD, "rank_method": "soft"},
    "lud restricted (pearson)": {**VOCAB_LUD, "rank_method": "pearson"},
}


def _vocab_child(name: str, tokens: int, vocab: int, repeats: int) -> None:
    """Peak RSS of the first forward+backward, then the median time of ``repeats`` more."""
    params = VOCAB_VARIANTS[name]
    make = (lambda: build_loss("kd")) if name == "kd" else (lambda: build_loss("lud", **params))
    step = _loss_step(make(), tokens, vocab)
    _loss_step(make(), 4, 64)()  # imports, thread pools, allocator set-up: not the loss's memory
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM, as in _peak_child
    base = _proc_status_mb("VmRSS")
    t0 = time.perf_counter()
    step()
    first = time.perf_counter() - t0
    peak = _proc_status_mb("VmHWM") - base
    times = [first]
    for _ in range(repeats - 1):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    print(json.dumps({"peak_mb": peak, "ms": statistics.median(times) * 1e3}))


def vocab_table(tokens: int, vocab: int, repeats: int) -> list[str]:
    """KD against restricted LUD on (tokens, vocab) random logits, each in a fresh process."""
    res = {}
    for name in VOCAB_VARIANTS:
        cmd = [sys.executable, os.path.abspath(__file__), "--_vocab", name, str(tokens),
               str(vocab), str(repeats)]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=3600, check=True)
        res[name] = json.loads(proc.stdout.strip().splitlines()[-1])
    kd = res["kd"]
    lines = [f"tokens N={tokens}, vocabulary V={vocab}; LUD: category_top_k=32, "
             "sample_max_rows=512, other options default; forward+backward, median of "
             f"{repeats} (the first call included); peak RSS of the first call minus RSS before "
             "it, fresh process, inputs already allocated.", "",
             "| loss | ms | × kd | peak MB | × kd |", "|---|---|---|---|---|"]
    for name, r in res.items():
        lines.append(f"| {name} | {r['ms']:.0f} | {r['ms'] / kd['ms']:.2f} | "
                     f"{r['peak_mb']:.0f} | {r['peak_mb'] / kd['peak_mb']:.2f} |")
    lines += ["", f"float32 N×V = {tokens * vocab * 4 / 2**20:.0f} MB for scale."]
    return lines


def _count_ops(fn: Callable[[], None]) -> tuple[int, int, int]:
    """(all ATen ops, top-level ATen ops, fused Inductor kernels) of one call of ``fn``."""
    from torch.profiler import profile

    fn()
    with profile() as prof:
        fn()
    events = prof.events()
    aten = [e for e in events if e.name.startswith("aten::")]
    top = [e for e in aten if not (e.cpu_parent is not None
                                   and e.cpu_parent.name.startswith("aten::"))]
    fused = [e for e in events if "cpp_fused" in e.name or "triton_" in e.name]
    return len(aten), len(top), len(fused)


def _compiled_step(loss: torch.nn.Module, batch: int, classes: int) -> Callable[[], None]:
    teacher, student0, targets = _inputs(batch, classes)
    loss.train()
    torch._inductor.config.cpp.enable_kernel_profile = True  # fused kernels visible to profiler
    fwd = torch.compile(lambda s, t, y: loss(s, t, y, epoch=30.0).total, fullgraph=True,
                        dynamic=False)

    def step() -> None:
        student = student0.clone().requires_grad_(True)
        fwd(student, teacher, targets).backward()

    return step


def ops_and_compile_table(
    shapes: list[tuple[int, int]], repeats: int, compile_too: bool
) -> list[str]:
    """ATen op counts at the first shape; eager vs compiled step time at every shape."""
    b0, c0 = shapes[0]
    rows = ["| variant | ATen ops (all) | ATen ops (top-level) | fused kernels |", "|---|---|---|---|"]
    kd_counts = _count_ops(_loss_step(build_loss("kd"), b0, c0))
    rows.append(f"| kd, eager | {kd_counts[0]} | {kd_counts[1]} | 0 |")
    backend = ranking.resolve_backend("auto")
    for name in dict.fromkeys(["pairwise", "linear", backend]):
        counts = _count_ops(_loss_step(build_loss("lud", rank_backend=name), b0, c0))
        rows.append(f"| lud[{name}], eager | {counts[0]} | {counts[1]} | 0 |")
    if not compile_too:
        return [f"B={b0}, C={c0}, one forward+backward:", ""] + rows
    times = ["| shape | lud[linear] eager ms | compiled ms | compile s | × |", "|---|---|---|---|---|"]
    for i, (b, c) in enumerate(shapes):
        torch._dynamo.reset()
        # validate=False: input validation reads values back (a graph break by design)
        eager = _loss_step(build_loss("lud", rank_backend="linear", validate=False), b, c)
        compiled = _compiled_step(build_loss("lud", rank_backend="linear", validate=False), b, c)
        t0 = time.perf_counter()
        compiled()
        compile_s = time.perf_counter() - t0
        res = _time_round_robin({"eager": eager, "compiled": compiled},
                                repeats if b * c <= 10_000 else max(5, repeats // 3))
        times.append(f"| B={b}, C={c} | {res['eager']:.2f} | {res['compiled']:.2f} | "
                     f"{compile_s:.0f} | {res['eager'] / res['compiled']:.2f} |")
        if i == 0:
            counts = _count_ops(compiled)
            rows.append(f"| lud[linear], torch.compile | {counts[0]} | {counts[1]} | {counts[2]} |")
    return [f"B={b0}, C={c0}, one forward+backward:", ""] + rows + ["", "Step time:", ""] + times


# The losses whose weights change with the epoch (warm-ups, CTKD's curriculum) and KD for scale.
_EPOCH_LOSSES: dict[str, dict[str, object]] = {
    "kd": {},
    "dkd": {"warmup": 2.0},
    "ctkd": {"curriculum_epochs": 2.0},
    "rld": {"warmup": 2.0},
    "lud": {"rank_backend": "linear", "rank_warmup": 2.0},
}


def compiled_loop_table(repeats: int, batch: int = 64, classes: int = 100,
                        steps: int = 12) -> list[str]:
    """Each loss compiled as a training loop calls it: a new fractional epoch at every step.

    Graphs: Dynamo's count after ``steps`` calls with the epoch as a Python float and as a 0-d
    tensor (``aot_eager`` backend: recompiles are decided before the backend runs, and it
    spares Inductor's C++ builds). Time: eager against Inductor, epoch as a tensor, one
    forward+backward, round-robin medians.
    """
    from torch._dynamo.utils import counters

    teacher, student0, targets = _inputs(batch, classes)
    rows = [f"B={batch}, C={classes}, {steps} steps at epochs 0, 0.2, 0.4, …:", "",
            "| loss | graphs, float epoch | graphs, tensor epoch | eager ms | compiled ms | × |",
            "|---|---|---|---|---|---|"]
    for name, params in _EPOCH_LOSSES.items():
        graphs = {}
        for kind in ("float", "tensor"):
            torch._dynamo.reset()
            counters.clear()
            fn = torch.compile(build_loss(name, validate=False, **params), backend="aot_eager")
            for i in range(steps):
                fn(student0, teacher, targets,
                   epoch=torch.tensor(i / 5) if kind == "tensor" else i / 5)
            graphs[kind] = counters["stats"]["unique_graphs"]
        torch._dynamo.reset()
        loss = build_loss(name, validate=False, **params)
        epoch = torch.tensor(0.5)
        res = _time_round_robin(
            {"eager": _loss_step(loss, batch, classes, epoch=epoch),
             "compiled": _loss_step(torch.compile(loss), batch, classes, epoch=epoch)}, repeats)
        rows.append(f"| {name} | {graphs['float']} | {graphs['tensor']} | {res['eager']:.2f} | "
                    f"{res['compiled']:.2f} | {res['eager'] / res['compiled']:.2f} |")
    return rows


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
    ap.add_argument("--compile", action="store_true",
                    help="also time LUD under torch.compile (minutes of compilation on a CPU)")
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-memory table")
    ap.add_argument("--keep-freed-memory", action="store_true",
                    help="the trainer's glibc malloc settings (lud.engine.malloc) for the timed "
                         "tables (the peak-memory children keep the defaults)")
    ap.add_argument("--vocab", action="store_true",
                    help="only the vocabulary-size table: KD vs restricted LUD on (tokens, V)")
    ap.add_argument("--vocab-size", type=int, default=131072)
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--vocab-repeats", type=int, default=3)
    ap.add_argument("--_peak", nargs=3, help=argparse.SUPPRESS)
    ap.add_argument("--_vocab", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._peak:
        _peak_child(args._peak[0], int(args._peak[1]), int(args._peak[2]))
        return
    if args._vocab:
        _vocab_child(args._vocab[0], *(int(x) for x in args._vocab[1:]))
        return
    if args.vocab:
        env = environment()
        text = "\n".join([f"Environment: {env}", ""]
                         + vocab_table(args.tokens, args.vocab_size, args.vocab_repeats))
        print(text)
        if args.markdown:
            with open(args.markdown, "w") as f:
                f.write(text + "\n")
        return
    shapes = [(64, 100), (256, 1000)]
    kept = keep_freed_memory() if args.keep_freed_memory else False
    env = (f"{environment()}, glibc keep-freed-memory settings: {'on' if kept else 'off'}")
    out = [f"Environment: {env}", "", "Forward+backward per call (median):", ""]
    out += loss_table(shapes, args.repeats)
    if not args.no_memory:
        out += ["", "Peak memory of one forward+backward (peak RSS minus RSS before the call, "
                "fresh process):", ""]
        out += memory_table(shapes)
    out += ["", "Kernels:", ""]
    out += ops_and_compile_table(shapes, args.repeats, args.compile)
    if args.compile:
        out += ["", "Compiled inside a training loop (the epoch changes at every step):", ""]
        out += compiled_loop_table(args.repeats)
    out += ["", "LUD's share of a training step:", ""]
    out += step_share(args.repeats)
    text = "\n".join(out)
    print(text)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
