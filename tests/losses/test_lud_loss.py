"""LUD loss against an independent numpy/scipy reference (explicit loops, scipy.stats.spearmanr)."""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.stats import rankdata, spearmanr

from lud.losses import build_loss, ranking
from lud.losses.lud import (
    LUDLoss,
    batch_quantile,
    category_spearman_loss,
    confidence_mask,
    dynamic_temperature,
    gram_correlation_loss,
    instance_kl,
    map_temperature,
    sample_spearman_loss,
)

torch.set_num_threads(1)
# The reference below implements the paper preset's defaults; the default preset is tested last.
PaperLUD = functools.partial(LUDLoss, preset="paper")
HAS_TORCHSORT = "torchsort" in ranking.available_backends()
SMALL = 1e-4  # rank strength at which soft ranks equal hard ranks on these inputs (z-scored rows)


# ----------------------------------------------------------------- numpy reference
def np_softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def np_log_softmax(x: np.ndarray) -> np.ndarray:
    m = x - x.max(axis=1, keepdims=True)
    return m - np.log(np.exp(m).sum(axis=1, keepdims=True))


def rho_s(a: np.ndarray, b: np.ndarray) -> float:
    """scipy Spearman; 0 where undefined (constant or length-1 vectors)."""
    if len(a) < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return 0.0
    return float(spearmanr(a, b).statistic)


def rho_p(a: np.ndarray, b: np.ndarray) -> float:
    if len(a) < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return 0.0
    return float(np.corrcoef(a, b)[0, 1])


def ref_temperature(zs, zt, mode, t_min, t_max, tmap, base=4.0):
    b, c = zs.shape
    if mode == "off":
        return np.full((b, c), base)
    row = np.array([rho_s(zs[i], zt[i]) for i in range(b)])
    col = np.array([rho_s(zs[:, j], zt[:, j]) for j in range(c)])
    # the map sees one value per sample ("sample"), per class ("class") or per entry ("full")
    if mode == "sample":
        return np.repeat(ref_map(row, t_min, t_max, tmap)[:, None], c, axis=1)
    if mode == "class":
        return np.repeat(ref_map(col, t_min, t_max, tmap)[None, :], b, axis=0)
    rho = np.zeros((b, c))
    for i in range(b):
        for j in range(c):
            rho[i, j] = (row[i] + col[j]) / 2
    return ref_map(rho, t_min, t_max, tmap)


def ref_map(rho, t_min, t_max, tmap):
    rho = np.asarray(rho, dtype=np.float64)
    if tmap == "paper":
        t = t_min + (t_max - t_min) * (1 - np.exp(-np.maximum(rho, 0)))
    elif tmap == "paper_normalized":
        t = t_min + (t_max - t_min) * (1 - np.exp(-np.maximum(rho, 0))) / (1 - np.exp(-1))
    elif tmap in ("released", "minmax"):
        lo, hi = rho.min(), rho.max()
        frac = (rho - lo) / (hi - lo) if hi > lo else 0.5 * np.ones_like(rho)
        t = t_min + (t_max - t_min) * (1 - frac if tmap == "released" else frac)
    else:  # batch quantile of rho: average ranks 1..n mapped onto [0, 1]
        n = rho.size
        frac = (rankdata(rho.ravel()).reshape(rho.shape) - 1) / (n - 1) if n > 1 else 0.5
        frac = frac * np.ones_like(rho)
        t = t_min + (t_max - t_min) * (1 - frac if tmap == "rank_inverse" else frac)
    return np.clip(t, t_min, t_max)


def ref_mask(conf, thr, direction, mask_type, softness=0.1):
    sign = 1.0 if direction == "confident" else -1.0
    if mask_type == "soft":
        return 1 / (1 + np.exp(-sign * (conf - thr) / (softness * conf.mean())))
    return (conf > thr if direction == "confident" else conf <= thr).astype(float)


def ref_gram_loss(gs, gt, w, reduction="row", method="soft"):
    """Weighted mean over rows of 1 - rho, or the flattened weighted rank correlation."""
    corr = rho_s if method == "soft" else rho_p
    if reduction == "row":
        rhos = np.array([corr(gs[r], gt[r]) for r in range(len(w))])
        return (np.sum(w * (1 - rhos)) / np.sum(w)) if np.sum(w) > 0 else 0.0
    keep = w > 0
    iu = np.triu_indices(int(keep.sum()))  # symmetric matrices: each entry once
    a, b = gs[np.ix_(keep, keep)][iu], gt[np.ix_(keep, keep)][iu]
    ew = np.outer(w[keep], w[keep])[iu]
    if method == "soft":
        a, b = rankdata(a), rankdata(b)
    ew = ew / ew.sum()
    da, db = a - (ew * a).sum(), b - (ew * b).sum()
    return 1 - (ew * da * db).sum() / np.sqrt((ew * da * da).sum() * (ew * db * db).sum())


def ref_rho_mean(gs, gt, w, reduction="row", method="soft"):
    """The reported rho: mean over rows with non-zero weight (flat: the one correlation)."""
    if reduction == "flat":
        return 1 - ref_gram_loss(gs, gt, w, reduction, method)
    corr = rho_s if method == "soft" else rho_p
    rows = [r for r in range(len(w)) if w[r] > 0]
    return float(np.mean([corr(gs[r], gt[r]) for r in rows])) if rows else 0.0


def ref_instance(zs, zt, temp, w):
    kl = np.zeros(len(zs))
    for i in range(len(zs)):
        ls = np_log_softmax(zs[i : i + 1] / temp[i : i + 1])[0]
        lt = np_log_softmax(zt[i : i + 1] / temp[i : i + 1])[0]
        kl[i] = temp[i].mean() ** 2 * np.sum(np.exp(lt) * (lt - ls))
    return np.sum(w * kl) / np.sum(w) if np.sum(w) > 0 else 0.0


