"""The epoch loop: :func:`train_epoch` runs one epoch of steps, :func:`run_epochs` all of them.

Each epoch ends with evaluation (every ``runtime.eval_every`` epochs and at the last), the
metrics row, ``last.pt`` and, if it improved, ``best.pt`` — in that order (see
:mod:`lud.engine.runfolder` for why the order matters on a kill). One step is
:mod:`lud.engine.step`.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from .. import __version__
from . import distributed
from .checkpoint import atomic_write_text, save_checkpoint
from .faults import fault_point
from .metrics import RunningSums
from .runfolder import lookup_last, run_state, save_config, save_resolved
from .runlog import MetricsLog, logger
from .seeding import capture_rng_state, make_generator
from .step import TrainingDivergedError, augment_views, diverged, guarded_step, train_step

if TYPE_CHECKING:
    from ..config import Config
    from .build import Run

__all__ = ["run_epochs", "train_epoch"]


def _progress(cfg: Config, run: Run, epoch: int) -> Any:
    if not (cfg.runtime.progress and run.ctx.is_main and sys.stderr.isatty()):
        return None
    from tqdm import tqdm

    return tqdm(
        total=run.steps,
        desc=f"epoch {epoch + 1}/{cfg.solver.epochs}",
        unit="batch",
        leave=False,
        dynamic_ncols=True,
    )


def _report(
    bar: Any,
    epoch: int,
    step: int,
    steps: int,
    means: dict[str, float],
    lr: float,
    seen: int,
    elapsed: float,
) -> None:
    ips = seen / max(elapsed, 1e-9)
    if bar is not None:
        bar.set_postfix(
            loss=f"{means['loss']:.4f}",
            top1=f"{means['top1']:.1f}",
            lr=f"{lr:.3g}",
            img_s=f"{ips:.0f}",
            refresh=False,
        )
    else:
        logger.info(
            "epoch %d [%d/%d] loss %.4f top1 %.2f lr %.4g %.0f img/s",
            epoch + 1,
            step + 1,
            steps,
            means["loss"],
            means["top1"],
            lr,
            ips,
        )


@dataclass
class _EpochTally:
    """What one epoch accumulates on the device (read by the host every ``log_every`` steps)."""

    sums: RunningSums
    #: the first step whose loss was NaN/Inf (-1: none yet), tracked without a device sync
    first_bad: Tensor
    #: at ``first_bad``: were the student's logits already NaN/Inf?
    bad_logits: Tensor
    seen: int = 0
    skipped: int = 0
    t0: float = field(default_factory=time.perf_counter)
    #: ``runtime.grad_norms_every``: ``(global step, {term: norm})`` of each probed step
    grad_norms: list[tuple[int, dict[str, float]]] = field(default_factory=list)

    def add(self, out: Any, s_logits: Tensor, y: Tensor, step: int) -> None:
        total = out.total.detach()
        newly_bad = ~torch.isfinite(total) & (self.first_bad < 0)
        self.first_bad = torch.where(newly_bad, torch.full_like(self.first_bad, step),
                                     self.first_bad)
        self.bad_logits = torch.where(
            newly_bad, ~torch.isfinite(s_logits.detach()).all(), self.bad_logits
        )
        values = {"loss": total, "top1": (s_logits.detach().argmax(1) == y).float().mean() * 100.0}
        values.update({f"term/{k}": v for k, v in out.terms.items()})
        values.update({f"stat/{k}": v for k, v in out.stat_tensors.items()})
        self.sums.add(values, int(y.shape[0]))


def _check_and_report(run: Run, tally: _EpochTally, bar: Any, epoch: int, step: int) -> None:
    """Every ``log_every`` steps: stop on a NaN seen on any rank, report the running means."""
    # device sync (and, data-parallel, two small collectives) every log_every steps:
    # every rank learns of a NaN on any rank and stops at the same point
    bad_step = int(distributed.all_reduce_max(tally.first_bad.clone()))
    if bad_step >= 0:
        what = ("the student's logits are NaN/Inf" if bool(tally.bad_logits)
                else "the loss is NaN/Inf")
        raise diverged(run, epoch, bad_step, what)
    means = tally.sums.means(run.reduce)  # empty while every step so far was skipped
    if run.ctx.is_main and means:
        _report(bar, epoch, step, run.steps, means, run.schedule.lr,
                tally.seen * run.ctx.world_size, time.perf_counter() - tally.t0)


def train_epoch(run: Run, epoch: int) -> dict[str, float]:
    """One epoch of training steps; the ``train/*``, ``lr`` and ``time/*`` entries of its row."""
    cfg, dev = run.cfg, run.ctx.device
    run.model.train()
    run.loss.train()
    run.train_loader.set_epoch(epoch)
    # Rank-independent stream (0 where the rank used to go; single-process runs unchanged):
    # every rank draws the augmentation of the whole global batch and keeps its own rows.
    gen = make_generator(dev, cfg.experiment.seed, epoch, 0)
    order = run.train_loader.indices() if run.cache is not None else None
    bs = run.train_loader.batch_size
    skip_mode = cfg.runtime.nonfinite == "skip"
    tally = _EpochTally(
        RunningSums(dev),
        first_bad=torch.full((), -1, dtype=torch.long, device=dev),
        bad_logits=torch.zeros((), dtype=torch.bool, device=dev),
    )
    bar = _progress(cfg, run, epoch)
    lr0 = run.schedule.lr
    for step, (images, labels) in enumerate(run.train_loader):
        if step >= run.steps:
            break
        fault_point("step")
        x, x_strong = augment_views(run, images.to(dev, non_blocking=True), gen)
        if cfg.runtime.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
            if x_strong is not None:
                x_strong = x_strong.contiguous(memory_format=torch.channels_last)
        y = labels.to(dev, non_blocking=True)
        t_logits = None
        if run.cache is not None:
            assert order is not None
            t_logits = run.cache.lookup(order[step * bs : step * bs + labels.shape[0]], dev)
        tally.seen += int(labels.shape[0])
        if skip_mode:
            result = guarded_step(run, x, t_logits, y, epoch, step, x_strong)
            tally.skipped += result is None
        else:
            result = train_step(run, x, t_logits, y, epoch, step, tally.first_bad, x_strong)
        if result is not None and run.grad_norms is not None:
            tally.grad_norms.append((epoch * run.steps + step, run.grad_norms))
        if result is not None:
            tally.add(*result, y, step)
        if (step + 1) % cfg.runtime.log_every == 0 or step + 1 == run.steps:
            _check_and_report(run, tally, bar, epoch, step)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return _epoch_row(run, tally, epoch, lr0, skip_mode)


def _epoch_row(
    run: Run, tally: _EpochTally, epoch: int, lr0: float, skip_mode: bool
) -> dict[str, float]:
    """End of the steps: fail if all were skipped, share rank 0's buffers, the row's entries."""
    dev = run.ctx.device
    if tally.skipped and tally.skipped >= run.steps:
        raise TrainingDivergedError(
            f"training diverged at epoch {epoch + 1}: all {run.steps} steps had NaN/Inf "
            f"values and were skipped (runtime.nonfinite=skip); {run.kept()}"
        )
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    elapsed = time.perf_counter() - tally.t0
    means = tally.sums.means(run.reduce)
    # Rank 0's buffers become everyone's (BatchNorm statistics without SyncBN, a loss's
    # running thresholds), so what is evaluated and saved is the same model on every rank
    # and a resumed run continues from the state an uninterrupted one has here.
    distributed.broadcast_buffers(run.model)
    distributed.broadcast_buffers(run.loss)
    out_row = {"lr": lr0, "train/loss": means.pop("loss"), "train/top1": means.pop("top1")}
    out_row.update({f"train/{k}": v for k, v in means.items()})
    if skip_mode:
        out_row["train/skipped_steps"] = tally.skipped
    out_row.update(_grad_norm_means(run, tally.grad_norms))
    run.epoch_grad_norms = tally.grad_norms
    images = tally.seen * run.ctx.world_size  # every rank sees as many samples
    out_row.update({"time/epoch_s": elapsed, "time/images_per_s": images / max(elapsed, 1e-9)})
    return out_row


def _grad_norm_means(
    run: Run, probes: list[tuple[int, dict[str, float]]]
) -> dict[str, float]:
    """``grad_norm/<term>``: the epoch's mean of each term's probed norm (over ranks too)."""
    if not run.cfg.runtime.grad_norms_every:
        return {}
    names = list(dict.fromkeys(k for _, norms in probes for k in norms))
    # every rank probes the same steps, so the names agree; sums and a count are reduced
    names = distributed.broadcast_object(names)
    sums = torch.tensor(
        [sum(n.get(k, 0.0) for _, n in probes) for k in names] + [float(len(probes))],
        dtype=torch.float64,
    )
    if run.reduce is not None:
        sums = run.reduce(sums.to(run.ctx.device)).cpu()
    count = float(sums[-1])
    if count == 0:
        return {}
    return {f"grad_norm/{k}": float(v) / count for k, v in zip(names, sums[:-1].tolist())}


def _evaluate_epoch(run: Run, epoch: int, row: dict[str, Any]) -> tuple[bool, dict[str, Any]]:
    """Evaluate every split into ``row``, update best/max: ``(improved, the "last" entry)``."""
    results = run.evaluate_splits()
    for split, res in results.items():
        row.update({f"{split}/{k}": v for k, v in res.items() if k != "n"})
    test = results.get("test", {})  # absent with data.eval_test=false
    test1 = test.get("top1")
    if test1 is not None:
        run.max_test_top1 = test1 if run.max_test_top1 is None else max(run.max_test_top1, test1)
    chosen = results[run.best_split]["top1"]
    improved = run.best["top1"] is None or chosen > run.best["top1"]
    if improved:
        run.best.update(epoch=epoch + 1, top1=chosen, test_top1=test1, test_top5=test.get("top5"))
    last = {
        "epoch": epoch + 1,
        **{
            f"{s}_{k}": v
            for s, res in results.items()
            for k, v in res.items()
            if k in ("top1", "top5")
        },
    }
    return improved, last


def _save_epoch(
    run: Run, epoch: int, row: dict[str, Any], wall: float, improved: bool, mlog: MetricsLog | None
) -> None:
    """The epoch's metrics row, ``last.pt`` and (if improved) ``best.pt``, on rank 0."""
    rng_ranks = distributed.gather_object(capture_rng_state())  # a collective: all ranks
    if not run.ctx.is_main:
        return
    state = run_state(run, epoch + 1, row, wall, rng_ranks)
    assert mlog is not None
    # Order matters for a kill between two writes: the metrics row first (a resume
    # drops rows newer than last.pt), then last.pt, then best.pt (a resume finds last.pt
    # naming itself the best epoch and restores a best.pt that missed it; see
    # lud.engine.runfolder.restore_best).
    try:
        mlog.write(row)
        save_checkpoint(state, run.run_dir / "last.pt")
        run.saved_epoch = epoch + 1
        if improved:
            save_checkpoint(state, run.run_dir / "best.pt")
    except OSError as exc:
        raise run.write_failed(exc) from None
    logger.info("epoch %d/%d: %s", epoch + 1, run.cfg.solver.epochs, _brief(row))


def run_epochs(
    run: Run, stop_after: int | None, t_start: float, mlog: MetricsLog | None
) -> dict[str, Any]:
    """Train from ``run.start_epoch`` to the end (or ``stop_after``); the run's summary."""
    cfg, ctx, run_dir = run.cfg, run.ctx, run.run_dir
    if ctx.is_main:
        save_config(cfg, run_dir / "config.yaml")
        save_resolved(cfg, run.resolved_loss_params, run_dir / "resolved.yaml")
    if run.teacher is not None and run.teacher_top1 is None and "test" in run.eval_loaders:
        rt = run.evaluate(run.teacher, "test")
        run.teacher_top1 = rt["top1"]
        logger.info("teacher %s: test top-1 %.2f%%", cfg.teacher.name, rt["top1"])
    # rank 0 reads (it may be rewriting metrics.jsonl for the resume), the others receive
    last: dict[str, Any] = distributed.broadcast_object(
        dict(lookup_last(run_dir, run.start_epoch)) if ctx.is_main else None
    )
    done = run.start_epoch
    end = cfg.solver.epochs if stop_after is None else min(cfg.solver.epochs, stop_after)
    for epoch in range(run.start_epoch, end):
        row: dict[str, Any] = {"epoch": epoch + 1}
        row.update(train_epoch(run, epoch))
        improved = False
        if (epoch + 1) % cfg.runtime.eval_every == 0 or epoch + 1 == cfg.solver.epochs:
            improved, last = _evaluate_epoch(run, epoch, row)
        row.update(
            {
                "test/max_top1": run.max_test_top1,
                "best/split": run.best["split"],
                "best/epoch": run.best["epoch"],
                "best/top1": run.best["top1"],
                "best/test_top1": run.best["test_top1"],
            }
        )
        wall = run.wall_before + time.perf_counter() - t_start
        row["time/wall_s"] = wall
        _save_epoch(run, epoch, row, wall, improved, mlog)
        if mlog is not None and run.epoch_grad_norms:
            mlog.write_steps("grad_norm_step", run.epoch_grad_norms)
        done = epoch + 1
    summary = _summary(run, done, last, run.wall_before + time.perf_counter() - t_start)
    if ctx.is_main:
        try:
            atomic_write_text(json.dumps(summary, indent=2) + "\n", run_dir / "summary.json")
        except OSError as exc:
            raise run.write_failed(exc) from None
    return summary


def _summary(run: Run, epochs_done: int, last: dict[str, Any], wall: float) -> dict[str, Any]:
    return {
        "name": run.cfg.experiment.name,
        "run_dir": str(run.run_dir),
        "model": run.cfg.model.name,
        "teacher": run.cfg.teacher.name if run.teacher is not None else None,
        "teacher_test_top1": run.teacher_top1,
        "loss": run.cfg.loss.name,
        "resolved_loss_params": run.resolved_loss_params,
        "epochs": run.cfg.solver.epochs,
        "epochs_completed": epochs_done,
        "completed": epochs_done >= run.cfg.solver.epochs,
        "best_selected_by": run.best["split"],
        "best": dict(run.best),
        "last": last,
        "max_test_top1": run.max_test_top1,
        "wall_time_s": wall,
        "lud_version": __version__,
    }


def _brief(row: dict[str, Any]) -> str:
    keys = ("train/loss", "train/top1", "val/top1", "test/top1", "best/top1", "time/epoch_s")
    return ", ".join(f"{k} {row[k]:.4g}" for k in keys if isinstance(row.get(k), (int, float)))
