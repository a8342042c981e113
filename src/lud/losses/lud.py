"""Logits Uncertainty Distillation (LUD), Guo et al., Scientific Reports 14 (2024).

``L = ce_weight·CE + instance_weight·L_inst + r·(cdl_weight·L_CDL + sdl_weight·L_SDL)
+ r·s·(inter_weight·L_inter + intra_weight·L_intra)``, with ``r`` the rank warm-up ramp and
``s = C/10`` when ``relation_class_scale`` (else 1; C = the restricted class count under
``category_top_k``, see "Large label spaces").

* **confidence** ``conf_b = max_c softmax(z_T[b] / temperature)``; **class confidence**
  ``cconf_c = mean_b softmax(z_T[b] / temperature)_c``.
* **mask**: a threshold on the confidences selects the rows that a term averages over.
* **uncertainty weights** ``u = conf / mean(conf)`` (samples) and ``v = cconf / mean(cconf)``
  (classes), mean 1, detached.
* **dynamic temperature** ``T`` from the Spearman correlation between student and teacher logits,
  in ``[t_min, t_max]``, detached; ``P = softmax(z / T)``.
* **CDL**: rows ``c`` of the C×C Gram matrices ``Pᵀ P`` — weighted mean of ``1 − ρ_c`` with row
  weights ``mask_c·v_c``. **SDL**: the same on the B×B matrices ``P Pᵀ`` with ``mask_b·u_b``.
* **inter / intra** (first-order): ``1 − ρ`` between rows of ``P_S`` and ``P_T`` (weights ``u``)
  and between their columns (weights ``v``); masked too if ``relation_mask``.
* **instance term** ``T_b²·KL(p_T ‖ p_S)`` per sample, weighted by ``u_b`` (and by the sample mask
  if ``instance_mask``).

Open points — paper says / released code (``llieeai/lud``) does / we do:

* *Discrepancy.* Paper prints ``ρ`` itself / released code uses ``1 − |cosine|`` / we minimise
  ``1 − ρ`` (∈ [0, 2]), as DIST does with Pearson.
* *Ranks.* Paper: Spearman, silent on gradients / released: no ranks / we: soft ranks
  (:func:`lud.ranking.soft_rank`) on the student side only; the teacher needs no gradient, so its
  ranks are hard (``teacher_rank="hard"``; B=64, C=1000, pairwise backend, one CPU thread: 3.3 s
  instead of 6.6 s per step). As ``rank_strength → 0`` the correlation tends to the exact
  Spearman ``ρ`` (tested against scipy). Price: soft student ranks against hard teacher ranks
  make ``student == teacher`` a near, not exact, minimum (B=64, C=100: loss 0.002 there, gradient
  ~10 % of that at a student 90 % of the way to the teacher); ``teacher_rank="soft"`` makes it
  exact. ``rank_method="pearson"`` is a rank-free surrogate.
* *Row-wise or flattened.* Paper: silent / released: row-wise cosine / we: row-wise
  (``gram_reduction="row"``); ``"flat"`` computes one correlation over the flattened Gram matrix
  restricted to the rows *and* columns with non-zero weight, element weights ``w_r·w_c``, upper
  triangle only (the matrix is symmetric; mirrored entries would be rounding-broken ties)
  (boolean selection: one device sync per call, only in this mode).
* *Mask direction.* Paper keeps ``conf > threshold`` / released keeps ``conf ≤ threshold`` / we
  default to the paper (``mask_direction="confident"``), ``"uncertain"`` reproduces the released
  rule. Ties: with the batch median and ``"confident"`` exactly the rows strictly above the median
  are kept (B/2 for even B without ties, (B−1)/2 for odd B); equal confidences keep nothing.
* *How the mask acts.* Paper: "discounts" rows / released multiplies a scalar loss by the mask and
  takes the mean (a ~½ rescale) / we select rows: kept rows are averaged, the others contribute 0;
  if nothing is kept the term is 0.
* *Threshold set.* Paper: median over "a set of data" / released: batch median / we:
  ``threshold="batch"`` (quantile ``quantile``, default 0.5); ``"running"`` keeps an EMA of the
  batch quantile in buffers (saved in ``state_dict``, updated only in training mode, and used
  including the current batch, like BatchNorm; every training-mode call is one update, so two
  views per step update twice); ``"fixed"`` uses ``fixed_threshold`` for samples
  and the batch quantile for classes (class confidences scale like 1/C, no fixed value suits all C).
  With a batch of one, ``"batch"`` keeps the sample: a threshold taken from one value carries no
  information.
* *Confidence temperature.* Released code takes confidences at T = 1 / we use ``temperature``
  (the brief's choice: the distribution the terms actually see). Class confidence: released sums
  teacher probabilities over the batch / we average them — identical for hard masks and mean-1
  weights, but it keeps class confidences comparable across batch sizes (running EMA).
* *Soft mask.* Neither has one / ``mask_type="soft"`` gives
  ``sigmoid((conf − thr) / (mask_softness · mean(conf)))`` ("uncertain": sign flipped); the
  softness is relative to the batch mean so one value suits sample (~0.1–1) and class (~1/C)
  confidences.
* *Uncertainty weighting.* Paper: "category uncertainty weighting", no formula / released: none /
  we: ``u``, ``v`` above (confident rows weigh more, as the paper's motivation says).
* *Temperature.* Paper: ``T = t_min + (t_max − t_min)(1 − exp(−ρ))`` on a B×C matrix, which spans
  only ``[t_min, t_min + 0.632·(t_max − t_min)]`` for ρ ∈ [0, 1] and falls below ``t_min`` for
  ρ < 0 / released: per sample, linear in the batch-relative cosine similarity, most similar →
  lowest T, bounds 2 and 6 / we: ``dynamic_temperature="sample"`` (B×1, row Spearman), ``"class"``
  (1×C, column Spearman), ``"full"`` (B×C, ``ρ_ij = (ρ_i + ρ_j)/2``) or ``"off"``;
  ``temperature_map="paper"`` (ρ clipped at 0 — the same as clamping its output into
  ``[t_min, t_max]``, since the map is increasing and ρ = 0 ↦ t_min), ``"paper_normalized"``
  (default: ``(1 − e^{−ρ⁺}) / (1 − e^{−1})`` so ρ ∈ [0, 1] spans exactly ``[t_min, t_max]``),
  ``"released"`` (linear in the batch-relative ρ, most similar → t_min; all equal → midpoint).
  Every map is finally clamped into ``[t_min, t_max]``. Logit rows are centred first: a logit
  row is defined up to a constant, which per-class temperatures (and the column ranks that set
  them) would otherwise see. ρ uses hard ranks and is detached: hard
  ranks have no gradient anyway, and a gradient through T would let the student lower the loss by
  steering its own temperature instead of matching the teacher (CTKD needs gradient reversal for
  exactly that reason). The released code also repeats every term at T = 4; we do not.
* *Instance term.* Paper's total has none / released has cosine terms on two views / we add an
  uncertainty-weighted ``T_b²·KL`` (``T_b`` = row mean of the temperature), on by default,
  ``instance_weight=0`` removes it.
* *Rank strength.* Not in the paper / we: ``rank_strength=0.1`` (in units of a row's std, the
  ranking module z-scores rows). Measured on CIFAR-100-like logits (B=64, C=100, teacher peaked
  on a label): at 0.1 the soft ρ is within 0.003 of the hard ρ, and ``1 − ρ`` at
  ``student == teacher`` is ≤ 0.002; optimising student logits on SDL alone (Adam, 60 steps)
  reaches hard ρ 0.98 at 0.1 against 0.955 at 0.01 and 0.82 at 0.001 (CDL: 0.90 for all) —
  sharper sigmoids give sparser gradients.
* *Weights.* Paper: no values / released: all 1 (plus ``2·T²`` on its column term) / we:
  ``ce = instance = cdl = sdl = 1``, **provisional**, to be tuned on a validation split. On the
  logits above, the gradient norm on the student logits at weight 1 is, relative to KD's
  ``T²·KL`` (T = 4): instance 1.0–2.1× (dynamic T sits near t_min early on), CDL 0.7–2.6×,
  SDL 0.7–1.6× (student logits random, half-way and 90 % of the way to the teacher's); CE's
  gradient is 3–15× KD's. DIST's ``2τ²`` factor compensates the ``1/τ²`` shrinkage of softmax
  gradients; correlations of z-scored rank rows do not shrink with T (CDL gradient 0.026 → 0.053
  for T = 1 → 8), and ``2τ² = 32`` would put each Spearman term at 20–80× KD (DIST's own terms
  sit at 11–31× KD on these logits). Larger CDL/SDL weights are the first thing to tune.
* *Presets.* ``preset="paper"`` is LUD as first implemented here (weights all 1, no first-order
  terms, no warm-up): the golden value pins it. ``preset="default"`` (what ``build_loss("lud")``
  gives) adds the first-order terms below at ``inter = intra = 3.2·C/10`` with a 2-epoch warm-up of
  every rank term — chosen on validation across 10- and 100-class tasks, MLP and CNN students
  (docs/lud_diagnosis.md). Explicit arguments override either preset.
* *First-order rank terms* (``inter_weight``, ``intra_weight``; not in the paper, whose two
  Spearman terms are on second-order Gram matrices / the released code has a first-order cosine
  term on class columns / we offer both directions of DIST's relations, as Spearman
  ``1 − ρ`` between rows of ``P`` (per sample, over classes) and columns of ``P`` (per class,
  over the batch), weighted by ``u``/``v`` and optionally masked (``relation_mask``)). Why:
  measured on cached real teacher logits, the CDL gradient is nearly orthogonal to the direction
  towards the teacher (cosine +0.19 → −0.01 as the student approaches it; C = 10), while the
  first-order terms point towards it (+0.4…+0.7); at C = 100 the Gram terms' gradients are
  ~1/40 of the instance KL's. ``relation_class_scale`` multiplies their weights by ``C/10``:
  their gradient shrinks like ``1/C`` (probabilities ~1/C); 32 at C = 100 helped a CNN student
  (validation 71.7 ± 0.6 against 68.4 ± 4.0 for the paper preset, 2 seeds; see the doc for
  more), 32 at C = 10 cost an MLP student 3 points, 3.2 at C = 10 did not.
* *Rank-term warm-up* (``rank_warmup``, epochs; DKD's idea). A correlation is scale-free, so its
  gradient grows like ``1/std`` of the student's row: a freshly initialised MLP (flat logits)
  receives huge gradients and collapses at weights ≥ 8 (DIST itself collapses the same way on
  our MLP pairs). A linear ramp over 2 epochs lets the logits spread first.
  ``rank_grad_scale="matched"`` is the per-row alternative (``1 − ρ`` times
  ``min(1, std_S/std_T)``): it prevented the collapse as well but gained less on the CNN.
* *Rank scale* (``rank_scale="log"``). Hard Spearman ρ is invariant under ``log``; soft ranks on
  z-scored rows are not: Gram rows and probabilities at low T are dominated by one entry and the
  rest sit inside one ``rank_strength`` band. Ranking logarithms turns the T = 1 rank gradients
  from pointing away from the teacher (cosine −0.25) to towards it (+0.4). Off by default (no
  accuracy gain measured at T ≈ 4–6, where the default runs).
* *Batch-spreading temperature maps* (``temperature_map="minmax" | "rank" | "rank_inverse"``).
  The paper's map saturates (ρ ≈ 0.9–0.97 ↦ T ≈ 5.8 of [2, 6]); ``"rank"`` maps the batch
  quantile of ρ uniformly onto ``[t_min, t_max]`` (more aligned → higher T, the paper's
  direction), ``"rank_inverse"`` the released code's direction, ``"minmax"`` linear in the batch
  range. Measured: spreading T changed validation accuracy by ≤ 0.2 points either way (within
  seed spread), so the default map is unchanged.
* *Distributed training.* By default every statistic is per rank: under DDP with B samples per
  process the medians, class confidences, B×B Gram rows and C×C Gram columns see B samples, as
  in a single process with batch B. ``gather=True`` all-gathers student logits (with gradient),
  teacher logits and targets first (:meth:`DistillationLoss._gather`), so every rank computes the
  loss of the global batch of W·B samples — exactly the single-process loss and, after DDP's
  gradient mean, the single-process gradient at batch W·B. Price: an all-gather of W·B×C logits
  forward and an all-reduce of their gradient backward, the (W·B)² SDL Gram matrix and its
  soft ranks (pairwise backend: O((W·B)³) time per step) on every rank, and the loss computed
  redundantly W times. Which definition is "right" is a modelling choice: the paper's median and
  Gram rows are per batch, and the batch the paper had in mind is the global one.
* *Large label spaces* (language models: C = 32k–150k classes, thousands of tokens N). Paper and
  released code: C ≤ 1000, nothing said / we: the C×C Gram matrix (64 GiB at C = 131k) and ranks
  over every class cannot be computed there, so ``category_top_k=k`` restricts the
  *category-level* parts — CDL, the intra term, class confidences, class mask, class weights
  ``v`` and the inter term's ranks over classes — to the class set K = union over the rows of the
  teacher's top-k classes, capped at ``max_categories`` (default 1024; beyond it the classes with
  the largest total teacher probability over the rows stay). Their probabilities are columns of
  the *full-vocabulary* softmax (so the student's gradient reaches every logit through the
  normaliser), and ``category_tail="fold"`` (default) adds one column with the mass of all other
  classes, ``1 − Σ_K p`` (``"drop"``: none). CE and the instance KL stay on the full vocabulary;
  so do the dynamic temperature (its hard ranks are computed a chunk of rows at a time, same
  values, bounded memory) and SDL's rows. ``relation_class_scale`` then uses |K| (+1 folded), the
  classes actually ranked, not C/10 = 12,800. Choosing K costs one device sync per call (the
  union's size sets a shape). ``sample_max_rows=m`` bounds SDL's N×N Gram matrix: when N > m, SDL
  — and only SDL — sees m rows drawn without replacement by a generator seeded from
  ``(sample_seed, calls)``, ``calls`` a counter buffer (``sample_calls``, in the ``state_dict``
  only when the option is set) advanced by every training-mode call, so draws differ per step,
  evaluation does not move them, and a resumed run draws what the uninterrupted run would have;
  ``u`` and the sample mask (computed on all N rows) are restricted to the same rows. Both
  options default to ``None``: the computation is then exactly the one above. With either set,
  the loss also spares N×V copies, the same values up to rounding: the rows are not centred when
  the temperature is per row (``"sample"``, ``"off"``: a softmax ignores a per-row shift), and
  the probabilities the rank terms need are exponentials of the instance term's log-softmax,
  gathered for the kept columns / rows, instead of two more full N×V softmaxes — LUD's peak
  memory at V = 131k is then ~KD's (docs/loss_speed.md, "Vocabulary size").
* *Device syncs.* None in the default path, by inspection (not yet checked on a GPU): quantiles by
  sort with static indices, ``where`` instead of branches on values. ``gram_reduction="flat"``,
  ``category_top_k`` (one, the class set's size) and ``validate=True`` sync.
"""

