"""Token-chunked and fused (output layer + loss) computation of losses that are means over tokens.

At a language model's vocabulary the logits decide what fits: 8,192 tokens x 131,072 classes are
4 GiB per float32 copy, and an unfused distillation loss holds several (student and teacher
logits, both log-softmaxes, the elementwise KL, the gradient). Two paths bound that:

* :func:`chunked_token_loss` takes the student logits ``(N, V)`` and computes the loss a chunk of
  ``chunk_size`` tokens at a time, with the gradient w.r.t. each chunk's logits computed in the
  forward pass (stored as one ``(N, V)`` tensor): no other ``(N, V)`` intermediate lives beyond
  its chunk.
* :func:`fused_linear_token_loss` takes the student's final hidden states ``(N, H)`` and the
  output layer (``weight (V, H)``, optional ``bias (V,)``) and never holds the ``(N, V)`` student
  logits: per chunk it computes the logits (one matmul), the loss and the gradient w.r.t. the
  chunk's hidden states and the weight. ``grad_in_forward=True`` (default, Liger's design) does
  it in the forward pass and stores ``(N, H) + (V, H)`` gradients (three matmuls per chunk, like
  the unfused path); ``grad_in_forward=False`` stores nothing but the inputs and recomputes the
  logits in backward (four matmuls per chunk, no ``(V, H)`` gradient held between forward and
  backward). Figures: docs/vocab_scale.md.

Both are pure PyTorch (CPU-tested) and equal the unchunked loss in value and gradient, up to the
order of floating-point sums.

The row-loss contract
---------------------
A loss can be chunked over tokens when its value is a **mean over valid tokens of a per-token
value**. It is given as ``row_loss(student_logits, teacher_logits, targets) -> (n,)``:

* ``student_logits``: a chunk ``(n, V)`` in float32 (always: the loss is computed in fp32 even
  when the hidden states or logits are bf16), with gradient;
* ``teacher_logits``: the matching ``(n, V)`` teacher rows (their dtype as given, no gradient);
* ``targets``: the ``(n,)`` class indices, or ``None`` when the caller gave none. Rows whose
  target is ``ignore_index`` (-100) are *included* in the chunk (selecting the valid rows would
  cost a device sync and a data-dependent shape); their values are discarded with ``where``, so
  ``row_loss`` must stay finite on them (e.g. ``F.cross_entropy(..., reduction="none")`` gives 0);
* returns the ``(n,)`` per-token values. The loss is ``sum(values[valid]) / count(valid)`` with
  the *global* valid count (not a mean of chunk means); 0 with zero gradient when no token is
  valid.

A callable with that signature, or a loss module with a ``row_loss`` method of that signature
(the hook a registered token divergence — ``fkl`` and the like — implements to be chunkable), is
accepted wherever ``row_loss`` is; :func:`resolve_row_loss` does the lookup and refuses a loss
without one (its value is not a mean over tokens, e.g. LUD's batch quantiles and Gram terms; see
:mod:`lud.losses.lud_fused` for LUD's two-pass path). :func:`forward_kl_rows` is the reference
row loss (forward KL at T = 1).

The teacher may be a tensor ``(N, V)`` or a callable ``teacher(start, end) -> (end-start, V)``
giving the rows of a chunk (e.g. a teacher output layer applied to teacher hidden states), so
that the teacher's logits need not be held whole either.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "IGNORE_INDEX",
    "RowLoss",
    "TeacherRows",
    "chunked_token_loss",
    "forward_kl_rows",
    "fused_linear_token_loss",
    "resolve_row_loss",
]

RowLoss = Callable[[Tensor, Tensor, "Tensor | None"], Tensor]
TeacherRows = Callable[[int, int], Tensor]

IGNORE_INDEX = -100
#: tokens per chunk: 1024 x 131,072 classes = 512 MiB per float32 chunk copy
DEFAULT_CHUNK_SIZE = 1024


def forward_kl_rows(student_logits: Tensor, teacher_logits: Tensor,
                    targets: Tensor | None = None) -> Tensor:
    """Per-token forward KL at T = 1, ``sum_c p_T (log p_T − log p_S)``, shape ``(n,)``.

    Both sides through ``log_softmax`` in float32; ``targets`` unused (the row-loss signature).
    """
    log_ps = F.log_softmax(student_logits.float(), dim=1)
    log_pt = F.log_softmax(teacher_logits.detach().float(), dim=1)
    return F.kl_div(log_ps, log_pt, reduction="none", log_target=True).sum(dim=1)


def resolve_row_loss(loss: Any) -> RowLoss:
    """The per-token function of ``loss``: its ``row_loss`` method, or ``loss`` itself if it is a
    plain callable. ``ValueError`` for a loss module without ``row_loss`` (not a token mean)."""
    method = getattr(loss, "row_loss", None)
    if callable(method):
        return method
    if isinstance(loss, torch.nn.Module):
        raise ValueError(f"loss '{type(loss).__name__}' has no row_loss method: its value is not a "
                         "mean over tokens of a per-token value, so chunking would change it")
    if callable(loss):
        return loss
    raise ValueError(f"row_loss must be callable or a loss with a row_loss method, got "
                     f"{type(loss).__name__}")


# --------------------------------------------------------------------------- checks
def _check_chunk(chunk_size: object) -> int:
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be an int >= 1, got {chunk_size!r}")
    return chunk_size


def _check_rows(name: str, x: Tensor, n: int, width: int | None = None) -> None:
    if not isinstance(x, Tensor) or x.dim() != 2:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"{name} must be a 2-D tensor (tokens, features), got {shape}")
    if x.shape[0] != n:
        raise ValueError(f"{name} has {x.shape[0]} rows, expected {n} (one per token)")
    if width is not None and x.shape[1] != width:
        raise ValueError(f"{name} has {x.shape[1]} columns, expected {width}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be floating point, got {x.dtype}")


def _check_targets(targets: Tensor | None, n: int, classes: int, values: bool = True) -> None:
    if targets is None:
        return
    if not isinstance(targets, Tensor) or targets.dim() != 1 or targets.shape[0] != n:
        shape = tuple(targets.shape) if isinstance(targets, Tensor) else type(targets).__name__
        raise ValueError(f"targets must have shape ({n},), got {shape}")
    if targets.is_floating_point() or targets.dtype == torch.bool:
        raise ValueError(f"targets must be integer class indices, got {targets.dtype}")
    if values and n and bool(((targets != IGNORE_INDEX) & ((targets < 0) | (targets >= classes))).any()):
        raise ValueError(f"targets out of range: class indices must lie in [0, {classes}) or be "
                         f"{IGNORE_INDEX} (ignored)")


def _teacher_rows(teacher: Tensor | TeacherRows, n: int, classes: int) -> TeacherRows:
    if isinstance(teacher, Tensor):
        _check_rows("teacher_logits", teacher, n, classes)
        t = teacher.detach()
        return lambda start, end: t[start:end]
    if callable(teacher):
        def rows(start: int, end: int) -> Tensor:
            out = teacher(start, end)
            if not isinstance(out, Tensor) or tuple(out.shape) != (end - start, classes):
                shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
                raise ValueError(f"teacher({start}, {end}) must return a ({end - start}, {classes}) "
                                 f"tensor, got {shape}")
            return out.detach()
        return rows
    raise ValueError(f"teacher_logits must be a tensor or a callable (start, end) -> rows, got "
                     f"{type(teacher).__name__}")


# --------------------------------------------------------------------------- the chunk loop
def _take(x: Tensor, rows: Tensor | None, start: int, end: int) -> Tensor:
    return x[start:end] if rows is None else x.index_select(0, rows[start:end])


class _Source:
    """Where a chunk's student logits come from and where their gradient goes."""

    n: int

    def logits(self, start: int, end: int) -> Tensor:  # fp32, no graph
        raise NotImplementedError

    def accumulate(self, start: int, end: int, grad: Tensor) -> None:
        raise NotImplementedError

    def grads(self) -> tuple[Tensor | None, ...]:
        raise NotImplementedError


