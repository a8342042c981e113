"""lud.integrations.distributed.average_gradients across two real (gloo) processes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from lud.integrations.distributed import average_gradients

pytestmark = pytest.mark.slow  # spawns two gloo processes


def _worker(rank: int, init_file: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        a, b = torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(()))
        a.grad = torch.full((3,), float(rank + 1))  # ranks hold 1 and 2: the mean is 1.5
        if rank == 0:
            b.grad = torch.tensor(4.0)  # rank 1 has no gradient for b (no valid token): zero
        average_gradients([a, b])
        torch.save({"a": a.grad, "b": b.grad}, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def test_gradients_are_averaged_over_ranks(tmp_path: Path) -> None:
    out = str(tmp_path / "grads")
    mp.spawn(_worker, args=(str(tmp_path / "init"), out), nprocs=2, join=True)
    for rank in (0, 1):
        got = torch.load(f"{out}.{rank}", weights_only=True)
        assert torch.equal(got["a"], torch.full((3,), 1.5))
        assert got["b"].item() == 2.0


def test_a_single_process_is_left_alone() -> None:
    p = torch.nn.Parameter(torch.zeros(2))
    p.grad = torch.ones(2)
    average_gradients([p])
    assert torch.equal(p.grad, torch.ones(2))
