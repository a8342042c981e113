"""A sparse teacher: per token, the teacher's top-k classes and their log-probabilities.

At a 128k vocabulary a teacher's full logits are 512 KiB per token in float32; its top 64 classes
(indices and log-probabilities) are 512 bytes, and 256 bytes as stored by the offline teacher
cache (:mod:`lud.data.teacher_cache`). :class:`TopKTeacher` is that input. A loss that can use it
accepts it in place of ``teacher_logits``::

    topk = TopKTeacher.from_logits(teacher_logits, k=64)            # or read from a cache
    out = build_loss("kd", temperature=1.0)(student_logits, topk, targets)

The teacher's probability mass outside its top-k (the *missing mass*, ``1 - sum(exp(log_probs))``)
is unknown; the rule for it is named by ``tail``:

``"bucket"`` (default)
    one extra class. The teacher's missing mass and the student's mass outside the teacher's
    top-k classes form a (k+1)-th class: ``KL = sum_i p_i log(p_i/q_i) + p_tail log(p_tail/q_tail)``
    with ``q_tail = 1 - sum_i q_i`` (computed as a log-sum-exp over the other classes, not as a
    difference). The student is not told how to spread its tail, only how much it holds.
``"zero"``
    the teacher puts zero mass outside its top-k: its top-k probabilities are *renormalised* to
    sum to 1 and the student's full softmax is compared with that distribution,
    ``KL = sum_i p~_i log(p~_i/q_i)`` (the student is pushed to put no mass elsewhere).
``"uniform"``
    the missing mass is spread evenly over the other ``V - k`` classes, each getting
    ``p_tail / (V - k)``; the KL runs over all ``V`` classes.

With ``k = V`` there is no tail and every rule gives the dense forward KL. The student side is
always its full ``log_softmax`` over ``V`` classes; only the teacher is sparse.

A loss declares support by implementing :meth:`DistillationLoss.compute_topk
<lud.losses.base.DistillationLoss.compute_topk>` *and* listing ``"topk"`` in its registry entry's
``inputs``; :func:`topk_forward_kl` is the per-token divergence such a method builds on. Every other
loss refuses a :class:`TopKTeacher` with a ``ValueError`` that says why.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["TAILS", "TopKTeacher", "topk_forward_kl", "topk_reverse_kl"]

#: the rules for the teacher's missing mass (see the module docstring)
TAILS = ("bucket", "zero", "uniform")

# The top-k probabilities may add up to a little more than 1 once the log-probabilities are
# rounded to float16 (the cache's storage precision): at most ~entropy x 2**-11. Beyond this the
# input is wrong, not rounded.
_MASS_TOLERANCE = 1e-2


@dataclass(frozen=True, eq=False)  # no element-wise __eq__ on tensors: compare fields yourself
class TopKTeacher:
    """The teacher's top-k per token: ``indices`` and ``log_probs`` of shape ``(..., k)``.

    Attributes:
        indices: integer class indices, ``(..., k)``; distinct within a row, in ``[0, V)``.
        log_probs: the teacher's log-probabilities of those classes, ``(..., k)``, finite and
            ``<= 0``, their probabilities summing to at most 1 (up to float16 rounding). Any
            floating dtype; losses compute in float32.
        tail: the rule for the missing mass, one of :data:`TAILS`.
        temperature: the softmax temperature the log-probabilities were taken at (a loss at
            temperature ``T`` needs a teacher at ``T``).
        vocab_size: ``V`` if known (then the index range is checked here; otherwise when a loss
            receives it with the student's logits).
        validate: check the values (one device sync); shapes and dtypes are always checked.

    Raises:
        ValueError: naming the problem — mismatched shapes, non-integer indices, indices out of
            range or repeated within a row, positive or non-finite log-probabilities, a mass above
            1, an unknown tail rule.
    """

    indices: Tensor
    log_probs: Tensor
    tail: str = "bucket"
    temperature: float = 1.0
    vocab_size: int | None = None
    validate: bool = True

    def __post_init__(self) -> None:
        idx, lp = self.indices, self.log_probs
        if not isinstance(idx, Tensor) or not isinstance(lp, Tensor):
            raise ValueError("TopKTeacher: indices and log_probs must be torch.Tensors, got "
                             f"{type(idx).__name__} and {type(lp).__name__}")
        if idx.dtype.is_floating_point or idx.dtype.is_complex or idx.dtype == torch.bool:
            raise ValueError(f"TopKTeacher: indices must be integer class indices, got dtype {idx.dtype}")
        if not lp.is_floating_point():
            raise ValueError(f"TopKTeacher: log_probs must be floating point, got dtype {lp.dtype}")
        if idx.dim() < 1 or tuple(idx.shape) != tuple(lp.shape):
            raise ValueError(f"TopKTeacher: indices {tuple(idx.shape)} and log_probs {tuple(lp.shape)} "
                             "must have the same shape (..., k)")
        if idx.shape[-1] < 1:
            raise ValueError("TopKTeacher: k must be >= 1, got an empty last dimension")
        if idx.device != lp.device:
            raise ValueError(f"TopKTeacher: indices on {idx.device}, log_probs on {lp.device}")
        if self.tail not in TAILS:
            raise ValueError(f"TopKTeacher: tail must be one of {TAILS}, got {self.tail!r}")
        temperature = float(self.temperature)
        if not (math.isfinite(temperature) and temperature > 0):
            raise ValueError(f"TopKTeacher: temperature must be > 0, got {self.temperature!r}")
        object.__setattr__(self, "temperature", temperature)
        if self.vocab_size is not None:
            if int(self.vocab_size) < self.k:
                raise ValueError(f"TopKTeacher: vocab_size {self.vocab_size} < k = {self.k}")
            object.__setattr__(self, "vocab_size", int(self.vocab_size))
        if self.validate:
            self.check(self.vocab_size)

    # -- shape ---------------------------------------------------------------------------------
    @property
    def k(self) -> int:
        """Classes kept per token."""
        return int(self.indices.shape[-1])

    @property
    def shape(self) -> tuple[int, ...]:
        """The leading shape (tokens), without ``k``."""
        return tuple(self.indices.shape[:-1])

    def _like(self, indices: Tensor, log_probs: Tensor) -> TopKTeacher:
        return TopKTeacher(indices, log_probs, self.tail, self.temperature, self.vocab_size, validate=False)

    def reshape(self, *shape: int) -> TopKTeacher:
        """The same rows with leading shape ``shape`` (``k`` is kept)."""
        return self._like(self.indices.reshape(*shape, self.k), self.log_probs.reshape(*shape, self.k))

    def select(self, rows: Tensor | slice) -> TopKTeacher:
        """Rows of a flat ``(N, k)`` teacher (boolean mask, index tensor or slice)."""
        return self._like(self.indices[rows], self.log_probs[rows])

    def to(self, device: torch.device | str) -> TopKTeacher:
        """On ``device``."""
        return self._like(self.indices.to(device), self.log_probs.to(device))

    def with_tail(self, tail: str) -> TopKTeacher:
        """The same teacher with another missing-mass rule."""
        return TopKTeacher(
            self.indices, self.log_probs, tail, self.temperature, self.vocab_size, validate=False
        )

    # -- checks --------------------------------------------------------------------------------
    def check(self, vocab_size: int | None = None) -> None:
        """``ValueError`` naming the first bad value (see the class docstring)."""
        idx, lp = self.indices, self.log_probs
        if idx.numel() == 0:
            return
        if not bool(torch.isfinite(lp).all()):
            raise ValueError("TopKTeacher: log_probs contain NaN or Inf")
        top = float(lp.max())
        if top > 0:
            raise ValueError(f"TopKTeacher: log_probs must be <= 0 (log-probabilities), got a value {top:g}")
        lo, hi = int(idx.min()), int(idx.max())
        if lo < 0 or (vocab_size is not None and hi >= vocab_size):
            where = f"[0, {vocab_size})" if vocab_size is not None else "[0, V)"
            raise ValueError(f"TopKTeacher: indices out of range: values span [{lo}, {hi}], valid {where}")
        if self.k > 1:
            ordered = idx.sort(dim=-1).values
            repeated = (ordered[..., 1:] == ordered[..., :-1]).any(dim=-1)
            if bool(repeated.any()):
                row = int(repeated.reshape(-1).nonzero()[0])
                raise ValueError(f"TopKTeacher: indices repeated within a row (flat row {row}): each "
                                 "row must name k distinct classes")
        mass = float(torch.logsumexp(lp.float(), dim=-1).max().exp())
        if mass > 1 + _MASS_TOLERANCE:
            raise ValueError(f"TopKTeacher: the top-k probabilities of a row sum to {mass:.4f} > 1: "
                             "log_probs must be the teacher's log-softmax, not its logits")

    # -- building and densifying ---------------------------------------------------------------
    @classmethod
    def from_logits(
        cls,
        logits: Tensor,
        k: int,
        temperature: float = 1.0,
        *,
        tail: str = "bucket",
        log_prob_dtype: torch.dtype | None = None,
    ) -> TopKTeacher:
        """The top-k of dense teacher ``logits`` ``(..., V)`` at ``temperature``.

        The log-probabilities are ``log_softmax(logits / T)`` in float32 at the top ``k``
        classes (largest first); ``log_prob_dtype`` rounds them (``torch.float16``: what the
        offline cache stores, so an online teacher can equal a cached one bit for bit).
        """
        if not isinstance(logits, Tensor) or not logits.is_floating_point() or logits.dim() < 1:
            raise ValueError("TopKTeacher.from_logits: logits must be a floating tensor (..., V)")
        vocab = int(logits.shape[-1])
        if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= vocab:
            raise ValueError(f"TopKTeacher.from_logits: k must be an int in [1, {vocab}], got {k!r}")
        with torch.no_grad():
            log_p = F.log_softmax(logits.detach().float() / float(temperature), dim=-1)
            values, indices = log_p.topk(k, dim=-1)
        if log_prob_dtype is not None:
            values = values.to(log_prob_dtype)
        return cls(indices, values, tail, temperature, vocab, validate=False)

    def missing_mass(self) -> Tensor:
        """``1 - sum(exp(log_probs))`` per row (float32, clamped at 0)."""
        return (-torch.expm1(torch.logsumexp(self.log_probs.float(), dim=-1))).clamp_min(0.0)

    def densify(self, vocab_size: int | None = None) -> Tensor:
        """Dense teacher log-probabilities under this teacher's tail rule (float32).

        ``"zero"``: ``(..., V)``, the renormalised top-k, ``-inf`` elsewhere. ``"uniform"``:
        ``(..., V)``, the missing mass spread over the other classes. ``"bucket"``: ``(..., V+1)``,
        the top-k with ``-inf`` at the other classes and the missing mass in the last column.
        """
        vocab = vocab_size if vocab_size is not None else self.vocab_size
        if vocab is None:
            raise ValueError("TopKTeacher.densify needs vocab_size (the teacher does not know it)")
        if vocab < self.k:
            raise ValueError(f"TopKTeacher.densify: vocab_size {vocab} < k = {self.k}")
        lp = self.log_probs.float()
        idx = self.indices.long()
        lead = self.shape
        if self.tail == "zero":
            full = lp.new_full((*lead, vocab), -math.inf)
            return full.scatter(-1, idx, lp - torch.logsumexp(lp, dim=-1, keepdim=True))
        tail = self.missing_mass()
        if self.tail == "uniform":
            rest = vocab - self.k
            fill = torch.log(tail / rest) if rest else tail.new_full(tail.shape, -math.inf)
            full = fill.unsqueeze(-1).expand(*lead, vocab).clone()
            return full.scatter(-1, idx, lp)
        full = lp.new_full((*lead, vocab + 1), -math.inf)
        full = full.scatter(-1, idx, lp)
        full[..., vocab] = torch.log(tail)
        return full


def topk_forward_kl(student_logits: Tensor, teacher: TopKTeacher, temperature: float = 1.0) -> Tensor:
    """Per-row forward ``KL(teacher || student)`` with a top-k teacher, shape ``(N,)``, no ``T^2``.

    Args:
        student_logits: ``(N, V)`` float32 logits (keeps its graph).
        teacher: ``(N, k)`` top-k teacher; its ``tail`` names the missing-mass rule.
        temperature: divides the student logits; the teacher's log-probabilities are used as given
            (they were taken at ``teacher.temperature``, which should equal it).

    Every rule gives the dense forward KL when ``k = V``. Zero teacher probabilities contribute
    exactly 0 (``xlogy``), so a missing mass of 0 (or ``k = V``) makes no NaN.
    """
    n, vocab = student_logits.shape
    if teacher.shape != (n,):
        raise ValueError(f"topk_forward_kl: teacher has rows {teacher.shape}, student logits {(n, vocab)}")
    log_q = F.log_softmax(student_logits / temperature, dim=-1)
    idx = teacher.indices.long()
    lq_top = log_q.gather(-1, idx)
    lp = teacher.log_probs.float()
    k = teacher.k
    if teacher.tail == "zero":
        lp = lp - torch.logsumexp(lp, dim=-1, keepdim=True)
        return (lp.exp() * (lp - lq_top)).sum(-1)
    head = (lp.exp() * (lp - lq_top)).sum(-1)
    if k == vocab:  # no tail: whatever float rounding leaves as missing mass has nowhere to go
        return head
    p_tail = teacher.missing_mass()
    if teacher.tail == "bucket":
        lq_tail = torch.logsumexp(log_q.scatter(-1, idx, -math.inf), dim=-1)
        return head + torch.xlogy(p_tail, p_tail) - p_tail * lq_tail
    rest = vocab - k  # uniform
    sum_lq_rest = log_q.scatter(-1, idx, 0.0).sum(-1)
    return head + torch.xlogy(p_tail, p_tail / rest) - (p_tail / rest) * sum_lq_rest


def topk_reverse_kl(student_logits: Tensor, teacher: TopKTeacher, temperature: float = 1.0) -> Tensor:
    """Per-row reverse ``KL(student || teacher)`` with a top-k teacher, shape ``(N,)``, no ``T^2``.

    ``"bucket"``: over the k classes and the tail class, ``sum_i q_i log(q_i/p_i) + q_tail
    log(q_tail/p_tail)``. ``"uniform"``: over all ``V`` classes with the teacher's tail spread
    evenly. ``"zero"``: the teacher has no mass outside its top-k, where the reverse KL would be
    infinite; the *student* is renormalised over the teacher's top-k as well (the divergence of the
    two distributions restricted to those classes). Equals the dense reverse KL when ``k = V``.
    """
    n, vocab = student_logits.shape
    if teacher.shape != (n,):
        raise ValueError(f"topk_reverse_kl: teacher has rows {teacher.shape}, student logits {(n, vocab)}")
    log_q = F.log_softmax(student_logits / temperature, dim=-1)
    idx = teacher.indices.long()
    lq_top = log_q.gather(-1, idx)
    lp = teacher.log_probs.float()
    if teacher.tail == "zero":
        lp = lp - torch.logsumexp(lp, dim=-1, keepdim=True)
        lq_top = lq_top - torch.logsumexp(lq_top, dim=-1, keepdim=True)
        return (lq_top.exp() * (lq_top - lp)).sum(-1)
    head = (lq_top.exp() * (lq_top - lp)).sum(-1)
    if teacher.k == vocab:
        return head
    # a teacher tail of exactly 0 makes the divergence infinite where the student has mass:
    # floor it at the smallest normal float32 so the value stays finite (and large)
    log_p_tail = torch.log(teacher.missing_mass().clamp_min(torch.finfo(torch.float32).tiny))
    if teacher.tail == "bucket":
        lq_tail = torch.logsumexp(log_q.scatter(-1, idx, -math.inf), dim=-1)
        return head + lq_tail.exp() * (lq_tail - log_p_tail)
    rest = vocab - teacher.k  # uniform: sum over the other classes of q_j (log q_j - log(p_tail/rest))
    q = log_q.exp()
    q_rest = q.scatter(-1, idx, 0.0)
    plogq_rest = (q_rest * log_q).sum(-1)
    return head + plogq_rest - q_rest.sum(-1) * (log_p_tail - math.log(rest))
