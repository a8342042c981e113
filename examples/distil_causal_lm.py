"""Distil a small causal language model offline, on the Python standard library's own sources.

Everything is local: the text is the ``*.py`` files of the running Python's standard library
(``sysconfig.get_paths()['stdlib']``, without ``test/``, ``tests/``, ``idle_test/`` and
``site-packages/``), split by file with a fixed seed into train and validation; the tokenizer is
byte-level (ids 0-255 are the bytes, 256 ends a file, 257 pads), so nothing is downloaded or
trained for it. The example

1. trains a GPT-2 teacher (4 layers, width 128) with the plain ``transformers.Trainer``;
2. trains a smaller GPT-2 student (1 layer, width 64) per method and seed: ``ce`` (the plain
   Trainer, no teacher) and every distillation loss named in ``--methods`` through
   :class:`lud.integrations.DistillationTrainer`. The language-model baseline is ``fkl``, forward
   KL at T = 1 with 0.5 CE (torchtune's recipe); ``kd`` and ``dist`` run at their image-classifier
   defaults (KD: T = 4, CE weight 0.1) and are marked as such in the tables;
3. prints validation perplexity (exp of the mean next-token cross-entropy) and next-token accuracy
   per method and seed, then mean ± std per method, as Markdown tables.

Run::

    HF_HUB_OFFLINE=1 OMP_NUM_THREADS=2 python examples/distil_causal_lm.py --smoke   # < 1 minute
    HF_HUB_OFFLINE=1 OMP_NUM_THREADS=2 python examples/distil_causal_lm.py           # the default

``--smoke`` (10 teacher steps, 4 student steps, one seed, CE/FKL/LUD) checks that it runs, nothing
more (its students have not learned anything yet). The default is 1,000 teacher steps, then
1,000 student steps of 8 x 32 tokens for 3 seeds of CE/FKL/KD/DIST/LUD (15 student runs). Without
FKL (12 runs) it took 7 min 14 s on the 2-core build VM, with one thread next to another
benchmark; each FKL student took 34–42 s more. The numbers are in ``docs/benchmarks.md`` ("A
language model"), with those of 200 student steps (3 min 32 s).

Needs the ``hf`` extra: ``pip install 'lud[hf]'``.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import statistics
import sysconfig
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import transformers  # noqa: E402

from lud.integrations import DistillationTrainer  # noqa: E402

EOS, PAD, VOCAB = 256, 257, 258
EXCLUDED_DIRS = {"test", "tests", "idle_test", "site-packages", "__pycache__"}


# -- data -----------------------------------------------------------------------------------------
def stdlib_files() -> list[Path]:
    """The standard library's ``*.py`` files, tests and third-party packages excluded, sorted."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = [p for p in root.rglob("*.py") if not EXCLUDED_DIRS & set(p.relative_to(root).parts[:-1])]
    if not files:
        raise SystemExit(f"no *.py files under {root}: is this Python's standard library installed?")
    return sorted(files)


def encode(files: list[Path], budget: int) -> torch.Tensor:
    """Bytes of ``files`` in order, each followed by EOS, until ``budget`` tokens."""
    out: list[int] = []
    for path in files:
        out.extend(path.read_bytes())
        out.append(EOS)
        if len(out) >= budget:
            break
    if len(out) < budget:
        raise SystemExit(f"only {len(out):,} tokens of text available, {budget:,} asked for")
    return torch.tensor(out[:budget], dtype=torch.long)


