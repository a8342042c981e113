"""DistillationTrainer's fused output layer + loss path (``fused_chunk_size``): the same loss and
gradients as the unfused path, on a tiny random-config GPT-2 (no download)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from lud.integrations import DistillationTrainer  # noqa: E402
from lud.losses import DistillationLoss, LossOutput  # noqa: E402
from lud.losses.fused import forward_kl_rows  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
VOCAB, SEQ = 64, 12


def _gpt2(n_layer: int, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(vocab_size=VOCAB, n_positions=32, n_embd=16, n_layer=n_layer,
                                  n_head=2, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                                  bos_token_id=0, eos_token_id=0)
    return transformers.GPT2LMHeadModel(cfg)


def _batch(n: int = 4, seed: int = 3) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (n, SEQ), generator=g)
    labels = ids.clone()
    labels[:, :2] = -100
    labels[1, 7:] = -100
    return {"input_ids": ids, "attention_mask": torch.ones(n, SEQ, dtype=torch.long),
            "labels": labels}


def _args(tmp_path: Path) -> transformers.TrainingArguments:
    return transformers.TrainingArguments(output_dir=str(tmp_path), max_steps=2,
                                          per_device_train_batch_size=4, report_to=[],
                                          use_cpu=True, disable_tqdm=True, save_strategy="no")


class TokenKL(DistillationLoss):
    """A token mean with the row_loss hook (what a registered token divergence provides)."""

    def row_loss(self, z, t, y):
        return forward_kl_rows(z, t)

    def compute(self, student_logits, teacher_logits, targets, epoch) -> LossOutput:
        return self.output({"loss": self.row_loss(student_logits, teacher_logits, targets).mean()})


def _loss_and_grads(tmp_path, loss, chunk):
    student, teacher = _gpt2(1, seed=2), _gpt2(2, seed=1)
    kw = {"loss": loss} if isinstance(loss, DistillationLoss) else {
        "loss": "lud", "loss_params": loss}
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=_args(tmp_path),
                                  fused_chunk_size=chunk, **kw)
    student.train()
    value = trainer.compute_loss(student, _batch())
    value.backward()
    return float(value.detach()), {n: p.grad.clone() for n, p in student.named_parameters()
                                   if p.grad is not None}


@pytest.mark.parametrize("loss", ["token_kl", "lud"])
def test_fused_training_loss_equals_the_unfused_one(tmp_path: Path, loss: str) -> None:
    def make():
        return TokenKL() if loss == "token_kl" else {"category_top_k": 4, "sample_max_rows": 16}

    want, want_g = _loss_and_grads(tmp_path, make(), None)
    got, got_g = _loss_and_grads(tmp_path, make(), 7)
    assert got == pytest.approx(want, rel=1e-5)
    assert set(got_g) == set(want_g)
    for name, g in want_g.items():
        torch.testing.assert_close(got_g[name], g, rtol=1e-4, atol=1e-6, msg=name)


def test_fused_path_never_computes_the_student_logits(tmp_path: Path) -> None:
    student, teacher = _gpt2(1, seed=2), _gpt2(2, seed=1)
    trainer = DistillationTrainer(model=student, teacher_model=teacher, loss=TokenKL(),
                                  args=_args(tmp_path), fused_chunk_size=5)
    calls = []
    student.lm_head.register_forward_hook(lambda *a: calls.append(1))
    student.train()
    trainer.compute_loss(student, _batch()).backward()
    assert calls == []
    assert student.transformer.wte.weight.grad.abs().sum() > 0  # tied output layer trained


def test_fused_path_refuses_what_it_cannot_do(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="fused_chunk_size must be"):
        DistillationTrainer(model=_gpt2(1, 2), teacher_model=_gpt2(1, 1), args=_args(tmp_path),
                            fused_chunk_size=0)
    with pytest.raises(ValueError, match="neither a mean over tokens"):
        DistillationTrainer(model=_gpt2(1, 2), teacher_model=_gpt2(1, 1), loss="kd",
                            args=_args(tmp_path), fused_chunk_size=8)
    with pytest.raises(ValueError, match="category_top_k or sample_max_rows"):
        DistillationTrainer(model=_gpt2(1, 2), teacher_model=_gpt2(1, 1), loss="lud",
                            args=_args(tmp_path), fused_chunk_size=8)


def _uneven_rows() -> list[dict[str, torch.Tensor]]:
    """Four sequences whose valid positions differ (padding, -100 labels): micro-batches of two
    hold 10 + 6 and 11 + 3 scored positions after the shift."""
    g = torch.Generator().manual_seed(5)
    rows = []
    for first_valid, last in [(2, 12), (6, 12), (1, 12), (9, 12)]:
        ids = torch.randint(0, VOCAB, (SEQ,), generator=g)
        labels = torch.full((SEQ,), -100)
        labels[first_valid:last] = ids[first_valid:last]
        mask = torch.ones(SEQ, dtype=torch.long)
        if first_valid >= 6:  # left padding: the padded positions are masked and unscored
            mask[:first_valid - 1] = 0
        rows.append({"input_ids": ids, "attention_mask": mask, "labels": labels})
    return rows


class _InOrder(DistillationTrainer):
    def _get_train_sampler(self, *args, **kwargs):  # the rows in order: known micro-batches
        return torch.utils.data.SequentialSampler(self.train_dataset)


def _one_sgd_step(tmp_path: Path, loss, chunk, batch: int, accumulate: int) -> dict:
    """The parameter change of one optimizer step (plain SGD, lr 1: minus the accumulated
    gradient) over the four rows of :func:`_uneven_rows`."""
    student, teacher = _gpt2(1, seed=2), _gpt2(2, seed=1)
    before = {n: p.detach().clone() for n, p in student.named_parameters()}
    kw = {"loss": loss} if isinstance(loss, DistillationLoss) else {
        "loss": "lud", "loss_params": loss}
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), max_steps=1, per_device_train_batch_size=batch,
        gradient_accumulation_steps=accumulate, max_grad_norm=0.0, report_to=[], use_cpu=True,
        disable_tqdm=True, save_strategy="no")
    optimizer = torch.optim.SGD(student.parameters(), lr=1.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    trainer = _InOrder(model=student, teacher_model=teacher, args=args, train_dataset=_uneven_rows(),
                       optimizers=(optimizer, scheduler), fused_chunk_size=chunk, **kw)
    assert trainer.token_normalization
    trainer.train()
    return {n: p.detach() - before[n] for n, p in student.named_parameters()}


def _assert_same_update(got: dict, want: dict) -> None:
    assert set(got) == set(want)
    assert max(float(d.abs().max()) for d in want.values()) > 1e-4  # a real step was taken
    for name, d in want.items():
        torch.testing.assert_close(got[name], d, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("loss", ["token_kl", "lud"])
def test_fused_gradient_accumulation_equals_the_unfused_step(tmp_path: Path, loss: str) -> None:
    """Two micro-batches with different numbers of valid tokens, token_normalization on: the fused
    path's optimizer step equals the unfused trainer's; for a token mean both equal one batch
    twice the size."""
    def make():
        return TokenKL() if loss == "token_kl" else {"category_top_k": 4, "sample_max_rows": 8}

    want = _one_sgd_step(tmp_path, make(), None, batch=2, accumulate=2)
    got = _one_sgd_step(tmp_path, make(), 5, batch=2, accumulate=2)
    _assert_same_update(got, want)
    if loss == "token_kl":
        _assert_same_update(_one_sgd_step(tmp_path, make(), 5, batch=4, accumulate=1), want)