def ref_lud(
    zs,
    zt,
    y,
    *,
    ce_weight=1.0,
    instance_weight=1.0,
    cdl_weight=1.0,
    sdl_weight=1.0,
    inter_weight=0.0,
    intra_weight=0.0,
    relation_mask=False,
    rank_scale="linear",
    rank_grad_scale="none",
    temperature=4.0,
    dynamic_temperature="sample",
    t_min=2.0,
    t_max=6.0,
    temperature_map="paper_normalized",
    mask_direction="confident",
    threshold="batch",
    quantile=0.5,
    fixed_threshold=0.5,
    mask_type="hard",
    mask_softness=0.1,
    sample_mask=True,
    class_mask=True,
    instance_mask=False,
    uncertainty_weighting=True,
    gram_reduction="row",
    rank_method="soft",
    running=None,
    **_,
):
    """Terms of the LUD loss, straight from the method description, in float64."""
    zs, zt = zs.astype(np.float64), zt.astype(np.float64)
    # Logits are defined up to a per-row constant; per-class temperatures are not, so the
    # method works on row-centred logits (a no-op for everything else, softmax ignores it).
    zs, zt = zs - zs.mean(axis=1, keepdims=True), zt - zt.mean(axis=1, keepdims=True)
    b, c = zs.shape
    p0 = np_softmax(zt / temperature)
    conf, cconf = p0.max(axis=1), p0.mean(axis=0)
    thr_s = {
        "batch": np.quantile(conf, quantile),
        "fixed": fixed_threshold,
        "running": running[0] if running else None,
    }[threshold]
    thr_c = running[1] if threshold == "running" else np.quantile(cconf, quantile)
    smask = (
        np.ones(b)
        if (b == 1 and threshold == "batch")
        else ref_mask(conf, thr_s, mask_direction, mask_type, mask_softness)
    )
    cmask = ref_mask(cconf, thr_c, mask_direction, mask_type, mask_softness)
    u = conf / conf.mean() if uncertainty_weighting else np.ones(b)
    v = cconf / cconf.mean() if uncertainty_weighting else np.ones(c)
    temp = ref_temperature(zs, zt, dynamic_temperature, t_min, t_max, temperature_map, temperature)
    ps, pt = np_softmax(zs / temp), np_softmax(zt / temp)
    terms, rhos = {}, {}
    if ce_weight:
        terms["ce"] = ce_weight * float(np.mean(-np_log_softmax(zs)[np.arange(b), y]))
    if instance_weight:
        terms["instance"] = instance_weight * ref_instance(
            zs, zt, temp, u * (smask if instance_mask else 1)
        )
    f = np.log if rank_scale == "log" else (lambda x: x)  # what the rank terms correlate

    def rank_loss(xs, xt, w, reduction):
        if rank_grad_scale == "none":
            return ref_gram_loss(xs, xt, w, reduction, rank_method)
        # matched: row r's 1 - rho times min(1, std(student row) / std(teacher row))
        corr = rho_s if rank_method == "soft" else rho_p
        k = np.minimum(1.0, xs.std(axis=1) / xt.std(axis=1))
        d = np.array([1 - corr(xs[r], xt[r]) for r in range(len(w))])
        return np.sum(w * k * d) / np.sum(w)

    if cdl_weight:
        w = v * (cmask if class_mask else 1)
        gs, gt = f(ps.T @ ps), f(pt.T @ pt)
        terms["cdl"] = cdl_weight * rank_loss(gs, gt, w, gram_reduction)
        rhos["rho_cdl"] = ref_rho_mean(gs, gt, w, gram_reduction, rank_method)
    if sdl_weight:
        w = u * (smask if sample_mask else 1)
        gs, gt = f(ps @ ps.T), f(pt @ pt.T)
        terms["sdl"] = sdl_weight * rank_loss(gs, gt, w, gram_reduction)
        rhos["rho_sdl"] = ref_rho_mean(gs, gt, w, gram_reduction, rank_method)
    ps, pt = f(ps), f(pt)
    if inter_weight:  # first-order: rows of P (samples), 1 - rho per row, weighted mean
        w = u * (smask if relation_mask else 1)
        terms["inter"] = inter_weight * rank_loss(ps, pt, w, "row")
        rhos["rho_inter"] = ref_rho_mean(ps, pt, w, "row", rank_method)
    if intra_weight:  # first-order: columns of P (classes over the batch)
        w = v * (cmask if relation_mask else 1)
        terms["intra"] = intra_weight * rank_loss(ps.T, pt.T, w, "row")
        rhos["rho_intra"] = ref_rho_mean(ps.T, pt.T, w, "row", rank_method)
    return terms, dict(
        kept_samples=smask.mean(),
        kept_classes=cmask.mean(),
        threshold=thr_s,
        confidence_mean=conf.mean(),
        temperature=temp,
        **rhos,
    )


def logits(b=12, c=7, seed=0, mix=0.3):
    g = torch.Generator().manual_seed(seed)
    zt = torch.randn(b, c, generator=g) * 2
    zs = mix * zt + torch.randn(b, c, generator=g)
    y = torch.randint(0, c, (b,), generator=g)
    return zs, zt, y


def run(loss, zs, zt, y):
    out = loss(zs, zt, y)
    return {k: float(v.detach()) for k, v in out.terms.items()}, out


# ----------------------------------------------------------------- pure pieces
def test_confidence_mask_batch_median_both_directions_and_ties():
    for b in (9, 10):
        conf = torch.rand(b, generator=torch.Generator().manual_seed(b)) * 0.5 + 0.1
        thr = float(np.quantile(conf.numpy(), 0.5))
        keep = confidence_mask(conf, torch.quantile(conf, 0.5), "confident")
        assert keep.tolist() == (conf.numpy() > thr).astype(float).tolist()
        assert int(keep.sum()) == b // 2  # strictly above the median
        unc = confidence_mask(conf, torch.quantile(conf, 0.5), "uncertain")
        assert (keep + unc).tolist() == [1.0] * b  # the two directions partition the rows
    tied = torch.full((6,), 0.3)
    assert confidence_mask(tied, torch.quantile(tied, 0.5), "confident").sum() == 0
    assert confidence_mask(tied, torch.quantile(tied, 0.5), "uncertain").sum() == 6


def test_batch_quantile_matches_numpy():
    g = torch.Generator().manual_seed(0)
    for n in (1, 2, 5, 10, 64):
        x = torch.rand(n, generator=g)
        for q in (0.0, 0.25, 0.5, 0.9, 1.0):
            assert float(batch_quantile(x, q)) == pytest.approx(
                float(np.quantile(x.numpy(), q)), rel=1e-6
            )


@pytest.mark.parametrize("direction", ["confident", "uncertain"])
def test_soft_mask_formula(direction):
    conf = torch.tensor([0.1, 0.2, 0.35, 0.5, 0.9])
    got = confidence_mask(conf, 0.3, direction, "soft", softness=0.2).numpy()
    np.testing.assert_allclose(
        got, ref_mask(conf.numpy().astype(float), 0.3, direction, "soft", 0.2), rtol=1e-5
    )
    assert ((got > 0) & (got < 1)).all()


@pytest.mark.parametrize("tmap", ["paper", "paper_normalized", "released", "minmax", "rank",
                                  "rank_inverse"])
def test_map_temperature_formula_and_range(tmap):
    rho = torch.linspace(-1, 1, 21)
    got = map_temperature(rho, 2.0, 6.0, tmap).numpy()
    np.testing.assert_allclose(got, ref_map(rho.numpy(), 2.0, 6.0, tmap), rtol=1e-5)
    assert got.min() >= 2.0 and got.max() <= 6.0
    if tmap == "paper_normalized":  # rho in [0, 1] spans exactly [t_min, t_max]
        assert got[10] == pytest.approx(2.0) and got[-1] == pytest.approx(6.0)
    if tmap == "paper":
        assert got[-1] == pytest.approx(2.0 + 4.0 * (1 - math.exp(-1)), rel=1e-5)
    if tmap in ("released", "rank_inverse"):  # most similar -> lowest T
        assert got[-1] == pytest.approx(2.0) and got[0] == pytest.approx(6.0)
    if tmap in ("minmax", "rank"):  # most similar -> highest T
        assert got[-1] == pytest.approx(6.0) and got[0] == pytest.approx(2.0)


@pytest.mark.parametrize("tmap", ["rank", "rank_inverse"])
def test_rank_map_spreads_a_clustered_batch_uniformly(tmap):
    # correlations bunched near 0.95 (the saturated regime): the rank map still uses the range
    rho = torch.tensor([0.95, 0.951, 0.949, 0.96, 0.955, 0.95])
    got = map_temperature(rho, 2.0, 6.0, tmap).numpy()
    ranks = rankdata(rho.numpy())  # the two 0.95 tie: both get rank 2.5
    frac = (ranks - 1) / 5
    want = 2.0 + 4.0 * (frac if tmap == "rank" else 1 - frac)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert map_temperature(torch.tensor([0.3]), 2.0, 6.0, tmap).item() == pytest.approx(4.0)


