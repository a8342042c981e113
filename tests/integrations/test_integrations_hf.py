"""lud.integrations.hf.DistillationTrainer end to end on tiny random-config models (no download).

Skipped when transformers (the ``hf`` extra) is not installed. Causal LM: GPT-2 (64-token
vocabulary); sequence classification: BERT; image classification: ViT.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from safetensors.torch import load_file  # noqa: E402  (after the skips)

from lud.integrations import DistillationTrainer  # noqa: E402
from lud.integrations.hf import LOSS_STATE_FILE  # noqa: E402
from lud.losses import build_loss  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
VOCAB, SEQ = 64, 12


def _gpt2(n_layer: int, vocab: int = VOCAB, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(
        vocab_size=vocab,
        n_positions=32,
        n_embd=16,
        n_layer=n_layer,
        n_head=2,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=0,
        eos_token_id=0,
    )
    return transformers.GPT2LMHeadModel(cfg)


def _lm_rows(n: int = 16, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(n):
        ids = torch.randint(0, VOCAB, (SEQ,), generator=g)
        labels = ids.clone()
        labels[: 1 + i % 4] = -100  # a "prompt" of 1-4 tokens that does not count
        rows.append({"input_ids": ids, "attention_mask": torch.ones(SEQ, dtype=torch.long), "labels": labels})
    return rows


def _args(tmp_path: Path, steps: int = 3, **kw: object) -> transformers.TrainingArguments:
    base = dict(
        output_dir=str(tmp_path),
        max_steps=steps,
        per_device_train_batch_size=4,
        learning_rate=5e-3,
        logging_steps=1,
        save_strategy="steps",
        save_steps=steps,
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=0,
    )
    base.update(kw)
    return transformers.TrainingArguments(**base)


def _teacher_state(teacher: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in teacher.state_dict().items()}


@pytest.mark.parametrize("loss", ["kd", "lud"])
def test_causal_lm_distils_with_a_frozen_teacher(tmp_path: Path, loss: str) -> None:
    teacher, student = _gpt2(2, seed=1), _gpt2(1, seed=2)
    before_t, before_s = _teacher_state(teacher), _teacher_state(student)
    trainer = DistillationTrainer(
        model=student, teacher_model=teacher, loss=loss, args=_args(tmp_path), train_dataset=_lm_rows()
    )
    trainer.train()

    # the teacher: frozen, unchanged, no gradient, not in the optimizer
    assert not teacher.training and all(not p.requires_grad and p.grad is None for p in teacher.parameters())
    assert all(torch.equal(v, before_t[k]) for k, v in teacher.state_dict().items())
    in_opt = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    assert not in_opt & {id(p) for p in teacher.parameters()}
    assert any(not torch.equal(v, before_s[k]) for k, v in student.state_dict().items())

    # the checkpoint holds the student only (the teacher's second block is nowhere)
    ckpt = tmp_path / "checkpoint-3"
    saved = load_file(str(ckpt / "model.safetensors"))
    assert not any(".h.1." in k for k in saved), sorted(saved)
    assert any(".h.0." in k for k in saved)
    assert {f.name for f in ckpt.iterdir() if f.suffix in (".safetensors", ".bin", ".pt")} <= {
        "model.safetensors",
        "optimizer.pt",
        "scheduler.pt",
        "rng_state.pth",
        "training_args.bin",
        LOSS_STATE_FILE,
    }

    # the loss terms and statistics reach the Trainer's own log rows
    rows = [r for r in trainer.state.log_history if "loss" in r]
    assert len(rows) == 3
    terms = {
        "kd": ["loss/ce", "loss/kd"],
        "lud": ["loss/ce", "loss/instance", "loss/cdl", "loss/sdl", "stat/kept_samples", "stat/rho_cdl"],
    }[loss]
    for row in rows:
        assert all(k in row for k in terms), row
        parts = sum(v for k, v in row.items() if k.startswith("loss/"))  # every term logged
        assert parts == pytest.approx(row["loss"], rel=1e-4)  # logging_steps=1: one step per row
    if loss == "lud":  # the running thresholds are state: saved next to the model
        assert (ckpt / LOSS_STATE_FILE).is_file()

    # evaluation: the distillation loss on held-out rows, nothing added to the training logs
    metrics = trainer.evaluate(eval_dataset=_lm_rows(4, seed=5))
    assert torch.isfinite(torch.tensor(metrics["eval_loss"])) and not any("/" in k for k in metrics)
    assert trainer._log_sums == {}


def _batch(rows: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {k: torch.stack([r[k] for r in rows]) for k in rows[0]}


def test_loss_equals_the_library_loss_on_the_valid_tokens(tmp_path: Path) -> None:
    teacher, student = _gpt2(2, seed=1), _gpt2(1, seed=2)
    trainer = DistillationTrainer(
        model=student,
        teacher_model=teacher,
        loss="kd",
        loss_params={"temperature": 2.0},
        args=_args(tmp_path),
    )
    batch = _batch(_lm_rows(4, seed=3))
    batch["labels"][1, 5:] = -100  # padding too
    got = trainer.compute_loss(student, batch)

    feats = {k: v for k, v in batch.items() if k != "labels"}
    s, t = student(**feats).logits[:, :-1], teacher(**feats).logits[:, :-1]
    y = batch["labels"][:, 1:]
    keep = y != -100
    want = build_loss("kd", temperature=2.0)(s[keep], t[keep], y[keep]).total
    assert int(keep.sum()) < 4 * (SEQ - 1)
    assert got.item() == pytest.approx(want.item(), rel=1e-5)
    got.backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())


def test_an_all_ignored_batch_gives_a_finite_zero(tmp_path: Path) -> None:
    student = _gpt2(1, seed=2)
    trainer = DistillationTrainer(
        model=student, teacher_model=_gpt2(1, seed=1), loss="lud", args=_args(tmp_path)
    )
    batch = _batch(_lm_rows(2))
    batch["labels"][:] = -100
    loss = trainer.compute_loss(student, batch)
    assert torch.isfinite(loss) and loss.item() == 0.0
    loss.backward()  # connected to the graph
    assert all(torch.isfinite(p.grad).all() for p in student.parameters() if p.grad is not None)


def test_mismatched_vocabularies_are_named(tmp_path: Path) -> None:
    student = _gpt2(1)
    trainer = DistillationTrainer(model=student, teacher_model=_gpt2(1, vocab=80), args=_args(tmp_path))
    with pytest.raises(ValueError, match=r"vocabulary size mismatch.*64.*80"):
        trainer.compute_loss(student, _batch(_lm_rows(2)))


def test_the_trainer_refuses_gram_matrices_above_the_bound(tmp_path: Path) -> None:
    student = _gpt2(1)
    batch = _batch(_lm_rows(2))
    trainer = DistillationTrainer(
        model=student,
        teacher_model=_gpt2(1, seed=1),
        loss="lud",
        args=_args(tmp_path),
        max_gram_elements=VOCAB * VOCAB - 1,
    )
    with pytest.raises(ValueError, match="max_gram_elements"):
        trainer.compute_loss(student, batch)
    trainer = DistillationTrainer(
        model=student,
        teacher_model=_gpt2(1, seed=1),
        loss="lud",
        loss_params={"cdl_weight": 0.0},
        args=_args(tmp_path),
        max_gram_elements=VOCAB * VOCAB - 1,
    )
    assert torch.isfinite(trainer.compute_loss(student, batch))


def test_ctkd_temperature_is_trained_and_checkpointed(tmp_path: Path) -> None:
    teacher, student = _gpt2(2, seed=1), _gpt2(1, seed=2)
    trainer = DistillationTrainer(
        model=student,
        teacher_model=teacher,
        loss="ctkd",
        loss_params={"curriculum_epochs": 0.0},
        args=_args(tmp_path, steps=2, gradient_accumulation_steps=2),
        train_dataset=_lm_rows(8),
    )
    theta0 = trainer.distillation_loss.theta.item()
    trainer.train()
    theta = trainer.distillation_loss.theta
    assert any(p is theta for g in trainer.optimizer.param_groups for p in g["params"])
    assert theta.item() != theta0
    saved = torch.load(tmp_path / "checkpoint-2" / LOSS_STATE_FILE, weights_only=True)
    assert saved["theta"].item() == pytest.approx(theta.item())
    row = trainer.state.log_history[0]
    assert "stat/temperature" in row
    # two micro-batches per step: the Trainer's loss and our terms are both their mean
    assert row["loss/ce"] + row["loss/kd"] == pytest.approx(row["loss"], rel=1e-4)

    # resuming reads the temperature back
    fresh = DistillationTrainer(
        model=_gpt2(1, seed=2), teacher_model=teacher, loss="ctkd", args=_args(tmp_path / "again")
    )
    assert fresh.distillation_loss.theta.item() != pytest.approx(theta.item())
    fresh._load_from_checkpoint(str(tmp_path / "checkpoint-2"))
    assert fresh.distillation_loss.theta.item() == pytest.approx(theta.item())


def test_sequence_classification(tmp_path: Path) -> None:
    cfg = dict(
        vocab_size=50,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=16,
        num_labels=3,
    )
    torch.manual_seed(0)
    teacher = transformers.BertForSequenceClassification(transformers.BertConfig(**cfg))
    student = transformers.BertForSequenceClassification(transformers.BertConfig(**cfg))
    g = torch.Generator().manual_seed(0)
    data = [
        {"input_ids": torch.randint(0, 50, (8,), generator=g), "labels": torch.tensor(i % 3)}
        for i in range(8)
    ]
    trainer = DistillationTrainer(
        model=student, teacher_model=teacher, loss="dkd", args=_args(tmp_path, steps=2), train_dataset=data
    )
    trainer.train()
    row = trainer.state.log_history[0]
    assert {"loss/ce", "loss/tckd", "loss/nckd"} <= set(row), row
    with pytest.raises(ValueError, match=r"class count mismatch.*3.*4"):
        other = transformers.BertForSequenceClassification(
            transformers.BertConfig(**{**cfg, "num_labels": 4})
        )
        DistillationTrainer(model=student, teacher_model=other, args=_args(tmp_path)).compute_loss(
            student, {"input_ids": data[0]["input_ids"][None], "labels": data[0]["labels"][None]}
        )


def test_image_classification(tmp_path: Path) -> None:
    cfg = transformers.ViTConfig(
        image_size=16,
        patch_size=8,
        num_channels=3,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        num_labels=5,
    )
    torch.manual_seed(0)
    teacher, student = (
        transformers.ViTForImageClassification(cfg),
        transformers.ViTForImageClassification(cfg),
    )
    g = torch.Generator().manual_seed(0)
    data = [
        {"pixel_values": torch.randn(3, 16, 16, generator=g), "labels": torch.tensor(i % 5)} for i in range(8)
    ]
    trainer = DistillationTrainer(
        model=student, teacher_model=teacher, loss="lud", args=_args(tmp_path, steps=2), train_dataset=data
    )
    trainer.train()
    row = trainer.state.log_history[0]
    assert (
        "loss/cdl" in row and "stat/kept_classes" in row and all(p.grad is None for p in teacher.parameters())
    )
