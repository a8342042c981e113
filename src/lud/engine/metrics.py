"""Evaluation (top-1/top-5, NLL, ECE) and on-device running sums for training statistics.

Both reduce across data-parallel ranks through an optional ``reduce`` callable (an in-place sum
over ranks, :func:`lud.engine.distributed.all_reduce_sum`): what is summed is counts and sums,
never per-rank means, so the result is that of one process over the union of the ranks' samples.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .faults import fault_point
from .runtime import autocast_context

__all__ = [
    "ECE_BINS",
    "RunningSums",
    "ece_bins",
    "evaluate",
    "expected_calibration_error",
    "predict_logits",
]

#: Equal-width confidence bins of the expected calibration error (Guo et al., 2017).
ECE_BINS = 15


def ece_bins(logits: Tensor, targets: Tensor, n_bins: int = ECE_BINS) -> Tensor:
    """Per-bin ``[count, sum of confidence, sum of correct]`` as an ``(n_bins, 3)`` float64 tensor.

    Bin ``b`` holds confidences in ``(b/n, (b+1)/n]`` (confidence 0 goes to bin 0). A one-hot
    matmul instead of ``scatter_add`` keeps this deterministic on CUDA.
    """
    prob = torch.softmax(logits.float(), dim=1)
    conf, pred = prob.max(dim=1)
    correct = (pred == targets).double()
    idx = (torch.ceil(conf.double() * n_bins).long() - 1).clamp_(0, n_bins - 1)
    onehot = F.one_hot(idx, n_bins).double()
    cols = torch.stack([torch.ones_like(correct), conf.double(), correct], dim=1)
    return onehot.t() @ cols


def expected_calibration_error(bins: Tensor) -> float:
    """ECE in [0, 1] from summed :func:`ece_bins` output: ``Σ_b n_b/N · |acc_b − conf_b|``."""
    count, conf, corr = bins[:, 0], bins[:, 1], bins[:, 2]
    total = float(count.sum())
    if total == 0:
        return float("nan")
    return float((conf - corr).abs().sum() / total)


def _batches(
    model: nn.Module,
    loader: Iterable[tuple[Tensor, Tensor]],
    transform: nn.Module,
    device: torch.device,
    amp: str,
    channels_last: bool,
):
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for images, labels in loader:
                fault_point("eval")
                x = transform(images.to(device, non_blocking=True))
                if channels_last and x.dim() == 4:
                    x = x.contiguous(memory_format=torch.channels_last)
                with autocast_context(device, amp):
                    logits = model(x)
                yield logits.float(), labels.to(device, non_blocking=True).long()
    finally:
        model.train(was_training)


def evaluate(
    model: nn.Module,
    loader: Iterable[tuple[Tensor, Tensor]],
    transform: nn.Module,
    device: torch.device | str,
    *,
    amp: str = "off",
    channels_last: bool = False,
    loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
    max_samples: int | None = None,
    reduce: Callable[[Tensor], Tensor] | None = None,
) -> dict[str, float]:
    """Accuracy and calibration of ``model`` over ``loader`` (eval mode, restored after).

    Data-parallel evaluation: give each rank its shard, ``max_samples`` = its number of distinct
    samples (:func:`lud.engine.distributed.shard_size`; the DistributedSampler padding at the end
    of a shard is then not counted) and ``reduce`` = a sum over ranks. Every rank gets the metrics
    of the whole split, exactly as one process would compute them.

    Returns:
        ``top1``/``top5``: accuracy in percent (top-5 becomes top-C when C < 5);
        ``nll``: mean cross-entropy; ``loss``: mean of ``loss_fn(logits, targets)`` per sample
        batch-weighted (equal to ``nll`` when ``loss_fn`` is None); ``ece``: 15-bin expected
        calibration error in [0, 1]; ``n``: number of samples.
    """
    device = torch.device(device)
    sums = torch.zeros(4, dtype=torch.float64, device=device)  # top1, top5, nll, loss
    bins = torch.zeros(ECE_BINS, 3, dtype=torch.float64, device=device)
    n = 0
    for logits, y in _batches(model, loader, transform, device, amp, channels_last):
        if max_samples is not None:
            if n >= max_samples:
                break
            logits, y = logits[: max_samples - n], y[: max_samples - n]
        k = min(5, logits.shape[1])
        topk = logits.topk(k, dim=1).indices
        hit = topk == y[:, None]
        nll = F.cross_entropy(logits, y, reduction="sum")
        loss = nll if loss_fn is None else loss_fn(logits, y).float() * y.shape[0]
        sums += torch.stack([hit[:, 0].sum(), hit.any(dim=1).sum(), nll, loss]).double()
        bins += ece_bins(logits, y)
        n += int(y.shape[0])
    if reduce is not None:
        count = torch.tensor([float(n)], dtype=torch.float64, device=device)
        packed = reduce(torch.cat([sums, bins.reshape(-1), count]))
        sums, bins, n = packed[:4], packed[4:-1].reshape(ECE_BINS, 3), int(packed[-1])
    if n == 0:
        raise ValueError("evaluate() got an empty loader")
    top1, top5, nll, loss = (sums / n).tolist()
    return {
        "top1": 100.0 * top1,
        "top5": 100.0 * top5,
        "loss": loss,
        "nll": nll,
        "ece": expected_calibration_error(bins.cpu()),
        "n": float(n),
    }


def predict_logits(
    model: nn.Module,
    loader: Iterable[tuple[Tensor, Tensor]],
    transform: nn.Module,
    device: torch.device | str,
    *,
    amp: str = "off",
    channels_last: bool = False,
) -> Tensor:
    """Logits of every sample, in loader order, as one float32 CPU tensor ``(N, C)``."""
    device = torch.device(device)
    out = [
        logits.cpu() for logits, _ in _batches(model, loader, transform, device, amp, channels_last)
    ]
    if not out:
        raise ValueError("predict_logits() got an empty loader")
    return torch.cat(out)


class RunningSums:
    """Sample-weighted sums of scalar tensors kept on the device.

    Adding never synchronises; :meth:`means` converts everything with one transfer, so a
    training step does not stall the GPU for logging.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._keys: list[str] | None = None
        self._sums: Tensor | None = None
        self.count = 0

    def add(self, values: dict[str, Tensor], n: int) -> None:
        """Add ``value * n`` for each entry (``value`` a scalar tensor, mean over ``n`` samples).

        The keys must be the same at every call (one stacked vector, three kernels per step).
        """
        keys = list(values)
        if self._keys is None:
            self._keys = keys
        elif keys != self._keys:
            raise ValueError(
                f"RunningSums keys changed from {self._keys} to {keys}; a loss must report "
                "the same terms and statistics at every step"
            )
        vec = (
            torch.stack([v.detach().float().reshape(()) for v in values.values()]).to(
                self.device, torch.float64
            )
            * n
        )
        self._sums = vec if self._sums is None else self._sums + vec
        self.count += n

    def means(self, reduce: Callable[[Tensor], Tensor] | None = None) -> dict[str, float]:
        """Per-sample means as floats (one device synchronisation).

        ``reduce``: an in-place sum over ranks applied to the sums and the count, so the means
        are over every rank's samples (every rank must call it, with the same keys).
        """
        if self._sums is None or self._keys is None or self.count == 0:
            return {}
        if reduce is None:
            return dict(zip(self._keys, (self._sums / self.count).tolist()))
        count = torch.tensor([float(self.count)], dtype=torch.float64, device=self.device)
        packed = reduce(torch.cat([self._sums, count]))
        return dict(zip(self._keys, (packed[:-1] / packed[-1]).tolist()))
