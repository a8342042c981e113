"""The examples run: ``examples/distil_causal_lm.py --smoke`` end to end (teacher, CE, KD and LUD
students), offline, in a temporary folder."""

from __future__ import annotations

import importlib.util
import math
import re
from pathlib import Path

import pytest

pytest.importorskip("transformers")
pytest.importorskip("accelerate")
pytestmark = pytest.mark.slow  # trains a teacher and three students (about a minute on 2 cores)

ROOT = next(p for p in Path(__file__).resolve().parents if (p / "pyproject.toml").is_file())


def _example(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_distil_causal_lm_smoke_trains_every_method(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    table = _example("distil_causal_lm").main(["--smoke", "--out", str(tmp_path / "runs")])
    rows = re.findall(r"^\| (\w+) \| 1 \| ([\d.]+) ± [\d.]+ \| ([\d.]+) ± [\d.]+ \|$", table, re.M)
    assert [r[0] for r in rows] == ["ce", "fkl", "lud"], table
    for _, ppl, acc in rows:
        assert math.isfinite(float(ppl)) and float(ppl) > 1.0
        assert 0.0 <= float(acc) <= 1.0
    assert "teacher (4x128): perplexity" in capsys.readouterr().out
    assert (tmp_path / "runs").is_dir()
