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
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from .. import __version__
from ..config import (
    Config,
    ConfigError,
    config_to_dict,
    save_config,
    teacher_cache_error,
    validate_config,
)
from . import distributed
from .checkpoint import (
    CHECKPOINT_FORMAT,
    CheckpointError,
    atomic_write_bytes,
    atomic_write_text,
    load_checkpoint,
    remove_stale_temp_files,
    save_checkpoint,
)
from .faults import fault_point
from .metrics import RunningSums, evaluate
from .optim import LRSchedule, build_optimizer
from .runlog import MetricsLog, attach_file_log, logger
from .runtime import DeviceBatches, RuntimeContext, setup_runtime
from .seeding import (
    capture_rng_state,
    configure_determinism,
    derive_seed,
    make_generator,
    restore_rng_state,
    seed_everything,
)
from .teacher import TeacherLogitCache, build_teacher

if TYPE_CHECKING:
    from ..data import DataBundle

__all__ = ["RunFolderError", "TrainingDivergedError", "run_dir_of", "train"]

# Config entries that must not change between a checkpoint and the run resuming it.
_RESUME_KEYS = (
    "experiment.seed",
    "data.name",
    "data.val_split",
    "data.subset",
    "data.augment",
    "data.image_size",
    "data.batch_size",
    "model.name",
    "model.kwargs",
    "teacher.name",
    "teacher.kwargs",
    "loss.name",
    "loss.params",
)


class TrainingDivergedError(FloatingPointError):
    """The loss became NaN/Inf; the message names the epoch and step."""


class RunFolderError(ValueError):
    """The run folder cannot be used as asked (exists without --resume, or nothing to resume)."""


def run_dir_of(cfg: Config) -> Path:
    """``experiment.output_dir / experiment.name``."""
    return Path(cfg.experiment.output_dir).expanduser() / cfg.experiment.name


def run_data(cfg: Config) -> DataBundle:
    """The data a run config describes (the same splits training saw, for a given seed)."""
    from ..data import build_data

    d = cfg.data
    return build_data(d.name, d.root, val_split=d.val_split, seed=cfg.experiment.seed,
                      subset=d.subset, augment=d.augment, image_size=d.image_size)


def _prepare_run_dir(run_dir: Path, resume: bool) -> None:
    """Refuse to overwrite checkpoints, create the folder, clear temp files of killed writes."""
    has_ckpt = run_dir.is_dir() and any(run_dir.glob("*.pt"))
    if resume:
        last = run_dir / "last.pt"
        if not last.is_file():
            if has_ckpt:
                hint = ". " + _recovery_hint(last)
            elif run_dir.is_dir():
                hint = (
                    "; the run stopped before its first epoch ended, so there is nothing to "
                    "resume: start it again without --resume"
                )
            else:
                hint = ""
            raise RunFolderError(f"cannot resume: {last} does not exist{hint}")
    elif has_ckpt:
        raise RunFolderError(
            f"run folder {run_dir} already holds checkpoints; pass --resume to continue that run, "
            "or choose another experiment name (--name) or output folder (--output-dir)"
        )
    elif run_dir.is_dir() and any(run_dir.iterdir()):
        logger.info(
            "%s holds no checkpoint (a run stopped in its first epoch): starting afresh", run_dir
        )
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OSError(
            exc.errno,
            f"cannot create the run folder {run_dir}: {exc.strerror or exc} "
            "(choose a writable --output-dir)",
        ) from None
    removed = remove_stale_temp_files(run_dir)  # only rank 0 writes, and it is here
    if removed:
        logger.info(
            "removed %d temporary file(s) of interrupted writes: %s",
            len(removed),
            ", ".join(p.name for p in removed),
        )


# What resuming needs beyond what every lud checkpoint has.
_RUN_STATE_KEYS = ("loss", "optimizer", "schedule", "scaler", "best", "max_test_top1", "rng")


def _recovery_hint(last: Path) -> str:
    """What to do about an unusable ``last.pt``: fall back on an intact ``best.pt`` if any."""
    best = last.with_name("best.pt")
    try:
        epoch = int(load_checkpoint(best)["epoch"]) if best.is_file() else None
    except (CheckpointError, OSError):
        epoch = None
    start_again = f"delete the run folder {last.parent} (or choose another --name) to start again"
    if epoch is None:
        return start_again[0].upper() + start_again[1:] + "."
    return (
        f"{best} (epoch {epoch}) is intact: copy it over {last.name} to resume from epoch "
        f"{epoch}, or {start_again}."
    )


