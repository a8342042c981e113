"""RandAugment(n, m) on a whole batch, on the batch's device: the strong view of two-view recipes.

Each sample draws its own ``n`` operations uniformly (with replacement) from torchvision's
RandAugment list and applies each at magnitude bin ``m`` of ``num_magnitude_bins = 31``, with a
random sign for the signed ones — torchvision ``transforms.v2.RandAugment(num_ops=n,
magnitude=m)`` per image (its interpolation ``NEAREST``, fill 0):

==================  =========================================  ======
operation           magnitude at bin m (of 0…30)                signed
==================  =========================================  ======
Identity            —                                           —
ShearX, ShearY      0.3·m/30 (shear factor)                     yes
TranslateX, -Y      (150/331)·W·m/30 (·H for Y) pixels          yes
Rotate              30°·m/30                                    yes
Brightness, Color,  factor 1 + 0.9·m/30                         yes
Contrast, Sharpness
Posterize           8 − round(m / 7.5) bits                     no
Solarize            threshold 1 − m/30                          no
AutoContrast        —                                           —
Equalize            —                                           —
==================  =========================================  ======

Batched: for each of the ``n`` positions the samples that drew the same (operation, sign) are
transformed together by one ``torchvision.transforms.v2.functional`` call, so a 64-image batch
costs at most 2·14 calls per position instead of 64. Input and output: float images on the
``[0, 1]`` scale (before normalisation), ``B×C×H×W``; dtype and shape are kept. The random draws
(operations, then signs) come from the ``generator`` passed in — the one the batch transform
already uses — and are read back to the host once per batch (one device sync on a GPU).

Measured cost (this project's 2-core CPU, shared: load average ~8 from other jobs; torch 2.14.1,
torchvision 0.29.1, ``torch.set_num_threads(2)``; 64 random images 3×32×32, n = 2, m = 10, a
seeded generator, 3 warm-up batches then 20 timed with ``time.perf_counter``): fastest batch
14 ms, median 43–116 ms over two runs (the spread is the contention). For scale: the crop+flip
of the weak view is ~1.4 ms per 64 images (1.1 s per CIFAR epoch, docs/environment.md).

The released LUD and MLKD code use a different, FixMatch-style "RandAugment(2, 10)": PIL
operations at a *random* magnitude each (``m`` is ignored there), plus a Cutout of up to half the
image side on every strong image. This module implements the torchvision definition; the
difference is one of augmentation policy, not of the losses.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["MAX_MAGNITUDE", "MEASURED_MS_PER_BATCH", "OPS", "BatchRandAugment", "check_randaugment"]

MAX_MAGNITUDE = 30  # torchvision's num_magnitude_bins = 31: bins 0..30
MEASURED_MS_PER_BATCH = 14.0  # fastest of 20 batches, see the module docstring
OPS = (
    "identity", "shear_x", "shear_y", "translate_x", "translate_y", "rotate", "brightness",
    "color", "contrast", "sharpness", "posterize", "solarize", "autocontrast", "equalize",
)
_SIGNED = {"shear_x", "shear_y", "translate_x", "translate_y", "rotate", "brightness", "color",
           "contrast", "sharpness"}


def _torchvision():  # noqa: ANN202 - (functional module, NEAREST)
    """torchvision's v2 functional ops, imported on first use (an optional dependency)."""
    try:
        from torchvision.transforms.v2 import InterpolationMode
        from torchvision.transforms.v2 import functional as tf
    except ImportError as exc:  # pragma: no cover - depends on the installation
        raise ImportError(
            f"RandAugment needs torchvision: pip install 'lud[vision]' (import failed: {exc})"
        ) from exc
    return tf, InterpolationMode.NEAREST


def check_randaugment(num_ops: object, magnitude: object) -> tuple[int, int]:
    """``(num_ops, magnitude)`` as ints; ``ValueError`` naming the bad one.

    ``num_ops`` must be an integer >= 0, ``magnitude`` an integer in ``[0, 30]``.
    """
    for name, value in (("num_ops", num_ops), ("magnitude", magnitude)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"RandAugment {name} must be an integer, got {value!r}")
    assert isinstance(num_ops, int) and isinstance(magnitude, int)
    if num_ops < 0:
        raise ValueError(f"RandAugment num_ops must be >= 0, got {num_ops}")
    if not 0 <= magnitude <= MAX_MAGNITUDE:
        raise ValueError(f"RandAugment magnitude must lie in [0, {MAX_MAGNITUDE}], got {magnitude}")
    return num_ops, magnitude


