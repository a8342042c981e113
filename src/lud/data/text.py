"""Offline text for language-model benchmarks: documents, a split by document, a trained BPE.

The corpus is a folder of text files, one document per file. The default is the running Python's
own standard library (``sysconfig.get_paths()["stdlib"]``): its ``*.py`` files outside
``test/``, ``tests/``, ``idle_test/``, ``site-packages/`` and ``__pycache__/``. It ships with every
Python, so nothing is downloaded, and it is real, varied text with a long tail of identifiers.

* :func:`list_documents` lists the files, sorted by their path relative to the root (a fixed
  order on every machine and file system).
* :func:`split_documents` shuffles that list with a seeded ``random.Random`` and cuts it into
  train / validation / test, so no document is in two splits.
* :func:`build_text_data` trains a byte-level BPE tokenizer (``tokenizers``) on the training
  documents only, encodes every split as one stream of token ids (each document followed by the
  end-of-text token) and caches everything in a data folder. It is rebuilt only when a file is
  missing; a folder built from another corpus, split or vocabulary size is refused (the
  ``ValueError`` names the difference), so a cache is never silently reused for other settings.

The recorded ``files_sha256`` of each split is the SHA-256 of its relative paths joined by
newlines and ``content_sha256`` the SHA-256 of the files' bytes in that order: two machines with
the same Python version give the same hashes.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import sysconfig
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "EOS_TOKEN",
    "EXCLUDED_DIRS",
    "SPLITS",
    "TextData",
    "build_text_data",
    "list_documents",
    "load_tokenizer",
    "split_documents",
    "stdlib_root",
]

EXCLUDED_DIRS = frozenset({"test", "tests", "idle_test", "site-packages", "__pycache__"})
SPLITS = ("train", "validation", "test")
EOS_TOKEN = "<|endoftext|>"
_FORMAT = 1


def stdlib_root() -> Path:
    """The running Python's standard-library folder."""
    return Path(sysconfig.get_paths()["stdlib"])


def list_documents(root: str | os.PathLike[str], pattern: str = "*.py") -> list[str]:
    """Relative POSIX paths of the files matching ``pattern`` under ``root``, sorted.

    Files in a folder named in :data:`EXCLUDED_DIRS` (at any depth) are left out.
    ``ValueError`` if there is none.
    """
    base = Path(root)
    files = sorted(
        p.relative_to(base).as_posix()
        for p in base.rglob(pattern)
        if p.is_file() and not EXCLUDED_DIRS & set(p.relative_to(base).parts[:-1])
    )
    if not files:
        raise ValueError(f"no {pattern} files under {base}")
    return files


def split_documents(
    files: Sequence[str], seed: int, fractions: tuple[float, float] = (0.05, 0.05)
) -> dict[str, list[str]]:
    """Split a document list into train / validation / test by document.

    The list is sorted, shuffled with ``random.Random(seed)``; the first ``fractions[0]`` of it
    (at least one file) is validation, the next ``fractions[1]`` (at least one) test, the rest
    train. Each split is returned sorted. Deterministic for a given ``files`` set and seed.
    """
    ordered = sorted(set(files))
    if len(ordered) < 3:
        raise ValueError(f"need at least 3 documents to split three ways, got {len(ordered)}")
    if any(f <= 0 for f in fractions) or sum(fractions) >= 1:
        raise ValueError(f"fractions must be positive and sum to < 1, got {fractions}")
    random.Random(seed).shuffle(ordered)
    n_val = max(1, round(len(ordered) * fractions[0]))
    n_test = max(1, round(len(ordered) * fractions[1]))
    if n_val + n_test >= len(ordered):
        raise ValueError(f"{len(ordered)} documents leave none for training")
    return {
        "validation": sorted(ordered[:n_val]),
        "test": sorted(ordered[n_val : n_val + n_test]),
        "train": sorted(ordered[n_val + n_test :]),
    }


def _sha256_lines(items: Iterable[str]) -> str:
    return hashlib.sha256("\n".join(items).encode()).hexdigest()


def _read(root: Path, rel: str) -> str:
    return (root / rel).read_bytes().decode("utf-8", errors="replace")


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


