"""Every shipped experiment config loads, validates and matches the recipe script that writes it."""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path

import pytest

from lud.config import _read_yaml, load_config, validate_config
from lud.losses import build_loss, loss_entries

ROOT = next(p for p in Path(__file__).resolve().parents if (p / "pyproject.toml").is_file())
CONFIGS_DIR = ROOT / "src" / "lud" / "configs"
FILES = sorted(CONFIGS_DIR.rglob("*.yaml"))  # the configs and the base files they inherit
CONFIGS = [p for p in FILES if not any(part.startswith("_") for part in p.relative_to(CONFIGS_DIR).parts)]
_spec = importlib.util.spec_from_file_location("make_configs", ROOT / "scripts" / "make_configs.py")
make_configs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make_configs)


def test_tree_equals_the_recipe_script() -> None:
    """CI's check that the committed configs are what the generator writes, byte for byte."""
    expected = make_configs.all_files()
    on_disk = {p.relative_to(CONFIGS_DIR) for p in FILES}
    assert on_disk == set(expected), "src/lud/configs/ is out of date: run scripts/make_configs.py"
    for rel, content in expected.items():
        assert (CONFIGS_DIR / rel).read_text() == make_configs.render(content), (
            f"{rel} is out of date: run scripts/make_configs.py"
        )


def test_every_config_inherits_exactly_its_recipe() -> None:
    """Through its bases (``_base_``), every file loads to the full config of its recipe."""
    full = make_configs.all_configs()
    assert {p.relative_to(CONFIGS_DIR) for p in CONFIGS} == set(full)
    for rel, cfg in full.items():
        assert _read_yaml(CONFIGS_DIR / rel) == cfg, rel
        text = (CONFIGS_DIR / rel).read_text()
        assert text.startswith("_base_:"), rel
    bases = [p for p in FILES if p not in CONFIGS]
    assert bases, "no base files"
    # a file holds what differs only: fewer lines than its full config (about a fifth)
    lines = sum(len(p.read_text().splitlines()) for p in FILES)
    flat = sum(len(make_configs.render(c).splitlines()) for c in full.values())
    assert lines < flat / 3, (lines, flat)


def test_every_registered_distillation_loss_has_its_configs() -> None:
    """The methods come from the registry: a loss registered later gets configs, or the test says
    which are missing."""
    names = {p.relative_to(CONFIGS_DIR).as_posix() for p in CONFIGS}
    shared = [e.name for e in loss_entries() if e.family in ("baseline", "lud")
              and e.name not in make_configs.OWN_RECIPE]
    assert shared == make_configs.distillation_methods() and "lud" in shared
    for ds, pairs in (("cifar100", 11), ("fashion_mnist", 2), ("mnist5k", 2), ("fashion_pairs", 2)):
        for method in shared:
            found = [p for p in names if p.startswith(f"{ds}/{method}/")]
            assert len(found) == pairs, f"{ds}: {method} has {len(found)} configs, want {pairs}"
    assert len([p for p in names if p.startswith("cifar100/lud-released/")]) == 11
    for method in make_configs.IMAGENET_METHODS:
        for pair in ("imagenet_resnet34_imagenet_resnet18", "imagenet_resnet50_imagenet_mobilenetv1"):
            assert f"imagenet/{method}/{pair}.yaml" in names
    assert set(make_configs.IMAGENET_METHODS) <= set(shared)


def test_released_lud_recipe() -> None:
    """The released LUD code's recipe: two views, 480 epochs, lr 0.025 / 0.01, batch 64."""
    paths = sorted(p for p in (CONFIGS_DIR / "cifar100" / "lud-released").glob("*.yaml") if p in CONFIGS)
    assert len(paths) == 11
    for path in paths:
        cfg = load_config(path, validate=False)
        light = cfg.model.name in ("ShuffleV1", "ShuffleV2", "MobileNetV2")
        assert cfg.solver.lr == (0.01 if light else 0.025), path.name
        assert (cfg.solver.epochs, cfg.data.batch_size) == (480, 64)
        assert cfg.solver.milestones == [150, 180, 210]
        assert cfg.data.strong_augment == {"num_ops": 2, "magnitude": 10}
        assert build_loss(cfg.loss.name, **cfg.loss.params).two_views


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.relative_to(CONFIGS_DIR).as_posix())
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


# ----------------------------------------------------------------------------- by name
def test_packaged_configs_are_the_tree() -> None:
    from lud.config import CONFIGS_DIR as packaged_dir
    from lud.config import packaged_configs

    assert packaged_dir.resolve() == CONFIGS_DIR.resolve()
    names = packaged_configs()
    assert names == sorted(p.relative_to(CONFIGS_DIR).with_suffix("").as_posix() for p in CONFIGS)
    assert not any(part.startswith("_") for n in names for part in n.split("/"))
    lud_cifar = packaged_configs("cifar100/lud")
    assert len(lud_cifar) == 11 and all(n.startswith("cifar100/lud/") for n in lud_cifar)
    assert packaged_configs("no_such_dataset") == []


def test_a_config_is_found_by_name_or_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from lud.config import ConfigError, resolve_config

    name = "cifar100/lud/resnet32x4_resnet8x4"
    expected = CONFIGS_DIR / f"{name}.yaml"
    assert resolve_config(name) == expected
    assert resolve_config(name + ".yaml") == expected
    assert load_config(resolve_config(name), validate=False).loss.name == "lud"
    # A file that exists wins over the packaged config of the same name.
    local = tmp_path / f"{name}.yaml"
    local.parent.mkdir(parents=True)
    local.write_text("loss: {name: kd}\n")
    monkeypatch.chdir(tmp_path)
    assert resolve_config(f"{name}.yaml") == Path(f"{name}.yaml")
    assert resolve_config(name) == expected  # the name alone is not that path
    # An unknown name names the close ones.
    with pytest.raises(ConfigError, match="cifar100/lud/resnet32x4_resnet8x4") as err:
        resolve_config("cifar100/lud/resnet32x4_resnet8x2")
    assert "lud list configs" in str(err.value)
    with pytest.raises(ConfigError, match="config file not found: 'nothing/at/all'"):
        resolve_config("nothing/at/all")
    with pytest.raises(ConfigError):
        resolve_config("../cifar100/lud/resnet32x4_resnet8x4")
