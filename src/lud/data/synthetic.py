"""Synthetic, learnable image data for smoke tests and demos (no files needed).

Each class gets a fixed smooth random template; a sample is its class template plus Gaussian
pixel noise. A small network separates the classes within a few steps, so an end-to-end test can
check that training actually reduces the loss, not only that it runs.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F

from .bundle import ArraySplits

__all__ = ["build_synthetic", "synthetic_arrays"]


def synthetic_arrays(
    num_classes: int,
    n: int,
    *,
    channels: int = 3,
    size: int = 32,
    noise: float = 40.0,
    seed: int = 0,
    template_seed: int = 12345,
) -> tuple[Tensor, Tensor]:
    """``n`` uint8 images ``n×channels×size×size`` and balanced int64 labels (shuffled).

    ``template_seed`` fixes the class templates so that splits drawn with different ``seed`` values
    (train vs test) show the same classes.
    """
    if num_classes < 2 or n < 1 or channels < 1 or size < 1:
        raise ValueError(
            f"synthetic data needs num_classes >= 2, n >= 1, channels >= 1, size >= 1; got "
            f"num_classes={num_classes}, n={n}, channels={channels}, size={size}"
        )
    g = torch.Generator().manual_seed(template_seed)
    coarse = torch.rand(num_classes, channels, 4, 4, generator=g)
    templates = (
        F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False) * 255.0
    )
    rng = np.random.default_rng(seed)
    labels = torch.from_numpy(rng.permutation(np.arange(n) % num_classes)).to(torch.int64)
    gs = torch.Generator().manual_seed(seed)
    pixels = templates[labels] + noise * torch.randn(n, channels, size, size, generator=gs)
    return pixels.round().clamp_(0, 255).to(torch.uint8), labels


def build_synthetic(image_size: int | None = None) -> ArraySplits:
    """The ``"synthetic"`` data set: 10 classes, 3×32×32 (or ``image_size``), 2,000/500 images."""
    size = image_size or 32
    x_train, y_train = synthetic_arrays(10, 2000, size=size, seed=1)
    x_test, y_test = synthetic_arrays(10, 500, size=size, seed=2)
    return ArraySplits(x_train, y_train, x_test, y_test, 10, [f"class_{i}" for i in range(10)])
