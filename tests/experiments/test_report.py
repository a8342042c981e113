"""``lud report``: plots and the Markdown page for benchmark, run and plain folders (lud.report)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from lud.cli import main
from lud.config import config_from_dict
from lud.data import write_cifar_like
from lud.engine import train
from lud.experiments.bench import run_bench
from lud.experiments.calibration import reliability_curve
from lud.experiments.report import discover_runs, make_report

torch.set_num_threads(1)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
STUDENT_DIR = Path("student") / "seed0"


@pytest.fixture(scope="module")
def bench_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished two-method, two-seed benchmark (teacher: MLP, student: tiny MLP)."""
    root = tmp_path_factory.mktemp("report")
    write_cifar_like(root / "data", num_classes=10, n_train=200, n_test=80, seed=3)
    common = {
        "data": {
            "name": "cifar10",
            "root": str(root / "data"),
            "val_split": 0.2,
            "batch_size": 32,
            "eval_batch_size": 80,
            "augment": "none",
        },
        "runtime": {"progress": False, "tensorboard": False, "log_every": 100},
    }
    train(
        config_from_dict(
            {
                **common,
                "experiment": {"name": "teacher", "output_dir": str(root / "runs")},
                "model": {"name": "mlp"},
                "solver": {"epochs": 3, "lr": 0.05, "schedule": "constant", "milestones": []},
            }
        )
    )
    student = {
        **common,
        "experiment": {"name": "tiny", "output_dir": str(root / "runs")},
        "model": {"name": "mlp_tiny"},
        "loss": {"name": "kd"},
        "teacher": {"name": "mlp", "checkpoint": str(root / "runs" / "teacher" / "best.pt")},
        "solver": {"epochs": 3, "lr": 0.002, "schedule": "constant", "milestones": []},
        "runtime": {**common["runtime"], "max_steps_per_epoch": 2},
    }
    (root / "kd.yaml").write_text(yaml.safe_dump(student))
    out = root / "bench"
    run_bench(
        root / "kd.yaml",
        ["kd", "lud"],
        2,
        output_dir=out,
        log=None,
        method_params={"lud": {"rank_method": "pearson"}},
    )
    return out


def _check_page(page: Path) -> set[str]:
    """Every image the page embeds exists and is a readable PNG; returns their names."""
    from matplotlib.image import imread

    text = page.read_text()
    refs = set(re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text))
    for ref in refs:
        png = page.parent / ref
        assert png.read_bytes()[:8] == PNG_MAGIC, ref
        img = imread(png)
        assert img.ndim == 3 and img.shape[0] > 200 and img.shape[1] > 300, (ref, img.shape)
        assert img[..., :3].std() > 0.01, f"{ref} is blank"
    assert refs == {p.name for p in page.parent.glob("*.png")}
    return refs


def test_report_on_benchmark(bench_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", str(bench_dir)]) == 0
    page = bench_dir / "report" / "report.md"
    assert str(page) in capsys.readouterr().out
    refs = _check_page(page)
    assert refs == {
        "curves_top1.png",
        "curves_loss.png",
        "test_top1.png",
        "lud_stats.png",
        "reliability.png",
        "class_gain.png",
    }
    text = page.read_text()
    assert "### Methods" in text and "| student alone |" in text and "teacher (mlp)" in text
    assert "## Notes" not in text  # nothing was missing


def test_report_on_single_lud_run(bench_dir: Path, tmp_path: Path) -> None:
    run = bench_dir / "lud" / "seed1"
    kind, groups, teacher = discover_runs(run)
    assert kind == "run" and [g.label for g in groups] == ["lud"] and teacher is not None
    page = make_report(run, tmp_path / "rep")
    refs = _check_page(page)
    assert refs == {"curves_top1.png", "curves_loss.png", "lud_stats.png", "reliability.png"}
    text = page.read_text()
    assert "Per-class gain skipped: no student-alone run" in text
    assert (tmp_path / "rep" / "teacher_eval.json").is_file()  # the teacher is in the diagram


def test_report_on_folder_of_runs(bench_dir: Path, tmp_path: Path) -> None:
    """A `lud demo`-like folder: teacher, student alone and a KD student side by side."""
    folder = tmp_path / "runs"
    shutil.copytree(bench_dir / STUDENT_DIR, folder / "student")
    shutil.copytree(bench_dir / "kd" / "seed0", folder / "student-kd")
    shutil.copytree(bench_dir.parent / "runs" / "teacher", folder / "teacher")
    kind, groups, teacher = discover_runs(folder)
    assert kind == "folder" and teacher is not None
    assert [(g.label, g.baseline) for g in groups] == [
        ("student", True),
        ("student-kd", False),
        ("teacher", False),
    ]
    page = make_report(folder)
    refs = _check_page(page)
    assert {"class_gain.png", "reliability.png", "test_top1.png"} <= refs
    assert "lud_stats.png" not in refs
    text = page.read_text()
    assert "No LUD run" in text
    calib = text.split("## Calibration")[1].split("##")[0]
    rows = [ln.split(" | ")[0][2:] for ln in calib.splitlines() if ln.startswith("| ")][1:]
    assert rows == ["teacher", "student alone", "student-kd"]  # the teacher's own run folder: once


def test_missing_teacher_and_no_eval_are_notes(bench_dir: Path, tmp_path: Path) -> None:
    run = tmp_path / "kd"
    shutil.copytree(bench_dir / "kd" / "seed0", run)
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["teacher"]["checkpoint"] = str(tmp_path / "gone.pt")
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    page = make_report(run)
    text = page.read_text()
    assert "Teacher not evaluated: teacher.checkpoint not found" in text
    assert "reliability.png" in _check_page(page)  # the student alone still has a diagram

    (run / "eval_best.json").unlink()
    shutil.rmtree(run / "report")
    page = make_report(run, evaluate=False)
    assert _check_page(page) == {"curves_top1.png", "curves_loss.png"}
    assert "reliability diagram is skipped" in page.read_text()


def test_report_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", str(tmp_path)]) == 2
    assert "no run folder under" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "nope")]) == 2
    assert "is not a folder" in capsys.readouterr().err


