"""DistillationTrainer with a top-k teacher: online, and from the offline cache without a teacher.

Training from the cache must equal training with the online top-k teacher bit for bit on CPU.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from lud.data.teacher_cache import (  # noqa: E402  (after the skips)
    CachedTeacherCollator,
    CachedTeacherDataset,
    TeacherCache,
    model_fingerprint,
    write_teacher_cache,
)
from lud.integrations import DistillationTrainer  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
VOCAB, SEQ, K = 64, 12, 8


def _gpt2(n_layer: int, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(vocab_size=VOCAB, n_positions=32, n_embd=16, n_layer=n_layer, n_head=2,
                                  resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                                  bos_token_id=0, eos_token_id=0)
    return transformers.GPT2LMHeadModel(cfg)


def _rows(n: int = 16) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    rows = []
    for i in range(n):
        ids = torch.randint(0, VOCAB, (SEQ,), generator=g)
        labels = ids.clone()
        labels[: 1 + i % 4] = -100
        rows.append({"input_ids": ids, "attention_mask": torch.ones(SEQ, dtype=torch.long), "labels": labels})
    return rows


def _args(out: Path, steps: int = 4) -> transformers.TrainingArguments:
    return transformers.TrainingArguments(
        output_dir=str(out), max_steps=steps, per_device_train_batch_size=4, learning_rate=5e-3,
        logging_steps=1, save_strategy="no", report_to=[], use_cpu=True, disable_tqdm=True,
        dataloader_num_workers=0, seed=0,
    )


def _cache(folder: Path, teacher: torch.nn.Module, rows: list[dict[str, torch.Tensor]]) -> TeacherCache:
    teacher.eval()
    write_teacher_cache(folder, lambda ids: teacher(input_ids=ids).logits, [r["input_ids"] for r in rows],
                        k=K, vocab_size=VOCAB, tokenizer_sha256="synthetic-ids",
                        teacher_sha256=model_fingerprint(teacher), shard_size=5, batch_size=3)
    return TeacherCache(folder, teacher_sha256=model_fingerprint(teacher))


@pytest.mark.parametrize("tail", ["bucket", "uniform"])
def test_training_from_the_cache_equals_the_online_topk_teacher_bit_for_bit(
    tmp_path: Path, tail: str
) -> None:
    teacher, student = _gpt2(2, seed=1), _gpt2(1, seed=2)
    rows = _rows()
    cache = _cache(tmp_path / "cache", teacher, rows)
    online_student, cached_student = copy.deepcopy(student), copy.deepcopy(student)
    loss_params = {"temperature": 1.0}

    online = DistillationTrainer(model=online_student, teacher_model=teacher, loss="kd",
                                 loss_params=loss_params, teacher_top_k=K, topk_tail=tail,
                                 args=_args(tmp_path / "a"),
                                 train_dataset=rows)
    online.train()
    cached = DistillationTrainer(model=cached_student, loss="kd", loss_params=loss_params, topk_tail=tail,
                                 args=_args(tmp_path / "b"), train_dataset=CachedTeacherDataset(rows, cache))
    assert cached.teacher_model is None
    cached.train()

    changed = False
    for (name, a), (_, b) in zip(online_student.named_parameters(), cached_student.named_parameters()):
        assert torch.equal(a, b), name
        changed |= not torch.equal(a, dict(student.named_parameters())[name])
    assert changed
    la = [r["loss"] for r in online.state.log_history if "loss" in r]
    lb = [r["loss"] for r in cached.state.log_history if "loss" in r]
    assert la == lb and len(la) == 4
    assert all("stat/topk_missing_mass" in r for r in cached.state.log_history if "loss" in r)

    # the top-k teacher is not the dense one: a dense-teacher run ends elsewhere
    dense_student = copy.deepcopy(student)
    DistillationTrainer(model=dense_student, teacher_model=teacher, loss="kd", loss_params=loss_params,
                        args=_args(tmp_path / "c"), train_dataset=rows).train()
    assert any(not torch.equal(a, b) for a, b in zip(dense_student.parameters(), cached_student.parameters()))


def test_trainer_refuses_what_cannot_work_without_a_dense_teacher(tmp_path: Path) -> None:
    student = _gpt2(1, seed=2)
    with pytest.raises(ValueError, match="'lud' does not take a top-k teacher"):
        DistillationTrainer(model=student, loss="lud", args=_args(tmp_path), train_dataset=_rows())
    with pytest.raises(ValueError, match="'kd\\+ls' does not take a top-k teacher"):
        DistillationTrainer(model=student, teacher_model=_gpt2(1, seed=1), loss="kd+ls", teacher_top_k=4,
                            args=_args(tmp_path), train_dataset=_rows())
    with pytest.raises(ValueError, match="topk_tail must be one of"):
        DistillationTrainer(model=student, loss="kd", topk_tail="rest", args=_args(tmp_path))
    with pytest.raises(ValueError, match="teacher_top_k must be a positive int"):
        DistillationTrainer(model=student, teacher_model=_gpt2(1, seed=1), teacher_top_k=0,
                            args=_args(tmp_path))
    trainer = DistillationTrainer(model=student, loss="kd", args=_args(tmp_path), train_dataset=_rows())
    with pytest.raises(ValueError, match="no teacher_model and the batch carries no cached teacher"):
        trainer.train()
    # the cache's temperature must be the loss's
    cache = _cache(tmp_path / "cache", _gpt2(1, seed=1), _rows())
    trainer = DistillationTrainer(model=student, loss="kd", args=_args(tmp_path),
                                  train_dataset=CachedTeacherDataset(_rows(), cache))
    with pytest.raises(ValueError, match="temperature 1.0, the loss uses 4.0"):
        trainer.train()
    with pytest.raises(ValueError, match="written over another data set"):
        CachedTeacherDataset(_rows(15), cache)


def test_rows_of_different_lengths_train_from_the_cache_with_its_collator(tmp_path: Path) -> None:
    teacher, student = _gpt2(2, seed=1), _gpt2(1, seed=2)
    rows = [{k: v[: 7 + i % 6] for k, v in r.items()} for i, r in enumerate(_rows())]  # 7..12 tokens
    cache = _cache(tmp_path / "cache", teacher, rows)
    collator = CachedTeacherCollator(pad_token_id=0)
    batch = collator([CachedTeacherDataset(rows, cache)[i] for i in (0, 5)])  # 7 and 12 tokens
    assert batch["input_ids"].shape == (2, 12) and batch["teacher_topk_indices"].shape == (2, 12, K)
    assert bool((batch["labels"][0, 7:] == -100).all()) and bool((batch["attention_mask"][0, 7:] == 0).all())
    assert torch.equal(batch["teacher_topk_indices"][1], cache[5].indices)
    with pytest.raises(ValueError, match="has 5 positions, its input_ids 7"):
        collator([{"input_ids": torch.zeros(7, dtype=torch.long), "labels": torch.zeros(5).long()}])

    online_student, cached_student = copy.deepcopy(student), copy.deepcopy(student)
    kw = dict(loss="kd", loss_params={"temperature": 1.0}, data_collator=collator)
    DistillationTrainer(model=online_student, teacher_model=teacher, teacher_top_k=K,
                        args=_args(tmp_path / "a"), train_dataset=rows, **kw).train()
    DistillationTrainer(model=cached_student, args=_args(tmp_path / "b"),
                        train_dataset=CachedTeacherDataset(rows, cache), **kw).train()
    # the online teacher sees padded batches, the cache was written per length: equal up to rounding
    for a, b in zip(online_student.parameters(), cached_student.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
