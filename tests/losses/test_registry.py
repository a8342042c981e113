"""The loss registry: metadata validation, duplicate names, presets, losses named by import path."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import torch

from lud.losses import DistillationLoss, build_loss, loss_class, loss_entries, loss_entry, registry
from lud.losses.kd import KDLoss


@pytest.fixture
def clean_registry(monkeypatch: pytest.MonkeyPatch) -> dict:
    """A copy of the registry that the test may add to; the real one is restored after it, and so
    are the class attributes registration sets (``registry_name``, ``registry_inputs``)."""
    losses = dict(registry._LOSSES)
    monkeypatch.setattr(registry, "_LOSSES", losses)
    for cls in {e.cls for e in losses.values()}:
        for attr in ("registry_name", "registry_inputs"):
            if attr in cls.__dict__:
                monkeypatch.setattr(cls, attr, cls.__dict__[attr])
    return losses


def test_entries_filter_by_metadata() -> None:
    names = [e.name for e in loss_entries()]
    assert names == sorted(names) == registry.available_losses()
    assert {e.name for e in loss_entries(family="teacher")} == {"ce"}
    assert all(e.bench for e in loss_entries(bench=True))
    two = {e.name for e in loss_entries(inputs="two_views")}
    assert two and all(loss_entry(n).cls(two_views=True).two_views for n in two)
    for e in loss_entries():
        assert e.family in registry.FAMILIES and set(e.inputs) <= set(registry.INPUTS)
        assert e.summary, f"loss '{e.name}' has no summary line"


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"family": "baselines"}, "family must be one of"),
        ({"inputs": ("dense", "images")}, "unknown inputs ['images']"),
        ({"inputs": "dense"}, "inputs must be a non-empty tuple"),
        ({"bench": "yes"}, "bench must be a bool"),
    ],
)
def test_bad_metadata_is_refused(clean_registry: dict, kwargs: dict, fragment: str) -> None:
    with pytest.raises(ValueError, match="loss 'mine'") as err:
        registry.register_loss("mine", **kwargs)
    assert fragment in str(err.value)
    assert "mine" not in clean_registry


@pytest.mark.parametrize("name", ["", " kd", "pkg.mod:Loss"])
def test_bad_names_are_refused(clean_registry: dict, name: str) -> None:
    with pytest.raises(ValueError, match="loss name must be a non-empty string without ':'"):
        registry.register_loss(name)


def test_only_distillation_losses_register(clean_registry: dict) -> None:
    with pytest.raises(ValueError, match="not a subclass of lud.losses.DistillationLoss"):
        registry.register_loss("module")(torch.nn.Identity)
    with pytest.raises(ValueError, match="not a subclass"):
        registry.register_preset("module2", torch.nn.Identity, {})  # type: ignore[arg-type]


def test_duplicate_names(clean_registry: dict) -> None:
    class Other(KDLoss):
        """Another KD."""

    with pytest.raises(ValueError, match="loss name 'kd' is already registered to KDLoss"):
        registry.register_loss("kd")(Other)
    with pytest.raises(ValueError, match="already registered"):
        registry.register_preset("kd", KDLoss, {"temperature": 2.0})
    # registering the same class again (a re-imported module) is harmless
    registry.register_loss("kd", bench=True)(KDLoss)
    assert loss_class("kd") is KDLoss


def test_registration_does_not_leak_out_of_the_clean_registry() -> None:
    # the test above re-registered KDLoss with other inputs; the fixture must have restored them
    assert "topk" in KDLoss.registry_inputs and KDLoss.registry_name == "kd"


def test_presets(clean_registry: dict) -> None:
    entry = registry.register_preset("kd-t2", KDLoss, {"temperature": 2.0}, summary="KD at T = 2")
    assert [e.name for e in loss_entries()].count("kd-t2") == 1
    assert build_loss("kd-t2").temperature == 2.0
    assert build_loss("kd-t2", temperature=3.0).temperature == 3.0  # explicit arguments win
    assert entry.build().resolved_params() == {**build_loss("kd").resolved_params(), "temperature": 2.0}
    with pytest.raises(ValueError, match="unknown parameter 'temprature' for loss 'kd-t3'"):
        registry.register_preset("kd-t3", KDLoss, {"temprature": 2.0})
    with pytest.raises(ValueError, match="Did you mean 'temperature'"):
        build_loss("kd-t2", temprature=1.0)


def _module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, text: str) -> None:
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(text))
    monkeypatch.syspath_prepend(str(tmp_path))


def test_a_loss_by_import_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _module(tmp_path, monkeypatch, "my_reg_losses", """
        from lud.losses import DistillationLoss


        class MSELoss(DistillationLoss):
            \"\"\"Mean squared logit difference.\"\"\"

            requires_targets = False

            def __init__(self, weight: float = 1.0, validate: bool = True) -> None:
                super().__init__(validate=validate)
                self.weight = float(weight)

            def compute(self, s, t, y, epoch):
                return self.output({"mse": self.weight * (s - t).pow(2).mean()})


        class Outer:
            Inner = MSELoss

        NOT_A_CLASS = 3
        """)
    loss = build_loss("my_reg_losses:MSELoss", weight=2.0)
    s, t = torch.randn(4, 5), torch.randn(4, 5)
    assert torch.allclose(loss(s, t).total, 2.0 * (s - t).pow(2).mean())
    assert loss.resolved_params() == {"weight": 2.0, "validate": True}
    assert loss_class("my_reg_losses:Outer.Inner").__name__ == "MSELoss"
    assert loss_entry("my_reg_losses:MSELoss").summary == "Mean squared logit difference."
    with pytest.raises(ValueError, match="unknown parameter 'wieght'"):
        build_loss("my_reg_losses:MSELoss", wieght=2.0)
    with pytest.raises(ValueError, match="cannot import module 'no_such_mod_xyz'"):
        build_loss("no_such_mod_xyz:Loss")
    with pytest.raises(ValueError, match="module 'my_reg_losses' has no attribute 'Missing'"):
        build_loss("my_reg_losses:Missing")
    with pytest.raises(ValueError, match="names 3, which is not a subclass of"):
        build_loss("my_reg_losses:NOT_A_CLASS")
    with pytest.raises(ValueError, match="which is not a subclass of"):
        build_loss("torch.nn:Linear")
    for bad in ("my_reg_losses:", ":MSELoss"):
        with pytest.raises(ValueError, match="must look like 'package.module:ClassName'"):
            build_loss(bad)
    with pytest.raises(ValueError, match="unknown loss 'kdd'. Did you mean 'kd'"):
        build_loss("kdd")


def test_import_path_of_a_registered_class_builds_the_same_loss() -> None:
    a, b = build_loss("lud.losses.kd:KDLoss"), build_loss("kd")
    assert type(a) is type(b) and a.resolved_params() == b.resolved_params()
    assert isinstance(a, DistillationLoss)
