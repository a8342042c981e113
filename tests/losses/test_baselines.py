"""Baseline losses (ce, kd, kd+ls, dkd, dist, ctkd, mlkd) and logit standardisation.

References are independent float64 NumPy/SciPy re-derivations of the published formulas.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from lud.losses import build_loss, loss_class, loss_entries, standardize_logits
from lud.losses.ctkd import ctkd_lambda, gradient_reversal
from lud.losses.dist import dist_relations
from lud.losses.dkd import dkd_terms
from lud.losses.kd import kd_divergence
from lud.losses.mlkd import mlkd_confidence_masks

# every registered loss but LUD and its presets (tests/losses/test_lud_loss.py), from the registry
BASELINES = [e.name for e in loss_entries() if not issubclass(e.cls, loss_class("lud"))]
TEMPS = (4.0, 3.0, 5.0, 2.0, 6.0)


def make(batch: int = 6, classes: int = 7, seed: int = 0, scale: float = 3.0):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(batch, classes, generator=g) * scale
    t = torch.randn(batch, classes, generator=g) * scale
    y = torch.randint(0, classes, (batch,), generator=g)
    return s, t, y


# ---------------------------------------------------------------- float64 references
def np_softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def np_ce(s: np.ndarray, y: np.ndarray) -> float:
    return float(-np.mean(np.log(np_softmax(s))[np.arange(len(y)), y]))


def np_kl_rows(s: np.ndarray, t: np.ndarray, temp) -> np.ndarray:
    """KL(softmax(t/T) || softmax(s/T)) per row, written from the definition."""
    temp = np.broadcast_to(np.asarray(temp, dtype=np.float64).reshape(-1, 1), (s.shape[0], 1))
    p, q = np_softmax(t / temp), np_softmax(s / temp)
    return (p * (np.log(p) - np.log(q))).sum(axis=1)


def np_dkd(s: np.ndarray, t: np.ndarray, y: np.ndarray, temp: float) -> tuple[float, float]:
    """TCKD and NCKD by explicit loops over samples and classes."""
    batch, classes = s.shape
    tckd = nckd = 0.0
    for b in range(batch):
        es = [math.exp(s[b, c] / temp) for c in range(classes)]
        et = [math.exp(t[b, c] / temp) for c in range(classes)]
        g = int(y[b])
        ps_g, pt_g = es[g] / sum(es), et[g] / sum(et)
        for pt_, ps_ in ((pt_g, ps_g), (1 - pt_g, 1 - ps_g)):
            tckd += pt_ * math.log(pt_ / ps_)
        zs = sum(es[c] for c in range(classes) if c != g)
        zt = sum(et[c] for c in range(classes) if c != g)
        for c in range(classes):
            if c != g:
                nckd += et[c] / zt * math.log((et[c] / zt) / (es[c] / zs))
    return temp**2 * tckd / batch, temp**2 * nckd / batch


def f64(*xs):
    return [x.double().numpy() for x in xs]


# ---------------------------------------------------------------- standardisation
def test_standardize_matches_numpy_zscore():
    x = torch.randn(5, 9, dtype=torch.float64) * 4 + 2
    ref = (x.numpy() - x.numpy().mean(1, keepdims=True)) / (
        x.numpy().std(1, ddof=1, keepdims=True) + np.finfo(np.float64).eps
    )
    np.testing.assert_allclose(standardize_logits(x).numpy(), ref, rtol=1e-12, atol=1e-12)
    ref_b = (x.numpy() - x.numpy().mean(1, keepdims=True)) / (x.numpy().std(1, keepdims=True) + 0.5)
    np.testing.assert_allclose(
        standardize_logits(x, eps=0.5, unbiased=False).numpy(), ref_b, rtol=1e-12
    )


def test_standardize_constant_rows_are_zero_with_finite_grad():
    x = torch.tensor([[3.7] * 6, [0.1] * 6, [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]], requires_grad=True)
    z = standardize_logits(x)
    assert torch.equal(z[:2], torch.zeros(2, 6))
    assert torch.allclose(z[2].std(), torch.tensor(1.0), atol=1e-5)
    z.sum().backward()
    assert torch.isfinite(x.grad).all()
    assert torch.equal(x.grad[:2], torch.zeros(2, 6))


def test_standardize_low_precision_and_bad_eps():
    x = (torch.randn(4, 10) * 5).to(torch.bfloat16)
    z = standardize_logits(x)
    assert z.dtype == torch.bfloat16 and torch.isfinite(z).all()
    assert torch.allclose(z.float().std(dim=1), torch.ones(4), atol=0.03)
    with pytest.raises(ValueError, match="eps"):
        standardize_logits(torch.randn(2, 3), eps=-1.0)
    with pytest.raises(ValueError, match="floating-point"):
        standardize_logits(torch.ones(2, 3, dtype=torch.int64))


STANDARDIZED = [
    ("kd", {"standardize": True}, ["kd"]),
    ("kd+ls", {}, ["kd"]),
    ("dkd", {"standardize": True, "warmup": 0}, ["tckd", "nckd"]),
    ("ctkd", {"standardize": True}, ["kd"]),
    ("mlkd", {"standardize": True, "mask_mode": "none"}, ["instance"]),
]


@pytest.mark.parametrize("name,params,terms", STANDARDIZED)
def test_standardized_terms_invariant_to_shift_and_scale(name, params, terms):
    s, t, y = make(seed=3)
    g = torch.Generator().manual_seed(9)
    # Per-row shifts and positive scales, different for student and teacher.
    s2 = s * (0.3 + 3 * torch.rand(6, 1, generator=g)) + 5 * torch.randn(6, 1, generator=g)
    t2 = t * (0.3 + 3 * torch.rand(6, 1, generator=g)) - 4 * torch.randn(6, 1, generator=g)
    loss = build_loss(name, **params)
    a, b = loss(s, t, y, epoch=30.0), loss(s2, t2, y, epoch=30.0)
    for k in terms:
        assert a.terms[k] > 0
        torch.testing.assert_close(a.terms[k], b.terms[k], rtol=2e-4, atol=1e-6)


def test_kd_ls_defaults_are_the_papers_and_kd_defaults_unchanged():
    ls = build_loss("kd+ls")
    assert (ls.temperature, ls.ce_weight, ls.kd_weight, ls.standardize) == (2.0, 0.1, 9.0, True)
    kd = build_loss("kd", standardize=True)
    assert (kd.temperature, kd.ce_weight, kd.kd_weight) == (4.0, 0.1, 0.9)


# ---------------------------------------------------------------- CE and KD
def test_ce_matches_numpy_and_needs_no_teacher():
    s, _, y = make()
    out = build_loss("ce")(s, None, y)
    (ss,) = f64(s)
    assert out.total.item() == pytest.approx(np_ce(ss, y.numpy()), rel=1e-5)
    eps = 0.2
    out = build_loss("ce", label_smoothing=eps)(s, None, y)
    logp = np.log(np_softmax(ss))
    ref = (1 - eps) * np_ce(ss, y.numpy()) + eps * float(-logp.mean(axis=1).mean())
    assert out.total.item() == pytest.approx(ref, rel=1e-5)


def test_kd_matches_numpy_kl():
    s, t, y = make(batch=8, classes=10, seed=1)
    ss, tt = f64(s, t)
    out = build_loss("kd")(s, t, y)
    ref_kd = 16.0 * np_kl_rows(ss, tt, 4.0).mean()
    assert out.terms["kd"].item() == pytest.approx(0.9 * ref_kd, rel=1e-5)
    assert out.terms["ce"].item() == pytest.approx(0.1 * np_ce(ss, y.numpy()), rel=1e-5)
    assert out.stats["temperature"] == 4.0
    out = build_loss("kd", temperature=1.5, ce_weight=0.5, kd_weight=0.5)(s, t, y)
    ref = 0.5 * np_ce(ss, y.numpy()) + 0.5 * 2.25 * np_kl_rows(ss, tt, 1.5).mean()
    assert out.total.item() == pytest.approx(ref, rel=1e-5)


def test_kd_divergence_per_sample_temperature_and_zero_at_match():
    s, t, _ = make(seed=2)
    temps = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    ss, tt = f64(s, t)
    ref = (temps.numpy() ** 2 * np_kl_rows(ss, tt, temps.numpy())).mean()
    assert kd_divergence(s, t, temps).item() == pytest.approx(ref, rel=1e-5)
    assert kd_divergence(s, t, temps[:, None]).item() == pytest.approx(ref, rel=1e-5)
    assert kd_divergence(t, t, 4.0).abs().item() < 1e-6
    with pytest.raises(ValueError, match="temperature"):
        kd_divergence(s, t, torch.ones(3, 2))


# ---------------------------------------------------------------- DKD
@pytest.mark.parametrize("seed,classes", [(0, 7), (1, 2), (2, 25)])
def test_dkd_matches_loop_reference(seed, classes):
    s, t, y = make(batch=5, classes=classes, seed=seed)
    ss, tt = f64(s, t)
    tckd, nckd = dkd_terms(s, t, y, 4.0)
    ref_t, ref_n = np_dkd(ss, tt, y.numpy(), 4.0)
    assert tckd.item() == pytest.approx(ref_t, rel=1e-4, abs=1e-7)
    assert nckd.item() == pytest.approx(ref_n, rel=1e-4, abs=1e-7)
    out = build_loss("dkd", warmup=0)(s, t, y)
    ref = np_ce(ss, y.numpy()) + 1.0 * ref_t + 8.0 * ref_n
    assert out.total.item() == pytest.approx(ref, rel=1e-4)


def test_dkd_warmup_scales_with_epoch():
    s, t, y = make(seed=4)
    loss = build_loss("dkd")
    full = loss(s, t, y, epoch=20.0)
    for epoch, factor in [
        (0.0, 0.0),
        (1.0, 0.05),
        (10.5, 0.525),
        (20.0, 1.0),
        (57.0, 1.0),
        (-3.0, 0.0),
    ]:
        out = loss(s, t, y, epoch=epoch)
        assert out.stats["warmup"] == pytest.approx(factor)
        for k in ("tckd", "nckd"):
            torch.testing.assert_close(out.terms[k], factor * full.terms[k])
        torch.testing.assert_close(out.terms["ce"], full.terms["ce"])


def test_dkd_extreme_logits_stay_finite():
    s, t, y = make(seed=5, scale=300.0)
    s.requires_grad_(True)
    out = build_loss("dkd", warmup=0)(s, t, y)
    out.total.backward()
    assert torch.isfinite(out.total) and torch.isfinite(s.grad).all()


# ---------------------------------------------------------------- DIST
def test_dist_is_one_minus_pearson():
    s, t, y = make(batch=8, classes=6, seed=6)
    tau = 4.0
    ys, yt = np_softmax(f64(s)[0] / tau), np_softmax(f64(t)[0] / tau)
    rows = np.mean([stats.pearsonr(ys[b], yt[b])[0] for b in range(8)])
    cols = np.mean([stats.pearsonr(ys[:, c], yt[:, c])[0] for c in range(6)])
    inter, intra, _, _ = dist_relations(s, t, tau)
    assert inter.item() == pytest.approx(1 - rows, rel=1e-4, abs=1e-6)
    assert intra.item() == pytest.approx(1 - cols, rel=1e-4, abs=1e-6)
    out = build_loss("dist")(s, t, y)
    assert out.terms["inter"].item() == pytest.approx(2 * 16 * (1 - rows), rel=1e-4)
    assert out.terms["intra"].item() == pytest.approx(2 * 16 * (1 - cols), rel=1e-4)
    assert out.terms["ce"].item() == pytest.approx(np_ce(f64(s)[0], y.numpy()), rel=1e-5)


def test_dist_batch_of_one_and_flat_rows():
    s, t, y = make(batch=1, seed=7)
    s.requires_grad_(True)
    out = build_loss("dist")(s, t, y)
    assert out.terms["intra"].item() == 0.0
    assert out.terms["inter"].item() > 0
    out.total.backward()
    assert torch.isfinite(s.grad).all()
    # A zero-initialised head gives flat student rows: no 1/eps gradient blow-up.
    s0 = torch.zeros(4, 5, requires_grad=True)
    _, t, y = make(batch=4, classes=5, seed=8)
    out = build_loss("dist", ce_weight=0.0)(s0, t, y)
    out.total.backward()
    assert torch.isfinite(s0.grad).all() and s0.grad.abs().max() < 1.0


# ---------------------------------------------------------------- CTKD
def released_curriculum(epoch: float) -> float:
    """CTKD's CosineDecay(max_value=0, min_value=-1, num_loops=10).get_value."""
    i = min(max(epoch, 0), 10)
    return (math.cos(i * math.pi / 10) + 1.0) * 0.5 * (0 - (-1)) + (-1)


