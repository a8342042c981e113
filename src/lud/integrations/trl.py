"""On-policy distillation through TRL: any :mod:`lud.losses` loss as the divergence of GKD.

>>> trainer = GKDDistillationTrainer(model=student, teacher_model=teacher, args=GKDConfig(...),
...                                  processing_class=tokenizer, train_dataset=train,
...                                  loss="fkl", loss_params={"ce_weight": 0.0})  # doctest: +SKIP
>>> trainer.train()  # doctest: +SKIP

:class:`GKDDistillationTrainer` is TRL's ``GKDTrainer`` (``trl.experimental.gkd``, the ``trl``
extra) with its divergence replaced. Everything else is TRL's: with probability ``lmbda`` a step
trains on the student's own samples for the batch's prompts (on-policy); otherwise, with
``seq_kd=True``, on the teacher's samples (sequence-level KD); otherwise on the dataset's
completions. The prompt is never scored (labels −100). TRL's successor, ``trl.DistillationTrainer``,
is fully on-policy (no ``lmbda``, no ``seq_kd``) and fuses its generalized JSD into a chunked
kernel over hidden states, so it has no place for another divergence; GKD is the TRL trainer that
mixes.

The loss handling is :func:`lud.integrations.loss_step.distillation_loss_step`, the one the
``transformers.Trainer`` integration uses: causal shift, the ignore index, an optional shared
``vocab_size`` and the Gram-matrix budget. The default loss is ``gjsd`` with ``GKDConfig.beta``
— TRL's own loss, value for value (the divergence at temperature 1, as TRL's ``compute_loss``
calls it; ``GKDConfig.temperature`` is the sampling temperature).

Normalisation: each micro-batch's loss is its mean over its valid tokens and the Trainer divides
by the gradient-accumulation steps. The Trainer's ``num_items_in_batch`` is counted from the
dataset's labels before the student or teacher generates, so on on-policy steps it does not count
the tokens trained on; it is not used here.

TRL's ``GKDTrainer`` itself refuses a teacher and student whose configs differ in
``vocab_size``; ``vocab_size`` here serves models whose logits are wider than the vocabulary the
two share (padding columns) while their configs agree.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from trl.experimental.gkd import GKDTrainer

from lud.losses import DistillationLoss
from lud.losses.token_divergence import check_vocab_size

from .loss_step import distillation_loss_step, resolve_loss
from .tokens import DEFAULT_MAX_GRAM_ELEMENTS, IGNORE_INDEX

__all__ = ["GKDDistillationTrainer"]


class GKDDistillationTrainer(GKDTrainer):
    """TRL's GKD trainer with a :mod:`lud.losses` loss as its divergence.

    Args:
        *args, **kwargs: everything ``trl.experimental.gkd.GKDTrainer`` takes (``args`` a
            ``GKDConfig`` with ``lmbda``, ``beta``, ``seq_kd``, ``temperature``,
            ``max_new_tokens``).
        loss: a registered loss name or a built :class:`~lud.losses.DistillationLoss`. Default
            ``"gjsd"``, built with ``beta=args.beta`` unless ``loss_params`` sets it.
        loss_params: keyword arguments of :func:`lud.losses.build_loss` (only with a name).
        vocab_size: shared vocabulary size when the logits carry padding columns (see the module).
        ignore_index: label value of positions that do not count (TRL's −100).
        max_gram_elements: largest Gram matrix a loss may build (LUD's category/sample terms).

    Raises:
        ValueError: a two-view loss or ``loss_params`` with a built loss; a batch without an
            ``attention_mask``, or prompts without a ``prompt_attention_mask`` when a step may
            generate (``lmbda > 0`` or ``seq_kd``).
    """

    # a mean over the micro-batch's valid tokens: the Trainer divides by the accumulation steps
    loss_is_scaled_for_ga = False

    def __init__(
        self,
        *args: Any,
        loss: str | DistillationLoss = "gjsd",
        loss_params: dict[str, Any] | None = None,
        vocab_size: int | None = None,
        ignore_index: int = IGNORE_INDEX,
        max_gram_elements: int = DEFAULT_MAX_GRAM_ELEMENTS,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.model_accepts_loss_kwargs = False
        if loss == "gjsd":
            loss_params = {"beta": self.beta, **(loss_params or {})}
        first = next(self.model.parameters(), None)
        device = first.device if first is not None else self.args.device
        self.distillation_loss = resolve_loss(loss, loss_params).to(device)
        self.vocab_size = check_vocab_size(vocab_size)
        self.ignore_index = int(ignore_index)
        self.max_gram_elements = int(max_gram_elements)

    def training_step(self, model: nn.Module, inputs: dict[str, Any],
                      num_items_in_batch: Any = None) -> Tensor:
        """TRL's step (λ on-policy / sequence-level KD / off-policy), after checking the masks."""
        generates = self.lmbda > 0 or self.seq_kd
        if generates and "prompts" in inputs and inputs.get("prompt_attention_mask") is None:
            raise ValueError("GKD generates from the batch's 'prompts' (lmbda > 0 or seq_kd): the batch "
                             "needs their 'prompt_attention_mask' (1 for prompt tokens, 0 for padding)")
        return super().training_step(model, inputs, num_items_in_batch)

    def compute_loss(self, model: nn.Module, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Tensor | tuple[Tensor, Any]:
        """The lud loss on the completion tokens of the batch (dataset's or generated)."""
        mask = inputs.get("attention_mask")
        if mask is None:
            raise ValueError("GKDDistillationTrainer needs an 'attention_mask' with every batch "
                             "(dataset or generated sequences); got keys " + str(sorted(inputs)))
        if "labels" not in inputs:
            raise ValueError(f"GKDDistillationTrainer needs 'labels' (-100 where nothing is scored); "
                             f"got keys {sorted(inputs)}")
        student_outputs = model(input_ids=inputs["input_ids"], attention_mask=mask)
        self.teacher_model.eval()
        with torch.no_grad():
            teacher_logits = self.teacher_model(input_ids=inputs["input_ids"], attention_mask=mask).logits
        loss, out = distillation_loss_step(
            self.distillation_loss, student_outputs.logits, teacher_logits, inputs["labels"], shift=True,
            epoch=float(self.state.epoch or 0.0), train=model.training, ignore_index=self.ignore_index,
            vocab_size=self.vocab_size, max_gram_elements=self.max_gram_elements,
        )
        if out is not None:
            mode = "train" if model.training else "eval"
            for key, value in out.terms.items():
                self._metrics[mode][f"loss/{key}"].append(float(value.detach()))
        return (loss, student_outputs) if return_outputs else loss