class _LogitsSource(_Source):
    """Rows of given logits; ``rows`` (indices) makes chunk ``[start, end)`` the rows
    ``rows[start:end]`` (the valid tokens, without copying them out first)."""

    def __init__(self, logits: Tensor, with_grad: bool, rows: Tensor | None = None) -> None:
        self.z, self.rows = logits.detach(), rows
        self.n = logits.shape[0] if rows is None else rows.shape[0]
        self.g = torch.zeros_like(self.z) if with_grad else None

    def logits(self, start: int, end: int) -> Tensor:
        return _take(self.z, self.rows, start, end).float()

    def accumulate(self, start: int, end: int, grad: Tensor) -> None:
        assert self.g is not None
        if self.rows is None:
            self.g[start:end] = grad.to(self.g.dtype)
        else:
            self.g.index_copy_(0, self.rows[start:end], grad.to(self.g.dtype))

    def grads(self) -> tuple[Tensor | None, ...]:
        return (self.g,)


class _LinearSource(_Source):
    """Logits ``hidden @ weight.T + bias`` a chunk at a time, matmuls in the hidden states' dtype.

    Gradients: w.r.t. ``hidden`` in its dtype, w.r.t. ``weight``/``bias`` accumulated over the
    chunks in float32 and returned in the weight's dtype."""

    def __init__(self, hidden: Tensor, weight: Tensor, bias: Tensor | None,
                 needs: tuple[bool, bool, bool], rows: Tensor | None = None) -> None:
        self.h, self.rows = hidden.detach(), rows
        self.n = hidden.shape[0] if rows is None else rows.shape[0]
        self.dtype = hidden.dtype
        self.w = weight.detach().to(self.dtype)
        self.b = None if bias is None else bias.detach().to(self.dtype)
        self.out_dtypes = (weight.dtype, None if bias is None else bias.dtype)
        self.needs = (needs[0], needs[1], needs[2] and bias is not None)
        self.gh = self.gw = self.gb = None  # allocated at the first gradient (LUD's passes 1-2
        self.shape = weight.shape          # run without them: a lower peak)

    def logits(self, start: int, end: int) -> Tensor:
        return F.linear(_take(self.h, self.rows, start, end), self.w, self.b).float()

    def _allocate(self) -> None:
        dev = self.h.device
        if self.needs[0] and self.gh is None:
            self.gh = torch.zeros_like(self.h)
        if self.needs[1] and self.gw is None:
            self.gw = torch.zeros(self.shape, dtype=torch.float32, device=dev)
        if self.needs[2] and self.gb is None:
            self.gb = torch.zeros(self.shape[0], dtype=torch.float32, device=dev)

    def accumulate(self, start: int, end: int, grad: Tensor) -> None:
        self._allocate()
        g = grad.to(self.dtype)
        if self.gh is not None:
            if self.rows is None:
                self.gh[start:end] = g @ self.w
            else:
                self.gh.index_copy_(0, self.rows[start:end], g @ self.w)
        if self.gw is not None:
            h = _take(self.h, self.rows, start, end)
            if self.gw.dtype == g.dtype:  # in place: no (V, H) temporary per chunk
                self.gw.addmm_(g.t(), h)
            else:
                self.gw += (g.t() @ h).float()
        if self.gb is not None:
            self.gb += grad.sum(dim=0)

    def grads(self) -> tuple[Tensor | None, ...]:
        self._allocate()  # zeros where a gradient was asked for but no chunk contributed
        gw = None if self.gw is None else self.gw.to(self.out_dtypes[0])
        gb = None if self.gb is None or self.out_dtypes[1] is None else self.gb.to(self.out_dtypes[1])
        return self.gh, gw, gb