def split_corpus(train_tokens: int, val_tokens: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Train and validation token streams from disjoint files (seeded file shuffle)."""
    files = stdlib_files()
    random.Random(seed).shuffle(files)
    n_val = max(1, len(files) // 10)
    return encode(files[n_val:], train_tokens), encode(files[:n_val], val_tokens)


class Chunks(torch.utils.data.Dataset):
    """Non-overlapping windows of ``seq_len`` tokens; the labels are the inputs (HF shifts them)."""

    def __init__(self, stream: torch.Tensor, seq_len: int) -> None:
        self.windows = stream[: len(stream) // seq_len * seq_len].view(-1, seq_len)

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        ids = self.windows[i]
        return {"input_ids": ids, "labels": ids.clone()}


# -- models and training --------------------------------------------------------------------------
def gpt2(layers: int, width: int, heads: int, seq_len: int, seed: int) -> transformers.GPT2LMHeadModel:
    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(vocab_size=VOCAB, n_positions=seq_len, n_embd=width, n_layer=layers,
                                  n_head=heads, bos_token_id=EOS, eos_token_id=EOS, pad_token_id=PAD)
    return transformers.GPT2LMHeadModel(cfg)


def training_args(out: Path, steps: int, batch: int, lr: float, seed: int) -> transformers.TrainingArguments:
    return transformers.TrainingArguments(
        output_dir=str(out), max_steps=steps, per_device_train_batch_size=batch, learning_rate=lr,
        lr_scheduler_type="cosine", warmup_steps=max(1, steps // 20), weight_decay=0.01,
        logging_steps=max(1, steps // 5), save_strategy="no", report_to=[], use_cpu=True,
        disable_tqdm=True, dataloader_num_workers=0, seed=seed, data_seed=seed)


@torch.no_grad()
def evaluate(model: torch.nn.Module, data: Chunks, batch: int) -> tuple[float, float]:
    """(perplexity, next-token accuracy) over every validation window."""
    model.eval()
    nll, correct, count = 0.0, 0, 0
    for i in range(0, len(data), batch):
        ids = data.windows[i : i + batch]
        logits = model(input_ids=ids).logits[:, :-1].float()
        target = ids[:, 1:]
        nll += float(torch.nn.functional.cross_entropy(logits.reshape(-1, VOCAB), target.reshape(-1),
                                                       reduction="sum"))
        correct += int((logits.argmax(-1) == target).sum())
        count += target.numel()
    return math.exp(nll / count), correct / count


def train_student(method: str, teacher: torch.nn.Module, train: Chunks, args: argparse.Namespace,
                  seed: int, out: Path) -> torch.nn.Module:
    student = gpt2(args.student_layers, args.student_width, 2, args.seq_len, seed)
    targs = training_args(out / f"{method}-{seed}", args.student_steps, args.batch_size, args.lr, seed)
    if method == "ce":  # the plain Trainer and Hugging Face's own causal-LM loss: no teacher
        trainer: transformers.Trainer = transformers.Trainer(model=student, args=targs, train_dataset=train)
    else:
        trainer = DistillationTrainer(model=student, teacher_model=teacher, loss=method, args=targs,
                                      train_dataset=train)
    trainer.train()
    return student


def _sd(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


IMAGE_DEFAULTS = {"kd", "kd+ls", "dist", "dkd", "ctkd", "mlkd", "wttm", "rld"}


def _label(method: str) -> str:
    """The method's name; image-classification defaults marked, so no one reads them as LM baselines."""
    return f"{method} (image defaults)" if method in IMAGE_DEFAULTS else method


def markdown(rows: list[dict[str, object]]) -> str:
    lines = ["| method | seed | val perplexity | val next-token acc. | wall s |", "|---|---|---|---|---|"]
    lines += [f"| {_label(str(r['method']))} | {r['seed']} | {r['ppl']:.3f} | {r['acc']:.4f} | "
              f"{r['wall']:.0f} |" for r in rows]
    lines += ["", "| method | seeds | val perplexity | val next-token acc. |", "|---|---|---|---|"]
    for method in dict.fromkeys(str(r["method"]) for r in rows):
        ppl = [float(r["ppl"]) for r in rows if r["method"] == method]  # type: ignore[arg-type]
        acc = [float(r["acc"]) for r in rows if r["method"] == method]  # type: ignore[arg-type]
        lines.append(f"| {_label(method)} | {len(ppl)} | {statistics.mean(ppl):.3f} ± {_sd(ppl):.3f} | "
                     f"{statistics.mean(acc):.4f} ± {_sd(acc):.4f} |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--train-tokens", type=int, default=2_000_000)
    p.add_argument("--val-tokens", type=int, default=100_000)
    p.add_argument("--seq-len", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--teacher-steps", type=int, default=1000)
    p.add_argument("--student-steps", type=int, default=1000)
    p.add_argument("--student-layers", type=int, default=1)
    p.add_argument("--student-width", type=int, default=64)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--methods", nargs="+", default=["ce", "fkl", "kd", "dist", "lud"],
                   help="'ce' (no teacher) and any registered loss name")
    p.add_argument("--out", type=Path, default=Path("runs/distil_causal_lm"))
    p.add_argument("--smoke", action="store_true", help="tiny sizes: checks that it runs (< 1 minute)")
    args = p.parse_args(argv)
    if args.smoke:
        args.train_tokens, args.val_tokens, args.teacher_steps, args.student_steps = 20_000, 2_000, 10, 4
        args.batch_size, args.seeds, args.methods = 4, [0], ["ce", "fkl", "lud"]
    return args


def main(argv: list[str] | None = None) -> str:
    args = parse_args(argv)
    transformers.logging.set_verbosity_error()
    start = time.time()
    train_stream, val_stream = split_corpus(args.train_tokens, args.val_tokens)
    train, val = Chunks(train_stream, args.seq_len), Chunks(val_stream, args.seq_len)
    print(f"stdlib text: {len(train_stream):,} train / {len(val_stream):,} validation tokens "
          f"({len(train):,} / {len(val):,} windows of {args.seq_len})", flush=True)

    teacher = gpt2(4, 128, 4, args.seq_len, seed=1234)
    transformers.Trainer(model=teacher, args=training_args(args.out / "teacher", args.teacher_steps,
                                                           args.batch_size, args.lr, 1234),
                         train_dataset=train).train()
    t_ppl, t_acc = evaluate(teacher, val, 64)
    print(f"teacher: val perplexity {t_ppl:.3f}, next-token accuracy {t_acc:.4f} "
          f"({time.time() - start:.0f} s so far)", flush=True)

    rows: list[dict[str, object]] = []
    for seed in args.seeds:
        for method in args.methods:
            t0 = time.time()
            student = train_student(method, teacher, train, args, seed, args.out)
            ppl, acc = evaluate(student, val, 64)
            rows.append({"method": method, "seed": seed, "ppl": ppl, "acc": acc, "wall": time.time() - t0})
            print(f"{method} seed {seed}: val perplexity {ppl:.3f}, accuracy {acc:.4f} "
                  f"({rows[-1]['wall']:.0f} s)", flush=True)
    table = markdown(rows)
    print(f"\nteacher (4x128): perplexity {t_ppl:.3f}, accuracy {t_acc:.4f}\n\n{table}\n\n"
          f"total wall time {time.time() - start:.0f} s", flush=True)
    return table


if __name__ == "__main__":
    main()
