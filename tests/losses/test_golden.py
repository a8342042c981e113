"""Every registered loss reproduces its stored golden value (catches silent numerical drift)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from lud.losses import available_losses

ROOT = next(p for p in Path(__file__).resolve().parents if (p / "pyproject.toml").is_file())
GOLDEN = json.loads((ROOT / "tests" / "fixtures" / "golden_losses.json").read_text())
_spec = importlib.util.spec_from_file_location("make_golden", ROOT / "scripts" / "make_golden.py")
make_golden = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make_golden)


def test_every_registered_loss_has_a_golden_value() -> None:
    assert sorted(GOLDEN) == available_losses()


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_golden_value(name: str) -> None:
    got = make_golden.compute(name)
    want = GOLDEN[name]
    assert got["terms"].keys() == want["terms"].keys()
    assert got["total"] == pytest.approx(want["total"], rel=1e-5, abs=1e-6)
    for k, v in want["terms"].items():
        assert got["terms"][k] == pytest.approx(v, rel=1e-5, abs=1e-6), k
    assert sum(got["terms"].values()) == pytest.approx(got["total"], rel=1e-5, abs=1e-6)
