"""The import rules of docs/architecture.md hold (import-linter, contracts in pyproject.toml),
and no module of the package imports itself through others (no import cycles).

Run here so that `make test` (and so CI) fails on a layer violation, lazy imports included.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = next(p for p in Path(__file__).resolve().parents if (p / "pyproject.toml").is_file())
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


# ----------------------------------------------------------------------------- import cycles
# grimp (installed by import-linter) builds the import graph of the package found on PYTHONPATH,
# lazy imports and ``if TYPE_CHECKING:`` imports included; the strongly connected components of
# more than one module are the cycles.
_CYCLES = """
import json, sys
import grimp

graph = grimp.build_graph("lud", cache_dir=None)
index, low, stack, on_stack, cycles = {}, {}, [], set(), []
for root in sorted(graph.modules):  # Tarjan's algorithm, iterative
    if root in index:
        continue
    work = [(root, iter(sorted(graph.find_modules_directly_imported_by(root))))]
    index[root] = low[root] = len(index)
    stack.append(root)
    on_stack.add(root)
    while work:
        node, children = work[-1]
        child = next(children, None)
        if child is not None:
            if child not in index:
                index[child] = low[child] = len(index)
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(sorted(graph.find_modules_directly_imported_by(child)))))
            elif child in on_stack:
                low[node] = min(low[node], index[child])
            continue
        work.pop()
        if work:
            low[work[-1][0]] = min(low[work[-1][0]], low[node])
        if low[node] == index[node]:
            component = []
            while True:
                m = stack.pop()
                on_stack.discard(m)
                component.append(m)
                if m == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))
json.dump(sorted(cycles), sys.stdout)
"""


def _import_cycles(src: Path) -> list[list[str]]:
    """The import cycles among the modules of the ``lud`` package under ``src``."""
    pytest.importorskip("grimp", reason="grimp comes with import-linter (the dev extra)")
    env = {**os.environ, "PYTHONPATH": str(src)}
    res = subprocess.run([sys.executable, "-c", _CYCLES], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def test_no_import_cycles_inside_the_package() -> None:
    assert _import_cycles(ROOT / "src") == []


@pytest.mark.parametrize(
    ("module", "line", "cycle"),
    [
        # a type-only import closes a cycle for the reader as much as a real one
        ("engine/runfolder.py", "if TYPE_CHECKING:\n    from .build import Run\n",
         ["lud.engine.build", "lud.engine.runfolder"]),
        # a lazy (function-level) import
        ("losses/params.py", "def _leak():\n    from .registry import build_loss\n",
         ["lud.losses.base", "lud.losses.params", "lud.losses.registry"]),
    ],
)
def test_an_import_cycle_is_caught(tmp_path: Path, module: str, line: str,
                                   cycle: list[str]) -> None:
    shutil.copytree(ROOT / "src" / "lud", tmp_path / "lud",
                    ignore=shutil.ignore_patterns("__pycache__", "configs"))
    with open(tmp_path / "lud" / module, "a") as f:
        f.write("\n\n" + line)
    assert _import_cycles(tmp_path) == [cycle]


# ----------------------------------------------------------------------------- test layout
def test_the_tests_mirror_the_package() -> None:
    """Every test file sits in the folder ``scripts/mirror_tests.py`` maps it to: a new test file
    goes into the mapping (and its folder) or this fails, naming it."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("mirror_tests", ROOT / "scripts" / "mirror_tests.py")
    assert spec is not None and spec.loader is not None
    mirror = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mirror)
    moves, unknown = mirror.plan()
    assert unknown == [], f"test files without a folder in scripts/mirror_tests.py: {unknown}"
    assert moves == [], f"test files out of place (python scripts/mirror_tests.py --apply): {moves}"
    lud = ROOT / "src" / "lud"
    for folder in set(mirror.FOLDERS.values()) - {""}:  # each folder is a part of the package
        assert (lud / folder).is_dir() or (lud / f"{folder}.py").is_file(), folder
