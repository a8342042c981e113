"""A wheel built from this tree is complete: it ships every config, and an installed `lud` trains.

Builds the wheel (no isolation: offline, with the running interpreter's setuptools), installs it
without dependencies into a fresh virtual environment that sees this interpreter's packages
(torch, numpy, ...) through a ``.pth`` file but not the source tree, and runs the installed
``lud`` from an empty folder: ``lud list configs`` and one tiny training from a packaged config.
"""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # builds a wheel and installs it into a fresh venv
ROOT = next(p for p in Path(__file__).resolve().parents if (p / "pyproject.toml").is_file())
CONFIGS = sorted((ROOT / "src" / "lud" / "configs").rglob("*.yaml"))  # configs and their bases
# the language-model benchmark's configs (lud lm-bench) ship too; they are not training configs
LM_CONFIGS = sorted((ROOT / "src" / "lud" / "lm_configs").glob("*.yaml"))


def _run(cmd: list[str], cwd: Path, env: dict[str, str]) -> str:
    res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, f"{' '.join(cmd)}:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return res.stdout


def test_the_wheel_ships_the_configs_and_trains(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["OMP_NUM_THREADS"] = "1"
    # Build from a copy, so that the build leaves nothing in the tree (build/, *.egg-info).
    src = tmp_path / "src_copy"
    shutil.copytree(ROOT / "src", src / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    dist = tmp_path / "dist"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
          "-w", str(dist), str(src)], tmp_path, env)
    (wheel,) = dist.glob("lud-*.whl")
    shipped = {n for n in zipfile.ZipFile(wheel).namelist() if n.endswith(".yaml")}
    assert shipped == {"lud/" + p.relative_to(ROOT / "src" / "lud").as_posix() for p in CONFIGS + LM_CONFIGS}

    # A fresh venv; the packages of this interpreter visible through a .pth (a plain path line:
    # the .pth files there, e.g. an editable install of lud, are not processed).
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False)
    py = env_dir / "bin" / "python"
    purelib = Path(_run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                        tmp_path, env).strip())
    here = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"], *site.getsitepackages()}
    (purelib / "_host_packages.pth").write_text("\n".join(sorted(here)) + "\n")
    _run([str(py), "-m", "pip", "install", "--no-deps", "-q", str(wheel)], tmp_path, env)

    work = tmp_path / "work"
    work.mkdir()
    where = _run([str(py), "-c", "import lud; print(lud.__file__)"], work, env).strip()
    assert Path(where).is_relative_to(env_dir), where  # the installed wheel, not the source tree
    lud = str(env_dir / "bin" / "lud")
    names = _run([lud, "list", "configs", "mnist5k/ce"], work, env).split()
    assert names == ["mnist5k/ce/cnn_large", "mnist5k/ce/cnn_small", "mnist5k/ce/mlp_tiny"]
    bases = [p for p in CONFIGS if any(part.startswith("_") for part in p.parts[-2:])]
    assert len(_run([lud, "list", "configs"], work, env).split()) == len(CONFIGS) - len(bases)
    # a packaged config inherits its bases (_base_) inside the installed wheel too
    shown = _run([lud, "config", "show", "cifar100/lud/resnet32x4_resnet8x4"], work, env)
    assert "epochs: 240" in shown and "inter_weight: 3.2" in shown

    out = _run([lud, "train", "mnist5k/ce/mlp_tiny", "solver.epochs=1", "data.subset=200",
                "runtime.device=cpu", "runtime.max_steps_per_epoch=2", "--output-dir", "runs"],
               work, env)
    assert "epochs: 1/1" in out
    summary = json.loads((work / "runs" / "mnist5k-ce-mlp_tiny" / "summary.json").read_text())
    assert summary["completed"] and summary["model"] == "mlp_tiny"
    assert summary["last"]["test_top1"] > 0
