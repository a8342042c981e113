"""Lay the tests out like the package: move each ``tests/test_*.py`` into its folder.

``tests/losses/`` holds the loss library's tests, ``tests/engine/`` the engine's, and so on for
``models``, ``data``, ``config``, ``experiments``, ``integrations`` and ``cli``; tests of the
package as a whole (import rules, the wheel, the README) stay in ``tests/``. :data:`FOLDERS` is
the one mapping, test file name → folder.

    python scripts/mirror_tests.py              # what would move, and unknown test files
    python scripts/mirror_tests.py --fix-paths  # first (and commit): root-based paths in the files
    python scripts/mirror_tests.py --apply      # git mv every known file into its folder
    python scripts/mirror_tests.py --fix-refs   # then (and commit): docs and sources name the new paths
    python scripts/mirror_tests.py --check      # exit 1 if a test file is unknown or out of place

A test file not in :data:`FOLDERS` is reported with a guess (the ``lud`` package its imports
name most); add it to the mapping and run again. The move changes no file's content: tests find
the repository root, and ``tests/fixtures``, from ``pyproject.toml`` wherever they live, and the
shared helpers of ``tests/conftest.py`` reach every folder below it. A moved file that still
locates things relative to its own folder is reported.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests"
TOP = ""  # the folder of package-wide tests: tests/ itself

#: test file name → its folder under tests/ (TOP: stays in tests/)
FOLDERS: dict[str, str] = {
    # the package as a whole
    "test_architecture.py": TOP,
    "test_docs_tables.py": TOP,
    "test_examples.py": TOP,
    "test_gpu_check.py": TOP,
    "test_readme.py": TOP,
    "test_wheel.py": TOP,
    # lud.losses
    "test_baselines.py": "losses",
    "test_compile_losses.py": "losses",
    "test_fused.py": "losses",
    "test_golden.py": "losses",
    "test_loss_params.py": "losses",
    "test_losses_package.py": "losses",
    "test_lud_fused.py": "losses",
    "test_lud_loss.py": "losses",
    "test_lud_vocab.py": "losses",
    "test_properties.py": "losses",
    "test_ranking.py": "losses",
    "test_reference_losses.py": "losses",
    "test_registry.py": "losses",
    "test_sequence_inputs.py": "losses",
    "test_token_divergences.py": "losses",
    "test_topk.py": "losses",
    "test_topk_distributed.py": "losses",
    # lud.models, lud.data
    "test_models.py": "models",
    "test_data.py": "data",
    "test_fashion_pairs.py": "data",
    "test_randaugment.py": "data",
    "test_teacher_cache.py": "data",
    # lud.config (and the packaged configs it finds)
    "test_config.py": "config",
    "test_configs_tree.py": "config",
    # lud.engine
    "test_distributed.py": "engine",
    "test_faults.py": "engine",
    "test_gradnorms.py": "engine",
    "test_hardening.py": "engine",
    "test_malloc.py": "engine",
    "test_run_record.py": "engine",
    "test_trainer.py": "engine",
    "test_two_views.py": "engine",
    # lud.experiments
    "test_bench.py": "experiments",
    "test_report.py": "experiments",
    "test_tune.py": "experiments",
    # lud.integrations
    "test_fused_trainer.py": "integrations",
    "test_integrations_distributed.py": "integrations",
    "test_integrations_hf.py": "integrations",
    "test_integrations_tokens.py": "integrations",
    "test_integrations_topk.py": "integrations",
    "test_integrations_trl.py": "integrations",
    "test_integrations_lm_trl.py": "integrations",
    "test_padded_vocab.py": "integrations",
    "test_token_normalisation.py": "integrations",
    "test_lm_bench.py": "experiments",
    # lud.cli
    "test_cli.py": "cli",
    "test_demo.py": "cli",
}

#: a test file that locates things from its own folder breaks when it moves
_RELATIVE = re.compile(r"Path\(__file__\)(?:\.resolve\(\))?\.(?:parent\b|parents\[)")
#: the repository root, wherever the test file lives
ROOT_EXPR = 'next(p for p in Path(__file__).resolve().parents if (p / "pyproject.toml").is_file())'
#: ``--fix-paths``: the two spellings of "relative to tests/" found in this project's tests
_FIXES = [
    (re.compile(r"Path\(__file__\)(?:\.resolve\(\))?\.parents\[1\]"), ROOT_EXPR),
    (re.compile(r"Path\(__file__\)(?:\.resolve\(\))?\.parent / \"fixtures\""),
     ROOT_EXPR.join("()") + ' / "tests" / "fixtures"'),
]
_LUD_IMPORT = re.compile(r"^\s*(?:from|import) lud\.(\w+)", re.M)


def test_files() -> list[Path]:
    """Every ``test_*.py`` under tests/ (fixtures excluded)."""
    return sorted(p for p in TESTS.rglob("test_*.py") if "fixtures" not in p.parts)


def guess(path: Path) -> str:
    """The ``lud`` package a test file imports most (a suggestion for an unknown file)."""
    found = Counter(_LUD_IMPORT.findall(path.read_text(encoding="utf-8")))
    return found.most_common(1)[0][0] if found else TOP


def plan() -> tuple[list[tuple[Path, Path]], list[Path]]:
    """``(moves, unknown)``: (source, destination) of each misplaced known file; unknown files."""
    moves, unknown = [], []
    for path in test_files():
        folder = FOLDERS.get(path.name)
        if folder is None:
            unknown.append(path)
            continue
        dest = TESTS / folder / path.name if folder else TESTS / path.name
        if path != dest:
            moves.append((path, dest))
    return moves, unknown


def fix_paths(path: Path) -> bool:
    """Rewrite ``path``'s tests/-relative lookups (:data:`_FIXES`) to start at the repository
    root; True if the file changed. Run it, and commit, before the move (a move changes no
    content)."""
    text = path.read_text(encoding="utf-8")
    new = text
    for pattern, repl in _FIXES:
        new = pattern.sub(lambda _m, r=repl: r, new)
    if new != text:
        path.write_text(new, encoding="utf-8")
    return new != text


#: where the project names test files (docs, docstrings, comments, the Makefile)
REF_PLACES = ("README.md", "CHANGELOG.md", "Makefile", "pyproject.toml", ".ci", "docs", "src",
              "scripts", "benchmarks", "examples", "tests")
_REF = re.compile(r"\btests/(test_\w+\.py)")
_TEXT_SUFFIXES = (".py", ".md", ".yaml", ".sh", ".toml", "")  # "": Makefile, .ci/run


def fix_refs() -> list[Path]:
    """Rewrite every ``tests/test_X.py`` named in :data:`REF_PLACES` to the folder
    :data:`FOLDERS` gives it (idempotent: ``tests/engine/test_X.py`` is left alone); the files
    changed. Run it after ``--apply`` and commit it separately."""
    def repl(m: re.Match[str]) -> str:
        folder = FOLDERS.get(m.group(1))
        return f"tests/{folder}/{m.group(1)}" if folder else m.group(0)

    files: list[Path] = []
    for place in REF_PLACES:
        path = ROOT / place
        if path.is_file():
            files.append(path)
        elif path.is_dir():
            files += sorted(f for f in path.rglob("*")
                            if f.is_file() and f.suffix in _TEXT_SUFFIXES and "__pycache__" not in f.parts)
    changed = []
    for f in files:
        if f.resolve() == Path(__file__).resolve():
            continue  # the mapping itself
        text = f.read_text(encoding="utf-8")
        new = _REF.sub(repl, text)
        if new != text:
            f.write_text(new, encoding="utf-8")
            changed.append(f)
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--apply", action="store_true", help="git mv the files into their folders")
    mode.add_argument("--check", action="store_true",
                      help="exit 1 if a test file is unknown or not in its folder")
    mode.add_argument("--fix-paths", action="store_true",
                      help="rewrite tests/-relative paths (parents[1], parent / 'fixtures') of the "
                           "files to move so that they start at the repository root")
    mode.add_argument("--fix-refs", action="store_true",
                      help="after --apply: rewrite tests/test_X.py named in the docs, sources and "
                           "Makefile to the file's folder")
    args = parser.parse_args(argv)
    if args.fix_refs:
        for f in fix_refs():
            print(f"updated the test paths named in {f.relative_to(ROOT)}")
    if args.fix_paths:
        for src, _ in plan()[0]:
            if fix_paths(src):
                print(f"fixed the paths of {src.relative_to(ROOT)}")
    moves, unknown = plan()
    for src, dest in moves:
        print(f"{'move' if args.apply else 'would move'} {src.relative_to(ROOT)} -> "
              f"{dest.relative_to(ROOT)}")
        if args.apply:
            dest.parent.mkdir(parents=True, exist_ok=True)
            subprocess.run(["git", "mv", str(src), str(dest)], cwd=ROOT, check=True)
    for path in unknown:
        hint = guess(path)
        print(f"unknown test file {path.relative_to(ROOT)}: add it to FOLDERS in "
              f"scripts/mirror_tests.py (its imports suggest '{hint or 'tests/'}')")
    for src, dest in moves:
        where = dest if args.apply else src
        if _RELATIVE.search(where.read_text(encoding="utf-8")):
            print(f"note: {where.relative_to(ROOT)} locates files from its own folder "
                  "(Path(__file__).parent...): run --fix-paths, or find the repository root "
                  "from pyproject.toml by hand")
    if args.check and (moves or unknown):
        return 1
    return 1 if unknown else 0


if __name__ == "__main__":
    sys.exit(main())
