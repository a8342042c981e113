"""Load saved weights into a model, whatever common layout the checkpoint uses.

Accepted layouts (the first that applies wins):

* a raw ``state_dict`` (name → tensor);
* a dict with a ``"model"`` entry (mdistiller / RepDistiller: ``{"model": sd, "best_acc": ..}``),
  or ``"state_dict"``, ``"student"``, ``"model_state_dict"``; the entry may also be a module.

Key prefixes added by wrappers are removed: ``module.`` (DataParallel / DDP) and ``_orig_mod.``
(``torch.compile``), in any order and nesting. A mismatch raises a ``ValueError`` that lists the
missing and unexpected keys and the shapes that differ, instead of torch's wall of text.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["extract_state_dict", "load_checkpoint_weights", "strip_wrapper_prefixes"]

_CONTAINER_KEYS = ("model", "state_dict", "student", "model_state_dict")
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")
_MAX_LISTED = 8  # keys listed per category in an error message


def strip_wrapper_prefixes(key: str) -> str:
    """``"_orig_mod.module.fc.weight"`` → ``"fc.weight"``."""
    changed = True
    while changed:
        changed = False
        for prefix in _WRAPPER_PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix) :]
                changed = True
    return key


def _unwrap(model: nn.Module) -> nn.Module:
    """The module under DataParallel/DDP and torch.compile wrappers (their keys carry prefixes)."""
    while True:
        inner = getattr(model, "_orig_mod", None)
        if isinstance(inner, nn.Module):
            model = inner
            continue
        if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            model = model.module
            continue
        return model


def extract_state_dict(obj: Any) -> dict[str, Tensor]:
    """The tensor state dict inside a loaded checkpoint object, with wrapper prefixes removed."""
    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
    if not isinstance(obj, Mapping):
        # ValueError (not TypeError): the caller passed a valid path, the file's content is wrong.
        raise ValueError(  # noqa: TRY004
            f"checkpoint holds a {type(obj).__name__}, not a state dict or a dict of them"
        )
    for key in _CONTAINER_KEYS:
        if isinstance(obj.get(key), (Mapping, nn.Module)):
            return extract_state_dict(obj[key])
    if not obj:
        raise ValueError("checkpoint state dict is empty")
    if not any(isinstance(v, Tensor) for v in obj.values()):
        raise ValueError(
            "checkpoint is a dict but neither a state dict (name → tensor) nor a container with one "
            f"of the keys {list(_CONTAINER_KEYS)}; its keys are {sorted(map(str, obj))[:_MAX_LISTED]}"
        )
    out: dict[str, Tensor] = {}
    for key, value in obj.items():
        clean = strip_wrapper_prefixes(str(key))
        if clean in out:
            raise ValueError(
                f"checkpoint has key '{clean}' twice once wrapper prefixes are removed"
            )
        out[clean] = value
    return out


def _listing(keys: list[str]) -> str:
    shown = ", ".join(keys[:_MAX_LISTED])
    more = f", … ({len(keys) - _MAX_LISTED} more)" if len(keys) > _MAX_LISTED else ""
    return f"{shown}{more}"


def _mismatch_message(
    missing: list[str], unexpected: list[str], shapes: list[tuple[str, tuple, tuple]]
) -> str:
    parts = []
    if shapes:
        lines = [
            f"{k}: checkpoint {list(c)} vs model {list(m)}" for k, c, m in shapes[:_MAX_LISTED]
        ]
        parts.append(f"{len(shapes)} shape mismatch(es): " + "; ".join(lines))
        # The usual cause: a classifier trained for another number of classes.
        heads = [
            (c, m) for _, c, m in shapes if len(c) in (1, 2) and c[1:] == m[1:] and c[0] != m[0]
        ]
        if heads and len(heads) == len(shapes):
            parts.append(
                f"(looks like a different class count: checkpoint {heads[0][0][0]} vs model {heads[0][1][0]})"
            )
    if missing:
        parts.append(
            f"{len(missing)} missing key(s) (in the model, not the checkpoint): {_listing(missing)}"
        )
    if unexpected:
        parts.append(
            f"{len(unexpected)} unexpected key(s) (in the checkpoint, not the model): {_listing(unexpected)}"
        )
    return "; ".join(parts)


def _short_reason(exc: BaseException) -> str:
    """The informative line of torch's (long) weights-only unpickling message."""
    text = str(exc)
    marker = "WeightsUnpickler error:"
    if marker in text:
        text = text.split(marker, 1)[1]
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def _load_file(path: Path, weights_only: bool) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=weights_only)
    except pickle.UnpicklingError as exc:
        hint = (
            "; if it is a trusted file that pickles Python objects, pass weights_only=False"
            if weights_only
            else ""
        )
        raise ValueError(
            f"cannot read checkpoint {path} with torch.load(weights_only={weights_only}): "
            f"{_short_reason(exc)}{hint}"
        ) from exc
    except (RuntimeError, EOFError) as exc:  # truncated, empty, or not a torch file
        raise ValueError(f"cannot read checkpoint {path}: {_short_reason(exc)}") from exc


def load_checkpoint_weights(
    model: nn.Module,
    path: str | os.PathLike[str] | Mapping[str, Any],
    strict: bool = True,
    *,
    weights_only: bool = True,
) -> None:
    """Copy the weights saved at ``path`` into ``model`` (in place).

    Args:
        model: the target; DataParallel/DDP/``torch.compile`` wrappers are looked through.
        path: a file written by ``torch.save`` (any layout in the module docstring), or an
            already-loaded checkpoint object.
        strict: when true, the checkpoint must cover exactly the model's parameters and buffers
            (a missing ``num_batches_tracked`` counter is tolerated). When false, missing and
            unexpected keys are ignored; shape mismatches are always an error.
        weights_only: passed to :func:`torch.load`; set false only for trusted files that pickle
            Python objects.

    Raises:
        FileNotFoundError: ``path`` does not exist (the message names it).
        ValueError: unreadable file, no state dict inside, or keys/shapes that do not match.
    """
    if isinstance(path, (Mapping, nn.Module)):
        source, obj = "checkpoint object", path
    else:
        source = str(path)
        obj = _load_file(Path(path), weights_only)
    state = extract_state_dict(obj)

    target = _unwrap(model)
    own = target.state_dict()
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    shapes = [
        (k, tuple(state[k].shape), tuple(own[k].shape))
        for k in own
        if k in state and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if shapes or (strict and (missing or unexpected)):
        raise ValueError(
            f"weights in {source} do not fit {type(target).__name__}: "
            + _mismatch_message(missing, unexpected, shapes)
        )
    # Checked above; strict=False here only lets an absent num_batches_tracked keep its value.
    usable = {k: v for k, v in state.items() if k in own}
    target.load_state_dict(usable, strict=False)
