"""The token divergences of language-model distillation: shared contract, lookup and base class.

Each divergence is a pure function with one signature::

    divergence(student_logits, teacher_logits, temperature=1.0, **params) -> Tensor  # shape (N,)

on ``(N, V)`` logits: the divergence of every row, summed over the vocabulary, in the dtype given
(callers upcast), both sides through ``log_softmax(z / T)``. ``temperature`` is a float (> 0), a
0-d tensor, one temperature per row (``(N,)`` / ``(N, 1)``) or per class (``(1, V)`` / ``(N, V)``);
tensors keep their graph. The teacher side is not detached here (callers pass a detached teacher).
There is no ``T^2`` factor: TRL's ``generalized_jsd_loss`` (the one anchor with a temperature)
has none, and at the language-model default ``T = 1`` it is 1 anyway.

:func:`token_divergence` returns the function registered under a name with its parameters
checked and bound, ``fn(student_logits, teacher_logits, temperature)`` — what another loss
(LUD's instance term) calls to use any of them.

:class:`TokenDivergenceLoss` is the thin module around a divergence: ``ce_weight · CE + (1 −
ce_weight) · mean_tokens(D)`` — a convex mix, so ``ce_weight=0`` is the pure divergence at unit
weight — with an optional shared vocabulary size for teachers and students whose output layers
differ only by padding rows.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import DistillationLoss, Epoch, LossOutput
from .params import check_number, positive_param
from .registry import suggest

__all__ = [
    "DIVERGENCES",
    "TokenDivergenceLoss",
    "register_divergence",
    "scaled_log_softmax",
    "token_divergence",
]


class Divergence(Protocol):
    def __call__(self, student_logits: Tensor, teacher_logits: Tensor,
                 temperature: float | Tensor = 1.0, **params: Any) -> Tensor: ...


#: name → (per-token divergence function, its parameter checks ``{param: check}``)
DIVERGENCES: dict[str, tuple[Divergence, dict[str, Callable[[str, Any], float]]]] = {}


def register_divergence(
    name: str, **checks: Callable[[str, Any], float]
) -> Callable[[Divergence], Divergence]:
    """Decorator: make ``fn`` available to :func:`token_divergence` as ``name``.

    ``checks`` maps each keyword parameter of ``fn`` to ``check(param_name, value) -> value``.
    """

    def wrap(fn: Divergence) -> Divergence:
        DIVERGENCES[name] = (fn, dict(checks))
        return fn

    return wrap


def unit_interval(name: str, value: Any) -> float:
    """``value`` as a float in [0, 1]; ``ValueError`` naming ``name`` otherwise."""
    return check_number(name, value, low=0.0, high=1.0)


def token_divergence(name: str, **params: Any) -> Callable[..., Tensor]:
    """The per-token divergence ``name`` with ``params`` checked and bound.

    Returns ``fn(student_logits, teacher_logits, temperature=1.0) -> (N,)``. ``ValueError`` for an
    unknown name (listing the valid ones), an unknown parameter or a value out of its range.

    >>> kl = token_divergence("gjsd", beta=0.5)
    >>> per_token = kl(student_logits, teacher_logits, 1.0)  # doctest: +SKIP
    """
    if name not in DIVERGENCES:
        raise ValueError(f"unknown token divergence '{name}'.{suggest(name, list(DIVERGENCES))}")
    fn, checks = DIVERGENCES[name]
    bound = {}
    for key, value in params.items():
        if key not in checks:
            raise ValueError(f"unknown parameter '{key}' for token divergence '{name}'."
                             f"{suggest(key, list(checks)) if checks else ' It takes none.'}")
        bound[key] = checks[key](key, value)

    def divergence(student_logits: Tensor, teacher_logits: Tensor,
                   temperature: float | Tensor = 1.0) -> Tensor:
        return fn(student_logits, teacher_logits, temperature, **bound)

    divergence.__name__ = f"{name}_divergence"
    divergence.__doc__ = fn.__doc__
    return divergence


def scaled_log_softmax(logits: Tensor, temperature: float | Tensor) -> Tensor:
    """``log_softmax(logits / T)`` over the last dimension of ``(N, V)`` logits.

    ``T``: a float; or a tensor that is 0-d, one per row (``(N,)``), or 2-d broadcastable to the
    logits — ``(1, 1)``, ``(N, 1)``, ``(1, V)``, ``(N, V)`` (LUD's per-sample and per-class
    temperatures). Tensor values are not inspected (no device synchronisation), only the shape.
    """
    if isinstance(temperature, Tensor):
        t = temperature
        if t.dim() == 1:
            t = t.unsqueeze(-1)
        n, v = logits.shape[0], logits.shape[-1]
        if t.dim() > 2 or (t.dim() == 2 and (t.shape[0] not in (1, n) or t.shape[1] not in (1, v))):
            raise ValueError(f"temperature tensor must be a scalar, ({n},), or 2-d broadcastable to the "
                             f"logits ({n}, {v}), got {tuple(temperature.shape)}")
        return F.log_softmax(logits / t, dim=-1)
    return F.log_softmax(logits / positive_param("temperature", temperature), dim=-1)


def kl_from_log_probs(log_p: Tensor, log_q: Tensor) -> Tensor:
    """``KL(p || q)`` per row from log-probabilities; rows where ``p`` is 0 contribute exactly 0."""
    return F.kl_div(log_q, log_p, reduction="none", log_target=True).sum(dim=-1)


def log_mixture(log_p: Tensor, log_q: Tensor, weight_p: float) -> Tensor:
    """``log(w · p + (1 − w) · q)`` for ``0 < w < 1``, by ``logsumexp`` (no ``log`` of a sum)."""
    w = torch.tensor(weight_p, dtype=log_p.dtype, device=log_p.device)
    return torch.logaddexp(log_p + torch.log(w), log_q + torch.log1p(-w))


class TokenDivergenceLoss(DistillationLoss):
    """``ce_weight · CE + (1 − ce_weight) · mean over tokens of D(student, teacher)``.

    Subclasses set :attr:`divergence_name` (the :func:`token_divergence` name and the term's name)
    and pass the divergence's parameters to ``super().__init__``. Terms: ``ce`` (only when
    ``ce_weight > 0``) and the divergence's name. Statistics: ``divergence`` (the unweighted mean
    divergence over the valid tokens) and ``temperature``.

    Args:
        temperature: softmax temperature ``T`` (> 0) of both sides; no ``T^2`` factor.
        ce_weight: weight in [0, 1] of the cross-entropy on the raw student logits; the divergence
            gets ``1 − ce_weight``. ``0`` is the pure divergence.
        vocab_size: the shared vocabulary size when teacher and student logits differ by padding
            rows of the output layer (e.g. 152,064 vs 151,936): both are cut to their first
            ``vocab_size`` columns before anything else. ``None`` (default): the widths must be
            equal. Either way a width smaller than needed is a ``ValueError``, never a silent cut.
        validate: check inputs on every call (see :class:`~lud.losses.base.DistillationLoss`).
    """

    divergence_name: str = ""
    #: per-row divergence with a top-k teacher ``(student_logits, teacher, temperature) -> (N,)``,
    #: for the losses whose registry entry lists ``"topk"``; ``None``: dense teacher only
    topk_divergence: Any = None

    def __init__(
        self,
        temperature: float = 1.0,
        ce_weight: float = 0.0,
        vocab_size: int | None = None,
        validate: bool = True,
        **divergence_params: Any,
    ) -> None:
        super().__init__(validate=validate)
        self.temperature = positive_param("temperature", temperature)
        self.ce_weight = unit_interval("ce_weight", ce_weight)
        self.vocab_size = check_vocab_size(vocab_size)
        self.divergence_params = dict(divergence_params)
        self.divergence = token_divergence(self.divergence_name, **divergence_params)

    def forward(self, student_logits: Tensor, teacher_logits: Tensor | None = None,
                targets: Tensor | None = None, epoch: Epoch = 0.0, **kwargs: Any) -> LossOutput:
        if isinstance(student_logits, Tensor) and isinstance(teacher_logits, Tensor):
            student_logits, teacher_logits = shared_vocabulary(
                student_logits, teacher_logits, self.vocab_size)
        return super().forward(student_logits, teacher_logits, targets, epoch, **kwargs)

    def compute(self, student_logits: Tensor, teacher_logits: Tensor | None,
                targets: Tensor | None, epoch: Epoch) -> LossOutput:
        assert teacher_logits is not None and targets is not None
        per_token = self.divergence(student_logits, teacher_logits, self.temperature)
        divergence = per_token.mean()
        terms = {self.divergence_name: (1.0 - self.ce_weight) * divergence}
        if self.ce_weight > 0:
            terms = {"ce": self.ce_weight * F.cross_entropy(student_logits, targets), **terms}
        return self.output(terms, {"divergence": divergence,
                                   "temperature": torch.tensor(self.temperature)})

    def row_loss(self, student_logits: Tensor, teacher_logits: Tensor,
                 targets: Tensor | None = None) -> Tensor:
        """Per-token values whose mean over the valid tokens is :attr:`total` (the row-loss contract
        of :mod:`lud.losses.fused`: chunked and fused paths). Targets equal to -100 give a CE of 0."""
        s, t = student_logits.float(), teacher_logits.detach().float()
        s, t = shared_vocabulary(s, t, self.vocab_size)
        values = (1.0 - self.ce_weight) * self.divergence(s, t, self.temperature)
        if self.ce_weight > 0:
            if targets is None:
                raise ValueError(f"loss '{self.divergence_name}' with ce_weight > 0 needs targets")
            values = values + self.ce_weight * F.cross_entropy(s, targets.long(), reduction="none")
        return values

    def compute_topk(self, student_logits: Tensor, teacher: Any, targets: Tensor | None,
                     epoch: Epoch) -> LossOutput:
        """The loss with a top-k teacher (:class:`~lud.losses.topk.TopKTeacher`): the divergence is
        :attr:`topk_divergence` (per row, the teacher's tail rule applied); the teacher's
        log-probabilities must have been taken at this loss's temperature."""
        assert targets is not None
        if self.topk_divergence is None:
            raise ValueError(f"loss '{self.divergence_name}' does not take a top-k teacher: "
                             f"{self.topk_refusal}")
        if teacher.temperature != self.temperature:
            raise ValueError(f"the top-k teacher's log-probabilities were taken at temperature "
                             f"{teacher.temperature}, the loss uses {self.temperature}: build the "
                             "teacher at the loss's temperature")
        if self.vocab_size is not None:
            student_logits = student_logits[:, : self.vocab_size]
        divergence = type(self).topk_divergence(student_logits, teacher, self.temperature).mean()
        terms = {self.divergence_name: (1.0 - self.ce_weight) * divergence}
        if self.ce_weight > 0:
            terms = {"ce": self.ce_weight * F.cross_entropy(student_logits, targets), **terms}
        return self.output(terms, {"divergence": divergence,
                                   "temperature": torch.tensor(self.temperature)})

    def extra_repr(self) -> str:
        params = "".join(f", {k}={v}" for k, v in self.divergence_params.items())
        return (f"temperature={self.temperature}, ce_weight={self.ce_weight}{params}, "
                f"vocab_size={self.vocab_size}")


def check_vocab_size(vocab_size: object) -> int | None:
    """``vocab_size`` (the shared vocabulary of padded output layers) if it is ``None`` or an int
    >= 2; ``ValueError`` naming it otherwise."""
    if vocab_size is not None and (isinstance(vocab_size, bool) or not isinstance(vocab_size, int)
                                   or vocab_size < 2):
        raise ValueError(f"vocab_size must be an int >= 2 or None, got {vocab_size!r}")
    return vocab_size


def shared_vocabulary(student_logits: Tensor, teacher_logits: Tensor,
                      vocab_size: int | None) -> tuple[Tensor, Tensor]:
    """Both logits cut to the shared vocabulary ``vocab_size`` (their first columns).

    ``vocab_size=None``: returned unchanged if the widths agree; a ``ValueError`` naming both
    widths and the option otherwise. A width below ``vocab_size`` is a ``ValueError`` too: the
    vocabularies then differ by more than padding.
    """
    vs, vt = student_logits.shape[-1], teacher_logits.shape[-1]
    if vocab_size is None:
        if vs != vt:
            # (N, C) inputs say "class-count", (B, T, V) inputs "vocabulary", as the base class does
            what = "vocabulary" if student_logits.dim() == 3 else "class-count"
            raise ValueError(
                f"{what} mismatch: student_logits have {vs} columns, teacher_logits {vt}. If the "
                f"two output layers differ only by padding rows, pass vocab_size=<the real vocabulary "
                f"size> (at most {min(vs, vt)}) to compare the shared columns"
            )
        return student_logits, teacher_logits
    for who, width in (("student_logits", vs), ("teacher_logits", vt)):
        if width < vocab_size:
            raise ValueError(
                f"vocabulary mismatch beyond padding: {who} have {width} columns, fewer than the "
                f"declared shared vocab_size={vocab_size}"
            )
    if vs != vocab_size:
        student_logits = student_logits[..., :vocab_size]
    if vt != vocab_size:
        teacher_logits = teacher_logits[..., :vocab_size]
    return student_logits, teacher_logits
