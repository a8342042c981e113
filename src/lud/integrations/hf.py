"""Distillation inside a Hugging Face ``transformers.Trainer`` (the ``hf`` extra).

>>> trainer = DistillationTrainer(model=student, teacher_model=teacher, loss="lud",
...                               loss_params={"cdl_weight": 0.0}, args=args,
...                               train_dataset=train)  # doctest: +SKIP
>>> trainer.train()  # doctest: +SKIP

:meth:`DistillationTrainer.compute_loss` (the Trainer's documented extension point) runs the
student and, without gradient, the teacher on the same inputs, keeps the positions whose label is
not ``-100`` (shifted by one for causal language models, as Hugging Face's own loss does) and
hands the ``(N, C)`` rows to a loss of :mod:`lud.losses`. Classification models (logits
``(B, C)``, labels ``(B,)``) go through the same path without the shift.

The teacher is frozen (eval mode, ``requires_grad=False``), moved to the student's device by the
trainer itself and kept out of the optimizer, the checkpoints and any DDP/accelerate wrapping. The
loss module's parameters (CTKD's temperature) join the optimizer in a param group of their own (no
weight decay); under multi-process training their gradients are averaged over the ranks before each
optimizer step (the loss is not part of the DDP-wrapped model). Its state (parameters and buffers,
e.g. LUD's running thresholds) is written next to the model as ``distillation_loss.pt`` and read
back on ``resume_from_checkpoint``.

Logging: each training log row of the Trainer gets ``loss/<term>`` (the loss's named terms) and
``stat/<name>`` (its statistics), averaged over the steps since the previous row. They are summed
as detached tensors and read once per row. Under multi-process training they are this process's
values (the Trainer's ``loss`` is the global mean). Device synchronisation per step: selecting
the valid positions (a boolean mask) must know their number, and the loss's input check
(``validate=True``, the default of every loss) tests finiteness; build the loss with
``validate=False`` to drop the latter once the pipeline is trusted.

Large label spaces: LUD's category term (and MLKD's class term, the released LUD's ``cc``) builds a
C x C Gram matrix, the sample/batch terms an N x N one over the valid tokens. At a 32k vocabulary
the C x C matrix alone is 4 GiB and its row ranks cost many times that, so the trainer refuses, with
a ``ValueError`` naming the term and its size, any step whose Gram matrix would exceed
``max_gram_elements`` (default 2**22, a 2048 x 2048 matrix). Restrict LUD
(``loss_params={"category_top_k": 32, "sample_max_rows": 512}``: the category terms on the
teacher's top classes, SDL on a row subsample; the check measures the restricted sizes), switch
the term off (``{"cdl_weight": 0}``), use fewer tokens per batch, or raise the bound.

Vocabularies that differ by padding (e.g. 152,064 vs 151,936 output rows): pass ``vocab_size``
(the shared vocabulary size) and both logits are cut to it; without it different widths are a
``ValueError``. Gradient accumulation: with ``token_normalization=True`` (default) each
micro-batch's loss is rescaled by its share of the valid tokens of the accumulated batch (the
Trainer's ``num_items_in_batch``), so that k micro-batches equal one batch k times the size for
every loss that is a mean over tokens; see :mod:`lud.integrations.loss_step` for that rule and for
what it means for LUD's batch-level terms. The step itself
(:func:`~lud.integrations.loss_step.distillation_loss_step`) is shared with the TRL integration.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import Tensor, nn
from transformers import Trainer, TrainerCallback

from lud.losses import DistillationLoss, LossOutput
from lud.losses.token_divergence import check_vocab_size

from .distributed import average_gradients
from .fused_head import check_fused_student, fused_loss, output_tensor
from .loss_step import distillation_loss_step, resolve_loss, token_normalised
from .tokens import DEFAULT_MAX_GRAM_ELEMENTS, IGNORE_INDEX
from .topk_teacher import CACHE_KEYS, check_topk_options, online_topk, pop_cached_teacher

__all__ = ["DistillationTrainer", "LOSS_STATE_FILE"]

LOSS_STATE_FILE = "distillation_loss.pt"


def _logits(outputs: Any) -> Tensor:
    return output_tensor(outputs, "logits", "the model returned no logits tensor")


def _is_causal_lm(model: nn.Module) -> bool:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    if type(model).__name__.startswith("Peft"):  # a PEFT wrapper: judge the model inside, as HF does
        model = model.base_model.model
    return type(model).__name__ in set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values())


class _AverageLossGradients(TrainerCallback):
    """Before each optimizer step, on every rank: the loss parameters' gradients averaged over the
    ranks (:func:`lud.integrations.distributed.average_gradients`; the loss is not DDP-wrapped)."""

    def __init__(self, params: list[nn.Parameter]) -> None:
        self.params = params

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        average_gradients(self.params)


class DistillationTrainer(Trainer):
    """A ``transformers.Trainer`` that trains ``model`` (the student) to match a frozen teacher.

    Args:
        *args, **kwargs: everything ``transformers.Trainer`` takes (``model`` is the student).
        teacher_model: the teacher; same inputs, same label space (vocabulary or classes) as the
            student. Frozen and moved to the training device here. ``None`` when every batch
            carries its cached top-k teacher (:class:`lud.data.teacher_cache.CachedTeacherDataset`;
            see :mod:`lud.integrations.topk_teacher`).
        teacher_top_k: give the loss the teacher's top-k (float16 log-probabilities, as the cache
            stores them) instead of its dense logits; the loss must take a top-k teacher.
        topk_tail: the missing-mass rule of a top-k teacher (:data:`lud.losses.topk.TAILS`).
        loss: a registered loss name (``lud.losses.available_losses()``) or a built
            :class:`~lud.losses.DistillationLoss`. Default ``"kd"``.
        loss_params: keyword arguments of :func:`lud.losses.build_loss` (only with a name).
        shift_labels: ``True`` for causal language modelling (logit ``t`` predicts label
            ``t + 1``); ``None`` (default) decides from the student's class like Hugging Face does.
        ignore_index: label value of positions that do not count (default ``-100``).
        max_gram_elements: largest Gram matrix (elements) a loss may build; see the module doc.
        vocab_size: shared vocabulary size of a teacher and student whose logits differ by padding
            columns; ``None`` (default): the widths must be equal.
        token_normalization: normalise by the valid tokens of the whole accumulated batch (the
            Trainer's ``num_items_in_batch``) rather than per micro-batch; see the module doc.
            Needs transformers' count hook (``Trainer._get_num_items_in_batch``, transformers 5);
            without it the per-micro-batch mean is used.
        fused_chunk_size: ``None`` (default): the student's logits, then the loss. An int: the
            fused output layer + loss path for training steps, that many tokens at a time, never
            holding the student's ``(N, V)`` logits (:mod:`lud.integrations.fused_head`: a loss
            with ``row_loss``, or LUD with ``category_top_k``/``sample_max_rows``). It needs the
            dense teacher (no top-k teacher, no ``vocab_size``).

    Raises:
        ValueError: a two-view loss, ``loss_params`` with a built loss, a teacher that shares
            parameters with the student; during training, mismatched vocabularies/class counts or
            sequence lengths, or a Gram matrix above ``max_gram_elements``.
    """

    # our loss is a mean over this micro-batch's valid tokens: the Trainer divides it by the
    # gradient-accumulation steps (transformers >= 5 reads the first flag, 4.x the second)
    loss_is_scaled_for_ga = False

    def __init__(
        self,
        *args: Any,
        teacher_model: nn.Module | None = None,
        loss: str | DistillationLoss = "kd",
        loss_params: dict[str, Any] | None = None,
        shift_labels: bool | None = None,
        ignore_index: int = IGNORE_INDEX,
        max_gram_elements: int = DEFAULT_MAX_GRAM_ELEMENTS,
        vocab_size: int | None = None,
        token_normalization: bool = True,
        teacher_top_k: int | None = None,
        topk_tail: str = "bucket",
        fused_chunk_size: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        if not isinstance(token_normalization, bool):
            raise ValueError(f"token_normalization must be a bool, got {token_normalization!r}")
        self.vocab_size = check_vocab_size(vocab_size)
        # True makes the Trainer count num_items_in_batch (the model never sees the labels: we strip
        # them) and, with loss_is_scaled_for_ga None, not divide a normalised loss by the GA steps
        # (transformers < 5 has no _get_num_items_in_batch hook to count with our shift: off there)
        token_normalization = token_normalization and hasattr(Trainer, "_get_num_items_in_batch")
        self.model_accepts_loss_kwargs = token_normalization
        self.token_normalization = token_normalization
        if token_normalization:
            self.loss_is_scaled_for_ga = None
        device = self._student_device()
        self.distillation_loss = self._build_loss(loss, loss_params).to(device)
        self.teacher_model = None if teacher_model is None else self._freeze(teacher_model, device)
        self.teacher_top_k, self.topk_tail = teacher_top_k, topk_tail
        check_topk_options(self.distillation_loss, teacher_top_k, topk_tail, cached=teacher_model is None)
        self.shift_labels = shift_labels
        self.ignore_index = int(ignore_index)
        if max_gram_elements < 1:
            raise ValueError(f"max_gram_elements must be >= 1, got {max_gram_elements}")
        self.max_gram_elements = int(max_gram_elements)
        self.fused_chunk_size = fused_chunk_size
        if fused_chunk_size is not None:
            if isinstance(fused_chunk_size, bool) or not isinstance(fused_chunk_size, int) or (
                    fused_chunk_size < 1):
                raise ValueError(f"fused_chunk_size must be None or an int >= 1, got {fused_chunk_size!r}")
            if self.args.world_size > 1:
                raise ValueError("fused_chunk_size is single-process only (the base model is "
                                 "called outside the DDP wrapper)")
            check_fused_student(self.model, self.distillation_loss)
            if teacher_model is None or teacher_top_k is not None or vocab_size is not None:
                what = ("a cached top-k teacher" if teacher_model is None else
                        "teacher_top_k" if teacher_top_k is not None else "vocab_size")
                raise ValueError(f"fused_chunk_size takes the teacher's full logits over the same "
                                 f"vocabulary; it does not combine with {what}")
        self._log_sums: dict[str, Tensor] = {}
        self._log_counts: dict[str, int] = {}
        loss_params_list = [p for p in self.distillation_loss.parameters() if p.requires_grad]
        if loss_params_list:
            self.add_callback(_AverageLossGradients(loss_params_list))

    # -- set-up ---------------------------------------------------------------------------------
    @staticmethod
    def _build_loss(loss: str | DistillationLoss, params: dict[str, Any] | None) -> DistillationLoss:
        return resolve_loss(loss, params)

    def _student_device(self) -> torch.device:
        # where the Trainer put the student (args.device, unless the model was placed by the user)
        first = next(self.model.parameters(), None)
        return first.device if first is not None else self.args.device

    def _freeze(self, teacher: nn.Module, device: torch.device) -> nn.Module:
        if not isinstance(teacher, nn.Module):
            raise ValueError(f"teacher_model must be a torch.nn.Module, got {type(teacher).__name__}")
        student_ids = {id(p) for p in self.model.parameters()}
        if teacher is self.model or any(id(p) in student_ids for p in teacher.parameters()):
            raise ValueError("teacher_model shares parameters with the student: pass a separate copy")
        teacher.eval()
        teacher.requires_grad_(False)
        return teacher.to(device)

    def create_optimizer(self, *args: Any, **kwargs: Any) -> torch.optim.Optimizer:
        """The Trainer's optimizer plus a group (no weight decay) for the loss's parameters."""
        optimizer = super().create_optimizer(*args, **kwargs)
        present = {id(p) for group in optimizer.param_groups for p in group["params"]}
        extra = [p for p in self.distillation_loss.parameters() if p.requires_grad and id(p) not in present]
        if extra:
            optimizer.add_param_group({"params": extra, "weight_decay": 0.0})
        return optimizer

    # -- the loss -------------------------------------------------------------------------------
    def _get_num_items_in_batch(self, batch_samples: list, device: torch.device) -> Any:
        """The Trainer's count of the accumulated batch's valid positions, with our shift rule.

        transformers shifts the count only for models whose ``loss_type`` is its causal-LM loss
        (GPT-2's is unset: it would count one position per row too many); hand it the labels as
        this trainer scores them (its ``shift_labels`` key), keep its device/rank handling.
        """
        model = self.accelerator.unwrap_model(self.model)
        views = []
        for batch in batch_samples:
            labels = batch.get("labels") if isinstance(batch, dict) else None
            if not isinstance(labels, Tensor):
                views.append(batch)
                continue
            shift = self.shift_labels
            if shift is None:
                shift = labels.dim() == 2 and _is_causal_lm(model)
            views.append({"labels": labels, "shift_labels": labels[..., 1:] if shift else labels})
        return super()._get_num_items_in_batch(views, device)

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: Any = None,
    ) -> Tensor | tuple[Tensor, Any]:
        """Distillation loss of the batch (a mean over its valid positions)."""
        if "labels" not in inputs:
            raise ValueError("DistillationTrainer needs 'labels' in every batch (use -100 to ignore "
                             f"a position); got keys {sorted(inputs)}")
        labels = inputs["labels"]
        inputs = dict(inputs)
        topk = pop_cached_teacher(inputs, self.distillation_loss, self.topk_tail)
        features = {k: v for k, v in inputs.items() if k != "labels"}  # no second loss inside HF
        if self.fused_chunk_size is not None and model.training and not return_outputs:
            return self._fused_loss(model, features, labels,
                                    num_items_in_batch if self.token_normalization else None)
        outputs = model(**features)
        teacher_logits = None
        if topk is None:
            if self.teacher_model is None:
                raise ValueError("DistillationTrainer has no teacher_model and the batch carries no "
                                 f"cached teacher ({', '.join(CACHE_KEYS)})")
            if self.teacher_model.training:  # someone called .train() on it: keep dropout off
                self.teacher_model.eval()
            # the teacher is not wrapped by accelerate: give it the student's mixed precision here
            with torch.no_grad(), self.accelerator.autocast():
                teacher_logits = _logits(self.teacher_model(**features))
            if self.teacher_top_k is not None:
                topk = online_topk(teacher_logits, self.teacher_top_k, self.distillation_loss, self.topk_tail)
        student_logits = _logits(outputs)
        shift = self.shift_labels
        if shift is None:
            shift = _is_causal_lm(self.accelerator.unwrap_model(model)) and student_logits.dim() == 3
        if not (self.token_normalization and model.training):
            num_items_in_batch = None
        loss, out = distillation_loss_step(
            self.distillation_loss, student_logits, teacher_logits if topk is None else topk, labels,
            shift=shift,
            epoch=float(self.state.epoch or 0.0), train=model.training, ignore_index=self.ignore_index,
            vocab_size=self.vocab_size, max_gram_elements=self.max_gram_elements,
            num_items_in_batch=num_items_in_batch,
        )
        if num_items_in_batch is not None and self.args.average_tokens_across_devices:
            # the count is global, DDP averages the ranks' gradients: as transformers' own loss does
            loss = loss * self.accelerator.num_processes
        if out is not None and model.training:
            self._accumulate(out)
        return (loss, outputs) if return_outputs else loss

    def _set_signature_columns_if_needed(self) -> None:
        super()._set_signature_columns_if_needed()
        self._signature_columns = list(dict.fromkeys([*self._signature_columns, *CACHE_KEYS]))
    def _fused_loss(self, model: nn.Module, features: dict[str, Any], labels: Tensor,
                    num_items_in_batch: Any = None) -> Tensor:
        """The training loss through the fused output layer + loss path (fused_head)."""
        student = self.accelerator.unwrap_model(model)
        with torch.no_grad(), self.accelerator.autocast():
            teacher_logits = _logits(self.teacher_model(**features))
        shift = self.shift_labels
        if shift is None:
            shift = _is_causal_lm(student) and teacher_logits.dim() == 3
        self.distillation_loss.train(True)
        with self.accelerator.autocast():
            out = fused_loss(student, features, teacher_logits, labels, self.distillation_loss,
                             shift=shift, ignore_index=self.ignore_index,
                             chunk_size=self.fused_chunk_size, epoch=float(self.state.epoch or 0.0))
        if out is None:  # nothing valid: a zero connected to the student's parameters
            return sum(p.sum() * 0.0 for p in student.parameters() if p.requires_grad)
        self._accumulate(out)
        if num_items_in_batch is None:
            return out.total
        y = labels[..., 1:] if shift else labels
        return token_normalised(out.total, (y != self.ignore_index).sum(), num_items_in_batch)

    # -- logging --------------------------------------------------------------------------------
    def _accumulate(self, out: LossOutput) -> None:
        device = out.total.device
        items = [(f"loss/{k}", v) for k, v in out.terms.items()]
        items += [(f"stat/{k}", v) for k, v in out.stat_tensors.items()]
        for key, value in items:
            value = value.detach().float().to(device)
            self._log_sums[key] = self._log_sums[key] + value if key in self._log_sums else value
            self._log_counts[key] = self._log_counts.get(key, 0) + 1

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        """The Trainer's log row, plus the loss terms and statistics on training rows."""
        if "loss" in logs and self._log_sums:
            keys = list(self._log_sums)
            means = torch.stack([self._log_sums[k] / self._log_counts[k] for k in keys]).tolist()
            logs = {**logs, **dict(zip(keys, means))}
            self._log_sums, self._log_counts = {}, {}
        super().log(logs, *args, **kwargs)

    # -- checkpoints ----------------------------------------------------------------------------
    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        super()._save(output_dir, state_dict=state_dict)
        state = self.distillation_loss.state_dict()
        if state and self.args.should_save:
            folder = output_dir if output_dir is not None else self.args.output_dir
            os.makedirs(folder, exist_ok=True)
            torch.save(state, os.path.join(folder, LOSS_STATE_FILE))

    def _load_from_checkpoint(self, resume_from_checkpoint: str, *args: Any, **kwargs: Any) -> None:
        super()._load_from_checkpoint(resume_from_checkpoint, *args, **kwargs)
        path = os.path.join(resume_from_checkpoint, LOSS_STATE_FILE)
        if os.path.isfile(path):
            state = torch.load(path, map_location=self.args.device, weights_only=True)
            self.distillation_loss.load_state_dict(state)
