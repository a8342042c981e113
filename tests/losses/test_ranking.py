"""Tests for lud.losses.ranking: soft/hard ranks and (soft) Spearman / Pearson correlation.

References are independent: scipy.stats.rankdata / spearmanr, numpy.corrcoef, and a naive
O(n^2) autograd implementation of the pairwise-sigmoid formula written out here.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import rankdata, spearmanr

from lud.losses import ranking
from lud.losses.ranking import available_backends, hard_rank, pearson, resolve_backend, soft_rank, spearman


def _scipy_spearman_rows(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise scipy Spearman; scipy's NaN for a constant row is our documented 0."""
    vals = []
    for x, y in zip(a.double().numpy(), b.double().numpy()):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # scipy warns on constant input
            r = spearmanr(x, y).statistic
        vals.append(0.0 if np.isnan(r) else r)
    return torch.tensor(vals, dtype=torch.float64)


def _naive_soft_rank(x: torch.Tensor, strength: float) -> torch.Tensor:
    """rank_i = 1 + sum_{j != i} sigmoid((z_i - z_j)/strength), z = population z-score; autograd."""
    z = (x - x.mean(-1, keepdim=True)) / x.std(-1, correction=0, keepdim=True)
    s = torch.sigmoid((z.unsqueeze(-1) - z.unsqueeze(-2)) / strength)
    eye = torch.eye(x.shape[-1], dtype=torch.bool)
    return 1 + s.masked_fill(eye, 0).sum(-1)


@pytest.fixture
def no_torchsort(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ranking, "_load_torchsort", lambda: None)


# ----------------------------------------------------------------------------- hard ranks


def test_hard_rank_matches_rankdata_with_ties_any_dim() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 4, (3, 5, 9), generator=g).float()
    for dim in (0, 1, 2, -1):
        expected = rankdata(x.numpy(), axis=dim)
        assert np.array_equal(hard_rank(x, dim=dim).numpy(), expected)
    xi = torch.randint(-3, 3, (4, 7), generator=g)  # integer input is accepted
    assert np.array_equal(hard_rank(xi).numpy(), rankdata(xi.numpy(), axis=-1))


def test_hard_rank_nan_row_propagates_and_has_no_grad() -> None:
    x = torch.tensor([[1.0, float("nan"), 0.0], [3.0, 1.0, 2.0]], requires_grad=True)
    r = hard_rank(x)
    assert torch.isnan(r[0]).all()
    assert r[1].tolist() == [3.0, 1.0, 2.0]
    assert not r.requires_grad


def test_hard_backend_exact_and_gradient_free() -> None:
    x = torch.tensor([[0.3, -1.0, 0.3, 2.0, 0.3]], requires_grad=True)
    r = soft_rank(x, backend="hard")
    assert r.tolist() == [rankdata(x.detach().numpy()[0]).tolist()]
    assert not r.requires_grad
    assert not spearman(x, torch.randn(1, 5), backend="hard").requires_grad


# ----------------------------------------------------------------------------- pairwise soft ranks


def test_pairwise_soft_rank_matches_rankdata_with_ties() -> None:
    g = torch.Generator().manual_seed(1)
    ties = torch.randint(0, 5, (6, 15), generator=g).float()  # heavy ties, gaps >= 1 unit
    r = soft_rank(ties, strength=1e-3, backend="pairwise")
    np.testing.assert_allclose(r.numpy(), rankdata(ties.numpy(), axis=-1), atol=1e-4)
    cont = torch.randn(6, 40, generator=g, dtype=torch.float64)
    r = soft_rank(cont, strength=1e-7, backend="pairwise")
    np.testing.assert_allclose(r.numpy(), rankdata(cont.numpy(), axis=-1), atol=1e-6)


def test_pairwise_matches_naive_formula_values_and_gradients() -> None:
    g = torch.Generator().manual_seed(2)
    x = torch.randn(4, 9, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 9, generator=g, dtype=torch.float64)
    for strength in (0.05, 0.5, 3.0):
        ours = soft_rank(x, strength=strength, backend="pairwise", chunk_rows=3)
        ref = _naive_soft_rank(x, strength)
        torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-10)
        g_ours = torch.autograd.grad((ours * w).sum(), x)[0]
        g_ref = torch.autograd.grad((ref * w).sum(), x)[0]
        torch.testing.assert_close(g_ours, g_ref, rtol=1e-8, atol=1e-10)


