"""What ``lud.losses`` exports: every registered loss class, by its class name."""

from __future__ import annotations

import importlib.util

import lud.losses
from lud.losses import loss_entries


def test_every_registered_loss_class_is_exported_from_lud_losses():
    classes = {e.cls for e in loss_entries()}
    for cls in classes:
        assert getattr(lud.losses, cls.__name__) is cls, cls.__name__
        assert cls.__name__ in lud.losses.__all__, cls.__name__
    exported = {getattr(lud.losses, n) for n in lud.losses.__all__}
    assert classes <= exported


def test_the_ranking_module_lives_in_the_loss_library_only():
    assert importlib.util.find_spec("lud.losses.ranking") is not None
    assert importlib.util.find_spec("lud.ranking") is None  # the old alias is gone
