"""One training step: augment the batch, compute the logits and the loss, update the student.

:func:`compute_loss` is the one place where the student's (and the live teacher's) logits are
computed and handed to the loss; anything that changes what a loss sees (several augmented views
of a batch, per-term gradient statistics on the student logits) belongs there. :func:`train_step`
(``runtime.nonfinite='stop'``) and :func:`guarded_step` (``'skip'``) wrap it with the backward
pass and the optimizer update; :mod:`lud.engine.loop` calls them once per batch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from ..losses import validate_logits
from . import distributed
from .gradnorms import term_grad_norms
from .runlog import logger

if TYPE_CHECKING:
    from .build import Run

__all__ = [
    "TrainingDivergedError",
    "augment",
    "augment_views",
    "check_first_step",
    "compute_loss",
    "diverged",
    "guarded_step",
    "train_step",
]


class TrainingDivergedError(FloatingPointError):
    """The loss became NaN/Inf; the message names the epoch and step."""


def diverged(run: Run, epoch: int, step: int, what: str) -> TrainingDivergedError:
    """The error for a NaN/Inf at ``step`` of ``epoch``, with what is kept and what to try."""
    return TrainingDivergedError(
        f"training diverged at epoch {epoch + 1}, step {step + 1} of {run.steps}: "
        f"{what}; {run.kept()}. "
        "Try a lower solver.lr, more warm-up (solver.warmup_epochs) or runtime.amp=off, or "
        "continue with --resume runtime.nonfinite=skip to skip such steps."
    )


def augment(run: Run, x: Tensor, gen: torch.Generator) -> Tensor:
    """The training transform of this rank's batch ``x`` (already on the device).

    Data-parallel: the crop/flip parameters of the global batch are drawn (the same on every
    rank) and this rank keeps rows ``rank, rank + W, ...`` — the rows it holds of the global
    batch, since the loader shards sample positions round-robin. The images are then exactly
    those one process with the global batch would train on.
    """
    tf, world = run.train_tf, run.ctx.world_size
    if world == 1 or not (tf.augments and tf.training):
        return tf(x, generator=gen)
    top, left, flip = tf.sample_params(x.shape[0] * world, gen)
    mine = slice(run.ctx.rank, None, world)
    x = x.to(torch.float32).div_(255.0) if x.dtype == torch.uint8 else x.to(torch.float32)
    x = tf.apply_params(x, top[mine], left[mine], flip[mine])
    return run.eval_tf(x)  # normalisation only: an evaluation transform never augments


def augment_views(run: Run, x: Tensor, gen: torch.Generator) -> tuple[Tensor, Tensor | None]:
    """``(weak, strong)`` training views of this rank's batch ``x``; ``strong`` is ``None``
    unless the run trains on two views (``data.strong_augment``).

    Both come from ``gen``, the epoch's generator, in the order of
    :meth:`lud.data.BatchTransform.two_views` (weak crop/flip, strong crop/flip, RandAugment), so a
    resumed run draws the same views. Data-parallel: as :func:`augment`, the parameters of the
    global batch are drawn and this rank keeps its rows, so N processes train on the images one
    process with the global batch would.
    """
    tf, world = run.train_tf, run.ctx.world_size
    if tf.strong is None:
        return augment(run, x, gen), None
    if world == 1:
        return tf.two_views(x, generator=gen)
    b = x.shape[0] * world
    weak_p = tf.sample_params(b, gen) if tf.augments else None
    strong_p = tf.sample_params(b, gen) if tf.augments else None
    ops, signs = tf.strong.sample_params(b, gen)
    mine = slice(run.ctx.rank, None, world)
    x = x.to(torch.float32).div_(255.0) if x.dtype == torch.uint8 else x.to(torch.float32)
    weak = x if weak_p is None else tf.apply_params(x, *(p[mine] for p in weak_p))
    strong = x if strong_p is None else tf.apply_params(x, *(p[mine] for p in strong_p))
    if tf.strong.num_ops > 0:
        strong = tf.strong.apply_params(strong, ops[mine], signs[mine])
    return run.eval_tf(weak), run.eval_tf(strong)  # normalisation only


def any_rank(run: Run, flag: Tensor) -> bool:
    """``flag`` (a 0-d bool tensor) on this rank or, data-parallel, on any rank."""
    value = flag.to(torch.long).reshape(())
    if run.ctx.distributed:
        value = distributed.all_reduce_max(value.clone())
    return bool(value)


def check_first_step(
    run: Run,
    s_logits: Tensor,
    t_logits: Tensor | None,
    y: Tensor,
    s2: Tensor | None = None,
    t2: Tensor | None = None,
) -> None:
    """The input checks of a run's first step; ``ValueError`` naming the problem.

    The engine builds the loss with ``validate=False`` (:func:`lud.engine.build._build_modules`):
    the loss's own checks read values back from the device (target range, NaN/Inf), a sync on
    every call, and would keep ``runtime.compile_loss`` on the eager path. The engine runs the
    same checks (:func:`lud.losses.validate_logits`) once, here, on the first step it trains (the
    first after a resume too): shapes, dtypes, class counts, target range and finite logits of
    both views; with ``loss.params.gather`` data-parallel, the same batch size on every rank.
    After that a NaN/Inf is caught by the step's own tracking (``runtime.nonfinite``).
    """
    validate_logits(s_logits, t_logits, y)
    if s2 is not None:
        validate_logits(s2, t2, y)
        if s2.shape != s_logits.shape:
            raise ValueError(
                f"strong_student_logits has shape {tuple(s2.shape)}, the weak view "
                f"{tuple(s_logits.shape)}: both views must hold the same images"
            )
    if run.ctx.distributed and getattr(run.loss, "gather", False):
        rows = s_logits.shape[0]
        bounds = distributed.all_reduce_max(torch.tensor([rows, -rows], device=s_logits.device))
        if int(bounds[0]) != -int(bounds[1]):
            raise ValueError(
                "gathering logits across ranks needs the same batch size on every rank, got "
                f"between {-int(bounds[1])} and {int(bounds[0])}"
            )


def compute_loss(
    run: Run,
    x: Tensor,
    t_logits: Tensor | None,
    y: Tensor,
    epoch: int,
    step: int,
    *,
    x_strong: Tensor | None = None,
    first_bad: Tensor | None = None,
    skip_bad_logits: bool = False,
) -> tuple[Any, Tensor] | None:
    """Student (and live teacher) logits of batch ``x`` and the loss on them: ``(output, logits)``.

    ``t_logits`` come from the teacher cache, or are ``None`` (then the live teacher, if any,
    computes them). ``x_strong``: the strong view of the same images (two-view losses); the
    student and the teacher run on it too (separate forward passes, as the published two-view
    recipes do, so BatchNorm sees each view alone) and the loss gets its logits as
    ``strong_student_logits`` / ``strong_teacher_logits``. The returned logits are the weak
    view's. With ``skip_bad_logits``, returns ``None`` before calling the loss when the
    student's logits are NaN/Inf on any rank. Until a step has passed them
    (``run.inputs_checked``), the inputs first go through :func:`check_first_step`; the loss
    (``run.loss_fn``: compiled with ``runtime.compile_loss``) runs without input checks on every
    step. A ``ValueError`` of the checks or the loss (bad data, a broken teacher) gets the epoch
    and step; with ``first_bad`` (the sync-free NaN tracking of
    ``runtime.nonfinite='stop'``) it becomes a :class:`TrainingDivergedError` when the student's
    logits are not finite (a NaN loss at an earlier step poisoned the weights).

    ``runtime.grad_norms_every = N > 0``: on every N-th step of the run (global step index
    ``epoch · steps + step`` divisible by N) :func:`lud.engine.gradnorms.term_grad_norms` measures
    each loss term's gradient norm on the logits the loss received (both views' together), before
    any backward; the result is left in ``run.grad_norms`` (``None`` on other steps). It only
    reads gradients, so the update is unchanged.
    """
    s2 = t2 = None
    with run.ctx.autocast():
        if run.teacher is not None and run.cache is None:
            with torch.no_grad():
                t_logits = run.teacher(x)
                if x_strong is not None:
                    t2 = run.teacher(x_strong)
        s_logits = run.forward(x)
        if x_strong is not None:
            s2 = run.forward(x_strong)
    students = [s_logits] if s2 is None else [s_logits, s2]
    if skip_bad_logits:
        finite = torch.stack([torch.isfinite(s.detach()).all() for s in students]).all()
        if any_rank(run, ~finite):
            return None
    strong = {} if s2 is None else {"strong_student_logits": s2, "strong_teacher_logits": t2}
    run.grad_norms = None
    try:
        if not run.inputs_checked:
            check_first_step(run, s_logits, t_logits, y, s2, t2)
            run.inputs_checked = True
        progress: float | Tensor = epoch + step / run.steps
        if run.loss_fn is not run.loss:
            # compiled: a Python float would be specialised on (a recompile every step)
            progress = torch.tensor(progress, device=s_logits.device)
        out = run.loss_fn(s_logits, t_logits, y, epoch=progress, **strong)
        every = run.cfg.runtime.grad_norms_every
        if every and (epoch * run.steps + step) % every == 0:
            run.grad_norms = term_grad_norms(out, students)
    except ValueError as exc:
        if first_bad is not None and not bool(torch.isfinite(s_logits).all()):
            # A NaN loss at an earlier step poisoned the weights: report that step.
            bad_step = int(first_bad)
            what = "the loss is NaN/Inf" if bad_step >= 0 else "the student's logits are NaN/Inf"
            raise diverged(run, epoch, bad_step if bad_step >= 0 else step, what) from None
        raise ValueError(f"epoch {epoch + 1}, step {step + 1}: {exc}") from exc
    return out, s_logits


def _backward(run: Run, total: Tensor) -> None:
    """Gradients of ``total`` (DDP averages the model's; the loss module's are averaged here)."""
    run.optimizer.zero_grad(set_to_none=True)
    run.scaler.scale(total).backward()
    if run.loss_params:
        distributed.average_gradients(run.loss_params)


def _apply(run: Run) -> None:
    """The optimizer step (through the fp16 scaler, if on) and the next learning rate."""
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.schedule.step()


def train_step(
    run: Run,
    x: Tensor,
    t_logits: Tensor | None,
    y: Tensor,
    epoch: int,
    step: int,
    first_bad: Tensor,
    x_strong: Tensor | None = None,
) -> tuple[Any, Tensor]:
    """One training step, ``runtime.nonfinite='stop'``: NaN is detected without a sync."""
    result = compute_loss(
        run, x, t_logits, y, epoch, step, x_strong=x_strong, first_bad=first_bad
    )
    assert result is not None  # only skip_bad_logits returns None
    out, s_logits = result
    _backward(run, out.total)
    _apply(run)
    return out, s_logits


def guarded_step(
    run: Run,
    x: Tensor,
    t_logits: Tensor | None,
    y: Tensor,
    epoch: int,
    step: int,
    x_strong: Tensor | None = None,
) -> tuple[Any, Tensor] | None:
    """One step, ``runtime.nonfinite='skip'``: ``None`` if it was skipped.

    A step is skipped — no optimizer update, BatchNorm and loss buffers restored to their
    values before it — when the student's logits, the loss or (without fp16 loss scaling,
    which has its own skipping) a gradient is NaN/Inf. That costs a device sync per step,
    and a collective per check when data-parallel, so that every rank skips together.
    """
    modules = (run.model, run.loss)
    buffers = [b.detach().clone() for m in modules for b in m.buffers()]

    def skip(what: str) -> None:
        run.optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            for b, saved in zip((b for m in modules for b in m.buffers()), buffers):
                b.copy_(saved)
        run.schedule.step()  # the schedule counts iterations, skipped ones included
        logger.warning(
            "epoch %d, step %d/%d: %s; step skipped (runtime.nonfinite=skip)",
            epoch + 1,
            step + 1,
            run.steps,
            what,
        )

    result = compute_loss(
        run, x, t_logits, y, epoch, step, x_strong=x_strong, skip_bad_logits=True
    )
    if result is None:
        skip("the student's logits are NaN/Inf")
        return None
    out, s_logits = result
    if any_rank(run, ~torch.isfinite(out.total.detach())):
        skip("the loss is NaN/Inf")
        return None
    _backward(run, out.total)
    if not run.scaler.is_enabled():
        grads = [
            p.grad
            for group in run.optimizer.param_groups
            for p in group["params"]
            if p.grad is not None
        ]
        finite = torch.stack([torch.isfinite(g).all() for g in grads]).all() if grads else None
        if finite is not None and any_rank(run, ~finite):
            skip("a gradient is NaN/Inf")
            return None
    _apply(run)
    return out, s_logits
