"""A test hook: park the process at a chosen point so that a test can ``SIGKILL`` it there.

The fault-injection tests (``tests/engine/test_faults.py``) must kill a training process at exact,
reproducible places — in the middle of an epoch, while a checkpoint is being written, during
evaluation — which a timer cannot hit on a run whose epochs take milliseconds. Two environment
variables do it; unset (always, outside the tests) the hook is a dictionary lookup and returns::

    LUD_FAULT_PAUSE=POINT@N       stop at the N-th time (1-based) POINT is reached in this process
    LUD_FAULT_PAUSE_FILE=PATH     written (with "POINT@N") when the process stops there

Points: ``step`` (start of every training step), ``eval`` (every evaluation batch, teacher
evaluation and the teacher-logit cache included), ``write:<file name>`` (inside
:func:`lud.engine.checkpoint._atomic_write`, after the temporary file is written and before it is
renamed over ``<file name>``, e.g. ``write:last.pt``). The process then sleeps until killed
(or exits with status 3 after ten minutes).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

__all__ = ["ENV_FILE", "ENV_PAUSE", "fault_point"]

ENV_PAUSE = "LUD_FAULT_PAUSE"
ENV_FILE = "LUD_FAULT_PAUSE_FILE"
_counts: dict[str, int] = {}


def fault_point(point: str) -> None:
    """Count ``point``; stop here for good if ``LUD_FAULT_PAUSE`` names this occurrence."""
    spec = os.environ.get(ENV_PAUSE)
    if not spec:
        return
    target, _, nth = spec.rpartition("@")
    if target != point:
        return
    _counts[point] = _counts.get(point, 0) + 1
    if str(_counts[point]) != nth.strip():
        return
    marker = os.environ.get(ENV_FILE)
    if marker:
        Path(marker).write_text(spec)
    time.sleep(600)  # the test kills the process long before this
    os._exit(3)  # never continue past the point: a forgotten process must not finish its run