@pytest.mark.parametrize("mode", ["sample", "class", "full"])
@pytest.mark.parametrize("tmap", ["paper", "paper_normalized", "released", "minmax", "rank",
                                  "rank_inverse"])
def test_dynamic_temperature_matches_scipy(mode, tmap):
    zs, zt, _ = logits(b=6, c=5, seed=1)
    got = dynamic_temperature(zs, zt, mode, 2.0, 6.0, tmap).expand(6, 5).numpy()
    ref = ref_temperature(zs.numpy().astype(float), zt.numpy().astype(float), mode, 2.0, 6.0, tmap)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode", ["sample", "class", "full"])
@pytest.mark.parametrize("tmap", ["paper", "paper_normalized", "released", "rank"])
@pytest.mark.parametrize("shape", [(1, 5), (2, 2), (16, 10)])
def test_temperature_always_in_range(mode, tmap, shape):
    g = torch.Generator().manual_seed(3)
    zt = torch.randn(*shape, generator=g) * 5
    for zs in (-zt, zt, torch.randn(*shape, generator=g), torch.zeros(shape)):
        t = dynamic_temperature(zs, zt, mode, 1.5, 7.0, tmap)
        assert torch.isfinite(t).all() and t.min() >= 1.5 and t.max() <= 7.0
        assert not t.requires_grad


def test_instance_term_matches_reference():
    zs, zt, _ = logits(b=8, c=6, seed=2)
    temp = dynamic_temperature(zs, zt, "full", 2.0, 6.0, "paper_normalized")
    w = torch.rand(8, generator=torch.Generator().manual_seed(0))
    got = float(instance_kl(zs, zt, temp, w))
    ref = ref_instance(
        zs.double().numpy(),
        zt.double().numpy(),
        temp.expand(8, 6).double().numpy(),
        w.double().numpy(),
    )
    assert got == pytest.approx(ref, rel=1e-4)


@pytest.mark.parametrize("fn", ["cdl", "sdl"])
@pytest.mark.parametrize("reduction", ["row", "flat"])
@pytest.mark.parametrize("method", ["soft", "pearson"])
def test_gram_spearman_terms_match_scipy(fn, reduction, method):
    zs, zt, _ = logits(b=8, c=6, seed=4)
    n = 6 if fn == "cdl" else 8
    w = torch.rand(n, generator=torch.Generator().manual_seed(1)) * (torch.arange(n) % 3 != 0)
    f = category_spearman_loss if fn == "cdl" else sample_spearman_loss
    got, _ = f(zs, zt, 3.0, w, reduction=reduction, method=method, strength=SMALL)
    ps, pt = np_softmax(zs.double().numpy() / 3), np_softmax(zt.double().numpy() / 3)
    gs, gt = (ps.T @ ps, pt.T @ pt) if fn == "cdl" else (ps @ ps.T, pt @ pt.T)
    assert float(got) == pytest.approx(
        ref_gram_loss(gs, gt, w.double().numpy(), reduction, method), abs=1e-3
    )


@pytest.mark.parametrize("reduction", ["row", "flat"])
@pytest.mark.parametrize("method", ["soft", "pearson"])
def test_gram_loss_is_scale_free(reduction, method):
    """Gram entries of a 1000-class batch are ~1e-6: correlations must not underflow."""
    g = torch.Generator().manual_seed(5)
    x = torch.rand(8, 8, generator=g)
    gs, gt = x @ x.t(), (x + 0.3 * torch.rand(8, 8, generator=g)) @ x.t()
    w = torch.rand(8, generator=g)
    ref, _ = gram_correlation_loss(gs, gt, w, reduction=reduction, method=method)
    small, _ = gram_correlation_loss(gs * 1e-6, gt * 1e-6, w, reduction=reduction, method=method)
    assert 0.01 < float(ref) < 1.99
    assert float(small) == pytest.approx(float(ref), rel=1e-4)


# ----------------------------------------------------------------- the module against the reference
# options beyond the paper (temperature maps, first-order terms, rank and gradient scale): checked
# against the reference, for gradients reaching the student, and on constant logits
OPTION_CONFIGS = [
    {"temperature_map": "rank"},
    {"temperature_map": "rank_inverse", "dynamic_temperature": "full"},
    {"temperature_map": "minmax", "dynamic_temperature": "class"},
    {"inter_weight": 1.5, "intra_weight": 0.5},
    {"inter_weight": 1.0, "intra_weight": 2.0, "relation_mask": True, "rank_method": "pearson"},
    {"inter_weight": 1.0, "cdl_weight": 0.0, "sdl_weight": 0.0, "mask_direction": "uncertain",
     "relation_mask": True},
    {"rank_scale": "log", "inter_weight": 1.0, "intra_weight": 1.0},
    {"rank_scale": "log", "rank_method": "pearson", "inter_weight": 2.0, "intra_weight": 1.0},
    {"rank_scale": "log", "rank_method": "pearson", "gram_reduction": "flat"},
    {"rank_grad_scale": "matched", "inter_weight": 1.0, "intra_weight": 1.0},
    {"rank_grad_scale": "matched", "rank_scale": "log", "rank_method": "pearson",
     "inter_weight": 1.0},
]

CONFIGS = [
    {},
    {"mask_direction": "uncertain"},
    {"mask_type": "soft", "mask_softness": 0.3},
    {
        "mask_type": "soft",
        "mask_direction": "uncertain",
        "threshold": "fixed",
        "fixed_threshold": 0.3,
    },
    {"threshold": "fixed", "fixed_threshold": 0.35},
    {"quantile": 0.25, "uncertainty_weighting": False},
    {"dynamic_temperature": "off", "temperature": 3.0},
    {"dynamic_temperature": "class", "temperature_map": "paper"},
    {"dynamic_temperature": "full", "temperature_map": "released"},
    {"instance_mask": True, "sample_mask": False, "class_mask": False},
    {"gram_reduction": "flat"},
    *OPTION_CONFIGS,
    {
        "rank_method": "pearson",
        "cdl_weight": 2.0,
        "sdl_weight": 0.5,
        "instance_weight": 0.3,
        "ce_weight": 0.1,
    },
]


@pytest.mark.parametrize(
    "cfg", CONFIGS, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()) or "default"
)
def test_module_matches_reference(cfg):
    zs, zt, y = logits(b=12, c=7, seed=5)
    terms, out = run(PaperLUD(rank_strength=SMALL, **cfg), zs, zt, y)
    ref, rstats = ref_lud(zs.numpy(), zt.numpy(), y.numpy(), **cfg)
    assert set(terms) == set(ref)
    for k in ref:
        assert terms[k] == pytest.approx(ref[k], abs=1e-3), k
    assert float(out.total) == pytest.approx(sum(terms.values()), rel=1e-6)
    s = out.stats
    assert s["kept_samples"] == pytest.approx(rstats["kept_samples"], abs=1e-5)
    assert s["kept_classes"] == pytest.approx(rstats["kept_classes"], abs=1e-5)
    assert s["threshold"] == pytest.approx(rstats["threshold"], rel=1e-5)
    assert s["confidence_mean"] == pytest.approx(rstats["confidence_mean"], rel=1e-5)
    assert s["temperature_mean"] == pytest.approx(rstats["temperature"].mean(), rel=1e-5)
    assert s["temperature_min"] == pytest.approx(rstats["temperature"].min(), rel=1e-5)
    assert s["temperature_max"] == pytest.approx(rstats["temperature"].max(), rel=1e-5)
    for k in ("rho_cdl", "rho_sdl", "rho_inter", "rho_intra"):
        assert (k in s) == (k in rstats), k
        if k in rstats:
            assert s[k] == pytest.approx(rstats[k], abs=1e-3), k


