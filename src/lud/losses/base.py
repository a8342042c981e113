"""The one interface every distillation loss in :mod:`lud.losses` follows.

A loss is an :class:`torch.nn.Module` called as ``loss(student_logits, teacher_logits, targets,
epoch=0.0)``. It returns a :class:`LossOutput`: ``total`` is the scalar to back-propagate,
``terms`` are named scalar tensors that add up to ``total`` (so a user sees what each part
contributes) and ``stats`` are floats for logging.

Subclasses implement :meth:`DistillationLoss.compute` only. The base class

* validates inputs (shapes, dtypes, class counts, target range, finiteness) and raises a
  ``ValueError`` that names the problem;
* computes in float32 with autocast switched off, whatever the caller's precision, because
  softmax/KL/rank statistics in bf16/fp16 lose the small probabilities distillation lives on;
* accepts token-level inputs: logits of shape ``(B, T, C)`` with targets ``(B, T)`` are flattened
  to ``(B·T, C)`` and the tokens whose target is :attr:`DistillationLoss.ignore_index` (default
  ``-100``, PyTorch's and Hugging Face's padding convention) are dropped *before*
  :meth:`compute`, so every statistic, mask and mean of every loss is over the valid tokens only.
  A batch with no valid token gives a total of 0 (connected to the graph, zero gradient) and no
  terms, not NaN. ``(N, C)`` inputs are passed through unchanged (their targets must be class
  indices): the selection has a data-dependent size, which would break ``torch.compile``'s graph
  and cost a device sync on every call of the common path. With ``gather=True`` the ranks'
  valid-token counts must then be equal (the gather checks it);
* with ``gather=True`` under data-parallel training, concatenates the student logits (keeping
  their gradient), teacher logits and targets of every rank before :meth:`compute`, so that batch
  statistics see the global batch (see :meth:`DistillationLoss._gather`). A subclass exposes the
  option by accepting ``gather`` and passing it to ``super().__init__``.

Two views. Some published recipes (MLKD, the released LUD code) feed every image twice, a weak
view (crop/flip) and a strong view (weak + RandAugment), through both networks. A loss that
takes two views sets ``two_views = True`` (a class attribute, or per instance from its
constructor) and implements :meth:`DistillationLoss.compute_two_views`; it is then called with the
strong view's logits as keyword arguments::

    loss(s_weak, t_weak, targets, epoch=e,
         strong_student_logits=s_strong, strong_teacher_logits=t_strong)

(same images, same order, same ``targets``). The one-view call is unchanged for every other loss.
A two-view loss called without the strong view, a one-view loss called with it, or only one of the
two strong tensors: ``ValueError`` naming the problem. ``ce_on_both_views`` tells the caller that
the loss itself already includes the cross-entropy of the strong view (term ``ce_strong``): a
trainer never adds a CE of its own for either view.

A sparse teacher. ``teacher_logits`` may be a :class:`~lud.losses.topk.TopKTeacher` (the
teacher's top-k indices and log-probabilities per token, ``(N, k)`` or ``(B, T, k)``) for a loss
whose registry entry lists ``"topk"`` in its ``inputs`` and that implements
:meth:`DistillationLoss.compute_topk`; it is validated (indices in range and distinct per row,
log-probabilities finite and ``<= 0``), ``(B, T, k)`` rows go through the same ignore-index
selection as dense logits, and ``compute_topk`` receives float32 student logits and the ``(N, k)``
teacher. Every other loss refuses it with a ``ValueError`` saying why.

The epoch. ``epoch`` is a number or a 0-d tensor. Every epoch-dependent weight (DKD's and RLD's
warm-up, CTKD's curriculum, LUD's rank warm-up) is computed with the same type it was given: a
tensor epoch gives tensor weights and no Python float is ever made from it, so a loss under
``torch.compile`` traces one graph for every epoch instead of specialising (recompiling) on each
new fractional epoch a training loop passes. The values are the same either way.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field
from typing import Any, TypeAlias

import torch
from torch import Tensor, nn

from .params import check_bool
from .topk import TopKTeacher

__all__ = ["DistillationLoss", "Epoch", "LossOutput", "linear_warmup", "validate_logits"]

# A number, or a 0-d tensor (one traced graph for every epoch under torch.compile).
Epoch: TypeAlias = float | Tensor


def as_epoch(epoch: object) -> Epoch:
    """``epoch`` as a float, or as a detached float32 0-d tensor if it is a tensor."""
    if isinstance(epoch, Tensor):
        if epoch.dim() != 0 or epoch.is_complex() or epoch.dtype == torch.bool:
            raise ValueError(
                f"epoch must be a number or a real 0-d tensor, got a tensor of shape "
                f"{tuple(epoch.shape)} and dtype {epoch.dtype}"
            )
        return epoch.detach().float()
    try:
        return float(epoch)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"epoch must be a number or a 0-d tensor, got {epoch!r}") from None


def linear_warmup(epoch: Epoch, epochs: float) -> Epoch:
    """``min(max(epoch, 0) / epochs, 1)``; 1 when ``epochs <= 0`` (no warm-up).

    A tensor ``epoch`` gives a tensor (see the module docstring), a number a float.
    """
    if epochs <= 0:
        return 1.0
    if isinstance(epoch, Tensor):
        return (epoch.clamp_min(0.0) / epochs).clamp_max(1.0)
    return min(max(float(epoch), 0.0) / epochs, 1.0)


def _plain(value: Any, where: str) -> Any:
    """``value`` as plain YAML/JSON data; ``TypeError`` naming ``where`` otherwise."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise TypeError(f"{where} is {value!r}: a recorded parameter must be finite")
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {k: _plain(v, f"{where}.{k}") for k, v in value.items()}
    raise TypeError(
        f"{where} is a {type(value).__name__}, not plain data (bool, int, float, str, None, "
        "list, mapping): a loss's constructor arguments must be recordable"
    )


