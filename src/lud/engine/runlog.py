"""Run records: ``metrics.jsonl`` (one JSON object per epoch), TensorBoard, console/file log."""

from __future__ import annotations

import json
import logging
import math
import os
import warnings
from pathlib import Path
from typing import Any

__all__ = ["MetricsLog", "attach_file_log", "logger", "read_metrics"]

logger = logging.getLogger("lud")


def _json_safe(value: Any) -> Any:
    """NaN/Inf are not JSON; write them as null so every line stays parseable."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    return value


def read_metrics(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """All rows of a ``metrics.jsonl`` file (empty list if missing).

    A last line that is not valid JSON is a row whose append was cut off (the process was killed
    or the disk filled up mid-write); it is dropped. A bad line elsewhere is an error.
    """
    p = Path(path)
    if not p.is_file():
        return []
    lines = [(i, line) for i, line in enumerate(p.read_text().splitlines(), 1) if line.strip()]
    rows = []
    for k, (number, line) in enumerate(lines):
        try:
            rows.append(json.loads(line))
        except ValueError as exc:
            if k == len(lines) - 1:
                break
            raise ValueError(f"{p}, line {number}: not a JSON row ({exc})") from None
    return rows


class MetricsLog:
    """Appends epoch rows to ``metrics.jsonl`` and mirrors numeric fields to TensorBoard.

    Args:
        run_dir: the run folder.
        tensorboard: write TensorBoard events under ``run_dir/tb`` if tensorboard is importable.
        resume_epoch: on resume, rows with ``epoch > resume_epoch`` (written after the last
            checkpoint by a run that then died) are dropped so the file matches the weights.
    """

    def __init__(
        self, run_dir: Path, *, tensorboard: bool, resume_epoch: int | None = None
    ) -> None:
        from .checkpoint import atomic_write_text

        self.path = Path(run_dir) / "metrics.jsonl"
        if resume_epoch is None:
            atomic_write_text("", self.path)
        else:
            # atomic: a kill during this rewrite must not cost the rows already logged
            rows = [r for r in read_metrics(self.path) if int(r.get("epoch", 0)) <= resume_epoch]
            atomic_write_text("".join(json.dumps(r) + "\n" for r in rows), self.path)
        self._tb = None
        self._tb_steps: Any = None
        self._run_dir, self._resumed = Path(run_dir), resume_epoch is not None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                warnings.warn(
                    "tensorboard is not installed: no TensorBoard events "
                    "(pip install tensorboard, or set runtime.tensorboard=false)",
                    stacklevel=2,
                )
            else:
                purge = None if resume_epoch is None else resume_epoch + 1
                self._tb = SummaryWriter(log_dir=str(Path(run_dir) / "tb"), purge_step=purge)

    def write(self, row: dict[str, Any]) -> None:
        """Append one row (must contain ``epoch``) and flush, so a crash loses nothing logged."""
        with self.path.open("a") as fh:
            fh.write(json.dumps(_json_safe(row)) + "\n")
            fh.flush()
        if self._tb is not None:
            step = int(row["epoch"])
            for key, value in row.items():
                if (
                    key != "epoch"
                    and isinstance(value, (int, float))
                    and not isinstance(value, bool)
                ):
                    self._tb.add_scalar(key, value, step)
            self._tb.flush()

    def write_steps(self, prefix: str, points: list[tuple[int, dict[str, float]]]) -> None:
        """Per-step values (``prefix/<name>`` at each global step) to TensorBoard only.

        They go to their own writer under ``tb/steps``: the epoch writer purges by epoch number
        on resume, this one by the first step written after a resume (dropping what a killed
        run logged past its last checkpoint).
        """
        if self._tb is None or not points:
            return
        if self._tb_steps is None:
            from torch.utils.tensorboard import SummaryWriter

            purge = points[0][0] if self._resumed else None
            self._tb_steps = SummaryWriter(log_dir=str(self._run_dir / "tb" / "steps"),
                                           purge_step=purge)
        for step, values in points:
            for name, value in values.items():
                self._tb_steps.add_scalar(f"{prefix}/{name}", value, step)
        self._tb_steps.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._tb_steps is not None:
            self._tb_steps.close()
            self._tb_steps = None


def attach_file_log(run_dir: Path) -> logging.Handler:
    """Also write the ``lud`` logger to ``run_dir/train.log``; returns the handler to remove."""
    handler = logging.FileHandler(Path(run_dir) / "train.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logger.addHandler(handler)
    if logger.level == logging.NOTSET or logger.level > logging.INFO:
        logger.setLevel(logging.INFO)
    return handler