from __future__ import annotations

import inspect
import math
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import ranking
from .base import DistillationLoss, Epoch, LossOutput, linear_warmup
from .params import check_bool, check_choice, check_number
from .registry import register_loss, suggest
from .standardize import standardize_logits

__all__ = [
    "PRESETS",
    "LUDLoss",
    "batch_quantile",
    "category_spearman_loss",
    "category_subset",
    "class_confidence",
    "confidence_mask",
    "confidence_weights",
    "dynamic_temperature",
    "gram_correlation_loss",
    "instance_kl",
    "matched_scale",
    "map_temperature",
    "rank_correlation",
    "relation_rank_loss",
    "restrict_columns",
    "sample_spearman_loss",
    "teacher_confidence",
    "temperature_correlation",
    "weighted_mean",
]

MaskDirection = Literal["confident", "uncertain"]
MaskType = Literal["hard", "soft"]
TempMode = Literal["off", "sample", "class", "full"]
TempMap = Literal["paper", "paper_normalized", "released", "minmax", "rank", "rank_inverse"]
RankMethod = Literal["soft", "pearson"]
Reduction = Literal["row", "flat"]

_DIRECTIONS = ("confident", "uncertain")
_MASK_TYPES = ("hard", "soft")
_TEMP_MODES = ("off", "sample", "class", "full")
_TEMP_MAPS = ("paper", "paper_normalized", "released", "minmax", "rank", "rank_inverse")
_THRESHOLDS = ("batch", "running", "fixed")
_RANK_METHODS = ("soft", "pearson")
_TEACHER_RANKS = ("hard", "soft")
_REDUCTIONS = ("row", "flat")
_RANK_SCALES = ("linear", "log")
_BACKENDS = ranking.BACKENDS


