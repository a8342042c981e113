"""Logits Uncertainty Distillation (LUD), Guo et al., Scientific Reports 14 (2024).

``L = ce_weight·CE + instance_weight·L_inst + r·(cdl_weight·L_CDL + sdl_weight·L_SDL)
+ r·s·(inter_weight·L_inter + intra_weight·L_intra)``, with ``r`` the rank warm-up ramp and
``s = C/10`` when ``relation_class_scale`` (else 1; C = the restricted class count under
``category_top_k``).

Reading order, one concern a file:

* :mod:`~lud.losses.lud.loss` — :class:`LUDLoss`: the options, and ``compute`` in named steps;
  registers ``"lud"`` and the preset ``"lud-paper"`` (``preset="paper"``).
* :mod:`~lud.losses.lud.options` — the option groups (frozen dataclasses, checked when built) and
  :data:`PRESETS`.
* :mod:`~lud.losses.lud.confidence` — confidences, masks, uncertainty weights.
* :mod:`~lud.losses.lud.temperature` — the dynamic temperature.
* :mod:`~lud.losses.lud.terms` — the rank (Gram and first-order) terms and the instance KL.
* :mod:`~lud.losses.lud.label_space` — the restriction to large label spaces.

What the paper says, what its released code does and what this implementation does, with the
measurements behind each choice: ``docs/lud_design.md``.
"""

from __future__ import annotations

from .confidence import (
    batch_quantile,
    class_confidence,
    confidence_mask,
    confidence_of,
    confidence_weights,
    sample_weights,
    teacher_confidence,
)
from .label_space import category_subset, restrict_columns
from .loss import OPTION_GROUPS, LUDLoss
from .options import PRESETS, LabelSpaceOptions, MaskOptions, RankOptions, TemperatureOptions, WeightOptions
from .temperature import dynamic_temperature, map_temperature, temperature_correlation
from .terms import (
    category_spearman_loss,
    gram_correlation_loss,
    instance_kl,
    instance_kl_from_log_probs,
    matched_scale,
    rank_correlation,
    relation_rank_loss,
    sample_spearman_loss,
    weighted_mean,
)

__all__ = [
    "OPTION_GROUPS",
    "PRESETS",
    "LUDLoss",
    "LabelSpaceOptions",
    "MaskOptions",
    "RankOptions",
    "TemperatureOptions",
    "WeightOptions",
    "batch_quantile",
    "category_spearman_loss",
    "category_subset",
    "class_confidence",
    "confidence_of",
    "confidence_mask",
    "confidence_weights",
    "sample_weights",
    "dynamic_temperature",
    "gram_correlation_loss",
    "instance_kl",
    "instance_kl_from_log_probs",
    "map_temperature",
    "matched_scale",
    "rank_correlation",
    "relation_rank_loss",
    "restrict_columns",
    "sample_spearman_loss",
    "teacher_confidence",
    "temperature_correlation",
    "weighted_mean",
]
