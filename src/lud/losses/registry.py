"""Name → loss class registry: ``build_loss("kd", temperature=4.0)``."""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable
from typing import Any, TypeVar

from .base import DistillationLoss

__all__ = ["register_loss", "build_loss", "available_losses", "loss_class", "suggest"]

_LOSSES: dict[str, type[DistillationLoss]] = {}
L = TypeVar("L", bound=type[DistillationLoss])


def suggest(name: str, valid: list[str] | tuple[str, ...]) -> str:
    """A ' Did you mean ...?' hint plus the full list of valid names."""
    close = difflib.get_close_matches(name, list(valid), n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return f"{hint} Valid: {', '.join(sorted(valid))}."


def register_loss(name: str) -> Callable[[L], L]:
    """Class decorator that makes a loss buildable by name."""

    def wrap(cls: L) -> L:
        if name in _LOSSES and _LOSSES[name] is not cls:
            raise ValueError(
                f"loss name '{name}' is already registered to {_LOSSES[name].__name__}"
            )
        _LOSSES[name] = cls
        cls.registry_name = name  # type: ignore[attr-defined]
        return cls

    return wrap


def available_losses() -> list[str]:
    """Sorted names accepted by :func:`build_loss`."""
    return sorted(_LOSSES)


def loss_class(name: str) -> type[DistillationLoss]:
    """The class registered under ``name``; ``ValueError`` listing valid names otherwise."""
    if name not in _LOSSES:
        raise ValueError(f"unknown loss '{name}'.{suggest(name, list(_LOSSES))}")
    return _LOSSES[name]


def build_loss(name: str, **params: Any) -> DistillationLoss:
    """Instantiate the loss registered under ``name`` with keyword ``params``.

    Unknown parameter names raise ``ValueError`` listing the accepted ones.
    """
    cls = loss_class(name)
    sig = inspect.signature(cls.__init__)
    accepted = [p for p in sig.parameters if p != "self"]
    has_var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values())
    if not has_var_kw:
        for key in params:
            if key not in accepted:
                raise ValueError(
                    f"unknown parameter '{key}' for loss '{name}'.{suggest(key, accepted)}"
                )
    return cls(**params)
