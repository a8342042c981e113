"""The offline teacher cache: a teacher's top-k log-probabilities over a tokenized data set, on disk.

A folder holds ``manifest.json`` and shards ``shard-00000.bin``, ``shard-00001.bin``, … Shard ``i``
covers sequences ``[i·shard_size, (i+1)·shard_size)``; for every token of those sequences it holds
the teacher's ``k`` most probable next tokens and their log-probabilities (float16), all positions
of a sequence in order, sequences in order.

Encoding (``codec`` in the manifest), per (token, class) entry:

``packed32`` (vocabularies up to 2**17 = 131,072: GPT-2, Llama-3's 128,256)
    one little-endian uint32: the class index in the high 17 bits, the low 15 bits of the
    log-probability's float16 bit pattern in the low 15. A log-probability is ``<= 0``, so the
    float16 sign bit is known and dropping it loses nothing: 4 bytes per entry, **256 bytes per
    token at k = 64**.
``bitsN`` (larger vocabularies; ``N = ceil(log2 V) + 15``)
    the same two fields, ``N`` bits per entry, packed into one little-endian bit stream (lossless
    as well): 33 bits at Qwen's 151,936 classes, **264 bytes per token at k = 64**.

Durability. The manifest is written first (no shards), then each shard is written to a temporary
file, flushed and ``fsync``-ed, renamed into place, and only then recorded in the manifest (itself
replaced the same way). A kill at any point leaves every recorded shard whole; a shard written but
not yet recorded, or a stray temporary file, is simply written again on resume, as is a recorded
shard found missing or of the wrong size (or failing its sha256, with ``verify_existing``). Shards are a pure
function of the teacher, the data and the settings (fixed batch composition inside a shard), so a
resumed cache is byte-identical to one written in one go. Each recorded shard carries its sha256
and byte count, verified whenever it is read.

Identity. The manifest records sha256 fingerprints of the tokenizer
(:func:`tokenizer_fingerprint`), the teacher (:func:`model_fingerprint`: its config and every
tensor of its ``state_dict``) and the token ids (:func:`dataset_fingerprint`). Resuming with
another tokenizer, teacher, data set or setting, or reading with an expected tokenizer/teacher
that differs, is a ``ValueError`` naming which.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..losses.topk import TAILS, TopKTeacher

__all__ = [
    "FORMAT",
    "MANIFEST",
    "CachedTeacherCollator",
    "CachedTeacherDataset",
    "TeacherCache",
    "TeacherCacheError",
    "dataset_fingerprint",
    "model_fingerprint",
    "tokenizer_fingerprint",
    "write_teacher_cache",
]

FORMAT = "lud-teacher-cache/1"
MANIFEST = "manifest.json"
PACKED_MAX_VOCAB = 2**17
#: the keys of a batch that carry a cached teacher (see :class:`CachedTeacherDataset`)
INDICES_KEY, LOG_PROBS_KEY = "teacher_topk_indices", "teacher_topk_log_probs"
TEMPERATURE_KEY = "teacher_topk_temperature"
# settings that must match for a resume to continue the same cache
_IDENTITY = ("format", "k", "vocab_size", "codec", "temperature", "shard_size", "num_sequences",
             "dataset_sha256", "tokenizer_sha256", "teacher_sha256")
_NAMES = {"tokenizer_sha256": "tokenizer", "teacher_sha256": "teacher", "dataset_sha256": "data set"}


class TeacherCacheError(ValueError):
    """A cache that cannot be used: incomplete, corrupt, truncated, or of another teacher/tokenizer."""


# ----------------------------------------------------------------------------- fingerprints
def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """sha256 of a tokenizer's full definition (vocabulary, merges, normalisation, special tokens).

    Accepts a Hugging Face fast tokenizer, a ``tokenizers.Tokenizer``, a path to a
    ``tokenizer.json`` file, or any object with ``get_vocab()`` (then the sorted vocabulary only).
    """
    if isinstance(tokenizer, (str, os.PathLike)):
        return _sha(Path(tokenizer).read_bytes())
    backend = getattr(tokenizer, "backend_tokenizer", tokenizer)
    if hasattr(backend, "to_str"):
        return _sha(backend.to_str().encode())
    if hasattr(tokenizer, "get_vocab"):
        return _sha(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    raise ValueError(f"cannot fingerprint a tokenizer of type {type(tokenizer).__name__}")


def model_fingerprint(model: nn.Module) -> str:
    """sha256 of a model's configuration (if it has one) and every tensor of its ``state_dict``.

    Tensor names, dtypes, shapes and bytes, in name order. Reads every weight once (a few seconds
    per GB).
    """
    h = hashlib.sha256()
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "to_dict"):
        skip = ("transformers_version", "_name_or_path")
        cfg = {k: v for k, v in config.to_dict().items() if k not in skip}
        h.update(json.dumps(cfg, sort_keys=True, default=str).encode())
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def dataset_fingerprint(sequences: Sequence[Tensor]) -> str:
    """sha256 of the token ids (as int64) and lengths of every sequence, in order."""
    h = hashlib.sha256()
    for seq in sequences:
        ids = torch.as_tensor(seq).reshape(-1).to(torch.int64)
        h.update(int(ids.numel()).to_bytes(8, "little"))
        h.update(ids.numpy().tobytes())
    return h.hexdigest()


# ----------------------------------------------------------------------------- encoding
def codec_for(vocab_size: int) -> str:
    """``packed32`` up to 2**17 classes, ``bitsN`` above (see the module docstring)."""
    if vocab_size <= PACKED_MAX_VOCAB:
        return "packed32"
    return f"bits{(vocab_size - 1).bit_length() + 15}"


def _codec_bits(codec: str) -> int:
    if codec == "packed32":
        return 32
    if not codec.startswith("bits") or not codec[4:].isdigit() or not 16 < int(codec[4:]) <= 64:
        raise TeacherCacheError(f"unknown teacher cache codec {codec!r}")
    return int(codec[4:])


# entries packed per step of the bit-stream codec: a multiple of 8, so every step ends on a byte
_CHUNK = 1 << 16
_ONE = np.uint64(1)


def encode(indices: Tensor, log_probs: Tensor, codec: str) -> bytes:
    """``(tokens, k)`` indices and float16 log-probabilities → bytes."""
    idx = indices.detach().cpu().to(torch.int64).numpy()
    bits = log_probs.detach().cpu().to(torch.float16).numpy().view(np.uint16)
    if codec == "packed32":
        words = (idx.astype(np.uint32) << np.uint32(15)) | (bits & np.uint16(0x7FFF)).astype(np.uint32)
        return words.astype("<u4").tobytes()
    width = _codec_bits(codec)
    words64 = (idx.astype(np.uint64) << np.uint64(15)) | (bits & np.uint16(0x7FFF)).astype(np.uint64)
    words64 = words64.reshape(-1)
    shifts = np.arange(width, dtype=np.uint64)
    parts = []
    for start in range(0, words64.size, _CHUNK):
        chunk = words64[start:start + _CHUNK]
        bitmat = ((chunk[:, None] >> shifts) & _ONE).astype(np.uint8)
        parts.append(np.packbits(bitmat.reshape(-1), bitorder="little").tobytes())
    return b"".join(parts)


def decode(data: bytes, tokens: int, k: int, codec: str) -> tuple[Tensor, Tensor]:
    """bytes → ``(tokens, k)`` int64 indices and float16 log-probabilities."""
    if codec == "packed32":
        words = np.frombuffer(data, dtype="<u4").reshape(tokens, k)
        idx = (words >> np.uint32(15)).astype(np.int64)
        mag = (words & np.uint32(0x7FFF)).astype(np.uint16)
        bits = np.where(mag == 0, mag, mag | np.uint16(0x8000))  # log-prob 0 stays +0.0
    else:
        width, n = _codec_bits(codec), tokens * k
        raw = np.frombuffer(data, dtype=np.uint8)
        shifts = np.arange(width, dtype=np.uint64)
        words = np.empty(n, dtype=np.uint64)
        for start in range(0, n, _CHUNK):
            count = min(_CHUNK, n - start)
            first = start * width // 8  # a chunk starts on a byte: _CHUNK is a multiple of 8
            stream = np.unpackbits(raw[first:first + (count * width + 7) // 8], bitorder="little")
            bitmat = stream[: count * width].reshape(count, width).astype(np.uint64)
            words[start:start + count] = (bitmat << shifts).sum(axis=1, dtype=np.uint64)
        words = words.reshape(tokens, k)
        idx = (words >> np.uint64(15)).astype(np.int64)
        mag = (words & np.uint64(0x7FFF)).astype(np.uint16)
        bits = np.where(mag == 0, mag, mag | np.uint16(0x8000))
    lp = torch.from_numpy(bits.astype(np.uint16).view(np.float16).copy())
    return torch.from_numpy(idx.copy()), lp


# ----------------------------------------------------------------------------- files
def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # not every file system lets a folder be opened
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a flushed, fsync-ed temporary file and a rename."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _shard_name(i: int) -> str:
    return f"shard-{i:05d}.bin"


def _read_manifest(folder: Path) -> dict[str, Any]:
    path = folder / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise TeacherCacheError(f"{folder} is not a teacher cache: no {MANIFEST}") from None
    except json.JSONDecodeError as exc:
        raise TeacherCacheError(f"{path} is not valid JSON ({exc})") from None
    if manifest.get("format") != FORMAT:
        raise TeacherCacheError(f"{path}: format {manifest.get('format')!r}, expected {FORMAT!r}")
    return manifest


def _check_shard(folder: Path, entry: dict[str, Any]) -> bytes:
    """The shard's bytes; ``TeacherCacheError`` naming it when missing, truncated or corrupt."""
    path = folder / entry["file"]
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise TeacherCacheError(f"teacher cache shard {path} is missing") from None
    if len(data) != entry["bytes"]:
        raise TeacherCacheError(f"teacher cache shard {path} is truncated or padded: {len(data)} bytes, "
                                f"the manifest records {entry['bytes']}")
    digest = _sha(data)
    if digest != entry["sha256"]:
        raise TeacherCacheError(f"teacher cache shard {path} fails its checksum (sha256 {digest[:12]}…, "
                                f"the manifest records {entry['sha256'][:12]}…): the file is corrupt")
    return data


