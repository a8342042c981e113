"""Held-out metrics of a causal language model: perplexity, accuracy, agreement, ECE, ROUGE-L.

All token metrics are over next-token predictions: the logit at position ``t`` predicts token
``t + 1``. :func:`token_metrics` is the pure function on logits (tested on hand-made values);
:func:`evaluate_lm` runs a model over non-overlapping windows of a token stream.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..engine.metrics import ECE_BINS, ece_bins, expected_calibration_error

__all__ = [
    "TokenTally",
    "evaluate_lm",
    "greedy_continuations",
    "model_device",
    "rouge_l",
    "token_metrics",
    "windows",
]


class TokenTally:
    """Running sums over batches of ``(N, V)`` logits: NLL, correct, agreement, ECE bins."""

    def __init__(self, n_bins: int = ECE_BINS) -> None:
        self.nll = 0.0
        self.correct = 0
        self.agree = 0
        self.count = 0
        self.bins = torch.zeros(n_bins, 3, dtype=torch.float64)
        self.n_bins = n_bins

    def add(self, logits: Tensor, targets: Tensor, teacher_top1: Tensor | None = None) -> None:
        logits = logits.float()
        self.nll += float(F.cross_entropy(logits, targets, reduction="sum"))
        pred = logits.argmax(-1)
        self.correct += int((pred == targets).sum())
        if teacher_top1 is not None:
            self.agree += int((pred == teacher_top1).sum())
        self.count += int(targets.numel())
        self.bins += ece_bins(logits, targets, self.n_bins).cpu()

    def result(self) -> dict[str, float]:
        if self.count == 0:
            raise ValueError("no tokens were evaluated")
        nll = self.nll / self.count
        return {
            "nll": nll,
            "perplexity": math.exp(nll),
            "accuracy": self.correct / self.count,
            "agreement": self.agree / self.count,
            "ece": expected_calibration_error(self.bins),
            "tokens": self.count,
        }


def token_metrics(
    logits: Tensor, targets: Tensor, teacher_top1: Tensor | None = None, n_bins: int = ECE_BINS
) -> dict[str, float]:
    """Metrics of ``(N, V)`` logits against ``(N,)`` targets (and the teacher's ``(N,)`` argmax).

    ``perplexity`` = exp(mean NLL), ``accuracy`` = argmax == target, ``agreement`` = argmax ==
    teacher's argmax (0 without ``teacher_top1``), ``ece`` = expected calibration error with
    ``n_bins`` equal-width confidence bins (confidence = top-1 probability).
    """
    tally = TokenTally(n_bins)
    tally.add(logits, targets, teacher_top1)
    return tally.result()


def windows(stream: Tensor, seq_len: int, max_tokens: int | None = None) -> Tensor:
    """Non-overlapping ``(n, seq_len)`` windows from the start of ``stream`` (up to ``max_tokens``)."""
    if max_tokens is not None:
        stream = stream[:max_tokens]
    n = len(stream) // seq_len
    if n == 0:
        raise ValueError(f"stream of {len(stream)} tokens is shorter than one window of {seq_len}")
    return stream[: n * seq_len].view(n, seq_len)


def model_device(model: torch.nn.Module) -> torch.device:
    """Where ``model``'s parameters are (the CPU for a model without any)."""
    first = next(model.parameters(), None)
    return first.device if first is not None else torch.device("cpu")


@torch.no_grad()
def evaluate_lm(
    model: torch.nn.Module,
    wins: Tensor,
    *,
    batch_size: int = 16,
    teacher_top1: Tensor | None = None,
    n_bins: int = ECE_BINS,
) -> tuple[dict[str, float], Tensor]:
    """``(metrics, argmax)`` of ``model`` on windows ``(n, L)``; ``argmax`` is ``(n, L-1)``.

    ``teacher_top1`` (``(n, L-1)``) gives the agreement. The windows go to the model's device;
    ``argmax`` comes back on the CPU.
    """
    was_training = model.training
    model.eval()
    device = model_device(model)
    tally = TokenTally(n_bins)
    tops = []
    for i in range(0, len(wins), batch_size):
        ids = wins[i : i + batch_size].to(device)
        logits = model(input_ids=ids).logits[:, :-1].float()
        flat = logits.reshape(-1, logits.shape[-1])
        target = ids[:, 1:].reshape(-1)
        t1 = None if teacher_top1 is None else teacher_top1[i : i + batch_size].reshape(-1).to(device)
        tally.add(flat, target, t1)
        tops.append(logits.argmax(-1).cpu())
    model.train(was_training)
    return tally.result(), torch.cat(tops)


@torch.no_grad()
def greedy_continuations(model: torch.nn.Module, prompts: Tensor, new_tokens: int) -> Tensor:
    """Greedy continuations ``(n, new_tokens)`` of ``(n, P)`` prompts (no sampling, no cache).

    The context is cut to the model's ``n_positions`` if the sequence grows past it. The prompts
    go to the model's device; the continuations come back on the CPU.
    """
    was_training = model.training
    model.eval()
    limit = int(getattr(model.config, "n_positions", prompts.shape[1] + new_tokens))
    seq = prompts.to(model_device(model))
    for _ in range(new_tokens):
        logits = model(input_ids=seq[:, -limit:]).logits[:, -1]
        seq = torch.cat([seq, logits.argmax(-1, keepdim=True)], dim=1)
    model.train(was_training)
    return seq[:, prompts.shape[1] :].cpu()


def rouge_l(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Mean ROUGE-L F-measure (``rouge-score``, no stemming) of paired texts."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    from rouge_score import rouge_scorer

    scorer: Any = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    scores = [scorer.score(r, p)["rougeL"].fmeasure for p, r in zip(predictions, references, strict=True)]
    return sum(scores) / len(scores) if scores else float("nan")
