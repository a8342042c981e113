"""Building a run: the run folder, data loaders, model, teacher, loss and optimizer.

:class:`Run` holds everything one training run needs; its constructor builds it in the order
below (each step one function of this module) and, on ``resume``, loads ``last.pt`` into it
(:func:`lud.engine.runfolder.load_run_state`). One training step is :mod:`lud.engine.step`, the
epoch loop :mod:`lud.engine.loop`.

``build_loss``, ``build_model`` and ``build_data`` are looked up at call time (tests replace
them to inject faults).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from ..config import (
    Config,
    ConfigError,
    config_to_dict,
    strong_augment_params,
    teacher_cache_error,
)
from . import distributed
from .malloc import keep_freed_memory
from .metrics import evaluate
from .optim import LRSchedule, build_optimizer
from .runfolder import (
    RunFolderError,
    check_resume_compatible,
    load_run_state,
    prepare_run_dir,
    read_resume_checkpoint,
    resolved_loss_params,
    restore_best,
    run_dir_of,
)
from .runlog import logger
from .runtime import DeviceBatches, RuntimeContext, setup_runtime
from .seeding import configure_determinism, derive_seed, seed_everything
from .teacher import TeacherLogitCache, build_teacher

if TYPE_CHECKING:
    from collections.abc import Callable

    from ..data import DataBundle
    from ..losses import LossOutput

__all__ = ["Run", "run_data"]

TWO_VIEW_CACHE_ERROR = (
    "runtime.teacher_cache cannot be used with data.strong_augment: the strong view is random on "
    "every step, so cached teacher logits would belong to another image"
)


def run_data(cfg: Config) -> DataBundle:
    """The data a run config describes (the same splits training saw, for a given seed)."""
    from ..data import build_data

    d = cfg.data
    return build_data(d.name, d.root, val_split=d.val_split, seed=cfg.experiment.seed,
                      subset=d.subset, augment=d.augment, image_size=d.image_size,
                      options=d.options)


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


class Run:
    """Everything one training run holds; :func:`lud.engine.train` drives it.

    Set by the build steps below (in this order): ``run_dir``, ``resume_ckpt``
    (:func:`_open_run_folder`); ``bundle``; ``train_loader``, ``eval_loaders``, ``eval_counts``,
    ``train_tf``, ``eval_tf`` (:func:`_build_loaders`); ``model``, ``loss``, ``teacher``,
    ``inputs_checked`` (:func:`_build_modules`); ``steps``, ``optimizer``, ``loss_params``,
    ``reduce``, ``schedule``, ``scaler`` (:func:`_build_optimization`); the progress kept in
    checkpoints (``best``, ``max_test_top1``, ``start_epoch``, ``saved_epoch``, ``wall_before``,
    ``teacher_top1``); ``cache`` (:func:`_build_teacher_cache`); ``ddp``, ``forward`` (the
    module a training step calls), ``eval_model`` and ``loss_fn`` (the loss a training step calls:
    ``loss`` or its compiled wrapper; checkpoints keep ``loss``) (:func:`_wrap_and_compile`).
    ``train_tf.strong`` is the strong view's RandAugment when the run trains on two views
    (``data.strong_augment``); ``grad_norms`` the last step's probe (``runtime.grad_norms_every``).
    """

    def __init__(self, cfg: Config, resume: bool) -> None:
        self.cfg = cfg
        if cfg.runtime.keep_freed_memory:
            keep_freed_memory()
        self.ctx: RuntimeContext = setup_runtime(cfg.runtime)
        try:
            self._build(cfg, resume)
        except BaseException:
            self.ctx.close()
            raise

    def _build(self, cfg: Config, resume: bool) -> None:
        # The order matters: a bad run folder or checkpoint fails before any work, the seeds are
        # set before anything draws random numbers, and the checkpoint is loaded last.
        _open_run_folder(self, cfg, resume)
        configure_determinism(cfg.experiment.deterministic)
        seed_everything(cfg.experiment.seed)
        self.bundle = run_data(cfg)
        if cfg.runtime.teacher_cache and self.bundle.augment != "none":
            raise ConfigError(teacher_cache_error(self.bundle.augment))
        if cfg.runtime.teacher_cache and cfg.data.strong_augment is not None:
            raise ConfigError(TWO_VIEW_CACHE_ERROR)
        _build_loaders(self, cfg)
        _build_modules(self, cfg)
        _build_optimization(self, cfg)
        self.forward: nn.Module = self.model  # set after a resume: DDP broadcasts the weights
        self.eval_model: nn.Module = self.model
        self.loss_fn: Callable[..., LossOutput] = self.loss
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
        self.grad_norms: dict[str, float] | None = None  # set by step.compute_loss when probed
        self.epoch_grad_norms: list[tuple[int, dict[str, float]]] = []  # loop.train_epoch's
        _build_teacher_cache(self, cfg)
        if self.resume_ckpt is not None:
            load_run_state(self, self.run_dir / "last.pt", self.resume_ckpt)
            self.resume_ckpt = None  # the state now lives in the modules
        _wrap_and_compile(self, cfg)

    # ------------------------------------------------------------------ messages
    def kept(self) -> str:
        """What the run folder still holds (for error messages)."""
        last = self.run_dir / "last.pt"
        if self.saved_epoch > 0 and last.exists():
            return f"the last good checkpoint {last} (epoch {self.saved_epoch}) is untouched"
        return "no checkpoint was written"

    def write_failed(self, exc: OSError) -> OSError:
        """A failed write of the run folder, with what is kept and how to continue."""
        where = f"cannot write {exc.filename}: " if exc.filename else ""
        then = "continue the run with --resume" if self.saved_epoch else "start the run again"
        return OSError(
            exc.errno,
            f"{where}{exc.strerror or exc}; {self.kept()}. Free disk space or make the folder "
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


def _open_run_folder(run: Run, cfg: Config, resume: bool) -> None:
    """Prepare the run folder (rank 0) and read and verify ``last.pt`` when resuming."""
    run.run_dir = run_dir_of(cfg)
    error = None
    if run.ctx.is_main:
        try:
            prepare_run_dir(run.run_dir, resume)
        except RunFolderError as exc:
            error = str(exc)
    # Every rank fails with rank 0's message instead of waiting for it in a collective.
    error = distributed.broadcast_object(error)
    if error is not None:
        raise RunFolderError(error)
    # Read (and verify) the checkpoint before any work: a corrupt file fails in a second.
    run.resume_ckpt = read_resume_checkpoint(run.run_dir / "last.pt") if resume else None
    if run.resume_ckpt is not None:
        ckpt = run.resume_ckpt
        check_resume_compatible(ckpt["config"], config_to_dict(cfg), None, ckpt)
        if run.ctx.is_main:
            restore_best(run.run_dir, ckpt)


def _build_loaders(run: Run, cfg: Config) -> None:
    """The training loader (sharded, shuffled), evaluation loaders and batch transforms."""
    from ..data import make_batch_transform, make_loader
    from ..data.bundle import ArrayDataset

    d, dev, bundle = cfg.data, run.ctx.device, run.bundle
    pin = dev.type == "cuda"
    world, rank = run.ctx.world_size, run.ctx.rank
    # Drop the incomplete last batch only if this rank's shard holds at least one full batch.
    drop_last = distributed.shard_size(len(bundle.train), 0, world) >= d.batch_size
    run.train_loader = make_loader(
        bundle.train,
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
    run.eval_loaders = {
        split: make_loader(
            ds,
            d.eval_batch_size,
            shuffle=False,
            rank=rank,
            world_size=world,
            num_workers=d.num_workers,
            pin_memory=pin,
        )
        for split, ds in (("val", bundle.val), ("test", bundle.test))
        if ds is not None and (split != "test" or d.eval_test)
    }
    run.eval_counts = {
        split: distributed.shard_size(len(loader.dataset), rank, world)
        for split, loader in run.eval_loaders.items()
    }
    if cfg.runtime.data_on_device:
        splits = {"train": bundle.train, "val": bundle.val, "test": bundle.test}
        if any(ds is not None and not isinstance(ds, ArrayDataset) for ds in splits.values()):
            raise ConfigError(
                f"runtime.data_on_device needs in-memory data; '{d.name}' is read from "
                "image files (use data.num_workers and pinned memory instead)"
            )
        run.train_loader = _on_device(run.train_loader, dev)
        run.eval_loaders = {k: _on_device(v, dev) for k, v in run.eval_loaders.items()}
    strong = None
    if d.strong_augment is not None:  # two views: the weak view + a RandAugment'ed one
        from ..data.randaugment import BatchRandAugment

        strong = BatchRandAugment(*strong_augment_params(d.strong_augment))
    run.train_tf = make_batch_transform(bundle, train=True, strong=strong).to(dev)
    run.eval_tf = make_batch_transform(bundle, train=False).to(dev)


def _build_modules(run: Run, cfg: Config) -> None:
    """The student, the loss and (if the loss needs one) the frozen teacher."""
    from ..losses import build_loss
    from ..models import build_model

    dev, r = run.ctx.device, cfg.runtime
    nc, shape = run.bundle.num_classes, tuple(run.bundle.input_shape)
    run.model = build_model(
        cfg.model.name, nc, in_channels=shape[0], input_shape=shape, **cfg.model.kwargs
    ).to(dev)
    _dummy_forward(run.model, shape, nc, f"model '{cfg.model.name}'", dev)
    if r.sync_bn and run.ctx.distributed:
        run.model = nn.SyncBatchNorm.convert_sync_batchnorm(run.model)
    run.loss = build_loss(cfg.loss.name, **cfg.loss.params).to(dev)
    # what the loss really runs with (recorded in resolved.yaml, checkpoints, summary.json)
    run.resolved_loss_params = resolved_loss_params(run.loss)
    _check_views(run, cfg)
    # The loss's input validation reads values back from the device (target range, NaN), and
    # would keep a compiled loss eager: the engine checks the first step's inputs itself
    # (lud.engine.step.check_first_step); after that a NaN is caught by the step's own tracking
    # (runtime.nonfinite), not once per step.
    run.loss.validate = False
    run.inputs_checked = False
    run.teacher = None
    if run.loss.requires_teacher:
        run.teacher = build_teacher(cfg.teacher, nc, shape, run.ctx)  # type: ignore[arg-type]
        _dummy_forward(run.teacher, shape, nc, f"teacher '{cfg.teacher.name}'", dev)
    elif cfg.teacher.name is not None:
        logger.warning(
            "loss '%s' uses no teacher: teacher '%s' is ignored",
            cfg.loss.name,
            cfg.teacher.name,
        )
    if r.channels_last:
        run.model.to(memory_format=torch.channels_last)
        if run.teacher is not None:
            run.teacher.to(memory_format=torch.channels_last)


def _check_views(run: Run, cfg: Config) -> None:
    """Two views exactly when the loss takes them (cached teacher logits with two views are
    refused in ``Run._build``, before any data is loaded)."""
    two_views = bool(getattr(run.loss, "two_views", False))
    if two_views and run.train_tf.strong is None:
        raise ConfigError(
            f"loss '{cfg.loss.name}' takes two views (two_views=true): set data.strong_augment "
            "(e.g. {num_ops: 2, magnitude: 10})"
        )
    if not two_views and run.train_tf.strong is not None:
        raise ConfigError(
            f"data.strong_augment is set but loss '{cfg.loss.name}' takes one view: set "
            "loss.params.two_views=true (lud-released, mlkd) or remove data.strong_augment"
        )


def _build_optimization(run: Run, cfg: Config) -> None:
    """Steps per epoch, optimizer, learning-rate schedule, gradient scaler, per-rank seed."""
    run.steps = len(run.train_loader)
    if cfg.runtime.max_steps_per_epoch is not None:
        run.steps = min(run.steps, cfg.runtime.max_steps_per_epoch)
    run.optimizer = build_optimizer(cfg.solver, run.model, run.loss)
    # Outside DDP: averaged by hand after backward (only data-parallel, only if any).
    run.loss_params = (
        [p for p in run.loss.parameters() if p.requires_grad] if run.ctx.distributed else []
    )
    run.reduce = distributed.all_reduce_sum if run.ctx.distributed else None
    run.schedule = LRSchedule(run.optimizer, cfg.solver, run.steps)
    run.scaler = run.ctx.grad_scaler()
    if run.ctx.distributed:
        # Same initial weights on every rank (DDP would broadcast them anyway), but
        # independent dropout streams; data order and augmentation have their own seeds.
        torch.manual_seed(derive_seed(cfg.experiment.seed, 1, run.ctx.rank))


def _build_teacher_cache(run: Run, cfg: Config) -> None:
    """``runtime.teacher_cache``: the teacher's logits of every training sample, computed once."""
    run.cache = None
    if not (cfg.runtime.teacher_cache and run.teacher is not None):
        return
    t0 = time.perf_counter()
    args = (run.teacher, run.bundle.train, run.train_tf, run.ctx, cfg.data.eval_batch_size,
            cfg.runtime.channels_last)
    reused = False
    if cfg.runtime.teacher_cache_dir:
        run.cache, reused = TeacherLogitCache.shared(cfg.runtime.teacher_cache_dir, *args)
    else:
        run.cache = TeacherLogitCache.compute(*args)
    logger.info(
        "teacher logits %s for %d training samples in %.1fs",
        "read from runtime.teacher_cache_dir" if reused else "cached",
        run.cache.logits.shape[0],
        time.perf_counter() - t0,
    )


def _wrap_and_compile(run: Run, cfg: Config) -> None:
    """DDP around the student (after a resume has loaded its weights) and ``torch.compile``."""
    r = cfg.runtime
    run.ddp = distributed.wrap_model(run.model, run.ctx.device)
    if r.compile:
        run.forward = torch.compile(run.ddp)
        # Evaluation runs on the bare module (DDP's forward would broadcast buffers for
        # nothing); in a single process that is the same compiled module.
        run.eval_model = run.forward if run.ddp is run.model else torch.compile(run.model)
    else:
        run.forward = run.ddp
    compile_teacher = r.compile if r.compile_teacher is None else r.compile_teacher
    if run.teacher is not None and compile_teacher:
        run.teacher = torch.compile(run.teacher)
    if r.compile if r.compile_loss is None else r.compile_loss:
        # The wrapper shares the module (parameters, buffers, state_dict): only the call is
        # compiled. step.compute_loss passes the epoch as a tensor, so every step reuses one graph.
        run.loss_fn = torch.compile(run.loss)
