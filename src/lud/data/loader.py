"""Batch iteration: index slicing for in-memory data, a torch DataLoader for image files.

Both paths draw the same sample order: ``torch.randperm(N)`` from a generator seeded with
``seed + epoch`` (exactly what ``torch.utils.data.DistributedSampler`` does), padded by repeating
its head to a multiple of ``world_size`` and sharded ``rank::world_size``. Every rank therefore
sees the same number of batches; with ``world_size > 1`` up to ``world_size − 1`` samples appear
twice per epoch (as with DistributedSampler) — :meth:`BatchLoader.indices` tells which.

Call :meth:`BatchLoader.set_epoch` before each epoch; without it every pass repeats the same order.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from .bundle import ArrayDataset
from .imagefolder import ImageFileDataset

__all__ = ["BatchLoader", "epoch_indices", "make_loader"]


def epoch_indices(
    n: int, *, shuffle: bool, seed: int, epoch: int, rank: int = 0, world_size: int = 1
) -> Tensor:
    """The int64 sample indices rank ``rank`` visits in ``epoch`` (DistributedSampler order)."""
    if shuffle:
        g = torch.Generator()
        g.manual_seed(seed + epoch)
        order = torch.randperm(n, generator=g)
    else:
        order = torch.arange(n)
    total = math.ceil(n / world_size) * world_size
    pad = total - n
    if pad:
        order = torch.cat([order, order.repeat(math.ceil(pad / n))[:pad]])
    return order[rank:total:world_size]


class _EpochSampler(Sampler):
    """This rank's indices for the current epoch; for image files ``(index, seed)`` pairs so that
    crops are reproducible. Holds the order state itself (no reference back to the BatchLoader:
    a cycle would leave persistent DataLoader workers to the garbage collector, whose shutdown
    then waits out a 5 s join timeout)."""

    def __init__(
        self, n: int, *, shuffle: bool, seed: int, rank: int, world_size: int, with_seeds: bool
    ) -> None:
        self.n, self.shuffle, self.seed = n, shuffle, seed
        self.rank, self.world_size, self.with_seeds = rank, world_size, with_seeds
        self.epoch = 0

    def __len__(self) -> int:
        return math.ceil(self.n / self.world_size)

    def indices(self) -> Tensor:
        return epoch_indices(
            self.n,
            shuffle=self.shuffle,
            seed=self.seed,
            epoch=self.epoch,
            rank=self.rank,
            world_size=self.world_size,
        )

    def __iter__(self) -> Iterator[int | tuple[int, int]]:
        idx = self.indices().tolist()
        if not self.with_seeds:
            return iter(idx)
        # One seed per data-set index (not per position), so a sample's crop in an epoch does
        # not depend on world_size or batch size.
        seeds = np.random.default_rng([self.seed, self.epoch]).integers(0, 2**63 - 1, size=self.n)
        return iter([(i, int(seeds[i])) for i in idx])


class BatchLoader:
    """Iterable of ``(images, labels)`` CPU batches; ``len()`` is the number of batches per epoch.

    Images come out as stored (uint8 ``B×C×H×W``); normalise and augment them on the device with
    :class:`lud.data.augment.BatchTransform`. ``num_workers`` applies to image-file data only —
    in-memory batches are cut in the main process, which is faster than any worker hand-off.
    """

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int,
        *,
        shuffle: bool,
        drop_last: bool = False,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        num_workers: int = 0,
        pin_memory: bool = False,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(
                f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}"
            )
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        if len(dataset) < 1:  # type: ignore[arg-type]
            raise ValueError("cannot load batches from an empty data set")
        self.dataset = dataset
        self.batch_size = int(batch_size)
        self.drop_last = bool(drop_last)
        self.pin_memory = bool(pin_memory)
        self._order = _EpochSampler(
            len(dataset),  # type: ignore[arg-type]
            shuffle=bool(shuffle),
            seed=int(seed),
            rank=int(rank),
            world_size=int(world_size),
            with_seeds=isinstance(dataset, ImageFileDataset),
        )
        self._torch_loader: DataLoader | None = None
        if not isinstance(dataset, ArrayDataset):
            self._torch_loader = DataLoader(
                dataset,
                batch_size=self.batch_size,
                sampler=self._order,
                num_workers=num_workers,
                pin_memory=pin_memory,
                drop_last=drop_last,
                persistent_workers=num_workers > 0,
            )

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose shuffle order (``seed + epoch``) the next pass uses."""
        self._order.epoch = int(epoch)

    @property
    def epoch(self) -> int:
        return self._order.epoch

    @property
    def seed(self) -> int:
        return self._order.seed

    @property
    def rank(self) -> int:
        return self._order.rank

    @property
    def world_size(self) -> int:
        return self._order.world_size

    @property
    def num_samples(self) -> int:
        """Samples this rank visits per epoch, padding included."""
        return len(self._order)

    def indices(self) -> Tensor:
        """This rank's sample indices for the current epoch, in visiting order."""
        return self._order.indices()

    def __len__(self) -> int:
        n = self.num_samples
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        if self._torch_loader is not None:
            yield from self._torch_loader
            return
        ds = self.dataset
        assert isinstance(ds, ArrayDataset)
        idx = self.indices()
        pin = self.pin_memory and torch.cuda.is_available()
        for b in range(len(self)):
            sel = idx[b * self.batch_size : (b + 1) * self.batch_size]
            x, y = ds.images.index_select(0, sel), ds.labels.index_select(0, sel)
            if pin:
                x, y = x.pin_memory(), y.pin_memory()
            yield x, y


def make_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    shuffle: bool,
    drop_last: bool = False,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    num_workers: int = 0,
    pin_memory: bool = False,
) -> BatchLoader:
    """A :class:`BatchLoader` over ``dataset`` (see the module docstring for order and sharding)."""
    return BatchLoader(
        dataset,
        batch_size,
        shuffle=shuffle,
        drop_last=drop_last,
        seed=seed,
        rank=rank,
        world_size=world_size,
        num_workers=num_workers,
        pin_memory=pin_memory,
    )
