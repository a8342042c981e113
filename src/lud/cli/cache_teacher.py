"""``lud cache-teacher``: write (or resume) a teacher's top-k log-probabilities over a tokenized data set.

Reads a local Hugging Face causal-LM folder (``--teacher``, no download), a tokenizer
(``--tokenizer``: a ``tokenizer.json`` file or a tokenizer folder; its fingerprint goes into the
cache, and it tokenizes ``text`` rows) and the data (``--data``: a ``.jsonl`` file whose rows hold
``input_ids`` or ``text``, or a ``datasets`` folder saved with ``save_to_disk`` holding
``input_ids``). Writes the cache of :mod:`lud.data.teacher_cache` and prints its bytes per token.
Run the same command again to resume after an interruption.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

import torch

__all__ = ["cache_teacher_parser", "main"]

log = logging.getLogger("lud")


def cache_teacher_parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lud cache-teacher", description=description)
    p.add_argument("--teacher", required=True, help="local Hugging Face causal-LM folder (from_pretrained)")
    p.add_argument("--tokenizer", required=True, help="tokenizer.json file or Hugging Face tokenizer folder")
    p.add_argument("--data", required=True,
                   help=".jsonl file (rows with 'input_ids' or 'text') or a datasets save_to_disk folder")
    p.add_argument("--out", required=True, help="cache folder (created, or resumed)")
    p.add_argument("--top-k", type=int, default=64, help="classes kept per token (default 64)")
    p.add_argument("--temperature", type=float, default=1.0, help="softmax temperature (default 1)")
    p.add_argument("--shard-size", type=int, default=256, help="sequences per shard (default 256)")
    p.add_argument("--batch-size", type=int, default=8, help="sequences per teacher call (default 8)")
    p.add_argument("--max-shards", type=int, help="stop after writing this many new shards")
    p.add_argument("--device", default="cpu", help="device of the teacher (default cpu)")
    p.add_argument("--verify-existing", action="store_true",
                   help="on resume, check every recorded shard's sha256 (reads the whole cache)")
    return p


def _tokenizer(path: str) -> Any:
    p = Path(path)
    if p.is_file():
        from tokenizers import Tokenizer

        return Tokenizer.from_file(str(p))
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(p), local_files_only=True)


def _encode(tokenizer: Any, text: str) -> list[int]:
    enc = tokenizer.encode(text)
    return list(enc.ids) if hasattr(enc, "ids") else list(enc)


def _sequences(path: str, tokenizer: Any) -> list[torch.Tensor]:
    p = Path(path)
    rows: list[dict[str, Any]]
    if p.is_dir():
        from datasets import load_from_disk

        rows = list(load_from_disk(str(p)))
    elif p.is_file():
        rows = [json.loads(line) for line in p.read_text().splitlines() if line.strip()]
    else:
        raise ValueError(f"--data {path}: no such file or folder")
    out = []
    for i, row in enumerate(rows):
        if "input_ids" in row:
            ids = row["input_ids"]
        elif "text" in row:
            ids = _encode(tokenizer, row["text"])
        else:
            raise ValueError(f"--data {path}: row {i} holds neither 'input_ids' nor 'text'")
        if len(ids) == 0:
            raise ValueError(f"--data {path}: row {i} is empty")
        out.append(torch.tensor(ids, dtype=torch.int64))
    return out


def main(argv: list[str], description: str) -> int:
    args = cache_teacher_parser(description).parse_args(argv)
    from transformers import AutoModelForCausalLM

    from ..data.teacher_cache import model_fingerprint, tokenizer_fingerprint, write_teacher_cache

    tokenizer = _tokenizer(args.tokenizer)
    sequences = _sequences(args.data, tokenizer)
    model = AutoModelForCausalLM.from_pretrained(args.teacher, local_files_only=True)
    model.eval().requires_grad_(False).to(args.device)
    vocab = int(model.config.vocab_size)
    top = max(int(s.max()) for s in sequences)
    if top >= vocab:
        raise ValueError(f"--data holds token id {top}, the teacher's vocabulary has {vocab}: "
                         "tokenized with another tokenizer?")

    def teacher(ids: torch.Tensor) -> torch.Tensor:
        return model(input_ids=ids).logits

    manifest = write_teacher_cache(
        args.out, teacher, sequences, k=args.top_k, vocab_size=vocab,
        tokenizer_sha256=tokenizer_fingerprint(tokenizer), teacher_sha256=model_fingerprint(model),
        temperature=args.temperature, shard_size=args.shard_size, batch_size=args.batch_size,
        max_shards=args.max_shards, device=args.device, log=log.info,
        verify_existing=args.verify_existing,
    )
    done = len(manifest["shards"])
    print(f"teacher cache {args.out}: {done}/{manifest['num_shards']} shards, {manifest['tokens']} tokens, "
          f"{manifest['bytes']} bytes, {manifest['bytes_per_token']:.1f} bytes/token "
          f"(k = {manifest['k']}, codec {manifest['codec']}, vocabulary {vocab})")
    if not manifest["complete"]:
        print("incomplete: run the same command again to resume")
    return 0
