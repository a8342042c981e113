"""Evaluate trained models for tables and plots: accuracy, NLL, calibration, per-class accuracy.

One pass of :func:`lud.engine.evaluate` over a split gives top-1/top-5, NLL and the 15-bin ECE;
a tap on its ``loss_fn`` hook collects, in the same pass, what the report needs besides: the
reliability bins (:func:`lud.engine.metrics.ece_bins`) and per-class correct/total counts. All
of it is a few numbers per class and per bin, so it is stored as JSON next to the checkpoint
(``eval_best.json``) instead of keeping logits around (ImageNet logits would be 200 MB).

A cached result is reused while the checkpoint file it came from is unchanged (same size and
modification time), so a resumed or retrained run is evaluated again.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import Config, config_from_dict, validate_config

__all__ = [
    "EVAL_FILE",
    "ModelEval",
    "evaluate_model",
    "evaluate_run",
    "evaluate_teacher",
    "reliability_curve",
]

#: File name of the cached evaluation of a run's best checkpoint.
EVAL_FILE = "eval_best.json"
_DATA_CACHE: dict[tuple[Any, ...], Any] = {}
_DATA_CACHE_SIZE = 2  # an in-memory data set can be large: keep the last two only


@dataclass
class ModelEval:
    """Evaluation of one model on one split.

    Attributes:
        top1, top5: accuracy in percent. nll: mean cross-entropy. ece: 15-bin ECE in [0, 1].
        n: number of samples. split: ``"test"`` or ``"val"``.
        bins: per confidence bin ``[count, sum of confidence, sum of correct]``.
        class_correct, class_total: per-class counts (index = label).
        class_names: names from the data set files, if any.
        source: the checkpoint evaluated; source_stamp: its ``[size, mtime_ns]``.
        epoch: epoch of a lud run checkpoint (``None`` for foreign weight files).
    """

    top1: float
    top5: float
    nll: float
    ece: float
    n: int
    split: str
    bins: list[list[float]]
    class_correct: list[int]
    class_total: list[int]
    class_names: list[str] | None = None
    source: str = ""
    source_stamp: list[int] | None = None
    epoch: int | None = None

    @property
    def class_accuracy(self) -> list[float]:
        """Per-class top-1 in percent (NaN for a class absent from the split)."""
        return [
            100.0 * c / t if t else float("nan")
            for c, t in zip(self.class_correct, self.class_total)
        ]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1) + "\n"

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ModelEval:
        return cls(**raw)


class _Tally:
    """``loss_fn`` for :func:`lud.engine.evaluate` that also counts bins and per-class hits."""

    def __init__(self, num_classes: int) -> None:
        from ..engine.metrics import ECE_BINS

        self.num_classes = num_classes
        self.bins = torch.zeros(ECE_BINS, 3, dtype=torch.float64)
        self.correct = torch.zeros(num_classes, dtype=torch.float64)
        self.total = torch.zeros(num_classes, dtype=torch.float64)

    def __call__(self, logits: Tensor, targets: Tensor) -> Tensor:
        from ..engine.metrics import ece_bins

        # one_hot sums rather than bincount: bincount has no deterministic CUDA kernel.
        onehot = F.one_hot(targets, self.num_classes).double()
        hit = (logits.argmax(dim=1) == targets).double()
        self.total += onehot.sum(0).cpu()
        self.correct += (onehot * hit[:, None]).sum(0).cpu()
        self.bins += ece_bins(logits, targets).cpu()
        return F.cross_entropy(logits, targets)


def _stamp(path: Path) -> list[int]:
    st = path.stat()
    return [int(st.st_size), int(st.st_mtime_ns)]


def _bundle(cfg: Config, split: str) -> Any:
    """The run's data (cached: a bench evaluates many runs on the same data).

    The test split and the normalisation do not depend on the seed, the validation carve-out or
    the training subset, so test evaluations of every seed share one bundle.
    """
    from ..data import build_data

    d = cfg.data
    if split == "test":
        val_split, seed, subset = 0.0, 0, None
    else:
        val_split, seed, subset = d.val_split, cfg.experiment.seed, d.subset
    key = (d.name, d.root, val_split, seed, subset, d.augment, d.image_size,
           repr(sorted(d.options.items())))  # fmt: skip
    if key not in _DATA_CACHE:
        while len(_DATA_CACHE) >= _DATA_CACHE_SIZE:
            _DATA_CACHE.pop(next(iter(_DATA_CACHE)))
        _DATA_CACHE[key] = build_data(
            d.name,
            d.root,
            val_split=val_split,
            seed=seed,
            subset=subset,
            augment=d.augment,
            image_size=d.image_size,
            options=d.options,
        )
    return _DATA_CACHE[key]


def evaluate_model(
    model: nn.Module,
    cfg: Config,
    *,
    split: str = "test",
    device: str | torch.device | None = None,
) -> ModelEval:
    """Evaluate ``model`` on ``split`` of the data described by ``cfg`` (one pass).

    Precision and memory format follow ``cfg.runtime`` (as in training, so top-1 matches the
    trainer's own test evaluation); ``device`` defaults to ``cfg.runtime.device``.
    """
    from ..data import make_batch_transform, make_loader
    from ..engine import evaluate, resolve_device

    if split not in ("test", "val"):
        raise ValueError(f"split must be 'test' or 'val', got {split!r}")
    bundle = _bundle(cfg, split)
    dataset = bundle.test if split == "test" else bundle.val
    if dataset is None:
        raise ValueError(
            f"split 'val' requested but data.val_split is {cfg.data.val_split}: no validation set"
        )
    dev = resolve_device(str(device) if device is not None else cfg.runtime.device)
    model = model.to(dev)
    if cfg.runtime.channels_last:
        model = model.to(memory_format=torch.channels_last)
    tally = _Tally(bundle.num_classes)
    res = evaluate(
        model,
        make_loader(dataset, cfg.data.eval_batch_size, shuffle=False),
        make_batch_transform(bundle, train=False).to(dev),
        dev,
        amp=cfg.runtime.amp,
        channels_last=cfg.runtime.channels_last,
        loss_fn=tally,
    )
    return ModelEval(
        top1=res["top1"],
        top5=res["top5"],
        nll=res["nll"],
        ece=res["ece"],
        n=int(res["n"]),
        split=split,
        bins=tally.bins.tolist(),
        class_correct=[int(v) for v in tally.correct.tolist()],
        class_total=[int(v) for v in tally.total.tolist()],
        class_names=bundle.class_names,
    )


def _read_cache(path: Path, source: Path, split: str) -> ModelEval | None:
    if not path.is_file():
        return None
    try:
        ev = ModelEval.from_dict(json.loads(path.read_text()))
    except (ValueError, TypeError):
        return None  # unreadable or from another version: evaluate again
    if ev.source_stamp != _stamp(source) or ev.split != split:
        return None
    return ev


def evaluate_run(
    run_dir: str | os.PathLike[str],
    *,
    checkpoint: str = "best.pt",
    split: str = "test",
    device: str | None = None,
    cache: bool = True,
) -> ModelEval:
    """Evaluate a run folder's checkpoint (default ``best.pt``) on ``split``.

    The model and data are rebuilt from the configuration stored inside the checkpoint. The
    result is cached in ``run_dir/eval_best.json`` (for ``best.pt`` on the test split).

    Raises:
        FileNotFoundError: no such checkpoint. ValueError: not a lud run checkpoint.
    """
    from ..engine import load_checkpoint
    from ..models import build_model

    run = Path(run_dir)
    ckpt_path = run / checkpoint
    if not ckpt_path.is_file():
        raise FileNotFoundError(f"no checkpoint to evaluate: {ckpt_path} does not exist")
    cacheable = cache and checkpoint == "best.pt" and split == "test"
    cache_path = run / EVAL_FILE
    if cacheable:
        cached = _read_cache(cache_path, ckpt_path, split)
        if cached is not None:
            return cached
    ckpt = load_checkpoint(ckpt_path)
    cfg = config_from_dict(ckpt["config"])
    validate_config(cfg, registries=False)
    shape = tuple(int(v) for v in ckpt["input_shape"])
    model = build_model(
        str(ckpt["model_name"]),
        int(ckpt["num_classes"]),
        in_channels=shape[0],
        input_shape=shape,
        **cfg.model.kwargs,
    )
    model.load_state_dict(ckpt["model"])
    ev = evaluate_model(model, cfg, split=split, device=device)
    if len(ev.class_total) != int(ckpt["num_classes"]):
        raise ValueError(
            f"class-count mismatch: {ckpt_path} has {ckpt['num_classes']} classes, "
            f"the data set has {len(ev.class_total)}"
        )
    ev.source, ev.source_stamp, ev.epoch = str(ckpt_path), _stamp(ckpt_path), int(ckpt["epoch"])
    if cacheable:
        from ..engine.checkpoint import atomic_write_text

        atomic_write_text(ev.to_json(), cache_path)
    return ev


def evaluate_teacher(
    cfg: Config,
    *,
    split: str = "test",
    device: str | None = None,
    cache_path: str | os.PathLike[str] | None = None,
) -> ModelEval:
    """Evaluate the teacher named in ``cfg.teacher`` on ``split`` of ``cfg``'s data.

    Any checkpoint layout :func:`lud.engine.teacher.build_teacher` accepts works (lud runs,
    mdistiller files, raw state dicts). ``cache_path``: JSON cache, reused while the teacher
    file is unchanged.

    Raises:
        ValueError: ``cfg`` names no teacher, or the checkpoint does not fit.
        FileNotFoundError: the teacher checkpoint is missing.
    """
    from ..engine import resolve_device
    from ..engine.runtime import RuntimeContext
    from ..engine.teacher import build_teacher

    t = cfg.teacher
    if t.name is None or not t.checkpoint:
        raise ValueError("the config names no teacher (teacher.name / teacher.checkpoint)")
    src = Path(t.checkpoint).expanduser()
    if not src.is_file():
        raise FileNotFoundError(f"teacher.checkpoint not found: {src}")
    if cache_path is not None:
        cached = _read_cache(Path(cache_path), src, split)
        if cached is not None:
            return cached
    bundle = _bundle(cfg, split)
    dev = resolve_device(device or cfg.runtime.device)
    ctx = RuntimeContext(device=dev, amp=cfg.runtime.amp)
    teacher = build_teacher(t, bundle.num_classes, tuple(bundle.input_shape), ctx)
    ev = evaluate_model(teacher, cfg, split=split, device=dev)
    ev.source, ev.source_stamp = str(src), _stamp(src)
    if cache_path is not None:
        from ..engine.checkpoint import atomic_write_text

        atomic_write_text(ev.to_json(), Path(cache_path))
    return ev


def reliability_curve(bins: list[list[float]] | Tensor) -> dict[str, list[float]]:
    """Per non-empty bin: mean confidence, accuracy (both in [0, 1]) and sample fraction.

    ``bins`` as stored in :class:`ModelEval` (summed over runs if pooling seeds).
    """
    b = torch.as_tensor(bins, dtype=torch.float64)
    if b.dim() != 2 or b.shape[1] != 3:
        raise ValueError(f"bins must have shape (n_bins, 3), got {tuple(b.shape)}")
    count = b[:, 0]
    total = float(count.sum())
    keep = count > 0
    if total == 0:
        return {"confidence": [], "accuracy": [], "fraction": [], "edges_lo": []}
    n_bins = b.shape[0]
    lo = torch.arange(n_bins, dtype=torch.float64) / n_bins
    return {
        "confidence": (b[keep, 1] / count[keep]).tolist(),
        "accuracy": (b[keep, 2] / count[keep]).tolist(),
        "fraction": (count[keep] / total).tolist(),
        "edges_lo": lo[keep].tolist(),
    }