def _valid_count(targets: Tensor | None, n: int, device: torch.device) -> Tensor:
    """Number of valid tokens as a float32 0-d tensor, at least 1 (no device sync)."""
    if targets is None:
        return torch.tensor(float(max(n, 1)), device=device)
    return (targets != IGNORE_INDEX).sum().float().clamp_min(1.0)


def _token_pass(row_loss: RowLoss, src: _Source, teacher: TeacherRows, targets: Tensor | None,
                chunk: int, with_grad: bool, device: torch.device) -> Tensor:
    """The loss (float32 0-d); with ``with_grad`` the gradients land in ``src``."""
    count = _valid_count(targets, src.n, device)
    total = torch.zeros((), dtype=torch.float32, device=device)
    for start in range(0, src.n, chunk):
        end = min(start + chunk, src.n)
        y = None if targets is None else targets[start:end]
        with torch.enable_grad() if with_grad else torch.no_grad():
            z = src.logits(start, end)
            if with_grad:
                z.requires_grad_(True)
            values = row_loss(z, teacher(start, end), y)
            if values.shape != (end - start,):
                raise ValueError(f"row_loss must return one value per token, shape "
                                 f"({end - start},), got {tuple(values.shape)}")
            if y is not None:
                values = torch.where(y != IGNORE_INDEX, values, torch.zeros_like(values))
            part = values.float().sum() / count
        if with_grad:
            (grad,) = torch.autograd.grad(part, z)
            src.accumulate(start, end, grad)
        total = total + part.detach()
    return total