def _restore_best(run_dir: Path, ckpt: dict[str, Any]) -> None:
    """Rewrite ``best.pt`` from ``last.pt`` when a kill fell between their two writes.

    ``last.pt`` is written first; if it records its own epoch as the best one, ``best.pt`` must
    hold that same state. A missing, older or unreadable ``best.pt`` is then replaced by a copy.
    """
    epoch, best_epoch = int(ckpt["epoch"]), (ckpt.get("best") or {}).get("epoch")
    if best_epoch is None or int(best_epoch) != epoch:
        return
    best = run_dir / "best.pt"
    try:
        if best.is_file() and int(load_checkpoint(best)["epoch"]) == epoch:
            return
    except CheckpointError:
        pass
    atomic_write_bytes((run_dir / "last.pt").read_bytes(), best)
    logger.info("restored %s (epoch %d) from last.pt: the run stopped between the two", best, epoch)


def _read_resume_checkpoint(path: Path) -> dict[str, Any]:
    """``last.pt``, verified, on the CPU; a clear :class:`RunFolderError` if it is unusable."""
    try:
        ckpt = load_checkpoint(path, map_location="cpu")
        missing = [k for k in _RUN_STATE_KEYS if k not in ckpt]
        if missing:
            raise CheckpointError(
                f"{path} holds no training state ({', '.join(missing)} missing); it can be "
                "evaluated or used as a teacher, not resumed"
            )
    except CheckpointError as exc:
        raise RunFolderError(f"cannot resume: {exc}. {_recovery_hint(path)}") from None
    return ckpt