class TextData:
    """A built data folder: ``meta`` (the recorded settings and hashes), the token streams."""

    def __init__(self, folder: Path, meta: dict[str, Any]) -> None:
        self.folder = folder
        self.meta = meta

    @property
    def vocab_size(self) -> int:
        return int(self.meta["vocab_size"])

    @property
    def eos_id(self) -> int:
        return int(self.meta["eos_id"])

    def tokens(self, split: str) -> torch.Tensor:
        """The split's token ids, one 1-D ``int64`` stream (documents joined by EOS)."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")
        return torch.load(self.folder / f"{split}.pt", weights_only=True).long()

    def tokenizer(self) -> Any:
        return load_tokenizer(self.folder)


def load_tokenizer(folder: str | os.PathLike[str]) -> Any:
    """The ``tokenizers.Tokenizer`` saved in a data folder."""
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(Path(folder) / "tokenizer.json"))


def build_text_data(
    folder: str | os.PathLike[str],
    *,
    root: str | os.PathLike[str] | None = None,
    pattern: str = "*.py",
    vocab_size: int = 8192,
    seed: int = 0,
    fractions: tuple[float, float] = (0.05, 0.05),
    log: Any = None,
) -> TextData:
    """Build (or load) the tokenized corpus in ``folder``; see the module docstring.

    Args:
        folder: the data folder (created).
        root: the corpus root; ``None``: the standard library (:func:`stdlib_root`).
        pattern: file pattern of the documents.
        vocab_size: BPE vocabulary size (including the end-of-text token).
        seed: the split's seed.
        fractions: validation and test fractions of the documents.
        log: ``print``-like callable for progress, or ``None``.
    """
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    source = Path(root) if root is not None else stdlib_root()
    want = {
        "format": _FORMAT,
        "root": "stdlib" if root is None else str(source),
        "pattern": pattern,
        "vocab_size": int(vocab_size),
        "seed": int(seed),
        "fractions": [float(f) for f in fractions],
    }
    meta_path = out / "meta.json"
    needed = [meta_path, out / "tokenizer.json"] + [out / f"{s}.pt" for s in SPLITS]
    if meta_path.exists():
        meta = json.loads(meta_path.read_text())
        diff = {k: (meta.get(k), v) for k, v in want.items() if meta.get(k) != v}
        if diff:
            detail = ", ".join(f"{k}: folder has {a!r}, asked {b!r}" for k, (a, b) in diff.items())
            raise ValueError(
                f"data folder {out} was built with other settings ({detail}); "
                "use another folder or delete this one"
            )
        if all(p.exists() for p in needed):
            return TextData(out, meta)
    say = log or (lambda *_: None)
    files = list_documents(source, pattern)
    splits = split_documents(files, seed, fractions)
    say(f"{len(files)} documents under {source}: " + ", ".join(f"{k} {len(v)}" for k, v in splits.items()))

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=int(vocab_size),
        special_tokens=[EOS_TOKEN],
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    train_texts = [_read(source, f) for f in splits["train"]]
    tok.train_from_iterator(train_texts, trainer=trainer, length=len(train_texts))
    eos = tok.token_to_id(EOS_TOKEN)
    meta: dict[str, Any] = {
        **want,
        "source": str(source),
        "eos_id": eos,
        "vocab_size_actual": tok.get_vocab_size(),
        "splits": {},
    }
    for split in SPLITS:
        texts = train_texts if split == "train" else [_read(source, f) for f in splits[split]]
        ids: list[int] = []
        for enc in tok.encode_batch(texts):
            ids.extend(enc.ids)
            ids.append(eos)
        content = hashlib.sha256()
        for f in splits[split]:
            content.update((source / f).read_bytes())
        buf = _tensor_bytes(torch.tensor(ids, dtype=torch.int32))
        _atomic_write_bytes(out / f"{split}.pt", buf)
        meta["splits"][split] = {
            "documents": len(splits[split]),
            "tokens": len(ids),
            "bytes": sum(len(t.encode()) for t in texts),
            "files_sha256": _sha256_lines(splits[split]),
            "content_sha256": content.hexdigest(),
        }
        (out / f"{split}_files.txt").write_text("\n".join(splits[split]) + "\n")
    _atomic_write_bytes(out / "tokenizer.json", tok.to_str().encode())
    _atomic_write_bytes(meta_path, (json.dumps(meta, indent=1) + "\n").encode())
    return TextData(out, meta)


def _tensor_bytes(t: torch.Tensor) -> bytes:
    import io

    buf = io.BytesIO()
    torch.save(t, buf)
    return buf.getvalue()
