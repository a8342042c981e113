"""Fault injection: ``SIGKILL`` a real ``lud train`` / ``lud bench`` process, then resume it.

A kill point is picked at random (seeded by ``LUD_FAULT_SEED``, default 0, so a failure can be
replayed; set another seed to explore other points) among: the middle of an epoch, the window
between writing a checkpoint's temporary file and renaming it, and evaluation. The process is
parked there by the test hook of :mod:`lud.engine.faults` and killed. After every kill the run
folder must hold only complete, verifiable checkpoints; after the last resume the run must equal
an uninterrupted one: the same weights, optimizer and loss state (``torch.equal``), the same
metrics rows except timing fields, the same best checkpoint and summary.
"""

from __future__ import annotations

import csv
import io
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import kd_project

from lud.cli import main
from lud.engine import load_checkpoint
from lud.engine.runlog import read_metrics
from lud.experiments import bench

torch.set_num_threads(1)  # the same thread count as the killed processes: bitwise-equal runs
pytestmark = pytest.mark.slow  # real `lud` processes, killed and resumed
SEED = int(os.environ.get("LUD_FAULT_SEED", "0"))
STEPS = 4  # training steps per epoch: 144 training images (192 less a 25 % val split) / 32
EVAL_BATCHES = 4  # per epoch: val (48 images) and test (64 images) in batches of 32
EPOCHS = 3