def test_pairwise_gradcheck() -> None:
    x = torch.randn(3, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda t: soft_rank(t, strength=0.3, backend="pairwise", chunk_rows=2), (x,)
    )


def test_chunked_equals_unchunked_values_and_gradients() -> None:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(7, 50, generator=g, requires_grad=True)
    w = torch.randn(7, 50, generator=g)
    results = []
    for chunk in (1, 3, 7, None):
        r = soft_rank(x, strength=0.05, backend="pairwise", chunk_rows=chunk)
        results.append((r.detach(), torch.autograd.grad((r * w).sum(), x)[0]))
    for r, grad in results[1:]:
        assert torch.equal(r, results[0][0])
        torch.testing.assert_close(grad, results[0][1], rtol=1e-6, atol=1e-6)


@pytest.mark.slow
def test_pairwise_memory_1000x1000_under_512mb() -> None:
    # torch allocations are invisible to tracemalloc: measure the process's peak RSS instead,
    # in a fresh interpreter so that other tests' allocations do not count.
    code = textwrap.dedent(
        """
        import resource, torch
        from lud.losses.ranking import soft_rank
        x = torch.randn(1000, 1000, requires_grad=True)
        w = torch.randn(1000, 1000)
        (soft_rank(x[:4, :50], backend="pairwise") * w[:4, :50]).sum().backward()  # warm-up
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        (soft_rank(x, backend="pairwise") * w).sum().backward()
        assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
        print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024)
        """
    )
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    peak_mb = float(proc.stdout.strip().splitlines()[-1])
    assert peak_mb < 512, f"forward+backward raised peak RSS by {peak_mb:.0f} MB"


# ----------------------------------------------------------------------------- linear backend


def _naive_linear_soft_rank(x: torch.Tensor, strength: float) -> torch.Tensor:
    """rank_i = 1/2 + sum_j clip(1/2 + (z_i - z_j) / (4 strength), 0, 1); O(n^2), autograd."""
    z = (x - x.mean(-1, keepdim=True)) / x.std(-1, correction=0, keepdim=True)
    d = z.unsqueeze(-1) - z.unsqueeze(-2)
    return 0.5 + (0.5 + d / (4 * strength)).clamp(0, 1).sum(-1)


def test_linear_soft_rank_matches_rankdata_with_ties() -> None:
    g = torch.Generator().manual_seed(21)
    ties = torch.randint(0, 5, (6, 15), generator=g).float()
    # exact, not approximately: every pair is either a tie (k = 1/2) or >= 1 std unit apart
    r = soft_rank(ties, strength=1e-3, backend="linear")
    np.testing.assert_array_equal(r.numpy(), rankdata(ties.numpy(), axis=-1))
    cont = torch.randn(6, 40, generator=g, dtype=torch.float64)
    r = soft_rank(cont, strength=1e-9, backend="linear")
    np.testing.assert_allclose(r.numpy(), rankdata(cont.numpy(), axis=-1), rtol=0, atol=1e-9)
    # strength far below one ulp of the values: ties must still share their average rank
    big = torch.tensor([[1e6, 1e6, 3e6, 2e6, 1e6]])
    r = soft_rank(big, strength=1e-30, backend="linear", standardize=False)
    np.testing.assert_array_equal(r.numpy(), rankdata(big.numpy(), axis=-1))


def test_linear_spearman_matches_scipy_with_ties() -> None:
    g = torch.Generator().manual_seed(22)
    a = torch.randint(0, 6, (8, 30), generator=g).float()
    b = torch.randint(0, 6, (8, 30), generator=g).float()
    r = spearman(a, b, strength=1e-3, backend="linear")
    torch.testing.assert_close(r.double(), _scipy_spearman_rows(a, b), rtol=0, atol=1e-6)


def test_linear_matches_naive_formula_values_and_gradients() -> None:
    g = torch.Generator().manual_seed(23)
    x = torch.randn(4, 30, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 30, generator=g, dtype=torch.float64)
    for strength in (0.02, 0.3, 5.0):  # few, some and all pairs inside the window
        ours = soft_rank(x, strength=strength, backend="linear")
        ref = _naive_linear_soft_rank(x, strength)
        torch.testing.assert_close(ours, ref, rtol=0, atol=1e-10)
        g_ours = torch.autograd.grad((ours * w).sum(), x)[0]
        g_ref = torch.autograd.grad((ref * w).sum(), x)[0]
        torch.testing.assert_close(g_ours, g_ref, rtol=1e-8, atol=1e-10)


