"""Lists of methods derived from the loss registry: the README's loss table, the bench's default
methods and the CLI help. A registered loss missing from any of them fails here."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from lud.losses import loss_entries

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("make_loss_table", ROOT / "scripts" / "make_loss_table.py")
make_loss_table = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make_loss_table)


def test_the_readme_loss_table_is_generated_from_the_registry() -> None:
    text = (ROOT / "README.md").read_text()
    assert make_loss_table.updated(text) == text, (
        "the loss table in README.md is out of date: run `python scripts/make_loss_table.py`"
    )
    region = text.split(make_loss_table.START, 1)[1].split(make_loss_table.END, 1)[0]
    rows = [line for line in region.splitlines() if line.startswith("| `")]
    assert [r.split("`")[1] for r in rows] == [e.name for e in loss_entries()]


def test_the_table_generator_refuses_a_readme_without_its_markers() -> None:
    with pytest.raises(ValueError, match="losses:start"):
        make_loss_table.updated("# a README without the table\n")
    swapped = f"{make_loss_table.END}\n{make_loss_table.START}\n"
    with pytest.raises(ValueError, match="in that order"):
        make_loss_table.updated(swapped)


def test_bench_defaults_and_cli_help_come_from_the_registry(capsys: pytest.CaptureFixture[str]) -> None:
    from lud.cli import main
    from lud.experiments.bench import DEFAULT_METHODS, default_methods

    bench = {e.name for e in loss_entries(bench=True)}
    assert set(DEFAULT_METHODS) == bench and DEFAULT_METHODS == default_methods()
    assert DEFAULT_METHODS[-1] == "lud"  # LUD's family last, the method itself at the end
    assert main(["bench", "--help"]) == 0
    assert f"(default: {','.join(DEFAULT_METHODS)};" in " ".join(capsys.readouterr().out.split())
