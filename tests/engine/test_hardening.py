"""Adversarial inputs: full and read-only disks, mismatched checkpoints, NaN mid-run, bad
configs, every command-line flag, and determinism (through ``lud.cli.main`` where possible)."""

from __future__ import annotations

import argparse
import errno
import json
import math
import os
import re
import stat
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from conftest import kd_project
from torch import nn

import lud.data
import lud.engine
import lud.engine.build as build_mod
import lud.losses
import lud.models
from lud import cli
from lud.cli import demo, main
from lud.config import config_from_dict
from lud.data import write_cifar_like
from lud.engine import TrainingDivergedError, load_checkpoint, train
from lud.engine.runlog import read_metrics
from lud.experiments import bench

torch.set_num_threads(1)
ROOT = next(p for p in Path(__file__).resolve().parents if (p / "pyproject.toml").is_file())
TESTS = ROOT / "tests"
STEPS = 3  # 128 training images less a 25 % val split, batches of 32


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def proj(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """10-class data, an MLP teacher, a KD config for cnn_small (BatchNorm) and a finished run."""
    solver = {"epochs": 2, "lr": 0.05, "schedule": "constant", "milestones": []}
    return kd_project(tmp_path_factory.mktemp("hardening"), n_train=128, eval_batch_size=64, seed=2,
                      solver=solver)


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in folder.iterdir() if p.is_file()}


def strip_timing(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in rows]


def assert_same_weights(a: Path, b: Path) -> None:
    ma, mb = load_checkpoint(a)["model"], load_checkpoint(b)["model"]
    assert ma.keys() == mb.keys()
    for k in ma:
        assert torch.equal(ma[k], mb[k]), k


# ----------------------------------------------------------------------------- disk and files
def test_disk_full_while_saving_loses_nothing(
    proj: dict[str, Path], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """ENOSPC when epoch 2's last.pt is flushed: a clear error; epoch 1 stays whole; resumable."""
    run = proj["runs"] / "full"
    real_fsync, synced = os.fsync, []

    def fsync(fd: int) -> None:  # a full disk shows at fsync on delayed-allocation file systems
        st = os.fstat(fd)
        if stat.S_ISREG(st.st_mode) and any(
            p.stat().st_ino == st.st_ino for p in run.glob(".last.pt.*.tmp")
        ):
            synced.append(fd)
            if len(synced) == 2:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    args = ["train", str(proj["config"]), "--name", "full"]
    code, _, err = run_cli(capsys, *args)
    monkeypatch.undo()
    assert code == 2 and "Traceback" not in err
    assert f"cannot write {run / 'last.pt'}: No space left on device" in err
    assert "(epoch 1) is untouched" in err and "--resume" in err
    assert load_checkpoint(run / "last.pt")["epoch"] == 1  # complete, SHA-256 verified
    load_checkpoint(run / "best.pt")
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]
    assert [r["epoch"] for r in read_metrics(run / "metrics.jsonl")] == [1, 2]
    # Space freed: the run continues and ends where an uninterrupted one does.
    assert main([*args, "--resume"]) == 0
    assert_same_weights(run / "last.pt", proj["runs"] / "ref" / "last.pt")
    assert strip_timing(read_metrics(run / "metrics.jsonl")) == strip_timing(
        read_metrics(proj["runs"] / "ref" / "metrics.jsonl")
    )


def test_disk_full_from_a_real_torch_save(tmp_path: Path) -> None:
    """torch.save into a full file fails with an opaque RuntimeError; atomic_save reports ENOSPC."""
    from lud.engine import atomic_save

    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full")
    import lud.engine.checkpoint as ck

    real = ck.tempfile.mkstemp

    def to_dev_full(**kw: Any) -> tuple[int, str]:
        fd, name = real(**kw)
        os.dup2(os.open("/dev/full", os.O_WRONLY), fd)  # writes to this fd now hit ENOSPC
        return fd, name

    ck.tempfile.mkstemp = to_dev_full  # type: ignore[assignment]
    try:
        with pytest.raises(OSError) as info:
            atomic_save({"w": torch.randn(50_000)}, tmp_path / "x.pt")
    finally:
        ck.tempfile.mkstemp = real  # type: ignore[assignment]
    assert info.value.errno == errno.ENOSPC and str(tmp_path / "x.pt") in str(info.value)
    assert os.listdir(tmp_path) == []