#: Values of the preset-dependent parameters (every other parameter has one default).
#: ``"paper"`` is LUD as first implemented here (the paper's four parts plus the instance KL term,
#: all weights 1); ``"default"`` is what ``build_loss("lud")`` gives. Explicit arguments win.
PRESETS: dict[str, dict[str, float | str]] = {
    "paper": {"ce_weight": 1.0, "instance_weight": 1.0, "cdl_weight": 1.0, "sdl_weight": 1.0,
              "inter_weight": 0.0, "intra_weight": 0.0, "rank_grad_scale": "none",
              "rank_warmup": 0.0, "relation_class_scale": False},
    # chosen on validation (docs/lud_diagnosis.md): first-order rank terms at 3.2·C/10
    # (32 at 100 classes, DIST's 2τ² at τ = 4), every rank term warmed up over 2 epochs
    "default": {"ce_weight": 1.0, "instance_weight": 1.0, "cdl_weight": 1.0, "sdl_weight": 1.0,
                "inter_weight": 3.2, "intra_weight": 3.2, "rank_grad_scale": "none",
                "rank_warmup": 2.0, "relation_class_scale": True},
}


# --------------------------------------------------------------------------- confidences
def teacher_confidence(teacher_logits: Tensor, temperature: float) -> Tensor:
    """Per-sample confidence ``max_c softmax(z_T / temperature)``, shape (B,), detached."""
    return torch.softmax(teacher_logits.detach() / temperature, dim=1).amax(dim=1)


def class_confidence(teacher_logits: Tensor, temperature: float) -> Tensor:
    """Per-class confidence: batch mean of the tempered teacher probabilities, shape (C,)."""
    return torch.softmax(teacher_logits.detach() / temperature, dim=1).mean(dim=0)


def batch_quantile(values: Tensor, q: float = 0.5) -> Tensor:
    """Linear-interpolation quantile of the values (``numpy.quantile``'s default), a 0-d tensor.

    Written with a sort and static indices rather than :func:`torch.quantile`, so that it never
    reads a value back to the host (no device sync in the training step).
    """
    v = values.detach().float().reshape(-1).sort().values
    pos = q * (v.numel() - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, v.numel() - 1)
    return v[lo] + (pos - lo) * (v[hi] - v[lo])


def confidence_mask(
    conf: Tensor,
    threshold: Tensor | float,
    direction: MaskDirection = "confident",
    mask_type: MaskType = "hard",
    softness: float = 0.1,
) -> Tensor:
    """Row weights in [0, 1] from confidences and a threshold.

    ``"confident"`` keeps ``conf > threshold`` (paper), ``"uncertain"`` keeps
    ``conf <= threshold`` (released code). ``"soft"`` replaces the step by a sigmoid whose width
    is ``softness`` times the mean confidence.
    """
    conf = conf.detach()
    thr = torch.as_tensor(threshold, dtype=conf.dtype, device=conf.device)
    sign = 1.0 if direction == "confident" else -1.0
    if mask_type == "soft":
        scale = softness * conf.mean().clamp_min(torch.finfo(conf.dtype).tiny)
        return torch.sigmoid(sign * (conf - thr) / scale)
    keep = conf > thr if direction == "confident" else conf <= thr
    return keep.to(conf.dtype)


def confidence_weights(conf: Tensor) -> Tensor:
    """Uncertainty weights ``conf / mean(conf)`` (mean 1, detached; all ones if conf is all 0)."""
    conf = conf.detach()
    mean = conf.mean()
    return torch.where(mean > 0, conf / mean.clamp_min(torch.finfo(conf.dtype).tiny),
                       torch.ones_like(conf))


# --------------------------------------------------------------------------- temperature
def temperature_correlation(
    student_logits: Tensor, teacher_logits: Tensor, mode: TempMode
) -> Tensor:
    """Hard-rank Spearman ρ between student and teacher logits, shaped to broadcast over B×C.

    ``"sample"``: per row, (B, 1). ``"class"``: per column, (1, C). ``"full"``: (B, C) with
    ``ρ_ij = (ρ_i + ρ_j) / 2``. Detached. A column of a one-sample batch has no variance: ρ = 0.
    """
    if mode not in ("sample", "class", "full"):
        raise ValueError(f"temperature mode must be 'sample', 'class' or 'full', got {mode!r}")
    with torch.no_grad():
        s, t = student_logits.detach(), teacher_logits.detach()
        if mode == "sample":
            return _hard_spearman(s, t, dim=1).unsqueeze(1)
        col = _hard_spearman(s, t, dim=0).unsqueeze(0)
        if mode == "class":
            return col
        row = _hard_spearman(s, t, dim=1).unsqueeze(1)
        return 0.5 * (row + col)


# Hard ranks of a whole (N, C) matrix allocate about ten int64/float copies of it (sort values
# and permutation, tie bookkeeping): tens of GiB for 4096 tokens x 131k vocabulary. Vectors along
# `dim` are independent, so ranking them a chunk at a time gives the same values in bounded memory
# (rows bit for bit; column chunks may differ in the last bit, their reductions run on other strides).
_TEMP_CHUNK_ELEMENTS = 2**22


