"""The import rules of docs/architecture.md hold (import-linter, contracts in pyproject.toml).

Run here so that `make test` (and so CI) fails on a layer violation, lazy imports included.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def _lint_imports(src: Path) -> subprocess.CompletedProcess[str]:
    if not LINT_IMPORTS.is_file():
        pytest.fail(f"{LINT_IMPORTS} is missing: install the dev extra (pip install -e '.[dev]')")
    env = {**os.environ, "PYTHONPATH": str(src)}
    return subprocess.run(
        [str(LINT_IMPORTS), "--config", str(ROOT / "pyproject.toml"), "--no-cache"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )


def test_the_package_keeps_its_layers() -> None:
    res = _lint_imports(ROOT / "src")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "0 broken" in res.stdout


@pytest.mark.parametrize(
    ("module", "line", "contract"),
    [
        # a lazy (function-level) import of the engine by the loss library
        ("losses/kd.py", "def _leak():\n    from ..engine import train\n",
         "The loss library imports nothing else of lud"),
        ("models/registry.py", "def _leak():\n    import lud.engine.trainer\n",
         "Models and data never import the engine"),
        ("engine/metrics.py", "def _leak():\n    from ..cli import main\n",
         "Nothing imports the command line"),
        ("config.py", "def _leak():\n    from .experiments import bench\n", "Layers"),
        ("experiments/bench.py", "def _leak():\n    from ..integrations import hf\n",
         "Nothing but the command line imports the integrations"),
        ("integrations/tokens.py", "def _leak():\n    from ..cli import main\n", "Layers"),
    ],
)
def test_a_violation_is_caught(tmp_path: Path, module: str, line: str, contract: str) -> None:
    shutil.copytree(ROOT / "src" / "lud", tmp_path / "lud",
                    ignore=shutil.ignore_patterns("__pycache__", "configs"))
    with open(tmp_path / "lud" / module, "a") as f:
        f.write("\n\n" + line)
    res = _lint_imports(tmp_path)
    assert res.returncode != 0
    broken = [ln for ln in res.stdout.splitlines() if ln.endswith("BROKEN")]
    assert any(ln.startswith(contract) for ln in broken), res.stdout
