"""Name → loss registry: ``build_loss("kd", temperature=4.0)``; the one list of methods.

Every loss is registered once, with its metadata, by :func:`register_loss` (a class) or
:func:`register_preset` (a registered class with other defaults). Every other list of methods in
the project — configs, the bench's default methods, the CLI, the README table, test parameter
lists — is derived from :func:`loss_entries`, never written by hand.

A user's own loss is named by import path, ``"my_pkg.my_mod:MyLoss"``: :func:`build_loss` and
:func:`loss_class` import it (it must be a :class:`~lud.losses.base.DistillationLoss` subclass).
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from .base import DistillationLoss
from .params import suggest  # re-exported: lud.losses.registry.suggest is public

__all__ = [
    "FAMILIES",
    "INPUTS",
    "LossEntry",
    "available_losses",
    "build_loss",
    "loss_class",
    "loss_entries",
    "loss_entry",
    "register_loss",
    "register_preset",
    "suggest",
]

#: what a loss is for: ``teacher`` (no distillation: training a teacher or the student alone),
#: ``baseline`` (a published logit-distillation method), ``lud`` (LUD and its presets for image
#: classification), ``token`` (made for next-token distillation: the token divergences and
#: ``lud-lm``; no image configs are generated for them)
FAMILIES = ("teacher", "baseline", "lud", "token")
#: inputs a loss can take besides dense ``(N, C)`` logits: ``tokens`` (``(B, T, V)`` with an ignore
#: index), ``two_views`` (a strong view), ``topk`` (a sparse top-k teacher)
INPUTS = ("dense", "tokens", "two_views", "topk")


@dataclass(frozen=True)
class LossEntry:
    """One registered loss.

    Attributes:
        name: the registry name (``build_loss(name)``).
        cls: the loss class that is built.
        defaults: constructor arguments a preset sets (empty for a plain class registration);
            explicit arguments of :func:`build_loss` override them.
        family: one of :data:`FAMILIES`.
        bench: run by default by the benchmarks (``lud bench`` without ``--methods``).
        inputs: the inputs it accepts, a subset of :data:`INPUTS`.
        summary: one line for tables and ``lud list losses``.
    """

    name: str
    cls: type[DistillationLoss]
    defaults: dict[str, Any] = field(default_factory=dict)
    family: str = "baseline"
    bench: bool = False
    inputs: tuple[str, ...] = ("dense", "tokens")
    summary: str = ""

    def build(self, **params: Any) -> DistillationLoss:
        """An instance with the preset's defaults overridden by ``params`` (names checked)."""
        check_params(self.name, self.cls, params)
        return self.cls(**{**self.defaults, **params})


_LOSSES: dict[str, LossEntry] = {}
L = TypeVar("L", bound=type[DistillationLoss])


def _check_meta(name: str, family: str, inputs: tuple[str, ...], bench: bool = False) -> None:
    if not isinstance(name, str) or not name.strip() or ":" in name or name != name.strip():
        raise ValueError(
            f"loss name must be a non-empty string without ':' or surrounding spaces (':' marks "
            f"an import path), got {name!r}"
        )
    if not isinstance(bench, bool):
        raise ValueError(f"loss '{name}': bench must be a bool, got {bench!r}")
    if isinstance(inputs, str) or not inputs:
        raise ValueError(f"loss '{name}': inputs must be a non-empty tuple of {INPUTS}, got {inputs!r}")
    if family not in FAMILIES:
        raise ValueError(f"loss '{name}': family must be one of {FAMILIES}, got {family!r}")
    bad = [i for i in inputs if i not in INPUTS]
    if bad:
        raise ValueError(f"loss '{name}': unknown inputs {bad}; valid: {INPUTS}")


def _check_class(name: str, cls: object) -> None:
    if not (inspect.isclass(cls) and issubclass(cls, DistillationLoss)):
        raise ValueError(f"loss '{name}': {cls!r} is not a subclass of lud.losses.DistillationLoss")


def _add(entry: LossEntry) -> None:
    old = _LOSSES.get(entry.name)
    if old is not None and (old.cls is not entry.cls or old.defaults != entry.defaults):
        raise ValueError(f"loss name '{entry.name}' is already registered to {old.cls.__name__}")
    _LOSSES[entry.name] = entry