class _ChunkedLoss(torch.autograd.Function):
    """A scalar loss whose gradients a closure computes (in forward, or recomputed in backward).

    ``run(with_grad) -> (loss, grads)``, ``grads`` aligned with ``inputs`` (``None`` where no
    gradient is needed). Backward scales them by the incoming gradient."""

    @staticmethod
    def forward(ctx: Any, run: Callable[[bool], tuple[Tensor, tuple]], grad_in_forward: bool,
                *inputs: Tensor) -> Tensor:
        wanted = any(ctx.needs_input_grad[2:])
        if grad_in_forward or not wanted:
            loss, grads = run(wanted)
            ctx.grads = grads
        else:
            loss, _ = run(False)
            ctx.run, ctx.grads = run, None
        return loss

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple:
        grads = ctx.grads
        if grads is None:  # recompute
            _, grads = ctx.run(True)
            ctx.run = None
        ctx.grads = None
        # in place: the buffers are this call's own (a copy would double the (V, H) gradient)
        out = tuple(None if g is None else g.mul_(grad_out.to(g.dtype)) for g in grads)
        return (None, None, *out)


def chunked_token_loss(
    row_loss: RowLoss | Any,
    student_logits: Tensor,
    teacher_logits: Tensor | TeacherRows,
    targets: Tensor | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    validate: bool = True,
) -> Tensor:
    """Mean over valid tokens of ``row_loss``, computed ``chunk_size`` tokens at a time.

    Args:
        row_loss: see the module docstring (a callable, or a loss with a ``row_loss`` method).
        student_logits: ``(N, V)``, any float dtype (the loss is computed in float32).
        teacher_logits: ``(N, V)`` or a callable ``(start, end) -> rows``.
        targets: ``(N,)`` class indices, ``-100`` = ignored; ``None``: every token counts.
        chunk_size: tokens per chunk.
        validate: check the target values (one device sync); shapes and dtypes are always checked.

    Returns a float32 0-d tensor; its gradient w.r.t. ``student_logits`` (computed in forward,
    held as one tensor like the logits) equals the unchunked loss's.
    """
    fn = resolve_row_loss(row_loss)
    chunk = _check_chunk(chunk_size)
    if not isinstance(student_logits, Tensor) or student_logits.dim() != 2:
        _check_rows("student_logits", student_logits, -1)
    n, classes = student_logits.shape
    _check_rows("student_logits", student_logits, n)
    teacher = _teacher_rows(teacher_logits, n, classes)
    _check_targets(targets, n, classes, validate)
    device = student_logits.device

    def run(with_grad: bool) -> tuple[Tensor, tuple]:
        src = _LogitsSource(student_logits, with_grad)
        loss = _token_pass(fn, src, teacher, targets, chunk, with_grad, device)
        return loss, src.grads()

    with torch.autocast(device_type=device.type, enabled=False):
        return _ChunkedLoss.apply(run, True, student_logits)


