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
    for method in ("kd", "dkd", "dist", "kd+ls", "ctkd", "mlkd", "lud", "wttm", "rld"):
        pairs = [p for p in names if p.startswith(f"cifar100/{method}/")]
        assert len(pairs) == 11, (method, pairs)
        for ds in ("fashion_mnist", "mnist5k"):
            assert any(p.startswith(f"{ds}/{method}/") for p in names)
    for method in ("lud", "wttm", "rld"):
        for pair in ("imagenet_resnet34_imagenet_resnet18", "imagenet_resnet50_imagenet_mobilenetv1"):
            assert f"imagenet/{method}/{pair}.yaml" in names


def test_released_lud_recipe() -> None:
    """The released LUD code's recipe: two views, 480 epochs, lr 0.025 / 0.01, batch 64."""
    paths = sorted((ROOT / "configs" / "cifar100" / "lud-released").glob("*.yaml"))
    assert len(paths) == 11
    for path in paths:
        cfg = load_config(path, validate=False)
        light = cfg.model.name in ("ShuffleV1", "ShuffleV2", "MobileNetV2")
        assert cfg.solver.lr == (0.01 if light else 0.025), path.name
        assert (cfg.solver.epochs, cfg.data.batch_size) == (480, 64)
        assert cfg.solver.milestones == [150, 180, 210]
        assert cfg.data.strong_augment == {"num_ops": 2, "magnitude": 10}
        assert build_loss(cfg.loss.name, **cfg.loss.params).two_views


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
