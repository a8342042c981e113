"""The run folder: creating it, resuming from it, and what a checkpoint of a run holds.

Checkpoint/resume in one place. :func:`prepare_run_dir` refuses to overwrite a run and cleans up
after killed writes; :func:`read_resume_checkpoint`, :func:`check_resume_compatible` and
:func:`load_run_state` continue a run from ``last.pt``; :func:`run_state` is what every epoch
saves; :func:`save_config` writes the run's ``config.yaml`` (as given) and
:func:`save_resolved` its ``resolved.yaml`` (the loss parameters resolved, and the version).
Resuming compares the loss's resolved parameters with those ``last.pt`` recorded
(:func:`check_resolved_params`). The order of the writes at an epoch
end (metrics row, ``last.pt``, ``best.pt``) is kept by :mod:`lud.engine.loop`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import yaml

from .. import __version__
from ..config import Config, config_to_dict
from .checkpoint import (
    CHECKPOINT_FORMAT,
    CheckpointError,
    atomic_write_bytes,
    atomic_write_text,
    load_checkpoint,
    remove_stale_temp_files,
)
from .runlog import logger, read_metrics
from .seeding import restore_rng_state

if TYPE_CHECKING:
    import torch
    from torch import nn

    from ..data import DataBundle
    from .optim import LRSchedule
    from .runtime import RuntimeContext

__all__ = [
    "CheckpointedRun",
    "RunFolderError",
    "check_resolved_params",
    "check_resume_compatible",
    "diff_resolved_params",
    "load_run_state",
    "lookup_last",
    "prepare_run_dir",
    "read_resume_checkpoint",
    "run_dir_of",
    "resolved_loss_params",
    "run_state",
    "save_config",
    "save_resolved",
]

# Config entries that must not change between a checkpoint and the run resuming it.
RESUME_KEYS = (
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



class RunFolderError(ValueError):
    """The run folder cannot be used as asked (exists without --resume, or nothing to resume)."""


def run_dir_of(cfg: Config) -> Path:
    """``experiment.output_dir / experiment.name``."""
    return Path(cfg.experiment.output_dir).expanduser() / cfg.experiment.name


def save_config(cfg: Config, path: str | os.PathLike[str]) -> None:
    """Write the resolved configuration as YAML (what the run actually used), atomically."""
    text = yaml.safe_dump(config_to_dict(cfg), sort_keys=False, default_flow_style=None)
    atomic_write_text(text, path)


def resolved_loss_params(loss: Any) -> dict[str, Any] | None:
    """``loss.resolved_params()``; None for a module without it (not a DistillationLoss)."""
    method = getattr(loss, "resolved_params", None)
    return method() if callable(method) else None


def save_resolved(cfg: Config, params: dict[str, Any] | None, path: str | os.PathLike[str]) -> None:
    """Write ``resolved.yaml``: the config with ``loss.params`` = the loss's resolved parameters.

    It loads as a config (``lud train resolved.yaml``) that builds the same loss whatever a later
    version's defaults are; its first line names the version that wrote it.
    """
    raw = config_to_dict(cfg)
    if params is not None:
        raw["loss"]["params"] = params
    text = yaml.safe_dump(raw, sort_keys=False)
    head = (f"# written by lud {__version__}: config.yaml with every loss parameter resolved "
            "(defaults and presets included)\n")
    atomic_write_text(head + text, path)


def diff_resolved_params(
    saved: dict[str, Any], now: dict[str, Any], saved_version: str
) -> list[str]:
    """One line per loss parameter whose recorded value (lud ``saved_version``) differs from the
    one the code builds now, naming the parameter and both values."""
    keys = [*saved, *(k for k in now if k not in saved)]
    return [
        f"loss parameter '{k}': recorded {saved.get(k, '(absent)')!r} (lud {saved_version}) "
        f"vs now {now.get(k, '(absent)')!r} (lud {__version__})"
        for k in keys
        if saved.get(k, _ABSENT) != now.get(k, _ABSENT)
    ]


def check_resolved_params(
    saved: dict[str, Any] | None, now: dict[str, Any] | None, saved_version: str, *, allow: bool
) -> list[str]:
    """Resuming: the loss parameters whose value differs between a checkpoint and the loss built
    today (:func:`diff_resolved_params`).

    Raises :class:`RunFolderError` naming them unless ``allow`` (then they are logged and
    returned). A checkpoint of a version that did not record them (``saved`` None) is logged.
    """
    if saved is None or now is None:
        if saved is None and now is not None:
            logger.warning("the checkpoint (lud %s) records no resolved loss parameters: cannot "
                           "check that the loss is built as it was", saved_version)
        return []
    diffs = diff_resolved_params(saved, now, saved_version)
    if diffs and not allow:
        raise RunFolderError(
            "cannot resume: the loss would be built with other parameters than the checkpoint's "
            "(a default changed, see CHANGELOG.md):\n  " + "\n  ".join(diffs) + "\nSet them in "
            "loss.params to keep the checkpoint's values, or pass --allow-changed-params "
            "(runtime.allow_changed_params=true) to go on with today's."
        )
    for d in diffs:
        logger.warning("resuming with a changed %s", d)
    return diffs


_ABSENT = object()


def prepare_run_dir(run_dir: Path, resume: bool) -> None:
    """Refuse to overwrite checkpoints, create the folder, clear temp files of killed writes."""
    has_ckpt = run_dir.is_dir() and any(run_dir.glob("*.pt"))
    if resume:
        last = run_dir / "last.pt"
        if not last.is_file():
            if has_ckpt:
                hint = ". " + recovery_hint(last)
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
RUN_STATE_KEYS = ("loss", "optimizer", "schedule", "scaler", "best", "max_test_top1", "rng")


def recovery_hint(last: Path) -> str:
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


def restore_best(run_dir: Path, ckpt: dict[str, Any]) -> None:
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


def read_resume_checkpoint(path: Path) -> dict[str, Any]:
    """``last.pt``, verified, on the CPU; a clear :class:`RunFolderError` if it is unusable."""
    try:
        ckpt = load_checkpoint(path, map_location="cpu")
        missing = [k for k in RUN_STATE_KEYS if k not in ckpt]
        if missing:
            raise CheckpointError(
                f"{path} holds no training state ({', '.join(missing)} missing); it can be "
                "evaluated or used as a teacher, not resumed"
            )
    except CheckpointError as exc:
        raise RunFolderError(f"cannot resume: {exc}. {recovery_hint(path)}") from None
    return ckpt


def _lookup(d: dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        d = d.get(part, {}) if isinstance(d, dict) else {}
    return d


def check_resume_compatible(
    saved: dict[str, Any], now: dict[str, Any], num_classes: int | None, ckpt: dict[str, Any]
) -> None:
    """Raise if the run being resumed differs from the checkpoint's (``num_classes``: None
    before the data are loaded)."""
    # loss.params as given: compared value by value after resolution when the checkpoint
    # records the resolved ones (check_resolved_params), so spelling out a default is no change
    keys = [k for k in RESUME_KEYS
            if k != "loss.params" or ckpt.get("resolved_loss_params") is None]
    diffs = [
        f"{k}: checkpoint {_lookup(saved, k)!r} vs now {_lookup(now, k)!r}"
        for k in keys
        if _lookup(saved, k) != _lookup(now, k)
    ]
    if num_classes is not None and int(ckpt["num_classes"]) != num_classes:
        diffs.append(f"num_classes: checkpoint {ckpt['num_classes']} vs data {num_classes}")
    if diffs:
        raise RunFolderError(
            "cannot resume: the config does not match the checkpoint:\n  " + "\n  ".join(diffs)
        )



# ------------------------------------------------------------------ a run's checkpoint
class CheckpointedRun(Protocol):
    """What :func:`run_state` saves of a run and :func:`load_run_state` restores into it: the
    part of :class:`lud.engine.build.Run` a checkpoint holds (declared here so that this module
    does not import the one that builds runs)."""

    cfg: Config
    ctx: RuntimeContext
    bundle: DataBundle
    model: nn.Module
    loss: nn.Module
    optimizer: torch.optim.Optimizer
    schedule: LRSchedule
    scaler: torch.amp.GradScaler
    best: dict[str, Any]
    max_test_top1: float | None
    teacher_top1: float | None
    start_epoch: int
    saved_epoch: int
    wall_before: float


def run_state(
    run: CheckpointedRun, epoch: int, row: dict[str, Any], wall: float, rng_ranks: list[Any]
) -> dict[str, Any]:
    """The checkpoint of ``run`` after ``epoch`` epochs (``rng_ranks``: every rank's RNG state,
    in rank order)."""
    return {
        "format": CHECKPOINT_FORMAT,
        "lud_version": __version__,
        "epoch": epoch,
        "model": run.model.state_dict(),
        "model_name": run.cfg.model.name,
        "num_classes": run.bundle.num_classes,
        "input_shape": list(run.bundle.input_shape),
        "loss": run.loss.state_dict(),
        "resolved_loss_params": run.resolved_loss_params,
        "optimizer": run.optimizer.state_dict(),
        "schedule": run.schedule.state_dict(),
        "scaler": run.scaler.state_dict(),
        "best": dict(run.best),
        "max_test_top1": run.max_test_top1,
        "teacher_top1": run.teacher_top1,
        "rng": rng_ranks[0],
        "rng_ranks": rng_ranks,
        "world_size": run.ctx.world_size,
        "config": config_to_dict(run.cfg),
        "metrics": row,
        "wall_time_s": wall,
    }

def load_run_state(run: CheckpointedRun, path: Path, ckpt: dict[str, Any]) -> None:
    """Put ``last.pt``'s training state into ``run`` (whose modules are built)."""
    # Loaded on the CPU: load_state_dict copies onto the device, without a second GPU copy.
    check_resume_compatible(
        ckpt["config"], config_to_dict(run.cfg), run.bundle.num_classes, ckpt
    )
    saved_world = int(ckpt.get("world_size", 1))
    if saved_world != run.ctx.world_size:
        # The shards, the global batch and the steps per epoch all depend on it.
        raise RunFolderError(
            f"cannot resume: {path} was written by a run of {saved_world} process(es), this "
            f"run has {run.ctx.world_size}; resume with the same number of processes"
        )
    check_resolved_params(
        ckpt.get("resolved_loss_params"), run.resolved_loss_params,
        str(ckpt.get("lud_version", "?")), allow=run.cfg.runtime.allow_changed_params,
    )
    run.model.load_state_dict(ckpt["model"])
    run.loss.load_state_dict(ckpt["loss"])
    run.optimizer.load_state_dict(ckpt["optimizer"])
    run.schedule.load_state_dict(ckpt["schedule"])
    run.scaler.load_state_dict(ckpt["scaler"])
    run.best = dict(ckpt["best"])
    run.max_test_top1 = ckpt["max_test_top1"]
    run.teacher_top1 = ckpt.get("teacher_top1")
    run.start_epoch = run.saved_epoch = int(ckpt["epoch"])
    run.wall_before = float(ckpt.get("wall_time_s", 0.0))
    rngs = ckpt.get("rng_ranks") or [ckpt["rng"]]
    # last: nothing after this may draw random numbers
    restore_rng_state(rngs[run.ctx.rank] if len(rngs) > run.ctx.rank else ckpt["rng"])
    logger.info("resumed %s at epoch %d", path, run.start_epoch)


def lookup_last(run_dir: Path, epoch: int) -> dict[str, Any]:
    """The "last" summary entry as of a resumed checkpoint (from its metrics.jsonl row)."""
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
