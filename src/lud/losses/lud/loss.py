"""The LUD loss module: options in, :class:`~lud.losses.base.LossOutput` out.

``compute`` runs five named steps: prepare the logits, the confidence gates (masks and weights),
the temperature, the instance term, the rank terms. The pure functions they call live beside this
file (``confidence``, ``temperature``, ``terms``, ``label_space``); the options in ``options``.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any, Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..base import DistillationLoss, Epoch, LossOutput, linear_warmup
from ..params import check_choice
from ..registry import register_loss, register_preset
from ..standardize import standardize_logits
from ..token_divergence import token_divergence
from .confidence import (
    ConfidenceMeasure,
    MaskDirection,
    MaskType,
    Threshold,
    batch_quantile,
    class_confidence,
    confidence_mask,
    confidence_of,
    confidence_weights,
    sample_weights,
    teacher_confidence,
)
from .label_space import category_subset, restrict_columns, sample_rows
from .options import (
    LM_PRESET,
    PRESETS,
    LabelSpaceOptions,
    MaskOptions,
    RankOptions,
    TemperatureOptions,
    WeightOptions,
)
from .temperature import TempMap, TempMode, dynamic_temperature
from .terms import (
    RankMethod,
    RankScale,
    Reduction,
    TeacherRank,
    gram_correlation_loss,
    instance_kl,
    instance_kl_from_log_probs,
    matched_scale,
    rank_scale_fn,
    relation_rank_loss,
    tempered_log_probs,
    tempered_probs,
    weighted_mean,
)

__all__ = ["LUDLoss"]

#: the option groups an :class:`LUDLoss` holds, by attribute name
OPTION_GROUPS: dict[str, type] = {
    "weight_options": WeightOptions,
    "temperature_options": TemperatureOptions,
    "mask_options": MaskOptions,
    "rank_options": RankOptions,
    "label_space_options": LabelSpaceOptions,
}


class _Gates(NamedTuple):
    """The detached per-row quantities of one call (from this rank's batch, or the global batch
    when ``gather`` is on)."""

    conf: Tensor  # (N,) sample confidences
    cconf: Tensor  # (C,) class confidences (C restricted under category_top_k)
    cols: Tensor | None  # restricted class indices, or None for every class
    threshold: Tensor  # sample threshold
    smask: Tensor  # (N,) sample mask
    cmask: Tensor  # (C,) class mask
    u: Tensor  # (N,) sample weights
    v: Tensor  # (C,) class weights

    def samples(self, masked: bool) -> Tensor:
        """Row weights of a per-sample term: ``u``, times the sample mask if ``masked``."""
        return self.u * (self.smask if masked else torch.ones_like(self.conf))

    def classes(self, masked: bool) -> Tensor:
        """Row weights of a per-class term: ``v``, times the class mask if ``masked``."""
        return self.v * (self.cmask if masked else torch.ones_like(self.cconf))


class _RankInputs(NamedTuple):
    """Probabilities the rank terms see. ``cs``/``ct``: (N, C') columns for CDL and the
    first-order terms; ``ps``/``pt``: the full softmaxes (unrestricted) or ``None``;
    ``log_p``: the instance term's log-softmaxes (restricted) or ``None``."""

    cs: Tensor
    ct: Tensor
    ps: Tensor | None
    pt: Tensor | None
    log_p: tuple[Tensor, Tensor] | None


@register_loss("lud", family="lud", bench=True, summary="LUD, this project's tuned defaults")
class LUDLoss(DistillationLoss):
    """Logits Uncertainty Distillation (Guo et al., Scientific Reports 14, 2024).

    ``L = ce_weight·CE + instance_weight·T_b²·KL + r·(cdl_weight·L_CDL + sdl_weight·L_SDL)
    + r·s·(inter_weight·L_inter + intra_weight·L_intra)`` (see :class:`WeightOptions`). Terms:
    ``ce``, ``instance``, ``cdl``, ``sdl``, ``inter``, ``intra`` (those with weight > 0); stats:
    each rank term's mean ``ρ`` (``rho_cdl``...), kept fractions, temperature range, sample
    threshold, mean confidence. Why each choice: ``docs/lud_design.md``.

    Every option is a keyword argument and is held in one of five frozen groups
    (:data:`OPTION_GROUPS`: ``weight_options``, ``temperature_options``, ``mask_options``,
    ``rank_options``, ``label_space_options``); ``loss.<option>`` reads it from its group.

    Args:
        preset: ``"default"`` or ``"paper"``: the values of the options left at ``None``
            (:data:`PRESETS`); explicit arguments win. ``build_loss("lud-paper")`` is
            ``preset="paper"``.
        validate: input checks, passed to :class:`DistillationLoss`.
        gather: under data-parallel training, compute every term on the global batch (all ranks'
            logits); the identity in a single process.

    Every other keyword is an option, documented in its group:

    * :class:`WeightOptions`: ``ce_weight``, ``instance_weight``, ``cdl_weight``, ``sdl_weight``,
      ``inter_weight``, ``intra_weight``, ``relation_class_scale``, ``rank_warmup``,
      ``instance_divergence``, ``instance_divergence_params``;
    * :class:`TemperatureOptions`: ``temperature``, ``dynamic_temperature``, ``t_min``,
      ``t_max``, ``temperature_map``, ``standardize``;
    * :class:`MaskOptions`: ``mask_direction``, ``threshold``, ``quantile``,
      ``threshold_momentum``, ``fixed_threshold``, ``mask_type``, ``mask_softness``,
      ``sample_mask``, ``class_mask``, ``instance_mask``, ``relation_mask``,
      ``uncertainty_weighting``, ``confidence_measure``, ``weight_direction``;
    * :class:`RankOptions`: ``gram_reduction``, ``rank_method``, ``rank_strength``,
      ``rank_backend``, ``teacher_rank``, ``rank_scale``, ``rank_grad_scale``;
    * :class:`LabelSpaceOptions`: ``category_top_k``, ``max_categories``, ``category_tail``,
      ``sample_max_rows``, ``sample_seed``.

    With ``category_top_k`` or ``sample_max_rows`` set, the values equal the unrestricted
    computation's only up to rounding (fewer N×C copies: rows are not centred under a per-row
    temperature, probabilities are exponentials of the instance term's log-softmax).
    """

    def __init__(
        self,
        *,
        preset: Literal["default", "paper"] = "default",
        ce_weight: float | None = None,
        instance_weight: float | None = None,
        cdl_weight: float | None = None,
        sdl_weight: float | None = None,
        inter_weight: float | None = None,
        intra_weight: float | None = None,
        relation_mask: bool = False,
        relation_class_scale: bool | None = None,
        rank_scale: RankScale = "linear",
        rank_grad_scale: Literal["none", "matched"] | None = None,
        rank_warmup: float | None = None,
        instance_divergence: str = "fkl",
        instance_divergence_params: dict | None = None,
        temperature: float = 4.0,
        dynamic_temperature: TempMode = "sample",
        t_min: float = 2.0,
        t_max: float = 6.0,
        temperature_map: TempMap = "paper_normalized",
        mask_direction: MaskDirection = "confident",
        threshold: Threshold = "batch",
        quantile: float = 0.5,
        threshold_momentum: float = 0.9,
        fixed_threshold: float = 0.5,
        mask_type: MaskType = "hard",
        mask_softness: float = 0.1,
        sample_mask: bool = True,
        class_mask: bool = True,
        instance_mask: bool = False,
        uncertainty_weighting: bool = True,
        confidence_measure: ConfidenceMeasure = "max_prob",
        weight_direction: MaskDirection = "confident",
        gram_reduction: Reduction = "row",
        rank_method: RankMethod = "soft",
        rank_strength: float = 0.1,
        rank_backend: str = "auto",
        teacher_rank: TeacherRank = "hard",
        standardize: bool = False,
        category_top_k: int | None = None,
        max_categories: int = 1024,
        category_tail: Literal["fold", "drop"] = "fold",
        sample_max_rows: int | None = None,
        sample_seed: int = 0,
        validate: bool = True,
        gather: bool = False,
    ) -> None:
        options = dict(locals())  # every option by name, before any other local exists
        super().__init__(validate=validate, gather=gather)
        check_choice("preset", preset, tuple(PRESETS))
        self.preset = preset
        for name, value in PRESETS[preset].items():  # the preset fills what was left at None
            if options[name] is None:
                options[name] = value
        for attr, group in OPTION_GROUPS.items():
            setattr(self, attr, group(**{f.name: options[f.name] for f in fields(group)}))
        self.requires_targets = self.weight_options.ce_weight > 0  # read by forward()
        if self.label_space_options.sample_max_rows is not None:
            # only then: state_dicts of the default loss keep their keys (old checkpoints load)
            self._sample_calls = 0  # host mirror of the buffer: reading it needs no device sync
            self.register_buffer("sample_calls", torch.zeros((), dtype=torch.int64))
            self.register_load_state_dict_post_hook(_reload_sample_calls)
        wo = self.weight_options
        # None: the shared-log-softmax KL (the default path); else the token divergence, built once
        self._instance_divergence = (
            None if wo.instance_divergence == "fkl" and wo.instance_divergence_params is None
            else token_divergence(wo.instance_divergence, **(wo.instance_divergence_params or {})))
        self.register_buffer("running_sample_threshold", torch.zeros(()))
        self.register_buffer("running_class_threshold", torch.zeros(()))
        self.register_buffer("running_threshold_initialized", torch.zeros((), dtype=torch.bool))

    # -- compute, step by step ------------------------------------------------------------------
    def compute(
        self,
        student_logits: Tensor,
        teacher_logits: Tensor | None,
        targets: Tensor | None,
        epoch: Epoch,
    ) -> LossOutput:
        assert teacher_logits is not None  # guaranteed by forward()
        wo = self.weight_options
        zs, zt = self._prepare_logits(student_logits, teacher_logits.detach())
        gates = self._gates(zt)
        temp = self._temperature(zs, zt)
        terms: dict[str, Tensor] = {}
        stats: dict[str, Tensor] = {}
        if wo.ce_weight > 0:
            assert targets is not None
            terms["ce"] = wo.ce_weight * F.cross_entropy(student_logits, targets)  # raw logits
        # restricted: one log-softmax per side serves the instance term and the rank terms
        log_p = (tempered_log_probs(zs, zt, temp)
                 if self._lean and (wo.ranked or wo.instance_weight > 0) else None)
        if wo.instance_weight > 0:
            terms["instance"] = wo.instance_weight * self._instance_term(zs, zt, temp, gates, log_p)
        rows = self._sample_rows(zs.shape[0], zs.device)  # advances the counter on every call
        if wo.ranked:
            inputs = self._rank_inputs(zs, zt, temp, gates.cols, log_p)
            self._rank_terms(inputs, gates, rows, epoch, terms, stats)
        stats.update(
            kept_samples=gates.smask.mean(),
            kept_classes=gates.cmask.mean(),
            temperature_mean=temp.mean(),
            temperature_min=temp.min(),
            temperature_max=temp.max(),
            threshold=gates.threshold,
            confidence_mean=gates.conf.mean(),
        )
        return self.output(terms, stats)

    @property
    def _lean(self) -> bool:
        """A large-label-space option is set: spare the N×C copies the unrestricted path makes."""
        return self.label_space_options.restricted

    def _prepare_logits(self, zs: Tensor, zt: Tensor) -> tuple[Tensor, Tensor]:
        """Step 1: z-score both sides (``standardize``) or centre each row."""
        if self.temperature_options.standardize:
            return standardize_logits(zs), standardize_logits(zt)
        if self._lean and self.temperature_options.dynamic_temperature in ("sample", "off"):
            return zs, zt  # a softmax with one temperature per row ignores a per-row shift
        # Logits are defined up to a per-row constant. Softmax with one temperature per row
        # ignores it, but per-class temperatures ("class", "full") and the column ranks that
        # set them do not: centring each row makes every mode shift-invariant.
        return zs - zs.mean(dim=1, keepdim=True), zt - zt.mean(dim=1, keepdim=True)

    def _gates(self, zt: Tensor) -> _Gates:
        """Step 2: confidences, thresholds, masks and uncertainty weights, all detached."""
        mo = self.mask_options
        conf, cconf, cols = self._class_statistics(zt)
        thr_s, thr_c = self._thresholds(conf, cconf)
        direction, mtype, soft = mo.mask_direction, mo.mask_type, mo.mask_softness
        if conf.shape[0] == 1 and mo.threshold == "batch":
            smask = torch.ones_like(conf)  # a one-value threshold says nothing: keep the sample
        else:
            smask = confidence_mask(conf, thr_s, direction, mtype, soft)
        cmask = confidence_mask(cconf, thr_c, direction, mtype, soft)
        if mo.uncertainty_weighting:
            u = sample_weights(conf, mo.weight_direction)
            v = confidence_weights(cconf)
        else:
            u, v = torch.ones_like(conf), torch.ones_like(cconf)
        return _Gates(conf, cconf, cols, thr_s, smask, cmask, u, v)

    def _class_statistics(self, zt: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        """(sample confidences, class confidences, restricted class indices or ``None``)."""
        t, lo = self.temperature_options.temperature, self.label_space_options
        measure = self.mask_options.confidence_measure
        if lo.category_top_k is None:
            return teacher_confidence(zt, t, measure), class_confidence(zt, t), None
        with torch.no_grad():
            p = torch.softmax(zt / t, dim=1)  # one N×C softmax for all three
            cols = category_subset(zt, p.sum(dim=0), lo.category_top_k, lo.max_categories)
            cconf = restrict_columns(p, cols, lo.category_tail == "fold").mean(dim=0)
            conf = confidence_of(p, measure, zt / t if measure == "entropy" else None)
            return conf, cconf, cols

    def _thresholds(self, conf: Tensor, cconf: Tensor) -> tuple[Tensor, Tensor]:
        """(sample threshold, class threshold), updating the running buffers in training."""
        mo = self.mask_options
        q_s = batch_quantile(conf, mo.quantile)
        q_c = batch_quantile(cconf, mo.quantile)
        if mo.threshold == "fixed":
            return torch.full_like(q_s, mo.fixed_threshold), q_c
        if mo.threshold == "batch":
            return q_s, q_c
        init = self.running_threshold_initialized
        old_s = self.running_sample_threshold.to(q_s.device)
        old_c = self.running_class_threshold.to(q_c.device)
        if self.training:
            m = mo.threshold_momentum
            new_s = torch.where(init, m * old_s + (1 - m) * q_s, q_s)
            new_c = torch.where(init, m * old_c + (1 - m) * q_c, q_c)
            with torch.no_grad():
                self.running_sample_threshold.copy_(new_s)
                self.running_class_threshold.copy_(new_c)
                self.running_threshold_initialized.fill_(True)
            return new_s, new_c
        # evaluation before any training step: fall back to the batch quantile
        return torch.where(init, old_s, q_s), torch.where(init, old_c, q_c)

    def _temperature(self, zs: Tensor, zt: Tensor) -> Tensor:
        """Step 3: the detached temperature, broadcastable to (N, C)."""
        to = self.temperature_options
        if to.dynamic_temperature == "off":
            return torch.full((1, 1), to.temperature, device=zs.device)
        return dynamic_temperature(zs, zt, to.dynamic_temperature, to.t_min, to.t_max,
                                   to.temperature_map)

    def _instance_term(self, zs: Tensor, zt: Tensor, temp: Tensor, gates: _Gates,
                       log_p: tuple[Tensor, Tensor] | None) -> Tensor:
        """Step 4: the weighted ``T_b²·KL`` (unweighted by ``instance_weight``), or ``T_b²·D``
        with another :attr:`WeightOptions.instance_divergence` ``D``."""
        w = gates.samples(self.mask_options.instance_mask)
        if self._instance_divergence is not None:
            per_sample = self._instance_divergence(zs, zt.detach(), temp)
            t_row = temp.expand_as(zs).mean(dim=1) if temp.dim() else temp
            return weighted_mean(t_row.pow(2) * per_sample, w.detach())
        if log_p is None:
            return instance_kl(zs, zt, temp, w)
        return instance_kl_from_log_probs(*log_p, temp, w)

    def _sample_rows(self, n: int, device: torch.device) -> Tensor | None:
        """Sorted indices of the SDL rows, or ``None`` for all; advances the training counter."""
        lo = self.label_space_options
        if lo.sample_max_rows is None:
            return None
        calls = self._sample_calls
        if self.training:
            self._sample_calls += 1
            self.sample_calls.fill_(self._sample_calls)
        return sample_rows(n, lo.sample_max_rows, lo.sample_seed, calls, device)

    def _rank_inputs(self, zs: Tensor, zt: Tensor, temp: Tensor, cols: Tensor | None,
                     log_p: tuple[Tensor, Tensor] | None) -> _RankInputs:
        """Step 5a: the probabilities the rank terms see. Category-level parts see the restricted
        class set, gathered from the full-vocabulary softmax (the student's gradient reaches the
        kept logits and, via the folded tail, the rest)."""
        fold = self.label_space_options.category_tail == "fold"
        if log_p is None:
            # one softmax per side for both Gram matrices (the standalone
            # category_/sample_spearman_loss functions each compute their own)
            ps, pt = tempered_probs(zs, temp), tempered_probs(zt, temp)
            if cols is None:
                return _RankInputs(ps, pt, ps, pt, None)
            return _RankInputs(restrict_columns(ps, cols, fold), restrict_columns(pt, cols, fold),
                               ps, pt, None)
        # restricted: probabilities only where the rank terms look, no further N×C tensor
        if cols is None:
            return _RankInputs(log_p[0].exp(), log_p[1].exp(), None, None, log_p)
        return _RankInputs(restrict_columns(log_p[0], cols, fold, log=True),
                           restrict_columns(log_p[1], cols, fold, log=True), None, None, log_p)

    def _sdl_inputs(self, x: _RankInputs, cols: Tensor | None,
                    rows: Tensor | None) -> tuple[Tensor, Tensor]:
        """Step 5b: the probabilities of SDL's rows (all, or the seeded subset ``rows``)."""
        if rows is not None:  # bounded N×N Gram: a seeded subset of rows
            if x.log_p is None:
                return x.ps.index_select(0, rows), x.pt.index_select(0, rows)  # type: ignore[union-attr]
            return x.log_p[0].index_select(0, rows).exp(), x.log_p[1].index_select(0, rows).exp()
        if x.log_p is None:
            return x.ps, x.pt  # type: ignore[return-value]
        if cols is None:  # cs, ct are the full probabilities already
            return x.cs, x.ct
        # all rows: the full probabilities after all, as exponentials of the log-softmaxes held
        # anyway (two fresh softmaxes here would each add an N×C temporary, z / T, at the peak)
        return x.log_p[0].exp(), x.log_p[1].exp()

    def _rank_terms(self, x: _RankInputs, gates: _Gates, rows: Tensor | None, epoch: Epoch,
                    terms: dict[str, Tensor], stats: dict[str, Tensor]) -> None:
        """Step 5c: CDL, SDL, inter, intra (those with weight > 0) into ``terms`` and ``stats``."""
        wo, mo, ro = self.weight_options, self.mask_options, self.rank_options
        rkw = ro.kwargs()
        # DKD-style linear warm-up of every rank term (epoch is fractional in the trainer)
        ramp = linear_warmup(epoch, wo.rank_warmup)
        if wo.cdl_weight > 0:
            w = gates.classes(mo.class_mask)
            loss, rho = self._rank_term(gram_correlation_loss, x.cs.t() @ x.cs, x.ct.t() @ x.ct, w,
                                        reduction=ro.gram_reduction, **rkw)
            terms["cdl"] = ramp * wo.cdl_weight * loss
            stats["rho_cdl"] = rho
        if wo.sdl_weight > 0:
            w = gates.samples(mo.sample_mask)
            qs, qt = self._sdl_inputs(x, gates.cols, rows)
            if rows is not None:
                w = w[rows]
            loss, rho = self._rank_term(gram_correlation_loss, qs @ qs.t(), qt @ qt.t(), w,
                                        reduction=ro.gram_reduction, **rkw)
            terms["sdl"] = ramp * wo.sdl_weight * loss
            stats["rho_sdl"] = rho
        # relation gradients shrink like 1/C (probabilities ~1/C): C/10 keeps them comparable
        # (restricted: the classes actually ranked, |K| (+1 folded), not the vocabulary)
        n_classes = gates.cconf.shape[0]
        rel = ramp * (n_classes / 10.0 if wo.relation_class_scale else 1.0)
        if wo.inter_weight > 0:
            w = gates.samples(mo.relation_mask)
            loss, rho = self._rank_term(relation_rank_loss, x.cs, x.ct, w, **rkw)
            terms["inter"] = rel * wo.inter_weight * loss
            stats["rho_inter"] = rho
        if wo.intra_weight > 0:
            w = gates.classes(mo.relation_mask)
            loss, rho = self._rank_term(relation_rank_loss, x.cs.t(), x.ct.t(), w, **rkw)
            terms["intra"] = rel * wo.intra_weight * loss
            stats["rho_intra"] = rho

    def _rank_term(self, fn: Any, xs: Tensor, xt: Tensor, w: Tensor,
                   **kw: Any) -> tuple[Tensor, Tensor]:
        """``fn`` (a Gram or relation term) on the rank scale, with the matched row scale."""
        ro = self.rank_options
        to_scale = rank_scale_fn(ro.rank_scale)
        xs, xt = to_scale(xs), to_scale(xt)
        scale = matched_scale(xs, xt) if ro.rank_grad_scale == "matched" else None
        return fn(xs, xt, w, row_scale=scale, **kw)


def _flat_option(group: str, name: str) -> property:
    return property(lambda self: getattr(getattr(self, group), name),
                    doc=f"The ``{name}`` option (``{group}.{name}``), read-only.")


for _group, _cls in OPTION_GROUPS.items():  # loss.temperature = loss.temperature_options.temperature
    for _field in fields(_cls):
        setattr(LUDLoss, _field.name, _flat_option(_group, _field.name))


def _reload_sample_calls(module: nn.Module, incompatible: object) -> None:
    """After ``load_state_dict``: the host copy of the SDL subsample counter follows the buffer."""
    module._sample_calls = int(module.sample_calls)  # type: ignore[union-attr]


# The paper-faithful LUD under a name of its own, so that configs, ``lud tune`` grids and
# ``lud bench`` tables hold it beside the improved default: ``build_loss("lud-paper", **p)``
# equals ``build_loss("lud", preset="paper", **p)``.
register_preset("lud-paper", LUDLoss, {"preset": "paper"}, family="lud",
                summary="LUD as the paper describes it")
register_preset("lud-lm", LUDLoss, LM_PRESET, family="token",
                summary="LUD for next-token distillation (first settings: docs/lud_design.md, "
                        "'LUD for tokens'); T = 1, 0.5·CE + 0.5·weighted fKL, restricted Gram terms")
