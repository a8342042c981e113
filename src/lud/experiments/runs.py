"""Benchmark folders as data: the manifest (``bench.json``) and the state of each run folder.

The lowest module of :mod:`lud.experiments` that knows about benchmarks: :mod:`.bench` (which
plans and runs them), :mod:`.results`, :mod:`.report` and :mod:`.tune` (which read them) all
import from here, and this module imports none of them, so the dependency runs one way.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..config import Config, config_from_dict
from .scheduler import FAILED_FILE

__all__ = ["BENCH_FILE", "FAILED_FILE", "STUDENT", "base_config_of", "load_manifest", "run_status"]

#: Label (and folder) of the student trained alone, with cross-entropy.
STUDENT = "student"
BENCH_FILE = "bench.json"
_FORMAT = "lud-bench/1"


def _read_json(path: Path) -> dict[str, Any]:
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path} is not readable JSON ({exc})") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{path} must hold a JSON object, got {type(raw).__name__}")
    return raw


def run_status(run_dir: str | os.PathLike[str]) -> tuple[str, int]:
    """``(status, epochs done)`` of a run folder: ``done``, ``resume``, ``new`` or ``failed``.

    Raises:
        ValueError: the folder holds files a run cannot continue from (unreadable summary or
            checkpoint, checkpoints without ``last.pt``); the message says which and what to do.
    """
    from ..engine import load_checkpoint

    run = Path(run_dir)
    redo = f"delete the run folder {run} to train this run again"
    if (run / FAILED_FILE).is_file():
        return "failed", 0
    summary = run / "summary.json"
    if summary.is_file():
        try:
            s = _read_json(summary)
        except ValueError as exc:
            raise ValueError(f"{exc}; {redo}") from None
        if not isinstance(s.get("completed"), bool):
            raise ValueError(f"{summary} is not a lud run summary (no 'completed' field); {redo}")
        if s["completed"]:
            return "done", int(s.get("epochs_completed", 0))
    last = run / "last.pt"
    if last.is_file():
        try:
            epoch = int(load_checkpoint(last)["epoch"])
        except Exception as exc:  # noqa: BLE001 - torch raises many types for a corrupt file
            raise ValueError(
                f"cannot resume {run}: {last} is not a readable lud checkpoint ({exc}); {redo}"
            ) from None
        return "resume", epoch
    if run.is_dir() and any(run.glob("*.pt")):
        raise ValueError(f"{run} holds checkpoints but no last.pt to resume from; {redo}")
    return "new", 0


def _read_manifest(bench_dir: Path) -> dict[str, Any] | None:
    path = bench_dir / BENCH_FILE
    if not path.is_file():
        return None
    raw = _read_json(path)
    if raw.get("format") != _FORMAT:
        raise ValueError(f"{path} is not a lud benchmark manifest (format {raw.get('format')!r})")
    return raw


def load_manifest(bench_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``bench.json`` of a benchmark folder (``ValueError`` if there is none)."""
    m = _read_manifest(Path(bench_dir))
    if m is None:
        raise ValueError(f"{bench_dir} is not a benchmark folder (no {BENCH_FILE})")
    return m


def base_config_of(manifest: Mapping[str, Any]) -> Config:
    """The benchmark's base config (recipe and teacher) from its manifest."""
    return config_from_dict(copy.deepcopy(dict(manifest["base_config"])))