# ----------------------------------------------------------------------------- writer
def write_teacher_cache(
    folder: str | os.PathLike[str],
    teacher: Callable[[Tensor], Tensor],
    sequences: Sequence[Tensor],
    *,
    k: int,
    vocab_size: int,
    tokenizer_sha256: str,
    teacher_sha256: str,
    temperature: float = 1.0,
    shard_size: int = 256,
    batch_size: int = 8,
    max_shards: int | None = None,
    device: torch.device | str = "cpu",
    log: Callable[[str], None] | None = None,
    verify_existing: bool = False,
) -> dict[str, Any]:
    """Write (or resume) the cache of ``teacher``'s top-k over ``sequences`` in ``folder``.

    Args:
        folder: the cache folder; created, or resumed when it holds a manifest of the same
            teacher, tokenizer, data and settings (otherwise ``ValueError`` naming the difference).
        teacher: called on ``(batch, length)`` int64 token ids (on ``device``), returns
            ``(batch, length, vocab_size)`` logits. Sequences of equal length inside a shard go
            through it together, ``batch_size`` at a time; others alone (no padding).
        sequences: 1-D token-id tensors (the tokenized data set).
        k: classes kept per token. vocab_size: the teacher's vocabulary (chooses the codec).
        tokenizer_sha256, teacher_sha256: identity fingerprints (:func:`tokenizer_fingerprint`,
            :func:`model_fingerprint`).
        temperature: softmax temperature of the stored log-probabilities.
        shard_size: sequences per shard. max_shards: stop after writing this many new shards.
        log: called with one line per written shard.
        verify_existing: on resume, check every recorded shard's sha256 (reads the whole cache);
            by default only its size is checked (the reader checks the sha256 of what it reads).
            A recorded shard that is missing or fails the check is written again.

    Returns:
        the manifest (a dict), with ``complete`` telling whether every shard is written.
    """
    folder = Path(folder)
    if not isinstance(k, int) or not 1 <= k <= vocab_size:
        raise ValueError(f"k must be an int in [1, vocab_size={vocab_size}], got {k!r}")
    if shard_size < 1 or batch_size < 1:
        raise ValueError(f"shard_size and batch_size must be >= 1, got {shard_size}, {batch_size}")
    if not sequences:
        raise ValueError("the data set holds no sequence")
    fresh = {
        "format": FORMAT,
        "k": int(k),
        "vocab_size": int(vocab_size),
        "codec": codec_for(vocab_size),
        "temperature": float(temperature),
        "shard_size": int(shard_size),
        "num_sequences": len(sequences),
        "num_shards": math.ceil(len(sequences) / shard_size),
        "dataset_sha256": dataset_fingerprint(sequences),
        "tokenizer_sha256": tokenizer_sha256,
        "teacher_sha256": teacher_sha256,
        "shards": {},
    }
    if (folder / MANIFEST).exists():
        manifest = _read_manifest(folder)
        for key in _IDENTITY:
            if manifest.get(key) != fresh[key]:
                what = _NAMES.get(key, f"setting {key!r}")
                raise ValueError(f"the teacher cache in {folder} was written with another {what} "
                                 f"({key} = {manifest.get(key)!r}, now {fresh[key]!r}); write to a new "
                                 "folder, or resume with the same teacher, tokenizer, data and settings")
    else:
        if folder.exists() and any(not p.name.endswith(".tmp") for p in folder.iterdir()):
            raise ValueError(f"{folder} is not empty and holds no {MANIFEST}: refusing to write a "
                             "teacher cache into it")
        folder.mkdir(parents=True, exist_ok=True)
        manifest = fresh
        _atomic_write(folder / MANIFEST, _manifest_bytes(manifest))
    for stray in folder.glob("*.tmp"):
        stray.unlink()
    written = 0
    for shard in range(fresh["num_shards"]):
        entry = manifest["shards"].get(str(shard))
        if entry is not None:
            try:
                if verify_existing:
                    _check_shard(folder, entry)
                elif (folder / entry["file"]).stat().st_size != entry["bytes"]:
                    raise TeacherCacheError(f"{entry['file']} has the wrong size")
                continue
            except (TeacherCacheError, FileNotFoundError) as exc:  # damaged since: write it again
                if log:
                    log(f"rewriting shard {shard}: {exc}")
        if max_shards is not None and written >= max_shards:
            break
        first = shard * shard_size
        seqs = [torch.as_tensor(s).reshape(-1).to(torch.int64) for s in sequences[first:first + shard_size]]
        idx, lp = _shard_topk(teacher, seqs, k, vocab_size, temperature, batch_size, device)
        data = encode(idx, lp, fresh["codec"])
        name = _shard_name(shard)
        _atomic_write(folder / name, data)
        manifest["shards"][str(shard)] = {
            "file": name,
            "first": first,
            "lengths": [int(s.numel()) for s in seqs],
            "bytes": len(data),
            "sha256": _sha(data),
        }
        _atomic_write(folder / MANIFEST, _manifest_bytes(manifest))
        written += 1
        if log:
            log(f"shard {shard + 1}/{fresh['num_shards']}: {len(data)} bytes, {idx.shape[0]} tokens")
    return manifest


