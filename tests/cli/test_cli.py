"""The ``lud`` command line: train → distil → eval, list, errors and exit codes (lud.cli)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from lud.cli import main
from lud.data import available_datasets, write_cifar_like
from lud.engine import load_checkpoint
from lud.engine.runlog import read_metrics
from lud.losses import available_losses
from lud.models import available_models

torch.set_num_threads(1)
PY = sys.executable


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Data, a base config, a teacher config inheriting it, and a student config."""
    root = tmp_path_factory.mktemp("cli")
    write_cifar_like(root / "data", num_classes=10, n_train=256, n_test=96, seed=0)
    base = {
        "experiment": {"output_dir": str(root / "runs"), "seed": 1},
        "data": {
            "name": "cifar10",
            "root": str(root / "data"),
            "batch_size": 32,
            "eval_batch_size": 48,
        },
        "model": {"name": "cnn_small"},
        "solver": {"epochs": 2, "lr": 0.05, "schedule": "step", "milestones": [1]},
        "runtime": {"progress": False, "tensorboard": False, "log_every": 100},
    }
    (root / "base.yaml").write_text(yaml.safe_dump(base))
    (root / "teacher.yaml").write_text(
        yaml.safe_dump({"_base_": "base.yaml", "loss": {"name": "ce"}})
    )
    student = {
        "_base_": "base.yaml",
        "loss": {"name": "kd"},
        "teacher": {"name": "cnn_small", "checkpoint": str(root / "runs" / "teacher" / "best.pt")},
    }
    (root / "kd.yaml").write_text(yaml.safe_dump(student))
    return {"root": root, "runs": root / "runs"}


@pytest.fixture(scope="module")
def trained(project: dict[str, Path]) -> dict[str, Path]:
    """`lud train` a teacher, then distil two students (kd, and lud through overrides)."""
    root = project["root"]
    assert main(["train", str(root / "teacher.yaml")]) == 0
    assert main(["train", str(root / "kd.yaml")]) == 0
    assert (
        main(
            [
                "train",
                str(root / "kd.yaml"),
                "loss.name=lud",
                "--name",
                "lud_student",
                "loss.params.threshold=running",
                "loss.params.rank_method=pearson",
            ]
        )
        == 0
    )
    return project


# ----------------------------------------------------------------------------- list / help
def test_list(capsys: pytest.CaptureFixture[str]) -> None:
    for kind, names in (
        ("losses", available_losses()),
        ("models", available_models()),
        ("datasets", available_datasets()),
    ):
        code, out, _ = run_cli(capsys, "list", kind)
        assert code == 0 and [line.split()[0] for line in out.splitlines()] == names
    _, out, _ = run_cli(capsys, "list", "losses")  # with each summary and its defaults
    assert any(line.split()[0] == "gjsd" and "β = 0.5" in line for line in out.splitlines())
    code, out, _ = run_cli(capsys, "list")
    assert code == 0 and "losses:" in out and "models:" in out and "datasets:" in out
    assert "  lud" in out.splitlines() and "  resnet8x4" in out.splitlines()


def test_help_version_and_unknown_command(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "--help")
    assert code == 0 and "train" in out and "eval" in out and "demo" in out
    code, out, _ = run_cli(capsys, "train", "--help")
    assert code == 0 and "--resume" in out and "key=value" in out
    code, _, err = run_cli(capsys, "trian")
    assert code == 2 and "Did you mean 'train'" in err
    code, _, err = run_cli(capsys)
    assert code == 2 and "usage" in err


@pytest.mark.slow
def test_python_m_lud_entry_point(tmp_path: Path) -> None:
    res = subprocess.run(
        [PY, "-m", "lud", "--version"], capture_output=True, text=True, timeout=60, check=False
    )
    assert res.returncode == 0 and res.stdout.startswith("lud ")
    # A bad config in a real process: exit code 2, the message on stderr, no traceback.
    (tmp_path / "bad.yaml").write_text(
        "data: {name: cifar10}\nmodel: {name: cnn_small}\nsolver: {lrr: 1}\n"
    )
    res = subprocess.run(
        [PY, "-m", "lud", "train", str(tmp_path / "bad.yaml")],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "LUD_TRACEBACK": ""},
        check=False,
    )
    assert res.returncode == 2
    assert "solver.lrr" in res.stderr and "Did you mean 'lr'" in res.stderr
    assert "Traceback" not in res.stderr


# ----------------------------------------------------------------------------- train / eval
def test_teacher_then_students(trained: dict[str, Path]) -> None:
    runs = trained["runs"]
    for name, loss in (("teacher", "ce"), ("kd", "kd"), ("lud_student", "lud")):
        summary = json.loads((runs / name / "summary.json").read_text())
        assert summary["completed"] and summary["loss"] == loss and summary["epochs_completed"] == 2
        stored = yaml.safe_load((runs / name / "config.yaml").read_text())
        assert stored["loss"]["name"] == loss and stored["experiment"]["name"] == name
    assert json.loads((runs / "kd" / "summary.json").read_text())["teacher"] == "cnn_small"
    # LUD's running-threshold buffers travel in the loss state of the checkpoint.
    loss_state = load_checkpoint(runs / "lud_student" / "last.pt")["loss"]
    assert bool(loss_state["running_threshold_initialized"])
    assert 0.0 < float(loss_state["running_sample_threshold"]) <= 1.0
    # Stored config kept the override-only parameters.
    stored = yaml.safe_load((runs / "lud_student" / "config.yaml").read_text())
    assert stored["loss"]["params"] == {"threshold": "running", "rank_method": "pearson"}