def test_default_strength_close_to_scipy():
    zs, zt, y = logits(b=16, c=10, seed=15)
    terms, _ = run(PaperLUD(), zs, zt, y)
    ref, _ = ref_lud(zs.numpy(), zt.numpy(), y.numpy())
    for k in ref:
        assert terms[k] == pytest.approx(ref[k], abs=2e-2), k


def test_hard_mask_keeps_exactly_the_rule_rows():
    """SDL/CDL equal the unweighted mean of 1 - rho over exactly the rows the rule keeps."""
    zs, zt, _ = logits(b=10, c=6, seed=6)
    zs_n, zt_n = zs.double().numpy(), zt.double().numpy()
    temp = ref_temperature(zs_n, zt_n, "sample", 2.0, 6.0, "paper_normalized")
    ps, pt = np_softmax(zs_n / temp), np_softmax(zt_n / temp)
    p0 = np_softmax(zt_n / 4)
    grams = {
        "sdl": (ps @ ps.T, pt @ pt.T, np.argsort(p0.max(1))),
        "cdl": (ps.T @ ps, pt.T @ pt, np.argsort(p0.mean(0))),
    }
    for direction in ("confident", "uncertain"):
        loss = PaperLUD(
            mask_direction=direction,
            ce_weight=0,
            instance_weight=0,
            uncertainty_weighting=False,
            rank_strength=SMALL,
        )
        out = loss(zs, zt)
        for term, (gs, gt, order) in grams.items():
            half = len(order) // 2  # even sizes, no ties: the median splits them in two halves
            rows = order[half:] if direction == "confident" else order[:half]
            ref = np.mean([1 - rho_s(gs[r], gt[r]) for r in rows])
            assert float(out.terms[term]) == pytest.approx(ref, abs=1e-3), (direction, term)
        assert out.stats["kept_samples"] == 0.5 and out.stats["kept_classes"] == 0.5


# ----------------------------------------------------------------- running threshold
@pytest.mark.parametrize(
    "mask", [{}, {"mask_type": "soft", "mask_direction": "uncertain", "mask_softness": 0.2}]
)
def test_running_threshold_ema_train_only_and_state_dict(mask):
    loss = PaperLUD(threshold="running", threshold_momentum=0.9, rank_strength=SMALL, **mask)
    batches = [logits(b=10, c=6, seed=s) for s in (10, 11, 12)]
    qs = [np.quantile(np_softmax(zt.double().numpy() / 4).max(1), 0.5) for _, zt, _ in batches]
    qc = [np.quantile(np_softmax(zt.double().numpy() / 4).mean(0), 0.5) for _, zt, _ in batches]
    # eval before any training: batch quantile, buffers untouched
    loss.eval()
    out = loss(*batches[0])
    assert out.stats["threshold"] == pytest.approx(qs[0], rel=1e-5)
    assert not bool(loss.running_threshold_initialized)
    loss.train()
    loss(*batches[0])
    assert float(loss.running_sample_threshold) == pytest.approx(qs[0], rel=1e-5)
    out = loss(*batches[1])
    ema_s, ema_c = 0.9 * qs[0] + 0.1 * qs[1], 0.9 * qc[0] + 0.1 * qc[1]
    assert out.stats["threshold"] == pytest.approx(ema_s, rel=1e-5)
    assert float(loss.running_class_threshold) == pytest.approx(ema_c, rel=1e-5)
    # eval: uses the running values and does not update them
    loss.eval()
    terms, out = run(loss, *batches[2])
    assert float(loss.running_sample_threshold) == pytest.approx(ema_s, rel=1e-5)
    ref, rstats = ref_lud(
        *(t.numpy() for t in batches[2]), threshold="running", running=(ema_s, ema_c), **mask
    )
    for k in ref:
        assert terms[k] == pytest.approx(ref[k], abs=1e-3)
    for k in ("kept_samples", "kept_classes"):
        assert out.stats[k] == pytest.approx(rstats[k], abs=1e-5)
    # round trip
    other = PaperLUD(threshold="running", rank_strength=SMALL, **mask)
    other.load_state_dict(loss.state_dict())
    other.eval()
    assert float(other(*batches[2]).total) == pytest.approx(float(out.total), rel=1e-6)
    assert set(loss.state_dict()) == {
        "running_sample_threshold",
        "running_class_threshold",
        "running_threshold_initialized",
    }


# ----------------------------------------------------------------- optimum, switches, gradients
@pytest.mark.parametrize("teacher_rank", ["soft", "hard"])
def test_student_equals_teacher_is_minimum(teacher_rank):
    _, zt, y = logits(b=16, c=10, seed=7)
    loss = PaperLUD(ce_weight=0, instance_weight=0, teacher_rank=teacher_rank)
    zs = zt.clone().requires_grad_()
    out = loss(zs, zt, y)
    out.total.backward()
    zr = torch.randn_like(zt).requires_grad_()  # a random student: far from the minimum
    far = loss(zr, zt, y)
    far.total.backward()
    cdl, sdl = float(out.terms["cdl"].detach()), float(out.terms["sdl"].detach())
    if teacher_rank == "soft":  # identical soft ranks on both sides: rho = 1 exactly
        assert cdl == pytest.approx(0.0, abs=1e-6) and sdl == pytest.approx(0.0, abs=1e-6)
        assert zs.grad.norm() < 1e-5
    else:  # soft student ranks vs hard teacher ranks: s == t is near, not exactly at, the optimum
        assert 0 <= cdl < 0.03 and 0 <= sdl < 0.03
        assert zs.grad.norm() < 0.2 * zr.grad.norm()
    assert float(far.terms["cdl"].detach()) > 0.3 and float(far.terms["sdl"].detach()) > 0.3
    o = PaperLUD(ce_weight=0, instance_weight=0, rank_method="pearson")(zt, zt)
    assert float(o.total) == pytest.approx(0.0, abs=1e-6)


def test_switches_remove_terms():
    zs, zt, y = logits(seed=8)
    full, out = run(PaperLUD(), zs, zt, y)
    assert set(full) == {"ce", "instance", "cdl", "sdl"}
    assert float(out.total) == pytest.approx(sum(full.values()), rel=1e-6)
    for name, kw in (
        ("ce", "ce_weight"),
        ("instance", "instance_weight"),
        ("cdl", "cdl_weight"),
        ("sdl", "sdl_weight"),
    ):
        terms, o = run(PaperLUD(**{kw: 0.0}), zs, zt, y)
        assert name not in terms and set(terms) == set(full) - {name}
        assert float(o.total) == pytest.approx(float(out.total) - full[name], rel=1e-5)
    # other switches change the value of their term, not the set of terms
    for kw, affected in (
        ({"sample_mask": False}, "sdl"),
        ({"class_mask": False}, "cdl"),
        ({"instance_mask": True}, "instance"),
        ({"uncertainty_weighting": False}, "instance"),
        ({"dynamic_temperature": "off"}, "sdl"),
        ({"standardize": True}, "cdl"),
    ):
        terms, _ = run(PaperLUD(**kw), zs, zt, y)
        assert set(terms) == set(full) and terms[affected] != pytest.approx(
            full[affected], rel=1e-4
        ), kw


