"""Name → model-builder registry: ``build_model("resnet8x4", num_classes=100)``.

Every builder is called as ``builder(num_classes, in_channels, **kwargs)`` and returns an
:class:`torch.nn.Module` whose forward returns logits of shape ``(batch, num_classes)`` only.

Names are looked up exactly first, then through an alias table (e.g. mdistiller's function names
``mobile_half`` or ``vgg13_bn``), then case-insensitively (``shufflev1`` → ``ShuffleV1``).
``"timm:<name>"`` builds any timm model when timm is installed.

Keyword arguments understood by :func:`build_model` itself, for every model:

* ``input_shape=(C, H, W)``: the shape of one input sample. The trainer passes it to every build;
  builders that do not need it ignore it, but ``C`` must agree with ``in_channels``.
* ``pretrained``: a path to a state dict or checkpoint loaded with
  :func:`lud.models.checkpoint.load_checkpoint_weights` (strict). Nothing is ever downloaded.
"""

from __future__ import annotations

import difflib
import inspect
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from torch import nn

from .checkpoint import load_checkpoint_weights

__all__ = [
    "FAMILIES",
    "available_models",
    "build_model",
    "model_aliases",
    "model_family",
    "register_model",
    "resolve_model_name",
]

FAMILIES = ("cifar", "small", "imagenet")
TIMM_PREFIX = "timm:"

Builder = Callable[..., nn.Module]
B = TypeVar("B", bound=Builder)


@dataclass(frozen=True)
class _Entry:
    builder: Builder
    family: str


_MODELS: dict[str, _Entry] = {}
_ALIASES: dict[str, str] = {}  # alias -> canonical name


def _suggest(name: str, valid: list[str]) -> str:
    """A ' Did you mean ...?' hint plus the full list of valid names (difflib, case-folded)."""
    folded = {v.lower(): v for v in valid}
    close = difflib.get_close_matches(name.lower(), list(folded), n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(repr(folded[c]) for c in close)}?" if close else ""
    return f"{hint} Valid: {', '.join(sorted(valid))}."


def _taken(name: str) -> str | None:
    """The canonical model a new name would collide with (case-insensitively), if any."""
    low = name.lower()
    for other in list(_MODELS) + list(_ALIASES):
        if other.lower() == low:
            return _ALIASES.get(other, other)
    return None


def register_model(name: str, *, family: str, aliases: tuple[str, ...] = ()) -> Callable[[B], B]:
    """Decorator that makes ``builder(num_classes, in_channels, **kwargs)`` buildable by name.

    Args:
        name: the canonical name (case as the reference code spells it, e.g. ``"ShuffleV1"``).
        family: ``"cifar"``, ``"small"`` or ``"imagenet"``; tells the trainer what data suits it.
        aliases: extra names that resolve to ``name``.
    """
    if family not in FAMILIES:
        raise ValueError(f"unknown model family '{family}'; valid: {', '.join(FAMILIES)}")
    if name.startswith(TIMM_PREFIX):
        raise ValueError(f"model names starting with '{TIMM_PREFIX}' are reserved for timm models")

    def wrap(builder: B) -> B:
        for new in (name, *aliases):
            owner = _taken(new)
            if owner is not None and not (owner == name and _MODELS[name].builder is builder):
                raise ValueError(f"model name '{new}' is already registered (to '{owner}')")
        _MODELS[name] = _Entry(builder, family)
        for alias in aliases:
            _ALIASES[alias] = name
        return builder

    return wrap


def available_models() -> list[str]:
    """Sorted canonical names accepted by :func:`build_model` (aliases and ``timm:*`` excluded)."""
    return sorted(_MODELS)


def model_aliases() -> dict[str, str]:
    """Alias → canonical name."""
    return dict(_ALIASES)


