"""Teacher and student output layers that differ by padding rows: the explicit ``vocab_size``.

Qwen2-style models pad their output layer (152,064 vs 151,936 rows): the extra columns are no
token. The shared size is declared (``vocab_size``), never inferred; other mismatches are errors.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from lud.integrations import DistillationTrainer  # noqa: E402
from lud.losses import build_loss  # noqa: E402

VOCAB, PADDED = 32, 40


def _gpt2(vocab: int, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(vocab_size=vocab, n_positions=16, n_embd=16, n_layer=1, n_head=2,
                                  resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return transformers.GPT2LMHeadModel(cfg)


def _batch() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, VOCAB, (3, 9), generator=g)
    labels = ids.clone()
    labels[:, :2] = -100
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


def _trainer(tmp_path: Path, student: torch.nn.Module, teacher: torch.nn.Module, **kw: object):
    args = transformers.TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True,
                                          disable_tqdm=True, save_strategy="no")
    return DistillationTrainer(model=student, teacher_model=teacher, loss="fkl", args=args, **kw)


@pytest.mark.parametrize("padded", ["teacher", "student"])
def test_trainer_compares_the_shared_columns(tmp_path: Path, padded: str) -> None:
    student = _gpt2(PADDED if padded == "student" else VOCAB, seed=1)
    teacher = _gpt2(PADDED if padded == "teacher" else VOCAB, seed=2)
    batch = _batch()
    got = _trainer(tmp_path, student, teacher, vocab_size=VOCAB).compute_loss(student, batch)
    feats = {k: v for k, v in batch.items() if k != "labels"}
    s = student(**feats).logits[:, :-1, :VOCAB]
    t = teacher(**feats).logits[:, :-1, :VOCAB]
    want = build_loss("fkl")(s, t, batch["labels"][:, 1:]).total
    torch.testing.assert_close(got, want)
    assert got.requires_grad


def test_trainer_mismatch_without_or_beyond_the_declared_size(tmp_path: Path) -> None:
    student, teacher = _gpt2(VOCAB, seed=1), _gpt2(PADDED, seed=2)
    with pytest.raises(ValueError, match=r"vocabulary size mismatch.*32.*40.*vocab_size"):
        _trainer(tmp_path, student, teacher).compute_loss(student, _batch())
    with pytest.raises(ValueError, match="beyond padding: student_logits have 32 columns.*vocab_size=36"):
        _trainer(tmp_path, student, teacher, vocab_size=36).compute_loss(student, _batch())
    with pytest.raises(ValueError, match="vocab_size must be an int >= 2"):
        _trainer(tmp_path, student, teacher, vocab_size="32")
