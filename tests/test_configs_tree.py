"""Every shipped experiment config loads, validates and matches the recipe script that writes it."""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path

import pytest

from lud.config import load_config, validate_config
from lud.losses import build_loss

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").rglob("*.yaml"))
_spec = importlib.util.spec_from_file_location("make_configs", ROOT / "scripts" / "make_configs.py")
make_configs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make_configs)


def test_tree_equals_the_recipe_script() -> None:
    expected = make_configs.all_configs()
    on_disk = {p.relative_to(ROOT / "configs") for p in CONFIGS}
    assert on_disk == set(expected), "configs/ is out of date: run scripts/make_configs.py"
    for rel, cfg in expected.items():
        assert (ROOT / "configs" / rel).read_text() == make_configs.render(cfg), rel


def test_the_required_experiments_exist() -> None:
    names = {p.relative_to(ROOT / "configs").as_posix() for p in CONFIGS}
    for method in ("kd", "dkd", "dist", "kd+ls", "ctkd", "mlkd", "lud"):
        pairs = [p for p in names if p.startswith(f"cifar100/{method}/")]
        assert len(pairs) == 11, (method, pairs)
        for ds in ("fashion_mnist", "mnist5k"):
            assert any(p.startswith(f"{ds}/{method}/") for p in names)
    assert "imagenet/lud/imagenet_resnet34_imagenet_resnet18.yaml" in names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.relative_to(ROOT / "configs").as_posix())
def test_config_validates(path: Path, tmp_path: Path) -> None:
    cfg = load_config(path, validate=False)
    if cfg.teacher.name is not None:
        # The teacher weights are the user's download/run; stand in a file so the rest validates.
        fake = tmp_path / "teacher.pt"
        fake.write_bytes(b"")
        cfg = dataclasses.replace(
            cfg, teacher=dataclasses.replace(cfg.teacher, checkpoint=str(fake))
        )
    validate_config(cfg)
    build_loss(cfg.loss.name, **cfg.loss.params)
    assert cfg.experiment.name == path.stem or cfg.experiment.name.endswith(path.stem)
