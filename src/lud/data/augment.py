"""Whole-batch augmentation and normalisation, run on whatever device the batch lives on.

Per-image PIL augmentation cost 13.6 s per CIFAR epoch on this project's CPU, a batched tensor
crop+flip 1.1 s (docs/environment.md), so augmentation of in-memory data happens here, on the batch.

Augmentation kinds (``augment``):

=========== ==================================================================================
``cifar``   random crop back to H×W from the image zero-padded by 4 pixels, then a horizontal
            flip with probability ½ — torchvision ``RandomCrop(32, padding=4)`` +
            ``RandomHorizontalFlip`` as in the CIFAR recipe.
``fashion`` padding 2, with flip: Fashion-MNIST garments are mirror-symmetric classes.
``mnist``   padding 2, no flip: a mirrored digit is not the same digit (and 2/5, 6/9-like
            confusions would be taught), so digits are only shifted.
``tiny``    padding 8, with flip (the CIFAR policy scaled to 64×64 Tiny-ImageNet).
``imagenet`` nothing here: RandomResizedCrop + flip are applied per image while decoding.
``none``    nothing.
=========== ==================================================================================

The padding is zero on the ``[0, 1]`` pixel scale (black), i.e. applied before normalisation,
matching torchvision's ``fill=0`` on the PIL image.

Two views (``strong=BatchRandAugment(n, m)``, :mod:`lud.data.randaugment`):
:meth:`BatchTransform.two_views` returns ``(weak, strong)`` — the weak view is exactly what
``forward`` returns; the strong view has its own crop/flip draw followed by RandAugment, as the
released MLKD and LUD code build it (two independent transform pipelines on the same image).
Draw order from the one generator: weak crop/flip, strong crop/flip, RandAugment.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .bundle import DataBundle
from .randaugment import BatchRandAugment

__all__ = ["AUGMENTATIONS", "BATCH_AUGMENTATIONS", "BatchTransform", "make_batch_transform"]

# kind -> (padding, horizontal flip) for the batch-level crop; imagenet/none do nothing here.
BATCH_AUGMENTATIONS: dict[str, tuple[int, bool]] = {
    "cifar": (4, True),
    "fashion": (2, True),
    "mnist": (2, False),
    "tiny": (8, True),
}
AUGMENTATIONS = (*BATCH_AUGMENTATIONS, "imagenet", "none")


class BatchTransform(nn.Module):
    """``uint8``/float ``B×C×H×W`` → normalised float32; augmented when built with ``train=True``.

    Args:
        mean, std: per-channel statistics on the ``[0, 1]`` scale (length C, or 1 to broadcast).
        augment: one of :data:`AUGMENTATIONS`.
        train: whether this transform augments. An augmenting transform also stops augmenting
            after ``.eval()``; an evaluation transform never augments, whatever ``.train()`` says.
        padding, flip: override the kind's crop padding / flip.
        strong: the strong view's extra augmentation (enables :meth:`two_views`).

    ``forward(x, generator=None)``: uint8 input is divided by 255; floating input is taken to be
    on the ``[0, 1]`` scale already. Random draws come from ``generator`` when given (any device;
    the draws are moved to the batch's device), else from the global RNG of the batch's device.
    """

    def __init__(
        self,
        mean: Sequence[float],
        std: Sequence[float],
        augment: str = "none",
        train: bool = False,
        *,
        padding: int | None = None,
        flip: bool | None = None,
        strong: BatchRandAugment | None = None,
    ) -> None:
        super().__init__()
        if augment not in AUGMENTATIONS:
            raise ValueError(f"unknown augment {augment!r}; valid: {', '.join(AUGMENTATIONS)}")
        mean_t = torch.tensor([float(m) for m in mean], dtype=torch.float32)
        std_t = torch.tensor([float(s) for s in std], dtype=torch.float32)
        if mean_t.numel() < 1 or mean_t.shape != std_t.shape:
            raise ValueError(
                f"mean and std need the same non-zero length, got {len(mean)} and {len(std)}"
            )
        if not bool(torch.isfinite(mean_t).all()) or not bool((std_t > 0).all()):
            raise ValueError(
                f"mean must be finite and std > 0, got mean={list(mean)}, std={list(std)}"
            )
        pad, flp = BATCH_AUGMENTATIONS.get(augment, (0, False))
        self.padding = int(pad if padding is None else padding)
        self.flip = bool(flp if flip is None else flip)
        if self.padding < 0:
            raise ValueError(f"padding must be >= 0, got {self.padding}")
        self.augment = augment
        self.augments = bool(train) and (self.padding > 0 or self.flip)
        if strong is not None and not isinstance(strong, BatchRandAugment):
            raise ValueError(f"strong must be a BatchRandAugment or None, got {type(strong).__name__}")
        self.strong = strong
        # Not persistent: constants of the data set, not state to checkpoint.
        self.register_buffer("mean", mean_t.view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", std_t.view(1, -1, 1, 1), persistent=False)

    def extra_repr(self) -> str:
        return (
            f"augment={self.augment!r}, padding={self.padding}, flip={self.flip}, "
            f"augments={self.augments}"
        )

    def sample_params(
        self,
        batch: int,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Per-sample ``(top, left, flip)``: crop offsets into the padded image, in
        ``[0, 2·padding]``, and a bool flip mask. Drawn in this order from ``generator`` (or the
        device's global RNG)."""
        dev = generator.device if generator is not None else torch.device(device or "cpu")
        hi = 2 * self.padding + 1
        top = torch.randint(0, hi, (batch,), generator=generator, device=dev)
        left = torch.randint(0, hi, (batch,), generator=generator, device=dev)
        if self.flip:
            flip = torch.rand(batch, generator=generator, device=dev) < 0.5
        else:
            flip = torch.zeros(batch, dtype=torch.bool, device=dev)
        return top, left, flip

    def apply_params(self, x: Tensor, top: Tensor, left: Tensor, flip: Tensor) -> Tensor:
        """Crop every sample at its own offset from the zero-padded batch and flip where asked.

        One gather over the padded batch: output pixel ``(i, j)`` of sample ``b`` reads padded
        pixel ``(top[b] + i, left[b] + c_b(j))`` with ``c_b(j) = W − 1 − j`` when flipped, else
        ``j`` — crop and flip in a single indexing step, no Python loop over samples.
        """
        b, _, h, w = x.shape
        p = self.padding
        dev = x.device
        top, left, flip = top.to(dev), left.to(dev), flip.to(dev)
        padded = nn.functional.pad(x, (p, p, p, p)) if p else x
        rows = top[:, None] + torch.arange(h, device=dev)[None, :]  # B×H
        cols_fwd = torch.arange(w, device=dev)
        cols = left[:, None] + torch.where(
            flip[:, None], (w - 1) - cols_fwd[None, :], cols_fwd[None, :]
        )
        out = padded[
            torch.arange(b, device=dev)[:, None, None], :, rows[:, :, None], cols[:, None, :]
        ]
        return out.permute(0, 3, 1, 2).contiguous()  # advanced indexing put channels last

    def _to_unit(self, x: Tensor) -> Tensor:
        if not isinstance(x, Tensor) or x.dim() != 4:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"BatchTransform expects a B×C×H×W tensor, got {shape}")
        if x.shape[1] != self.mean.shape[1] and self.mean.shape[1] != 1:
            raise ValueError(
                f"batch has {x.shape[1]} channels but mean/std have {self.mean.shape[1]} entries"
            )
        if x.dtype == torch.uint8:
            return x.to(torch.float32).div_(255.0)
        if x.is_floating_point():
            return x.to(torch.float32)
        raise ValueError(f"BatchTransform expects uint8 or floating input, got {x.dtype}")

    def _crop_flip(self, x: Tensor, generator: torch.Generator | None) -> Tensor:
        if self.augments and self.training and x.shape[0] > 0:
            return self.apply_params(x, *self.sample_params(x.shape[0], generator, x.device))
        return x

    def _normalise(self, x: Tensor) -> Tensor:
        # .to() is a no-op once the module sits on the batch's device; it saves callers a crash
        # when they move batches to the GPU but forget the transform.
        return (x - self.mean.to(x.device)) / self.std.to(x.device)

    def forward(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        x = self._to_unit(x)
        return self._normalise(self._crop_flip(x, generator))

    def two_views(
        self, x: Tensor, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """``(weak, strong)`` normalised views of the same images (see the module docstring).

        The weak view equals ``forward(x, generator)`` for the same generator state. Needs a
        ``strong`` augmentation and training mode; ``ValueError`` otherwise.
        """
        if self.strong is None:
            raise ValueError("two_views needs a strong augmentation (data.strong_augment)")
        if not self.training:
            raise ValueError("two_views is for training steps; this transform is in eval mode")
        x = self._to_unit(x)
        weak = self._crop_flip(x, generator)
        strong = self.strong(self._crop_flip(x, generator), generator)
        return self._normalise(weak), self._normalise(strong)


def make_batch_transform(
    bundle: DataBundle, train: bool, strong: BatchRandAugment | None = None
) -> BatchTransform:
    """The train (augmenting) or evaluation transform for ``bundle``; ``strong`` enables
    :meth:`BatchTransform.two_views` (a trainer passes it only for its training transform)."""
    return BatchTransform(bundle.mean, bundle.std, bundle.augment, train, strong=strong)