@dataclass
class LossOutput:
    """Result of a loss call.

    Attributes:
        total: scalar tensor to back-propagate; equals ``sum(terms.values())``.
        terms: named scalar tensors (weights already applied) that sum to ``total``.
        stat_tensors: detached scalar tensors for logging. Kept as tensors so that a training
            step does not force a device synchronisation; read them through :attr:`stats`.
    """

    total: Tensor
    terms: dict[str, Tensor]
    stat_tensors: dict[str, Tensor] = field(default_factory=dict)

    @property
    def stats(self) -> dict[str, float]:
        """Logging statistics as Python floats (synchronises with the device)."""
        return {k: float(v) for k, v in self.stat_tensors.items()}


def validate_logits(
    student_logits: Tensor,
    teacher_logits: Tensor | None,
    targets: Tensor | None,
    *,
    check_finite: bool = True,
) -> None:
    """Raise ``ValueError`` naming the problem if the inputs cannot be distilled on."""
    if not isinstance(student_logits, Tensor):
        raise ValueError(
            f"student_logits must be a torch.Tensor, got {type(student_logits).__name__}"
        )
    if student_logits.dim() != 2:
        raise ValueError(
            f"student_logits must have shape (batch, classes), got shape {tuple(student_logits.shape)}"
        )
    if not student_logits.is_floating_point():
        raise ValueError(f"student_logits must be floating point, got dtype {student_logits.dtype}")
    batch, classes = student_logits.shape
    if batch < 1:
        raise ValueError("student_logits has an empty batch (batch size 0)")
    if classes < 2:
        raise ValueError(f"need at least 2 classes, student_logits has {classes}")
    if teacher_logits is not None:
        if not isinstance(teacher_logits, Tensor):
            raise ValueError(
                f"teacher_logits must be a torch.Tensor, got {type(teacher_logits).__name__}"
            )
        if not teacher_logits.is_floating_point():
            raise ValueError(
                f"teacher_logits must be floating point, got dtype {teacher_logits.dtype}"
            )
        if teacher_logits.dim() != 2:
            raise ValueError(
                f"teacher_logits must have shape (batch, classes), got shape {tuple(teacher_logits.shape)}"
            )
        if teacher_logits.shape[1] != classes:
            raise ValueError(
                f"class-count mismatch: student_logits has {classes} classes, "
                f"teacher_logits has {teacher_logits.shape[1]}"
            )
        if teacher_logits.shape[0] != batch:
            raise ValueError(
                f"batch-size mismatch: student_logits has {batch} rows, "
                f"teacher_logits has {teacher_logits.shape[0]}"
            )
    if targets is not None:
        if not isinstance(targets, Tensor):
            raise ValueError(f"targets must be a torch.Tensor, got {type(targets).__name__}")
        if targets.dim() != 1 or targets.shape[0] != batch:
            raise ValueError(
                f"targets must have shape ({batch},) to match the logits, got {tuple(targets.shape)}"
            )
        if targets.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
            raise ValueError(f"targets must be integer class indices, got dtype {targets.dtype}")
        if batch > 0:
            lo, hi = int(targets.min()), int(targets.max())
            if lo < 0 or hi >= classes:
                raise ValueError(
                    f"targets out of range: values span [{lo}, {hi}] but there are {classes} classes"
                )
    if check_finite:
        if not bool(torch.isfinite(student_logits).all()):
            raise ValueError("student_logits contain NaN or Inf")
        if teacher_logits is not None and not bool(torch.isfinite(teacher_logits).all()):
            raise ValueError("teacher_logits contain NaN or Inf")


