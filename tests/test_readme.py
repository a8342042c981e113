"""The README's Python snippets run, offline and at small sizes, and print what the README shows.

Each ```python block of README.md is followed by a ```text block: the lines the snippet prints
last (a library may print progress lines before them). A snippet runs as its own script in a
temporary folder (what it writes stays there), with this process's environment, so it imports
the same ``lud``.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = next(p for p in Path(__file__).resolve().parents if (p / "pyproject.toml").is_file())
README = ROOT / "README.md"
_FENCE = re.compile(r"^```(\w*)\n(.*?)^```$", re.S | re.M)


def _snippets() -> list[tuple[str, str, str]]:
    """``(heading, code, printed)`` of each Python block; the heading is the section's."""
    text = README.read_text(encoding="utf-8")
    blocks = [(m.start(), m.group(1), m.group(2)) for m in _FENCE.finditer(text)]
    out = []
    for i, (start, lang, code) in enumerate(blocks):
        if lang != "python":
            continue
        heading = re.findall(r"^## (.+)$", text[:start], re.M)[-1]
        nxt = blocks[i + 1] if i + 1 < len(blocks) else None
        assert nxt is not None and nxt[1] == "text", (
            f"README, section {heading!r}: a python block must be followed by a ```text block "
            "with what it prints"
        )
        out.append((heading, code, nxt[2]))
    return out


SNIPPETS = _snippets()


def test_the_readme_has_its_three_ways_in() -> None:
    headings = [h for h, _, _ in SNIPPETS]
    assert headings == ["The loss in your own training loop", "Hugging Face Trainer"]
    text = README.read_text(encoding="utf-8")
    assert "## `lud train NAME`" in text and "make demo" in text and "make test" in text
    assert text.count("<!-- losses:start -->") == text.count("<!-- losses:end -->") == 1


@pytest.mark.parametrize(
    ("heading", "code", "printed"),
    [  # importing transformers alone takes seconds: that snippet is a slow test
        pytest.param(*s, id=s[0], marks=[pytest.mark.slow] if "transformers" in s[1] else [])
        for s in SNIPPETS
    ],
)
def test_a_readme_snippet_prints_what_the_readme_shows(
    tmp_path: Path, heading: str, code: str, printed: str
) -> None:
    for module in re.findall(r"^(?:from|import) (\w+)", code, re.M):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed (an optional extra)")
    (tmp_path / "snippet.py").write_text(code)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "snippet.py"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-4000:]
    want = printed.strip().splitlines()
    got = res.stdout.strip().splitlines()
    assert got[-len(want):] == want, (
        f"README section {heading!r} shows\n{printed}\nbut the snippet printed\n{res.stdout}"
    )
