"""The training loop: one function, :func:`train`, for teachers and students alike.

Training a teacher is distillation without a teacher (``loss.name: ce``). Decisions worth
knowing:

* The learning rate is set every iteration (linear warm-up, then step/cosine/constant; see
  :mod:`lud.engine.optim`). Its state is the step count, so resuming is exact.
* The loss receives ``epoch`` as a 0-based fractional epoch (``epoch + step / steps``), which is
  what ramp-ups (DKD's warm-up, CTKD's curriculum) need.
* The training loader drops its last incomplete batch (when the split holds at least one full
  batch): batch-statistic losses (DIST's intra-class term, LUD's median mask, B×B Gram matrices)
  misbehave on a batch of one or two, and BatchNorm cannot train on a batch of one.
* Augmentation randomness comes from a generator seeded from ``(seed, epoch, rank)`` and the
  shuffle order from ``seed + epoch``; global RNG states are saved at every epoch end. A run
  resumed from ``last.pt`` therefore reproduces an uninterrupted run bit for bit (on the same
  hardware and software). Resumption is at epoch granularity.
* Loss statistics are summed on the device; the host reads them every ``log_every`` steps and
  at the epoch end, which is also when a non-finite loss is detected (``runtime.nonfinite:
  stop``). With ``runtime.nonfinite: skip`` every step is checked (logits, loss, gradients) and
  a bad one is skipped — no update, buffers restored — and counted in ``train/skipped_steps``.
* Crash safety: every file is written atomically (:mod:`lud.engine.checkpoint`), checkpoints
  carry a SHA-256 that is checked when they are read, and an epoch ends with the metrics row,
  then ``last.pt``, then ``best.pt``. A process killed anywhere leaves a folder that
  ``resume=True`` continues from the last complete epoch (temporary files of interrupted
  writes are removed, metrics rows newer than ``last.pt`` dropped, a ``best.pt`` that missed
  the last epoch restored from ``last.pt``).
* Data parallel (``torchrun``; see ``docs/distributed.md``): ``data.batch_size`` is per process;
  the student is wrapped in DDP, a loss with parameters has its gradients averaged by hand, the
  teacher is not wrapped. Augmentation parameters are drawn for the whole global batch from a
  rank-independent generator and each rank keeps its rows, so N processes with batch b see the
  same images as one process with batch N·b. Training statistics and evaluation are reduced as
  sums and counts over ranks (evaluation is sharded, without the sampler's padding); only rank 0
  writes files; every rank reads ``last.pt`` on resume (the run folder must be shared).

The pieces: building a run (:mod:`lud.engine.build`), one training step
(:mod:`lud.engine.step`), the epoch loop (:mod:`lud.engine.loop`), the run folder and
checkpoint/resume (:mod:`lud.engine.runfolder`).
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from ..config import Config, validate_config
from . import distributed
from .build import Run, run_data
from .loop import run_epochs
from .runfolder import RunFolderError, run_dir_of
from .runlog import MetricsLog, attach_file_log, logger
from .step import TrainingDivergedError

__all__ = ["RunFolderError", "TrainingDivergedError", "run_data", "run_dir_of", "train"]


def train(cfg: Config, *, resume: bool = False, stop_after: int | None = None) -> dict[str, Any]:
    """Train ``cfg.model`` with ``cfg.loss``, distilling from ``cfg.teacher`` if the loss needs one.

    Args:
        cfg: the run configuration (validated here again, before any work).
        resume: continue ``output_dir/name/last.pt`` instead of refusing an existing run folder.
        stop_after: stop once this many epochs are complete (for pre-emptible jobs and tests);
            the run can be continued later with ``resume=True``.

    Returns:
        The summary written to ``summary.json``: best (by val top-1 if a val split exists, else
        test top-1) and last top-1/top-5, epochs, wall time.

    Raises:
        ConfigError / ValueError: bad configuration, data, or teacher (before training starts).
        RunFolderError: the run folder exists without ``resume``, has nothing to resume, or its
            ``last.pt`` is corrupt or incomplete (the message says how to recover).
        TrainingDivergedError: the loss became NaN/Inf (``last.pt`` keeps the last good epoch);
            with ``runtime.nonfinite='skip'``, only when every step of an epoch was skipped.
        OSError: the run folder cannot be written (full disk, read-only); the message names
            the file and the epoch that ``last.pt`` still holds.
    """
    validate_config(cfg)
    t_start = time.perf_counter()
    level = logger.level
    if int(os.environ.get("RANK", "0")) > 0:  # one voice: rank 0 logs, the others only warn
        logger.setLevel(logging.WARNING)
    try:
        run = Run(cfg, resume)
    except BaseException:
        logger.setLevel(level)
        raise
    ctx, run_dir = run.ctx, run.run_dir
    handler = mlog = None
    try:
        if ctx.is_main:
            handler = attach_file_log(run_dir)
            mlog = MetricsLog(
                run_dir,
                tensorboard=cfg.runtime.tensorboard,
                resume_epoch=run.start_epoch if resume else None,
            )
        summary = run_epochs(run, stop_after, t_start, mlog)
        # Every rank leaves once rank 0 has written the run. It also keeps a process from reaching
        # interpreter shutdown right after the epoch's all-gather: a gloo worker thread still
        # releasing that gather's tensors then needs the GIL and aborts the process
        # (``terminate called without an active exception``, pytorch/pytorch#179291).
        distributed.barrier()
        return summary
    finally:
        if mlog is not None:
            mlog.close()
        if handler is not None:
            logger.removeHandler(handler)
            handler.close()
        logger.setLevel(level)
        ctx.close()