def _apply(op: str, x: Tensor, m: int, sign: float) -> Tensor:
    """Operation ``op`` at magnitude bin ``m`` on the sub-batch ``x`` (float, [0, 1])."""
    TF, _NEAREST = _torchvision()  # noqa: N806 - the usual alias of the functional module
    f = m / MAX_MAGNITUDE
    h, w = x.shape[-2:]
    if op == "identity":
        return x
    if op in ("shear_x", "shear_y"):
        deg = math.degrees(math.atan(sign * 0.3 * f))
        shear = [deg, 0.0] if op == "shear_x" else [0.0, deg]
        return TF.affine(x, angle=0.0, translate=[0, 0], scale=1.0, shear=shear,
                         interpolation=_NEAREST, fill=0.0, center=[0, 0])
    if op in ("translate_x", "translate_y"):
        size = w if op == "translate_x" else h
        shift = int(sign * 150.0 / 331.0 * size * f)
        move = [shift, 0] if op == "translate_x" else [0, shift]
        return TF.affine(x, angle=0.0, translate=move, scale=1.0, shear=[0.0, 0.0],
                         interpolation=_NEAREST, fill=0.0)
    if op == "rotate":
        return TF.rotate(x, sign * 30.0 * f, interpolation=_NEAREST, fill=0.0)
    factor = 1.0 + sign * 0.9 * f
    if op == "brightness":
        return TF.adjust_brightness(x, factor)
    if op == "color":
        return TF.adjust_saturation(x, factor) if x.shape[1] == 3 else x
    if op == "contrast":
        return TF.adjust_contrast(x, factor)
    if op == "sharpness":
        return TF.adjust_sharpness(x, factor)
    if op == "posterize":
        return TF.posterize(x, int(8 - round(m / ((MAX_MAGNITUDE) / 4))))
    if op == "solarize":
        return TF.solarize(x, 1.0 - f)
    if op == "autocontrast":
        return TF.autocontrast(x)
    if op == "equalize":
        return TF.equalize(x)
    raise AssertionError(op)  # pragma: no cover - OPS is closed


class BatchRandAugment(nn.Module):
    """RandAugment(``num_ops``, ``magnitude``) applied per sample to a ``B×C×H×W`` batch.

    Args:
        num_ops: operations per image (``n``), integer >= 0; 0 = identity.
        magnitude: magnitude bin (``m``), integer in ``[0, 30]``.

    ``forward(x, generator=None)``: ``x`` float on ``[0, 1]``; draws from ``generator`` (any
    device) or the global RNG of the batch's device. Always applies (a strong view is only built
    for training steps; there is no eval-mode bypass to forget).
    """

    def __init__(self, num_ops: int = 2, magnitude: int = 10) -> None:
        super().__init__()
        self.num_ops, self.magnitude = check_randaugment(num_ops, magnitude)
        _torchvision()  # fail at construction, before training starts, if it is missing

    def extra_repr(self) -> str:
        return f"num_ops={self.num_ops}, magnitude={self.magnitude}"

    def sample_params(
        self, batch: int, generator: torch.Generator | None = None, device: torch.device | str | None = None
    ) -> tuple[Tensor, Tensor]:
        """``(ops (B, n) indices into OPS, signs (B, n) of ±1)``, drawn in that order."""
        dev = generator.device if generator is not None else torch.device(device or "cpu")
        ops = torch.randint(0, len(OPS), (batch, self.num_ops), generator=generator, device=dev)
        signs = torch.rand(batch, self.num_ops, generator=generator, device=dev) < 0.5
        return ops, torch.where(signs, -1.0, 1.0)

    def apply_params(self, x: Tensor, ops: Tensor, signs: Tensor) -> Tensor:
        """Apply the drawn operations; samples sharing (operation, sign) go through together."""
        ops_h, signs_h = ops.cpu(), signs.cpu()  # one sync: the grouping is host logic
        out = x.clone()
        for k in range(ops_h.shape[1]):
            keys = ops_h[:, k] * 2 + (signs_h[:, k] > 0).long()
            for key in torch.unique(keys).tolist():
                op = OPS[key // 2]
                if op == "identity":
                    continue
                sign = 1.0 if key % 2 else -1.0
                idx = (keys == key).nonzero().squeeze(1).to(x.device)
                out[idx] = _apply(op, out[idx], self.magnitude, sign).clamp_(0.0, 1.0)
        return out

    def forward(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        if not isinstance(x, Tensor) or x.dim() != 4 or not x.is_floating_point():
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"BatchRandAugment expects a float B×C×H×W batch on [0, 1], got {shape}")
        if self.num_ops == 0 or x.shape[0] == 0:
            return x
        return self.apply_params(x, *self.sample_params(x.shape[0], generator, x.device))