def test_ce_only_equals_cross_entropy():
    zs, zt, y = logits(seed=9)
    out = PaperLUD(instance_weight=0, cdl_weight=0, sdl_weight=0)(zs, zt, y)
    assert set(out.terms) == {"ce"}
    assert float(out.total) == pytest.approx(float(F.cross_entropy(zs, y)), rel=1e-6)


def test_standardize_matches_reference_on_zscored_logits():
    zs, zt, y = logits(b=10, c=6, seed=13)
    terms, _ = run(PaperLUD(standardize=True, rank_strength=SMALL), zs, zt, y)
    def z(x):
        return (x - x.mean(1, keepdims=True)) / x.std(1, ddof=1, keepdims=True)

    ref, _ = ref_lud(z(zs.double().numpy()), z(zt.double().numpy()), y.numpy())
    ref["ce"] = float(F.cross_entropy(zs, y))  # CE stays on the raw logits
    for k in ref:
        assert terms[k] == pytest.approx(ref[k], abs=1e-3), k


def test_gradients_reach_student_only():
    zs, zt, y = logits(b=16, c=10, seed=10)
    zs.requires_grad_()
    zt.requires_grad_()
    for cfg in (
        {},
        {"mask_type": "soft"},
        {"gram_reduction": "flat"},
        *OPTION_CONFIGS,
        {"dynamic_temperature": "full"},
    ):
        zs.grad = None
        out = PaperLUD(**cfg)(zs, zt, y)
        assert out.total.dtype == torch.float32
        for k, v in out.terms.items():  # each term on its own reaches the student
            (g,) = torch.autograd.grad(v, zs, retain_graph=True)
            assert torch.isfinite(g).all() and g.abs().sum() > 0, (cfg, k)
        out.total.backward()
        assert torch.isfinite(zs.grad).all() and zs.grad.abs().sum() > 0
        assert zt.grad is None


# ----------------------------------------------------------------- degenerate inputs
@pytest.mark.parametrize("shape", [(1, 10), (2, 10), (8, 2), (3, 3)])
@pytest.mark.parametrize("threshold", ["batch", "running", "fixed"])
def test_degenerate_shapes_finite(shape, threshold):
    g = torch.Generator().manual_seed(11)
    zs = torch.randn(*shape, generator=g).requires_grad_()
    zt = torch.randn(*shape, generator=g)
    y = torch.randint(0, shape[1], (shape[0],), generator=g)
    out = PaperLUD(threshold=threshold, dynamic_temperature="full")(zs, zt, y)
    out.total.backward()
    assert torch.isfinite(out.total) and torch.isfinite(zs.grad).all()
    for extra in ({"inter_weight": 1.0, "intra_weight": 1.0},
                  {"inter_weight": 1.0, "intra_weight": 1.0, "rank_scale": "log",
                   "temperature_map": "rank"}):
        zs.grad = None
        o2 = PaperLUD(threshold=threshold, **extra)(zs, zt * 50, y)  # peaked teacher: log floor
        o2.total.backward()
        assert torch.isfinite(o2.total) and torch.isfinite(zs.grad).all()
        if shape[0] == 1:
            assert o2.terms["intra"] == 0  # a column of one sample has nothing to rank
    assert all(0.0 <= out.stats[k] <= 1.0 for k in ("kept_samples", "kept_classes"))
    if shape[0] == 1:
        assert out.terms["sdl"] == 0  # a 1x1 Gram matrix has nothing to rank
        if threshold == "batch":
            assert out.stats["kept_samples"] == 1.0


def test_constant_logits_finite():
    zs = torch.zeros(6, 5, requires_grad=True)
    zt = torch.full((6, 5), 3.0)
    y = torch.zeros(6, dtype=torch.long)
    for cfg in (
        {},
        {"mask_direction": "uncertain"},
        {"mask_type": "soft"},
        {"gram_reduction": "flat"},
        *OPTION_CONFIGS,
        {"standardize": True},
        {"temperature_map": "released"},
    ):
        zs.grad = None
        out = PaperLUD(**cfg)(zs, zt, y)
        out.total.backward()
        assert torch.isfinite(out.total) and torch.isfinite(zs.grad).all(), cfg
        assert all(math.isfinite(v) for v in out.stats.values())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_inputs_give_fp32(dtype):
    zs, zt, y = logits(b=8, c=10, seed=12)
    zs = zs.to(dtype).requires_grad_()
    out = PaperLUD()(zs, zt.to(dtype), y)
    assert out.total.dtype == torch.float32 and torch.isfinite(out.total)
    out.total.backward()
    assert zs.grad.dtype == dtype and torch.isfinite(zs.grad.float()).all()


def test_autocast_bf16():
    zs, zt, y = logits(b=8, c=10, seed=12)
    lin = torch.nn.Linear(10, 10)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        s = lin(zs)
        out = PaperLUD()(s, zt, y)
    assert out.total.dtype == torch.float32 and torch.isfinite(out.total)
    out.total.backward()
    assert torch.isfinite(lin.weight.grad).all()


# ----------------------------------------------------------------- validation and stats
def test_bad_input_raises():
    zs, zt, y = logits(b=4, c=5)
    loss = PaperLUD()
    with pytest.raises(ValueError, match="class-count"):
        loss(zs, zt[:, :4], y)
    with pytest.raises(ValueError, match="batch-size"):
        loss(zs, zt[:3], y)
    with pytest.raises(ValueError, match="NaN"):
        loss(zs, zt.clone().fill_(float("nan")), y)
    with pytest.raises(ValueError, match="needs teacher_logits"):
        loss(zs, None, y)
    with pytest.raises(ValueError, match="needs targets"):
        loss(zs, zt, None)
    assert torch.isfinite(PaperLUD(ce_weight=0)(zs, zt).total)  # no CE: targets optional


@pytest.mark.parametrize(
    "kw,msg",
    [
        ({"t_min": 5.0, "t_max": 3.0}, "t_min"),
        ({"t_min": 0.0}, "t_min"),
        ({"temperature": -1.0}, "temperature"),
        ({"cdl_weight": -0.1}, "cdl_weight"),
        ({"sdl_weight": float("nan")}, "sdl_weight"),
        ({"dynamic_temperature": "rows"}, "dynamic_temperature"),
        ({"temperature_map": "paper_norm"}, "temperature_map"),
        ({"mask_direction": "confidentt"}, "mask_direction"),
        ({"threshold": "ema"}, "threshold"),
        ({"quantile": 1.5}, "quantile"),
        ({"threshold_momentum": 1.0}, "threshold_momentum"),
        ({"fixed_threshold": 2.0}, "fixed_threshold"),
        ({"mask_type": "fuzzy"}, "mask_type"),
        ({"mask_softness": 0.0}, "mask_softness"),
        ({"sample_mask": 1}, "sample_mask"),
        ({"gram_reduction": "mean"}, "gram_reduction"),
        ({"rank_method": "kendall"}, "rank_method"),
        ({"rank_strength": 0.0}, "rank_strength"),
        ({"rank_backend": "cuda"}, "rank_backend"),
        (
            {"rank_backend": "torchsort"} if not HAS_TORCHSORT else {"t_min": -1.0},
            "torchsort|t_min",
        ),
        ({"teacher_rank": "none"}, "teacher_rank"),
        ({"rank_scale": "ln"}, "rank_scale"),
        ({"rank_grad_scale": "std"}, "rank_grad_scale"),
        ({"rank_grad_scale": "matched", "gram_reduction": "flat"}, "gram_reduction"),
        ({"rank_warmup": -1.0}, "rank_warmup"),
        ({"inter_weight": -1.0}, "inter_weight"),
        ({"intra_weight": float("inf")}, "intra_weight"),
        ({"relation_mask": "yes"}, "relation_mask"),
        (
            {"ce_weight": 0, "instance_weight": 0, "cdl_weight": 0, "sdl_weight": 0},
            "nothing to compute",
        ),
    ],
)
def test_invalid_params(kw, msg):
    with pytest.raises(ValueError, match=msg):
        PaperLUD(**kw)