def _lookup(d: dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        d = d.get(part, {}) if isinstance(d, dict) else {}
    return d


def _check_resume_compatible(
    saved: dict[str, Any], now: dict[str, Any], num_classes: int | None, ckpt: dict[str, Any]
) -> None:
    """Raise if the run being resumed differs from the checkpoint's (``num_classes``: None
    before the data are loaded)."""
    diffs = [
        f"{k}: checkpoint {_lookup(saved, k)!r} vs now {_lookup(now, k)!r}"
        for k in _RESUME_KEYS
        if _lookup(saved, k) != _lookup(now, k)
    ]
    if num_classes is not None and int(ckpt["num_classes"]) != num_classes:
        diffs.append(f"num_classes: checkpoint {ckpt['num_classes']} vs data {num_classes}")
    if diffs:
        raise RunFolderError(
            "cannot resume: the config does not match the checkpoint:\n  " + "\n  ".join(diffs)
        )


def _dummy_forward(
    model: nn.Module,
    input_shape: tuple[int, int, int],
    num_classes: int,
    who: str,
    device: torch.device,
) -> None:
    """Catch wrong class counts / input sizes before the first epoch (eval mode: no BN update)."""
    was = model.training
    model.eval()
    with torch.no_grad():
        out = model(torch.zeros(2, *input_shape, device=device))
    model.train(was)
    if not isinstance(out, Tensor) or tuple(out.shape) != (2, num_classes):
        got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(
            f"{who} returns logits of shape {got} for a batch of 2; expected (2, {num_classes})"
        )


def _on_device(loader: Any, device: torch.device) -> DeviceBatches:
    """``loader``'s batches cut from a copy of its in-memory data set held on ``device``."""
    ds = loader.dataset
    return DeviceBatches(loader, ds.images.to(device), ds.labels.to(device))


class _Run:
    """Everything one training run holds; :func:`train` drives it."""

    def __init__(self, cfg: Config, resume: bool) -> None:
        self.cfg = cfg
        self.ctx: RuntimeContext = setup_runtime(cfg.runtime)
        try:
            self._build(cfg, resume)
        except BaseException:
            self.ctx.close()
            raise

    def _build(self, cfg: Config, resume: bool) -> None:
        from ..data import make_batch_transform, make_loader
        from ..data.bundle import ArrayDataset
        from ..losses import build_loss
        from ..models import build_model

        self.run_dir = run_dir_of(cfg)
        error = None
        if self.ctx.is_main:
            try:
                _prepare_run_dir(self.run_dir, resume)
            except RunFolderError as exc:
                error = str(exc)
        # Every rank fails with rank 0's message instead of waiting for it in a collective.
        error = distributed.broadcast_object(error)
        if error is not None:
            raise RunFolderError(error)
        # Read (and verify) the checkpoint before any work: a corrupt file fails in a second.
        self.resume_ckpt = _read_resume_checkpoint(self.run_dir / "last.pt") if resume else None
        if self.resume_ckpt is not None:
            ckpt = self.resume_ckpt
            _check_resume_compatible(ckpt["config"], config_to_dict(cfg), None, ckpt)
            if self.ctx.is_main:
                _restore_best(self.run_dir, ckpt)
        configure_determinism(cfg.experiment.deterministic)
        seed_everything(cfg.experiment.seed)
        dev = self.ctx.device
        d, r = cfg.data, cfg.runtime

        self.bundle = run_data(cfg)
        nc, shape = self.bundle.num_classes, tuple(self.bundle.input_shape)
        if r.teacher_cache and self.bundle.augment != "none":
            raise ConfigError(teacher_cache_error(self.bundle.augment))
        pin = dev.type == "cuda"
        world, rank = self.ctx.world_size, self.ctx.rank
        # Drop the incomplete last batch only if this rank's shard holds at least one full batch.
        drop_last = distributed.shard_size(len(self.bundle.train), 0, world) >= d.batch_size
        self.train_loader: Any = make_loader(
            self.bundle.train,
            d.batch_size,
            shuffle=True,
            drop_last=drop_last,
            seed=cfg.experiment.seed,
            rank=rank,
            world_size=world,
            num_workers=d.num_workers,
            pin_memory=pin,
        )
        # Evaluation is sharded too; `eval_counts` are each shard's distinct samples (the padding
        # that evens out the shards sits at their ends and is not counted).
        self.eval_loaders: dict[str, Any] = {
            split: make_loader(
                ds,
                d.eval_batch_size,
                shuffle=False,
                rank=rank,
                world_size=world,
                num_workers=d.num_workers,
                pin_memory=pin,
            )
            for split, ds in (("val", self.bundle.val), ("test", self.bundle.test))
            if ds is not None and (split != "test" or d.eval_test)
        }
        self.eval_counts = {
            split: distributed.shard_size(len(loader.dataset), rank, world)
            for split, loader in self.eval_loaders.items()
        }
        if r.data_on_device:
            splits = {"train": self.bundle.train, "val": self.bundle.val, "test": self.bundle.test}
            if any(ds is not None and not isinstance(ds, ArrayDataset) for ds in splits.values()):
                raise ConfigError(
                    f"runtime.data_on_device needs in-memory data; '{d.name}' is read from "
                    "image files (use data.num_workers and pinned memory instead)"
                )
            self.train_loader = _on_device(self.train_loader, dev)
            self.eval_loaders = {k: _on_device(v, dev) for k, v in self.eval_loaders.items()}
        self.train_tf = make_batch_transform(self.bundle, train=True).to(dev)
        self.eval_tf = make_batch_transform(self.bundle, train=False).to(dev)

        self.model = build_model(
            cfg.model.name, nc, in_channels=shape[0], input_shape=shape, **cfg.model.kwargs
        ).to(dev)
        _dummy_forward(self.model, shape, nc, f"model '{cfg.model.name}'", dev)
        if r.sync_bn and self.ctx.distributed:
            self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        self.loss = build_loss(cfg.loss.name, **cfg.loss.params).to(dev)
        # The loss's input validation reads values back from the device (target range, NaN).
        # Shapes, class counts and targets are checked on the first step; after that a NaN is
        # caught by the trainer's own sync-free tracking (train_epoch), not once per step.
        self.inputs_checked = False
        self.teacher: nn.Module | None = None
        if self.loss.requires_teacher:
            self.teacher = build_teacher(cfg.teacher, nc, shape, self.ctx)  # type: ignore[arg-type]
            _dummy_forward(self.teacher, shape, nc, f"teacher '{cfg.teacher.name}'", dev)
        elif cfg.teacher.name is not None:
            logger.warning(
                "loss '%s' uses no teacher: teacher '%s' is ignored",
                cfg.loss.name,
                cfg.teacher.name,
            )
        if r.channels_last:
            self.model.to(memory_format=torch.channels_last)
            if self.teacher is not None:
                self.teacher.to(memory_format=torch.channels_last)

        self.steps = len(self.train_loader)
        if r.max_steps_per_epoch is not None:
            self.steps = min(self.steps, r.max_steps_per_epoch)
        self.optimizer = build_optimizer(cfg.solver, self.model, self.loss)
        # Outside DDP: averaged by hand after backward (only data-parallel, only if any).
        self.loss_params = (
            [p for p in self.loss.parameters() if p.requires_grad] if self.ctx.distributed else []
        )
        self.reduce = distributed.all_reduce_sum if self.ctx.distributed else None
        self.schedule = LRSchedule(self.optimizer, cfg.solver, self.steps)
        self.scaler = self.ctx.grad_scaler()
        if self.ctx.distributed:
            # Same initial weights on every rank (DDP would broadcast them anyway), but
            # independent dropout streams; data order and augmentation have their own seeds.
            torch.manual_seed(derive_seed(cfg.experiment.seed, 1, self.ctx.rank))
        self.forward: nn.Module = self.model  # set after a resume: DDP broadcasts the weights
        self.eval_model: nn.Module = self.model
        self.best_split = "val" if "val" in self.eval_loaders else "test"
        self.best: dict[str, Any] = {
            "split": self.best_split,
            "epoch": None,
            "top1": None,
            "test_top1": None,
            "test_top5": None,
        }
        self.max_test_top1: float | None = None
        self.start_epoch = 0
        self.saved_epoch = 0  # the epoch last.pt holds
        self.wall_before = 0.0
        self.teacher_top1: float | None = None

        self.cache: TeacherLogitCache | None = None
        if r.teacher_cache and self.teacher is not None:
            t0 = time.perf_counter()
            self.cache = TeacherLogitCache.compute(
                self.teacher,
                self.bundle.train,
                self.train_tf,
                self.ctx,
                d.eval_batch_size,
                r.channels_last,
            )
            logger.info(
                "teacher logits cached for %d training samples in %.1fs",
                self.cache.logits.shape[0],
                time.perf_counter() - t0,
            )
        if self.resume_ckpt is not None:
            self._load(self.run_dir / "last.pt", self.resume_ckpt)
            self.resume_ckpt = None  # the state now lives in the modules
        self.ddp = distributed.wrap_model(self.model, dev)
        if r.compile:
            self.forward = torch.compile(self.ddp)
            # Evaluation runs on the bare module (DDP's forward would broadcast buffers for
            # nothing); in a single process that is the same compiled module.
            self.eval_model = self.forward if self.ddp is self.model else torch.compile(self.model)
        else:
            self.forward = self.ddp
        compile_teacher = r.compile if r.compile_teacher is None else r.compile_teacher
        if self.teacher is not None and compile_teacher:
            self.teacher = torch.compile(self.teacher)

    # ------------------------------------------------------------------ checkpoints
    def _state(
        self, epoch: int, row: dict[str, Any], wall: float, rng_ranks: list[Any]
    ) -> dict[str, Any]:
        """The checkpoint; ``rng_ranks``: every rank's RNG state, in rank order."""
        return {
            "format": CHECKPOINT_FORMAT,
            "lud_version": __version__,
            "epoch": epoch,
            "model": self.model.state_dict(),
            "model_name": self.cfg.model.name,
            "num_classes": self.bundle.num_classes,
            "input_shape": list(self.bundle.input_shape),
            "loss": self.loss.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "scaler": self.scaler.state_dict(),
            "best": dict(self.best),
            "max_test_top1": self.max_test_top1,
            "teacher_top1": self.teacher_top1,
            "rng": rng_ranks[0],
            "rng_ranks": rng_ranks,
            "world_size": self.ctx.world_size,
            "config": config_to_dict(self.cfg),
            "metrics": row,
            "wall_time_s": wall,
        }

    def _load(self, path: Path, ckpt: dict[str, Any]) -> None:
        # Loaded on the CPU: load_state_dict copies onto the device, without a second GPU copy.
        _check_resume_compatible(
            ckpt["config"], config_to_dict(self.cfg), self.bundle.num_classes, ckpt
        )
        saved_world = int(ckpt.get("world_size", 1))
        if saved_world != self.ctx.world_size:
            # The shards, the global batch and the steps per epoch all depend on it.
            raise RunFolderError(
                f"cannot resume: {path} was written by a run of {saved_world} process(es), this "
                f"run has {self.ctx.world_size}; resume with the same number of processes"
            )
        self.model.load_state_dict(ckpt["model"])
        self.loss.load_state_dict(ckpt["loss"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.schedule.load_state_dict(ckpt["schedule"])
        self.scaler.load_state_dict(ckpt["scaler"])
        self.best = dict(ckpt["best"])
        self.max_test_top1 = ckpt["max_test_top1"]
        self.teacher_top1 = ckpt.get("teacher_top1")
        self.start_epoch = self.saved_epoch = int(ckpt["epoch"])
        self.wall_before = float(ckpt.get("wall_time_s", 0.0))
        rngs = ckpt.get("rng_ranks") or [ckpt["rng"]]
        # last: nothing after this may draw random numbers
        restore_rng_state(rngs[self.ctx.rank] if len(rngs) > self.ctx.rank else ckpt["rng"])
        logger.info("resumed %s at epoch %d", path, self.start_epoch)

    # ------------------------------------------------------------------ one epoch
    def train_epoch(self, epoch: int) -> dict[str, float]:
        cfg, ctx, dev = self.cfg, self.ctx, self.ctx.device
        self.model.train()
        self.loss.train()
        self.train_loader.set_epoch(epoch)
        # Rank-independent stream (0 where the rank used to go; single-process runs unchanged):
        # every rank draws the augmentation of the whole global batch and keeps its own rows.
        gen = make_generator(dev, cfg.experiment.seed, epoch, 0)
        order = self.train_loader.indices() if self.cache is not None else None
        bs = self.train_loader.batch_size
        sums = RunningSums(dev)
        first_bad = torch.full((), -1, dtype=torch.long, device=dev)
        bad_logits = torch.zeros((), dtype=torch.bool, device=dev)  # at first_bad: logits NaN?
        skip_mode = cfg.runtime.nonfinite == "skip"
        skipped = 0
        bar = _progress(cfg, ctx, epoch, self.steps)
        lr0 = self.schedule.lr
        t0 = time.perf_counter()
        seen = 0
        for step, (images, labels) in enumerate(self.train_loader):
            if step >= self.steps:
                break
            fault_point("step")
            x = self._augment(images.to(dev, non_blocking=True), gen)
            if cfg.runtime.channels_last and x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            y = labels.to(dev, non_blocking=True)
            t_logits = None
            if self.cache is not None:
                assert order is not None
                t_logits = self.cache.lookup(order[step * bs : step * bs + labels.shape[0]], dev)
            n = int(labels.shape[0])
            seen += n
            if skip_mode:
                out = self._guarded_step(x, t_logits, y, epoch, step)
                if out is None:
                    skipped += 1
            else:
                out = self._step(x, t_logits, y, epoch, step, first_bad)
            if out is not None:
                out, s_logits = out
                total = out.total.detach()
                newly_bad = ~torch.isfinite(total) & (first_bad < 0)
                first_bad = torch.where(newly_bad, torch.full_like(first_bad, step), first_bad)
                bad_logits = torch.where(
                    newly_bad, ~torch.isfinite(s_logits.detach()).all(), bad_logits
                )
                values = {
                    "loss": total,
                    "top1": (s_logits.detach().argmax(1) == y).float().mean() * 100.0,
                }
                values.update({f"term/{k}": v for k, v in out.terms.items()})
                values.update({f"stat/{k}": v for k, v in out.stat_tensors.items()})
                sums.add(values, n)
            if (step + 1) % cfg.runtime.log_every == 0 or step + 1 == self.steps:
                # device sync (and, data-parallel, two small collectives) every log_every steps:
                # every rank learns of a NaN on any rank and stops at the same point
                bad_step = int(distributed.all_reduce_max(first_bad.clone()))
                if bad_step >= 0:
                    what = ("the student's logits are NaN/Inf" if bool(bad_logits)
                            else "the loss is NaN/Inf")
                    raise self._diverged(epoch, bad_step, what)
                means = sums.means(self.reduce)  # empty while every step so far was skipped
                if ctx.is_main and means:
                    _report(
                        bar,
                        epoch,
                        step,
                        self.steps,
                        means,
                        self.schedule.lr,
                        seen * ctx.world_size,
                        time.perf_counter() - t0,
                    )
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()
        if skipped and skipped >= self.steps:
            raise TrainingDivergedError(
                f"training diverged at epoch {epoch + 1}: all {self.steps} steps had NaN/Inf "
                f"values and were skipped (runtime.nonfinite=skip); {self._kept()}"
            )
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        elapsed = time.perf_counter() - t0
        means = sums.means(self.reduce)
        # Rank 0's buffers become everyone's (BatchNorm statistics without SyncBN, a loss's
        # running thresholds), so what is evaluated and saved is the same model on every rank
        # and a resumed run continues from the state an uninterrupted one has here.
        distributed.broadcast_buffers(self.model)
        distributed.broadcast_buffers(self.loss)
        out_row = {"lr": lr0, "train/loss": means.pop("loss"), "train/top1": means.pop("top1")}
        out_row.update({f"train/{k}": v for k, v in means.items()})
        if skip_mode:
            out_row["train/skipped_steps"] = skipped
        images = seen * ctx.world_size  # every rank sees as many samples
        out_row.update(
            {"time/epoch_s": elapsed, "time/images_per_s": images / max(elapsed, 1e-9)}
        )
        return out_row

    def _forward(self, x: Tensor, t_logits: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """Student logits (and the live teacher's, unless they come from the cache)."""
        with self.ctx.autocast():
            if self.teacher is not None and self.cache is None:
                with torch.no_grad():
                    t_logits = self.teacher(x)
            return self.forward(x), t_logits

    def _backward(self, total: Tensor) -> None:
        """Gradients of ``total`` (DDP averages the model's; the loss module's are averaged here)."""
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(total).backward()
        if self.loss_params:
            distributed.average_gradients(self.loss_params)

    def _apply(self) -> None:
        """The optimizer step (through the fp16 scaler, if on) and the next learning rate."""
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.schedule.step()

    def _step(
        self,
        x: Tensor,
        t_logits: Tensor | None,
        y: Tensor,
        epoch: int,
        step: int,
        first_bad: Tensor,
    ) -> tuple[Any, Tensor]:
        """One training step, ``runtime.nonfinite='stop'``: NaN is detected without a sync."""
        s_logits, t_logits = self._forward(x, t_logits)
        self.loss.validate = not self.inputs_checked
        try:
            out = self.loss(s_logits, t_logits, y, epoch=epoch + step / self.steps)
            self.inputs_checked = True
        except ValueError as exc:
            if not bool(torch.isfinite(s_logits).all()):
                # A NaN loss at an earlier step poisoned the weights: report that step.
                bad_step = int(first_bad)
                what = (
                    "the loss is NaN/Inf" if bad_step >= 0 else "the student's logits are NaN/Inf"
                )
                raise self._diverged(epoch, bad_step if bad_step >= 0 else step, what) from None
            raise ValueError(f"epoch {epoch + 1}, step {step + 1}: {exc}") from exc
        self._backward(out.total)
        self._apply()
        return out, s_logits

    def _guarded_step(
        self, x: Tensor, t_logits: Tensor | None, y: Tensor, epoch: int, step: int
    ) -> tuple[Any, Tensor] | None:
        """One step, ``runtime.nonfinite='skip'``: ``None`` if it was skipped.

        A step is skipped — no optimizer update, BatchNorm and loss buffers restored to their
        values before it — when the student's logits, the loss or (without fp16 loss scaling,
        which has its own skipping) a gradient is NaN/Inf. That costs a device sync per step,
        and a collective per check when data-parallel, so that every rank skips together.
        """
        buffers = [b.detach().clone() for m in (self.model, self.loss) for b in m.buffers()]

        def skip(what: str) -> None:
            self.optimizer.zero_grad(set_to_none=True)
            with torch.no_grad():
                for b, saved in zip(
                    (b for m in (self.model, self.loss) for b in m.buffers()), buffers
                ):
                    b.copy_(saved)
            self.schedule.step()  # the schedule counts iterations, skipped ones included
            logger.warning(
                "epoch %d, step %d/%d: %s; step skipped (runtime.nonfinite=skip)",
                epoch + 1,
                step + 1,
                self.steps,
                what,
            )

        s_logits, t_logits = self._forward(x, t_logits)
        if self._any_rank(~torch.isfinite(s_logits.detach()).all()):
            skip("the student's logits are NaN/Inf")
            return None
        try:
            out = self.loss(s_logits, t_logits, y, epoch=epoch + step / self.steps)
        except ValueError as exc:  # not a NaN in the student: bad data or a broken teacher
            raise ValueError(f"epoch {epoch + 1}, step {step + 1}: {exc}") from exc
        if self._any_rank(~torch.isfinite(out.total.detach())):
            skip("the loss is NaN/Inf")
            return None
        self._backward(out.total)
        if not self.scaler.is_enabled():
            grads = [
                p.grad
                for group in self.optimizer.param_groups
                for p in group["params"]
                if p.grad is not None
            ]
            finite = torch.stack([torch.isfinite(g).all() for g in grads]).all() if grads else None
            if finite is not None and self._any_rank(~finite):
                skip("a gradient is NaN/Inf")
                return None
        self._apply()
        return out, s_logits

    def _any_rank(self, flag: Tensor) -> bool:
        """``flag`` (a 0-d bool tensor) on this rank or, data-parallel, on any rank."""
        value = flag.to(torch.long).reshape(())
        if self.ctx.distributed:
            value = distributed.all_reduce_max(value.clone())
        return bool(value)

    def _augment(self, x: Tensor, gen: torch.Generator) -> Tensor:
        """The training transform of this rank's batch ``x`` (already on the device).

        Data-parallel: the crop/flip parameters of the global batch are drawn (the same on every
        rank) and this rank keeps rows ``rank, rank + W, ...`` — the rows it holds of the global
        batch, since the loader shards sample positions round-robin. The images are then exactly
        those one process with the global batch would train on.
        """
        tf, world = self.train_tf, self.ctx.world_size
        if world == 1 or not (tf.augments and tf.training):
            return tf(x, generator=gen)
        top, left, flip = tf.sample_params(x.shape[0] * world, gen)
        mine = slice(self.ctx.rank, None, world)
        x = x.to(torch.float32).div_(255.0) if x.dtype == torch.uint8 else x.to(torch.float32)
        x = tf.apply_params(x, top[mine], left[mine], flip[mine])
        return self.eval_tf(x)  # normalisation only: an evaluation transform never augments

    def _kept(self) -> str:
        """What the run folder still holds (for error messages)."""
        last = self.run_dir / "last.pt"
        if self.saved_epoch > 0 and last.exists():
            return f"the last good checkpoint {last} (epoch {self.saved_epoch}) is untouched"
        return "no checkpoint was written"

    def _diverged(self, epoch: int, step: int, what: str) -> TrainingDivergedError:
        return TrainingDivergedError(
            f"training diverged at epoch {epoch + 1}, step {step + 1} of {self.steps}: "
            f"{what}; {self._kept()}. "
            "Try a lower solver.lr, more warm-up (solver.warmup_epochs) or runtime.amp=off, or "
            "continue with --resume runtime.nonfinite=skip to skip such steps."
        )

    def write_failed(self, exc: OSError) -> OSError:
        """A failed write of the run folder, with what is kept and how to continue."""
        where = f"cannot write {exc.filename}: " if exc.filename else ""
        then = "continue the run with --resume" if self.saved_epoch else "start the run again"
        return OSError(
            exc.errno,
            f"{where}{exc.strerror or exc}; {self._kept()}. Free disk space or make the folder "
            f"writable, then {then}",
        )

    # ------------------------------------------------------------------ evaluation
    def evaluate_splits(self) -> dict[str, dict[str, float]]:
        """Metrics of every evaluation split (each rank evaluates its shard; sums are reduced)."""
        return {split: self.evaluate(self.eval_model, split) for split in self.eval_loaders}

    def evaluate(self, model: nn.Module, split: str) -> dict[str, float]:
        r = self.cfg.runtime
        return evaluate(
            model,
            self.eval_loaders[split],
            self.eval_tf,
            self.ctx.device,
            amp=r.amp,
            channels_last=r.channels_last,
            max_samples=self.eval_counts[split] if self.ctx.distributed else None,
            reduce=self.reduce,
        )


def _progress(cfg: Config, ctx: RuntimeContext, epoch: int, steps: int) -> Any:
    if not (cfg.runtime.progress and ctx.is_main and sys.stderr.isatty()):
        return None
    from tqdm import tqdm

    return tqdm(
        total=steps,
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


def _summary(run: _Run, epochs_done: int, last: dict[str, Any], wall: float) -> dict[str, Any]:
    return {
        "name": run.cfg.experiment.name,
        "run_dir": str(run.run_dir),
        "model": run.cfg.model.name,
        "teacher": run.cfg.teacher.name if run.teacher is not None else None,
        "teacher_test_top1": run.teacher_top1,
        "loss": run.cfg.loss.name,
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
        run = _Run(cfg, resume)
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
        return _train_loop(run, cfg, stop_after, t_start, mlog)
    finally:
        if mlog is not None:
            mlog.close()
        if handler is not None:
            logger.removeHandler(handler)
            handler.close()
        logger.setLevel(level)
        ctx.close()


def _train_loop(
    run: _Run,
    cfg: Config,
    stop_after: int | None,
    t_start: float,
    mlog: MetricsLog | None,
) -> dict[str, Any]:
    ctx, run_dir = run.ctx, run.run_dir
    if ctx.is_main:
        save_config(cfg, run_dir / "config.yaml")
    if run.teacher is not None and run.teacher_top1 is None and "test" in run.eval_loaders:
        rt = run.evaluate(run.teacher, "test")
        run.teacher_top1 = rt["top1"]
        logger.info("teacher %s: test top-1 %.2f%%", cfg.teacher.name, rt["top1"])
    # rank 0 reads (it may be rewriting metrics.jsonl for the resume), the others receive
    last: dict[str, Any] = distributed.broadcast_object(
        dict(_lookup_last(run_dir, run.start_epoch)) if ctx.is_main else None
    )
    done = run.start_epoch
    end = cfg.solver.epochs if stop_after is None else min(cfg.solver.epochs, stop_after)
    for epoch in range(run.start_epoch, end):
        row: dict[str, Any] = {"epoch": epoch + 1}
        row.update(run.train_epoch(epoch))
        if (epoch + 1) % cfg.runtime.eval_every == 0 or epoch + 1 == cfg.solver.epochs:
            results = run.evaluate_splits()
            for split, res in results.items():
                row.update({f"{split}/{k}": v for k, v in res.items() if k != "n"})
            test = results.get("test", {})  # absent with data.eval_test=false
            test1 = test.get("top1")
            if test1 is not None:
                run.max_test_top1 = (
                    test1 if run.max_test_top1 is None else max(run.max_test_top1, test1)
                )
            chosen = results[run.best_split]["top1"]
            improved = run.best["top1"] is None or chosen > run.best["top1"]
            if improved:
                run.best.update(
                    epoch=epoch + 1, top1=chosen, test_top1=test1, test_top5=test.get("top5")
                )
            last = {
                "epoch": epoch + 1,
                **{
                    f"{s}_{k}": v
                    for s, res in results.items()
                    for k, v in res.items()
                    if k in ("top1", "top5")
                },
            }
        else:
            improved = False
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
        rng_ranks = distributed.gather_object(capture_rng_state())  # a collective: all ranks
        if ctx.is_main:
            state = run._state(epoch + 1, row, wall, rng_ranks)
            assert mlog is not None
            # Order matters for a kill between two writes: the metrics row first (a resume
            # drops rows newer than last.pt), then last.pt, then best.pt (a resume finds last.pt
            # naming itself the best epoch and restores a best.pt that missed it; see
            # _restore_best).
            try:
                mlog.write(row)
                save_checkpoint(state, run_dir / "last.pt")
                run.saved_epoch = epoch + 1
                if improved:
                    save_checkpoint(state, run_dir / "best.pt")
            except OSError as exc:
                raise run.write_failed(exc) from None
            logger.info("epoch %d/%d: %s", epoch + 1, cfg.solver.epochs, _brief(row))
        done = epoch + 1
    summary = _summary(run, done, last, run.wall_before + time.perf_counter() - t_start)
    if ctx.is_main:
        try:
            atomic_write_text(json.dumps(summary, indent=2) + "\n", run_dir / "summary.json")
        except OSError as exc:
            raise run.write_failed(exc) from None
    return summary


def _lookup_last(run_dir: Path, epoch: int) -> dict[str, Any]:
    """The "last" summary entry as of a resumed checkpoint (from its metrics.jsonl row)."""
    from .runlog import read_metrics

    if epoch == 0:
        return {}
    for row in reversed(read_metrics(run_dir / "metrics.jsonl")):
        if row.get("epoch", 0) <= epoch and ("test/top1" in row or "val/top1" in row):
            return {
                "epoch": row["epoch"],
                **{
                    k.replace("/", "_"): row[k]
                    for k in row
                    if k.split("/")[-1] in ("top1", "top5") and k.split("/")[0] in ("test", "val")
                },
            }
    return {}


def _brief(row: dict[str, Any]) -> str:
    keys = ("train/loss", "train/top1", "val/top1", "test/top1", "best/top1", "time/epoch_s")
    return ", ".join(f"{k} {row[k]:.4g}" for k in keys if isinstance(row.get(k), (int, float)))