def _manifest_bytes(manifest: dict[str, Any]) -> bytes:
    shards = manifest["shards"]
    manifest["complete"] = len(shards) == manifest["num_shards"]
    tokens = sum(sum(e["lengths"]) for e in shards.values())
    size = sum(e["bytes"] for e in shards.values())
    manifest["tokens"] = tokens
    manifest["bytes"] = size
    manifest["bytes_per_token"] = size / tokens if tokens else None
    ordered = dict(sorted(shards.items(), key=lambda kv: int(kv[0])))
    return json.dumps({**manifest, "shards": ordered}, indent=1).encode()


@torch.no_grad()
def _shard_topk(
    teacher: Callable[[Tensor], Tensor],
    seqs: list[Tensor],
    k: int,
    vocab_size: int,
    temperature: float,
    batch_size: int,
    device: torch.device | str,
) -> tuple[Tensor, Tensor]:
    """``(tokens, k)`` indices and float16 log-probs of one shard, sequences in order."""
    out: list[TopKTeacher | None] = [None] * len(seqs)
    by_length: dict[int, list[int]] = {}
    for i, s in enumerate(seqs):
        by_length.setdefault(int(s.numel()), []).append(i)
    for length, members in by_length.items():
        for start in range(0, len(members), batch_size):
            rows = members[start:start + batch_size]
            ids = torch.stack([seqs[i] for i in rows]).to(device)
            logits = teacher(ids)
            if tuple(logits.shape) != (len(rows), length, vocab_size):
                raise ValueError(f"the teacher returned logits of shape {tuple(logits.shape)} for "
                                 f"ids {tuple(ids.shape)}; expected (..., {vocab_size}) per token")
            topk = TopKTeacher.from_logits(logits, k, temperature, log_prob_dtype=torch.float16)
            for j, i in enumerate(rows):
                out[i] = topk.select(j).to("cpu")
    assert all(t is not None for t in out)
    return (torch.cat([t.indices for t in out if t is not None]),
            torch.cat([t.log_probs for t in out if t is not None]))