def fused_linear_token_loss(
    row_loss: RowLoss | Any,
    hidden: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    teacher_logits: Tensor | TeacherRows,
    targets: Tensor | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    grad_in_forward: bool = True,
    validate: bool = True,
) -> Tensor:
    """``row_loss`` on the logits ``hidden @ weight.T + bias``, never holding them whole.

    Args:
        row_loss: see the module docstring.
        hidden: ``(N, H)`` final hidden states of the student (float32, bf16, fp16: the matmuls
            run in this dtype, the loss in float32, as an unfused bf16 output layer would).
        weight: ``(V, H)`` output layer (an ``nn.Linear(H, V)``'s weight); bias: ``(V,)`` or None.
        teacher_logits: ``(N, V)`` or a callable ``(start, end) -> rows``.
        targets: ``(N,)`` class indices, ``-100`` = ignored; ``None``: every token counts.
        chunk_size: tokens per chunk; the transient memory is a few ``(chunk_size, V)`` tensors.
        grad_in_forward: compute the gradients during forward (store ``(N, H) + (V, H)``) or
            recompute the chunk logits in backward (one more matmul per chunk).
        validate: check the target values (one device sync); shapes and dtypes are always checked.

    Returns a float32 0-d tensor, differentiable w.r.t. ``hidden``, ``weight`` and ``bias``.
    """
    fn = resolve_row_loss(row_loss)
    chunk = _check_chunk(chunk_size)
    if not isinstance(weight, Tensor) or weight.dim() != 2:
        shape = tuple(weight.shape) if isinstance(weight, Tensor) else type(weight).__name__
        raise ValueError(f"weight must be a 2-D (vocabulary, hidden) tensor, got {shape}")
    classes, width = weight.shape
    if not isinstance(hidden, Tensor) or hidden.dim() != 2:
        shape = tuple(hidden.shape) if isinstance(hidden, Tensor) else type(hidden).__name__
        raise ValueError(f"hidden must be a 2-D (tokens, hidden) tensor, got {shape}")
    n = hidden.shape[0]
    _check_rows("hidden", hidden, n, width)
    _check_rows("weight", weight, classes, width)
    if bias is not None and (not isinstance(bias, Tensor) or tuple(bias.shape) != (classes,)):
        shape = tuple(bias.shape) if isinstance(bias, Tensor) else type(bias).__name__
        raise ValueError(f"bias must have shape ({classes},), got {shape}")
    teacher = _teacher_rows(teacher_logits, n, classes)
    _check_targets(targets, n, classes, validate)
    device = hidden.device
    needs = (hidden.requires_grad, weight.requires_grad, bias is not None and bias.requires_grad)

    def run(with_grad: bool) -> tuple[Tensor, tuple]:
        src = _LinearSource(hidden, weight, bias, needs if with_grad else (False, False, False))
        loss = _token_pass(fn, src, teacher, targets, chunk, with_grad, device)
        gh, gw, gb = src.grads()
        return loss, (gh, gw) if bias is None else (gh, gw, gb)

    inputs = (hidden, weight) if bias is None else (hidden, weight, bias)
    with torch.autocast(device_type=device.type, enabled=False):
        return _ChunkedLoss.apply(run, bool(grad_in_forward), *inputs)
