"""Multi-Level Logit Distillation (Jin et al., CVPR 2023), one view or weak + strong views.

With ``P = softmax(z / T)`` (B×C), summed over the temperature set ``{4, 3, 5, 2, 6}``:

* **instance**: ``T^2 * KL(P_T || P_S)``, batch-mean (Hinton KD at each T);
* **class** alignment: ``||P_Tᵀ P_T - P_Sᵀ P_S||_F^2 / C`` (C×C class-correlation Gram matrices);
* **batch** alignment: ``||P_T P_Tᵀ - P_S P_Sᵀ||_F^2 / B`` (B×B sample-similarity Gram matrices).

``L = ce_weight * CE + instance_weight * Σ_T instance_T + class_weight * Σ_T class_T
+ batch_weight * Σ_T batch_T``. The released code (``Jin-Ying/Multi-Level-Logit-Distillation``,
``KD_ours.py``) *sums* over the five temperatures (no averaging) and uses one weight, its KD
weight 0.9, for all three levels, with CE weight 0.1: those are the defaults here.

Median-confidence masks, as the released code builds them from the teacher's *untempered*
softmax ``p``: a sample is kept when ``max_c p[b, c] <= median_b`` of those confidences, a class
when ``Σ_b p[b, c] <= median_c`` (``np.percentile(·, 50)``: the mean of the two middle values for
an even count). So the *less* confident half is kept. The released code then multiplies each
already-averaged scalar loss by the mask and takes the mean, i.e. the mask only rescales
the instance and batch terms by the kept fraction of samples and the class term by the kept
fraction of classes (about one half; more with ties): ``mask_mode="scale"``, the default.
``mask_mode="select"`` instead averages over the kept samples / Gram rows only (what a mask
is usually meant to do) and ``"none"`` ignores the masks.

Two views (``two_views=True``; the published recipe, 480 epochs, strong view = RandAugment):
called with ``strong_student_logits=`` and ``strong_teacher_logits=`` (see
:mod:`lud.losses.base`), it adds what the released ``KD_ours.forward_train`` adds — all weights
as above, masks from the weak view's teacher:

* ``ce_strong = ce_weight·CE(z_S^strong, y)`` (``ce_on_both_views``, on by default);
* ``instance_strong = instance_weight·Σ_T T²·KL`` **unmasked**. In the release the first three
  temperatures (4, 3, 5) are taken on the strong view but the last two (2, 6) on the *weak* view's
  logits (a copy-paste slip in ``KD_ours.py``); ``released_strong_temperatures=True`` (default)
  reproduces that, ``False`` takes every temperature on the strong view.
* no class/batch terms on the strong view: the release computes ``loss_cc_strong`` and
  ``loss_bc_strong`` but leaves them out of its loss dictionary.

Released grouping: ``loss_ce = ce + ce_strong``, ``loss_kd = instance + instance_strong``,
``loss_cc = class``, ``loss_bc = batch`` (``tests/fixtures/mlkd_two_view_reference.json``).
With ``two_views=False`` (default) the loss is the weak-view part alone, unchanged.

Logit standardisation (``standardize=True``) applies, as in the LS paper's released code, to the
instance term only; the Gram alignments and masks use raw logits. Its MLKD+LS values: base
temperature 2 (temperature set 2, 3, 5, 2, 6) and all three weights 9.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import DistillationLoss, Epoch, LossOutput
from .kd import kl_per_sample
from .params import check_bool, non_negative_param, positive_param
from .registry import register_loss, suggest
from .standardize import standardize_logits

__all__ = [
    "MASK_MODES",
    "MLKDLoss",
    "batch_alignment",
    "class_alignment",
    "mlkd_confidence_masks",
]

MASK_MODES = ("scale", "select", "none")


def mlkd_confidence_masks(teacher_logits: Tensor) -> tuple[Tensor, Tensor]:
    """``(sample_mask (B,), class_mask (C,))``: True where confidence <= its batch median."""
    p = F.softmax(teacher_logits.detach().float(), dim=1)
    conf = p.amax(dim=1)
    class_conf = p.sum(dim=0)
    sample_mask = conf <= torch.quantile(conf, 0.5)
    class_mask = class_conf <= torch.quantile(class_conf, 0.5)
    return sample_mask, class_mask


def _masked_mean(values: Tensor, mask: Tensor | None) -> Tensor:
    """Mean of ``values`` over the entries where ``mask`` is 1 (all entries if ``mask`` is None)."""
    if mask is None:
        return values.mean()
    return (values * mask).sum() / mask.sum().clamp(min=1)


def _gram_mse(g_s: Tensor, g_t: Tensor, row_mask: Tensor | None) -> Tensor:
    """Mean over (kept) rows of the row sums of ``(g_t - g_s)^2``."""
    return _masked_mean((g_t - g_s).square().sum(dim=1), row_mask)


def class_alignment(
    student_logits: Tensor,
    teacher_logits: Tensor,
    temperature: float,
    row_mask: Tensor | None = None,
) -> Tensor:
    """``||P_Tᵀ P_T - P_Sᵀ P_S||_F^2 / C``; with ``row_mask`` (C,), the mean over kept rows."""
    t = positive_param("temperature", temperature)
    p_s = F.softmax(student_logits / t, dim=1)
    p_t = F.softmax(teacher_logits / t, dim=1)
    return _gram_mse(p_s.t() @ p_s, p_t.t() @ p_t, row_mask)


def batch_alignment(
    student_logits: Tensor,
    teacher_logits: Tensor,
    temperature: float,
    row_mask: Tensor | None = None,
) -> Tensor:
    """``||P_T P_Tᵀ - P_S P_Sᵀ||_F^2 / B``; with ``row_mask`` (B,), the mean over kept rows."""
    t = positive_param("temperature", temperature)
    p_s = F.softmax(student_logits / t, dim=1)
    p_t = F.softmax(teacher_logits / t, dim=1)
    return _gram_mse(p_s @ p_s.t(), p_t @ p_t.t(), row_mask)


@register_loss(
    "mlkd",
    bench=True,
    inputs=("dense", "tokens", "two_views"),
    summary="multi-level KD (Jin et al., CVPR 2023)",
)
class MLKDLoss(DistillationLoss):
    """MLKD. Terms: ``ce``, ``instance``, ``class``, ``batch`` (+ ``ce_strong``, ``instance_strong``
    with two views).

    Args:
        temperatures: the temperature set; every term is summed over it.
        ce_weight: weight of the cross-entropy on the raw student logits.
        instance_weight, class_weight, batch_weight: weights of the three levels.
        mask_mode: ``"scale"`` (released code: masks rescale by the kept fraction),
            ``"select"`` (average over kept samples/rows) or ``"none"``.
        standardize: z-score logits for the instance term (as MLKD+LS does).
        two_views: take the strong view too (the published two-view recipe).
        ce_on_both_views: with two views, add the strong view's CE (the release does).
        released_strong_temperatures: with two views, take the temperatures after the third
            on the weak view's logits in the strong-view instance term, as the release does.
        validate: check inputs on every call.

    Stats: ``sample_keep`` and ``class_keep``, the fractions the masks keep.
    """

    def __init__(
        self,
        temperatures: Sequence[float] = (4.0, 3.0, 5.0, 2.0, 6.0),
        ce_weight: float = 0.1,
        instance_weight: float = 0.9,
        class_weight: float = 0.9,
        batch_weight: float = 0.9,
        mask_mode: str = "scale",
        standardize: bool = False,
        two_views: bool = False,
        ce_on_both_views: bool = True,
        released_strong_temperatures: bool = True,
        validate: bool = True,
    ) -> None:
        super().__init__(validate=validate)
        if isinstance(temperatures, (int, float)):
            temperatures = (temperatures,)
        temps = tuple(positive_param("temperatures entry", t) for t in temperatures)
        if not temps:
            raise ValueError("temperatures must contain at least one temperature")
        self.temperatures = temps
        self.ce_weight = non_negative_param("ce_weight", ce_weight)
        self.instance_weight = non_negative_param("instance_weight", instance_weight)
        self.class_weight = non_negative_param("class_weight", class_weight)
        self.batch_weight = non_negative_param("batch_weight", batch_weight)
        if mask_mode not in MASK_MODES:
            raise ValueError(
                f"unknown mask_mode '{mask_mode}'.{suggest(str(mask_mode), MASK_MODES)}"
            )
        self.mask_mode = mask_mode
        self.standardize = check_bool("standardize", standardize)
        self.two_views = check_bool("two_views", two_views)
        self.ce_on_both_views = check_bool("ce_on_both_views", ce_on_both_views) and self.two_views
        self.released_strong_temperatures = check_bool(
            "released_strong_temperatures", released_strong_temperatures
        )

    def compute(
        self,
        student_logits: Tensor,
        teacher_logits: Tensor | None,
        targets: Tensor | None,
        epoch: Epoch,
    ) -> LossOutput:
        assert teacher_logits is not None and targets is not None
        s, t = student_logits, teacher_logits
        ce = F.cross_entropy(s, targets)
        sample_mask, class_mask = mlkd_confidence_masks(t)
        s_keep = sample_mask.float().mean()
        c_keep = class_mask.float().mean()
        select = self.mask_mode == "select"
        s_rows = sample_mask.float() if select else None
        c_rows = class_mask.float() if select else None

        s_inst, t_inst = (
            (standardize_logits(s), standardize_logits(t)) if self.standardize else (s, t)
        )
        instance = class_ = batch = s.new_zeros(())
        for temp in self.temperatures:
            kl = kl_per_sample(s_inst, t_inst, temp) * (temp * temp)
            instance = instance + _masked_mean(kl, s_rows)
            class_ = class_ + class_alignment(s, t, temp, c_rows)
            batch = batch + batch_alignment(s, t, temp, s_rows)
        if self.mask_mode == "scale":
            instance, class_, batch = instance * s_keep, class_ * c_keep, batch * s_keep

        return self.output(
            {
                "ce": self.ce_weight * ce,
                "instance": self.instance_weight * instance,
                "class": self.class_weight * class_,
                "batch": self.batch_weight * batch,
            },
            {"sample_keep": s_keep, "class_keep": c_keep},
        )

    def compute_two_views(
        self,
        student_logits: Tensor,
        teacher_logits: Tensor | None,
        targets: Tensor | None,
        epoch: Epoch,
        strong_student_logits: Tensor,
        strong_teacher_logits: Tensor,
    ) -> LossOutput:
        assert teacher_logits is not None and targets is not None
        out = self.compute(student_logits, teacher_logits, targets, epoch)
        terms = dict(out.terms)
        if self.ce_on_both_views:
            terms["ce_strong"] = self.ce_weight * F.cross_entropy(strong_student_logits, targets)
        views = [(strong_student_logits, strong_teacher_logits)] * len(self.temperatures)
        if self.released_strong_temperatures:
            views[3:] = [(student_logits, teacher_logits)] * len(views[3:])
        instance = student_logits.new_zeros(())
        for temp, (s, t) in zip(self.temperatures, views):
            if self.standardize:
                s, t = standardize_logits(s), standardize_logits(t)
            instance = instance + kl_per_sample(s, t, temp).mean() * (temp * temp)
        terms["instance_strong"] = self.instance_weight * instance
        return self.output(terms, out.stat_tensors)

    def extra_repr(self) -> str:
        return (
            f"temperatures={self.temperatures}, ce_weight={self.ce_weight}, "
            f"instance_weight={self.instance_weight}, class_weight={self.class_weight}, "
            f"batch_weight={self.batch_weight}, mask_mode='{self.mask_mode}', "
            f"standardize={self.standardize}, two_views={self.two_views}"
        )
