"""A teacher too big for one device, on two real (gloo) CPU processes.

* FSDP (``torch.distributed.fsdp.fully_shard``) shards a GPT-2 teacher's parameters over the two
  ranks; each rank runs it on its own tokens and reduces its own logits to the top-k at once: the
  result equals the unsharded teacher's top-k bit for bit, and no logits cross ranks.
* Vocabulary-parallel logits (each rank holds a slice of the classes) are reduced to the exact
  top-k by :func:`lud.losses.topk_parallel.vocab_parallel_topk`, exchanging ``(N, k)`` candidates.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from lud.losses import TopKTeacher, build_loss
from lud.losses.kd import KDLoss
from lud.losses.topk_parallel import vocab_parallel_topk

N, V, SPLIT = 6, 37, 19


def _full_logits() -> torch.Tensor:
    return torch.randn(N, V, generator=torch.Generator().manual_seed(0)) * 3


_COLLECTIVES = ("all_gather", "all_gather_single", "all_gather_into_tensor", "all_reduce", "broadcast")


class _RecordCollectives:
    """Records the largest tensor (elements) each ``torch.distributed`` collective is given."""

    def __init__(self) -> None:
        self.sizes: list[tuple[str, int]] = []
        self._saved: dict[str, object] = {}

    def __enter__(self) -> _RecordCollectives:
        for name in _COLLECTIVES:
            original = getattr(dist, name, None)
            if original is None:
                continue
            self._saved[name] = original

            def wrapped(*args: object, _original=original, _name=name, **kwargs: object) -> object:
                tensors = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]
                tensors += [t for a in args if isinstance(a, list) for t in a if isinstance(t, torch.Tensor)]
                self.sizes.append((_name, max((t.numel() for t in tensors), default=0)))
                return _original(*args, **kwargs)

            setattr(dist, name, wrapped)
        return self

    def __exit__(self, *exc: object) -> None:
        for name, original in self._saved.items():
            setattr(dist, name, original)

    @property
    def largest(self) -> int:
        return max((n for _, n in self.sizes), default=0)


def _vocab_parallel(rank: int) -> dict[str, torch.Tensor]:
    full = _full_logits()
    lo, hi = (0, SPLIT) if rank == 0 else (SPLIT, V)  # uneven slices: 19 and 18 classes
    out = {}
    for k in (5, 25):  # 25 > a slice's width: the narrow side pads its candidates
        with _RecordCollectives() as comm:
            got = vocab_parallel_topk(full[:, lo:hi], lo, V, k, temperature=2.0)
        out[f"indices{k}"], out[f"log_probs{k}"] = got.indices, got.log_probs
        out[f"largest_collective{k}"] = torch.tensor(comm.largest)
    return out


def _fsdp_teacher(rank: int) -> dict[str, torch.Tensor]:
    transformers = pytest.importorskip("transformers")
    from torch.distributed.fsdp import fully_shard

    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=300, n_positions=32, n_embd=16, n_layer=2, n_head=2,
                                  resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                                  bos_token_id=0, eos_token_id=0)
    sharded = transformers.GPT2LMHeadModel(cfg).eval()
    whole = transformers.GPT2LMHeadModel(cfg).eval()
    whole.load_state_dict(sharded.state_dict())
    for block in sharded.transformer.h:
        fully_shard(block)
    fully_shard(sharded)
    local = sharded.transformer.wte.weight.to_local()
    ids = torch.randint(0, 300, (2, 10), generator=torch.Generator().manual_seed(rank))  # this rank's batch
    with torch.no_grad(), _RecordCollectives() as comm:
        topk = TopKTeacher.from_logits(sharded(input_ids=ids).logits, 16)
    with torch.no_grad():
        ref = TopKTeacher.from_logits(whole(input_ids=ids).logits, 16)
    # a student step on this rank's tokens with the sparse teacher
    student = torch.randn(2, 10, 300, requires_grad=True)
    loss = build_loss("kd", temperature=1.0)(student, topk, ids)
    loss.total.backward()
    return {"indices": topk.indices, "log_probs": topk.log_probs, "ref_indices": ref.indices,
            "ref_log_probs": ref.log_probs, "local_rows": torch.tensor(local.shape[0]),
            "grad_finite": torch.tensor(bool(torch.isfinite(student.grad).all())),
            "fsdp_collectives": torch.tensor(len(comm.sizes)), "fsdp_largest": torch.tensor(comm.largest)}


class _GatheredKD(KDLoss):
    """KD with ``gather=True``: the loss sees every rank's rows (here: of a top-k teacher)."""

    def __init__(self) -> None:
        super().__init__(temperature=1.0)
        self.gather = True


