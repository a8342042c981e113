"""Gradient accumulation: k micro-batches normalised by the accumulated batch's token count.

lud.integrations.loss_step rescales each micro-batch's mean to ``mean · N_i / N`` (N: the valid
tokens of the accumulated batch, the Trainer's ``num_items_in_batch``). For a loss that is a mean
over tokens the sum over micro-batches is then the large batch's loss — however unevenly the valid
tokens fall. For LUD, whose terms are batch statistics (Gram matrices, masks, thresholds), it is
the token-weighted mean of the micro-batch losses and not the large batch's loss.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from lud.integrations.loss_step import distillation_loss_step
from lud.losses import build_loss

B, T, V = 4, 7, 11
#: the registered losses that are a mean over tokens (per-token terms only)
TOKEN_MEAN = ("ce", "kd", "kd+ls", "dkd", "fkl", "rkl", "gjsd", "skl", "srkl", "tvd")


def _batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    t = torch.randn(B, T, V, generator=g) * 3
    s = t + torch.randn(B, T, V, generator=g)
    y = torch.randint(0, V, (B, T), generator=g)
    y[0, 2:] = -100  # micro-batch 1 (rows 0-1) has far fewer valid tokens than micro-batch 2
    y[1, 1:] = -100
    return s, t, y


def _grad_of(loss_name: str, parts: list[slice], s0: torch.Tensor, t: torch.Tensor, y: torch.Tensor,
             normalise: bool) -> tuple[float, torch.Tensor, list[float]]:
    loss = build_loss(loss_name)
    s = s0.clone().requires_grad_(True)
    n_total = int((y[:, 1:] != -100).sum())
    total, means = 0.0, []
    for part in parts:
        value, out = distillation_loss_step(loss, s[part], t[part], y[part], shift=True, epoch=3.0,
                                            num_items_in_batch=n_total if normalise else None)
        value.backward()
        total += float(value.detach())
        means.append(float(out.total.detach()))
    return total, s.grad, means


@pytest.mark.parametrize("name", TOKEN_MEAN)
def test_accumulated_micro_batches_equal_the_large_batch(name: str) -> None:
    s, t, y = _batch()
    big, big_grad, _ = _grad_of(name, [slice(0, B)], s, t, y, normalise=True)
    acc, acc_grad, _ = _grad_of(name, [slice(0, 2), slice(2, B)], s, t, y, normalise=True)
    assert acc == pytest.approx(big, rel=1e-5, abs=1e-6)
    torch.testing.assert_close(acc_grad, big_grad, rtol=1e-4, atol=1e-7)
    # the per-micro-batch mean (the Trainer's old rule, divided by k) is not the large batch here
    naive, _, _ = _grad_of(name, [slice(0, 2), slice(2, B)], s, t, y, normalise=False)
    assert naive / 2 != pytest.approx(big, rel=1e-3)


def test_lud_accumulates_to_the_token_weighted_mean_of_micro_batch_losses() -> None:
    s, t, y = _batch()
    counts = [int((y[p, 1:] != -100).sum()) for p in (slice(0, 2), slice(2, B))]
    acc, _, means = _grad_of("lud", [slice(0, 2), slice(2, B)], s, t, y, normalise=True)
    weighted = sum(c * m for c, m in zip(counts, means)) / sum(counts)
    assert acc == pytest.approx(weighted, rel=1e-5)
    big, _, _ = _grad_of("lud", [slice(0, B)], s, t, y, normalise=True)
    assert acc != pytest.approx(big, rel=1e-3)  # its batch terms see one micro-batch at a time


def test_count_must_be_one_number() -> None:
    s, t, y = _batch()
    with pytest.raises(ValueError, match="num_items_in_batch must be one count"):
        distillation_loss_step(build_loss("fkl"), s, t, y, shift=True, num_items_in_batch=torch.ones(2))


# ----------------------------------------------------------------------- the Trainer, end to end
transformers = pytest.importorskip("transformers")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _gpt2(seed: int, n_layer: int = 1) -> torch.nn.Module:
    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(vocab_size=32, n_positions=16, n_embd=16, n_layer=n_layer, n_head=2,
                                  resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return transformers.GPT2LMHeadModel(cfg)


def _rows(prompts: tuple[int, ...] = (9, 1, 8, 2)) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    rows = []
    for prompt in prompts:  # default: very uneven valid-token counts between rows
        ids = torch.randint(0, 32, (10,), generator=g)
        labels = ids.clone()
        labels[:prompt] = -100
        rows.append({"input_ids": ids, "attention_mask": torch.ones(10, dtype=torch.long), "labels": labels})
    return rows


def _one_step(tmp_path: Path, batch: int, accumulation: int, normalise: bool) -> torch.Tensor:
    from lud.integrations import DistillationTrainer

    student = _gpt2(2)
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), max_steps=1, per_device_train_batch_size=batch,
        gradient_accumulation_steps=accumulation, learning_rate=0.5, optim="sgd", weight_decay=0.0,
        max_grad_norm=0.0, lr_scheduler_type="constant", report_to=[], use_cpu=True, disable_tqdm=True,
        save_strategy="no", seed=0, dataloader_num_workers=0,
    )
    trainer = DistillationTrainer(model=student, teacher_model=_gpt2(1, n_layer=2), loss="fkl",
                                  args=args, train_dataset=_rows(), token_normalization=normalise)
    trainer.train()
    return torch.cat([p.detach().reshape(-1) for p in student.parameters()])


def test_trainer_accumulation_equals_the_large_batch(tmp_path: Path) -> None:
    start = torch.cat([p.detach().reshape(-1) for p in _gpt2(2).parameters()])
    big = _one_step(tmp_path / "big", batch=4, accumulation=1, normalise=True)
    acc = _one_step(tmp_path / "acc", batch=1, accumulation=4, normalise=True)
    assert (big - start).abs().max() > 1e-3  # the step moved the student
    torch.testing.assert_close(acc, big, rtol=1e-4, atol=1e-6)
    old = _one_step(tmp_path / "old", batch=1, accumulation=4, normalise=False)
    assert (old - big).abs().max() > 1e-4  # the per-micro-batch mean is not the large batch


def test_trainer_counts_the_positions_it_scores(tmp_path: Path) -> None:
    """The count is over the shifted labels (GPT-2 has no loss_type: transformers would not shift)."""
    from lud.integrations import DistillationTrainer

    student = _gpt2(2)
    args = transformers.TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True,
                                          save_strategy="no", gradient_accumulation_steps=2)
    trainer = DistillationTrainer(model=student, teacher_model=_gpt2(1), loss="rkl", args=args)
    rows = _rows(prompts=(0, 3, 5, 1))  # row 0 scores its first label: shifted 30, unshifted 31
    batches = [{k: torch.stack([r[k] for r in rows[i:i + 2]]) for k in rows[0]} for i in (0, 2)]
    count = trainer._get_num_items_in_batch(batches, torch.device("cpu"))
    assert int(count) == sum(int((b["labels"][:, 1:] != -100).sum()) for b in batches) == 30
    # one micro-batch holding every position: the normalised loss is the plain mean
    whole = {k: torch.cat([b[k] for b in batches]) for k in batches[0]}
    student.train()
    got = trainer.compute_loss(student, whole, num_items_in_batch=count)
    torch.testing.assert_close(got, trainer.compute_loss(student, whole))
