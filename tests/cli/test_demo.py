"""`lud demo` end to end on a small slice of its real data (the full demo is timed in the docs)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("mlxtend")
pytestmark = pytest.mark.slow  # the demo's four runs, end to end

from lud.cli import main  # noqa: E402


def test_demo_trains_four_runs_and_prints_the_table(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "demo"
    rc = main(
        [
            "demo",
            "--output-dir",
            str(out),
            "--subset",
            "400",
            "--teacher-epochs",
            "2",
            "--student-epochs",
            "2",
        ]
    )
    assert rc == 0
    printed = capsys.readouterr().out
    for label in ("teacher", "student alone", "kd", "lud"):
        assert f"| {label} |" in printed
    results = json.loads((out / "demo_results.json").read_text())
    assert list(results) == ["teacher", "student alone", "kd", "lud"]
    for folder in ("teacher", "student", "student-kd", "student-lud"):
        run = out / folder
        for f in ("config.yaml", "metrics.jsonl", "last.pt", "best.pt", "summary.json"):
            assert (run / f).is_file(), run / f
        summary = json.loads((run / "summary.json").read_text())
        assert summary["completed"] and summary["epochs_completed"] == 2
        assert 0.0 <= summary["best"]["test_top1"] <= 100.0
    # The students distil from the teacher the demo just trained: its best.pt, re-evaluated by
    # the student runs, scores what the teacher run recorded for its best epoch.
    teacher_best = json.loads((out / "teacher" / "summary.json").read_text())["best"]["test_top1"]
    for method in ("kd", "lud"):
        assert results[method]["teacher"] == "cnn_large"
        assert results[method]["teacher_test_top1"] == pytest.approx(teacher_best, abs=1e-6)
    assert (out / "demo_results.md").read_text().startswith("| run |")