def test_reliability_curve_by_hand() -> None:
    bins = np.zeros((15, 3))
    bins[2] = [4, 4 * 0.17, 1]  # 4 samples, mean confidence 0.17, 1 correct
    bins[14] = [6, 6 * 0.98, 6]
    c = reliability_curve(bins.tolist())
    assert c["confidence"] == pytest.approx([0.17, 0.98])
    assert c["accuracy"] == pytest.approx([0.25, 1.0])
    assert c["fraction"] == pytest.approx([0.4, 0.6])
    assert c["edges_lo"] == pytest.approx([2 / 15, 14 / 15])
    assert reliability_curve(np.zeros((15, 3)))["confidence"] == []
    with pytest.raises(ValueError, match="shape"):
        reliability_curve([[1.0, 2.0]])


def test_class_gain_heatmap_for_many_classes(tmp_path: Path) -> None:
    """Beyond 20 classes the per-class gain becomes a heat map (methods × classes)."""
    from matplotlib.image import imread

    from lud.experiments.report import _colors, _plot_class_gain

    rng = np.random.default_rng(0)
    gains = [(name, rng.normal(0.0, 3.0, 100)) for name in ("kd", "lud")]
    _plot_class_gain(
        gains, [f"c{i}" for i in range(100)], _colors(["kd", "lud"]), tmp_path / "g.png"
    )
    img = imread(tmp_path / "g.png")
    assert img.shape[1] > 2 * img.shape[0]  # wide: one column per class


@pytest.mark.slow
def test_gradient_norm_plots_for_bench_and_run(bench_dir: Path, tmp_path: Path) -> None:
    """runtime.grad_norms_every on: the page draws each term's norm per method (bench folder)
    and per run (run folder); without it the section says it was skipped."""
    out = tmp_path / "probe_bench"
    run_bench(bench_dir.parent / "kd.yaml", ["kd"], 1, ["runtime.grad_norms_every=1"],
              output_dir=out, log=None)
    from lud.engine.runlog import read_metrics
    from lud.experiments.report import _grad_norm_terms

    kd_rows = read_metrics(out / "kd" / "seed0" / "metrics.jsonl")
    assert all(r["grad_norm/kd"] > 0 and r["grad_norm/ce"] > 0 for r in kd_rows)
    _, groups, _ = discover_runs(out)
    for g in groups:
        g.metrics = [read_metrics(run / "metrics.jsonl") for run in g.runs]
    assert {g.label: _grad_norm_terms(g) for g in groups} == {"student": ["ce"],
                                                              "kd": ["ce", "kd"]}
    page = make_report(out, evaluate=False)
    assert "grad_norms.png" in _check_page(page)
    assert "## Gradient norm of each loss term" in page.read_text()
    run_page = make_report(out / "kd" / "seed0", tmp_path / "run_rep", evaluate=False)
    assert "grad_norms.png" in _check_page(run_page)
    plain = make_report(bench_dir / "kd" / "seed0", tmp_path / "plain", evaluate=False)
    assert "grad_norms.png" not in _check_page(plain)
    assert "No run logged gradient norms" in plain.read_text()