def _hard_spearman(s: Tensor, t: Tensor, dim: int) -> Tensor:
    """Hard-rank Spearman ρ along ``dim`` of 2-D ``s`` and ``t``, in chunks of the other dim."""
    other = 1 - dim
    step = max(1, _TEMP_CHUNK_ELEMENTS // max(1, s.shape[dim]))
    if step >= s.shape[other]:
        return ranking.spearman(s, t, dim=dim, backend="hard")
    parts = [ranking.spearman(a, b, dim=dim, backend="hard")
             for a, b in zip(s.split(step, dim=other), t.split(step, dim=other))]
    return torch.cat(parts)


def _batch_position(rho: Tensor) -> Tensor:
    """``(ρ − min) / (max − min)`` over the batch; 0.5 everywhere when all ρ are equal."""
    lo, hi = rho.min(), rho.max()
    rng = hi - lo
    return torch.where(rng > 1e-12, (rho - lo) / rng.clamp_min(1e-12), torch.full_like(rho, 0.5))


def map_temperature(rho: Tensor, t_min: float, t_max: float, temperature_map: TempMap) -> Tensor:
    """Map correlations to temperatures, always within ``[t_min, t_max]``."""
    span = t_max - t_min
    if temperature_map == "paper":
        t = t_min + span * (1.0 - torch.exp(-rho.clamp_min(0.0)))
    elif temperature_map == "paper_normalized":
        t = t_min + span * (1.0 - torch.exp(-rho.clamp_min(0.0))) / (1.0 - math.exp(-1.0))
    elif temperature_map == "released":
        # most similar → lowest T
        t = t_min + span * (1.0 - _batch_position(rho))
    elif temperature_map == "minmax":
        # the paper's direction (more aligned → higher T), spread over the batch's ρ range
        t = t_min + span * _batch_position(rho)
    elif temperature_map in ("rank", "rank_inverse"):
        # batch quantile of ρ (average ranks for ties): uniform over [t_min, t_max] whatever
        # the spread of ρ; "rank" = paper direction, "rank_inverse" = released direction
        # Spearman values of short vectors are discrete and tie often; rounding to 1e-6 keeps
        # mathematically equal values tied despite float noise
        flat = torch.round(rho.reshape(-1) * 1e6)
        n = flat.numel()
        if n < 2:
            frac = torch.full_like(rho, 0.5)
        else:
            frac = ((ranking.hard_rank(flat.unsqueeze(0), dim=-1)[0] - 1.0) / (n - 1)).reshape(
                rho.shape).to(rho.dtype)
        if temperature_map == "rank_inverse":
            frac = 1.0 - frac
        t = t_min + span * frac
    else:
        hint = suggest(str(temperature_map), _TEMP_MAPS)
        raise ValueError(f"unknown temperature_map {temperature_map!r}.{hint}")
    return t.clamp(t_min, t_max)


def dynamic_temperature(
    student_logits: Tensor,
    teacher_logits: Tensor,
    mode: TempMode,
    t_min: float,
    t_max: float,
    temperature_map: TempMap = "paper_normalized",
) -> Tensor:
    """Detached temperature tensor broadcastable to (B, C): (B,1), (1,C) or (B,C)."""
    rho = temperature_correlation(student_logits, teacher_logits, mode)
    return map_temperature(rho, t_min, t_max, temperature_map)


# --------------------------------------------------------------------------- correlations
def rank_correlation(
    student: Tensor,
    teacher: Tensor,
    *,
    method: RankMethod = "soft",
    strength: float = 1e-1,
    backend: str = "auto",
    teacher_rank: Literal["hard", "soft"] = "hard",
) -> Tensor:
    """Correlation along the last dim between student rows (differentiable) and teacher rows.

    ``"soft"``: Pearson of soft student ranks and (hard or soft) teacher ranks, i.e. a
    differentiable Spearman ρ; ``"pearson"``: Pearson of the raw values. Constant rows give 0.
    """
    teacher = teacher.detach()
    if method == "pearson":
        return ranking.pearson(student, teacher, dim=-1)
    if method != "soft":
        raise ValueError(f"unknown rank_method {method!r}.{suggest(str(method), _RANK_METHODS)}")
    rs = ranking.soft_rank(student, dim=-1, strength=strength, backend=backend)
    if teacher_rank == "hard":
        rt = ranking.hard_rank(teacher, dim=-1)
    else:
        rt = ranking.soft_rank(teacher, dim=-1, strength=strength, backend=backend)
    return ranking.pearson(rs, rt.detach(), dim=-1)


def weighted_mean(values: Tensor, weights: Tensor) -> Tensor:
    """``Σ w·v / Σ w``; 0 when every weight is 0 (no device sync)."""
    den = weights.sum()
    return (weights * values).sum() / den.clamp_min(torch.finfo(den.dtype).tiny)


def _weighted_pearson(a: Tensor, b: Tensor, w: Tensor) -> Tensor:
    """Pearson correlation of 1-D ``a`` and ``b`` under element weights ``w``; 0 if constant.

    The centred vectors are divided by their (detached) largest magnitude first, so that Gram
    entries of size 1e-4 do not underflow the variance product (the same trick as
    :func:`lud.ranking.pearson`).
    """
    w = w / w.sum().clamp_min(torch.finfo(w.dtype).tiny)
    da, db = a - (w * a).sum(), b - (w * b).sum()
    tol = 32 * torch.finfo(a.dtype).eps
    floor = math.sqrt(torch.finfo(a.dtype).tiny)  # below it 1/spread overflows in backward
    sa, sb = da.detach().abs().amax(), db.detach().abs().amax()
    const = ((sa <= tol * a.detach().abs().amax()) | (sb <= tol * b.detach().abs().amax())
             | (sa < floor) | (sb < floor))
    da = da / torch.where(const, torch.ones_like(sa), sa)
    db = db / torch.where(const, torch.ones_like(sb), sb)
    var = (w * da * da).sum() * (w * db * db).sum()
    r = (w * da * db).sum() / var.clamp_min(torch.finfo(var.dtype).tiny).sqrt()
    return torch.where(const, torch.zeros_like(r), r).clamp(-1.0, 1.0)


def gram_correlation_loss(
    gram_student: Tensor,
    gram_teacher: Tensor,
    weights: Tensor,
    *,
    reduction: Reduction = "row",
    method: RankMethod = "soft",
    strength: float = 1e-1,
    backend: str = "auto",
    teacher_rank: Literal["hard", "soft"] = "hard",
    row_scale: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """``1 − ρ`` between two square Gram matrices under row weights; returns (loss, mean ρ).

    ``"row"``: weighted mean over rows r of ``1 − ρ(G_S[r], G_T[r])``; the reported ρ is the
    mean over rows with non-zero weight. ``"flat"``: one correlation over the upper triangle
    (diagonal included) of the Gram matrices restricted to the rows and columns with non-zero
    weight, element weights ``w_r·w_c``.
    Matrices of side < 2 carry no ranking information: loss 0 (ρ reported as 0).
    """
    n = gram_student.shape[-1]
    if n < 2:
        zero = gram_student.sum() * 0.0
        return zero, zero.detach()
    weights = weights.detach()
    if reduction == "row":
        rho = rank_correlation(gram_student, gram_teacher, method=method, strength=strength,
                               backend=backend, teacher_rank=teacher_rank)
        disc = 1.0 - rho if row_scale is None else row_scale.detach() * (1.0 - rho)
        loss = weighted_mean(disc, weights)
        rho_mean = weighted_mean(rho.detach(), (weights > 0).to(rho.dtype))
        return loss, rho_mean
    if reduction != "flat":
        hint = suggest(str(reduction), _REDUCTIONS)
        raise ValueError(f"unknown gram_reduction {reduction!r}.{hint}")
    keep = weights > 0
    wk = weights[keep]
    k = wk.shape[0]
    # Gram matrices are symmetric: rank the upper triangle (with the diagonal) only, so that
    # every entry counts once instead of as a float-rounding-broken tie with its mirror.
    iu, ju = torch.triu_indices(k, k, device=weights.device).unbind(0)
    sub_s = gram_student[keep][:, keep][iu, ju].reshape(1, -1)
    sub_t = gram_teacher[keep][:, keep][iu, ju].reshape(1, -1)
    if sub_s.shape[1] < 2:  # nothing (or a single entry) selected
        zero = gram_student.sum() * 0.0
        return zero, zero.detach()
    elem_w = wk[iu] * wk[ju]
    if method == "pearson":
        a, b = sub_s[0], sub_t[0]
    else:
        a = ranking.soft_rank(sub_s, dim=-1, strength=strength, backend=backend)[0]
        if teacher_rank == "hard":
            b = ranking.hard_rank(sub_t, dim=-1)[0]
        else:
            b = ranking.soft_rank(sub_t, dim=-1, strength=strength, backend=backend)[0]
    rho = _weighted_pearson(a, b.detach(), elem_w)
    return 1.0 - rho, rho.detach()


def matched_scale(student: Tensor, teacher: Tensor) -> Tensor:
    """Per-row ``min(1, std(student row) / std(teacher row))``, detached (0 for a flat student
    row, 1 for a flat teacher row).

    A correlation is scale-free, so its gradient grows like ``1 / std(student row)``: at
    initialisation, when a student's logits (hence its probabilities and Gram rows) are nearly
    flat, a correlation term's gradient explodes. Multiplying ``1 − ρ`` by this factor bounds the
    gradient by the teacher's scale instead; once the student's rows are as spread as the
    teacher's the factor is 1 and the term is unchanged.
    """
    s_std = student.detach().std(dim=-1, unbiased=False)
    t_std = teacher.detach().std(dim=-1, unbiased=False)
    ratio = s_std / t_std.clamp_min(torch.finfo(t_std.dtype).tiny)
    return torch.where(t_std > 0, ratio.clamp(max=1.0), torch.ones_like(ratio))


def _identity(x: Tensor) -> Tensor:
    return x


def _log_floor(x: Tensor) -> Tensor:
    """``log x`` with x floored at the smallest normal float (probabilities and Gram entries are
    ≥ 0; an underflowed entry gets the floor and no gradient instead of −inf)."""
    return torch.log(x.clamp_min(torch.finfo(x.dtype).tiny))


def _probs(logits: Tensor, temperature: Tensor | float) -> Tensor:
    return torch.softmax(logits / temperature, dim=1)


def category_spearman_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    temperature: Tensor | float,
    class_weights: Tensor,
    *,
    reduction: Reduction = "row",
    method: RankMethod = "soft",
    strength: float = 1e-1,
    backend: str = "auto",
    teacher_rank: Literal["hard", "soft"] = "hard",
) -> tuple[Tensor, Tensor]:
    """CDL: ``1 − ρ`` between rows of the C×C Gram matrices ``Pᵀ P`` (class weights (C,)).

    ``temperature`` broadcasts against (B, C). Returns (loss, mean ρ); see
    :func:`gram_correlation_loss` for the keyword arguments.
    """
    ps = _probs(student_logits, temperature)
    pt = _probs(teacher_logits.detach(), temperature)
    return gram_correlation_loss(ps.t() @ ps, pt.t() @ pt, class_weights, reduction=reduction,
                                 method=method, strength=strength, backend=backend,
                                 teacher_rank=teacher_rank)


def sample_spearman_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    temperature: Tensor | float,
    sample_weights: Tensor,
    *,
    reduction: Reduction = "row",
    method: RankMethod = "soft",
    strength: float = 1e-1,
    backend: str = "auto",
    teacher_rank: Literal["hard", "soft"] = "hard",
) -> tuple[Tensor, Tensor]:
    """SDL: ``1 − ρ`` between rows of the B×B Gram matrices ``P Pᵀ`` (sample weights (B,)).

    ``temperature`` broadcasts against (B, C). Returns (loss, mean ρ).
    """
    ps = _probs(student_logits, temperature)
    pt = _probs(teacher_logits.detach(), temperature)
    return gram_correlation_loss(ps @ ps.t(), pt @ pt.t(), sample_weights, reduction=reduction,
                                 method=method, strength=strength, backend=backend,
                                 teacher_rank=teacher_rank)


