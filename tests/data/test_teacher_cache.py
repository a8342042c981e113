"""The offline teacher cache (lud.data.teacher_cache, ``lud cache-teacher``) on a tiny GPT-2 teacher.

The teacher is built from a ``transformers`` config (no download) and the tokenizer is trained
here with ``tokenizers``. Covers the codec, the reader against the online top-k, checksums,
identity, resume after a simulated and after a real (SIGKILL) interruption, and bytes per token.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

from lud.data.teacher_cache import (  # noqa: E402  (after the skips)
    MANIFEST,
    TeacherCache,
    TeacherCacheError,
    codec_for,
    decode,
    encode,
    model_fingerprint,
    tokenizer_fingerprint,
    write_teacher_cache,
)
from lud.losses import TopKTeacher  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
VOCAB = 300
WORDS = ("the cat sat on a mat while distillation of logits at vocabulary scale keeps only the "
         "teacher's top classes and a tail bucket for the rest of the mass").split()


def gpt2(vocab: int = VOCAB, seed: int = 0, n_layer: int = 1) -> torch.nn.Module:
    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(vocab_size=vocab, n_positions=64, n_embd=16, n_layer=n_layer, n_head=2,
                                  resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                                  bos_token_id=0, eos_token_id=0)
    return transformers.GPT2LMHeadModel(cfg).eval()


def texts(n: int, seed: int = 0) -> list[str]:
    g = torch.Generator().manual_seed(seed)
    return [" ".join(WORDS[int(i)] for i in torch.randint(0, len(WORDS), (4 + i % 5,), generator=g))
            for i in range(n)]


@pytest.fixture(scope="module")
def tokenizer_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(texts(200), trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=["[UNK]"]))
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    tok.save(str(path))
    return path


def sequences(tokenizer_file: Path, n: int) -> list[torch.Tensor]:
    tok = tokenizers.Tokenizer.from_file(str(tokenizer_file))
    return [torch.tensor(tok.encode(t).ids) for t in texts(n, seed=1)]


def _write(folder: Path, model: torch.nn.Module, seqs: list[torch.Tensor], tok_sha: str,
           **kw: object) -> dict:
    settings = dict(k=64, vocab_size=VOCAB, tokenizer_sha256=tok_sha, teacher_sha256=model_fingerprint(model),
                    shard_size=3, batch_size=2)
    settings.update(kw)
    return write_teacher_cache(folder, lambda ids: model(input_ids=ids).logits, seqs, **settings)


def _shard_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("shard-*.bin"))}


@pytest.mark.parametrize("vocab", [VOCAB, 2**17, 2**17 + 1, 151_936, 2**18])
def test_codec_round_trip_is_exact(vocab: int) -> None:
    g = torch.Generator().manual_seed(0)
    idx = torch.stack([torch.randperm(vocab, generator=g)[:8] for _ in range(5)])
    idx[0, 0] = vocab - 1
    lp = -(torch.rand(5, 8, generator=g) * 30).to(torch.float16)
    lp[1, 0] = 0.0
    lp[2, 1] = -65504.0  # float16's most negative finite value
    codec = codec_for(vocab)
    assert codec == ("packed32" if vocab <= 2**17 else "bits33")
    data = encode(idx, lp, codec)
    assert len(data) == 5 * 8 * (32 if codec == "packed32" else 33) // 8
    i2, lp2 = decode(data, 5, 8, codec)
    assert torch.equal(i2, idx)
    assert torch.equal(lp2.view(torch.int16), lp.view(torch.int16))  # bit for bit
    # across the bit stream's chunk boundary (2**16 entries), 7 entries per row: rows straddle bytes
    big_idx = torch.randint(0, vocab, (20_000, 7), generator=g)
    big_lp = -(torch.rand(20_000, 7, generator=g) * 20).to(torch.float16)
    i3, lp3 = decode(encode(big_idx, big_lp, codec), 20_000, 7, codec)
    assert torch.equal(i3, big_idx) and torch.equal(lp3, big_lp)


def test_reader_yields_the_online_topk_and_256_bytes_per_token(tokenizer_file: Path, tmp_path: Path) -> None:
    model = gpt2()
    seqs = sequences(tokenizer_file, 8)
    manifest = _write(tmp_path / "c", model, seqs, tokenizer_fingerprint(tokenizer_file))
    assert manifest["complete"] and manifest["num_shards"] == 3
    assert manifest["bytes_per_token"] == 256.0  # k = 64 x (17-bit index + 15-bit float16)
    cache = TeacherCache(tmp_path / "c", tokenizer_sha256=tokenizer_fingerprint(tokenizer_file),
                         teacher_sha256=model_fingerprint(model))
    assert len(cache) == 8
    for i, seq in enumerate(seqs):
        with torch.no_grad():
            ref = TopKTeacher.from_logits(model(input_ids=seq[None]).logits[0], 64,
                                          log_prob_dtype=torch.float16)
        got = cache[i]
        assert isinstance(got, TopKTeacher) and got.shape == (len(seq),)
        assert torch.equal(got.indices, ref.indices)
        assert torch.equal(got.log_probs, ref.log_probs)
        got.check(VOCAB)


def test_corrupt_truncated_missing_shards_and_foreign_identity_are_named(
    tokenizer_file: Path, tmp_path: Path
) -> None:
    model = gpt2()
    seqs = sequences(tokenizer_file, 7)
    tok_sha = tokenizer_fingerprint(tokenizer_file)
    folder = tmp_path / "c"
    _write(folder, model, seqs, tok_sha)
    shard = folder / "shard-00001.bin"
    good = shard.read_bytes()
    shard.write_bytes(good[:10] + bytes([good[10] ^ 1]) + good[11:])
    with pytest.raises(TeacherCacheError, match=r"shard-00001\.bin fails its checksum"):
        TeacherCache(folder)[3]
    TeacherCache(folder)[0]  # the other shards still read
    shard.write_bytes(good[:-4])
    with pytest.raises(TeacherCacheError, match=r"shard-00001\.bin is truncated"):
        TeacherCache(folder)[4]
    _write(folder, model, seqs, tok_sha)  # resuming rewrites a shard of the wrong size
    assert shard.read_bytes() == good
    shard.write_bytes(good[:10] + bytes([good[10] ^ 1]) + good[11:])
    _write(folder, model, seqs, tok_sha, verify_existing=True)  # and, asked to, a corrupt one
    assert shard.read_bytes() == good
    shard.unlink()
    with pytest.raises(TeacherCacheError, match=r"shard-00001\.bin is missing"):
        TeacherCache(folder)[5]
    _write(folder, model, seqs, tok_sha)  # and a missing one, byte-identical
    assert shard.read_bytes() == good
    # another tokenizer / teacher / data set
    with pytest.raises(TeacherCacheError, match="another tokenizer"):
        TeacherCache(folder, tokenizer_sha256="0" * 64)
    with pytest.raises(TeacherCacheError, match="another teacher"):
        TeacherCache(folder, teacher_sha256=model_fingerprint(gpt2(seed=1)))
    with pytest.raises(ValueError, match="another teacher"):
        _write(folder, gpt2(seed=1), seqs, tok_sha)
    with pytest.raises(ValueError, match="another tokenizer"):
        _write(folder, model, seqs, "f" * 64)
    with pytest.raises(ValueError, match="another data set"):
        _write(folder, model, seqs[:-1] + [seqs[-1][:-1]], tok_sha)
    with pytest.raises(ValueError, match="setting 'k'"):
        _write(folder, model, seqs, tok_sha, k=32)
    # not a cache
    with pytest.raises(TeacherCacheError, match="no manifest.json"):
        TeacherCache(tmp_path)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="not empty"):
        _write(tmp_path / "other", model, seqs, tok_sha)


def test_half_written_cache_resumes_to_the_uninterrupted_bytes(tokenizer_file: Path, tmp_path: Path) -> None:
    model = gpt2()
    seqs = sequences(tokenizer_file, 10)
    tok_sha = tokenizer_fingerprint(tokenizer_file)
    ref = tmp_path / "ref"
    _write(ref, model, seqs, tok_sha)
    part = tmp_path / "part"
    m = _write(part, model, seqs, tok_sha, max_shards=2)
    assert not m["complete"] and sorted(m["shards"]) == ["0", "1"]
    with pytest.raises(TeacherCacheError, match="incomplete: 2 of 4 shards missing"):
        TeacherCache(part)
    # a kill after a shard's rename but before the manifest records it, and one mid-write
    (part / "shard-00002.bin").write_bytes((ref / "shard-00002.bin").read_bytes()[:100])
    (part / "shard-00003.bin.tmp").write_bytes(b"partial")
    # a kill while the very first manifest was being written: only its temporary file exists
    first = tmp_path / "first"
    first.mkdir()
    (first / "manifest.json.tmp").write_bytes(b'{"format": ')
    _write(first, model, seqs, tok_sha)
    assert _shard_bytes(first) == _shard_bytes(ref)
    m = _write(part, model, seqs, tok_sha)
    assert m["complete"]
    assert _shard_bytes(part) == _shard_bytes(ref)
    recorded = json.loads((part / MANIFEST).read_text())["shards"]
    assert recorded == json.loads((ref / MANIFEST).read_text())["shards"]
    assert not list(part.glob("*.tmp"))


def _cli_env() -> dict[str, str]:
    src = str(next(p for p in Path(__file__).resolve().parents if (p / "pyproject.toml").is_file()) / "src")
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


@pytest.mark.slow
def test_cli_survives_sigkill_without_losing_or_duplicating_a_shard(
    tokenizer_file: Path, tmp_path: Path
) -> None:
    teacher_dir = tmp_path / "teacher"
    gpt2(n_layer=2).save_pretrained(teacher_dir)
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts(40, seed=2)))
    cmd = [sys.executable, "-m", "lud", "cache-teacher", "--teacher", str(teacher_dir), "--tokenizer",
           str(tokenizer_file), "--data", str(data), "--top-k", "64", "--shard-size", "1",
           "--batch-size", "1"]
    env = _cli_env()
    ref = subprocess.run([*cmd, "--out", str(tmp_path / "ref")], env=env, capture_output=True, text=True,
                         timeout=300)
    assert ref.returncode == 0, ref.stderr
    assert "40/40 shards" in ref.stdout and "256.0 bytes/token" in ref.stdout
    out = tmp_path / "killed"
    proc = subprocess.Popen([*cmd, "--out", str(out)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    recorded = 0
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            recorded = len(json.loads((out / MANIFEST).read_text())["shards"])
        except (OSError, ValueError):
            recorded = 0
        if recorded >= 3:
            break
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    manifest = json.loads((out / MANIFEST).read_text())  # whole, never half-written
    assert 3 <= len(manifest["shards"]) < 40, "the writer finished before it could be killed"
    with pytest.raises(TeacherCacheError, match="incomplete"):
        TeacherCache(out)
    res = subprocess.run([*cmd, "--out", str(out)], env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "40/40 shards" in res.stdout
    assert _shard_bytes(out) == _shard_bytes(tmp_path / "ref")
    assert len(list(out.glob("shard-*.bin"))) == 40 and not list(out.glob("*.tmp"))
    assert len(TeacherCache(out)) == 40
    # resuming with another teacher is refused, naming it
    gpt2(n_layer=2, seed=3).save_pretrained(teacher_dir)
    res = subprocess.run([*cmd, "--out", str(out)], env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 2 and "another teacher" in res.stderr


def test_cli_bad_input_exits_2_naming_it(tokenizer_file: Path, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    from lud.cli import main

    teacher_dir = tmp_path / "teacher"
    gpt2().save_pretrained(teacher_dir)
    base = ["cache-teacher", "--teacher", str(teacher_dir), "--tokenizer", str(tokenizer_file)]
    data = tmp_path / "ids.jsonl"
    data.write_text(json.dumps({"input_ids": [1, 2, VOCAB + 5]}) + "\n")
    cases = [
        (["--data", str(tmp_path / "nowhere.jsonl")], "no such file or folder"),
        (["--data", str(data)], f"token id {VOCAB + 5}, the teacher's vocabulary has {VOCAB}"),
    ]
    data2 = tmp_path / "rows.jsonl"
    data2.write_text(json.dumps({"input_ids": [1, 2, 3]}) + "\n" + json.dumps({"words": "x"}) + "\n")
    cases.append((["--data", str(data2)], "row 1 holds neither 'input_ids' nor 'text'"))
    data3 = tmp_path / "ok.jsonl"
    data3.write_text(json.dumps({"text": "the cat sat"}) + "\n")
    cases.append((["--data", str(data3), "--top-k", "0"], "k must be an int in [1, vocab_size=300]"))
    for extra, message in cases:
        assert main([*base, *extra, "--out", str(tmp_path / "out")]) == 2
        assert message in capsys.readouterr().err, message
    assert main([*base, "--data", str(data3), "--out", str(tmp_path / "out"), "--top-k", "8"]) == 0
    assert "1/1 shards" in capsys.readouterr().out
    datasets = pytest.importorskip("datasets")
    datasets.Dataset.from_dict({"input_ids": [[1, 2, 3], [4, 5]]}).save_to_disk(str(tmp_path / "ds"))
    assert main([*base, "--data", str(tmp_path / "ds"), "--out", str(tmp_path / "out2"), "--top-k", "8",
                 "--shard-size", "1"]) == 0
    assert "2/2 shards, 5 tokens" in capsys.readouterr().out
