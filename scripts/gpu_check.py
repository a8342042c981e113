"""One prepared run of what has never run on GPU hardware here; figures to one JSON file.

Run:  .venv/bin/python scripts/gpu_check.py [--out gpu_check.json] [--budget 450]
      [--sections trainer,nccl,fused,throughput]
      --cpu-smoke: every section at toy sizes on the CPU (checks this script, not a GPU)

Sections (each timed, each recorded as ok / failed with the error / skipped with the reason; the
JSON is rewritten after every section, so a killed run keeps what it measured):

* ``trainer``: ``lud train`` on the built-in synthetic images (10 classes, 32x32): a cnn_small
  teacher (CE, bf16 autocast), then a resnet8x4 student distilled with LUD under bf16 autocast and
  channels-last, and one under fp16 autocast (GradScaler), channels-last and ``torch.compile``
  (model, teacher and loss); top-1 and wall time from each run's summary.json.
* ``nccl``: with >= 2 CUDA devices, the LUD student above under
  ``torchrun --nproc_per_node=2`` with ``runtime.dist_backend=nccl``; skipped on one device.
* ``fused``: ``benchmarks/fused_memory.py``'s configurations (forward KL and LUD; unfused,
  chunked, fused) at N=8192 tokens, V=131072, H=2048, float32, on the GPU: peak allocated memory
  (``torch.cuda.max_memory_allocated`` minus allocated before the step) and median step time of
  3; tokens/s of the fused forward KL.
* ``throughput``: images/s of a resnet8x4 training step (B=256, bf16 autocast, channels-last)
  alone (CE), with KD and with LUD against a resnet32x4 teacher.

Without a CUDA device (and without ``--cpu-smoke``) it says so, writes ``{"gpu": null, ...}``
and exits 0. Exit 1 if a section failed.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = ("trainer", "nccl", "fused", "throughput")


def _env() -> dict[str, str]:
    env = dict(os.environ)
    src = str(ROOT / "src")
    env["PYTHONPATH"] = src + os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else src
    return env


def machine(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {"torch": torch.__version__, "cuda": torch.version.cuda,
                            "device": str(device), "cpu_threads": torch.get_num_threads(),
                            "time_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=props.name, gpu_memory_gb=round(props.total_memory / 2**30, 1),
                    capability=f"{props.major}.{props.minor}", devices=torch.cuda.device_count())
    return info


# --------------------------------------------------------------------------- trainer (+ nccl)
def _config(root: Path, device: str, **runtime: Any) -> dict[str, Any]:
    return {
        "experiment": {"output_dir": str(root / "runs"), "seed": 0},
        "data": {"name": "synthetic", "batch_size": 128, "eval_batch_size": 250},
        "solver": {"epochs": 1, "lr": 0.05, "schedule": "constant"},
        "runtime": {"device": device, "progress": False, "tensorboard": False, "log_every": 100,
                    **runtime},
    }


def _lud_train(cfg_path: Path, timeout: float, torchrun: int = 0) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "lud", "train", str(cfg_path)]
    if torchrun:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={torchrun}", "-m", "lud", "train", str(cfg_path)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=_env())
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[-2:])} exited {proc.returncode}:\n{proc.stderr[-2500:]}")
    summary_path = cfg_path.parent / "runs" / cfg_path.stem / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    keep = {k: v for k, v in summary.items() if isinstance(v, (int, float, str))}
    return {"process_wall_s": round(wall, 1), **keep}


def _write(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def section_trainer(device: torch.device, smoke: bool, deadline: float) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="lud-gpu-check-"))
    dev = str(device)
    amp = "off" if smoke else "bf16"
    limit = {"max_steps_per_epoch": 2} if smoke else {}
    out: dict[str, Any] = {}
    teacher = _config(root, dev, amp=amp, **limit)
    teacher.update(model={"name": "cnn_small"}, loss={"name": "ce"})
    out[f"teacher_ce_amp_{amp}"] = _lud_train(_write(root / "teacher.yaml", teacher),
                                        deadline - time.time())
    student = _config(root, dev, amp=amp, channels_last=True, **limit)
    student.update(model={"name": "resnet8x4"}, loss={"name": "lud"},
                   teacher={"name": "cnn_small",
                            "checkpoint": str(root / "runs" / "teacher" / "best.pt")})
    out[f"lud_amp_{amp}_channels_last"] = _lud_train(_write(root / "student.yaml", student),
                                                    deadline - time.time())
    if not smoke:  # compile: minutes of CPU compilation in a smoke run
        compiled = json.loads(json.dumps(student))
        compiled["runtime"].update(amp="fp16", compile=True, max_steps_per_epoch=8)
        out["lud_amp_fp16_channels_last_compiled"] = _lud_train(
            _write(root / "compiled.yaml", compiled), deadline - time.time())
    out["config_dir"] = str(root)
    return out


def section_nccl(device: torch.device, smoke: bool, deadline: float) -> dict[str, Any]:
    n = torch.cuda.device_count() if device.type == "cuda" else 0
    if n < 2:
        return {"skipped": f"{n} CUDA device(s): a two-process nccl step needs 2"}
    root = Path(tempfile.mkdtemp(prefix="lud-gpu-check-nccl-"))
    teacher = _config(root, "cuda", amp="bf16")
    teacher.update(model={"name": "cnn_small"}, loss={"name": "ce"})
    _lud_train(_write(root / "teacher.yaml", teacher), deadline - time.time())
    student = _config(root, "cuda", amp="bf16", channels_last=True, dist_backend="nccl")
    student.update(model={"name": "resnet8x4"}, loss={"name": "lud"},
                   teacher={"name": "cnn_small",
                            "checkpoint": str(root / "runs" / "teacher" / "best.pt")})
    return {"lud_two_process_nccl": _lud_train(_write(root / "student.yaml", student),
                                               deadline - time.time(), torchrun=2)}


# --------------------------------------------------------------------------- fused benchmark
def _fused_module() -> Any:
    spec = importlib.util.spec_from_file_location("fused_memory",
                                                  ROOT / "benchmarks" / "fused_memory.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def section_fused(device: torch.device, smoke: bool, deadline: float) -> dict[str, Any]:
    fm = _fused_module()
    n, v, h, chunk, repeats = (64, 512, 32, 16, 2) if smoke else (8192, 131072, 2048, 1024, 3)
    out: dict[str, Any] = {"tokens": n, "vocab": v, "hidden": h, "chunk": chunk, "configs": {}}
    for config in fm.CONFIGS:
        if time.time() > deadline:
            out["configs"][config] = {"skipped": "time budget"}
            continue
        inputs = fm.make_inputs(n, v, h, device=str(device))
        step = fm.make_step(config, *inputs, chunk=chunk)
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
            before = torch.cuda.memory_allocated(device)
        times = []
        for i in range(repeats):
            _sync(device)
            t0 = time.perf_counter()
            loss = step()
            _sync(device)
            times.append(time.perf_counter() - t0)
            if i == 0 and device.type == "cuda":
                peak = (torch.cuda.max_memory_allocated(device) - before) / 2**20
        med = statistics.median(times)
        out["configs"][config] = {"peak_mb": round(peak, 1) if device.type == "cuda" else None,
                                  "median_s": round(med, 4), "times_s": [round(t, 4) for t in times],
                                  "tokens_per_s": round(n / med, 1), "loss": loss}
        del inputs, step
    res = out["configs"]
    if "peak_mb" in res.get("fkl fused", {}) and res["fkl fused"]["peak_mb"]:
        out["fused_fkl_peak_vs_unfused"] = round(res["fkl fused"]["peak_mb"]
                                                 / res["fkl unfused"]["peak_mb"], 3)
        out["fused_fkl_time_vs_unfused"] = round(res["fkl fused"]["median_s"]
                                                 / res["fkl unfused"]["median_s"], 3)
        if res.get("lud fused", {}).get("peak_mb"):
            out["fused_lud_peak_vs_fused_fkl"] = round(res["lud fused"]["peak_mb"]
                                                       / res["fkl fused"]["peak_mb"], 3)
    return out


# --------------------------------------------------------------------------- throughput
def section_throughput(device: torch.device, smoke: bool, deadline: float) -> dict[str, Any]:
    from lud.engine.runtime import autocast_context
    from lud.losses import build_loss
    from lud.models import build_model

    batch, steps, warmup = (8, 2, 1) if smoke else (256, 20, 5)
    amp = "off" if smoke else "bf16"
    fmt = torch.channels_last
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, 32, 32, generator=g).to(device, memory_format=fmt)
    y = torch.randint(0, 100, (batch,), generator=g).to(device)
    teacher = build_model("resnet32x4", num_classes=100).to(device, memory_format=fmt).eval()
    out: dict[str, Any] = {"batch": batch, "amp": amp, "channels_last": True, "steps": steps}
    for method in ("ce", "kd", "lud"):
        torch.manual_seed(0)
        model = build_model("resnet8x4", num_classes=100).to(device, memory_format=fmt)
        loss = build_loss(method).to(device)
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

        def step(method=method, model=model, loss=loss, opt=opt) -> None:
            with autocast_context(device, amp):
                t_logits = None
                if method != "ce":
                    with torch.no_grad():
                        t_logits = teacher(x)
                s_logits = model(x)
            total = loss(s_logits, t_logits, y, epoch=5.0).total
            opt.zero_grad(set_to_none=True)
            total.backward()
            opt.step()

        for _ in range(warmup):
            step()
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        _sync(device)
        sec = (time.perf_counter() - t0) / steps
        out[method] = {"ms_per_step": round(sec * 1e3, 2), "images_per_s": round(batch / sec, 1)}
    return out


RUNNERS = {"trainer": section_trainer, "nccl": section_nccl, "fused": section_fused,
           "throughput": section_throughput}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="gpu_check.json")
    ap.add_argument("--budget", type=float, default=450.0, help="seconds for all sections")
    ap.add_argument("--sections", default=",".join(SECTIONS))
    ap.add_argument("--cpu-smoke", action="store_true",
                    help="run every section at toy sizes on the CPU (tests this script)")
    args = ap.parse_args(argv)
    out = Path(args.out)
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    bad = [s for s in sections if s not in RUNNERS]
    if bad:
        print(f"unknown section(s) {bad}; choose from {list(RUNNERS)}", file=sys.stderr)
        return 2
    if not args.cpu_smoke and not torch.cuda.is_available():
        reason = "no CUDA device visible (torch.cuda.is_available() is False): nothing checked"
        print(reason)
        out.write_text(json.dumps({"gpu": None, "skipped": reason, "torch": torch.__version__},
                                  indent=1) + "\n")
        return 0
    device = torch.device("cpu" if args.cpu_smoke else "cuda")
    start = time.time()
    deadline = start + args.budget
    report: dict[str, Any] = {"gpu": None if args.cpu_smoke else torch.cuda.get_device_name(device),
                              "cpu_smoke": args.cpu_smoke, "machine": machine(device),
                              "budget_s": args.budget, "sections": {}}
    failed = False
    for name in sections:
        t0 = time.time()
        if t0 > deadline:
            report["sections"][name] = {"status": "skipped", "reason": "time budget spent"}
        else:
            try:
                figures = RUNNERS[name](device, args.cpu_smoke, deadline)
                status = "skipped" if "skipped" in figures else "ok"
                report["sections"][name] = {"status": status, "seconds": round(time.time() - t0, 1),
                                            **figures}
            except Exception as exc:  # recorded, and the next section still runs
                failed = True
                report["sections"][name] = {"status": "failed", "seconds": round(time.time() - t0, 1),
                                            "error": f"{type(exc).__name__}: {exc}"[-3000:],
                                            "traceback": traceback.format_exc()[-3000:]}
        report["total_s"] = round(time.time() - start, 1)
        out.write_text(json.dumps(report, indent=1) + "\n")
        print(f"{name}: {report['sections'][name]['status']}", flush=True)
    print(f"figures in {out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