@pytest.mark.parametrize(
    "run, which", [("teacher", "best"), ("kd", "last"), ("lud_student", "best")]
)
def test_eval_reproduces_logged_top1(
    trained: dict[str, Path], capsys: pytest.CaptureFixture[str], run: str, which: str
) -> None:
    path = trained["runs"] / run / f"{which}.pt"
    code, out, _ = run_cli(capsys, "eval", str(path), "--json")
    assert code == 0
    res = json.loads(out)
    row = read_metrics(trained["runs"] / run / "metrics.jsonl")[res["epoch"] - 1]
    assert res["top1"] == row["test/top1"] and res["top5"] == row["test/top5"]
    assert res["nll"] == pytest.approx(row["test/nll"]) and res["ece"] == pytest.approx(
        row["test/ece"]
    )
    assert res["n"] == 96
    # Human-readable output says the same.
    code, out, _ = run_cli(capsys, "eval", str(path), "--batch-size", "7")
    assert code == 0 and f"top-1: {row['test/top1']:.2f}%" in out and "ECE" in out


def test_eval_errors(
    trained: dict[str, Path], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    best = str(trained["runs"] / "teacher" / "best.pt")
    code, _, err = run_cli(capsys, "eval", best, "--split", "val")
    assert code == 2 and "no validation split" in err
    code, _, err = run_cli(capsys, "eval", best, "--root", str(tmp_path / "gone"))
    assert code == 2 and "not found" in err
    code, _, err = run_cli(capsys, "eval", str(tmp_path / "missing.pt"))
    assert code == 2 and "missing.pt" in err
    torch.save({"weights": 1}, tmp_path / "foreign.pt")
    code, _, err = run_cli(capsys, "eval", str(tmp_path / "foreign.pt"))
    assert code == 2 and "not a lud run checkpoint" in err


def test_train_errors_exit_2(
    project: dict[str, Path],
    trained: dict[str, Path],
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    root = project["root"]
    code, _, err = run_cli(capsys, "train", str(root / "teacher.yaml"))
    assert code == 2 and "--resume" in err and "Traceback" not in err
    code, _, err = run_cli(capsys, "train", str(root / "teacher.yaml"), "solver.lrr=0.1")
    assert code == 2 and "Did you mean 'lr'" in err
    code, _, err = run_cli(
        capsys, "train", str(root / "teacher.yaml"), "solver.epochs=0", "--name", "x"
    )
    assert code == 2 and "solver.epochs must be >= 1" in err
    code, _, err = run_cli(
        capsys,
        "train",
        str(root / "teacher.yaml"),
        f"data.root={tmp_path / 'none'}",
        "--name",
        "nodata",
    )
    assert code == 2 and "not found" in err
    code, _, err = run_cli(capsys, "train", str(tmp_path / "absent.yaml"))
    assert code == 2 and "config file not found" in err


def test_stop_and_resume_through_cli(
    project: dict[str, Path], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    cfg = str(project["root"] / "teacher.yaml")
    out_dir = str(tmp_path / "runs")
    code, out, _ = run_cli(
        capsys, "train", cfg, "--output-dir", out_dir, "--name", "r", "--stop-after", "1"
    )
    assert code == 0 and "epochs: 1/2" in out
    code, out, _ = run_cli(capsys, "train", cfg, "--resume", "--output-dir", out_dir, "--name", "r")
    assert code == 0 and "epochs: 2/2" in out
    assert [r["epoch"] for r in read_metrics(tmp_path / "runs" / "r" / "metrics.jsonl")] == [1, 2]


def test_list_configs_and_train_by_unknown_name(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "list", "configs", "fashion_mnist/lud")
    assert code == 0
    names = out.split()
    assert "fashion_mnist/lud/cnn_large_cnn_small" in names
    assert all(n.startswith("fashion_mnist/lud/") for n in names)
    code, out, _ = run_cli(capsys, "list", "configs")
    assert code == 0 and "cifar100/lud/resnet32x4_resnet8x4" in out.split()
    code, _, err = run_cli(capsys, "list", "configs", "nowhere/")
    assert code == 2 and "no packaged config name starts with 'nowhere/'" in err
    code, _, err = run_cli(capsys, "list", "losses", "cifar100")
    assert code == 2 and "filters configs only" in err
    code, _, err = run_cli(capsys, "train", "fashion_mnist/lud/cnn_large_cnn_smal")
    assert code == 2
    assert "fashion_mnist/lud/cnn_large_cnn_small" in err and "lud list configs" in err


def test_train_without_scoring_the_test_set_prints_the_validation_score(
    project: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """data.eval_test=false (what lud tune runs): the summary names the validation score."""
    root = project["root"]
    code, out, _ = run_cli(
        capsys, "train", str(root / "teacher.yaml"), "--name", "val_only",
        "data.eval_test=false", "data.val_split=0.25", "solver.epochs=1",
    )
    assert code == 0
    assert "best (by val top-1, epoch 1): val top-1" in out and "test set not scored" in out
