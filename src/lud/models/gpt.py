"""GPT-2-style causal language models built from a config (Hugging Face ``GPT2LMHeadModel``).

Nothing is downloaded: the model is built from a ``GPT2Config`` with fresh weights (seeded), so
``HF_HUB_OFFLINE=1`` is fine. Needs the ``hf`` extra (``transformers``).
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["build_gpt2", "param_counts"]


def build_gpt2(
    *,
    vocab_size: int,
    layers: int,
    width: int,
    heads: int,
    seq_len: int,
    seed: int = 0,
    eos_id: int = 0,
    dropout: float = 0.0,
) -> Any:
    """A fresh ``GPT2LMHeadModel`` (tied input/output embeddings, as GPT-2), seeded.

    ``ValueError`` if ``width`` is not a multiple of ``heads``.
    """
    if width % heads:
        raise ValueError(f"width {width} is not a multiple of heads {heads}")
    import transformers

    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(
        vocab_size=vocab_size,
        n_positions=seq_len,
        n_embd=width,
        n_layer=layers,
        n_head=heads,
        bos_token_id=eos_id,
        eos_token_id=eos_id,
        pad_token_id=eos_id,
        resid_pdrop=dropout,
        embd_pdrop=dropout,
        attn_pdrop=dropout,
    )
    return transformers.GPT2LMHeadModel(cfg)


def param_counts(model: torch.nn.Module) -> dict[str, int]:
    """``total`` (tied weights counted once), ``embedding`` (token + position) and
    ``non_embedding`` (``total - embedding``) parameter counts."""
    seen: set[int] = set()
    total = 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    emb = 0
    for name, p in model.named_parameters():
        if name.endswith(("wte.weight", "wpe.weight")):
            emb += p.numel()
    return {"total": total, "embedding": emb, "non_embedding": total - emb}