def test_ctkd_curriculum_matches_release():
    for e in [0, 0.5, 1, 3, 5, 9.9, 10, 11, 240]:
        assert ctkd_lambda(e) == pytest.approx(released_curriculum(e), abs=1e-12)
    assert ctkd_lambda(5, lambda_max=2.0) == pytest.approx(-1.0)


def plain_theta_grad(s, t, y, theta0: float) -> float:
    """dL/dtheta with no gradient reversal, written out directly."""
    s, t = s.double(), t.double()
    theta = torch.tensor(theta0, dtype=torch.float64, requires_grad=True)
    temp = 1 + 20 * torch.sigmoid(theta)
    log_q = torch.log_softmax(s / temp, 1)
    p = torch.softmax(t / temp, 1)
    kl = (p * (torch.log(p) - log_q)).sum(1).mean()
    (0.1 * torch.nn.functional.cross_entropy(s, y) + 0.9 * temp**2 * kl).backward()
    return float(theta.grad)


@pytest.mark.parametrize("epoch,lam", [(0.0, 0.0), (5.0, -0.5), (10.0, -1.0), (100.0, -1.0)])
def test_ctkd_grl_reverses_temperature_gradient(epoch, lam):
    s, t, y = make(seed=10)
    loss = build_loss("ctkd")
    out = loss(s, t, y, epoch=epoch)
    out.total.backward()
    assert out.stats["grl_lambda"] == pytest.approx(lam)
    assert out.stats["temperature"] == pytest.approx(1 + 20 / (1 + math.exp(-1.0)), rel=1e-6)
    plain = plain_theta_grad(s, t, y, 1.0)
    assert plain != 0.0
    if lam == 0.0:
        assert loss.theta.grad.item() == 0.0
    else:
        assert np.sign(loss.theta.grad.item()) == -np.sign(plain)
        assert loss.theta.grad.item() == pytest.approx(lam * plain, rel=2e-3)  # fp32 vs fp64