def test_registry_and_stats():
    loss = build_loss("lud", cdl_weight=0.5)
    assert isinstance(loss, LUDLoss)
    with pytest.raises(ValueError, match="unknown parameter"):
        build_loss("lud", cdl_weigth=0.5)
    zs, zt, y = logits(b=16, c=10, seed=14)
    s = loss(zs, zt, y).stats
    assert set(s) >= {
        "kept_samples",
        "kept_classes",
        "temperature_mean",
        "temperature_min",
        "temperature_max",
        "rho_cdl",
        "rho_sdl",
        "threshold",
        "confidence_mean",
    }
    assert s["kept_samples"] == 0.5 and s["kept_classes"] == 0.5
    assert 2.0 <= s["temperature_min"] <= s["temperature_mean"] <= s["temperature_max"] <= 6.0
    assert -1 <= s["rho_cdl"] <= 1 and -1 <= s["rho_sdl"] <= 1
    assert 1 / 10 <= s["confidence_mean"] <= 1


# --------------------------------------------------------------------------- torch.compile
def _compile_inputs(b=16, c=12, seed=40):
    g = torch.Generator().manual_seed(seed)
    t = torch.randn(b, c, generator=g) * 3
    return t + torch.randn(b, c, generator=g), t, torch.randint(0, c, (b,), generator=g)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["linear", "pairwise"])
def test_lud_traces_without_graph_breaks(backend):
    """One graph for the whole loss (validate=False: validation reads values back by design)."""
    dynamo = pytest.importorskip("torch._dynamo")
    s, t, y = _compile_inputs()
    loss = build_loss("lud", rank_backend=backend, validate=False)
    dynamo.reset()
    explained = dynamo.explain(lambda s, t, y: loss(s, t, y).total)(s.requires_grad_(True), t, y)
    assert explained.graph_break_count == 0, [b.reason for b in explained.break_reasons]
    assert explained.graph_count == 1


