"""Train a list of independent runs, one at a time or several side by side (``--jobs``).

Used by ``lud bench`` and ``lud tune``. With ``jobs=1`` every run trains in this process (tests
can swap the training function). With ``jobs=N`` each run trains in a worker process (spawned,
so no CUDA or thread-pool state is inherited) with ``torch.get_num_threads() // N`` threads:
on a CPU machine N small runs side by side use the cores better than one run with N threads
(a small model's per-step work does not spread over many threads).

Whatever happens to one run (it diverges, a worker dies), the others go on; the caller is told
about each run as it finishes, so its tables are written as soon as possible. A run whose loss
went NaN/Inf gets :data:`FAILED_FILE` in its folder (its ``last.pt`` keeps the last good epoch):
``lud bench`` and ``lud tune`` skip it on a rerun unless asked to retry.
"""

from __future__ import annotations

import json
import multiprocessing
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import Config

__all__ = ["FAILED_FILE", "RunOutcome", "RunTask", "execute_runs"]

#: Marker written into the folder of a run that diverged.
FAILED_FILE = "bench_failed.json"


@dataclass
class RunTask:
    """One run to train: its config, whether to resume, and how many epochs are left."""

    name: str  # for progress messages: "lud seed 1", "dkd trial 2 seed 0"
    config: Config
    resume: bool = False
    epochs_left: int = 0
    evaluate: bool = False  # score best.pt on the test set afterwards (lud.calibration)


@dataclass
class RunOutcome:
    """How a run ended: ``summary`` if it trained, ``diverged`` (the message) if its loss did not
    stay finite; ``wall_s`` is the time spent on it here."""

    task: RunTask
    summary: dict[str, Any] | None
    diverged: str | None
    wall_s: float


def _train_one(
    cfg: Config,
    resume: bool,
    evaluate: bool,
    train_fn: Callable[..., dict[str, Any]] | None = None,
    threads: int | None = None,
) -> tuple[dict[str, Any] | None, str | None, float]:
    """Train one run (in this process or a worker); a diverged run is an outcome, not an error."""
    from ..engine import TrainingDivergedError

    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    if train_fn is None:
        from ..engine import train as train_fn
    t0 = time.perf_counter()
    try:
        summary = train_fn(cfg, resume=resume)
    except TrainingDivergedError as exc:
        return None, str(exc), time.perf_counter() - t0
    if evaluate:
        from .calibration import evaluate_run

        evaluate_run(Path(cfg.experiment.output_dir) / cfg.experiment.name)
    return summary, None, time.perf_counter() - t0


def _duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 90:
        return f"{seconds:.0f}s"
    if seconds < 5400:
        return f"{seconds / 60:.1f}min"
    return f"{seconds / 3600:.1f}h"


def execute_runs(
    tasks: Sequence[RunTask],
    *,
    jobs: int = 1,
    train_fn: Callable[..., dict[str, Any]] | None = None,
    on_done: Callable[[RunOutcome], None] | None = None,
    log: Callable[[str], None] = lambda _m: None,
    done_before: int = 0,
    total: int | None = None,
) -> list[RunOutcome]:
    """Train ``tasks``; call ``on_done`` after each one, in the order they finish.

    Args:
        tasks: the runs to train (each in its own folder).
        jobs: how many to train at once (worker processes when > 1).
        train_fn: ``train(cfg, resume=...)`` for ``jobs=1`` (default :func:`lud.engine.train`).
        on_done: told about each finished run (write tables, markers).
        log: progress lines: ``[k/total done, ETA …] training NAME``.
        done_before / total: runs already finished before these, and the grand total, for the
            progress count.

    Returns:
        One outcome per task, in the order they finished.

    Raises:
        ValueError: ``jobs`` < 1. Anything a run raises other than divergence (a bad config, a
        full disk) stops the batch after the runs in flight have finished.
    """
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    total = len(tasks) + done_before if total is None else total
    epochs_all = sum(t.epochs_left for t in tasks)
    state = {"finished": done_before, "epochs_done": 0, "busy_s": 0.0}
    outcomes: list[RunOutcome] = []

    def eta() -> str:
        # Time per epoch from the runs that finished, spread over the runs trained at once.
        if not state["epochs_done"]:
            return ""
        left = epochs_all - state["epochs_done"]
        per_epoch = state["busy_s"] / state["epochs_done"]
        return f", ETA {_duration(per_epoch * left / min(jobs, max(1, len(tasks))))}"

    def started(task: RunTask) -> None:
        what = "resuming" if task.resume else "training"
        log(f"[{state['finished']}/{total} done{eta()}] {what} {task.name}")

    def finished(outcome: RunOutcome) -> None:
        if outcome.diverged is not None:
            from ..engine.checkpoint import atomic_write_text

            cfg = outcome.task.config
            marker = Path(cfg.experiment.output_dir) / cfg.experiment.name / FAILED_FILE
            atomic_write_text(json.dumps({"error": outcome.diverged}) + "\n", marker)
        state["finished"] += 1
        state["epochs_done"] += outcome.task.epochs_left
        state["busy_s"] += outcome.wall_s
        outcomes.append(outcome)
        if outcome.diverged is not None:
            log(f"{outcome.task.name} diverged, skipped: {outcome.diverged}")
        elif outcome.summary is not None:
            best = outcome.summary.get("best", {})
            score = best.get("test_top1")
            if score is None:
                score, split = best.get("top1"), best.get("split", "val")
            else:
                split = "test"
            shown = f"{score:.2f}%" if isinstance(score, (int, float)) else "n/a"
            log(f"{outcome.task.name}: best {split} top-1 {shown} ({_duration(outcome.wall_s)})")
        if on_done is not None:
            on_done(outcome)

    if jobs == 1 or len(tasks) <= 1:
        for task in tasks:
            started(task)
            summary, diverged, wall = _train_one(task.config, task.resume, task.evaluate, train_fn)
            finished(RunOutcome(task, summary, diverged, wall))
        return outcomes

    import torch

    threads = max(1, torch.get_num_threads() // jobs)
    pending = list(tasks)
    running: dict[Future[Any], RunTask] = {}
    error: BaseException | None = None
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as pool:
        while pending or running:
            while pending and len(running) < jobs and error is None:
                task = pending.pop(0)
                started(task)
                fut = pool.submit(
                    _train_one, task.config, task.resume, task.evaluate, None, threads
                )
                running[fut] = task
            if not running:
                break
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for fut in done:
                task = running.pop(fut)
                try:
                    summary, diverged, wall = fut.result()
                except BaseException as exc:  # noqa: BLE001 - re-raised once the pool is idle
                    log(f"{task.name} failed: {type(exc).__name__}: {exc}")
                    error = error or exc
                    continue
                finished(RunOutcome(task, summary, diverged, wall))
    if error is not None:
        raise error
    return outcomes