def test_read_only_output_folder(
    proj: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    real_mkdir = os.mkdir

    def mkdir(path: Any, *a: Any, **kw: Any) -> None:
        if str(path).startswith(str(ro)):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        real_mkdir(path, *a, **kw)

    monkeypatch.setattr(os, "mkdir", mkdir)
    code, _, err = run_cli(capsys, "train", str(proj["config"]), "--output-dir", str(ro))
    assert code == 2 and "Traceback" not in err
    assert f"cannot create the run folder {ro / 'kd'}: Read-only file system" in err
    assert os.listdir(ro) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_output_folder_for_real(
    proj: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        code, _, err = run_cli(capsys, "train", str(proj["config"]), "--output-dir", str(ro))
    finally:
        ro.chmod(0o755)
    assert code == 2 and "cannot create the run folder" in err and "Permission denied" in err


def test_read_only_run_folder_on_resume_changes_nothing(
    proj: dict[str, Path], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import lud.engine.checkpoint as ck

    args = ["train", str(proj["config"]), "--name", "ro_resume"]
    assert main([*args, "--stop-after", "1"]) == 0
    run = proj["runs"] / "ro_resume"
    before = snapshot(run)
    real = ck.tempfile.mkstemp

    def mkstemp(**kw: Any) -> tuple[int, str]:
        if Path(kw["dir"]) == run:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS))
        return real(**kw)

    monkeypatch.setattr(ck.tempfile, "mkstemp", mkstemp)
    code, _, err = run_cli(capsys, *args, "--resume")
    assert code == 2 and "Read-only file system" in err and str(run) in err
    after = snapshot(run)
    for name, value in before.items():
        if name != "train.log":  # the log is appended to
            assert after[name] == value, name


def test_existing_run_folder_is_never_overwritten(
    proj: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    run = proj["runs"] / "ref"
    before = snapshot(run)
    code, _, err = run_cli(capsys, "train", str(proj["config"]), "--name", "ref")
    assert code == 2 and "already holds checkpoints" in err and "--resume" in err
    assert snapshot(run) == before


def test_resume_with_another_class_count_or_model(
    proj: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    def no_work(*a: Any, **kw: Any) -> None:
        raise AssertionError("data were loaded before the checkpoint was checked")

    write_cifar_like(tmp_path / "d100", num_classes=100, n_train=100, n_test=50, seed=1)
    args = ["train", str(proj["config"]), "--name", "ref", "--resume"]
    monkeypatch.setattr(lud.data, "build_data", no_work)  # the mismatch is found before
    code, _, err = run_cli(
        capsys,
        *args,
        "data.name=cifar100",
        f"data.root={tmp_path / 'd100'}",
        "loss.name=ce",
        "teacher.name=null",
        "teacher.checkpoint=null",
    )
    assert code == 2 and "does not match the checkpoint" in err
    assert "data.name: checkpoint 'cifar10' vs now 'cifar100'" in err
    assert "loss.name: checkpoint 'kd' vs now 'ce'" in err
    code, _, err = run_cli(capsys, *args, "model.name=mlp_tiny")
    assert code == 2 and "model.name: checkpoint 'cnn_small' vs now 'mlp_tiny'" in err


def test_teacher_checkpoint_of_another_architecture_or_class_count(
    proj: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "runs"
    base = ["train", str(proj["config"]), "--output-dir", str(out)]
    # A lud checkpoint of an MLP named as a CNN teacher.
    code, _, err = run_cli(capsys, *base, "teacher.name=cnn_small")
    assert code == 2 and "holds a 'mlp'; set teacher.name=mlp" in err
    # A bare state dict of the MLP: checked key by key.
    raw = tmp_path / "raw.pth"
    torch.save(load_checkpoint(proj["teacher"])["model"], raw)
    code, _, err = run_cli(capsys, *base, "teacher.name=cnn_small", f"teacher.checkpoint={raw}")
    assert code == 2 and f"teacher.checkpoint {raw}" in err and "do not fit" in err
    # The right architecture, trained for 10 classes, on a 100-class data set.
    write_cifar_like(tmp_path / "d100", num_classes=100, n_train=100, n_test=50, seed=1)
    code, _, err = run_cli(
        capsys, *base, "data.name=cifar100", f"data.root={tmp_path / 'd100'}", "--name", "c100"
    )
    assert code == 2 and "class-count mismatch" in err and "10 classes" in err and "100" in err
    assert not list(out.glob("*/*.pt"))


def test_eval_on_other_data_and_flags(
    proj: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    last = str(proj["runs"] / "ref" / "last.pt")
    write_cifar_like(tmp_path / "d100", num_classes=100, n_train=100, n_test=50, seed=1)
    code, _, err = run_cli(
        capsys, "eval", last, "--data", "cifar100", "--root", str(tmp_path / "d100")
    )
    assert code == 2 and "class-count mismatch" in err and "100" in err
    # The same class count, other inputs (8×8 greyscale digits): the weights do not fit.
    code, _, err = run_cli(capsys, "eval", last, "--data", "digits")
    assert code == 2 and "holds a 'cnn_small' trained on 3x32x32 inputs" in err
    assert "'digits' gives 1x8x8" in err and "Traceback" not in err
    # --split val, --device, an override: the val split's top-1 is the logged one.
    code, out, _ = run_cli(
        capsys,
        "eval",
        last,
        "--split",
        "val",
        "--device",
        "cpu",
        "data.eval_batch_size=5",
        "--json",
    )
    assert code == 0
    res = json.loads(out)
    row = read_metrics(proj["runs"] / "ref" / "metrics.jsonl")[-1]
    assert res["split"] == "val" and res["n"] == 32 and res["top1"] == row["val/top1"]
    code, _, err = run_cli(capsys, "eval", last, "--device", "cuda:7")
    assert code == 2 and "runtime.device" in err


# ----------------------------------------------------------------------------- NaN / Inf
def _poison_student(
    monkeypatch: pytest.MonkeyPatch, calls: set[int], grad_calls: frozenset[int] = frozenset()
) -> list[int]:
    """Make the student's input NaN at the given training forward calls (1-based), and the
    gradient of its first parameter NaN at the given backward calls.

    A NaN *input* poisons BatchNorm's running statistics as well as the logits, so a skipped
    step must also restore the buffers. Returns the list of forward calls seen.
    """
    real = lud.models.build_model
    seen: list[int] = []
    backward: list[int] = []

    def grad_hook(g: torch.Tensor) -> torch.Tensor:
        backward.append(1)
        return g * float("nan") if len(backward) in grad_calls else g

    def build(name: str, *a: Any, **kw: Any) -> nn.Module:
        model = real(name, *a, **kw)
        if name == "cnn_small":

            def pre(module: nn.Module, args: tuple[Any, ...]) -> Any:
                if not module.training:
                    return None
                seen.append(len(seen) + 1)
                return (args[0] * float("nan"),) if len(seen) in calls else None

            model.register_forward_pre_hook(pre)
            next(model.parameters()).register_hook(grad_hook)
        return model

    monkeypatch.setattr(lud.models, "build_model", build)
    return seen


def test_nan_logits_stop_the_run_with_epoch_and_step(
    proj: dict[str, Path], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _poison_student(monkeypatch, {STEPS + 2})  # epoch 2, step 2
    args = ["train", str(proj["config"]), "--name", "nan_stop"]
    code, _, err = run_cli(capsys, *args)
    assert code == 1 and "Traceback" not in err
    assert "training diverged at epoch 2, step 2 of 3: the student's logits are NaN/Inf" in err
    run = proj["runs"] / "nan_stop"
    assert f"the last good checkpoint {run / 'last.pt'} (epoch 1) is untouched" in err
    ckpt = load_checkpoint(run / "last.pt")
    assert ckpt["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())
    # The way out the message offers: resume, skipping such steps (the same batch is NaN again).
    monkeypatch.undo()
    _poison_student(monkeypatch, {2})
    assert main([*args, "--resume", "runtime.nonfinite=skip"]) == 0
    rows = read_metrics(run / "metrics.jsonl")
    assert [r.get("train/skipped_steps") for r in rows] == [None, 1]


class _NaNAtCall(nn.Module):
    """Wraps a loss; the ``k``-th call returns a NaN total (finite logits, NaN loss)."""

    def __init__(self, inner: nn.Module, k: int) -> None:
        super().__init__()
        self.inner, self.k, self.calls = inner, k, 0
        self.requires_teacher = inner.requires_teacher

    def forward(self, *a: Any, **kw: Any) -> Any:
        out = self.inner(*a, **kw)
        self.calls += 1
        if self.calls == self.k:
            out.total = out.total * float("nan")
        return out


def test_skip_mode_skips_and_counts_bad_steps(
    proj: dict[str, Path], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Forward calls 1..6 (two epochs of three steps). NaN input at call 2; a NaN loss at the
    # loss's 3rd call = forward call 4 (call 2 never reaches the loss); a NaN gradient at the 3rd
    # backward pass = forward call 5 (call 4 has no backward pass either).
    _poison_student(monkeypatch, {2}, grad_calls=frozenset({3}))
    real_loss = lud.losses.build_loss
    monkeypatch.setattr(
        lud.losses, "build_loss", lambda name, **kw: _NaNAtCall(real_loss(name, **kw), 3)
    )
    updates: list[int] = []
    real_opt = build_mod.build_optimizer

    def counting_optimizer(*a: Any, **kw: Any) -> torch.optim.Optimizer:
        opt = real_opt(*a, **kw)
        step = opt.step

        def counted(*sa: Any, **skw: Any) -> Any:
            updates.append(1)
            return step(*sa, **skw)

        opt.step = counted  # type: ignore[method-assign]
        return opt

    monkeypatch.setattr(build_mod, "build_optimizer", counting_optimizer)
    cfg = config_from_dict(yaml.safe_load(proj["config"].read_text()))
    cfg.experiment.name = "nan_skip"
    cfg.runtime.nonfinite = "skip"
    with caplog.at_level("WARNING", logger="lud"):
        summary = train(cfg)
    assert summary["completed"]
    assert len(updates) == 2 * STEPS - 3  # no optimizer update on a skipped step
    run = proj["runs"] / "nan_skip"
    rows = read_metrics(run / "metrics.jsonl")
    assert [r["train/skipped_steps"] for r in rows] == [1, 2]
    for r in rows:  # a NaN is logged as null
        assert all(
            isinstance(r[k], float) and math.isfinite(r[k]) for k in ("train/loss", "test/nll")
        )
    ckpt = load_checkpoint(run / "last.pt")
    for key, value in ckpt["model"].items():  # BatchNorm statistics were restored too
        assert not value.is_floating_point() or torch.isfinite(value).all(), key
    warned = [r.getMessage() for r in caplog.records if "step skipped" in r.getMessage()]
    assert [m.split(":")[0] for m in warned] == [
        "epoch 1, step 2/3",
        "epoch 2, step 1/3",
        "epoch 2, step 2/3",
    ]
    assert "logits" in warned[0] and "the loss is NaN/Inf" in warned[1]
    assert "a gradient is NaN/Inf" in warned[2]


def test_skip_mode_stops_when_every_step_is_bad(
    proj: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    _poison_student(monkeypatch, set(range(1, 100)))
    cfg = config_from_dict(yaml.safe_load(proj["config"].read_text()))
    cfg.experiment.name = "nan_all"
    cfg.runtime.nonfinite = "skip"
    with pytest.raises(TrainingDivergedError, match="epoch 1: all 3 steps had NaN/Inf"):
        train(cfg)


# ----------------------------------------------------------------------------- determinism
def test_deterministic_mode_repeats_exactly(proj: dict[str, Path]) -> None:
    raw = yaml.safe_load(proj["config"].read_text())
    raw["data"]["augment"] = "cifar"  # random crops and flips: the RNG streams matter
    runs = []
    try:
        for name, seed in (("det_a", 2), ("det_b", 2), ("det_c", 3)):
            cfg = config_from_dict(raw)
            cfg.experiment.name, cfg.experiment.seed, cfg.experiment.deterministic = (
                name,
                seed,
                True,
            )
            train(cfg)
            runs.append(proj["runs"] / name)
    finally:
        torch.use_deterministic_algorithms(False)
    a, b, c = (strip_timing(read_metrics(r / "metrics.jsonl")) for r in runs)
    assert a == b and len(a) == 2
    assert_same_weights(runs[0] / "last.pt", runs[1] / "last.pt")
    # ... and the comparison can tell runs apart: another seed gives other weights.
    wa, wc = (
        load_checkpoint(runs[0] / "last.pt")["model"],
        load_checkpoint(runs[2] / "last.pt")["model"],
    )
    assert a != c and not all(torch.equal(wa[k], wc[k]) for k in wa)


# ----------------------------------------------------------------------------- configs and CLI
@pytest.mark.parametrize(
    "overrides, message",
    [
        (["solver.lr=-0.1"], "solver.lr must be > 0, got -0.1"),
        (
            ["loss.name=ctkd", "loss.params.t_min=5", "loss.params.t_max=2"],
            "t_min must be < t_max, got t_min=5, t_max=2",
        ),
        (["loss.name=kdd"], "unknown loss 'kdd'. Did you mean 'kd'"),
        (["model.name=resnet8x5"], "model.name: unknown model 'resnet8x5'"),
        (["data.name=cifar1000"], "unknown dataset 'cifar1000'"),
        (["solver.lrr=0.1"], "unknown config key 'solver.lrr'"),
        (["runtime.nonfinite=ignore"], "'runtime.nonfinite' must be one of 'stop', 'skip'"),
        (["data.batch_size=0"], "data.batch_size must be >= 1"),
        (["loss.params.temperature=-1"], "temperature"),
    ],
)
def test_bad_values_fail_before_any_work(
    proj: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    overrides: list[str],
    message: str,
) -> None:
    def no_work(*a: Any, **kw: Any) -> None:
        raise AssertionError("data were loaded before the config was checked")

    monkeypatch.setattr(lud.data, "build_data", no_work)
    out = tmp_path / "never"
    code, _, err = run_cli(
        capsys, "train", str(proj["config"]), *overrides, "--output-dir", str(out)
    )
    assert code == 2 and message in err and "Traceback" not in err
    assert not out.exists()


def test_bad_bench_values(
    proj: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["bench", str(proj["config"]), "--output-dir", str(tmp_path / "b")]
    for extra, message in (
        (["--seeds", "0"], "the number of seeds must be >= 1"),
        (["--seeds", "1,1"], "seeds must be distinct"),
        (["--ablate", "kd"], "invalid choice"),
        (["solver.lr=-1"], "solver.lr must be > 0"),
    ):
        code, _, err = run_cli(capsys, *base, *extra)
        assert code == 2 and message in err, extra
    assert not (tmp_path / "b").exists()


def test_bench_retry_failed_flag(
    proj: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    real = bench.train

    def diverge(cfg: Any, *, resume: bool = False) -> dict[str, Any]:
        if cfg.loss.name == "kd":
            raise TrainingDivergedError("training diverged at epoch 1, step 1")
        return real(cfg, resume=resume)

    out = tmp_path / "b"
    args = [
        "bench",
        str(proj["config"]),
        "--methods",
        "kd",
        "--seeds",
        "1",
        "--output-dir",
        str(out),
    ]
    monkeypatch.setattr(bench, "train", diverge)
    code, printed, _ = run_cli(capsys, *args, "solver.epochs=1")
    assert code == 0 and "1 diverged" in printed
    monkeypatch.setattr(bench, "train", real)
    code, printed, _ = run_cli(capsys, *args, "solver.epochs=1", "--retry-failed")
    assert code == 0 and "diverged" not in printed
    assert json.loads((out / "kd" / "seed2" / "summary.json").read_text())["completed"]


def test_report_flags(
    proj: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "rep"
    code, printed, _ = run_cli(
        capsys,
        "report",
        str(proj["runs"] / "ref"),
        "--output-dir",
        str(out),
        "--no-eval",
        "--device",
        "cpu",
    )
    assert code == 0 and str(out / "report.md") in printed
    assert (out / "curves_top1.png").is_file() and not (out / "reliability.png").exists()
    code, printed, _ = run_cli(
        capsys,
        "report",
        str(proj["runs"] / "ref"),
        "--output-dir",
        str(tmp_path / "rep2"),
        "--device",
        "cpu",
    )
    assert code == 0 and (tmp_path / "rep2" / "reliability.png").is_file()


def test_demo_flags_reach_the_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every `lud demo` option lands in the four run configs (training itself is faked)."""
    import logging

    seen: list[Any] = []

    def fake_train(cfg: Any) -> dict[str, Any]:
        seen.append(cfg)
        top1 = {"teacher": 90.0, "student": 60.0}.get(cfg.experiment.name, 70.0)
        return {"best": {"test_top1": top1}, "last": {"test_top1": top1}, "wall_time_s": 0.0}

    monkeypatch.setattr(lud.engine, "train", fake_train)
    console = [
        h
        for h in logging.getLogger("lud").handlers
        if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)
    ]
    levels = [h.level for h in console]
    try:
        code, printed, _ = run_cli(
            capsys,
            "demo",
            "--output-dir",
            str(tmp_path / "d"),
            "--teacher-epochs",
            "3",
            "--student-epochs",
            "4",
            "--seed",
            "7",
            "--subset",
            "50",
            "--verbose",
        )
        assert code == 0 and "| lud |" in printed and "+33%" in printed  # (70-60)/(90-60)
        assert [h.level for h in console] == levels  # --verbose: the console keeps every epoch
    finally:
        for h, level in zip(console, levels):
            h.setLevel(level)
    assert [c.experiment.name for c in seen] == ["teacher", "student", "student-kd", "student-lud"]
    assert [c.solver.epochs for c in seen] == [3, 4, 4, 4]
    assert {c.experiment.seed for c in seen} == {7} and {c.data.subset for c in seen} == {50}
    assert {c.experiment.output_dir for c in seen} == {str(tmp_path / "d")}


def _parsers() -> dict[str, argparse.ArgumentParser]:
    return {
        "train": cli._train_parser(),
        "eval": cli._eval_parser(),
        "bench": cli._bench_parser(),
        "tune": cli._tune_parser(),
        "report": cli._report_parser(),
        "list": cli._list_parser(),
        "demo": demo.parser(),
    }


def test_every_documented_flag_is_exercised_by_a_test() -> None:
    """Each option of each subcommand appears, quoted, in some test that passes it to `lud`.

    A new flag without a test fails here. (The quoted literal is the cheap, reliable signal:
    every flag test calls ``main([... "--flag" ...])`` or runs ``python -m lud ... --flag``.)
    """
    sources = "\n".join(
        p.read_text() for p in TESTS.rglob("test_*.py") if p.name != Path(__file__).name
    )
    sources += Path(__file__).read_text().split("def _parsers")[0]
    missing = []
    for command, parser in _parsers().items():
        assert parser.prog == f"lud {command}"
        for action in parser._actions:
            for flag in action.option_strings:
                if flag.startswith("--") and flag != "--help" and f'"{flag}"' not in sources:
                    missing.append(f"lud {command} {flag}")
    assert missing == []
    # The top-level options and every `lud list` kind, too.
    assert '"--version"' in sources and '"--help"' in sources
    for kind in _parsers()["list"]._actions[-1].choices or ():
        assert re.search(rf'"list",\s*"?{kind}|\("{kind}"', sources), kind


# ----------------------------------------------------------------------------- file formats
def test_checkpoint_digest_catches_any_change(tmp_path: Path) -> None:
    from lud.engine import CheckpointError, save_checkpoint
    from lud.engine.checkpoint import CHECKPOINT_FORMAT, payload_digest

    state = {
        "format": CHECKPOINT_FORMAT,
        "epoch": 3,
        "model": {"w": torch.arange(6.0).reshape(2, 3), "n": torch.tensor(7)},
        "model_name": "mlp",
        "num_classes": 10,
        "config": {"solver": {"lr": 0.1, "milestones": [1, 2]}},
        "rng": {"python": (3, tuple(range(5)), None)},
    }
    path = tmp_path / "c.pt"
    save_checkpoint(state, path)
    loaded = load_checkpoint(path)
    assert loaded["sha256"] == payload_digest(state)  # stable through save and load
    # Each kind of damage changes the digest: a tensor value, dtype, shape, a plain value.
    for change in (
        lambda s: s["model"]["w"].view(-1)[4].add_(1e-6),
        lambda s: s["model"].__setitem__("n", torch.tensor(7, dtype=torch.int32)),
        lambda s: s["model"].__setitem__("w", s["model"]["w"].reshape(3, 2)),
        lambda s: s.__setitem__("epoch", 4),
        lambda s: s["config"]["solver"].__setitem__("lr", 0.1000001),
    ):
        damaged = load_checkpoint(path)
        change(damaged)
        torch.save(damaged, path.with_name("d.pt"))
        with pytest.raises(CheckpointError, match="do not match the SHA-256"):
            load_checkpoint(path.with_name("d.pt"))
    # A checkpoint written before the digest existed still loads; one lacking entries does not.
    old = dict(loaded)
    del old["sha256"]
    torch.save(old, tmp_path / "old.pt")
    assert load_checkpoint(tmp_path / "old.pt")["epoch"] == 3
    del old["model_name"]
    torch.save(old, tmp_path / "old.pt")
    with pytest.raises(CheckpointError, match="incomplete lud checkpoint: it lacks model_name"):
        load_checkpoint(tmp_path / "old.pt")
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty.pt is not a readable checkpoint"):
        load_checkpoint(tmp_path / "empty.pt")


def test_temp_file_cleanup_touches_only_temp_files(tmp_path: Path) -> None:
    from lud.engine.checkpoint import atomic_write_text, remove_stale_temp_files

    atomic_write_text("{}", tmp_path / "summary.json")
    stale = [tmp_path / ".last.pt.a1b2_c3d.tmp", tmp_path / ".metrics.jsonl.zzzzzzzz.tmp"]
    keep = [tmp_path / "notes.tmp", tmp_path / ".last.pt.short.tmp", tmp_path / "last.pt"]
    for p in stale + keep:
        p.write_text("x")
    assert sorted(remove_stale_temp_files(tmp_path)) == sorted(stale)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["summary.json"] + [p.name for p in keep]
    )
    assert remove_stale_temp_files(tmp_path / "absent") == []


def test_metrics_log_survives_a_cut_off_row(tmp_path: Path) -> None:
    from lud.engine.runlog import MetricsLog

    path = tmp_path / "metrics.jsonl"
    path.write_text('{"epoch": 1, "a": 1.5}\n{"epoch": 2, "a": 2.5}\n{"epoch": 3, "a"')
    assert read_metrics(path) == [{"epoch": 1, "a": 1.5}, {"epoch": 2, "a": 2.5}]
    log = MetricsLog(tmp_path, tensorboard=False, resume_epoch=1)  # resuming from epoch 1
    log.write({"epoch": 2, "a": float("nan")})
    log.close()
    assert path.read_text() == '{"epoch": 1, "a": 1.5}\n{"epoch": 2, "a": null}\n'
    path.write_text('{"epoch": 1}\n{oops\n{"epoch": 3}\n')  # damage inside the file: an error
    with pytest.raises(ValueError, match=r"metrics\.jsonl, line 2: not a JSON row"):
        read_metrics(path)


def test_fault_point_counts_and_parks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The test hook: a no-op unless named; parks at the N-th occurrence and writes its marker."""
    from lud.engine import faults

    class Parked(Exception):
        pass

    def sleep(seconds: float) -> None:
        raise Parked

    monkeypatch.setattr(faults, "_counts", {})
    monkeypatch.setattr(faults.time, "sleep", sleep)
    faults.fault_point("step")  # unset: nothing happens
    monkeypatch.setenv(faults.ENV_PAUSE, "write:last.pt@2")
    monkeypatch.setenv(faults.ENV_FILE, str(tmp_path / "marker"))
    faults.fault_point("write:best.pt")
    faults.fault_point("write:last.pt")
    assert not (tmp_path / "marker").exists()
    with pytest.raises(Parked):
        faults.fault_point("write:last.pt")
    assert (tmp_path / "marker").read_text() == "write:last.pt@2"
