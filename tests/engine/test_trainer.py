"""Training engine: schedule, metrics, checkpoints, resume, teacher handling (lud.engine)."""

from __future__ import annotations

import itertools
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.special import logsumexp, softmax
from torch import nn

import lud.engine.build as build_mod
import lud.losses
from lud.config import Config, ConfigError, SolverConfig, config_from_dict
from lud.data import write_cifar_like
from lud.engine import (
    LRSchedule,
    RunFolderError,
    TrainingDivergedError,
    atomic_save,
    capture_rng_state,
    evaluate,
    load_checkpoint,
    restore_rng_state,
    train,
)
from lud.engine.metrics import ece_bins, expected_calibration_error
from lud.engine.runlog import read_metrics
from lud.losses import DistillationLoss, LossOutput
from lud.models import build_model

torch.set_num_threads(1)
TIMING = ("time/",)


# ----------------------------------------------------------------------------- helpers
def make_cfg(root: Path, name: str, *, data_root: Path, **sections: dict[str, Any]) -> Config:
    """A tiny run: cnn_small on 10-class CIFAR-format data, 32-image batches."""
    raw: dict[str, Any] = {
        "experiment": {"name": name, "output_dir": str(root / "runs"), "seed": 3},
        "data": {
            "name": "cifar10",
            "root": str(data_root),
            "batch_size": 32,
            "eval_batch_size": 64,
        },
        "model": {"name": "cnn_small"},
        "solver": {"epochs": 2, "lr": 0.05, "schedule": "constant"},
        "runtime": {"progress": False, "tensorboard": False, "log_every": 4},
    }
    for key, value in sections.items():
        raw[key] = {**raw.get(key, {}), **value}
    return config_from_dict(raw)


def _tensors(obj: Any):
    """Every tensor inside a nested checkpoint object."""
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _tensors(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _tensors(v)


def strip_timing(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if not k.startswith(TIMING)} for r in rows]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """10-class data (320 train / 100 test) and a teacher trained on it with loss 'ce'."""
    root = tmp_path_factory.mktemp("engine")
    write_cifar_like(root / "d10", num_classes=10, n_train=320, n_test=100, seed=0)
    cfg = make_cfg(root, "teacher", data_root=root / "d10")
    train(cfg)
    return {"root": root, "data": root / "d10", "teacher": root / "runs" / "teacher" / "best.pt"}


def student_cfg(
    env: dict[str, Path], name: str, loss_name: str = "kd", **sections: dict[str, Any]
) -> Config:
    teacher = {"name": "cnn_small", "checkpoint": str(env["teacher"])}
    loss = {"name": loss_name, **sections.pop("loss", {})}
    return make_cfg(
        env["root"], name, data_root=env["data"], teacher=teacher, loss=loss, **sections
    )


# ----------------------------------------------------------------------------- schedule
def _optimizer() -> torch.optim.Optimizer:
    return torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)