class DistillationLoss(nn.Module):
    """Base class: validation and float32 computation around :meth:`compute`.

    Class attributes:
        requires_teacher: ``False`` for losses that work without a teacher (``ce``).
        requires_targets: ``False`` for purely teacher-driven losses.
        two_views: ``True`` when the loss must be called with a strong view too (see the module
            docstring); instances may override it from a constructor argument.
        ce_on_both_views: ``True`` when a two-view loss adds the strong view's cross-entropy
            itself (informational for trainers and logs; only meaningful with ``two_views``).

    Args:
        validate: check the inputs on every call (one device sync for the finiteness test;
            switch off in tight loops once the pipeline is trusted).
        gather: under data-parallel training, compute the loss on the logits of all ranks
            (identity in a single process). Costs an all-gather of B×C logits per step forward
            and an all-reduce of their gradient backward.
    """

    requires_teacher: bool = True
    requires_targets: bool = True
    gather: bool = False  # class default, so subclasses that never pass it keep working
    two_views: bool = False
    ce_on_both_views: bool = False
    #: target value that marks a token of ``(B, T, C)`` input to leave out (padding, prompt)
    ignore_index: int = -100
    #: why the loss refuses a :class:`~lud.losses.topk.TopKTeacher` (when it does)
    topk_refusal: str = (
        "it needs the teacher's logits over every class, which a top-k teacher does not have"
    )

    def __init__(self, validate: bool = True, gather: bool = False) -> None:
        super().__init__()
        check_bool("gather", gather)
        self.validate = validate
        self.gather = gather

    @classmethod
    def constructor_params(cls) -> list[str]:
        """Names of the constructor's keyword arguments, in signature order.

        A constructor taking ``**kwargs`` (a subclass forwarding to its parent) also lists its
        parents' arguments, up the MRO to the first constructor without ``**kwargs``.
        """
        names: list[str] = []
        for klass in cls.__mro__:
            init = klass.__dict__.get("__init__")
            if init is None:
                continue
            params = list(inspect.signature(init).parameters.values())[1:]  # without self
            names += [p.name for p in params
                      if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and p.name not in names]
            if not any(p.kind is p.VAR_KEYWORD for p in params):
                break
        return names

    def resolved_params(self) -> dict[str, Any]:
        """Every constructor argument's effective value, after presets and defaults.

        Read generically from ``self.<name>`` for each name of :meth:`constructor_params`, so a
        loss records exactly what it runs with; building the same class with these values gives
        the same loss. Values are plain YAML/JSON data (tuples become lists).

        Contract for a subclass: store every constructor argument, checked and resolved, as an
        attribute of the same name (``self.temperature = positive_param(...)``). A ``TypeError``
        naming the argument says when one is not stored so, or is not plain data.
        """
        out: dict[str, Any] = {}
        cls = type(self).__name__
        for name in self.constructor_params():
            try:
                value = getattr(self, name)
            except AttributeError:
                raise TypeError(
                    f"loss {cls} does not store its constructor argument '{name}' as self.{name}: "
                    "store every argument under its own name (see "
                    "DistillationLoss.resolved_params)"
                ) from None
            out[name] = _plain(value, f"{cls}.{name}")
        return out

    def forward(
        self,
        student_logits: Tensor,
        teacher_logits: Tensor | None = None,
        targets: Tensor | None = None,
        epoch: Epoch = 0.0,
        *,
        strong_student_logits: Tensor | None = None,
        strong_teacher_logits: Tensor | None = None,
    ) -> LossOutput:
        name = type(self).__name__
        if self.requires_teacher and teacher_logits is None:
            raise ValueError(f"loss '{name}' needs teacher_logits, got None")
        if self.requires_targets and targets is None:
            raise ValueError(f"loss '{name}' needs targets, got None")
        strong = self._check_views(strong_student_logits, strong_teacher_logits)
        epoch = as_epoch(epoch)
        if isinstance(teacher_logits, TopKTeacher):
            if strong is not None:
                raise ValueError(f"loss '{name}': a top-k teacher takes one view")
            return self._forward_topk(student_logits, teacher_logits, targets, epoch)
        if isinstance(student_logits, Tensor) and student_logits.dim() == 3:
            if strong is not None:
                raise ValueError(f"loss '{name}': two views take (N, C) logits, not (B, T, C)")
            student_logits, teacher_logits, targets = self._valid_tokens(
                student_logits, teacher_logits, targets
            )
            if student_logits.shape[0] == 0:
                # every token ignored: nothing to distil; 0 with a (zero) gradient, not 0/0
                zero = student_logits.float().sum() * 0.0
                return LossOutput(total=zero, terms={})
        if self.validate:
            validate_logits(student_logits, teacher_logits, targets)
            if strong is not None:
                validate_logits(strong[0], strong[1], targets)
                if strong[0].shape != student_logits.shape:
                    raise ValueError(
                        f"strong_student_logits has shape {tuple(strong[0].shape)}, the weak view "
                        f"{tuple(student_logits.shape)}: both views must hold the same images"
                    )
        device_type = student_logits.device.type
        with torch.autocast(device_type=device_type, enabled=False):
            s = student_logits.float()
            t = None if teacher_logits is None else teacher_logits.detach().float()
            y = None if targets is None else targets.long()
            if self.gather:
                s = self._gather(s, differentiable=True, check=self.validate)
                t = None if t is None else self._gather(t)
                y = None if y is None else self._gather(y)
            if strong is None:
                return self.compute(s, t, y, epoch)
            s2, t2 = strong[0].float(), strong[1].detach().float()
            if self.gather:
                s2 = self._gather(s2, differentiable=True, check=self.validate)
                t2 = self._gather(t2)
            return self.compute_two_views(s, t, y, epoch, s2, t2)

    def _forward_topk(
        self, student_logits: Tensor, teacher: TopKTeacher, targets: Tensor | None, epoch: Epoch
    ) -> LossOutput:
        """:meth:`forward` with a :class:`TopKTeacher`: support check, selection, validation."""
        self.check_topk_support()
        name = type(self).__name__
        if isinstance(student_logits, Tensor) and student_logits.dim() == 3:
            shape = tuple(student_logits.shape)
            if teacher.shape != shape[:2]:
                raise ValueError(f"student_logits has shape {shape}; the top-k teacher must have rows "
                                 f"{shape[:2]}, got {teacher.shape} (k = {teacher.k})")
            flat = teacher.reshape(-1)
            if targets is not None and isinstance(targets, Tensor) and tuple(targets.shape) == shape[:2]:
                flat = flat.select(targets.reshape(-1) != self.ignore_index)
            student_logits, _, targets = self._valid_tokens(student_logits, None, targets)
            teacher = flat
            if student_logits.shape[0] == 0:
                return LossOutput(total=student_logits.float().sum() * 0.0, terms={})
        if self.validate:
            validate_logits(student_logits, None, targets)
            if teacher.shape != (student_logits.shape[0],):
                raise ValueError(f"batch-size mismatch: student_logits has {student_logits.shape[0]} "
                                 f"rows, the top-k teacher {teacher.shape}")
            teacher.check(student_logits.shape[1])
        if teacher.k > student_logits.shape[1]:
            raise ValueError(f"loss '{name}': the top-k teacher keeps k = {teacher.k} classes, the "
                             f"student has only {student_logits.shape[1]}")
        with torch.autocast(device_type=student_logits.device.type, enabled=False):
            s = student_logits.float()
            y = None if targets is None else targets.long()
            t = teacher.to(s.device)
            if self.gather:
                s = self._gather(s, differentiable=True, check=self.validate)
                t = TopKTeacher(self._gather(t.indices), self._gather(t.log_probs), t.tail,
                                t.temperature, t.vocab_size, validate=False)
                y = None if y is None else self._gather(y)
            return self.compute_topk(s, t, y, epoch)

    def check_topk_support(self) -> None:
        """``ValueError`` saying why, unless this loss takes a top-k teacher.

        A registered loss must list ``"topk"`` in its registry entry's ``inputs``; every loss must
        implement :meth:`compute_topk`.
        """
        name = getattr(type(self), "registry_name", type(self).__name__)
        implemented = type(self).compute_topk is not DistillationLoss.compute_topk
        if "registry_name" in type(self).__dict__:
            inputs = type(self).__dict__.get("registry_inputs", ())  # set by register_loss
            if "topk" not in inputs:
                raise ValueError(
                    f"loss '{name}' does not take a top-k teacher (its registry inputs are "
                    f"{tuple(inputs)}, without 'topk'): {self.topk_refusal}. Pass the teacher's "
                    "full logits, or use a loss that lists 'topk' (lud.losses.loss_entries(inputs='topk'))"
                )
        if not implemented:
            raise ValueError(f"loss '{name}' does not take a top-k teacher: {self.topk_refusal}")

    def _check_views(
        self, strong_student: Tensor | None, strong_teacher: Tensor | None
    ) -> tuple[Tensor, Tensor] | None:
        """The strong view as a pair, or None; ``ValueError`` when it does not fit the loss."""
        name = type(self).__name__
        given = strong_student is not None or strong_teacher is not None
        if given and (strong_student is None or strong_teacher is None):
            missing = "strong_teacher_logits" if strong_teacher is None else "strong_student_logits"
            raise ValueError(f"loss '{name}': the strong view needs both tensors, {missing} is None")
        if self.two_views and not given:
            raise ValueError(
                f"loss '{name}' takes two views (two_views=True): pass strong_student_logits and "
                "strong_teacher_logits (the strong-augmentation view of the same images)"
            )
        if given and not self.two_views:
            raise ValueError(
                f"loss '{name}' takes one view: got strong_student_logits/strong_teacher_logits "
                "(build it with two_views=True if it supports two views)"
            )
        if not given:
            return None
        assert strong_student is not None and strong_teacher is not None
        return strong_student, strong_teacher

    def _valid_tokens(
        self, student: Tensor, teacher: Tensor | None, targets: Tensor | None
    ) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """Flatten ``(B, T, C)`` logits and ``(B, T)`` targets; keep the non-ignored tokens."""
        shape = tuple(student.shape)
        if teacher is not None:
            if not isinstance(teacher, Tensor) or teacher.dim() != 3:
                got = tuple(teacher.shape) if isinstance(teacher, Tensor) else type(teacher).__name__
                raise ValueError(f"student_logits has shape {shape} (batch, tokens, classes); "
                                 f"teacher_logits must match it, got {got}")
            if teacher.shape[-1] != shape[-1]:
                raise ValueError(f"vocabulary mismatch: student_logits has {shape[-1]} classes, "
                                 f"teacher_logits has {teacher.shape[-1]}")
            if tuple(teacher.shape) != shape:
                raise ValueError(f"shape mismatch: student_logits {shape}, "
                                 f"teacher_logits {tuple(teacher.shape)}")
        if targets is not None:
            if not isinstance(targets, Tensor) or tuple(targets.shape) != shape[:2]:
                got = tuple(targets.shape) if isinstance(targets, Tensor) else type(targets).__name__
                raise ValueError(f"targets must have shape {shape[:2]} (batch, tokens) to match "
                                 f"student_logits {shape}, got {got}")
        flat_s = student.reshape(-1, shape[-1])
        flat_t = None if teacher is None else teacher.reshape(-1, shape[-1])
        if targets is None:
            return flat_s, flat_t, None
        flat_y = targets.reshape(-1)
        keep = flat_y != self.ignore_index
        return (flat_s[keep], None if flat_t is None else flat_t[keep], flat_y[keep])

    def _gather(self, x: Tensor, *, differentiable: bool = False, check: bool = False) -> Tensor:
        """Rows of ``x`` from every data-parallel rank, concatenated in rank order.

        The identity without an initialised multi-rank process group, so a ``gather=True``
        configuration runs unchanged in one process. With ``differentiable=True`` the gradient
        that reaches this rank's rows is the sum over ranks of each rank's (identical) loss
        gradient — ``world_size`` times the single-process gradient of these rows — which DDP's
        mean over ranks turns into exactly the single-process parameter gradient on the global
        batch. Every rank must pass the same number of rows (``check`` verifies it; the forward
        pass checks once per call when ``validate`` is on).
        """
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return x
        from .distributed import gather_rows

        return gather_rows(x, differentiable=differentiable, check=check)

    def compute(
        self,
        student_logits: Tensor,
        teacher_logits: Tensor | None,
        targets: Tensor | None,
        epoch: Epoch,
    ) -> LossOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    def compute_topk(
        self,
        student_logits: Tensor,
        teacher: TopKTeacher,
        targets: Tensor | None,
        epoch: Epoch,
    ) -> LossOutput:  # pragma: no cover - abstract
        """:meth:`compute` with a ``(N, k)`` top-k teacher (float32 student logits, validated).

        Implemented by the losses whose registry entry lists ``"topk"`` in ``inputs``.
        """
        raise NotImplementedError(f"{type(self).__name__} has no top-k path")

    def compute_two_views(
        self,
        student_logits: Tensor,
        teacher_logits: Tensor | None,
        targets: Tensor | None,
        epoch: Epoch,
        strong_student_logits: Tensor,
        strong_teacher_logits: Tensor,
    ) -> LossOutput:  # pragma: no cover - abstract
        """Two-view counterpart of :meth:`compute` (float32, validated, teacher detached)."""
        raise NotImplementedError(f"{type(self).__name__} declares two_views but has no compute_two_views")

    @staticmethod
    def output(terms: dict[str, Tensor], stats: dict[str, Tensor] | None = None) -> LossOutput:
        """Build a :class:`LossOutput` whose total is the sum of ``terms``."""
        total = sum(terms.values(), start=torch.zeros((), device=next(iter(terms.values())).device))
        return LossOutput(
            total=total,
            terms=terms,
            stat_tensors={
                k: v.detach() if isinstance(v, Tensor) else torch.tensor(float(v))
                for k, v in (stats or {}).items()
            },
        )
