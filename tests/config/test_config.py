"""Config parsing, inheritance, overrides and validation (lud.config)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from lud.config import (
    Config,
    ConfigError,
    apply_overrides,
    config_from_dict,
    config_to_dict,
    load_config,
    validate_config,
)
from lud.engine.runfolder import save_config

MINIMAL = {"data": {"name": "synthetic"}, "model": {"name": "cnn_small"}}


def write(path: Path, obj: dict | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(obj if isinstance(obj, str) else yaml.safe_dump(obj))
    return path


def test_defaults_and_name_from_file(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path / "my_run.yaml", MINIMAL))
    assert cfg.experiment.name == "my_run"
    assert cfg.experiment.output_dir == "runs" and cfg.experiment.seed == 0
    assert cfg.data.batch_size == 64 and cfg.data.eval_batch_size == 256 and cfg.data.root is None
    assert (
        cfg.solver.lr == 0.05
        and cfg.solver.epochs == 240
        and cfg.solver.milestones == [150, 180, 210]
    )
    assert cfg.solver.optimizer == "sgd" and cfg.solver.weight_decay == 5e-4
    assert cfg.loss.name == "ce" and cfg.teacher.name is None
    assert cfg.runtime.amp == "off" and cfg.runtime.device == "auto"
    # An explicit name wins over the file name.
    cfg = load_config(write(tmp_path / "b.yaml", {**MINIMAL, "experiment": {"name": "explicit"}}))
    assert cfg.experiment.name == "explicit"


def test_yaml11_quirks(tmp_path: Path) -> None:
    # PyYAML reads `off` as False and `1e-3` as a string; both mean what the user wrote.
    text = (
        "data: {name: synthetic}\nmodel: {name: cnn_small}\n"
        "runtime: {amp: off}\nsolver: {lr: 1e-3}\n"
    )
    cfg = load_config(write(tmp_path / "q.yaml", text))
    assert cfg.runtime.amp == "off"
    assert cfg.solver.lr == pytest.approx(0.001)
    # The same holds inside free-form loss parameters and in overrides (YAML 1.2 scalars).
    cfg = load_config(write(tmp_path / "q.yaml", text),
                      ["teacher.name=cnn_small", f"teacher.checkpoint={tmp_path / 'q.yaml'}",
                       "loss.name=lud", "loss.params.dynamic_temperature=off",
                       "loss.params.sample_mask=false", "loss.params.rank_strength=1e-2"])
    assert cfg.loss.params == {"dynamic_temperature": "off", "sample_mask": False,
                               "rank_strength": 0.01}
    # A string is not a number: no silent coercion of quoted values.
    with pytest.raises(ConfigError, match="must be a number"):
        load_config(write(tmp_path / "r.yaml", text.replace("1e-3", "'1e-3'")))


def test_overrides(tmp_path: Path) -> None:
    path = write(
        tmp_path / "o.yaml",
        {
            **MINIMAL,
            "loss": {"name": "dkd", "params": {"temperature": 4}},
            "teacher": {"name": "cnn_small", "checkpoint": str(tmp_path / "t.pt")},
        },
    )
    (tmp_path / "t.pt").write_bytes(b"")
    cfg = load_config(
        path,
        [
            "solver.lr=0.1",
            "loss.params.beta=2",
            "solver.milestones=[30,60]",
            "runtime.amp=bf16",
            "data.root=null",
            "model.kwargs.width=3",
        ],
        validate=False,
    )
    assert cfg.solver.lr == 0.1
    assert cfg.loss.params == {"temperature": 4, "beta": 2}
    assert cfg.solver.milestones == [30, 60]
    assert cfg.runtime.amp == "bf16"
    assert cfg.model.kwargs == {"width": 3}


@pytest.mark.parametrize(
    "override, fragments",
    [
        ("solver.lrr=0.1", ["solver.lrr", "'lr'", "milestones"]),
        ("solvr.lr=0.1", ["solvr", "'solver'", "runtime"]),
        ("runtime.ampp=bf16", ["runtime.ampp", "'amp'"]),
        ("solver.lr.x=1", ["not a mapping"]),
        ("solver.lr", ["key=value"]),
        ("lr=0.1", ["dotted"]),
    ],
)
def test_bad_override_keys(tmp_path: Path, override: str, fragments: list[str]) -> None:
    path = write(tmp_path / "c.yaml", MINIMAL)
    with pytest.raises(ConfigError) as info:
        load_config(path, [override])
    for frag in fragments:
        assert frag in str(info.value)


def test_unknown_key_in_file_lists_nearest_and_all(tmp_path: Path) -> None:
    path = write(tmp_path / "c.yaml", {**MINIMAL, "solver": {"momentun": 0.9}})
    with pytest.raises(ConfigError) as info:
        load_config(path)
    msg = str(info.value)
    assert "solver.momentun" in msg and "Did you mean 'momentum'" in msg
    for key in ("optimizer", "lr", "nesterov", "weight_decay", "epochs", "schedule", "min_lr"):
        assert key in msg
    with pytest.raises(ConfigError, match="unknown config key 'trainer'"):
        load_config(write(tmp_path / "d.yaml", {**MINIMAL, "trainer": {}}))


def test_inheritance_merge_replace_and_order(tmp_path: Path) -> None:
    write(
        tmp_path / "base.yaml",
        {
            **MINIMAL,
            "solver": {"lr": 0.2, "epochs": 10, "milestones": [5, 8]},
            "loss": {"name": "kd", "params": {"temperature": 4, "ce_weight": 0.1}},
        },
    )
    write(tmp_path / "extra.yaml", {"solver": {"epochs": 20}, "runtime": {"log_every": 7}})
    child = {
        "_base_": ["base.yaml", "extra.yaml"],
        "solver": {"milestones": [3]},
        "loss": {"params": {"temperature": 2}},
    }
    cfg = load_config(write(tmp_path / "sub" / "../child.yaml", child), validate=False)
    assert cfg.solver.lr == 0.2  # from base
    assert cfg.solver.epochs == 20  # later base wins
    assert cfg.solver.milestones == [3]  # lists are replaced, not merged
    assert cfg.runtime.log_every == 7
    assert cfg.loss.params == {"temperature": 2, "ce_weight": 0.1}  # mappings merge
    assert cfg.experiment.name == "child"
    # _replace_ drops the inherited mapping; a relative _base_ is resolved from the child's folder.
    write(
        tmp_path / "sub" / "c2.yaml",
        {
            "_base_": "../base.yaml",
            "loss": {"_replace_": True, "name": "dkd", "params": {"beta": 2}},
        },
    )
    cfg = load_config(tmp_path / "sub" / "c2.yaml", validate=False)
    assert cfg.loss.name == "dkd" and cfg.loss.params == {"beta": 2}


def test_inheritance_errors(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", {"_base_": "b.yaml"})
    write(tmp_path / "b.yaml", {"_base_": "a.yaml"})
    with pytest.raises(ConfigError, match="cycle"):
        load_config(tmp_path / "a.yaml")
    write(tmp_path / "m.yaml", {"_base_": "missing.yaml"})
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "m.yaml")
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    write(tmp_path / "bad.yaml", "data: [unclosed\n")
    with pytest.raises(ConfigError, match="cannot parse YAML"):
        load_config(tmp_path / "bad.yaml")


@pytest.mark.parametrize(
    "section, values, fragments",
    [
        ("solver", {"epochs": "ten"}, ["solver.epochs", "integer", "'ten'"]),
        ("solver", {"epochs": True}, ["solver.epochs", "integer"]),
        ("solver", {"lr": "fast"}, ["solver.lr", "number"]),
        ("solver", {"milestones": 150}, ["solver.milestones", "list"]),
        ("solver", {"milestones": [1, "x"]}, ["solver.milestones[1]", "integer"]),
        ("runtime", {"progress": 1}, ["runtime.progress", "true or false"]),
        ("runtime", {"amp": "fp8"}, ["runtime.amp", "'bf16'", "'fp16'"]),
        ("solver", {"optimizer": "adam"}, ["solver.optimizer", "Did you mean 'adamw'"]),
        ("data", {"root": 3}, ["data.root", "str | null"]),
        ("model", {"kwargs": [1]}, ["model.kwargs", "mapping"]),
    ],
)
def test_type_errors(section: str, values: dict, fragments: list[str]) -> None:
    raw = {**MINIMAL, section: {**MINIMAL.get(section, {}), **values}}
    with pytest.raises(ConfigError) as info:
        config_from_dict(raw, name="x")
    for frag in fragments:
        assert frag in str(info.value)


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("solver.lr=0", "solver.lr must be > 0"),
        ("solver.epochs=0", "solver.epochs must be >= 1"),
        ("data.val_split=1.0", "data.val_split must be in [0, 1)"),
        ("data.val_split=-0.1", "data.val_split"),
        ("solver.milestones=[60,30]", "strictly increasing"),
        ("solver.warmup_epochs=500", "solver.warmup_epochs"),
        ("solver.min_lr=1.0", "solver.min_lr"),
        ("solver.momentum=1.5", "solver.momentum"),
        ("solver.nesterov=true", "nesterov"),  # with momentum 0 below
        ("data.batch_size=0", "data.batch_size"),
        ("runtime.device=gpu", "runtime.device"),
        ("runtime.log_every=0", "runtime.log_every"),
        ("experiment.name=a/b", "plain folder name"),
        ("experiment.seed=-1", "experiment.seed"),
        ("model.kwargs.num_classes=5", "must not set 'num_classes'"),
        ("teacher.name=cnn_small", "teacher.checkpoint is null"),
        ("teacher.checkpoint=x.pt", "teacher.name is null"),
        ("runtime.teacher_cache=true", "teacher_cache needs a teacher"),
    ],
)
def test_value_errors(tmp_path: Path, override: str, fragment: str) -> None:
    extra = ["solver.momentum=0"] if "nesterov" in override else []
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path / "c.yaml", MINIMAL), [override, *extra])
    assert fragment in str(info.value)


@pytest.mark.parametrize(
    "overrides, fragments",
    [
        (["loss.name=kdd"], ["unknown loss 'kdd'", "'kd'", "lud"]),
        (["model.name=resnet9"], ["model.name", "unknown model 'resnet9'"]),
        (["data.name=cifar1000"], ["unknown dataset 'cifar1000'", "cifar100"]),
        (["data.augment=flipp"], ["data.augment", "none"]),
        (["loss.params.label_smothing=0.1"], ["loss.params", "label_smothing", "label_smoothing"]),
        (["loss.name=kd"], ["needs a teacher"]),
        (
            ["loss.name=kd", "teacher.name=cnn_small", "teacher.checkpoint=/nonexistent/t.pt"],
            ["teacher.checkpoint not found", "/nonexistent/t.pt"],
        ),
        (["teacher.name=resnet9", "teacher.checkpoint=t.pt"], ["teacher.name", "resnet9"]),
    ],
)
def test_registry_errors(tmp_path: Path, overrides: list[str], fragments: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path / "c.yaml", MINIMAL), overrides)
    for frag in fragments:
        assert frag in str(info.value)


def test_teacher_cache_requires_no_augmentation(tmp_path: Path) -> None:
    ckpt = tmp_path / "t.pt"
    ckpt.write_bytes(b"")
    base = [
        "loss.name=kd",
        "teacher.name=cnn_small",
        f"teacher.checkpoint={ckpt}",
        "runtime.teacher_cache=true",
    ]
    with pytest.raises(ConfigError, match="augment='none'"):
        load_config(write(tmp_path / "c.yaml", MINIMAL), [*base, "data.augment=cifar"])
    cfg = load_config(write(tmp_path / "c.yaml", MINIMAL), [*base, "data.augment=none"])
    assert cfg.runtime.teacher_cache


def test_save_config_round_trip(tmp_path: Path) -> None:
    cfg = load_config(
        write(tmp_path / "r.yaml", MINIMAL),
        ["solver.lr=0.01", "loss.params.label_smoothing=0.1", "runtime.amp=bf16"],
    )
    save_config(cfg, tmp_path / "out.yaml")
    again = load_config(tmp_path / "out.yaml")
    assert again == cfg
    assert yaml.safe_load((tmp_path / "out.yaml").read_text()) == config_to_dict(cfg)
    assert set(config_to_dict(cfg)) == {f.name for f in dataclasses.fields(Config)}


def test_apply_overrides_does_not_mutate_input() -> None:
    raw = {"solver": {"lr": 0.1}}
    out = apply_overrides(raw, ["solver.lr=0.2", "loss.params.a.b=1"])
    assert raw == {"solver": {"lr": 0.1}}
    assert out["solver"]["lr"] == 0.2 and out["loss"]["params"] == {"a": {"b": 1}}


def test_validate_without_registries_skips_names() -> None:
    cfg = config_from_dict({"data": {"name": "whatever"}, "model": {"name": "anything"}}, name="x")
    validate_config(cfg, registries=False)
    with pytest.raises(ConfigError, match="unknown dataset"):
        validate_config(cfg)


@pytest.mark.parametrize(
    "value, fragment",
    [
        ("{num_ops: 2, magnitude: 31}", "magnitude must lie in [0, 30]"),
        ("{num_ops: -1}", "num_ops must be >= 0"),
        ("{num_ops: 1.5}", "num_ops must be an integer"),
        ("{n: 2}", "unknown key 'n'"),
        ("3", "data.strong_augment"),
    ],
)
def test_strong_augment_values_refused(tmp_path: Path, value: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path / "c.yaml", MINIMAL), [f"data.strong_augment={value}"])
    assert fragment in str(info.value) and "strong_augment" in str(info.value)


def test_strong_augment_and_two_view_losses_go_together(tmp_path: Path) -> None:
    ckpt = tmp_path / "t.pt"
    ckpt.write_bytes(b"")
    teacher = ["teacher.name=cnn_small", f"teacher.checkpoint={ckpt}"]
    path = write(tmp_path / "c.yaml", MINIMAL)
    with pytest.raises(ConfigError, match="takes two views"):
        load_config(path, [*teacher, "loss.name=lud-released", "loss.params.two_views=true"])
    with pytest.raises(ConfigError, match="takes one view"):
        load_config(path, [*teacher, "loss.name=kd", "data.strong_augment={num_ops: 2}"])
    cfg = load_config(path, [*teacher, "loss.name=mlkd", "loss.params.two_views=true",
                             "data.strong_augment={num_ops: 2, magnitude: 10}"])
    assert cfg.data.strong_augment == {"num_ops": 2, "magnitude": 10}
    with pytest.raises(ConfigError, match="strong view is random"):
        load_config(path, [*teacher, "loss.name=mlkd", "loss.params.two_views=true",
                           "data.strong_augment={num_ops: 2}", "data.augment=none",
                           "runtime.teacher_cache=true"])