def test_ctkd_adversarial_step_raises_kd_and_student_grad_is_plain_kd():
    s, t, y = make(seed=11)
    loss = build_loss("ctkd", ce_weight=0.0)
    opt = torch.optim.SGD(loss.parameters(), lr=5.0)
    before = loss(s, t, y, epoch=20.0)
    before.total.backward()
    opt.step()
    after = loss(s, t, y, epoch=20.0)
    assert after.terms["kd"] > before.terms["kd"]  # the temperature ascends the KD loss
    # The GRL only touches the temperature path: the student sees plain KD at that T.
    s1 = s.clone().requires_grad_(True)
    s2 = s.clone().requires_grad_(True)
    loss(s1, t, y, epoch=20.0).total.backward()
    temp = loss.temperature
    (0.9 * kd_divergence(s2, t, temp)).backward()
    torch.testing.assert_close(s1.grad, s2.grad, rtol=1e-4, atol=1e-7)


def test_gradient_reversal_identity_forward():
    x = torch.randn(3, requires_grad=True)
    y = gradient_reversal(x, -0.7)
    assert torch.equal(y, x)
    y.sum().backward()
    torch.testing.assert_close(x.grad, torch.full((3,), -0.7))


# ---------------------------------------------------------------- MLKD
@pytest.mark.parametrize("batch", [9, 10])
def test_mlkd_masks_follow_the_median_rule(batch):
    _, t, _ = make(batch=batch, classes=8, seed=12)
    p = np_softmax(f64(t)[0])
    conf, class_conf = p.max(axis=1), p.sum(axis=0)
    sample_mask, class_mask = mlkd_confidence_masks(t)
    np.testing.assert_array_equal(sample_mask.numpy(), conf <= np.percentile(conf, 50))
    np.testing.assert_array_equal(class_mask.numpy(), class_conf <= np.percentile(class_conf, 50))
    # The less confident half is kept.
    assert conf[sample_mask.numpy()].max() < conf[~sample_mask.numpy()].min()
    # Ties: a constant teacher makes every sample equally (un)confident; all are kept.
    sm, cm = mlkd_confidence_masks(torch.zeros(batch, 8))
    assert sm.all() and cm.all()