def resolve_model_name(name: str) -> str:
    """The canonical registered name for ``name``; ``ValueError`` with suggestions otherwise.

    ``timm:<name>`` is returned unchanged.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"model name must be a non-empty string, got {name!r}")
    if name.startswith(TIMM_PREFIX):
        if not name[len(TIMM_PREFIX) :]:
            raise ValueError(
                "'timm:' needs a timm model name after the colon, e.g. 'timm:resnet18'"
            )
        return name
    if name in _MODELS:
        return name
    if name in _ALIASES:
        return _ALIASES[name]
    owner = _taken(name)
    if owner is not None:
        return owner
    raise ValueError(f"unknown model '{name}'.{_suggest(name, list(_MODELS) + list(_ALIASES))}")


def model_family(name: str) -> str:
    """``"cifar"``, ``"small"`` or ``"imagenet"`` for a model name (``timm:*`` is ``"imagenet"``)."""
    canonical = resolve_model_name(name)
    if canonical.startswith(TIMM_PREFIX):
        return "imagenet"
    return _MODELS[canonical].family


def _check_input_shape(input_shape: Any, in_channels: int) -> tuple[int, int, int] | None:
    if input_shape is None:
        return None
    try:
        shape = tuple(int(s) for s in input_shape)
    except (TypeError, ValueError):
        raise ValueError(f"input_shape must be (C, H, W) integers, got {input_shape!r}") from None
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"input_shape must be (C, H, W) with positive sizes, got {input_shape!r}")
    if shape[0] != in_channels:
        raise ValueError(
            f"input_shape {shape} has {shape[0]} channels but in_channels={in_channels}"
        )
    return shape  # type: ignore[return-value]


def _call_builder(
    name: str, builder: Builder, num_classes: int, in_channels: int, kwargs: dict
) -> nn.Module:
    """Call ``builder`` after checking ``kwargs`` against its signature (clear error on typos)."""
    params = inspect.signature(builder).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        accepted = [p for p in params if p not in ("num_classes", "in_channels")]
        for key in kwargs:
            if key in accepted:
                continue
            if not accepted:
                raise ValueError(f"model '{name}' takes no options, got '{key}'")
            raise ValueError(
                f"unknown parameter '{key}' for model '{name}'.{_suggest(key, accepted)}"
            )
    return builder(num_classes, in_channels, **kwargs)


def _build_timm(name: str, num_classes: int, in_channels: int, kwargs: dict) -> nn.Module:
    try:
        import timm  # lazy: optional dependency
    except ImportError as exc:
        raise ImportError(
            f"model '{TIMM_PREFIX}{name}' needs the optional package timm: pip install 'lud[timm]' "
            f"(or pip install timm)"
        ) from exc
    # Weights come only from a local file through ``pretrained=<path>``; timm must never download.
    return timm.create_model(
        name, pretrained=False, num_classes=num_classes, in_chans=in_channels, **kwargs
    )


def build_model(name: str, num_classes: int, in_channels: int = 3, **kwargs: Any) -> nn.Module:
    """Build the model registered under ``name``.

    Args:
        name: a name from :func:`available_models`, an alias, or ``"timm:<timm model name>"``.
        num_classes: size of the logit vector.
        in_channels: channels of the input images (1 for Fashion-MNIST, 3 for CIFAR).
        **kwargs: model options; ``input_shape`` and ``pretrained`` are understood for every
            model (see the module docstring), others are passed to the builder and checked
            against its signature.

    Raises:
        ValueError: unknown name (with the nearest valid names), bad class/channel counts,
            unknown option, or a ``pretrained`` checkpoint that does not fit.
        ImportError: an optional dependency (torchvision, timm) is missing.
    """
    canonical = resolve_model_name(name)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    if isinstance(in_channels, bool) or not isinstance(in_channels, int) or in_channels < 1:
        raise ValueError(f"in_channels must be a positive int, got {in_channels!r}")
    input_shape = _check_input_shape(kwargs.pop("input_shape", None), in_channels)
    pretrained = kwargs.pop("pretrained", None)
    if pretrained is True:
        raise ValueError(
            "pretrained=True would need a download, which lud never does: pass pretrained=<path "
            "to a local state dict or checkpoint>"
        )

    if canonical.startswith(TIMM_PREFIX):
        model = _build_timm(canonical[len(TIMM_PREFIX) :], num_classes, in_channels, kwargs)
    else:
        builder = _MODELS[canonical].builder
        # Builders that need the sample shape (the MLP) declare ``input_shape``; others never see it.
        if "input_shape" in inspect.signature(builder).parameters:
            kwargs["input_shape"] = input_shape
        model = _call_builder(canonical, builder, num_classes, in_channels, kwargs)

    if pretrained not in (None, False, ""):
        if not isinstance(pretrained, (str, os.PathLike)):
            raise ValueError(f"pretrained must be a path to a local checkpoint, got {pretrained!r}")
        load_checkpoint_weights(model, pretrained, strict=True)
    return model