def register_loss(
    name: str,
    *,
    family: str = "baseline",
    bench: bool = False,
    inputs: tuple[str, ...] = ("dense", "tokens"),
    summary: str = "",
) -> Callable[[L], L]:
    """Class decorator that makes a loss buildable by name, with its metadata (:class:`LossEntry`).

    The class gets ``registry_name = name`` and ``registry_inputs = inputs`` (which the base class
    reads without importing the registry).
    """
    _check_meta(name, family, inputs, bench)

    def wrap(cls: L) -> L:
        _check_class(name, cls)
        _add(LossEntry(name, cls, {}, family, bench, tuple(inputs), summary or _first_line(cls)))
        cls.registry_name = name  # type: ignore[attr-defined]
        cls.registry_inputs = tuple(inputs)  # type: ignore[attr-defined]  (read by the base class)
        return cls

    return wrap


def register_preset(
    name: str,
    cls: type[DistillationLoss],
    defaults: dict[str, Any],
    *,
    family: str = "baseline",
    bench: bool = False,
    inputs: tuple[str, ...] = ("dense", "tokens"),
    summary: str = "",
) -> LossEntry:
    """Register ``name`` as ``cls`` built with other ``defaults`` (explicit arguments win).

    The defaults' names are checked against ``cls``'s constructor now, not at the first build.
    """
    _check_meta(name, family, inputs, bench)
    _check_class(name, cls)
    check_params(name, cls, defaults)
    entry = LossEntry(name, cls, dict(defaults), family, bench, tuple(inputs), summary or _first_line(cls))
    _add(entry)
    return entry


def _first_line(cls: type) -> str:
    doc = inspect.getdoc(cls) or ""
    return doc.split("\n\n")[0].replace("\n", " ").strip()


def check_params(name: str, cls: type, params: dict[str, Any]) -> None:
    """``ValueError`` naming the first key of ``params`` that ``cls``'s constructor does not take."""
    sig = inspect.signature(cls.__init__)
    accepted = [p for p in sig.parameters if p != "self"]
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values()):
        return
    for key in params:
        if key not in accepted:
            raise ValueError(f"unknown parameter '{key}' for loss '{name}'.{suggest(key, accepted)}")


def available_losses() -> list[str]:
    """Sorted names accepted by :func:`build_loss`."""
    return sorted(_LOSSES)


def loss_entries(
    *, family: str | None = None, bench: bool | None = None, inputs: str | None = None
) -> list[LossEntry]:
    """Registered losses sorted by name, optionally filtered by family, bench flag or an input."""
    return [
        e
        for _, e in sorted(_LOSSES.items())
        if (family is None or e.family == family)
        and (bench is None or e.bench == bench)
        and (inputs is None or inputs in e.inputs)
    ]


def _import_path(path: str) -> LossEntry:
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise ValueError(f"loss import path {path!r} must look like 'package.module:ClassName'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"loss import path {path!r}: cannot import module {module_name!r} ({exc})") from None
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"loss import path {path!r}: module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not (inspect.isclass(obj) and issubclass(obj, DistillationLoss)):
        raise ValueError(
            f"loss import path {path!r} names {obj!r}, which is not a subclass of "
            "lud.losses.DistillationLoss"
        )
    return LossEntry(path, obj, {}, "baseline", False, ("dense", "tokens"), _first_line(obj))


def loss_entry(name: str) -> LossEntry:
    """The :class:`LossEntry` of a registered name or an import path ``module:Class``.

    ``ValueError`` listing the valid names otherwise.
    """
    if name in _LOSSES:
        return _LOSSES[name]
    if ":" in name:
        return _import_path(name)
    raise ValueError(f"unknown loss '{name}'.{suggest(name, list(_LOSSES))}")


def loss_class(name: str) -> type[DistillationLoss]:
    """The class built for ``name`` (a registered name or an import path)."""
    return loss_entry(name).cls


def build_loss(name: str, **params: Any) -> DistillationLoss:
    """Instantiate the loss registered under ``name`` (or at import path ``module:Class``).

    Unknown parameter names raise ``ValueError`` listing the accepted ones.
    """
    return loss_entry(name).build(**params)
