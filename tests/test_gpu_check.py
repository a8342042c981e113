"""scripts/gpu_check.py: without a GPU it says so and exits 0; its sections run (toy sizes, CPU)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_check.py"


def _run(tmp_path: Path, *args: str, hide_gpus: bool = True) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")
    if hide_gpus:
        env["CUDA_VISIBLE_DEVICES"] = ""  # the no-GPU path even on a GPU machine
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                          timeout=600, env=env, cwd=tmp_path)


def test_without_a_gpu_it_says_so_and_exits_cleanly(tmp_path: Path) -> None:
    proc = _run(tmp_path, "--out", "figures.json")
    assert proc.returncode == 0, proc.stderr
    assert "no CUDA device" in proc.stdout
    report = json.loads((tmp_path / "figures.json").read_text())
    assert report["gpu"] is None and "nothing checked" in report["skipped"]


def test_cpu_smoke_runs_the_fused_and_throughput_sections(tmp_path: Path) -> None:
    proc = _run(tmp_path, "--cpu-smoke", "--sections", "fused,nccl,throughput", "--out", "s.json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads((tmp_path / "s.json").read_text())
    sections = report["sections"]
    assert sections["nccl"]["status"] == "skipped"
    fused = sections["fused"]
    assert fused["status"] == "ok" and len(fused["configs"]) == 7
    losses = {k: v["loss"] for k, v in fused["configs"].items()}
    # the same loss whichever path computed it
    assert abs(losses["fkl fused"] - losses["fkl unfused"]) < 1e-4 * abs(losses["fkl unfused"])
    assert abs(losses["lud fused"] - losses["lud unfused"]) < 1e-4 * abs(losses["lud unfused"])
    assert all(sections["throughput"][m]["images_per_s"] > 0 for m in ("ce", "kd", "lud"))


def test_unknown_section_is_refused(tmp_path: Path) -> None:
    proc = _run(tmp_path, "--sections", "warp", "--out", "x.json")
    assert proc.returncode == 2 and "unknown section" in proc.stderr