def relation_rank_loss(
    student_probs: Tensor,
    teacher_probs: Tensor,
    weights: Tensor,
    *,
    method: RankMethod = "soft",
    strength: float = 1e-1,
    backend: str = "auto",
    teacher_rank: Literal["hard", "soft"] = "hard",
    row_scale: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """First-order relation: weighted mean over rows ``r`` of ``1 − ρ(P_S[r], P_T[r])``.

    Rows are samples (inter-class relation, pass ``P``) or classes (intra-class relation, pass
    ``Pᵀ``); ``weights`` has one entry per row. Rows of length < 2 carry no ranking: loss 0.
    Returns (loss, mean ρ over rows with non-zero weight).
    """
    if student_probs.shape[-1] < 2:
        zero = student_probs.sum() * 0.0
        return zero, zero.detach()
    rho = rank_correlation(student_probs, teacher_probs, method=method, strength=strength,
                           backend=backend, teacher_rank=teacher_rank)
    weights = weights.detach()
    disc = 1.0 - rho if row_scale is None else row_scale.detach() * (1.0 - rho)
    loss = weighted_mean(disc, weights)
    return loss, weighted_mean(rho.detach(), (weights > 0).to(rho.dtype))


def instance_kl(
    student_logits: Tensor, teacher_logits: Tensor, temperature: Tensor | float, weights: Tensor
) -> Tensor:
    """Weighted mean over samples of ``T_b²·KL(p_T ‖ p_S)``; ``T_b`` is the row mean of T."""
    t = torch.as_tensor(temperature, dtype=student_logits.dtype, device=student_logits.device)
    log_ps, log_pt = _log_probs(student_logits, teacher_logits, t)
    return instance_kl_from_log_probs(log_ps, log_pt, t, weights)


def _log_probs(zs: Tensor, zt: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
    return F.log_softmax(zs / t, dim=1), F.log_softmax(zt.detach() / t, dim=1)


def instance_kl_from_log_probs(log_ps: Tensor, log_pt: Tensor, t: Tensor, weights: Tensor) -> Tensor:
    """:func:`instance_kl` from the log-probabilities at temperature ``t`` (a tensor)."""
    kl = F.kl_div(log_ps, log_pt.detach(), reduction="none", log_target=True).sum(dim=1)
    t_row = t.expand_as(log_ps).mean(dim=1) if t.dim() else t
    return weighted_mean(t_row.pow(2) * kl, weights.detach())


# --------------------------------------------------------------------------- large label spaces
def category_subset(
    teacher_logits: Tensor, class_mass: Tensor, top_k: int, max_categories: int
) -> Tensor:
    """Sorted indices of the restricted class set: the union over rows of the teacher's top-k
    classes; if that union holds more than ``max_categories`` classes, the ``max_categories``
    of them with the largest ``class_mass`` (total teacher probability over the rows).

    No gradient. One device sync: the union's size decides the output's shape.
    """
    with torch.no_grad():
        z = teacher_logits.detach()
        classes = z.shape[1]
        top = z.topk(min(top_k, classes), dim=1).indices.reshape(-1)
        member = torch.zeros(classes, dtype=torch.bool, device=z.device).index_fill_(0, top, True)
        size = min(int(member.sum()), max_categories)  # the sync
        # members score their mass (>= 0), others -1: the top `size` scores are members only
        score = torch.where(member, class_mass.detach().float(), torch.full_like(class_mass, -1.0))
        return score.topk(size).indices.sort().values


def restrict_columns(probs: Tensor, cols: Tensor, fold: bool, log: bool = False) -> Tensor:
    """Columns ``cols`` of row-stochastic ``probs``; with ``fold`` one more column holding the
    rest of each row's mass, ``1 − Σ kept`` (floored at 0 against rounding). Differentiable.
    ``log``: ``probs`` holds log-probabilities; the result is probabilities all the same."""
    kept = probs.index_select(1, cols)
    if log:
        kept = kept.exp()
    if not fold:
        return kept
    tail = (1.0 - kept.sum(dim=1, keepdim=True)).clamp_min(0.0)
    return torch.cat([kept, tail], dim=1)


def _mix_seed(seed: int, counter: int) -> int:
    """A 64-bit generator seed from (seed, counter): distinct counters give distinct seeds."""
    return (seed * 0x9E3779B97F4A7C15 + counter) % 2**64


def _optional_int(name: str, value: object, low: int) -> int | None:
    """``None`` or an int ``>= low``; ``ValueError`` naming ``name`` otherwise."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an int or None, got {value!r}")
    return int(check_number(name, value, low=low))


# --------------------------------------------------------------------------- module
@register_loss("lud", family="lud", bench=True, summary="LUD, this project's tuned defaults")
class LUDLoss(DistillationLoss):
    """Logits Uncertainty Distillation; see the module docstring for every option's rationale.

    Args:
        preset: ``"default"`` or ``"paper"``: the values of the parameters left at ``None``
            (see :data:`PRESETS`); ``preset="paper"`` reproduces the paper-faithful LUD.
        ce_weight: weight of cross-entropy on the (raw) student logits; 0 removes it.
        instance_weight: λ_KD of the instance term ``T_b²·KL``; 0 removes it.
        cdl_weight: λ_CDL of the category (C×C Gram) Spearman loss; 0 removes it.
        sdl_weight: λ_SDL of the sample (B×B Gram) Spearman loss; 0 removes it.
        inter_weight: weight of the first-order inter-class rank term (rows of ``P``); 0 = off.
        intra_weight: weight of the first-order intra-class rank term (columns of ``P``); 0 = off.
        relation_mask: also gate the inter/intra rows with the sample/class masks.
        relation_class_scale: multiply the inter/intra weights by ``C / 10`` (their gradient
            shrinks like ``1/C``), so one weight suits 10 and 100 classes; with
            ``category_top_k``, C is the restricted class count (|K|, +1 with the folded tail).
        rank_scale: ``"linear"`` ranks the Gram entries / probabilities themselves, ``"log"``
            their logarithms (the same hard Spearman ρ, a better-conditioned soft surrogate).
        rank_grad_scale: ``"matched"`` multiplies each row's ``1 − ρ`` by
            :func:`matched_scale` (bounded gradient while the student is flat); ``"none"``.
        rank_warmup: epochs of linear warm-up of the rank terms (CDL, SDL, inter, intra); 0 = off.
        temperature: base T: for confidences, and for every term when the dynamic T is off.
        dynamic_temperature: ``"off" | "sample" | "class" | "full"``.
        t_min, t_max: temperature range, ``0 < t_min <= t_max``.
        temperature_map: ``"paper" | "paper_normalized" | "released" | "minmax" | "rank" |
            "rank_inverse"``.
        mask_direction: ``"confident"`` (keep conf > thr) or ``"uncertain"`` (keep conf ≤ thr).
        threshold: ``"batch" | "running" | "fixed"``.
        quantile: batch quantile used as threshold (0.5 = median).
        threshold_momentum: EMA momentum of the running threshold.
        fixed_threshold: sample threshold for ``threshold="fixed"``.
        mask_type: ``"hard"`` or ``"soft"``; mask_softness: width of the soft mask (× mean conf).
        sample_mask: mask the SDL rows; class_mask: mask the CDL rows;
        instance_mask: also gate the instance term with the sample mask.
        uncertainty_weighting: confidence weights on instance/SDL (samples) and CDL (classes).
        gram_reduction: ``"row"`` or ``"flat"``.
        rank_method: ``"soft"`` (soft Spearman) or ``"pearson"``.
        rank_strength: soft-rank regularisation (on z-scored rows).
        rank_backend: see :mod:`lud.ranking`; ``"hard"`` gives values without gradient.
        teacher_rank: ``"hard"`` (cheaper) or ``"soft"`` (exact minimum at student == teacher).
        standardize: z-score logits (both sides) before any temperature (CE stays on raw logits).
        category_top_k: large label spaces (language models): compute the category-level parts
            (CDL, the intra term, class confidences, class mask and weights ``v``, the inter
            term's ranks over classes) on the union over rows of the teacher's top-k classes
            instead of all C classes (see "Large label spaces" above); ``None`` (default) = all.
        max_categories: cap on that union; beyond it the classes with the largest total teacher
            probability are kept. Must be >= ``category_top_k``.
        category_tail: ``"fold"`` adds one column holding the probability of every class left
            out (``1 − Σ kept``); ``"drop"`` leaves it out.
        sample_max_rows: compute SDL (the N×N Gram term, and only it) on a seeded random subset
            of this many rows when N is larger; ``None`` (default) = all rows. At least 2.
        sample_seed: seed of that subset; combined with a call counter (buffer ``sample_calls``,
            in ``state_dict``, advanced once per training-mode call) so every step draws anew
            and a resumed run draws what the uninterrupted one would have.
        validate: input checks, passed to :class:`DistillationLoss`.
        gather: under data-parallel training, compute every term on the global batch (all ranks'
            logits); the identity in a single process. See "Distributed training" above.
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
        rank_scale: Literal["linear", "log"] = "linear",
        rank_grad_scale: Literal["none", "matched"] | None = None,
        rank_warmup: float | None = None,
        temperature: float = 4.0,
        dynamic_temperature: TempMode = "sample",
        t_min: float = 2.0,
        t_max: float = 6.0,
        temperature_map: TempMap = "paper_normalized",
        mask_direction: MaskDirection = "confident",
        threshold: Literal["batch", "running", "fixed"] = "batch",
        quantile: float = 0.5,
        threshold_momentum: float = 0.9,
        fixed_threshold: float = 0.5,
        mask_type: MaskType = "hard",
        mask_softness: float = 0.1,
        sample_mask: bool = True,
        class_mask: bool = True,
        instance_mask: bool = False,
        uncertainty_weighting: bool = True,
        gram_reduction: Reduction = "row",
        rank_method: RankMethod = "soft",
        rank_strength: float = 0.1,
        rank_backend: str = "auto",
        teacher_rank: Literal["hard", "soft"] = "hard",
        standardize: bool = False,
        category_top_k: int | None = None,
        max_categories: int = 1024,
        category_tail: Literal["fold", "drop"] = "fold",
        sample_max_rows: int | None = None,
        sample_seed: int = 0,
        validate: bool = True,
        gather: bool = False,
    ) -> None:
        super().__init__(validate=validate, gather=gather)
        check_choice("preset", preset, tuple(PRESETS))
        self.preset = preset
        given = {"ce_weight": ce_weight, "instance_weight": instance_weight,
                 "cdl_weight": cdl_weight, "sdl_weight": sdl_weight,
                 "inter_weight": inter_weight, "intra_weight": intra_weight,
                 "rank_grad_scale": rank_grad_scale, "rank_warmup": rank_warmup,
                 "relation_class_scale": relation_class_scale}
        chosen = {k: (PRESETS[preset][k] if v is None else v) for k, v in given.items()}
        ce_weight, instance_weight = chosen["ce_weight"], chosen["instance_weight"]
        cdl_weight, sdl_weight = chosen["cdl_weight"], chosen["sdl_weight"]
        inter_weight, intra_weight = chosen["inter_weight"], chosen["intra_weight"]
        rank_grad_scale, rank_warmup = chosen["rank_grad_scale"], chosen["rank_warmup"]
        self.relation_class_scale = check_bool("relation_class_scale",
                                               chosen["relation_class_scale"])
        self.ce_weight = check_number("ce_weight", ce_weight, low=0.0)
        self.instance_weight = check_number("instance_weight", instance_weight, low=0.0)
        self.cdl_weight = check_number("cdl_weight", cdl_weight, low=0.0)
        self.sdl_weight = check_number("sdl_weight", sdl_weight, low=0.0)
        self.inter_weight = check_number("inter_weight", inter_weight, low=0.0)
        self.intra_weight = check_number("intra_weight", intra_weight, low=0.0)
        if not (self.ce_weight or self.instance_weight or self.cdl_weight or self.sdl_weight
                or self.inter_weight or self.intra_weight):
            raise ValueError("ce_weight, instance_weight, cdl_weight, sdl_weight, inter_weight and "
                             "intra_weight are all 0: nothing to compute")
        self.temperature = check_number("temperature", temperature, low=0.0, low_open=True)
        self.t_min = check_number("t_min", t_min, low=0.0, low_open=True)
        self.t_max = check_number("t_max", t_max, low=0.0, low_open=True)
        if self.t_min > self.t_max:
            raise ValueError(f"t_min must not exceed t_max, got t_min={t_min} > t_max={t_max}")
        check_choice("dynamic_temperature", dynamic_temperature, _TEMP_MODES)
        check_choice("temperature_map", temperature_map, _TEMP_MAPS)
        check_choice("mask_direction", mask_direction, _DIRECTIONS)
        check_choice("threshold", threshold, _THRESHOLDS)
        check_choice("mask_type", mask_type, _MASK_TYPES)
        check_choice("gram_reduction", gram_reduction, _REDUCTIONS)
        check_choice("rank_method", rank_method, _RANK_METHODS)
        check_choice("rank_backend", rank_backend, _BACKENDS)
        if rank_backend == "torchsort" and "torchsort" not in ranking.available_backends():
            raise ValueError("rank_backend='torchsort' but torchsort is not importable; install it "
                             "(see lud.ranking) or use rank_backend='auto'")
        check_choice("teacher_rank", teacher_rank, _TEACHER_RANKS)
        check_choice("rank_scale", rank_scale, _RANK_SCALES)
        check_choice("rank_grad_scale", rank_grad_scale, ("none", "matched"))
        if rank_grad_scale == "matched" and gram_reduction != "row":
            raise ValueError("rank_grad_scale='matched' scales rows: it needs gram_reduction='row'")
        self.rank_scale, self.rank_grad_scale = rank_scale, rank_grad_scale
        self.rank_warmup = check_number("rank_warmup", rank_warmup, low=0.0)
        self.dynamic_temperature, self.temperature_map = dynamic_temperature, temperature_map
        self.mask_direction, self.threshold, self.mask_type = mask_direction, threshold, mask_type
        self.gram_reduction, self.rank_method = gram_reduction, rank_method
        self.rank_backend, self.teacher_rank = rank_backend, teacher_rank
        self.quantile = check_number("quantile", quantile, low=0.0, high=1.0)
        self.threshold_momentum = check_number("threshold_momentum", threshold_momentum,
                                                low=0.0, high=1.0, high_open=True)
        self.fixed_threshold = check_number("fixed_threshold", fixed_threshold, low=0.0, high=1.0)
        self.mask_softness = check_number("mask_softness", mask_softness, low=0.0, low_open=True)
        self.rank_strength = check_number("rank_strength", rank_strength, low=0.0, low_open=True)
        flags = {"sample_mask": sample_mask, "class_mask": class_mask,
                 "instance_mask": instance_mask, "uncertainty_weighting": uncertainty_weighting,
                 "relation_mask": relation_mask,
                 "standardize": standardize}
        for name, flag in flags.items():
            check_bool(name, flag)
        self.sample_mask, self.class_mask = sample_mask, class_mask
        self.instance_mask, self.relation_mask = instance_mask, relation_mask
        self.uncertainty_weighting, self.standardize = uncertainty_weighting, standardize
        self.requires_targets = self.ce_weight > 0  # instance attribute read by forward()
        self._init_large_label_space(category_top_k, max_categories, category_tail,
                                     sample_max_rows, sample_seed)
        self.register_buffer("running_sample_threshold", torch.zeros(()))
        self.register_buffer("running_class_threshold", torch.zeros(()))
        self.register_buffer("running_threshold_initialized", torch.zeros((), dtype=torch.bool))

    # -- pieces -------------------------------------------------------------------------------
    def _init_large_label_space(self, top_k: object, max_categories: object, tail: object,
                                max_rows: object, seed: object) -> None:
        """Check and store the class-set restriction and the SDL row subsample."""
        self.category_top_k = _optional_int("category_top_k", top_k, low=1)
        self.max_categories = _optional_int("max_categories", max_categories, low=1)
        if self.max_categories is None:
            raise ValueError("max_categories must be an int, got None")
        if self.category_top_k is not None and self.max_categories < self.category_top_k:
            raise ValueError(f"max_categories ({max_categories}) must be >= category_top_k "
                             f"({top_k}): the cap would cut every row's own top-k")
        check_choice("category_tail", tail, ("fold", "drop"))
        self.category_tail = tail
        # a 1-row subsample has a 1x1 Gram matrix: no ranking left to compare
        self.sample_max_rows = _optional_int("sample_max_rows", max_rows, low=2)
        self.sample_seed = _optional_int("sample_seed", seed, low=0)
        if self.sample_seed is None:
            raise ValueError("sample_seed must be an int, got None")
        if self.sample_max_rows is not None:
            # only then: state_dicts of the default loss keep their keys (old checkpoints load)
            self._sample_calls = 0  # host mirror of the buffer: reading it needs no device sync
            self.register_buffer("sample_calls", torch.zeros((), dtype=torch.int64))
            self.register_load_state_dict_post_hook(_reload_sample_calls)

    def _sample_rows(self, n: int, device: torch.device) -> Tensor | None:
        """Sorted indices of the SDL rows, or ``None`` for all; advances the training counter."""
        if self.sample_max_rows is None:
            return None
        calls = self._sample_calls
        if self.training:
            self._sample_calls += 1
            self.sample_calls.fill_(self._sample_calls)
        if n <= self.sample_max_rows:
            return None
        g = torch.Generator().manual_seed(_mix_seed(self.sample_seed, calls))
        rows = torch.randperm(n, generator=g)[: self.sample_max_rows].sort().values
        return rows.to(device)

    def _class_statistics(self, zt: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        """(sample confidences, class confidences, restricted class indices or ``None``)."""
        if self.category_top_k is None:
            return (teacher_confidence(zt, self.temperature),
                    class_confidence(zt, self.temperature), None)
        with torch.no_grad():
            p = torch.softmax(zt / self.temperature, dim=1)  # one N×C softmax for all three
            cols = category_subset(zt, p.sum(dim=0), self.category_top_k, self.max_categories)
            cconf = restrict_columns(p, cols, self.category_tail == "fold").mean(dim=0)
            return p.amax(dim=1), cconf, cols

    def _thresholds(self, conf: Tensor, cconf: Tensor) -> tuple[Tensor, Tensor]:
        """(sample threshold, class threshold), updating the running buffers in training."""
        q_s = batch_quantile(conf, self.quantile)
        q_c = batch_quantile(cconf, self.quantile)
        if self.threshold == "fixed":
            return torch.full_like(q_s, self.fixed_threshold), q_c
        if self.threshold == "batch":
            return q_s, q_c
        init = self.running_threshold_initialized
        old_s = self.running_sample_threshold.to(q_s.device)
        old_c = self.running_class_threshold.to(q_c.device)
        if self.training:
            m = self.threshold_momentum
            new_s = torch.where(init, m * old_s + (1 - m) * q_s, q_s)
            new_c = torch.where(init, m * old_c + (1 - m) * q_c, q_c)
            with torch.no_grad():
                self.running_sample_threshold.copy_(new_s)
                self.running_class_threshold.copy_(new_c)
                self.running_threshold_initialized.fill_(True)
            return new_s, new_c
        # evaluation before any training step: fall back to the batch quantile
        return torch.where(init, old_s, q_s), torch.where(init, old_c, q_c)

    def compute(
        self,
        student_logits: Tensor,
        teacher_logits: Tensor | None,
        targets: Tensor | None,
        epoch: Epoch,
    ) -> LossOutput:
        assert teacher_logits is not None  # guaranteed by forward()
        raw_student = student_logits
        zs, zt = student_logits, teacher_logits.detach()
        # the large-label-space options also spare N×V copies (module docstring)
        lean = self.category_top_k is not None or self.sample_max_rows is not None
        if self.standardize:
            zs, zt = standardize_logits(zs), standardize_logits(zt)
        elif not (lean and self.dynamic_temperature in ("sample", "off")):
            # Logits are defined up to a per-row constant. Softmax with one temperature per row
            # ignores it, but per-class temperatures ("class", "full") and the column ranks that
            # set them do not: centring each row makes every mode shift-invariant.
            zs = zs - zs.mean(dim=1, keepdim=True)
            zt = zt - zt.mean(dim=1, keepdim=True)

        # confidences, thresholds, masks, weights — all detached; from this rank's batch, or
        # from the global batch when `gather` is on (forward() has then gathered the logits)
        conf, cconf, cols = self._class_statistics(zt)
        thr_s, thr_c = self._thresholds(conf, cconf)
        direction, mtype, soft = self.mask_direction, self.mask_type, self.mask_softness
        if conf.shape[0] == 1 and self.threshold == "batch":
            smask = torch.ones_like(conf)  # a one-value threshold says nothing: keep the sample
        else:
            smask = confidence_mask(conf, thr_s, direction, mtype, soft)  # type: ignore[arg-type]
        cmask = confidence_mask(cconf, thr_c, direction, mtype, soft)  # type: ignore[arg-type]
        ones_s, ones_c = torch.ones_like(conf), torch.ones_like(cconf)
        if self.uncertainty_weighting:
            u = conf / conf.mean().clamp_min(torch.finfo(conf.dtype).tiny)
            v = confidence_weights(cconf)
        else:
            u, v = ones_s, ones_c

        # temperature
        if self.dynamic_temperature == "off":
            temp: Tensor = torch.full((1, 1), self.temperature, device=zs.device)
        else:
            temp = dynamic_temperature(
                zs, zt, self.dynamic_temperature, self.t_min, self.t_max,  # type: ignore[arg-type]
                self.temperature_map,  # type: ignore[arg-type]
            )

        terms: dict[str, Tensor] = {}
        stats: dict[str, Tensor] = {}
        if self.ce_weight > 0:
            assert targets is not None
            terms["ce"] = self.ce_weight * F.cross_entropy(raw_student, targets)
        ranked = self.cdl_weight > 0 or self.sdl_weight > 0 or self.inter_weight or self.intra_weight
        # lean: one log-softmax per side serves the instance term and the rank terms' columns/rows
        log_p = _log_probs(zs, zt, temp) if lean and (ranked or self.instance_weight > 0) else None
        if self.instance_weight > 0:
            w = u * (smask if self.instance_mask else ones_s)
            kl = (instance_kl(zs, zt, temp, w) if log_p is None
                  else instance_kl_from_log_probs(*log_p, temp, w))
            terms["instance"] = self.instance_weight * kl
        rkw = {"reduction": self.gram_reduction, "method": self.rank_method,
               "strength": self.rank_strength, "backend": self.rank_backend,
               "teacher_rank": self.teacher_rank}
        rkw_rel = {k: v for k, v in rkw.items() if k != "reduction"}
        rows = self._sample_rows(zs.shape[0], zs.device)
        if ranked:
            # category-level parts see the restricted class set, gathered from the full-vocabulary
            # softmax (the student's gradient reaches the kept logits and, via the tail, the rest)
            fold = self.category_tail == "fold"
            if log_p is None:
                # one softmax per side for both Gram matrices (the standalone
                # category_/sample_spearman_loss functions each compute their own)
                ps, pt = _probs(zs, temp), _probs(zt, temp)
                cs, ct = (ps, pt) if cols is None else (restrict_columns(ps, cols, fold),
                                                        restrict_columns(pt, cols, fold))
            else:
                # probabilities only where the rank terms look: no further N×V tensor
                cs, ct = ((log_p[0].exp(), log_p[1].exp()) if cols is None
                          else (restrict_columns(log_p[0], cols, fold, log=True),
                                restrict_columns(log_p[1], cols, fold, log=True)))
                ps = pt = None
        to_scale = _log_floor if self.rank_scale == "log" else _identity
        # DKD-style linear warm-up of every rank term (epoch is fractional in the trainer)
        ramp = linear_warmup(epoch, self.rank_warmup)
        matched = self.rank_grad_scale == "matched"

        def rank_term(fn, xs: Tensor, xt: Tensor, w: Tensor, kw: dict) -> tuple[Tensor, Tensor]:
            xs, xt = to_scale(xs), to_scale(xt)
            scale = matched_scale(xs, xt) if matched else None
            return fn(xs, xt, w, row_scale=scale, **kw)

        if self.cdl_weight > 0:
            w = v * (cmask if self.class_mask else ones_c)
            loss, rho = rank_term(gram_correlation_loss, cs.t() @ cs, ct.t() @ ct, w, rkw)
            terms["cdl"] = ramp * self.cdl_weight * loss
            stats["rho_cdl"] = rho
        if self.sdl_weight > 0:
            w = u * (smask if self.sample_mask else ones_s)
            if rows is not None:  # bounded N×N Gram: a seeded subset of rows, weights alike
                if log_p is None:
                    qs, qt = ps.index_select(0, rows), pt.index_select(0, rows)
                else:
                    qs, qt = (x.index_select(0, rows).exp() for x in log_p)
                w = w[rows]
            elif log_p is None:
                qs, qt = ps, pt
            elif cols is None:  # cs, ct are the full probabilities already
                qs, qt = cs, ct
            else:  # all rows: the full probabilities after all
                qs, qt = log_p[0].exp(), log_p[1].exp()
            loss, rho = rank_term(gram_correlation_loss, qs @ qs.t(), qt @ qt.t(), w, rkw)
            terms["sdl"] = ramp * self.sdl_weight * loss
            stats["rho_sdl"] = rho

        # relation gradients shrink like 1/C (probabilities ~1/C): C/10 keeps them comparable
        # (restricted: the classes actually ranked, |K| (+1 folded), not the vocabulary)
        n_classes = cconf.shape[0]  # C, or the restricted count
        rel = ramp * (n_classes / 10.0 if self.relation_class_scale else 1.0)
        if self.inter_weight > 0:
            w = u * (smask if self.relation_mask else ones_s)
            loss, rho = rank_term(relation_rank_loss, cs, ct, w, rkw_rel)
            terms["inter"] = rel * self.inter_weight * loss
            stats["rho_inter"] = rho
        if self.intra_weight > 0:
            w = v * (cmask if self.relation_mask else ones_c)
            loss, rho = rank_term(relation_rank_loss, cs.t(), ct.t(), w, rkw_rel)
            terms["intra"] = rel * self.intra_weight * loss
            stats["rho_intra"] = rho

        stats.update(
            kept_samples=smask.mean(),
            kept_classes=cmask.mean(),
            temperature_mean=temp.mean(),
            temperature_min=temp.min(),
            temperature_max=temp.max(),
            threshold=thr_s,
            confidence_mean=conf.mean(),
        )
        return self.output(terms, stats)


def _reload_sample_calls(module: nn.Module, incompatible: object) -> None:
    """After ``load_state_dict``: the host copy of the SDL subsample counter follows the buffer."""
    module._sample_calls = int(module.sample_calls)  # type: ignore[union-attr]


@register_loss("lud-paper", family="lud", summary="LUD as the paper describes it")
class LUDPaperLoss(LUDLoss):
    """LUD as the paper describes it (``preset="paper"``: weights 1, no first-order terms, no
    warm-up) under a name of its own, so that configs, ``lud tune`` grids and ``lud bench`` tables
    hold it beside the improved default: ``build_loss("lud-paper", **p)`` equals
    ``build_loss("lud", preset="paper", **p)``. Same parameters as :class:`LUDLoss`."""

    def __init__(self, **params: Any) -> None:
        params.setdefault("preset", "paper")
        super().__init__(**params)


# build_loss checks parameter names against the signature: show LUDLoss's, with the paper preset
LUDPaperLoss.__init__.__signature__ = inspect.signature(LUDLoss.__init__).replace(  # type: ignore[attr-defined]
    parameters=[
        p.replace(default="paper") if p.name == "preset" else p
        for p in inspect.signature(LUDLoss.__init__).parameters.values()
    ]
)
