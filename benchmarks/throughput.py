"""Training-step throughput (images/s): the student alone, KD and LUD, side by side.

Run:  OMP_NUM_THREADS=2 .venv/bin/python benchmarks/throughput.py [--batch-size 64]
      [--rounds 5] [--steps 2] [--amp off|bf16|fp16] [--channels-last] [--compile]
      [--device auto] [--markdown out.md]

A step is what the trainer does per batch: the frozen teacher's forward (KD, LUD; no grad), the
student's forward, the loss, backward and an SGD update (resnet32x4 → resnet8x4, 100 classes,
CIFAR-shaped random inputs already on the device: data loading is not measured). The methods are
timed round-robin — every round runs ``--steps`` steps of each, in turn — so that machine noise
and thermal drift hit all of them alike; the table gives the median over rounds of the time per
step, images/s, and the ratio of each method's throughput to the student alone and to KD. A
second table times the loss alone (forward+backward on fixed logits): where LUD's extra time goes.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from lud.engine.runtime import autocast_context, resolve_device
from lud.losses import build_loss
from lud.models import build_model

CLASSES = 100


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _step_fn(
    method: str, args: argparse.Namespace, device: torch.device, teacher: nn.Module | None
) -> Callable[[], None]:
    """One training step of ``method`` on a fixed random batch."""
    torch.manual_seed(0)
    model = build_model("resnet8x4", num_classes=CLASSES).to(device)
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    model.to(memory_format=fmt)
    forward: Any = torch.compile(model) if args.compile else model
    loss = build_loss({"student": "ce"}.get(method, method)).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    scaler = torch.amp.GradScaler(device.type, enabled=args.amp == "fp16")
    g = torch.Generator().manual_seed(1)
    x = torch.randn(args.batch_size, 3, 32, 32, generator=g).to(device, memory_format=fmt)
    y = torch.randint(0, CLASSES, (args.batch_size,), generator=g).to(device)
    use_teacher = method != "student"

    def step() -> None:
        with autocast_context(device, args.amp):
            t_logits = None
            if use_teacher:
                assert teacher is not None
                with torch.no_grad():
                    t_logits = teacher(x)
            s_logits = forward(x)
        out = loss(s_logits, t_logits, y, epoch=10.0)
        opt.zero_grad(set_to_none=True)
        scaler.scale(out.total).backward()
        scaler.step(opt)
        scaler.update()

    return step


def _loss_fn(name: str, batch: int, device: torch.device) -> Callable[[], None]:
    """Forward+backward of the loss alone on fixed CIFAR-100-like logits."""
    g = torch.Generator().manual_seed(2)
    teacher = (torch.randn(batch, CLASSES, generator=g) * 3).to(device)
    student0 = teacher + (torch.randn(batch, CLASSES, generator=g) * 2).to(device)
    y = torch.randint(0, CLASSES, (batch,), generator=g).to(device)
    loss = build_loss(name).to(device)

    def run() -> None:
        s = student0.clone().requires_grad_(True)
        loss(s, teacher, y, epoch=10.0).total.backward()

    return run


def round_robin(
    fns: dict[str, Callable[[], None]], rounds: int, steps: int, warmup: int, device: torch.device
) -> dict[str, list[float]]:
    """Seconds per call of each function in each of ``rounds`` interleaved rounds."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    _sync(device)
    samples: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            _sync(device)
            t0 = time.perf_counter()
            for _ in range(steps):
                fn()
            _sync(device)
            samples[name].append((time.perf_counter() - t0) / steps)
    return samples


def paired_ratio(samples: dict[str, list[float]], ref: str, name: str) -> str:
    """``time(ref) / time(name)`` per round — the throughput of ``name`` relative to ``ref`` —
    as "median (quartiles)". Each round times both back to back, so slow drifts of a shared
    machine cancel; the quartiles show the noise that is left."""
    ratios = [a / b for a, b in zip(samples[ref], samples[name])]
    if len(ratios) < 4 or ref == name:
        return f"{statistics.median(ratios):.3f}"
    q1, q2, q3 = statistics.quantiles(ratios, n=4)
    return f"{q2:.3f} ({q1:.2f}–{q3:.2f})"


def describe(device: torch.device) -> str:
    if device.type == "cuda":
        what = torch.cuda.get_device_name(device)
    else:
        what = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    return f"torch {torch.__version__}, {device} ({what})"


def main(argv: list[str] | None = None) -> str:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=10, help="timed rounds (median over rounds)")
    ap.add_argument("--steps", type=int, default=1, help="steps per method per round")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps per method first")
    ap.add_argument("--amp", choices=("off", "bf16", "fp16"), default="off")
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--compile", action="store_true", help="torch.compile student and teacher")
    ap.add_argument("--methods", default="student,kd,lud", help="comma-separated")
    ap.add_argument("--no-loss-table", action="store_true", help="skip the loss-only table")
    ap.add_argument("--markdown", help="also write the output to this file")
    args = ap.parse_args(argv)
    device = resolve_device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]

    teacher = build_model("resnet32x4", num_classes=CLASSES).to(device).eval()
    teacher.requires_grad_(False)
    if args.channels_last:
        teacher.to(memory_format=torch.channels_last)
    teacher_fwd: nn.Module = torch.compile(teacher) if args.compile else teacher
    fns = {m: _step_fn(m, args, device, teacher_fwd) for m in methods}
    samples = round_robin(fns, args.rounds, args.steps, args.warmup, device)
    res = {k: statistics.median(v) for k, v in samples.items()}

    b = args.batch_size
    flags = (
        f"B={b}, amp={args.amp}, channels_last={args.channels_last}, compile={args.compile}, "
        f"{args.rounds} rounds × {args.steps} steps; medians over rounds, ratios paired per round"
    )
    out = [f"Device: {describe(device)}", f"Setting: {flags}", ""]
    out += ["| method | ms/step | images/s | × student | × KD |", "|---|---|---|---|---|"]
    for m in methods:
        ips = b / res[m]
        vs_s = paired_ratio(samples, "student", m) if "student" in res else "—"
        vs_kd = paired_ratio(samples, "kd", m) if "kd" in res else "—"
        out.append(f"| {m} | {res[m] * 1e3:.1f} | {ips:.1f} | {vs_s} | {vs_kd} |")
    if not args.no_loss_table:
        losses = {m: _loss_fn(m, b, device) for m in ("kd", "lud")}
        lres = {
            k: statistics.median(v)
            for k, v in round_robin(losses, max(args.rounds, 5), 5, 2, device).items()
        }
        step = res.get("kd")
        out += ["", f"Loss alone, forward+backward, B={b}, C={CLASSES}:", ""]
        out += ["| loss | ms | share of a KD step |", "|---|---|---|"]
        for m, t in lres.items():
            share = f"{t / step:.3f}" if step else "—"
            out.append(f"| {m} | {t * 1e3:.2f} | {share} |")
    text = "\n".join(out)
    print(text)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(text + "\n")
    return text


if __name__ == "__main__":
    main()