def test_linear_gradcheck() -> None:
    g = torch.Generator().manual_seed(24)
    x = torch.randn(3, 12, generator=g, dtype=torch.float64, requires_grad=True)
    for chunk in (1, None):
        assert torch.autograd.gradcheck(
            lambda t, c=chunk: soft_rank(t, strength=0.3, backend="linear", chunk_rows=c), (x,)
        )


def test_linear_close_to_pairwise() -> None:
    """Both kernels have slope 1/(4 strength) at 0; they differ by at most
    sup_d |clip(1/2 + d/4, 0, 1) - sigmoid(d)| per pair (about 0.12, at |d| = 2 strength), and the
    sigmoid's tail exp(-|d| / strength) beyond the window. So the rank difference is bounded by the
    sum of the per-pair kernel differences, and vanishes once neighbours are far apart."""
    g = torch.Generator().manual_seed(25)
    x = torch.randn(5, 60, generator=g, dtype=torch.float64)
    z = (x - x.mean(-1, keepdim=True)) / x.std(-1, correction=0, keepdim=True)
    d = z.unsqueeze(-1) - z.unsqueeze(-2)
    for strength in (0.01, 0.1, 1.0):
        diff = soft_rank(x, strength=strength, backend="linear") - soft_rank(
            x, strength=strength, backend="pairwise")
        pair_gap = ((0.5 + d / (4 * strength)).clamp(0, 1) - torch.sigmoid(d / strength)).abs()
        assert (diff.abs() <= pair_gap.sum(-1) + 1e-9).all()
    # smallest gap 1 / std(values) ~ 0.0125 std units = 125 strengths: sigmoid tail ~ e^-125
    spread = torch.arange(40, dtype=torch.float64).reshape(1, -1) ** 1.5
    small = [soft_rank(spread, strength=1e-4, backend=b) for b in ("linear", "pairwise")]
    torch.testing.assert_close(small[0], small[1], rtol=0, atol=1e-9)


def test_linear_chunked_equals_unchunked_and_deterministic() -> None:
    g = torch.Generator().manual_seed(26)
    x = torch.randn(7, 50, generator=g, requires_grad=True)
    w = torch.randn(7, 50, generator=g)
    results = []
    for chunk in (1, 3, 7, None, None):
        r = soft_rank(x, strength=0.05, backend="linear", chunk_rows=chunk)
        results.append((r.detach(), torch.autograd.grad((r * w).sum(), x)[0]))
    for r, grad in results[1:]:
        assert torch.equal(r, results[0][0])
        assert torch.equal(grad, results[0][1])


def test_linear_degenerate_rows() -> None:
    const = torch.full((2, 6), 0.1, requires_grad=True)
    assert soft_rank(const, backend="linear").tolist() == [[3.5] * 6] * 2
    r = spearman(const, torch.randn(2, 6), backend="linear")
    r.sum().backward()
    assert r.tolist() == [0.0, 0.0] and torch.isfinite(const.grad).all()
    one = torch.randn(3, 1, requires_grad=True)
    assert soft_rank(one, backend="linear").tolist() == [[1.0]] * 3
    soft_rank(one, backend="linear").sum().backward()
    assert torch.isfinite(one.grad).all()
    unstd = torch.full((1, 4), 7.0, requires_grad=True)
    assert soft_rank(unstd, backend="linear", standardize=False).tolist() == [[2.5] * 4]