def np_mlkd_levels(ss, tt, temps, sample_w=None, class_w=None):
    """Per-temperature-summed instance / class / batch terms, optionally row-weighted."""
    batch, classes = ss.shape
    sw = np.ones(batch) if sample_w is None else sample_w
    cw = np.ones(classes) if class_w is None else class_w
    inst = cls = bat = 0.0
    for temp in temps:
        ps, pt = np_softmax(ss / temp), np_softmax(tt / temp)
        inst += temp**2 * (np_kl_rows(ss, tt, temp) * sw).sum() / sw.sum()
        cls += (((pt.T @ pt - ps.T @ ps) ** 2).sum(1) * cw).sum() / cw.sum()
        bat += (((pt @ pt.T - ps @ ps.T) ** 2).sum(1) * sw).sum() / sw.sum()
    return inst, cls, bat


def test_mlkd_matches_numpy_in_every_mask_mode():
    s, t, y = make(batch=10, classes=8, seed=13)
    ss, tt = f64(s, t)
    p = np_softmax(tt)
    sm = (p.max(1) <= np.percentile(p.max(1), 50)).astype(float)
    cm = (p.sum(0) <= np.percentile(p.sum(0), 50)).astype(float)
    full = np_mlkd_levels(ss, tt, TEMPS)
    expected = {
        "none": full,
        "scale": (full[0] * sm.mean(), full[1] * cm.mean(), full[2] * sm.mean()),
        "select": np_mlkd_levels(ss, tt, TEMPS, sm, cm),
    }
    for mode, (inst, cls, bat) in expected.items():
        out = build_loss("mlkd", mask_mode=mode)(s, t, y)
        assert out.terms["instance"].item() == pytest.approx(0.9 * inst, rel=1e-4), mode
        assert out.terms["class"].item() == pytest.approx(0.9 * cls, rel=1e-4), mode
        assert out.terms["batch"].item() == pytest.approx(0.9 * bat, rel=1e-4), mode
        assert out.terms["ce"].item() == pytest.approx(0.1 * np_ce(ss, y.numpy()), rel=1e-5)
        assert out.stats["sample_keep"] == pytest.approx(sm.mean())