def test_step_schedule_with_warmup_per_iteration() -> None:
    solver = SolverConfig(
        lr=0.4, epochs=6, schedule="step", milestones=[3, 5], gamma=0.1, warmup_epochs=2
    )
    sched = LRSchedule(_optimizer(), solver, steps_per_epoch=4)
    got = []
    for _ in range(24):
        got.append(sched.lr)
        sched.step()
    # Hand-written reference: linear warm-up over 8 steps, ×0.1 from epoch 3 and again from 5.
    ref = [0.4 * min((s + 1) / 8, 1.0) * 0.1 ** sum(s // 4 >= m for m in (3, 5)) for s in range(24)]
    np.testing.assert_allclose(got, ref, rtol=1e-12)


def test_cosine_schedule_endpoints_and_resume() -> None:
    solver = SolverConfig(lr=0.1, epochs=10, schedule="cosine", min_lr=0.01)
    sched = LRSchedule(_optimizer(), solver, steps_per_epoch=5)
    lrs = []
    for _ in range(50):
        lrs.append(sched.lr)
        sched.step()
    assert lrs[0] == pytest.approx(0.1)
    assert lrs[25] == pytest.approx(0.01 + 0.09 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert sched.lr == pytest.approx(0.01)  # after the last step
    assert all(a >= b for a, b in itertools.pairwise(lrs))
    # Resuming from a state dict continues the same sequence.
    first = LRSchedule(_optimizer(), solver, steps_per_epoch=5)
    for _ in range(17):
        first.step()
    second = LRSchedule(_optimizer(), solver, steps_per_epoch=5)
    second.load_state_dict(first.state_dict())
    assert second.lr == pytest.approx(lrs[17])
    with pytest.raises(ValueError, match="steps per epoch"):
        LRSchedule(_optimizer(), solver, steps_per_epoch=6).load_state_dict(first.state_dict())


# ----------------------------------------------------------------------------- metrics
def _ece_reference(logits: np.ndarray, targets: np.ndarray, n_bins: int = 15) -> float:
    prob = softmax(logits.astype(np.float64), axis=1)
    conf, pred = prob.max(1), prob.argmax(1)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    ece = 0.0
    for lo, hi in itertools.pairwise(edges):
        inside = (conf > lo) & (conf <= hi)
        if inside.any():
            ece += inside.mean() * abs(
                (pred[inside] == targets[inside]).mean() - conf[inside].mean()
            )
    return ece


def test_ece_matches_numpy_reference() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(scale=3.0, size=(500, 7)).astype(np.float32)
    targets = np.where(rng.random(500) < 0.6, logits.argmax(1), rng.integers(0, 7, 500))
    # Two batches summed must equal one pass over everything.
    bins = ece_bins(torch.from_numpy(logits[:200]), torch.from_numpy(targets[:200])) + ece_bins(
        torch.from_numpy(logits[200:]), torch.from_numpy(targets[200:])
    )
    assert expected_calibration_error(bins) == pytest.approx(
        _ece_reference(logits, targets), abs=1e-6
    )
    assert bins[:, 0].sum() == 500


def test_evaluate_matches_reference() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 6))
    x = torch.randn(37, 3, 2, 2)
    y = torch.randint(0, 6, (37,))
    loader = [(x[i : i + 10], y[i : i + 10]) for i in range(0, 37, 10)]
    res = evaluate(model, loader, nn.Identity(), "cpu")
    with torch.no_grad():
        logits = model(x).double().numpy()
    yn = y.numpy()
    order = np.argsort(-logits, axis=1)
    assert res["top1"] == pytest.approx(100 * np.mean(order[:, 0] == yn))
    assert res["top5"] == pytest.approx(100 * np.mean((order[:, :5] == yn[:, None]).any(1)))
    nll = np.mean(logsumexp(logits, axis=1) - logits[np.arange(37), yn])
    assert res["nll"] == pytest.approx(nll, rel=1e-5) and res["loss"] == pytest.approx(
        nll, rel=1e-5
    )
    assert res["ece"] == pytest.approx(_ece_reference(logits, yn), abs=1e-6)
    assert res["n"] == 37 and model.training  # mode restored


# ----------------------------------------------------------------------------- checkpoint io
def test_atomic_save_keeps_old_file_on_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "last.pt"
    atomic_save({"epoch": 1}, path)

    def broken_save(obj: Any, fh: Any) -> None:
        fh.write(b"partial garbage")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        atomic_save({"epoch": 2}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True) == {"epoch": 1}
    assert sorted(os.listdir(tmp_path)) == ["last.pt"]  # no temp file left behind


def test_rng_state_round_trip_through_weights_only_file(tmp_path: Path) -> None:
    import random

    state = capture_rng_state()
    a = (random.random(), np.random.rand(), torch.rand(1).item())
    atomic_save({"rng": state}, tmp_path / "s.pt")
    restore_rng_state(torch.load(tmp_path / "s.pt", weights_only=True)["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == a


# ----------------------------------------------------------------------------- training runs
def test_teacher_run_outputs(env: dict[str, Path]) -> None:
    run = env["root"] / "runs" / "teacher"
    assert {
        "config.yaml",
        "metrics.jsonl",
        "last.pt",
        "best.pt",
        "summary.json",
        "train.log",
    } <= set(os.listdir(run))
    rows = read_metrics(run / "metrics.jsonl")
    assert [r["epoch"] for r in rows] == [1, 2]
    for r in rows:
        assert {
            "lr",
            "train/loss",
            "train/top1",
            "train/term/ce",
            "test/top1",
            "test/top5",
            "test/nll",
            "test/ece",
            "test/max_top1",
            "best/split",
            "time/epoch_s",
            "time/images_per_s",
        } <= set(r)
        assert r["best/split"] == "test" and 0 <= r["test/ece"] <= 1
        assert r["train/loss"] == pytest.approx(r["train/term/ce"])
    best_epoch = 1 + int(np.argmax([r["test/top1"] for r in rows]))  # first maximum wins
    summary = json.loads((run / "summary.json").read_text())
    assert summary["best"]["epoch"] == best_epoch and summary["best_selected_by"] == "test"
    assert summary["max_test_top1"] == max(r["test/top1"] for r in rows)
    assert summary["last"]["test_top1"] == rows[-1]["test/top1"] and summary["completed"]
    ckpt = load_checkpoint(run / "best.pt")
    assert (
        ckpt["epoch"] == best_epoch
        and ckpt["num_classes"] == 10
        and ckpt["model_name"] == "cnn_small"
    )
    # The data are learnable: a trained teacher beats chance (10 %).
    assert rows[-1]["test/top1"] > 15


def test_distillation_keeps_teacher_frozen_and_out_of_checkpoints(
    env: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    captured: dict[str, nn.Module] = {}
    real = build_mod.build_teacher

    def spy(*args: Any, **kwargs: Any) -> nn.Module:
        captured["t"] = real(*args, **kwargs)
        return captured["t"]

    monkeypatch.setattr(build_mod, "build_teacher", spy)
    cfg = student_cfg(env, "kd_val", data={"val_split": 0.2}, runtime={"tensorboard": True})
    summary = train(cfg)
    teacher = captured["t"]
    saved = load_checkpoint(env["teacher"])["model"]
    after = teacher.state_dict()
    assert set(after) == set(saved)
    for key in saved:  # weights and BatchNorm running statistics unchanged
        assert torch.equal(after[key], saved[key]), key
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())

    run = env["root"] / "runs" / "kd_val"
    ckpt = load_checkpoint(run / "last.pt")
    fresh = build_model("cnn_small", 10, in_channels=3, input_shape=(3, 32, 32)).state_dict()
    assert set(ckpt["model"]) == set(fresh)
    # No teacher weight is stored anywhere in the student checkpoint.
    stored = list(_tensors(ckpt))
    for key, value in saved.items():
        if value.is_floating_point() and value.numel() > 1:
            assert not any(t.shape == value.shape and torch.equal(t, value) for t in stored), key
    rows = read_metrics(run / "metrics.jsonl")
    assert all(r["best/split"] == "val" and "val/top1" in r and "train/term/kd" in r for r in rows)
    best_epoch = 1 + int(np.argmax([r["val/top1"] for r in rows]))
    assert (
        ckpt["best"]["split"] == "val" and load_checkpoint(run / "best.pt")["epoch"] == best_epoch
    )
    assert summary["best"]["test_top1"] == rows[best_epoch - 1]["test/top1"]
    assert summary["teacher_test_top1"] == pytest.approx(
        read_metrics(env["root"] / "runs" / "teacher" / "metrics.jsonl")[-1]["test/top1"]
    )
    assert any(name.startswith("events.out.tfevents") for name in os.listdir(run / "tb"))


def test_resume_equals_uninterrupted(env: dict[str, Path]) -> None:
    # CTKD: a learnable temperature (loss parameter in the optimizer) and random crop/flip.
    opts: dict[str, Any] = {
        "loss": {"params": {"curriculum_epochs": 2}},
        "data": {"augment": "cifar"},
        "solver": {"epochs": 3, "schedule": "cosine", "warmup_epochs": 1},
    }
    train(student_cfg(env, "full", "ctkd", **opts))
    partial = student_cfg(env, "parts", "ctkd", **opts)
    first = train(partial, stop_after=2)
    assert first["epochs_completed"] == 2 and not first["completed"]
    train(partial, resume=True)
    runs = env["root"] / "runs"
    a, b = load_checkpoint(runs / "full" / "last.pt"), load_checkpoint(runs / "parts" / "last.pt")
    assert a["epoch"] == b["epoch"] == 3
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert torch.equal(a["loss"]["theta"], b["loss"]["theta"])
    assert not torch.equal(a["loss"]["theta"], torch.tensor(1.0))  # the temperature did learn
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    rows_a = strip_timing(read_metrics(runs / "full" / "metrics.jsonl"))
    rows_b = strip_timing(read_metrics(runs / "parts" / "metrics.jsonl"))
    assert rows_a == rows_b and len(rows_a) == 3


def test_existing_run_folder_refused(env: dict[str, Path]) -> None:
    cfg = make_cfg(env["root"], "teacher", data_root=env["data"])
    with pytest.raises(RunFolderError, match="--resume"):
        train(cfg)
    with pytest.raises(RunFolderError, match="cannot resume"):
        train(make_cfg(env["root"], "never_ran", data_root=env["data"]), resume=True)
    # Resuming with an incompatible config names the differing key.
    with pytest.raises(RunFolderError, match="model.name"):
        train(
            make_cfg(env["root"], "teacher", data_root=env["data"], model={"name": "mlp_tiny"}),
            resume=True,
        )


def test_teacher_class_count_mismatch(env: dict[str, Path], tmp_path: Path) -> None:
    write_cifar_like(tmp_path / "d100", num_classes=100, n_train=100, n_test=50, seed=1)
    cfg = student_cfg(
        env,
        "mismatch",
        data={"name": "cifar100", "root": str(tmp_path / "d100")},
        experiment={"output_dir": str(tmp_path / "runs")},
    )
    with pytest.raises(ValueError) as info:
        train(cfg)
    assert "10 classes" in str(info.value) and "100" in str(info.value)
    assert not (tmp_path / "runs" / "mismatch" / "last.pt").exists()
    # A foreign weight file (raw state dict) is checked key by key.
    raw = tmp_path / "raw_teacher.pth"
    torch.save(load_checkpoint(env["teacher"])["model"], raw)
    cfg.teacher.checkpoint = str(raw)
    cfg.experiment.name = "mismatch_raw"
    with pytest.raises(ValueError, match="class count: checkpoint 10 vs model 100"):
        train(cfg)


def test_missing_data_is_a_clear_error(env: dict[str, Path], tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path, "nodata", data_root=tmp_path / "absent")
    with pytest.raises(FileNotFoundError) as info:
        train(cfg)
    assert "absent" in str(info.value) and "cifar10" in str(info.value)


class _NaNAfter(DistillationLoss):
    """Cross-entropy that turns NaN from the ``start``-th call on."""

    requires_teacher = False

    def __init__(self, start: int) -> None:
        super().__init__()
        self.start, self.calls = start, 0

    def compute(self, s: torch.Tensor, t: Any, y: torch.Tensor, epoch: float) -> LossOutput:
        self.calls += 1
        ce = F.cross_entropy(s, y)
        return self.output({"ce": ce * float("nan") if self.calls >= self.start else ce})


def test_nan_loss_stops_with_epoch_and_step(
    env: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = lud.losses.build_loss
    monkeypatch.setattr(
        lud.losses,
        "build_loss",
        lambda name, **kw: _NaNAfter(start=14) if name == "ce" else real(name, **kw),
    )
    cfg = make_cfg(
        tmp_path, "nan", data_root=env["data"], solver={"epochs": 3}, runtime={"log_every": 50}
    )
    with pytest.raises(TrainingDivergedError) as info:
        train(cfg)
    # 320 samples / 32 = 10 steps per epoch: call 14 is epoch 2, step 4.
    assert "epoch 2, step 4" in str(info.value) and "untouched" in str(info.value)
    run = tmp_path / "runs" / "nan"
    ckpt = load_checkpoint(run / "last.pt")
    assert ckpt["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())
    assert [r["epoch"] for r in read_metrics(run / "metrics.jsonl")] == [1]


def test_teacher_cache_matches_live_teacher(env: dict[str, Path]) -> None:
    opts: dict[str, Any] = {"data": {"augment": "none"}, "solver": {"epochs": 1}}
    train(student_cfg(env, "live", **opts))
    train(student_cfg(env, "cached", runtime={"teacher_cache": True}, **opts))
    runs = env["root"] / "runs"
    a, b = load_checkpoint(runs / "live" / "last.pt"), load_checkpoint(runs / "cached" / "last.pt")
    for key in a["model"]:
        torch.testing.assert_close(a["model"][key], b["model"][key], rtol=1e-4, atol=1e-5)
    ra, rb = (
        read_metrics(runs / "live" / "metrics.jsonl")[0],
        read_metrics(runs / "cached" / "metrics.jsonl")[0],
    )
    assert ra["train/loss"] == pytest.approx(rb["train/loss"], rel=1e-4)
    # "default" augmentation of CIFAR is random crop + flip: the cache must refuse it.
    with pytest.raises(ConfigError, match="augment='none'"):
        train(student_cfg(env, "cache_aug", runtime={"teacher_cache": True}))


def test_teacher_cache_dir_is_shared_between_runs(
    env: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """runtime.teacher_cache_dir: the first run stores the teacher's logits, the next reuses them
    (no teacher pass) and trains exactly as with its own cache; another teacher makes a new file."""
    import lud.engine.teacher as teacher_mod

    folder = env["root"] / "shared_logits"
    opts: dict[str, Any] = {"data": {"augment": "none"}, "solver": {"epochs": 1}}
    cache = {"teacher_cache": True, "teacher_cache_dir": str(folder)}
    train(student_cfg(env, "own", runtime={"teacher_cache": True}, **opts))
    train(student_cfg(env, "first", runtime=cache, **opts))
    files = sorted(folder.glob("teacher_logits-*.pt"))
    assert len(files) == 1
    stored = torch.load(files[0], weights_only=True)

    def no_teacher_pass(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the teacher ran although its logits were stored")

    monkeypatch.setattr(teacher_mod.TeacherLogitCache, "compute", no_teacher_pass)
    train(student_cfg(env, "second", runtime=cache, **opts))
    runs = env["root"] / "runs"
    own, second = (load_checkpoint(runs / n / "last.pt") for n in ("own", "second"))
    for key in own["model"]:
        torch.testing.assert_close(own["model"][key], second["model"][key], rtol=0, atol=0)
    monkeypatch.undo()
    # a damaged file is recomputed and replaced, not fatal
    files[0].write_bytes(b"not a tensor")
    train(student_cfg(env, "third", runtime=cache, **opts))
    torch.testing.assert_close(torch.load(files[0], weights_only=True), stored, rtol=0, atol=0)
    # without teacher_cache the folder is not used (bench's student-alone row keeps the override)
    before = {p: p.stat().st_mtime_ns for p in folder.iterdir()}
    train(student_cfg(env, "no_cache", runtime={"teacher_cache_dir": str(folder)}, **opts))
    assert {p: p.stat().st_mtime_ns for p in folder.iterdir()} == before


@pytest.mark.parametrize(
    "runtime",
    [
        {"amp": "bf16", "channels_last": True},
        {"deterministic": None},
    ],
)
def test_runtime_variants_run(
    env: dict[str, Path], tmp_path: Path, runtime: dict[str, Any]
) -> None:
    experiment = {"output_dir": str(tmp_path / "runs")}
    if "deterministic" in runtime:
        runtime, experiment["deterministic"] = {}, True
    cfg = make_cfg(
        tmp_path,
        "variant",
        data_root=env["data"],
        experiment=experiment,
        solver={"epochs": 3},
        runtime={**runtime, "max_steps_per_epoch": 3, "eval_every": 2},
    )
    try:
        summary = train(cfg)
    finally:
        torch.use_deterministic_algorithms(False)
    rows = read_metrics(tmp_path / "runs" / "variant" / "metrics.jsonl")
    assert [("test/top1" in r) for r in rows] == [False, True, True]  # every 2nd epoch + the last
    assert all(math.isfinite(r["train/loss"]) for r in rows)
    assert summary["completed"] and summary["best"]["epoch"] in (2, 3)


@pytest.mark.slow
def test_compiled_loss_keeps_one_graph_across_epochs(env: dict[str, Path]) -> None:
    """runtime.compile_loss: DKD's warm-up changes at every step; the epoch reaches the compiled
    loss as a tensor, so one graph serves all 30 steps and training gives what eager training
    gives."""
    from torch._dynamo.utils import counters

    opts: dict[str, Any] = {
        "loss": {"params": {"warmup": 2}},
        "solver": {"epochs": 3},
    }
    torch._dynamo.reset()
    counters.clear()
    train(student_cfg(env, "dkd_compiled", "dkd", runtime={"compile_loss": True}, **opts))
    graphs = counters["stats"]["unique_graphs"]
    train(student_cfg(env, "dkd_eager", "dkd", **opts))
    runs = env["root"] / "runs"
    compiled = read_metrics(runs / "dkd_compiled" / "metrics.jsonl")
    eager = read_metrics(runs / "dkd_eager" / "metrics.jsonl")
    # 3 epochs x 10 steps: a float epoch would have compiled a graph per step
    assert graphs == 1, graphs
    for a, b in zip(compiled, eager, strict=True):
        assert a["train/loss"] == pytest.approx(b["train/loss"], rel=1e-4)
        assert a["train/term/tckd"] == pytest.approx(b["train/term/tckd"], rel=1e-3)
    a = load_checkpoint(runs / "dkd_compiled" / "last.pt")
    b = load_checkpoint(runs / "dkd_eager" / "last.pt")
    assert set(a["loss"]) == set(b["loss"])  # the checkpoint holds the module, not the wrapper
    for key in a["model"]:  # 30 SGD steps amplify the fused kernels' last-bit differences
        torch.testing.assert_close(a["model"][key], b["model"][key], rtol=0, atol=1e-2)


def _nan_teacher_at(monkeypatch: pytest.MonkeyPatch, step: int) -> None:
    """The live teacher's logits are NaN at the ``step``-th training batch (1-based: batches
    of 32 images; the build's shape probe and the teacher's evaluation, on 2 and 64 images, are
    not counted)."""
    real = build_mod.build_teacher
    seen: list[int] = []

    def hook(module: nn.Module, args: tuple[Any, ...], out: torch.Tensor) -> Any:
        if args[0].shape[0] != 32:
            return None
        seen.append(1)
        return out * float("nan") if len(seen) == step else None

    def build(*a: Any, **kw: Any) -> nn.Module:
        teacher = real(*a, **kw)
        teacher.register_forward_hook(hook)
        return teacher

    monkeypatch.setattr(build_mod, "build_teacher", build)


def test_compiled_loss_runs_under_skip_mode_and_the_engine_checks_the_first_step(
    env: dict[str, Path], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """runtime.compile_loss with runtime.nonfinite=skip: every step calls the compiled loss (it
    used to fall back to the eager loss and its syncing input checks on every step), with the
    loss's own checks off; the engine checks the first step's inputs once (a NaN teacher at
    step 1 is a clear error), and a NaN at a later step is skipped."""
    from torch._dynamo.utils import counters

    import lud.engine.step as step_mod

    calls: list[bool] = []
    real_compile = torch.compile

    def counting_compile(module: Any, *a: Any, **kw: Any) -> Any:
        compiled = real_compile(module, *a, **kw)
        if not isinstance(module, DistillationLoss):
            return compiled

        def call(*args: Any, **kwargs: Any) -> Any:
            calls.append(module.validate)
            return compiled(*args, **kwargs)

        return call

    checks: list[int] = []
    real_validate = step_mod.validate_logits

    def counting_validate(*a: Any, **kw: Any) -> None:
        checks.append(1)
        real_validate(*a, **kw)

    monkeypatch.setattr(torch, "compile", counting_compile)
    monkeypatch.setattr(step_mod, "validate_logits", counting_validate)
    runtime = {"compile_loss": True, "nonfinite": "skip", "max_steps_per_epoch": 3}
    _nan_teacher_at(monkeypatch, 1)
    with pytest.raises(ValueError, match="epoch 1, step 1: teacher_logits contain NaN or Inf"):
        train(student_cfg(env, "skip_compiled_bad", "dkd", runtime=runtime))
    assert calls == [] and checks == [1]

    monkeypatch.undo()  # a fresh teacher hook: NaN at step 2 this time
    monkeypatch.setattr(torch, "compile", counting_compile)
    monkeypatch.setattr(step_mod, "validate_logits", counting_validate)
    _nan_teacher_at(monkeypatch, 2)
    calls.clear()
    checks.clear()
    torch._dynamo.reset()
    counters.clear()
    with caplog.at_level("WARNING", logger="lud"):
        summary = train(student_cfg(env, "skip_compiled", "dkd", runtime=runtime))
    assert summary["completed"]
    assert calls == [False] * 6  # 2 epochs x 3 steps, all through the compiled loss
    assert checks == [1]  # the first step only
    assert counters["stats"]["unique_graphs"] == 1
    warned = [r.getMessage() for r in caplog.records if "step skipped" in r.getMessage()]
    assert len(warned) == 1 and warned[0].startswith("epoch 1, step 2/3: the loss is NaN/Inf")
    rows = read_metrics(env["root"] / "runs" / "skip_compiled" / "metrics.jsonl")
    assert [r["train/skipped_steps"] for r in rows] == [1, 0]


def test_fp16_on_cpu_warns_and_runs(env: dict[str, Path], tmp_path: Path) -> None:
    cfg = make_cfg(
        tmp_path,
        "fp16",
        data_root=env["data"],
        data={"eval_batch_size": 100},
        solver={"epochs": 1},
        runtime={"amp": "fp16", "max_steps_per_epoch": 2},
    )
    with pytest.warns(UserWarning, match="fp16"):
        summary = train(cfg)
    assert summary["completed"]
    ckpt = load_checkpoint(tmp_path / "runs" / "fp16" / "last.pt")
    assert "scale" in ckpt["scaler"]  # the GradScaler state is checkpointed