@pytest.mark.parametrize("n", [40, 300, 600])  # numpy searchsorted from 128, packed sort from 512
def test_numpy_paths_equal_torch(monkeypatch: pytest.MonkeyPatch, n: int) -> None:
    """The CPU fast paths (packed numpy sort, row-wise numpy searchsorted, tie bookkeeping on
    tied rows only) and the pure-torch path give the same ranks and gradients."""
    assert ranking._NUMPY_SEARCH_MIN_LEN <= 300
    g = torch.Generator().manual_seed(27)
    x = torch.cat([torch.randn(5, n, generator=g),
                   torch.randint(0, 4, (5, n), generator=g).float()])  # ties too
    w = torch.randn(10, n, generator=g)
    v, order = ranking._sort_rows(x)
    assert torch.equal(v, x.sort(dim=-1).values) and torch.equal(x.gather(-1, order), v)
    results = []
    for fast in (True, False):
        if not fast:
            monkeypatch.setattr(ranking, "_NUMPY_SORT_DTYPES", ())
        xr = x.clone().requires_grad_(True)
        r = soft_rank(xr, strength=0.05, backend="linear")
        (r * w).sum().backward()
        results.append((hard_rank(x), r.detach(), xr.grad))
    assert torch.equal(results[0][0], results[1][0])
    torch.testing.assert_close(results[0][1], results[1][1], rtol=0, atol=1e-5)
    torch.testing.assert_close(results[0][2], results[1][2], rtol=0, atol=1e-4)


def test_packed_sort_orders_special_floats_like_torch() -> None:
    specials = [-0.0, 0.0, float("inf"), -float("inf"), 1e-45, -1e-45, -3.0, 3.0, -1e38, 1e38]
    g = torch.Generator().manual_seed(3)
    x = torch.tensor(specials * 20)[torch.randperm(200, generator=g)].reshape(2, 100)
    want = x.sort(dim=-1, stable=True)
    got = ranking._packed_argsort(x)
    assert torch.equal(got, want.indices)  # stable: the very permutation of torch's stable sort
    ties = torch.randint(0, 5, (3, 700), generator=g).float()
    assert torch.equal(ranking._packed_argsort(ties), ties.sort(dim=-1, stable=True).indices)


def test_numpy_searchsorted_counts_entries_at_or_below_each_query() -> None:
    g = torch.Generator().manual_seed(4)
    v = torch.randint(0, 50, (6, 400), generator=g).float().sort(dim=-1).values / 8
    q = v - 0.25  # many queries fall exactly on an entry (all values are multiples of 1/8)
    want = torch.searchsorted(v, q, right=True)
    assert torch.equal(ranking._searchsorted_rows(v, q), want)
    assert torch.equal(ranking._searchsorted_rows(v.double(), q.double()), want)


def test_hard_rank_ties_in_some_rows_only() -> None:
    g = torch.Generator().manual_seed(6)
    x = torch.randn(8, 500, generator=g)
    x[2, 7] = x[2, 400]  # a tie in two rows, none in the others
    x[5, :3] = 0.5
    assert torch.equal(hard_rank(x), torch.from_numpy(rankdata(x.numpy(), axis=-1)).float())
    # groups at row ends, adjacent groups, whole-row groups: none merges across rows
    small = torch.tensor([[1.0, 2, 2, 5, 5], [2, 2, 3, 3, 3], [7, 7, 7, 7, 7], [0, 1, 1, 9, 9]])
    assert hard_rank(small).tolist() == rankdata(small.numpy(), axis=-1).tolist()
    # the every-row bookkeeping (GPU and compiled path) agrees
    v = x.sort(dim=-1).values
    every = ranking._tie_average(v[:, 1:] == v[:, :-1], torch.arange(500), torch.float32)
    assert torch.equal(every, torch.from_numpy(rankdata(v.numpy(), axis=-1)).float())


def test_linear_memory_1000x1000_under_128mb() -> None:
    code = textwrap.dedent(
        """
        import resource, torch
        from lud.losses.ranking import soft_rank
        x = torch.randn(1000, 1000, requires_grad=True)
        w = torch.randn(1000, 1000)
        (soft_rank(x[:4, :50], backend="linear") * w[:4, :50]).sum().backward()  # warm-up
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        (soft_rank(x, backend="linear") * w).sum().backward()
        assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
        print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024)
        """
    )
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    peak_mb = float(proc.stdout.strip().splitlines()[-1])
    # a few (1000 x 1000) float64/int64 buffers (8 MB each); the pairwise matrix alone is 4 GB
    assert peak_mb < 128, f"forward+backward raised peak RSS by {peak_mb:.0f} MB"