# ----------------------------------------------------------------------------- reader
class TeacherCache(torch.utils.data.Dataset):  # type: ignore[type-arg]
    """A complete teacher cache as a data set: item ``i`` is sequence ``i``'s ``(length, k)``
    :class:`~lud.losses.topk.TopKTeacher` (int64 indices, float16 log-probabilities).

    Args:
        folder: the cache folder.
        tokenizer_sha256, teacher_sha256: when given, the cache must have been written with them.
        tail: the missing-mass rule the yielded teachers carry.

    Every shard's byte count and sha256 are checked when it is first read (one shard is kept
    in memory). Raises :class:`TeacherCacheError` (a ``ValueError``) naming the problem: no
    manifest, an incomplete cache, another tokenizer or teacher, a missing, truncated or corrupt
    shard.
    """

    def __init__(
        self,
        folder: str | os.PathLike[str],
        *,
        tokenizer_sha256: str | None = None,
        teacher_sha256: str | None = None,
        tail: str = "bucket",
    ) -> None:
        self.folder = Path(folder)
        self.manifest = _read_manifest(self.folder)
        m = self.manifest
        for key, expected in (("tokenizer_sha256", tokenizer_sha256), ("teacher_sha256", teacher_sha256)):
            if expected is not None and m[key] != expected:
                raise TeacherCacheError(f"the teacher cache in {self.folder} was written with another "
                                        f"{_NAMES[key]} ({key} {m[key][:12]}…, expected {expected[:12]}…)")
        missing = [i for i in range(m["num_shards"]) if str(i) not in m["shards"]]
        if missing:
            raise TeacherCacheError(f"the teacher cache in {self.folder} is incomplete: {len(missing)} of "
                                    f"{m['num_shards']} shards missing (first: {missing[0]}); resume the "
                                    "writer (lud cache-teacher with the same arguments)")
        if tail not in TAILS:
            raise ValueError(f"tail must be one of {TAILS}, got {tail!r}")
        self.tail = tail
        self.k, self.vocab_size = int(m["k"]), int(m["vocab_size"])
        self.temperature = float(m["temperature"])
        self._loaded: tuple[int, list[tuple[Tensor, Tensor]]] | None = None

    def __len__(self) -> int:
        return int(self.manifest["num_sequences"])

    @property
    def bytes_per_token(self) -> float:
        return float(self.manifest["bytes_per_token"])

    def length(self, i: int) -> int:
        """Tokens of sequence ``i`` (from the manifest, no shard read)."""
        entry = self.manifest["shards"][str(i // self.manifest["shard_size"])]
        return int(entry["lengths"][i - entry["first"]])

    def _shard(self, shard: int) -> list[tuple[Tensor, Tensor]]:
        if self._loaded is not None and self._loaded[0] == shard:
            return self._loaded[1]
        entry = self.manifest["shards"][str(shard)]
        data = _check_shard(self.folder, entry)
        lengths = entry["lengths"]
        idx, lp = decode(data, sum(lengths), self.k, self.manifest["codec"])
        rows = list(zip(idx.split(lengths), lp.split(lengths)))
        self._loaded = (shard, rows)
        return rows

    def __getitem__(self, i: int) -> TopKTeacher:
        if not 0 <= i < len(self):
            raise IndexError(f"sequence {i} out of range: the cache holds {len(self)}")
        shard_size = self.manifest["shard_size"]
        idx, lp = self._shard(i // shard_size)[i % shard_size]
        return TopKTeacher(idx, lp, self.tail, self.temperature, self.vocab_size, validate=False)

    def __iter__(self) -> Iterator[TopKTeacher]:
        for i in range(len(self)):
            yield self[i]


class CachedTeacherDataset(torch.utils.data.Dataset):  # type: ignore[type-arg]
    """Rows of a tokenized data set with their cached teacher, for training from the cache.

    Row ``i`` is ``dataset[i]`` (a dict holding ``input_ids``) plus ``teacher_topk_indices`` and
    ``teacher_topk_log_probs`` (``(length, k)`` tensors) and ``teacher_topk_temperature`` (a 0-d
    tensor: the cache's temperature), which
    :class:`~lud.integrations.hf.DistillationTrainer` turns into a
    :class:`~lud.losses.topk.TopKTeacher` instead of running a teacher. The cache must have been
    written over this data set (same sequence count; each row's length is checked when read).
    Rows of one batch must have equal lengths for the default collator, which stacks them; for rows
    of different lengths use :class:`CachedTeacherCollator`.
    """

    def __init__(self, dataset: Sequence[dict[str, Any]], cache: TeacherCache) -> None:
        if len(dataset) != len(cache):
            raise TeacherCacheError(f"the teacher cache holds {len(cache)} sequences, the data set "
                                    f"{len(dataset)}: it was written over another data set")
        self.dataset, self.cache = dataset, cache

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict[str, Any]:
        row = dict(self.dataset[i])
        teacher = self.cache[i]
        length = len(row["input_ids"])
        if teacher.shape != (length,):
            raise TeacherCacheError(f"row {i} has {length} tokens, its cached teacher {teacher.shape[0]}: "
                                    "the cache was written over another data set")
        row[INDICES_KEY] = teacher.indices
        row[LOG_PROBS_KEY] = teacher.log_probs
        row[TEMPERATURE_KEY] = torch.tensor(teacher.temperature)
        return row


class CachedTeacherCollator:
    """Stacks rows of :class:`CachedTeacherDataset` of different lengths, padding on the right.

    ``input_ids`` get ``pad_token_id``, ``labels`` get ``-100`` (the padded positions do not count),
    ``attention_mask`` gets 0, the cached teacher gets indices ``0..k-1`` and log-probability
    ``-30`` (valid values, never used: their labels are ignored); any other per-token tensor gets 0.
    0-d tensors (the cache's temperature) are stacked.
    """

    def __init__(self, pad_token_id: int = 0, label_pad: int = -100) -> None:
        self.pad_token_id, self.label_pad = int(pad_token_id), int(label_pad)

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Tensor]:
        if not rows:
            raise ValueError("CachedTeacherCollator: an empty batch")
        batch: dict[str, Tensor] = {}
        longest = max(len(r["input_ids"]) for r in rows)
        for key in rows[0]:
            values = [torch.as_tensor(r[key]) for r in rows]
            if values[0].dim() == 0:
                batch[key] = torch.stack(values)
                continue
            padded = []
            for i, v in enumerate(values):
                missing = longest - v.shape[0]
                length = len(rows[i]["input_ids"])
                if v.shape[0] != length:
                    raise ValueError(f"CachedTeacherCollator: '{key}' of row {i} has {v.shape[0]} "
                                     f"positions, its input_ids {length}")
                if missing:
                    fill = v.new_full((missing, *v.shape[1:]), self._pad_value(key))
                    if key == INDICES_KEY:
                        fill = torch.arange(v.shape[1], dtype=v.dtype).expand(missing, -1).clone()
                    v = torch.cat([v, fill])
                padded.append(v)
            batch[key] = torch.stack(padded)
        return batch

    def _pad_value(self, key: str) -> float:
        return {"input_ids": self.pad_token_id, "labels": self.label_pad, LOG_PROBS_KEY: -30.0}.get(key, 0)