# ---------------------------------------------------------------- all losses
@pytest.mark.parametrize("name", BASELINES)
def test_terms_sum_to_total_and_gradients(name):
    s, t, y = make(seed=14)
    s.requires_grad_(True)
    t.requires_grad_(True)
    out = build_loss(name)(s, t, y, epoch=25.0)
    torch.testing.assert_close(out.total, sum(out.terms.values()))
    assert out.total.dtype == torch.float32 and out.total.dim() == 0
    assert all(not v.requires_grad for v in out.stat_tensors.values())
    out.total.backward()
    assert s.grad is not None and torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0
    assert t.grad is None


def degenerate_cases():
    g = torch.Generator().manual_seed(15)
    yield (
        "batch1",
        torch.randn(1, 5, generator=g),
        torch.randn(1, 5, generator=g),
        torch.tensor([2]),
    )
    yield (
        "two_classes",
        torch.randn(4, 2, generator=g),
        torch.randn(4, 2, generator=g),
        torch.tensor([0, 1, 1, 0]),
    )
    yield "constant", torch.zeros(4, 6), torch.full((4, 6), 2.5), torch.tensor([0, 1, 2, 3])
    yield (
        "huge",
        1e4 * torch.randn(4, 6, generator=g),
        1e4 * torch.randn(4, 6, generator=g),
        torch.tensor([0, 1, 2, 3]),
    )
    s, t = torch.randn(4, 6, generator=g) * 3, torch.randn(4, 6, generator=g) * 3
    yield "bf16", s.bfloat16(), t.bfloat16(), torch.tensor([0, 1, 2, 3])
    yield "fp16", s.half(), t.half(), torch.tensor([5, 1, 2, 3])


@pytest.mark.parametrize("name", BASELINES)
@pytest.mark.parametrize("case", [c[0] for c in degenerate_cases()])
def test_degenerate_inputs_finite(name, case):
    _, s, t, y = next(c for c in degenerate_cases() if c[0] == case)
    s = s.clone().requires_grad_(True)
    loss = build_loss(name)
    out = loss(s, t, y, epoch=30.0)
    assert out.total.dtype == torch.float32 and torch.isfinite(out.total)
    assert all(torch.isfinite(v) for v in out.terms.values())
    assert all(math.isfinite(v) for v in out.stats.values())
    out.total.backward()
    assert torch.isfinite(s.grad).all() and s.grad.dtype == s.dtype
    if case == "batch1" and name == "dist":
        assert out.terms["intra"].item() == 0.0


