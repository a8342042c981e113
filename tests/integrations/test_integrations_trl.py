"""lud.integrations.trl.GKDDistillationTrainer: any lud loss inside TRL's GKD, offline, tiny GPT-2s.

Skipped without the ``trl`` extra. λ (``lmbda``) decides on-policy steps (the student's samples),
``seq_kd`` the teacher's samples otherwise; the loss equals the library loss on the completion
tokens; the default ``gjsd`` equals TRL's own ``generalized_jsd_loss``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

pytest.importorskip("trl")
transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")
datasets = pytest.importorskip("datasets")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from trl.experimental.gkd import GKDConfig, GKDTrainer  # noqa: E402

from lud.integrations.trl import GKDDistillationTrainer  # noqa: E402
from lud.losses import build_loss  # noqa: E402

VOCAB, PROMPT, COMPLETION = 24, 4, 5


def _tokenizer() -> transformers.PreTrainedTokenizerFast:
    vocab = {"<eos>": 0, "<pad>": 1, "<unk>": 2, **{f"w{i}": i for i in range(3, VOCAB)}}
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<pad>",
                                                unk_token="<unk>")


def _gpt2(seed: int, n_layer: int = 1) -> torch.nn.Module:
    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(vocab_size=VOCAB, n_positions=32, n_embd=16, n_layer=n_layer, n_head=2,
                                  resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0,
                                  eos_token_id=0, pad_token_id=1)
    return transformers.GPT2LMHeadModel(cfg)


def _rows(n: int = 8) -> list[dict[str, list[int]]]:
    g = torch.Generator().manual_seed(0)
    return [{"ids": torch.randint(3, VOCAB, (PROMPT + COMPLETION,), generator=g).tolist()} for _ in range(n)]


def _collate(rows: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
    ids = torch.tensor([r["ids"] for r in rows])
    labels = ids.clone()
    labels[:, :PROMPT] = -100
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels,
            "prompts": ids[:, :PROMPT], "prompt_attention_mask": torch.ones_like(ids[:, :PROMPT])}


def _trainer(tmp_path: Path, lmbda: float, seq_kd: bool = False, steps: int = 2, **kw):
    args = GKDConfig(output_dir=str(tmp_path), max_steps=steps, per_device_train_batch_size=4,
                     learning_rate=1e-2, lmbda=lmbda, seq_kd=seq_kd, max_new_tokens=3, beta=0.3,
                     temperature=1.0, logging_steps=1, report_to=[], use_cpu=True, save_strategy="no",
                     disable_tqdm=True, seed=0, dataloader_num_workers=0)
    return GKDDistillationTrainer(model=_gpt2(1), teacher_model=_gpt2(2, n_layer=2), args=args,
                                  processing_class=_tokenizer(), data_collator=_collate,
                                  train_dataset=datasets.Dataset.from_list(_rows()), **kw)


def _record(trainer: GKDDistillationTrainer, monkeypatch: pytest.MonkeyPatch) -> dict[str, list]:
    seen: dict[str, list] = {"generated_by": [], "lengths": []}
    generate = GKDTrainer.generate_on_policy_outputs

    def spy(model, inputs, generation_config):
        seen["generated_by"].append("teacher" if model is trainer.teacher_model else "student")
        return generate(model, inputs, generation_config)

    compute = trainer.compute_loss

    def compute_spy(model, inputs, *a, **k):
        seen["lengths"].append(inputs["input_ids"].shape[1])
        assert (inputs["labels"][:, :PROMPT] == -100).all()  # the prompt is never scored
        return compute(model, inputs, *a, **k)

    monkeypatch.setattr(trainer, "generate_on_policy_outputs", staticmethod(spy))
    monkeypatch.setattr(trainer, "compute_loss", compute_spy)
    return seen


@pytest.mark.parametrize("lmbda, seq_kd, expected", [(1.0, False, "student"), (0.0, True, "teacher"),
                                                     (0.0, False, None)])
def test_lambda_mixing_and_sequence_level_kd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             lmbda: float, seq_kd: bool, expected: str | None) -> None:
    trainer = _trainer(tmp_path, lmbda, seq_kd, loss="fkl", loss_params={"ce_weight": 0.0})
    seen = _record(trainer, monkeypatch)
    before = [p.detach().clone() for p in trainer.model.parameters()]
    trainer.train()
    if expected is None:
        assert seen["generated_by"] == [] and seen["lengths"] == [PROMPT + COMPLETION] * 2
    else:
        assert seen["generated_by"] == [expected] * 2
        assert all(n <= PROMPT + 3 for n in seen["lengths"])  # prompt + at most max_new_tokens
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.model.parameters()))
    row = trainer.state.log_history[0]
    assert "loss/fkl" in row and row["loss"] > 0


@pytest.mark.parametrize("loss, params", [("gjsd", {}), ("srkl", {"alpha": 0.2}), ("lud", {})])
def test_loss_is_the_library_loss_on_the_completion(tmp_path: Path, loss: str, params: dict) -> None:
    trainer = _trainer(tmp_path, 0.0, loss=loss, loss_params=params)
    batch = _collate(_rows(3))
    student, teacher = trainer.model, trainer.teacher_model
    got = trainer.compute_loss(student, batch)
    feats = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    s, t = student(**feats).logits[:, :-1], teacher(**feats).logits[:, :-1]
    y = batch["labels"][:, 1:]
    want_params = {"beta": 0.3, **params} if loss == "gjsd" else params
    want = build_loss(loss, **want_params)(s, t, y).total
    torch.testing.assert_close(got, want)
    if loss == "gjsd":  # TRL's own function, as GKDTrainer.compute_loss calls it
        trl_value = GKDTrainer.generalized_jsd_loss(s, t, labels=y, beta=0.3)
        torch.testing.assert_close(got, trl_value, rtol=1e-5, atol=1e-6)


def test_missing_masks_are_named(tmp_path: Path) -> None:
    trainer = _trainer(tmp_path, 0.5)
    batch = _collate(_rows(2))
    no_mask = {k: v for k, v in batch.items() if k != "attention_mask"}
    with pytest.raises(ValueError, match="needs an 'attention_mask'"):
        trainer.compute_loss(trainer.model, no_mask)
    no_prompt_mask = {k: v for k, v in batch.items() if k != "prompt_attention_mask"}
    with pytest.raises(ValueError, match="prompt_attention_mask"):
        trainer.training_step(trainer.model, no_prompt_mask)
    with pytest.raises(ValueError, match="beta must lie in"):
        _trainer(tmp_path, 0.0, loss="gjsd", loss_params={"beta": 2.0})