# ----------------------------------------------------------------------------- spearman / pearson


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_spearman_matches_scipy_with_ties(dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(4)
    a = torch.randint(0, 6, (8, 30), generator=g).to(dtype)
    b = (a + torch.randint(-2, 3, (8, 30), generator=g)).to(dtype)
    b[0] = 1.0  # a constant row: scipy says NaN, we say 0
    r = spearman(a, b, strength=1e-3, backend="pairwise")
    assert r.dtype == dtype
    np.testing.assert_allclose(r.double().numpy(), _scipy_spearman_rows(a, b).numpy(), atol=1e-3)


def test_spearman_matches_scipy_continuous() -> None:
    g = torch.Generator().manual_seed(5)
    a = torch.randn(8, 60, generator=g, dtype=torch.float64)
    b = 0.5 * a + torch.randn(8, 60, generator=g, dtype=torch.float64)
    r = spearman(a, b, strength=1e-7, backend="pairwise")
    np.testing.assert_allclose(r.numpy(), _scipy_spearman_rows(a, b).numpy(), atol=1e-3)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 4), st.integers(0, 4)), min_size=2, max_size=12))
def test_spearman_property_small_integer_data(pairs: list[tuple[int, int]]) -> None:
    a = torch.tensor([[p[0] for p in pairs]], dtype=torch.float64)
    b = torch.tensor([[p[1] for p in pairs]], dtype=torch.float64)
    r = spearman(a, b, strength=1e-4, backend="pairwise")
    assert -1.0 <= float(r) <= 1.0
    assert abs(float(r) - float(_scipy_spearman_rows(a, b)[0])) < 1e-3


def test_pearson_matches_numpy() -> None:
    g = torch.Generator().manual_seed(6)
    a = torch.randn(5, 20, generator=g, dtype=torch.float64)
    b = a + torch.randn(5, 20, generator=g, dtype=torch.float64)
    expected = [np.corrcoef(x, y)[0, 1] for x, y in zip(a.numpy(), b.numpy())]
    np.testing.assert_allclose(pearson(a, b).numpy(), expected, rtol=1e-12)
    tiny = pearson(a * 1e-30, b * 1e-30)  # sums of squares would underflow without rescaling
    np.testing.assert_allclose(tiny.numpy(), expected, rtol=1e-10)


def test_spearman_gradient_flows_pairwise() -> None:
    g = torch.Generator().manual_seed(7)
    s = torch.randn(6, 20, generator=g, requires_grad=True)
    t = torch.randn(6, 20, generator=g)
    loss = 1 - spearman(s, t, backend="pairwise", strength=0.1).mean()
    loss.backward()
    assert s.grad is not None and torch.isfinite(s.grad).all()
    assert (s.grad.abs().sum(-1) > 0).all()
    # a small step against the gradient raises the correlation
    with torch.no_grad():
        after = spearman(s - 0.05 * s.grad / s.grad.norm(), t, backend="pairwise", strength=0.1)
    assert after.mean() > 1 - loss.detach()


def test_degenerate_rows_constant_length1_length2() -> None:
    const = torch.full((2, 6), 0.1, requires_grad=True)  # mean(0.1,...) != 0.1 in float32
    other = torch.randn(2, 6)
    assert soft_rank(const, backend="pairwise").tolist() == [[3.5] * 6] * 2
    r = spearman(const, other, backend="pairwise")
    r.sum().backward()
    assert r.tolist() == [0.0, 0.0] and torch.isfinite(const.grad).all()

    one = torch.randn(3, 1, requires_grad=True)
    assert soft_rank(one).tolist() == [[1.0]] * 3
    r = spearman(one, torch.randn(3, 1))
    r.sum().backward()
    assert r.tolist() == [0.0] * 3 and torch.isfinite(one.grad).all()

    two = torch.tensor([[0.0, 1.0], [0.0, 1.0], [2.0, 2.0]], requires_grad=True)
    ref = torch.tensor([[0.0, 5.0], [5.0, 0.0], [0.0, 1.0]])
    r = spearman(two, ref, strength=1e-3, backend="pairwise")
    torch.testing.assert_close(r, torch.tensor([1.0, -1.0, 0.0]))
    r.sum().backward()
    assert torch.isfinite(two.grad).all()


def test_empty_dimension() -> None:
    assert soft_rank(torch.empty(3, 0)).shape == (3, 0)
    assert spearman(torch.empty(3, 0), torch.empty(3, 0)).tolist() == [0.0] * 3