@pytest.mark.parametrize("name", BASELINES)
def test_under_bf16_autocast(name):
    s, t, y = make(seed=16)
    w = torch.randn(7, 7, requires_grad=True)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        logits = s @ w  # bf16 under autocast
        assert logits.dtype == torch.bfloat16
        out = build_loss(name)(logits, t.bfloat16(), y, epoch=30.0)
    assert out.total.dtype == torch.float32 and torch.isfinite(out.total)
    out.total.backward()
    assert torch.isfinite(w.grad).all()


@pytest.mark.parametrize("name", BASELINES)
def test_bad_inputs_name_the_problem(name):
    s, t, y = make()
    loss = build_loss(name)
    with pytest.raises(ValueError, match="batch-size mismatch"):
        loss(s, t[:4], y)
    with pytest.raises(ValueError, match="class-count mismatch"):
        loss(s, t[:, :5], y)
    with pytest.raises(ValueError, match="targets out of range"):
        loss(s, t, torch.full((6,), 7))
    with pytest.raises(ValueError, match="targets must have shape"):
        loss(s, t, y[:3])
    bad = s.clone()
    bad[1, 2] = float("nan")
    with pytest.raises(ValueError, match="student_logits contain NaN"):
        loss(bad, t, y)
    if name != "ce":
        bad_t = t.clone()
        bad_t[0, 0] = float("nan")
        with pytest.raises(ValueError, match="teacher_logits contain NaN"):
            loss(s, bad_t, y)
        with pytest.raises(ValueError, match="needs teacher_logits"):
            loss(s, None, y)


@pytest.mark.parametrize("name", BASELINES)
def test_unknown_parameter_rejected(name):
    with pytest.raises(ValueError, match="unknown parameter 'bogus'"):
        build_loss(name, bogus=1.0)


@pytest.mark.parametrize(
    "name,params,problem",
    [
        ("ce", {"label_smoothing": 1.0}, "label_smoothing"),
        ("kd", {"temperature": 0.0}, "temperature"),
        ("kd", {"temperature": -2.0}, "temperature"),
        ("kd", {"ce_weight": -0.1}, "ce_weight"),
        ("kd", {"kd_weight": float("nan")}, "kd_weight"),
        ("kd+ls", {"temperature": float("inf")}, "temperature"),
        ("dkd", {"alpha": -1.0}, "alpha"),
        ("dkd", {"beta": -8.0}, "beta"),
        ("dkd", {"warmup": -1.0}, "warmup"),
        ("dist", {"tau": 0.0}, "tau"),
        ("dist", {"gamma": -2.0}, "gamma"),
        ("ctkd", {"t_min": 5.0, "t_max": 5.0}, "t_min must be < t_max"),
        ("ctkd", {"t_min": 0.0}, "t_min"),
        ("ctkd", {"theta_init": float("inf")}, "theta_init"),
        ("ctkd", {"lambda_max": -1.0}, "lambda_max"),
        ("mlkd", {"temperatures": ()}, "at least one"),
        ("mlkd", {"temperatures": (4.0, 0.0)}, "temperatures"),
        ("mlkd", {"mask_mode": "selct"}, "mask_mode"),
        ("mlkd", {"batch_weight": -1.0}, "batch_weight"),
        ("mlkd", {"two_views": "yes"}, "two_views"),
        ("wttm", {"gamma": 0.0}, "gamma"),
        ("wttm", {"beta": -1.0}, "beta"),
        ("rld", {"alpha_temperature": 0.0}, "alpha_temperature"),
        ("rld", {"temperature": float("nan")}, "temperature"),
        ("rld", {"warmup": -1.0}, "warmup"),
        ("rld", {"standardize": 1}, "standardize"),
        ("lud-released", {"low_temperature": 0.0}, "low_temperature"),
        ("lud-released", {"low_temperature": 6.0, "high_temperature": 2.0}, "high_temperature"),
        ("lud-released", {"kd_weight": -1.0}, "kd_weight"),
        ("lud-released", {"two_views": 1}, "two_views"),
    ],
)
def test_bad_parameters_rejected(name, params, problem):
    with pytest.raises(ValueError, match=problem):
        build_loss(name, **params)


@pytest.mark.parametrize(
    "name", [e.name for e in loss_entries() if "standardize" in e.cls.constructor_params()]
)
def test_standardize_flag_must_be_a_bool(name: str) -> None:
    # bool("false") is True: a string that slipped through a config must not switch it on.
    with pytest.raises(ValueError, match="standardize must be a bool"):
        build_loss(name, standardize="false")