def _gathered_rows(rank: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rank ``rank``'s (student, teacher, targets); rows 3·rank .. 3·rank+2 of one global batch."""
    g = torch.Generator().manual_seed(7)
    s, t = torch.randn(6, V, generator=g), torch.randn(6, V, generator=g) * 2
    y = torch.randint(0, V, (6,), generator=g)
    rows = slice(3 * rank, 3 * rank + 3)
    return s[rows], t[rows], y[rows]


def _gather_topk(rank: int) -> dict[str, torch.Tensor]:
    s, t, y = _gathered_rows(rank)
    s = s.clone().requires_grad_(True)
    out = _GatheredKD()(s, TopKTeacher.from_logits(t, 5), y)
    out.total.backward()
    return {"gathered_total": out.total.detach(), "gathered_grad": s.grad}


def _worker(rank: int, init_file: str, out: str) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        result = _vocab_parallel(rank)
        result.update(_fsdp_teacher(rank))
        result.update(_gather_topk(rank))
        torch.save(result, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_sharded_teacher_gives_the_exact_topk_on_two_gloo_processes(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    out = str(tmp_path / "res")
    mp.spawn(_worker, args=(str(tmp_path / "init"), out), nprocs=2, join=True)
    full = _full_logits()
    for rank in (0, 1):
        got = torch.load(f"{out}.{rank}", weights_only=True)
        for k in (5, 25):
            ref = TopKTeacher.from_logits(full, k, temperature=2.0)
            assert torch.equal(got[f"indices{k}"], ref.indices)
            torch.testing.assert_close(got[f"log_probs{k}"], ref.log_probs, rtol=0, atol=2e-6)
            # the largest exchange is the (N, k) candidates, never the (N, V) logits
            assert int(got[f"largest_collective{k}"]) == N * k
        assert int(got["local_rows"]) == 150  # the 300-row embedding is split over two ranks
        assert torch.equal(got["indices"], got["ref_indices"])
        assert torch.equal(got["log_probs"], got["ref_log_probs"])
        assert bool(got["grad_finite"])
        # FSDP gathered parameters (one flat buffer per wrapped module: root and two blocks), and
        # nothing it exchanged was as large as the rank's (2 x 10 x 300) logits
        if hasattr(dist, "all_gather_single"):  # torch's FSDP2 collective since 2.14 (recorded)
            assert int(got["fsdp_collectives"]) >= 3
        assert int(got["fsdp_largest"]) < 2 * 10 * 300
    # gather=True with a top-k teacher: the loss of the global batch, each rank's rows' gradient
    # world_size times the one-process gradient (DDP's mean restores it)
    s = torch.cat([_gathered_rows(r)[0] for r in (0, 1)]).requires_grad_(True)
    t = torch.cat([_gathered_rows(r)[1] for r in (0, 1)])
    y = torch.cat([_gathered_rows(r)[2] for r in (0, 1)])
    ref = build_loss("kd", temperature=1.0)(s, TopKTeacher.from_logits(t, 5), y)
    ref.total.backward()
    for rank in (0, 1):
        got = torch.load(f"{out}.{rank}", weights_only=True)
        torch.testing.assert_close(got["gathered_total"], ref.total.detach())
        torch.testing.assert_close(got["gathered_grad"], 2 * s.grad[3 * rank: 3 * rank + 3])


def test_one_process_needs_the_whole_vocabulary() -> None:
    full = _full_logits()
    got = vocab_parallel_topk(full, 0, V, 4)
    ref = TopKTeacher.from_logits(full, 4)
    assert torch.equal(got.indices, ref.indices) and torch.equal(got.log_probs, ref.log_probs)
    with pytest.raises(ValueError, match="slice must be the whole vocabulary"):
        vocab_parallel_topk(full[:, :SPLIT], 0, V, 4)