def test_dim0_matches_transposed_and_batched_3d() -> None:
    g = torch.Generator().manual_seed(8)
    a = torch.randn(25, 4, generator=g)
    b = a + torch.randn(25, 4, generator=g)
    torch.testing.assert_close(spearman(a, b, dim=0), spearman(a.T, b.T, dim=-1))
    a3 = torch.randn(2, 15, 3, generator=g)
    b3 = a3 + torch.randn(2, 15, 3, generator=g)
    r = spearman(a3, b3, dim=1)
    assert r.shape == (2, 3)
    loop = torch.stack([spearman(a3[i].T, b3[i].T) for i in range(2)])
    torch.testing.assert_close(r, loop)
    np.testing.assert_allclose(
        spearman(a3, b3, dim=1, strength=1e-5).flatten().numpy(),
        [spearmanr(a3[i, :, j], b3[i, :, j]).statistic for i in range(2) for j in range(3)],
        atol=1e-3,
    )


def test_invariant_to_positive_scale_and_shift() -> None:
    g = torch.Generator().manual_seed(9)
    x = torch.randn(4, 30, generator=g)
    y = torch.randn(4, 30, generator=g)
    torch.testing.assert_close(soft_rank(7.5 * x - 3.0, strength=0.05), soft_rank(x, strength=0.05),
                               rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(spearman(1e3 * x + 50.0, 0.01 * y - 2.0), spearman(x, y),
                               rtol=1e-4, atol=1e-4)


def test_clamped_into_unit_interval() -> None:
    g = torch.Generator().manual_seed(10)
    a = torch.randn(200, 37, generator=g)
    for r in (spearman(a, a), spearman(a, 3 * a + 1), spearman(a, -a), pearson(a, 2 * a - 1)):
        assert r.abs().max() <= 1.0
        torch.testing.assert_close(r.abs(), torch.ones(200), rtol=0, atol=1e-5)


def test_bf16_input_gives_fp32_accurate_output() -> None:
    g = torch.Generator().manual_seed(11)
    a = torch.randn(5, 40, generator=g).bfloat16().requires_grad_()
    b = torch.randn(5, 40, generator=g).bfloat16()
    r = spearman(a, b, backend="pairwise")
    assert r.dtype == torch.float32 and torch.isfinite(r).all()
    torch.testing.assert_close(r, spearman(a.detach().float(), b.float(), backend="pairwise"),
                               rtol=0, atol=1e-6)
    r_small = spearman(a.detach(), b, backend="pairwise", strength=1e-4)
    expected = _scipy_spearman_rows(a.detach().float(), b.float())
    np.testing.assert_allclose(r_small.double().numpy(), expected.numpy(), atol=1e-3)
    r.sum().backward()
    assert a.grad is not None and a.grad.dtype == torch.bfloat16 and torch.isfinite(a.grad).all()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        r_autocast = spearman(a.detach().float(), b.float(), backend="pairwise")
    torch.testing.assert_close(r_autocast, r.detach(), rtol=0, atol=1e-6)


# ------------------------------------------------------------------------ backends / validation


def test_backend_resolution_without_torchsort(no_torchsort: None) -> None:
    assert available_backends() == ["auto", "linear", "pairwise", "hard"]
    x = torch.randn(2, 8)
    assert resolve_backend("auto", x) == "linear"
    assert torch.equal(soft_rank(x, backend="auto"), soft_rank(x, backend="linear"))
    with pytest.raises(ImportError, match="pip install --no-build-isolation torchsort==0.1.10"):
        soft_rank(x, backend="torchsort")


def test_validation_errors() -> None:
    x = torch.randn(3, 4)
    with pytest.raises(ValueError, match=r"unknown ranking backend 'sorted'.*pairwise.*torchsort"):
        soft_rank(x, backend="sorted")
    with pytest.raises(ValueError, match=r"\(3, 4\).*\(4, 3\)"):
        spearman(x, x.T)
    with pytest.raises(ValueError, match=r"\(3, 4\).*\(3, 5\)"):
        pearson(x, torch.randn(3, 5))
    with pytest.raises(ValueError, match="floating point.*torch.int64"):
        spearman(torch.ones(3, 4, dtype=torch.long), x)
    with pytest.raises(ValueError, match="floating point"):
        soft_rank(torch.ones(3, 4, dtype=torch.int32))
    with pytest.raises(ValueError, match="dim=2 is out of range"):
        soft_rank(x, dim=2)
    with pytest.raises(ValueError, match="strength"):
        soft_rank(x, strength=0.0)
    with pytest.raises(ValueError, match="chunk_rows"):
        soft_rank(x, chunk_rows=0)
    with pytest.raises(ValueError, match="0-d"):
        soft_rank(torch.tensor(1.0))
    with pytest.raises(ValueError, match="eps"):
        pearson(x, x, eps=-1.0)


def test_torchsort_backend() -> None:
    pytest.importorskip("torchsort")
    ranking._load_torchsort.cache_clear()
    assert "torchsort" in available_backends()
    g = torch.Generator().manual_seed(12)
    ties = torch.randint(0, 5, (6, 15), generator=g).float()
    r = soft_rank(ties, strength=1e-3, backend="torchsort")
    np.testing.assert_allclose(r.numpy(), rankdata(ties.numpy(), axis=-1), atol=1e-4)
    a = torch.randn(4, 30, 3, generator=g, requires_grad=True)
    b = a.detach() + torch.randn(4, 30, 3, generator=g)
    assert resolve_backend("auto", a) == "torchsort"
    r = spearman(a, b, dim=1, strength=1e-5, backend="torchsort")
    np.testing.assert_allclose(
        r.detach().flatten().numpy(),
        [spearmanr(a.detach()[i, :, j], b[i, :, j]).statistic for i in range(4) for j in range(3)],
        atol=1e-3,
    )
    spearman(a, b, dim=1, strength=0.1, backend="torchsort").sum().backward()
    assert a.grad is not None and torch.isfinite(a.grad).all() and a.grad.abs().sum() > 0
    assert spearman(torch.ones(2, 5), torch.randn(2, 5), backend="torchsort").tolist() == [0.0, 0.0]


def test_center_unit_max_cpu_path_equals_inf_norms() -> None:
    """The CPU path takes max |x - mean| from the row max and min; it must equal the inf-norm
    (the GPU path) bit for bit, offsets and tiny spreads included."""
    g = torch.Generator().manual_seed(8)
    x = torch.cat([torch.randn(4, 300, generator=g), 1e6 + torch.randn(4, 300, generator=g),
                   1e-30 * torch.randn(4, 300, generator=g), torch.full((1, 300), 3.0)])
    u, constant = ranking._center_unit_max(x, -1, 1e-6)
    xc = x - x.mean(dim=-1, keepdim=True)
    spread = torch.linalg.vector_norm(xc, ord=float("inf"), dim=-1, keepdim=True)
    magnitude = torch.linalg.vector_norm(x, ord=float("inf"), dim=-1, keepdim=True)
    want_const = (spread <= 1e-6 * magnitude) | (spread < math.sqrt(torch.finfo(x.dtype).tiny))
    assert torch.equal(constant, want_const) and bool(constant[-1]) and not bool(constant[0])
    assert torch.equal(u, (xc / spread.masked_fill(want_const, 1.0)).masked_fill(want_const, 0.0))


def _opcheck_cases() -> list[tuple[str, tuple[torch.Tensor, ...]]]:
    g = torch.Generator().manual_seed(9)
    x = torch.randn(300, 5, generator=g).t()  # non-contiguous rows
    v = torch.randn(4, 300, generator=g).sort(dim=-1).values
    tied = torch.randint(0, 6, (3, 200), generator=g).double()
    return [("argsort_rows", (x,)), ("argsort_rows", (tied,)),
            ("searchsorted_rows", (v, v - 0.1)), ("hard_rank_rows", (x,)),
            ("hard_rank_rows", (tied,))]


@pytest.mark.parametrize("name, args", _opcheck_cases())
def test_custom_ops_match_their_fake_kernels(name: str, args: tuple[torch.Tensor, ...]) -> None:
    """The numpy kernels a compiled loss calls as `lud::` operators: schema, fake (meta)
    kernel and dispatch consistent (torch.library.opcheck), values those of the eager path."""
    op = getattr(torch.ops.lud, name).default
    torch.library.opcheck(op, args)
    got = op(*args)
    if name == "argsort_rows":
        assert torch.equal(args[0].gather(-1, got), args[0].sort(dim=-1).values)
    elif name == "searchsorted_rows":
        assert torch.equal(got, torch.searchsorted(args[0], args[1], right=True))
    else:
        want = rankdata(args[0].numpy(), axis=-1)
        assert torch.equal(got, torch.from_numpy(want).to(got.dtype))
