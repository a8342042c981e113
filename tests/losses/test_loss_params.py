"""Every loss reports its resolved parameters; the defaults are pinned; the version is one."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

import lud
from lud.losses import DistillationLoss, build_loss, loss_entries, loss_entry

ROOT = next(p for p in Path(__file__).resolve().parents if (p / "pyproject.toml").is_file())
FIXTURE = ROOT / "tests" / "fixtures" / "loss_defaults.json"
NAMES = [e.name for e in loss_entries()]


@pytest.mark.parametrize("name", NAMES)
def test_resolved_params_cover_the_constructor_and_rebuild_the_loss(name: str) -> None:
    entry = loss_entry(name)
    loss = entry.build()
    params = loss.resolved_params()
    assert list(params) == entry.cls.constructor_params()
    assert "self" not in params
    json.dumps(params)  # plain data
    # building the class from the record gives the same loss (what resume and eval rely on)
    again = entry.cls(**params)
    assert again.resolved_params() == params
    assert build_loss(name, **params).resolved_params() == params


def test_resolved_params_follow_presets_and_explicit_values() -> None:
    lud_default, paper = build_loss("lud").resolved_params(), build_loss("lud-paper").resolved_params()
    assert paper == build_loss("lud", preset="paper").resolved_params()
    assert (lud_default["inter_weight"], paper["inter_weight"]) == (3.2, 0.0)
    assert build_loss("lud-paper", inter_weight=1.5).resolved_params()["inter_weight"] == 1.5
    assert build_loss("kd", temperature=2).resolved_params()["temperature"] == 2.0
    assert build_loss("mlkd", temperatures=(3, 4)).resolved_params()["temperatures"] == [3.0, 4.0]
    # an effective value, not the one given: one view has no strong-view CE
    assert build_loss("mlkd", ce_on_both_views=True).resolved_params()["ce_on_both_views"] is False
    assert build_loss("ctkd", theta_init=2).resolved_params()["theta_init"] == 2.0


def test_a_loss_that_does_not_store_an_argument_fails_clearly() -> None:
    class Forgetful(DistillationLoss):
        def __init__(self, scale: float = 1.0, validate: bool = True) -> None:
            super().__init__(validate=validate)
            self._scale = scale

    with pytest.raises(TypeError, match="Forgetful does not store its constructor argument 'scale'"):
        Forgetful().resolved_params()

    class Opaque(DistillationLoss):
        def __init__(self, fn: object = print) -> None:
            super().__init__()
            self.fn = fn

    with pytest.raises(TypeError, match=r"Opaque.fn is a builtin_function_or_method, not plain data"):
        Opaque().resolved_params()


def test_forwarding_constructors_list_their_parents_arguments() -> None:
    from lud.losses.kd import KDLoss

    class Scaled(KDLoss):
        def __init__(self, factor: float = 2.0, **params: object) -> None:
            super().__init__(**params)  # type: ignore[arg-type]
            self.factor = factor

    loss = Scaled(temperature=3.0)
    assert Scaled.constructor_params() == ["factor", *KDLoss.constructor_params()]
    assert loss.resolved_params() == {"factor": 2.0, **KDLoss(temperature=3.0).resolved_params()}


def test_defaults_are_pinned() -> None:
    """A default cannot change silently: the fixture holds every registered loss's defaults."""
    pinned = json.loads(FIXTURE.read_text())
    now = {name: build_loss(name).resolved_params() for name in NAMES}
    changed = sorted(n for n in {*now, *pinned["losses"]} if now.get(n) != pinned["losses"].get(n))
    assert not changed, (
        f"the resolved defaults of {changed} differ from {FIXTURE.name}. Changing a default: bump "
        "the version and write the changelog (lud.__version__, CHANGELOG.md), then run "
        "`python scripts/pin_loss_defaults.py`. A new loss: run that script."
    )
    assert pinned["lud_version"] == lud.__version__, (
        f"{FIXTURE.name} pins the defaults of lud {pinned['lud_version']}, the package is "
        f"{lud.__version__}: run `python scripts/pin_loss_defaults.py`"
    )


def test_one_version_and_its_changelog() -> None:
    text = (ROOT / "pyproject.toml").read_text()
    assert re.search(r'^dynamic = \["version"\]', text, re.M), "pyproject.toml must not set a version"
    assert 'version = { attr = "lud.__version__" }' in text
    assert not re.search(r"^version\s*=", text.split("[project.optional-dependencies]")[0], re.M)
    changelog = (ROOT / "CHANGELOG.md").read_text()
    assert re.search(rf"^## {re.escape(lud.__version__)}$", changelog, re.M), (
        f"CHANGELOG.md has no section '## {lud.__version__}'"
    )
