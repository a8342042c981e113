"""LUD at vocabulary scale in passes over token chunks: chunked logits or fused output layer.

LUD is not a mean over tokens: its thresholds are batch quantiles, its uncertainty weights are
normalised by batch means, the class set of ``category_top_k`` is a union over the rows, CDL and
the intra term compare *columns* over all rows, SDL compares rows of an N x N Gram matrix. So
:mod:`lud.losses.fused`'s one-pass chunk loop cannot compute it. It can be computed in passes,
because in LUD's restricted configuration (``category_top_k`` and/or ``sample_max_rows`` set, the
"lean" path of :class:`lud.losses.lud.LUDLoss`) the student enters the batch-coupled terms only
through small features:

* ``cs``: the full-vocabulary student probabilities (at the per-row dynamic temperature) of the
  restricted class set K, plus the folded tail — ``(N, |K|+1)``, |K| <= ``max_categories``;
* ``qs``: the full probability rows of the ``sample_max_rows`` rows SDL sees — ``(m, V)``, which
  SDL sees only through their Gram matrix ``qs qs^T`` ``(m, m)``;
* the per-row cross-entropy and instance KL, and the per-row temperature (detached).

The passes (each over chunks of ``chunk_size`` valid tokens; the student logits of a chunk are
recomputed from the hidden states in the fused path, sliced in the chunked path):

1. *teacher only, no gradient*: sample confidences, class mass, the union of top-k classes -> K;
2. *student and teacher, no gradient*: per-row Spearman ρ of the dynamic temperature (a pass of
   its own only for the batch-relative temperature maps ``released``, ``minmax``, ``rank``,
   ``rank_inverse``), then ``cs``, ``ct``, ``qs``, ``qt``, the per-row CE and KL, the class
   confidences; then thresholds, masks, weights (the module's own ``_thresholds``, so running
   thresholds move exactly once per call) and the rank terms on the small features, with autograd
   giving their gradient w.r.t. ``cs`` and the student Gram matrix ``Gs = qs qs^T`` (the teacher's
   rows ``qt`` are freed once their Gram matrix is formed);
3. *gradient*: per chunk, the chunk's CE and KL sums (over the global count / weight sum) plus
   ``<cs_chunk, dL/dcs_chunk> + <qs_chunk, dL/dqs_chunk>`` (with ``dL/dqs = (dL/dGs +
   dL/dGs^T) qs`` formed for the chunk's SDL rows only) are differentiated w.r.t. the chunk
   logits — the chain rule through the fixed statistics — and pushed into the hidden states and
   weight (or into one ``(N, V)`` logits gradient). The derivative is written in closed form
   (:func:`_chunk_gradient`; every configuration the path accepts), not built by autograd: no
   graph over several ``(chunk, V)`` tensors, at most four of them alive at once.

Every statistic is detached in :class:`~lud.losses.lud.LUDLoss` too (confidences, thresholds,
masks, ``u``, ``v``, temperatures, the class set, the SDL rows), so fixing them between passes is
not an approximation: value and gradient equal the unfused lean loss up to the order of sums.

Not supported (``ValueError`` naming why): ``dynamic_temperature="class"`` or ``"full"`` (the
column Spearman ρ ranks every column over all N rows: it needs the whole student logits), and
``standardize=True`` (z-scoring shifts and scales rows; allowed only on the lean path, where
rows are not centred). Without ``category_top_k`` the class features are all V columns and
without ``sample_max_rows`` SDL needs all N rows, so memory is then unbounded like the unfused
loss (still correct). ``gather=True`` (data-parallel global batch) is refused. The ``terms`` of
the returned :class:`~lud.losses.base.LossOutput` are detached values; ``total`` carries the
gradient.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import LossOutput, as_epoch, linear_warmup
from .fused import (
    DEFAULT_CHUNK_SIZE,
    IGNORE_INDEX,
    _check_chunk,
    _check_rows,
    _check_targets,
    _ChunkedLoss,
    _LinearSource,
    _LogitsSource,
    _Source,
    _take,
)
from .lud import (
    LUDLoss,
    confidence_mask,
    confidence_of,
    confidence_weights,
    gram_correlation_loss,
    map_temperature,
    matched_scale,
    relation_rank_loss,
    restrict_columns,
    sample_weights,
    temperature_correlation,
    weighted_mean,
)

__all__ = ["check_chunkable_lud", "chunked_lud_loss", "fused_linear_lud_loss"]

_ELEMENTWISE_MAPS = ("paper", "paper_normalized")


def check_chunkable_lud(loss: Any) -> LUDLoss:
    """``loss`` if the chunked LUD path can compute it, else a ``ValueError`` saying why."""
    if not isinstance(loss, LUDLoss):
        raise ValueError(f"loss must be a LUDLoss (build_loss('lud', ...)), got {type(loss).__name__}")
    if loss.category_top_k is None and loss.sample_max_rows is None:
        raise ValueError("the chunked LUD path needs category_top_k or sample_max_rows (the "
                         "vocabulary-scale configuration): without either LUD centres every row "
                         "over the full logits and builds V x V and N x N Gram matrices")
    if loss.dynamic_temperature not in ("sample", "off"):
        raise ValueError(f"dynamic_temperature={loss.dynamic_temperature!r} cannot be chunked over "
                         "tokens: its per-class Spearman rho ranks each column over all N rows of "
                         "the full student logits; use 'sample' or 'off'")
    if loss.standardize:
        raise ValueError("standardize=True is not supported by the chunked LUD path")
    if loss.gather:
        raise ValueError("gather=True is not supported by the chunked LUD path")
    return loss


def _log_floor(x: Tensor) -> Tensor:
    return torch.log(x.clamp_min(torch.finfo(x.dtype).tiny))


def _teacher_pass(loss: LUDLoss, teacher: Tensor, rows: Tensor | None, n: int, chunk: int
                  ) -> tuple[Tensor, Tensor | None]:
    """Pass 1: sample confidences (N,) and the restricted class set (or ``None``)."""
    tau, k = loss.temperature, loss.category_top_k
    classes = teacher.shape[1]
    conf = torch.empty(n, dtype=torch.float32, device=teacher.device)
    mass = torch.zeros(classes, dtype=torch.float32, device=teacher.device)
    member = torch.zeros(classes, dtype=torch.bool, device=teacher.device)
    with torch.no_grad():
        for start in range(0, n, chunk):
            end = min(start + chunk, n)
            zt = _take(teacher, rows, start, end).float()
            p = torch.softmax(zt / tau, dim=1)
            measure = loss.mask_options.confidence_measure
            conf[start:end] = confidence_of(p, measure, zt / tau if measure == "entropy" else None)
            if k is not None:
                mass += p.sum(dim=0)
                member.index_fill_(0, zt.topk(min(k, classes), dim=1).indices.reshape(-1), True)
        if k is None:
            return conf, None
        # as lud.category_subset: the union, capped by total teacher probability (one sync)
        size = min(int(member.sum()), loss.max_categories)
        score = torch.where(member, mass, torch.full_like(mass, -1.0))
        return conf, score.topk(size).indices.sort().values


def _chunk_log_probs(zs: Tensor, zt: Tensor, temp: Tensor) -> tuple[Tensor, Tensor]:
    return F.log_softmax(zs / temp, dim=1), F.log_softmax(zt / temp, dim=1)


def _softmax_(x: Tensor) -> Tensor:
    """Row softmax of ``x`` in place (no second ``(n, V)`` buffer); returns ``x``."""
    x.sub_(x.amax(dim=1, keepdim=True)).exp_()
    return x.div_(x.sum(dim=1, keepdim=True))


def _row_dot(a: Tensor, b: Tensor) -> Tensor:
    """``(a * b).sum(1, keepdim=True)`` without the ``(n, V)`` product."""
    return torch.bmm(a.unsqueeze(1), b.unsqueeze(2)).squeeze(2)


def _chunk_gradient(zs: Tensor, teacher_rows: Any, start: int, end: int, temp: Tensor,
                    y: Tensor | None, ce_scale: float, w_inst_t2: Tensor | None,
                    g_c: Tensor | None, cols: Tensor | None, fold: bool,
                    g_rows: Tensor | None, qs: Tensor | None, sel: Tensor | None) -> Tensor:
    """The gradient of LUD w.r.t. one chunk's student logits ``zs`` ``(c, V)``, all batch
    statistics fixed, in closed form (no autograd graph; at most four ``(c, V)`` buffers).

    With ``p = softmax(zs / T)`` (per-row ``temp``) and ``q = softmax(zs)``:

    * cross-entropy (``y`` given; rows ``-100`` contribute 0): ``ce_scale (q - onehot(y))``;
    * instance term, row weight ``w_inst_t2 = λ w T² / Σw``: ``w_inst_t2 (p - p_t) / T``;
    * a surrogate ``<f(p), g>`` of the rank terms, ``h = dL/dp`` ``(c, V)``:
      ``p ⊙ (h − <p, h>) / T``. Class features (``g_c``, the gradient w.r.t. the restricted
      columns ``cols`` plus, with ``fold``, the tail ``clamp(1 − Σ_K p, 0)``): ``h`` is
      ``g_c[:, k] − g_tail·[1 − Σ_K p ≥ 0]`` on column ``cols[k]`` and 0 elsewhere (without
      ``cols``, ``h = g_c``). SDL rows (``sel``: rows of the chunk): ``h = g_rows @ qs`` with
      ``g_rows`` their rows of ``dL/dGs + dL/dGs^T``. The rank
      terms' ``rank_scale="log"`` is inside ``g_c`` / ``g_rows`` (taken w.r.t. probabilities).
    """
    grad: Tensor | None = None
    if y is not None:  # cross-entropy at T = 1
        grad = torch.softmax(zs, dim=1)
        keep = (y != IGNORE_INDEX).to(grad.dtype)
        grad.mul_((ce_scale * keep).unsqueeze(1))
        rows = torch.arange(grad.shape[0], device=grad.device)
        grad.index_put_((rows, y.clamp_min(0)), -ce_scale * keep, accumulate=True)
    inv_t = temp.reciprocal()
    p = _softmax_(zs / temp)
    del zs
    if w_inst_t2 is not None:
        pt = _softmax_(teacher_rows(start, end) / temp)
        pt.sub_(p).mul_(-(w_inst_t2.unsqueeze(1) * inv_t))  # w_inst_t2 (p - p_t) / T
        grad = pt if grad is None else grad.add_(pt)
        del pt
    if grad is None:
        grad = torch.zeros_like(p)
    if g_c is not None:
        if cols is None:
            h = g_c - _row_dot(p, g_c)
            grad.addcmul_(h.mul_(p), inv_t)
            del h
        else:
            size = cols.shape[0]
            p_k = p.index_select(1, cols)
            h_k = g_c[:, :size]
            if fold:  # d tail / d p_k = -1 where 1 - sum_K p >= 0 (clamp_min's gradient)
                live = ((1.0 - p_k.sum(dim=1, keepdim=True)) >= 0).to(h_k.dtype)
                h_k = h_k - g_c[:, size:] * live
            grad.addcmul_(p, -_row_dot(p_k, h_k) * inv_t)
            grad.index_add_(1, cols, p_k * h_k * inv_t)
    if g_rows is not None and sel is not None and sel.numel():
        assert qs is not None
        p_sel = p.index_select(0, sel)
        del p
        t_sel = inv_t if inv_t.shape[0] == 1 else inv_t.index_select(0, sel)
        h = g_rows @ qs
        h.sub_(_row_dot(p_sel, h)).mul_(p_sel).mul_(t_sel)
        grad.index_add_(0, sel, h)
    return grad


def _lud_run(loss: LUDLoss, src: _Source, teacher: Tensor, rows: Tensor | None,
             targets: Tensor | None, chunk: int, epoch: Any, with_grad: bool,
             out: dict[str, Any]) -> Tensor:
    """The three passes; returns the total (0-d, detached) and fills ``out`` with terms/stats."""
    n, device = src.n, teacher.device
    fold = loss.category_tail == "fold"
    conf, cols = _teacher_pass(loss, teacher, rows, n, chunk)
    mode = loss.dynamic_temperature

    def teacher_rows(start: int, end: int) -> Tensor:
        return _take(teacher, rows, start, end).float()

    def temperature(rho: Tensor) -> Tensor:
        return map_temperature(rho, loss.t_min, loss.t_max, loss.temperature_map)  # type: ignore[arg-type]

    # the temperature: per row from the hard Spearman rho (detached), or the base one
    temp_all: Tensor | None = None
    if mode == "off":
        fixed = torch.full((1, 1), loss.temperature, device=device)
    elif loss.temperature_map not in _ELEMENTWISE_MAPS:  # batch-relative map: rho of every row first
        rho = torch.empty(n, 1, dtype=torch.float32, device=device)
        with torch.no_grad():
            for start in range(0, n, chunk):
                end = min(start + chunk, n)
                rho[start:end] = temperature_correlation(src.logits(start, end),
                                                         teacher_rows(start, end), "sample")
        temp_all = temperature(rho)
    else:
        temp_all = torch.empty(n, 1, dtype=torch.float32, device=device)

    need_cols = loss.cdl_weight > 0 or loss.inter_weight > 0 or loss.intra_weight > 0
    sdl_rows = loss._sample_rows(n, device)  # as compute(): advances the training counter
    want_q = loss.sdl_weight > 0
    if want_q:
        q_index = torch.arange(n, device=device) if sdl_rows is None else sdl_rows
        # q_index is sorted: the SDL rows of chunk [start, end) are the contiguous block
        # [bounds[j], bounds[j + 1]) of qs (one device sync for all chunks)
        bounds = torch.searchsorted(q_index, torch.arange(0, n + chunk, chunk, device=device)
                                    .clamp_max(n)).tolist()

    def q_block(start: int) -> tuple[int, int, Tensor]:
        """The chunk's SDL rows: their block [lo, hi) of qs and their rows in the chunk."""
        lo, hi = bounds[start // chunk], bounds[start // chunk + 1]
        return lo, hi, q_index[lo:hi] - start

    # pass 2: features without gradient
    ce_rows = torch.zeros(n, dtype=torch.float32, device=device)
    kl_rows = torch.zeros(n, dtype=torch.float32, device=device)
    t_rows = torch.zeros(n, dtype=torch.float32, device=device)
    cs_parts, ct_parts = [], []
    qs = qt = None
    if want_q:  # the SDL rows, written in place (no list of pieces, no copy)
        qs = torch.empty(q_index.shape[0], teacher.shape[1], dtype=torch.float32, device=device)
        qt = torch.empty_like(qs)
    cconf_sum: Tensor | None = None
    with torch.no_grad():
        for start in range(0, n, chunk):
            end = min(start + chunk, n)
            zs, zt = src.logits(start, end), teacher_rows(start, end)
            if mode == "off":
                temp = fixed
            elif temp_all is not None and loss.temperature_map not in _ELEMENTWISE_MAPS:
                temp = temp_all[start:end]
            else:
                temp = temperature(temperature_correlation(zs, zt, "sample"))
                temp_all[start:end] = temp  # type: ignore[index]
            log_ps, log_pt = _chunk_log_probs(zs, zt, temp)
            if loss.ce_weight > 0:
                assert targets is not None
                ce_rows[start:end] = F.cross_entropy(zs, _take(targets, None, start, end),
                                                     reduction="none")
            kl_rows[start:end] = F.kl_div(log_ps, log_pt, reduction="none",
                                          log_target=True).sum(dim=1)
            t_rows[start:end] = temp.expand_as(log_ps).mean(dim=1)
            p_base = torch.softmax(zt / loss.temperature, dim=1)  # class confidences: base T
            part = p_base if cols is None else restrict_columns(p_base, cols, fold)
            cconf_sum = part.sum(dim=0) if cconf_sum is None else cconf_sum + part.sum(dim=0)
            if need_cols:
                cs_parts.append(log_ps.exp() if cols is None
                                else restrict_columns(log_ps, cols, fold, log=True))
                ct_parts.append(log_pt.exp() if cols is None
                                else restrict_columns(log_pt, cols, fold, log=True))
            if want_q:
                assert qs is not None and qt is not None
                lo, hi, sel = q_block(start)
                if hi > lo:  # written in place: no (rows, V) temporary
                    torch.index_select(log_ps, 0, sel, out=qs[lo:hi]).exp_()
                    torch.index_select(log_pt, 0, sel, out=qt[lo:hi]).exp_()
            del zs, zt, log_ps, log_pt, p_base, part  # not alive into the next chunk or pass 3
    assert cconf_sum is not None
    cconf = cconf_sum / n

    # statistics, exactly as LUDLoss.compute
    thr_s, thr_c = loss._thresholds(conf, cconf)
    direction, mtype, soft = loss.mask_direction, loss.mask_type, loss.mask_softness
    if conf.shape[0] == 1 and loss.threshold == "batch":
        smask = torch.ones_like(conf)
    else:
        smask = confidence_mask(conf, thr_s, direction, mtype, soft)  # type: ignore[arg-type]
    cmask = confidence_mask(cconf, thr_c, direction, mtype, soft)  # type: ignore[arg-type]
    ones_s, ones_c = torch.ones_like(conf), torch.ones_like(cconf)
    if loss.uncertainty_weighting:
        u = sample_weights(conf, loss.mask_options.weight_direction)
        v = confidence_weights(cconf)
    else:
        u, v = ones_s, ones_c

    terms: dict[str, Tensor] = {}
    stats: dict[str, Tensor] = {}
    ce_scale = loss.ce_weight / n
    if loss.ce_weight > 0:
        terms["ce"] = loss.ce_weight * ce_rows.mean()
    w_inst = u * (smask if loss.instance_mask else ones_s)
    inst_den = w_inst.sum().clamp_min(torch.finfo(w_inst.dtype).tiny)
    if loss.instance_weight > 0:
        terms["instance"] = loss.instance_weight * weighted_mean(t_rows.pow(2) * kl_rows, w_inst)

    # the rank terms on the small features; autograd gives their gradient w.r.t. the features
    ramp = linear_warmup(epoch, loss.rank_warmup)
    rkw = {"reduction": loss.gram_reduction, "method": loss.rank_method,
           "strength": loss.rank_strength, "backend": loss.rank_backend,
           "teacher_rank": loss.teacher_rank}
    rkw_rel = {k: x for k, x in rkw.items() if k != "reduction"}
    to_scale = _log_floor if loss.rank_scale == "log" else (lambda x: x)
    matched = loss.rank_grad_scale == "matched"

    def rank_term(fn, xs: Tensor, xt: Tensor, w: Tensor, kw: dict) -> tuple[Tensor, Tensor]:
        xs, xt = to_scale(xs), to_scale(xt)
        scale = matched_scale(xs, xt) if matched else None
        return fn(xs, xt, w, row_scale=scale, **kw)

    cs = torch.cat(cs_parts).requires_grad_(True) if need_cols else None
    ct = torch.cat(ct_parts) if need_cols else None
    cs_parts.clear()
    ct_parts.clear()  # the pieces are copied: free them
    # SDL sees qs only through its Gram matrix Gs = qs qs^T: Gs is the leaf, and the gradient
    # w.r.t. the SDL rows is (dL/dGs + dL/dGs^T) @ qs, formed per chunk in pass 3
    gram_s = gram_t = None
    if want_q:
        assert qs is not None and qt is not None
        with torch.no_grad():
            gram_t = qt @ qt.t()
            qt = None  # only qs is needed from here on
            gram_s = (qs @ qs.t()).requires_grad_(True)
    rank_terms: list[Tensor] = []
    with torch.enable_grad():
        if loss.cdl_weight > 0:
            assert cs is not None and ct is not None
            w = v * (cmask if loss.class_mask else ones_c)
            val, rho_c = rank_term(gram_correlation_loss, cs.t() @ cs, ct.t() @ ct, w, rkw)
            terms["cdl"] = ramp * loss.cdl_weight * val
            stats["rho_cdl"] = rho_c
        if loss.sdl_weight > 0:
            assert gram_s is not None and gram_t is not None
            w = u * (smask if loss.sample_mask else ones_s)
            if sdl_rows is not None:
                w = w[sdl_rows]
            val, rho_c = rank_term(gram_correlation_loss, gram_s, gram_t, w, rkw)
            terms["sdl"] = ramp * loss.sdl_weight * val
            stats["rho_sdl"] = rho_c
        n_classes = cconf.shape[0]
        rel = ramp * (n_classes / 10.0 if loss.relation_class_scale else 1.0)
        if loss.inter_weight > 0:
            assert cs is not None and ct is not None
            w = u * (smask if loss.relation_mask else ones_s)
            val, rho_c = rank_term(relation_rank_loss, cs, ct, w, rkw_rel)
            terms["inter"] = rel * loss.inter_weight * val
            stats["rho_inter"] = rho_c
        if loss.intra_weight > 0:
            assert cs is not None and ct is not None
            w = v * (cmask if loss.relation_mask else ones_c)
            val, rho_c = rank_term(relation_rank_loss, cs.t(), ct.t(), w, rkw_rel)
            terms["intra"] = rel * loss.intra_weight * val
            stats["rho_intra"] = rho_c
        rank_terms = [terms[k] for k in ("cdl", "sdl", "inter", "intra") if k in terms]
        g_cs = g_gram = None
        leaves = [x for x in (cs, gram_s) if x is not None]
        if with_grad and rank_terms and leaves:
            rank_sum = torch.stack([torch.as_tensor(x, device=device) for x in rank_terms]).sum()
            if rank_sum.requires_grad:
                grads = torch.autograd.grad(rank_sum, leaves, allow_unused=True)
                it = iter(grads)
                g_cs = next(it) if cs is not None else None
                g_gram = next(it) if gram_s is not None else None
    if g_gram is not None:
        g_gram = g_gram + g_gram.t()  # d<Gs, g>/d qs = (g + g^T) qs
    cs = ct = gram_s = gram_t = None  # pass 3 needs g_cs, g_gram and qs
    if g_gram is None:
        qs = None
    # pass 3: per chunk, the chain rule through the fixed statistics into the chunk's logits
    if with_grad and (loss.ce_weight > 0 or loss.instance_weight > 0 or g_cs is not None
                      or g_gram is not None):
        # the instance term is sum_i w_i T_i^2 KL_i / sum(w); dKL_i/dz_i = (p_s - p_t) / T_i
        w_inst_t2 = loss.instance_weight * w_inst * t_rows.pow(2) / inst_den
        for start in range(0, n, chunk):
            end = min(start + chunk, n)
            temp = fixed if mode == "off" else temp_all[start:end]  # type: ignore[index]
            g_rows = sel = None
            if g_gram is not None:
                lo, hi, sel = q_block(start)
                g_rows = g_gram[lo:hi]
            with torch.no_grad():
                grad = _chunk_gradient(
                    src.logits(start, end), teacher_rows, start, end, temp,
                    None if targets is None or loss.ce_weight <= 0 else targets[start:end],
                    ce_scale, w_inst_t2[start:end] if loss.instance_weight > 0 else None,
                    None if g_cs is None else g_cs[start:end], cols, fold,
                    g_rows, qs, sel)
            src.accumulate(start, end, grad)
            del grad  # not alive while the next chunk's logits are computed

    t_all = fixed if mode == "off" else temp_all
    assert t_all is not None
    stats.update(kept_samples=smask.mean(), kept_classes=cmask.mean(),
                 temperature_mean=t_all.mean(), temperature_min=t_all.min(),
                 temperature_max=t_all.max(), threshold=thr_s, confidence_mean=conf.mean())
    detached = {k: torch.as_tensor(x, device=device).detach().float() for k, x in terms.items()}
    out["terms"] = detached
    out["stats"] = {k: torch.as_tensor(x).detach().float() for k, x in stats.items()}
    return torch.stack(list(detached.values())).sum()


def _valid(targets: Tensor | None, n: int, classes: int, loss: LUDLoss) -> Tensor | None:
    """Indices of the valid tokens (``None``: all); one device sync, like LUDLoss's selection."""
    if targets is None:
        if loss.ce_weight > 0:
            raise ValueError("this LUD loss has ce_weight > 0: targets are required")
        return None
    _check_targets(targets, n, classes)
    keep = targets != IGNORE_INDEX
    return None if bool(keep.all()) else keep.nonzero().squeeze(1)


def _output(run_out: dict[str, Any], total: Tensor) -> LossOutput:
    return LossOutput(total=total, terms=run_out.get("terms", {}),
                      stat_tensors=run_out.get("stats", {}))


def _empty(*inputs: Tensor) -> LossOutput:
    zero = sum(x.sum() * 0.0 for x in inputs if x.requires_grad) if any(
        x.requires_grad for x in inputs) else torch.zeros(())
    return LossOutput(total=torch.as_tensor(zero).float(), terms={})


def chunked_lud_loss(
    loss: LUDLoss,
    student_logits: Tensor,
    teacher_logits: Tensor,
    targets: Tensor | None,
    epoch: Any = 0.0,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> LossOutput:
    """``loss(student_logits, teacher_logits, targets, epoch)`` computed in token chunks.

    ``loss`` is a :class:`~lud.losses.lud.LUDLoss` with ``category_top_k`` and/or
    ``sample_max_rows`` (see the module docstring); logits ``(N, V)``, targets ``(N,)`` with
    ``-100`` ignored. Holds the logits' gradient (computed in forward) but no other ``(N, V)``
    tensor beyond a chunk. ``total`` carries the gradient; ``terms`` are detached.
    """
    loss = check_chunkable_lud(loss)
    chunk = _check_chunk(chunk_size)
    if not isinstance(student_logits, Tensor) or student_logits.dim() != 2:
        _check_rows("student_logits", student_logits, -1)
    n, classes = student_logits.shape
    _check_rows("teacher_logits", teacher_logits, n, classes)
    rows = _valid(targets, n, classes, loss)
    if rows is not None and rows.numel() == 0:
        return _empty(student_logits)
    ep = as_epoch(epoch)
    y = targets if rows is None or targets is None else targets.index_select(0, rows)
    result: dict[str, Any] = {}

    def run(with_grad: bool) -> tuple[Tensor, tuple]:
        src = _LogitsSource(student_logits, with_grad, rows)
        total = _lud_run(loss, src, teacher_logits.detach(), rows, y, chunk, ep, with_grad, result)
        return total, src.grads()

    with torch.autocast(device_type=student_logits.device.type, enabled=False):
        total = _ChunkedLoss.apply(run, True, student_logits)
    return _output(result, total)


def fused_linear_lud_loss(
    loss: LUDLoss,
    hidden: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    teacher_logits: Tensor,
    targets: Tensor | None,
    epoch: Any = 0.0,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> LossOutput:
    """LUD on the logits ``hidden @ weight.T + bias``, never holding them whole.

    Shapes and dtypes as :func:`lud.losses.fused.fused_linear_token_loss`; ``loss`` as
    :func:`chunked_lud_loss`. The student logits of each chunk are computed twice (pass 2 and
    pass 3), three times with a batch-relative ``temperature_map``.
    """
    loss = check_chunkable_lud(loss)
    chunk = _check_chunk(chunk_size)
    if not isinstance(weight, Tensor) or weight.dim() != 2:
        raise ValueError("weight must be a 2-D (vocabulary, hidden) tensor")
    classes, width = weight.shape
    if not isinstance(hidden, Tensor) or hidden.dim() != 2:
        raise ValueError("hidden must be a 2-D (tokens, hidden) tensor")
    n = hidden.shape[0]
    _check_rows("hidden", hidden, n, width)
    if bias is not None and (not isinstance(bias, Tensor) or tuple(bias.shape) != (classes,)):
        raise ValueError(f"bias must have shape ({classes},)")
    _check_rows("teacher_logits", teacher_logits, n, classes)
    rows = _valid(targets, n, classes, loss)
    inputs = (hidden, weight) if bias is None else (hidden, weight, bias)
    if rows is not None and rows.numel() == 0:
        return _empty(*inputs)
    ep = as_epoch(epoch)
    y = targets if rows is None or targets is None else targets.index_select(0, rows)
    needs = (hidden.requires_grad, weight.requires_grad, bias is not None and bias.requires_grad)
    result: dict[str, Any] = {}

    def run(with_grad: bool) -> tuple[Tensor, tuple]:
        src = _LinearSource(hidden, weight, bias, needs if with_grad else (False,) * 3, rows)
        total = _lud_run(loss, src, teacher_logits.detach(), rows, y, chunk, ep, with_grad, result)
        gh, gw, gb = src.grads()
        return total, (gh, gw) if bias is None else (gh, gw, gb)

    with torch.autocast(device_type=hidden.device.type, enabled=False):
        total = _ChunkedLoss.apply(run, True, *inputs)
    return _output(result, total)