# ----------------------------------------------------------------------------- helpers
@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Data, a trained MLP teacher, a KD config (cnn_small with BatchNorm, augmentation, a
    validation split, cosine schedule with warm-up) and its uninterrupted reference run."""
    solver = {"epochs": EPOCHS, "lr": 0.05, "schedule": "cosine", "warmup_epochs": 1,
              "milestones": []}
    return kd_project(tmp_path_factory.mktemp("faults"), n_train=192, eval_batch_size=32, seed=5,
                      solver=solver)


def kill_at(args: list[str], point: str, tmp: Path) -> None:
    """Run ``python -m lud ARGS`` until it parks at ``point`` (``POINT@N``), then SIGKILL it."""
    marker = tmp / f"paused-{time.monotonic_ns()}"
    log = tmp / f"{marker.name}.log"
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "LUD_FAULT_PAUSE": point,
        "LUD_FAULT_PAUSE_FILE": str(marker),
    }
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "lud", *args], env=env, stdout=out, stderr=subprocess.STDOUT
        )
        try:
            deadline = time.monotonic() + 180
            while not marker.exists():
                if proc.poll() is not None:
                    pytest.fail(
                        f"lud {' '.join(args)} ended (rc {proc.returncode}) before reaching "
                        f"{point}:\n{log.read_text()[-3000:]}"
                    )
                if time.monotonic() > deadline:
                    pytest.fail(f"lud {' '.join(args)} never reached {point}")
                time.sleep(0.02)
            proc.send_signal(signal.SIGKILL)
            assert proc.wait(timeout=60) == -signal.SIGKILL
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def check_folder(run: Path, last_epoch: int) -> None:
    """Every checkpoint present is complete and verifies; last.pt holds ``last_epoch``."""
    for pt in run.glob("*.pt"):
        load_checkpoint(pt)  # raises on a truncated or damaged file (SHA-256 checked)
    if last_epoch == 0:
        assert not (run / "last.pt").exists()
    else:
        assert load_checkpoint(run / "last.pt")["epoch"] == last_epoch
    read_metrics(run / "metrics.jsonl")  # parseable, a cut-off last row aside


def temp_files(run: Path) -> list[str]:
    return sorted(p.name for p in run.iterdir() if p.name.endswith(".tmp"))


def _equal(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    return a == b


def strip_timing(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in rows]


def assert_same_run(run: Path, ref: Path) -> None:
    """``run`` ended exactly where the uninterrupted ``ref`` did."""
    a, b = load_checkpoint(run / "last.pt"), load_checkpoint(ref / "last.pt")
    for key in ("epoch", "model", "loss", "optimizer", "schedule", "best", "max_test_top1"):
        assert _equal(a[key], b[key]), key
    assert a["rng"]["torch"].equal(b["rng"]["torch"])
    best_a, best_b = load_checkpoint(run / "best.pt"), load_checkpoint(ref / "best.pt")
    assert best_a["epoch"] == best_b["epoch"] and _equal(best_a["model"], best_b["model"])
    assert strip_timing(read_metrics(run / "metrics.jsonl")) == strip_timing(
        read_metrics(ref / "metrics.jsonl")
    )
    sa, sb = (json.loads((d / "summary.json").read_text()) for d in (run, ref))
    for key in ("completed", "epochs_completed", "best", "last", "max_test_top1"):
        assert sa[key] == sb[key], key
    assert sa["teacher_test_top1"] == sb["teacher_test_top1"]
    assert temp_files(run) == []


# ----------------------------------------------------------------------------- train
def test_three_kills_then_resume_equals_uninterrupted(
    project: dict[str, Path], tmp_path: Path
) -> None:
    """Killed mid-epoch, then while last.pt is being written, then during evaluation."""
    rng = random.Random(SEED)
    cfg, runs = str(project["config"]), project["runs"]
    name = f"killed{SEED}"
    run = runs / name
    args = ["train", cfg, "--name", name]

    # 1. A fresh run, killed at a random step of epoch 2: last.pt keeps epoch 1.
    step = STEPS + rng.randint(1, STEPS)
    kill_at(args, f"step@{step}", tmp_path)
    check_folder(run, last_epoch=1)
    assert [r["epoch"] for r in read_metrics(run / "metrics.jsonl")] == [1]

    # 2. Resumed, killed with epoch 2's last.pt written to its temporary file but not renamed:
    #    last.pt is still the complete epoch 1; the metrics row of epoch 2 is already logged.
    kill_at([*args, "--resume"], "write:last.pt@1", tmp_path)
    check_folder(run, last_epoch=1)
    assert [t.startswith(".last.pt.") for t in temp_files(run)] == [True]
    assert [r["epoch"] for r in read_metrics(run / "metrics.jsonl")] == [1, 2]

    # 3. Resumed (the stale temp file is removed, the epoch-2 row dropped and redone), killed
    #    at a random evaluation batch of epoch 3 (this process trains epochs 2 and 3).
    batch = EVAL_BATCHES + rng.randint(1, EVAL_BATCHES)
    kill_at([*args, "--resume"], f"eval@{batch}", tmp_path)
    check_folder(run, last_epoch=2)
    assert temp_files(run) == []
    assert [r["epoch"] for r in read_metrics(run / "metrics.jsonl")] == [1, 2]

    # 4. The last resume, in this process, finishes the run.
    assert main([*args, "--resume"]) == 0
    assert_same_run(run, runs / "ref")


def test_killed_during_first_checkpoint_write(
    project: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """No complete checkpoint yet: --resume says so; a plain rerun starts afresh and cleans up."""
    cfg, runs = str(project["config"]), project["runs"]
    run = runs / "first_write"
    args = ["train", cfg, "--name", "first_write"]
    kill_at(args, "write:last.pt@1", tmp_path)
    check_folder(run, last_epoch=0)
    assert len(temp_files(run)) == 1
    capsys.readouterr()
    assert main([*args, "--resume"]) == 2
    err = capsys.readouterr().err
    assert "last.pt does not exist" in err and "without --resume" in err
    assert main(args) == 0  # a folder without checkpoints is not "an existing run"
    assert_same_run(run, runs / "ref")


def test_killed_between_last_and_best_restores_best(
    project: dict[str, Path], tmp_path: Path
) -> None:
    """last.pt of epoch 1 written, best.pt not yet: the resume restores best.pt from last.pt."""
    cfg, runs = str(project["config"]), project["runs"]
    run = runs / "between"
    args = ["train", cfg, "--name", "between"]
    kill_at(args, "write:best.pt@1", tmp_path)
    check_folder(run, last_epoch=1)
    assert not (run / "best.pt").exists()
    assert main([*args, "--resume"]) == 0
    assert_same_run(run, runs / "ref")


# ----------------------------------------------------------------------------- corrupt files
def _partial(project: dict[str, Path], name: str) -> tuple[Path, list[str]]:
    args = ["train", str(project["config"]), "--name", name]
    assert main([*args, "--stop-after", "2"]) == 0
    return project["runs"] / name, args


def _flip_tensor_byte(path: Path) -> None:
    """Flip one byte inside the stored weights: torch.load still succeeds (no CRC check)."""
    state = load_checkpoint(path)
    weight = state["model"]["fc.weight"] if "fc.weight" in state["model"] else None
    tensor = weight if weight is not None else next(iter(state["model"].values()))
    raw = bytearray(path.read_bytes())
    at = bytes(raw).find(tensor.flatten()[:8].numpy().tobytes())
    assert at > 0
    raw[at + 3] ^= 0x40
    path.write_bytes(bytes(raw))
    torch.load(path, weights_only=True)  # loads fine: only the digest can tell


def test_corrupt_last_checkpoint_is_refused_with_a_way_out(
    project: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    run, args = _partial(project, "corrupt")
    best_epoch = load_checkpoint(run / "best.pt")["epoch"]
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    capsys.readouterr()

    # A damaged byte in the weights: caught by the SHA-256.
    _flip_tensor_byte(run / "last.pt")
    assert main([*args, "--resume"]) == 2
    err = capsys.readouterr().err
    assert str(run / "last.pt") in err and "SHA-256" in err
    assert f"best.pt (epoch {best_epoch}) is intact: copy it over last.pt" in err
    # The same file through `lud eval`: the same diagnosis.
    assert main(["eval", str(run / "last.pt")]) == 2
    assert "is corrupt" in capsys.readouterr().err

    # A truncated file (a copy cut short by a full disk, say).
    (run / "last.pt").write_bytes(before["last.pt"][: len(before["last.pt"]) // 2])
    assert main([*args, "--resume"]) == 2
    err = capsys.readouterr().err
    assert "is not a readable checkpoint: it is truncated" in err and "Traceback" not in err
    # Nothing else in the folder was touched by the refused resumes.
    for p in run.iterdir():
        if p.name != "last.pt" and p.name in before:
            assert p.read_bytes() == before[p.name], p.name

    # Following the advice: best.pt is a complete training state; the run continues from it
    # (re-training the epochs after it) and ends exactly like the uninterrupted run.
    shutil.copy(run / "best.pt", run / "last.pt")
    assert main([*args, "--resume"]) == 0
    assert_same_run(run, project["runs"] / "ref")


def test_checkpoint_without_training_state_or_foreign(
    project: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    from lud.engine import save_checkpoint

    run, args = _partial(project, "stateless")
    state = load_checkpoint(run / "last.pt")
    del state["optimizer"]
    save_checkpoint({k: v for k, v in state.items() if k != "sha256"}, run / "last.pt")
    capsys.readouterr()
    assert main([*args, "--resume"]) == 2
    err = capsys.readouterr().err
    assert "holds no training state (optimizer missing)" in err
    torch.save({"model": state["model"]}, run / "last.pt")  # a bare weight file
    assert main([*args, "--resume"]) == 2
    assert "not a lud run checkpoint" in capsys.readouterr().err


def test_corrupt_teacher_checkpoint(
    project: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "teacher.pt"
    shutil.copy(project["runs"] / "teacher" / "best.pt", bad)
    _flip_tensor_byte(bad)
    out = tmp_path / "runs"
    args = ["train", str(project["config"]), f"teacher.checkpoint={bad}", "--output-dir", str(out)]
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "teacher.checkpoint" in err and str(bad) in err and "SHA-256" in err
    assert not list(out.glob("*/*.pt"))


# ----------------------------------------------------------------------------- bench
def _rows(path: Path) -> list[dict[str, str]]:
    rows = list(csv.DictReader(io.StringIO(path.read_text())))
    return [{k: v for k, v in r.items() if "time" not in k} for r in rows]


def test_killed_benchmark_resumes_and_tables_match(
    project: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`lud bench` killed in the middle of its second run (kd): the rerun leaves the finished
    student alone, resumes kd from its last epoch, and writes the same tables as a clean run."""
    rng = random.Random(SEED + 1)
    cfg = str(project["config"])
    bench_args = ["bench", cfg, "--methods", "kd", "--seeds", "1", "--output-dir"]
    ref, cut = tmp_path / "ref", tmp_path / "cut"
    assert main([*bench_args, str(ref)]) == 0

    # The student alone trains EPOCHS * STEPS steps first; then kd, killed in its epoch 2 or 3.
    step = EPOCHS * STEPS + STEPS + rng.randint(1, 2 * STEPS)
    kill_at([*bench_args, str(cut)], f"step@{step}", tmp_path)
    kd_done = (step - EPOCHS * STEPS - 1) // STEPS
    check_folder(cut / "student" / "seed5", last_epoch=EPOCHS)
    check_folder(cut / "kd" / "seed5", last_epoch=kd_done)

    calls: list[tuple[str, bool]] = []
    real = bench.train

    def counting(c: Any, *, resume: bool = False) -> dict[str, Any]:
        calls.append((c.loss.name, resume))
        return real(c, resume=resume)

    monkeypatch.setattr(bench, "train", counting)
    assert main([*bench_args, str(cut)]) == 0
    assert calls == [("kd", True)]
    for label in ("student", "kd"):
        assert_same_run(cut / label / "seed5", ref / label / "seed5")
    for table in ("results.csv", "runs.csv"):
        assert _rows(cut / table) == _rows(ref / table), table
