"""LUD's options in five small frozen groups, each checked when built (``ValueError`` naming the
option), and the presets' values.

:class:`~lud.losses.lud.LUDLoss` takes every option as a flat keyword argument (configs, the CLI
and ``build_loss("lud", cdl_weight=2)`` name them so) and holds them in these groups; the field
names are the keyword names. A group's defaults are the loss's defaults (under the ``"default"``
preset for the preset-dependent fields).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .. import ranking
from ..params import check_bool, check_choice, check_number
from ..token_divergence import token_divergence
from .confidence import (
    CONFIDENCE_MEASURES,
    DIRECTIONS,
    MASK_TYPES,
    THRESHOLDS,
    ConfidenceMeasure,
    MaskDirection,
    MaskType,
    Threshold,
)
from .temperature import TEMP_MAPS, TEMP_MODES, TempMap, TempMode
from .terms import (
    RANK_METHODS,
    RANK_SCALES,
    REDUCTIONS,
    TEACHER_RANKS,
    RankMethod,
    RankScale,
    Reduction,
    TeacherRank,
)

__all__ = [
    "LM_PRESET",
    "PRESETS",
    "LabelSpaceOptions",
    "MaskOptions",
    "RankOptions",
    "TemperatureOptions",
    "WeightOptions",
]

#: Values of the preset-dependent parameters (every other parameter has one default).
#: ``"paper"`` is LUD as first implemented here (the paper's four parts plus the instance KL term,
#: all weights 1); ``"default"`` is what ``build_loss("lud")`` gives. Explicit arguments win.
PRESETS: dict[str, dict[str, float | str]] = {
    "paper": {"ce_weight": 1.0, "instance_weight": 1.0, "cdl_weight": 1.0, "sdl_weight": 1.0,
              "inter_weight": 0.0, "intra_weight": 0.0, "rank_grad_scale": "none",
              "rank_warmup": 0.0, "relation_class_scale": False},
    # chosen on validation (docs/lud_design.md, docs/lud_diagnosis.md): first-order rank terms at
    # 3.2·C/10 (32 at 100 classes, DIST's 2τ² at τ = 4), every rank term warmed up over 2 epochs
    "default": {"ce_weight": 1.0, "instance_weight": 1.0, "cdl_weight": 1.0, "sdl_weight": 1.0,
                "inter_weight": 3.2, "intra_weight": 3.2, "rank_grad_scale": "none",
                "rank_warmup": 2.0, "relation_class_scale": True},
}

#: ``lud-lm``: first settings for next-token distillation, argued from the image study and a
#: byte-level check (docs/lud_design.md, "LUD for tokens"); the language-model benchmark settles
#: them. The language-model convention T = 1 with 0.5·CE; the instance term forward KL weighted by
#: the teacher's confidence (masks and uncertainty weights kept); no first-order rank terms and no
#: C/10 scaling (the largest cost measured at 256 classes, ~15,000× at 151,936); small Gram terms
#: restricted to the teacher's top-32 classes and 512 sampled rows; no epoch warm-up (language-model
#: runs are often shorter than one epoch).
LM_PRESET: dict[str, object] = {
    "ce_weight": 0.5, "instance_weight": 0.5, "cdl_weight": 0.1, "sdl_weight": 0.1,
    "inter_weight": 0.0, "intra_weight": 0.0, "relation_class_scale": False, "rank_warmup": 0.0,
    "temperature": 1.0, "dynamic_temperature": "off", "instance_divergence": "fkl",
    "category_top_k": 32, "sample_max_rows": 512,
}


def _set(obj: object, name: str, value: object) -> None:
    object.__setattr__(obj, name, value)  # a checked value into a frozen dataclass


@dataclass(frozen=True)
class WeightOptions:
    """How much each term counts: ``L = ce·CE + instance·L_inst + r·(cdl·L_CDL + sdl·L_SDL)
    + r·s·(inter·L_inter + intra·L_intra)``. A weight of 0 removes its term; not all may be 0.

    Attributes:
        ce_weight: cross-entropy on the (raw) student logits.
        instance_weight: λ_KD of the instance term ``T_b²·KL``.
        cdl_weight: λ_CDL of the category (C×C Gram) Spearman loss.
        sdl_weight: λ_SDL of the sample (B×B Gram) Spearman loss.
        inter_weight: the first-order inter-class rank term (rows of ``P``).
        intra_weight: the first-order intra-class rank term (columns of ``P``).
        relation_class_scale: ``s = C / 10`` on the inter/intra weights (their gradient shrinks
            like ``1/C``), so one weight suits 10 and 100 classes; with ``category_top_k``, C is
            the restricted class count (|K|, +1 with the folded tail). Else ``s = 1``.
        rank_warmup: epochs of the linear warm-up ``r`` of every rank term (CDL, SDL, inter,
            intra); 0 = none.
        instance_divergence: the per-sample divergence of the instance term, a name of
            :func:`lud.losses.token_divergence` (``fkl``, ``rkl``, ``gjsd``, ``skl``, ``srkl``,
            ``tvd``); the term is ``T_b²·D_b`` weighted as before. ``"fkl"`` is the KL above.
        instance_divergence_params: that divergence's parameters (e.g. ``{"beta": 0.5}`` for
            ``gjsd``, ``{"alpha": 0.1}`` for ``skl``); ``None``: its defaults.
    """

    ce_weight: float = 1.0
    instance_weight: float = 1.0
    cdl_weight: float = 1.0
    sdl_weight: float = 1.0
    inter_weight: float = 3.2
    intra_weight: float = 3.2
    relation_class_scale: bool = True
    rank_warmup: float = 2.0
    instance_divergence: str = "fkl"
    instance_divergence_params: dict | None = None

    def __post_init__(self) -> None:
        check_bool("relation_class_scale", self.relation_class_scale)
        params = self.instance_divergence_params
        if params is not None and not isinstance(params, dict):
            raise ValueError(f"instance_divergence_params must be a dict or None, got {params!r}")
        if not isinstance(self.instance_divergence, str):
            raise ValueError(
                f"instance_divergence must be a divergence name, got {self.instance_divergence!r}")
        token_divergence(self.instance_divergence, **(params or {}))  # names and values checked
        for name in ("ce_weight", "instance_weight", "cdl_weight", "sdl_weight", "inter_weight",
                     "intra_weight"):
            _set(self, name, check_number(name, getattr(self, name), low=0.0))
        if not (self.ce_weight or self.instance_weight or self.cdl_weight or self.sdl_weight
                or self.inter_weight or self.intra_weight):
            raise ValueError("ce_weight, instance_weight, cdl_weight, sdl_weight, inter_weight and "
                             "intra_weight are all 0: nothing to compute")
        _set(self, "rank_warmup", check_number("rank_warmup", self.rank_warmup, low=0.0))

    @property
    def ranked(self) -> bool:
        """Some rank term (CDL, SDL, inter, intra) is on."""
        return bool(self.cdl_weight > 0 or self.sdl_weight > 0 or self.inter_weight
                    or self.intra_weight)


@dataclass(frozen=True)
class TemperatureOptions:
    """The temperature the terms see (:mod:`lud.losses.lud.temperature`).

    Attributes:
        temperature: base T: for the confidences always, and for every term when the dynamic T is
            off.
        dynamic_temperature: ``"off" | "sample" | "class" | "full"``: a detached T per sample
            (B, 1), per class (1, C) or per entry (B, C) from the student–teacher Spearman ρ.
        t_min, t_max: its range, ``0 < t_min <= t_max``.
        temperature_map: ρ → T: ``"paper" | "paper_normalized" | "released" | "minmax" |
            "rank" | "rank_inverse"`` (:func:`~lud.losses.lud.temperature.map_temperature`).
        standardize: z-score both sides' logits before any temperature (CE stays on raw logits).
    """

    temperature: float = 4.0
    dynamic_temperature: TempMode = "sample"
    t_min: float = 2.0
    t_max: float = 6.0
    temperature_map: TempMap = "paper_normalized"
    standardize: bool = False

    def __post_init__(self) -> None:
        _set(self, "temperature",
             check_number("temperature", self.temperature, low=0.0, low_open=True))
        _set(self, "t_min", check_number("t_min", self.t_min, low=0.0, low_open=True))
        _set(self, "t_max", check_number("t_max", self.t_max, low=0.0, low_open=True))
        if self.t_min > self.t_max:
            raise ValueError(f"t_min must not exceed t_max, got t_min={self.t_min} > "
                             f"t_max={self.t_max}")
        check_choice("dynamic_temperature", self.dynamic_temperature, TEMP_MODES)
        check_choice("temperature_map", self.temperature_map, TEMP_MAPS)
        check_bool("standardize", self.standardize)


@dataclass(frozen=True)
class MaskOptions:
    """Which rows a term averages over and how much each weighs (:mod:`lud.losses.lud.confidence`).

    Attributes:
        mask_direction: ``"confident"`` (keep conf > thr) or ``"uncertain"`` (keep conf ≤ thr).
        threshold: ``"batch"`` (the batch quantile; a batch of one keeps its sample),
            ``"running"`` (an EMA of it in buffers, in ``state_dict``, updated by every
            training-mode call and used including the current batch; before any, the batch
            quantile) or ``"fixed"`` (``fixed_threshold`` for samples, the batch quantile for
            classes).
        quantile: the batch quantile used as threshold (0.5 = median).
        threshold_momentum: EMA momentum of the running threshold, in [0, 1).
        fixed_threshold: sample threshold for ``threshold="fixed"``.
        mask_type: ``"hard"`` (a step) or ``"soft"`` (a sigmoid).
        mask_softness: width of the soft mask, times the mean confidence.
        sample_mask: mask the SDL rows. class_mask: mask the CDL rows.
        instance_mask: also gate the instance term with the sample mask.
        relation_mask: also gate the inter/intra rows with the sample/class masks.
        uncertainty_weighting: weigh rows by ``u = conf / mean(conf)`` (instance, SDL, inter) and
            ``v = cconf / mean(cconf)`` (CDL, intra); else 1.
        confidence_measure: what a sample's confidence ``conf`` is (masks, thresholds, ``u``):
            ``"max_prob"`` the teacher's top-1 probability (the paper's), ``"margin"`` top-1 minus
            top-2, ``"entropy"`` ``1 − H/log C`` (:func:`~lud.losses.lud.teacher_confidence`).
            Class confidences are always mean probabilities.
        weight_direction: ``"confident"`` ``u = conf / mean(conf)`` (the paper's) or
            ``"uncertain"`` ``u = (1 − conf) / mean(1 − conf)``
            (:func:`~lud.losses.lud.sample_weights`); class weights ``v`` are unchanged.
    """

    mask_direction: MaskDirection = "confident"
    threshold: Threshold = "batch"
    quantile: float = 0.5
    threshold_momentum: float = 0.9
    fixed_threshold: float = 0.5
    mask_type: MaskType = "hard"
    mask_softness: float = 0.1
    sample_mask: bool = True
    class_mask: bool = True
    instance_mask: bool = False
    relation_mask: bool = False
    uncertainty_weighting: bool = True
    confidence_measure: ConfidenceMeasure = "max_prob"
    weight_direction: MaskDirection = "confident"

    def __post_init__(self) -> None:
        check_choice("weight_direction", self.weight_direction, DIRECTIONS)
        check_choice("mask_direction", self.mask_direction, DIRECTIONS)
        check_choice("confidence_measure", self.confidence_measure, CONFIDENCE_MEASURES)
        check_choice("threshold", self.threshold, THRESHOLDS)
        check_choice("mask_type", self.mask_type, MASK_TYPES)
        _set(self, "quantile", check_number("quantile", self.quantile, low=0.0, high=1.0))
        _set(self, "threshold_momentum",
             check_number("threshold_momentum", self.threshold_momentum, low=0.0, high=1.0,
                          high_open=True))
        _set(self, "fixed_threshold",
             check_number("fixed_threshold", self.fixed_threshold, low=0.0, high=1.0))
        _set(self, "mask_softness",
             check_number("mask_softness", self.mask_softness, low=0.0, low_open=True))
        for name in ("sample_mask", "class_mask", "instance_mask", "uncertainty_weighting",
                     "relation_mask"):
            check_bool(name, getattr(self, name))


@dataclass(frozen=True)
class RankOptions:
    """How the rank terms compute ``ρ`` (:mod:`lud.losses.lud.terms`).

    Attributes:
        gram_reduction: ``"row"`` (mean over Gram rows) or ``"flat"`` (one correlation over the
            upper triangle; one device sync per call).
        rank_method: ``"soft"`` (differentiable Spearman) or ``"pearson"`` (raw values).
        rank_strength: soft-rank regularisation, on z-scored rows.
        rank_backend: see :mod:`lud.losses.ranking`; ``"hard"`` gives values without gradient.
        teacher_rank: ``"hard"`` (cheaper) or ``"soft"`` (exact minimum at student == teacher).
        rank_scale: ``"linear"`` ranks the Gram entries / probabilities themselves, ``"log"``
            their logarithms (the same hard ρ, a better-conditioned soft surrogate).
        rank_grad_scale: ``"matched"`` multiplies each row's ``1 − ρ`` by
            :func:`~lud.losses.lud.terms.matched_scale` (bounded gradient while the student is
            flat; needs ``gram_reduction="row"``), or ``"none"``.
    """

    gram_reduction: Reduction = "row"
    rank_method: RankMethod = "soft"
    rank_strength: float = 0.1
    rank_backend: str = "auto"
    teacher_rank: TeacherRank = "hard"
    rank_scale: RankScale = "linear"
    rank_grad_scale: Literal["none", "matched"] = "none"

    def __post_init__(self) -> None:
        check_choice("gram_reduction", self.gram_reduction, REDUCTIONS)
        check_choice("rank_method", self.rank_method, RANK_METHODS)
        check_choice("rank_backend", self.rank_backend, ranking.BACKENDS)
        if self.rank_backend == "torchsort" and "torchsort" not in ranking.available_backends():
            raise ValueError("rank_backend='torchsort' but torchsort is not importable; install it "
                             "(see lud.losses.ranking) or use rank_backend='auto'")
        check_choice("teacher_rank", self.teacher_rank, TEACHER_RANKS)
        check_choice("rank_scale", self.rank_scale, RANK_SCALES)
        check_choice("rank_grad_scale", self.rank_grad_scale, ("none", "matched"))
        if self.rank_grad_scale == "matched" and self.gram_reduction != "row":
            raise ValueError("rank_grad_scale='matched' scales rows: it needs gram_reduction='row'")
        _set(self, "rank_strength",
             check_number("rank_strength", self.rank_strength, low=0.0, low_open=True))

    def kwargs(self) -> dict[str, object]:
        """Keyword arguments of :func:`~lud.losses.lud.terms.relation_rank_loss`."""
        return {"method": self.rank_method, "strength": self.rank_strength,
                "backend": self.rank_backend, "teacher_rank": self.teacher_rank}


@dataclass(frozen=True)
class LabelSpaceOptions:
    """Restriction to large label spaces (:mod:`lud.losses.lud.label_space`). Both restrictions
    default to ``None``: every class and row.

    Attributes:
        category_top_k: compute the category-level parts (CDL, the intra term, class confidences,
            class mask and weights ``v``, the inter term's ranks over classes) on the union over
            rows of the teacher's top-k classes instead of all C classes. One device sync a call.
        max_categories: cap on that union (>= ``category_top_k``); beyond it the classes with the
            largest total teacher probability stay.
        category_tail: ``"fold"`` adds one column holding the probability of every class left out
            (``1 − Σ kept``); ``"drop"`` leaves it out.
        sample_max_rows: compute SDL (the N×N Gram term, and only it) on a seeded random subset of
            this many rows (>= 2) when N is larger.
        sample_seed: seed of that subset; combined with a call counter (buffer ``sample_calls``,
            in ``state_dict``, advanced once per training-mode call) so every step draws anew and
            a resumed run draws what the uninterrupted one would have.
    """

    category_top_k: int | None = None
    max_categories: int = 1024
    category_tail: Literal["fold", "drop"] = "fold"
    sample_max_rows: int | None = None
    sample_seed: int = 0

    def __post_init__(self) -> None:
        top_k = _optional_int("category_top_k", self.category_top_k, low=1)
        cap = _optional_int("max_categories", self.max_categories, low=1)
        if cap is None:
            raise ValueError("max_categories must be an int, got None")
        if top_k is not None and cap < top_k:
            raise ValueError(f"max_categories ({self.max_categories}) must be >= category_top_k "
                             f"({self.category_top_k}): the cap would cut every row's own top-k")
        check_choice("category_tail", self.category_tail, ("fold", "drop"))
        # a 1-row subsample has a 1x1 Gram matrix: no ranking left to compare
        max_rows = _optional_int("sample_max_rows", self.sample_max_rows, low=2)
        seed = _optional_int("sample_seed", self.sample_seed, low=0)
        if seed is None:
            raise ValueError("sample_seed must be an int, got None")
        _set(self, "category_top_k", top_k)
        _set(self, "max_categories", cap)
        _set(self, "sample_max_rows", max_rows)
        _set(self, "sample_seed", seed)

    @property
    def restricted(self) -> bool:
        """Either restriction is set; the loss then also spares N×C copies (see ``compute``)."""
        return self.category_top_k is not None or self.sample_max_rows is not None


def _optional_int(name: str, value: object, low: int) -> int | None:
    """``None`` or an int ``>= low``; ``ValueError`` naming ``name`` otherwise."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an int or None, got {value!r}")
    return int(check_number(name, value, low=low))