@pytest.mark.slow
def test_lud_fullgraph_compile_matches_eager_values_and_gradients():
    """fullgraph=True forward+backward, custom autograd Functions included; the aot_eager
    backend traces the graphs Inductor would get, without its C++ build (~1.5 min on this CPU)."""
    dynamo = pytest.importorskip("torch._dynamo")
    s0, t, y = _compile_inputs()
    loss = build_loss("lud", rank_backend="linear", validate=False)
    dynamo.reset()
    compiled = torch.compile(lambda s, t, y: loss(s, t, y).total, fullgraph=True,
                             backend="aot_eager")
    grads = []
    for fn in (compiled, lambda s, t, y: loss(s, t, y).total):
        s = s0.clone().requires_grad_(True)
        value = fn(s, t, y)
        value.backward()
        grads.append((value.detach(), s.grad))
    torch.testing.assert_close(grads[0][0], grads[1][0], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(grads[0][1], grads[1][1], rtol=1e-5, atol=1e-7)
    assert grads[1][1].abs().sum() > 0


def test_rank_warmup_ramps_rank_terms_only():
    zs, zt, y = logits(b=12, c=7, seed=21)
    kw = {"inter_weight": 1.0, "intra_weight": 1.0}
    full, _ = run(PaperLUD(**kw), zs, zt, y)
    loss = PaperLUD(rank_warmup=4.0, **kw)
    for epoch, frac in ((0.0, 0.0), (1.0, 0.25), (3.0, 0.75), (4.0, 1.0), (9.0, 1.0)):
        got = {k: float(v) for k, v in loss(zs, zt, y, epoch=epoch).terms.items()}
        for k in ("ce", "instance"):
            assert got[k] == pytest.approx(full[k], rel=1e-6)
        for k in ("cdl", "sdl", "inter", "intra"):
            assert got[k] == pytest.approx(frac * full[k], rel=1e-6, abs=1e-9), (k, epoch)


def test_matched_scale_bounds_the_gradient_of_a_flat_student():
    # a nearly flat student (tiny logits, as at initialisation): without the matched scale the
    # correlation gradient grows like 1/scale; with it the gradient stays bounded
    g = torch.Generator().manual_seed(22)
    zt = torch.randn(32, 20, generator=g) * 3
    base = torch.randn(32, 20, generator=g)
    y = torch.randint(0, 20, (32,), generator=g)
    kw = {"ce_weight": 0.0, "instance_weight": 0.0, "inter_weight": 1.0, "intra_weight": 1.0,
          "dynamic_temperature": "off", "rank_method": "pearson"}
    norms = {}
    for mode in ("none", "matched"):
        for scale in (1.0, 1e-3):
            zs = (base * scale).requires_grad_()
            PaperLUD(rank_grad_scale=mode, **kw)(zs, zt, y).total.backward()
            norms[mode, scale] = float(zs.grad.norm())
    assert norms["none", 1e-3] > 100 * norms["none", 1.0]  # the explosion
    assert norms["matched", 1e-3] < 2 * norms["matched", 1.0]  # bounded


# today's (pre-preset) defaults, written out: preset="paper" must reproduce them exactly
PAPER_VALUES = {
    "ce_weight": 1.0, "instance_weight": 1.0, "cdl_weight": 1.0, "sdl_weight": 1.0,
    "inter_weight": 0.0, "intra_weight": 0.0, "relation_mask": False, "rank_scale": "linear",
    "relation_class_scale": False,
    "rank_grad_scale": "none", "rank_warmup": 0.0, "temperature": 4.0,
    "dynamic_temperature": "sample", "t_min": 2.0, "t_max": 6.0,
    "temperature_map": "paper_normalized", "mask_direction": "confident", "threshold": "batch",
    "quantile": 0.5, "mask_type": "hard", "sample_mask": True, "class_mask": True,
    "instance_mask": False, "uncertainty_weighting": True, "gram_reduction": "row",
    "rank_method": "soft", "rank_strength": 0.1, "teacher_rank": "hard", "standardize": False,
}


def test_paper_preset_reproduces_the_original_defaults():
    paper = LUDLoss(preset="paper")
    for k, v in PAPER_VALUES.items():
        assert getattr(paper, k) == v, k
    zs, zt, y = logits(b=16, c=10, seed=30)
    got, _ = run(LUDLoss(preset="paper", rank_backend="pairwise"), zs, zt, y)
    want, _ = run(LUDLoss(rank_backend="pairwise", **PAPER_VALUES), zs, zt, y)
    assert got == want  # bit-identical
    ref, _ = ref_lud(zs.numpy(), zt.numpy(), y.numpy())  # ref_lud's defaults are the paper's
    for k in ref:
        assert got[k] == pytest.approx(ref[k], abs=2e-2), k


def test_preset_values_yield_to_explicit_arguments():
    loss = LUDLoss(preset="paper", inter_weight=2.0, rank_warmup=1.0)
    assert loss.inter_weight == 2.0 and loss.rank_warmup == 1.0 and loss.cdl_weight == 1.0
    with pytest.raises(ValueError, match="preset"):
        LUDLoss(preset="cifar")


@pytest.mark.parametrize("c", [3, 10, 40])
def test_relation_class_scale_multiplies_relation_terms_by_c_over_10(c):
    zs, zt, y = logits(b=12, c=c, seed=31)
    kw = {"inter_weight": 1.5, "intra_weight": 0.5, "rank_warmup": 0.0}
    plain, _ = run(PaperLUD(relation_class_scale=False, **kw), zs, zt, y)
    scaled, _ = run(PaperLUD(relation_class_scale=True, **kw), zs, zt, y)
    for k in plain:
        factor = c / 10 if k in ("inter", "intra") else 1.0
        assert scaled[k] == pytest.approx(factor * plain[k], rel=1e-6), k


def test_default_preset_values_and_reference():
    loss = build_loss("lud")
    assert loss.preset == "default"
    assert (loss.inter_weight, loss.intra_weight, loss.rank_warmup) == (3.2, 3.2, 2.0)
    assert loss.relation_class_scale and loss.rank_grad_scale == "none"
    for k in ("ce_weight", "instance_weight", "cdl_weight", "sdl_weight", "temperature",
              "dynamic_temperature", "temperature_map", "rank_strength"):
        assert getattr(loss, k) == PAPER_VALUES[k], k
    zs, zt, y = logits(b=12, c=7, seed=32)
    got = {k: float(v) for k, v in LUDLoss(rank_strength=SMALL)(zs, zt, y, epoch=3.0).terms.items()}
    ref, _ = ref_lud(zs.numpy(), zt.numpy(), y.numpy(), inter_weight=3.2 * 7 / 10,
                     intra_weight=3.2 * 7 / 10)
    assert set(got) == set(ref)
    for k in ref:
        assert got[k] == pytest.approx(ref[k], abs=1e-3), k
    early = {k: float(v) for k, v in LUDLoss(rank_strength=SMALL)(zs, zt, y, epoch=0.5).terms.items()}
    for k in ("cdl", "sdl", "inter", "intra"):  # a quarter of the way through the warm-up
        assert early[k] == pytest.approx(0.25 * got[k], rel=1e-6), k


def test_lud_paper_is_the_paper_preset_under_its_own_name():
    """``lud-paper`` = ``lud`` with ``preset="paper"`` (values, gradients, parameter checks)."""
    zs, zt, y = logits(b=12, c=7, seed=5)
    for params in ({}, {"cdl_weight": 2.0, "t_max": 4.0}):
        named = build_loss("lud-paper", **params)
        preset = build_loss("lud", preset="paper", **params)
        assert named.preset == "paper" and named.inter_weight == 0.0
        a, b = (zs.clone().requires_grad_(True) for _ in range(2))
        out_a, out_b = named(a, zt, y, epoch=3.0), preset(b, zt, y, epoch=3.0)
        torch.testing.assert_close(out_a.total, out_b.total, rtol=0, atol=0)
        out_a.total.backward()
        out_b.total.backward()
        torch.testing.assert_close(a.grad, b.grad, rtol=0, atol=0)
    default = build_loss("lud")
    assert default.inter_weight > 0  # the improved default is another loss
    assert build_loss("lud-paper", preset="default").inter_weight == default.inter_weight
    with pytest.raises(ValueError, match="cdl_wieght"):
        build_loss("lud-paper", cdl_wieght=1.0)


# ----------------------------------------------------------------- the option groups
def test_every_keyword_lives_in_exactly_one_option_group_with_the_same_default():
    import dataclasses
    import inspect

    from lud.losses.lud import OPTION_GROUPS, PRESETS

    params = inspect.signature(LUDLoss.__init__).parameters
    options = [p for p in params if p not in ("self", "preset", "validate", "gather")]
    owners = {}
    for attr, group in OPTION_GROUPS.items():
        for f in dataclasses.fields(group):
            assert f.name not in owners, f"{f.name} in {owners.get(f.name)} and {attr}"
            owners[f.name] = attr
            default = params[f.name].default
            # a preset-dependent keyword defaults to None; its group holds the default preset's value
            want = PRESETS["default"][f.name] if default is None and f.name in PRESETS["default"] else default
            assert f.default == want, f.name
    assert sorted(owners) == sorted(options)


def test_options_are_frozen_groups_read_flat():
    import dataclasses

    loss = LUDLoss(cdl_weight=2, temperature_map="rank", category_top_k=8, sample_max_rows=16)
    assert loss.weight_options.cdl_weight == loss.cdl_weight == 2.0
    assert isinstance(loss.cdl_weight, float)  # checked values are stored as floats, as before
    assert loss.temperature_options.temperature_map == loss.temperature_map == "rank"
    assert (loss.category_top_k, loss.sample_max_rows) == (8, 16)
    with pytest.raises(dataclasses.FrozenInstanceError):
        loss.weight_options.cdl_weight = 3.0  # type: ignore[misc]
    with pytest.raises(AttributeError):
        loss.cdl_weight = 3.0  # the flat name reads the group; it cannot drift from it
    assert "sample_calls" in loss.state_dict()
    assert "sample_calls" not in LUDLoss().state_dict()  # old checkpoints keep their keys


@pytest.mark.parametrize("group, kw, name", [
    ("WeightOptions", {"cdl_weight": -1.0}, "cdl_weight"),
    ("WeightOptions", {"ce_weight": 0, "instance_weight": 0, "cdl_weight": 0, "sdl_weight": 0,
                       "inter_weight": 0, "intra_weight": 0}, "all 0"),
    ("TemperatureOptions", {"t_min": 5.0, "t_max": 3.0}, "t_min"),
    ("MaskOptions", {"threshold": "median"}, "threshold"),
    ("RankOptions", {"rank_grad_scale": "matched", "gram_reduction": "flat"}, "gram_reduction"),
    ("LabelSpaceOptions", {"category_top_k": 64, "max_categories": 32}, "max_categories"),
])
def test_an_option_group_checks_its_values_when_built(group, kw, name):
    import lud.losses.lud as lud_package

    with pytest.raises(ValueError, match=name):
        getattr(lud_package, group)(**kw)
    with pytest.raises(ValueError, match=name):  # the flat constructor says the same
        LUDLoss(**kw)


def test_lud_paper_is_a_registered_preset_not_a_subclass():
    import inspect

    from lud.losses import loss_entry

    entry = loss_entry("lud-paper")
    assert entry.cls is LUDLoss and entry.defaults == {"preset": "paper"}
    assert type(build_loss("lud-paper")) is LUDLoss
    assert inspect.signature(LUDLoss.__init__).parameters["preset"].default == "default"


# ------------------------------------------------------------------ the instance term's divergence
def _token_batch(seed: int = 3):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(2, 9, 40, generator=g) * 2
    t = torch.randn(2, 9, 40, generator=g) * 3
    y = torch.randint(0, 40, (2, 9), generator=g)
    y[0, :2] = -100
    return s, t, y


@pytest.mark.parametrize("dynamic_temperature", ["sample", "off", "full"])
def test_instance_divergence_fkl_through_the_lookup_is_the_default_kl(dynamic_temperature) -> None:
    """``instance_divergence="fkl"`` with explicit (empty) parameters takes the generic path
    (:func:`token_divergence`); it must equal the default path (the shared-log-softmax KL)."""
    s, t, y = _token_batch()
    base = dict(dynamic_temperature=dynamic_temperature, rank_backend="pairwise")
    s1, s2 = s.clone().requires_grad_(True), s.clone().requires_grad_(True)
    ref = build_loss("lud", **base)(s1, t, y)
    got = build_loss("lud", instance_divergence="fkl", instance_divergence_params={}, **base)(s2, t, y)
    torch.testing.assert_close(got.terms["instance"], ref.terms["instance"], rtol=1e-6, atol=1e-7)
    ref.terms["instance"].backward()
    got.terms["instance"].backward()
    torch.testing.assert_close(s2.grad, s1.grad, rtol=1e-5, atol=1e-7)


def test_instance_divergence_generic_path_equals_the_kl_path() -> None:
    # gjsd at beta=0 is forward KL exactly, through the generic path
    s, t, y = _token_batch()
    s1, s2 = s.clone().requires_grad_(True), s.clone().requires_grad_(True)
    ref = build_loss("lud", rank_backend="pairwise")(s1, t, y)
    got = build_loss("lud", rank_backend="pairwise", instance_divergence="gjsd",
                     instance_divergence_params={"beta": 0.0})(s2, t, y)
    torch.testing.assert_close(got.terms["instance"], ref.terms["instance"], rtol=1e-5, atol=1e-6)
    ref.terms["instance"].backward()
    got.terms["instance"].backward()
    torch.testing.assert_close(s2.grad, s1.grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name,params", [("rkl", None), ("gjsd", {"beta": 0.5}), ("skl", {"alpha": 0.1}),
                                         ("srkl", {"alpha": 0.1}), ("tvd", None)])
