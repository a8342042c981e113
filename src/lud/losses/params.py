"""Checks for loss constructor arguments: every bad value is a ``ValueError`` naming the argument."""

from __future__ import annotations

import difflib
import math

__all__ = [
    "check_bool",
    "check_choice",
    "check_number",
    "non_negative_param",
    "positive_param",
    "suggest",
]


def suggest(name: str, valid: list[str] | tuple[str, ...]) -> str:
    """A ' Did you mean ...?' hint plus the full list of valid names."""
    close = difflib.get_close_matches(name, list(valid), n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return f"{hint} Valid: {', '.join(sorted(valid))}."


def positive_param(name: str, value: float) -> float:
    """``value`` as a float; ``ValueError`` naming ``name`` unless it is finite and > 0."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(v) or v <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return v


def non_negative_param(name: str, value: float) -> float:
    """``value`` as a float; ``ValueError`` naming ``name`` unless it is finite and >= 0."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(v) or v < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return v


def check_number(name: str, value: object, *, low: float, high: float = math.inf,
                 low_open: bool = False, high_open: bool = False) -> float:
    """``value`` as a float; ``ValueError`` unless it is a finite number in the given interval."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    v = float(value)
    bad_low = v <= low if low_open else v < low
    bad_high = v >= high if high_open else v > high
    if bad_low or bad_high:
        lb, hb = "(" if low_open else "[", ")" if high_open else "]"
        raise ValueError(f"{name} must lie in {lb}{low}, {high}{hb}, got {value!r}")
    return v


def check_choice(name: str, value: object, valid: tuple[str, ...]) -> None:
    """``ValueError`` listing the valid names unless ``value`` is one of them."""
    if not isinstance(value, str) or value not in valid:
        raise ValueError(f"{name} must be one of {valid}, got {value!r}.{suggest(str(value), valid)}")


def check_bool(name: str, value: object) -> bool:
    """``value`` if it is a bool. No truthiness: ``bool("false")`` would be True."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be a bool, got {value!r}")  # noqa: TRY004 - project rule
    return value