def test_instance_divergence_is_the_weighted_token_divergence(name, params) -> None:
    """Masks off, uncertainty weighting off, T = 1 and no rank terms: the instance term is the
    plain mean of the token divergence, the same number as the registered pure loss."""
    s, t, y = _token_batch()
    lud = build_loss("lud", instance_divergence=name, instance_divergence_params=params,
                     dynamic_temperature="off", temperature=1.0, uncertainty_weighting=False,
                     cdl_weight=0.0, sdl_weight=0.0, inter_weight=0.0, intra_weight=0.0, ce_weight=0.0)
    pure = build_loss(name, ce_weight=0.0, **(params or {}))
    torch.testing.assert_close(lud(s, t, y).total, pure(s, t, y).total, rtol=1e-6, atol=1e-7)


def test_instance_divergence_bad_values_are_named() -> None:
    with pytest.raises(ValueError, match="unknown token divergence 'kll'"):
        build_loss("lud", instance_divergence="kll")
    with pytest.raises(ValueError, match="beta"):
        build_loss("lud", instance_divergence="gjsd", instance_divergence_params={"beta": 2.0})
    with pytest.raises(ValueError, match="instance_divergence_params must be a dict"):
        build_loss("lud", instance_divergence_params=[("beta", 0.5)])


def test_lud_lm_preset_on_tokens() -> None:
    s, t, y = _token_batch()
    s = s.requires_grad_(True)
    loss = build_loss("lud-lm")
    assert loss.temperature == 1.0 and loss.category_top_k == 32 and loss.relation_class_scale is False
    out = loss(s, t, y)
    assert set(out.terms) == {"ce", "instance", "cdl", "sdl"}
    out.total.backward()
    assert torch.isfinite(s.grad).all()
    # explicit arguments win over the preset
    assert build_loss("lud-lm", cdl_weight=0.0, sdl_weight=0.0).cdl_weight == 0.0


# -- confidence_measure: what a token's (sample's) confidence is ------------------------------------
def test_confidence_measures_on_known_rows():
    from lud.losses.lud import teacher_confidence

    z = torch.log(torch.tensor([[0.7, 0.2, 0.1], [1 / 3, 1 / 3, 1 / 3], [0.5, 0.5, 0.0 + 1e-30]]))
    assert torch.allclose(teacher_confidence(z, 1.0), torch.tensor([0.7, 1 / 3, 0.5]), atol=1e-6)
    assert torch.allclose(teacher_confidence(z, 1.0, "margin"), torch.tensor([0.5, 0.0, 0.0]),
                          atol=1e-6)
    ent = teacher_confidence(z, 1.0, "entropy")
    h0 = -(0.7 * math.log(0.7) + 0.2 * math.log(0.2) + 0.1 * math.log(0.1))
    assert ent[0].item() == pytest.approx(1 - h0 / math.log(3), abs=1e-6)
    assert ent[1].item() == pytest.approx(0.0, abs=1e-6)  # uniform: no confidence
    assert ent[2].item() == pytest.approx(1 - math.log(2) / math.log(3), abs=1e-5)
    one = torch.zeros(4, 1)  # a single class: certain under every measure, not NaN
    for m in ("max_prob", "margin", "entropy"):
        assert torch.equal(teacher_confidence(one, 1.0, m), torch.ones(4))


@pytest.mark.parametrize("measure", ["margin", "entropy"])
def test_confidence_measure_changes_weights_and_masks_not_the_default(measure):
    torch.manual_seed(3)
    z, t, y = torch.randn(32, 20), torch.randn(32, 20) * 3, torch.randint(0, 20, (32,))
    base = build_loss("lud-lm")(z, t, y)
    same = build_loss("lud-lm", confidence_measure="max_prob")(z, t, y)
    other = build_loss("lud-lm", confidence_measure=measure)(z, t, y)
    assert torch.equal(base.total, same.total)
    assert not torch.allclose(base.terms["instance"], other.terms["instance"])
    assert other.stats["confidence_mean"] < base.stats["confidence_mean"] or measure == "entropy"
    assert torch.isfinite(other.total)


def test_confidence_measure_rejects_unknown_names():
    with pytest.raises(ValueError, match="confidence_measure"):
        build_loss("lud", confidence_measure="variance")


def test_weight_direction_uncertain_weighs_the_uncertain_samples_most():
    from lud.losses.lud import sample_weights

    conf = torch.tensor([0.9, 0.5, 0.1])
    assert torch.equal(sample_weights(conf), conf / conf.mean())  # the paper's u, unchanged
    inv = sample_weights(conf, "uncertain")
    assert torch.allclose(inv, torch.tensor([0.1, 0.5, 0.9]) / 0.5)
    assert inv.mean().item() == pytest.approx(1.0)
    assert torch.equal(sample_weights(torch.ones(4), "uncertain"), torch.ones(4))  # all certain
    torch.manual_seed(4)
    z, t, y = torch.randn(32, 20), torch.randn(32, 20) * 3, torch.randint(0, 20, (32,))
    a = build_loss("lud-lm", cdl_weight=0.0, sdl_weight=0.0)(z, t, y)
    b = build_loss("lud-lm", cdl_weight=0.0, sdl_weight=0.0, weight_direction="uncertain")(z, t, y)
    assert torch.equal(a.terms["ce"], b.terms["ce"])
    assert not torch.allclose(a.terms["instance"], b.terms["instance"])
    with pytest.raises(ValueError, match="weight_direction"):
        build_loss("lud", weight_direction="both")
