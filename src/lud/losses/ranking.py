"""Differentiable ranks and rank (Spearman) correlation in PyTorch.

Hard ranks have zero gradient almost everywhere, so a Spearman *loss* needs soft ranks. Backends:

``"pairwise"`` (pure PyTorch, always available)
    ``rank_i = 1 + sum_{j != i} sigmoid((z_i - z_j) / strength)`` on rows ``z`` standardised to
    zero mean and unit standard deviation (so ``strength`` is in units of the row's std and the
    ranks are invariant to positive scaling and shifting of the input). As ``strength -> 0`` a
    tie group gets exactly its average rank (``sigmoid(0) = 1/2``), i.e. the ranks converge to
    :func:`scipy.stats.rankdata`'s. Cost O(n^2) per row.
``"linear"`` (pure PyTorch, always available)
    The same sum with the sigmoid replaced by the clipped-linear (hard-sigmoid) kernel
    ``k(d) = clip(1/2 + d / (4 strength), 0, 1)``, which has the sigmoid's slope at 0 and is
    exactly 0 or 1 beyond ``|d| >= 2 strength``: ``rank_i = 1/2 + sum_j k(z_i - z_j)`` falls out
    of one sort, one ``searchsorted`` and prefix sums, O(n log n) per row forward and backward
    (:class:`_LinearSoftRank` derives it), no n x n buffer. Ties get exactly their average rank
    at any strength below half the smallest gap between distinct values, so the hard limit is
    reached at a finite strength, not only asymptotically. Deterministic. On CPU the sort
    permutation and the window search come from numpy (a packed-key sort 8x faster than
    ``torch.sort``, row-wise ``searchsorted`` 2x faster than torch's; :func:`_sort_rows`,
    :func:`_searchsorted_rows`), also under ``torch.compile``, where they are the custom
    operators ``lud::argsort_rows`` / ``lud::searchsorted_rows`` / ``lud::hard_rank_rows``;
    elsewhere everything is PyTorch.
``"torchsort"`` (when ``import torchsort`` works)
    ``torchsort.soft_rank`` with ``l2`` regularisation (projection onto the permutahedron),
    O(n log n), on the same standardised rows. Both methods become hard ranks once the gaps
    between standardised values exceed ``strength``, so one ``strength`` means roughly the same
    thing for both, but the soft values differ: results depend on the backend.
    Install: ``pip install --no-build-isolation torchsort==0.1.10`` (after torch).
``"hard"``
    Exact average ranks with no gradient (the result does not require grad). For reference
    values and for quantities that must not be back-propagated through (e.g. a temperature).
``"auto"``
    ``"torchsort"`` if it is installed and usable for the tensor's device, else ``"linear"``
    (measured: torchsort is the fastest where it runs, linear next, pairwise last).
    Use :func:`resolve_backend` to log which one ran.

The soft values of different backends differ at a finite strength (same hard limit): pin
``backend`` where numbers must be reproduced across machines.

Memory of the pairwise backend (design choice): the n x n matrix of pairwise terms is built for
a chunk of rows at a time inside a custom :class:`torch.autograd.Function` that stores only the
standardised input and *recomputes* each chunk's matrix in backward, where the gradient has the
closed form ``dL/dz_k = (g_k * sum_j w_kj - sum_i w_ki g_i) / strength`` with
``w = sigmoid'((z_i - z_j) / strength)``. A plain Python loop over chunks would keep every
chunk's n x n graph alive until backward; this way peak memory is one chunk (about
``_CHUNK_BYTES``) regardless of the number of rows. Double backward is not supported.

All computation is in float32 (float64 inputs stay float64) with autocast disabled; half and
bfloat16 inputs give float32 outputs and receive gradients in their own dtype.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import math
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from types import ModuleType

import numpy as np
import torch
from torch import Tensor
from torch.autograd.function import FunctionCtx, once_differentiable

__all__ = [
    "BACKENDS",
    "available_backends",
    "hard_rank",
    "pearson",
    "resolve_backend",
    "soft_rank",
    "spearman",
]

BACKENDS: tuple[str, ...] = ("auto", "linear", "pairwise", "torchsort", "hard")
_TORCHSORT_INSTALL = (
    "install it after torch with `pip install --no-build-isolation torchsort==0.1.10` "
    "(its isolated build fails), or use backend='pairwise'"
)
# Budget for the one n x n buffer of a pairwise chunk (forward and backward alike).
_CHUNK_BYTES = 64 * 2**20
# Element budget of one linear-backend chunk (its intermediates are a few times this, in bytes x8).
_LINEAR_CHUNK_ELEMS = 2**22
# A row whose centred values are all within this many machine epsilons of its largest magnitude
# is constant up to rounding (the mean itself carries a few ulps of error).
_REL_EPS_ULPS = 32


# --------------------------------------------------------------------------- helpers


@functools.lru_cache(maxsize=1)
def _load_torchsort() -> ModuleType | None:
    """The ``torchsort`` module, or ``None`` if it is missing or its extension fails to load."""
    try:
        return importlib.import_module("torchsort")
    except (ImportError, OSError):  # missing, or its compiled extension fails to load
        return None


@functools.lru_cache(maxsize=1)
def _torchsort_has_cuda() -> bool:
    try:
        return importlib.util.find_spec("torchsort.isotonic_cuda") is not None
    except (ImportError, ValueError):
        return False


def _torchsort_usable(device: torch.device) -> bool:
    if _load_torchsort() is None:
        return False
    if device.type == "cpu":
        return True
    return device.type == "cuda" and _torchsort_has_cuda()


def available_backends() -> list[str]:
    """Names accepted by ``backend=`` in this environment (``"auto"`` is always accepted)."""
    names = ["auto", "linear", "pairwise", "hard"]
    if _load_torchsort() is not None:
        names.insert(3, "torchsort")
    return names


def resolve_backend(backend: str, x: Tensor | None = None) -> str:
    """The concrete backend (``linear``/``pairwise``/``torchsort``/``hard``) ``backend`` means for ``x``.

    Raises:
        ValueError: unknown backend name.
        ImportError: ``"torchsort"`` requested but not installed / not built for ``x``'s device.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown ranking backend {backend!r}; valid: {', '.join(BACKENDS)}")
    device = x.device if x is not None else torch.device("cpu")
    if backend == "auto":
        if torch.compiler.is_compiling():
            # torchsort's extension is opaque to the compiler (a graph break at every call):
            # a compiled loss ranks with the pure-PyTorch backend, which compiles to one graph
            return "linear"
        # Measured on the 2-core dev CPU, one thread, soft_rank forward+backward: 1000 x 1000
        # torchsort 60 ms, linear 86 ms; 100 x 100 both 0.6 ms, pairwise 5.8 ms. Pairwise is
        # never the fastest.
        return "torchsort" if _torchsort_usable(device) else "linear"
    if backend == "torchsort":
        if _load_torchsort() is None:
            raise ImportError(
                f"ranking backend 'torchsort' requested but torchsort is not importable: "
                f"{_TORCHSORT_INSTALL}"
            )
        if not _torchsort_usable(device):
            raise ImportError(
                f"torchsort has no kernel for device {device.type!r} (CPU always; CUDA only when "
                f"built with nvcc); use backend='pairwise' or 'auto'"
            )
    return backend


def _check_tensor(x: object, name: str) -> Tensor:
    if not isinstance(x, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be floating point, got dtype {x.dtype}")
    if x.dim() == 0:
        raise ValueError(f"{name} must have at least one dimension, got a 0-d tensor")
    return x


def _check_dim(dim: int, ndim: int) -> int:
    if not isinstance(dim, int) or not -ndim <= dim < ndim:
        raise ValueError(f"dim={dim!r} is out of range for a tensor with {ndim} dimension(s)")
    return dim % ndim


def _check_strength(strength: float) -> float:
    s = float(strength)
    if not (math.isfinite(s) and s > 0):
        raise ValueError(f"strength must be a finite positive number, got {strength!r}")
    return s


def _compute_dtype(*xs: Tensor) -> torch.dtype:
    return torch.float64 if any(x.dtype == torch.float64 for x in xs) else torch.float32


def _no_autocast(device: torch.device) -> AbstractContextManager[object]:
    # bmm/std under autocast would run in half precision; ranks and correlations need fp32.
    if device.type in ("cpu", "cuda"):
        return torch.autocast(device_type=device.type, enabled=False)
    return nullcontext()


def _center_unit_max(x: Tensor, dim: int, rel_eps: float) -> tuple[Tensor, Tensor]:
    """Centre ``x`` along ``dim`` and divide by the largest |centred value| (detached).

    Returns ``(u, constant)``: ``u`` has max |u| = 1 per vector (so sums of squares cannot
    underflow), and is exactly 0 where ``constant`` (the vector is constant up to ``rel_eps``
    relative to its largest magnitude, or its spread is below ``sqrt(finfo.tiny)``, about 1e-19
    in float32). Safe denominators keep gradients finite there.

    Why the absolute floor: the backward pass multiplies by ``1 / spread``. A spread in the
    subnormal range (a Gram row of probabilities that underflowed, e.g. ``[0, ..., 0, 5e-43]``)
    makes that ``inf`` and the row's gradient NaN; below ``sqrt(tiny)`` the values are also mostly
    underflow debris, so their order carries no information worth a gradient.
    """
    mean = x.mean(dim=dim, keepdim=True)
    xc = x - mean
    if x.device.type == "cpu":
        # max |x - mean| from the row's max and min: rounding is monotone, so fl(max x - mean)
        # is exactly max fl(x - mean). On CPU two plain reductions are ~10x faster than an
        # inf-norm; elsewhere the two norms are fewer kernels for the same values.
        top = x.detach().amax(dim=dim, keepdim=True)
        bottom = x.detach().amin(dim=dim, keepdim=True)
        m = mean.detach()
        spread = torch.maximum(top - m, m - bottom)
        magnitude = torch.maximum(top, -bottom)
    else:
        spread = torch.linalg.vector_norm(xc.detach(), ord=math.inf, dim=dim, keepdim=True)
        magnitude = torch.linalg.vector_norm(x.detach(), ord=math.inf, dim=dim, keepdim=True)
    floor = math.sqrt(torch.finfo(x.dtype).tiny)
    # also catches spread == magnitude == 0
    constant = (spread <= rel_eps * magnitude) | (spread < floor)
    u = xc / spread.masked_fill(constant, 1.0)
    return u.masked_fill(constant, 0.0), constant


def _standardize(x: Tensor, dim: int) -> Tensor:
    """Zero mean, unit (population) std along ``dim``; constant vectors become all zeros."""
    rel_eps = _REL_EPS_ULPS * torch.finfo(x.dtype).eps
    u, constant = _center_unit_max(x, dim, rel_eps)
    ms = u.square().mean(dim=dim, keepdim=True)  # >= 1/n unless constant
    return u / ms.masked_fill(constant, 1.0).sqrt()


_NUMPY_SORT_DTYPES = (torch.float32, torch.float64, torch.int32, torch.int64)


def _sort_rows(x: Tensor) -> tuple[Tensor, Tensor]:
    """``x.sort(dim=-1)`` of a 2-D tensor: (sorted values, permutation).

    On CPU numpy's vectorised (AVX-512/AVX2) sort computes the permutation: 6-9x faster than
    ``torch.sort`` here (1000 x 1000 float32: 4.7-7 ms against 43 ms, one thread,
    ``benchmarks/ranking_kernels.py``); under
    ``torch.compile`` through the custom operator ``lud::argsort_rows`` (an opaque call in the
    graph, no break). numpy's order among equal values may differ from torch's (float32 rows
    of ~1000 get a stable one, :func:`_packed_argsort`); every caller gives ties identical
    results whatever their order, and each path is deterministic. Values are
    gathered with torch, so autograd and dtypes are unchanged.
    """
    if _numpy_rows(x):
        order = _on_numpy(_numpy_argsort_rows, torch.ops.lud.argsort_rows, x.detach())
        return x.gather(-1, order), order
    return x.sort(dim=-1, stable=True)


def _numpy_rows(x: Tensor) -> bool:
    """``x`` is a 2-D CPU tensor of a dtype the numpy kernels below take."""
    return x.device.type == "cpu" and x.dtype in _NUMPY_SORT_DTYPES and x.dim() == 2


def _on_numpy(eager: Callable[..., Tensor], op: Callable[..., Tensor], *args: Tensor) -> Tensor:
    """A numpy kernel: called directly, or as its custom operator when ``torch.compile`` is
    tracing (an opaque call in the graph instead of a graph break)."""
    return op(*args) if torch.compiler.is_compiling() else eager(*args)


# Where the packed-key sort beats numpy's argsort (benchmarks/ranking_kernels.py, one thread, AMD
# EPYC): rows of about a thousand with the keys in cache — a 1000 x 1000 Gram matrix 4.7 ms
# against 7.0 ms. Short rows (64 x 100: 0.05 against 0.02 ms) and inputs past the cache
# (32 x 131072: 77 against 46 ms) go to argsort.
_PACKED_MIN_LEN = 512
_PACKED_MAX_ELEMS = 2**21


def _numpy_argsort_rows(x: Tensor) -> Tensor:
    x = x.contiguous()  # a contiguous permutation whatever the input's strides (the fake kernel's)
    if (x.dtype == torch.float32 and x.shape[-1] >= _PACKED_MIN_LEN
            and x.numel() <= _PACKED_MAX_ELEMS):
        return _packed_argsort(x)
    return torch.from_numpy(x.numpy().argsort(axis=-1))


def _packed_argsort(x: Tensor) -> Tensor:
    """Stable row-wise argsort of a 2-D float32 CPU tensor via one int64 value sort.

    Each float's bits, mapped to an int32 of the same order (negatives get their magnitude bits
    flipped; ``+ 0.0`` turns -0.0 into 0.0), go to the high half of an int64 and the column
    index to the low half; numpy's vectorised sort of those keys (no permutation to carry)
    leaves the stable order in the low halves. Faster than ``argsort`` of the floats only for
    rows of about a thousand entries in cache (``_numpy_argsort_rows`` chooses).
    """
    bits = (x + 0.0).view(torch.int32)
    key = torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits).to(torch.int64) << 32
    key |= torch.arange(x.shape[-1], dtype=torch.int64)
    key.numpy().sort(axis=-1)
    return key & 0xFFFFFFFF


# Rows at least this long are searched row by row in numpy (see _searchsorted_rows).
_NUMPY_SEARCH_MIN_LEN = 128


def _searchsorted_rows(v: Tensor, q: Tensor) -> Tensor:
    """``torch.searchsorted(v, q, right=True)`` for 2-D ``v`` (rows sorted) and ``q`` (rows
    sorted too).

    On CPU rows of at least ``_NUMPY_SEARCH_MIN_LEN`` go through numpy's row-wise
    ``searchsorted``, which narrows each search with the previous (sorted) query's result:
    1000 x 1000 float32 in 14 ms on one core against torch's 31 ms (16 ms on two;
    ``benchmarks/ranking_kernels.py``); under
    ``torch.compile`` through the custom operator ``lud::searchsorted_rows``. Identical results
    (both count the entries ``<=`` each query). Not threaded: numpy threads beside torch's
    spinning OpenMP workers made the whole loss slower, not faster.
    """
    if not _numpy_rows(v) or v.shape[-1] < _NUMPY_SEARCH_MIN_LEN:
        return torch.searchsorted(v, q, right=True)
    return _on_numpy(_numpy_searchsorted_rows, torch.ops.lud.searchsorted_rows,
                     v.detach(), q.detach())


def _numpy_searchsorted_rows(v: Tensor, q: Tensor) -> Tensor:
    vn, qn = v.contiguous().numpy(), q.contiguous().numpy()
    out = np.empty(qn.shape, dtype=np.int64)
    for r in range(vn.shape[0]):
        out[r] = np.searchsorted(vn[r], qn[r], side="right")
    return torch.from_numpy(out)


# The numpy kernels as custom operators, so that a compiled loss calls them too (an opaque call
# in the graph) instead of torch.sort / torch.searchsorted: at B=256, C=1000 the compiled LUD
# was slower than the eager one without them. CPU float32/float64/int32/int64 2-D only (the
# callers check); the fake kernels give the output's shape and dtype to the tracer.
@torch.library.custom_op("lud::argsort_rows", mutates_args=(), device_types="cpu")
def _argsort_rows_op(x: Tensor) -> Tensor:
    return _numpy_argsort_rows(x)


@_argsort_rows_op.register_fake
def _argsort_rows_fake(x: Tensor) -> Tensor:
    return torch.empty(x.shape, dtype=torch.int64, device=x.device)


@torch.library.custom_op("lud::searchsorted_rows", mutates_args=(), device_types="cpu")
def _searchsorted_rows_op(v: Tensor, q: Tensor) -> Tensor:
    return _numpy_searchsorted_rows(v, q)


@_searchsorted_rows_op.register_fake
def _searchsorted_rows_fake(v: Tensor, q: Tensor) -> Tensor:
    return torch.empty(q.shape, dtype=torch.int64, device=q.device)


def _to_rows(x: Tensor, dim: int) -> tuple[Tensor, tuple[int, ...]]:
    moved = x.movedim(dim, -1)
    # An explicit row count (not -1) so that an empty ranking dimension reshapes too.
    return moved.reshape(math.prod(moved.shape[:-1]), moved.shape[-1]), tuple(moved.shape)


def _from_rows(rows: Tensor, moved_shape: tuple[int, ...], dim: int) -> Tensor:
    return rows.reshape(moved_shape).movedim(-1, dim)


# --------------------------------------------------------------------------- pairwise backend


def _auto_chunk_rows(n: int, dtype: torch.dtype) -> int:
    itemsize = torch.finfo(dtype).bits // 8
    return max(1, _CHUNK_BYTES // (n * n * itemsize))


def _pairwise_tanh(u: Tensor, buf: Tensor) -> Tensor:
    """Fill ``buf`` (r, n, n) with tanh(u_i - u_j) for the (r, n) rows ``u``; returns ``buf``.

    sigmoid(d) = (1 + tanh(d / 2)) / 2, and tanh is ~2.5x faster than sigmoid on CPU; one reused
    buffer avoids page-faulting a fresh n x n allocation for every chunk.
    """
    torch.sub(u.unsqueeze(-1), u.unsqueeze(-2), out=buf)
    return buf.tanh_()


class _PairwiseSoftRank(torch.autograd.Function):
    """Row-chunked sigmoid soft rank of a 2-D tensor; backward recomputes per chunk.

    With ``u = z / (2 * strength)`` and ``t_ij = tanh(u_i - u_j)``:
    ``rank_i = 1/2 + n/2 + (1/2) sum_j t_ij`` and, since ``d t / d u = 1 - t^2`` and ``t^2`` is
    symmetric, ``dL/dz_k = (g_k (n - sum_j t_kj^2) - sum_i g_i (1 - t_ki^2)) / (4 strength)``.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: FunctionCtx, z: Tensor, strength: float, chunk: int
    ) -> Tensor:
        ctx.save_for_backward(z)
        ctx.strength, ctx.chunk = strength, chunk  # type: ignore[attr-defined]
        rows, n = z.shape
        u = z / (2 * strength)
        out = torch.empty_like(z)
        buf = z.new_empty(min(chunk, rows), n, n)
        with _no_autocast(z.device):
            for start in range(0, rows, chunk):
                uc = u[start:start + chunk]
                t = _pairwise_tanh(uc, buf[: uc.shape[0]])
                # Summing over all j includes the j = i term sigmoid(0) = 1/2, hence 1/2 + n/2.
                out[start:start + chunk] = t.sum(dim=-1).mul_(0.5).add_(0.5 + n / 2)
        return out

    @staticmethod
    @once_differentiable
    def backward(  # type: ignore[override]
        ctx: FunctionCtx, grad_out: Tensor
    ) -> tuple[Tensor | None, None, None]:
        (z,) = ctx.saved_tensors  # type: ignore[attr-defined]
        strength, chunk = ctx.strength, ctx.chunk  # type: ignore[attr-defined]
        rows, n = z.shape
        u = z / (2 * strength)
        g = grad_out.to(z.dtype).contiguous()
        # One matrix product gives both sum_j t_kj^2 (against ones) and (t^2 g)_k.
        rhs = torch.stack([torch.ones_like(g), g], dim=-1)
        grad = torch.empty_like(z)
        buf = z.new_empty(min(chunk, rows), n, n)
        with _no_autocast(z.device):
            for start in range(0, rows, chunk):
                stop = start + chunk
                t2 = _pairwise_tanh(u[start:stop], buf[: u[start:stop].shape[0]]).square_()
                sums = torch.bmm(t2, rhs[start:stop])
                gc = g[start:stop]
                weighted = gc.sum(-1, keepdim=True) - sums[..., 1]  # sum_i g_i (1 - t_ki^2)
                grad[start:stop] = gc * (n - sums[..., 0]) - weighted
        return grad / (4 * strength), None, None


# --------------------------------------------------------------------------- linear backend


def _auto_chunk_rows_linear(rows: int, n: int) -> int:
    # Every intermediate is O(rows * n); one chunk unless that exceeds the element budget.
    return rows if rows * n <= _LINEAR_CHUNK_ELEMS else max(1, _LINEAR_CHUNK_ELEMS // n)


def _linear_window(z: Tensor, half_width: float) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Sort each row of ``z`` and find the window ``|v_q - v_p| < h`` of every sorted position.

    Returns ``(v, order, lo, hi, h)``: ``v`` the sorted rows, ``order`` their permutation, and
    for sorted position ``p`` the window ``lo_p <= q < hi_p``; ``lo_p`` = #{q: v_q <= v_p - h}
    (one ``searchsorted`` with sorted queries). ``hi`` needs no second search: ``v_q`` is at or
    above ``v_p + h`` exactly when ``lo_q > p``, so ``hi_p`` = #{q: lo_q <= p}, a histogram of
    ``lo`` and a prefix sum. Defining both edges through the same comparisons also makes the
    window relation exactly symmetric, which the backward formula relies on. ``h`` is per row:
    ``half_width``, raised to a few ulps of the row's largest magnitude so that a value and its
    ties always fall inside their own window, however small ``half_width`` is.
    """
    v, order = _sort_rows(z)
    ulps = 8 * torch.finfo(z.dtype).eps
    h = (v.detach().abs().amax(dim=-1, keepdim=True) * ulps).clamp_min_(half_width)
    lo = _searchsorted_rows(v, v - h)
    hist = torch.zeros_like(lo).scatter_add_(-1, lo, torch.ones_like(lo))
    return v, order, lo, hist.cumsum_(dim=-1), h


def _window_sums(sorted_vals: Tensor, lo: Tensor, hi: Tensor) -> Tensor:
    """``sum_{lo_p <= q < hi_p} sorted_vals[q]`` per position, via float64 prefix sums.

    Float64 because the window sum is a difference of two prefix sums up to ``n`` times larger
    than it: in float32 that cancellation would cost ~1e-3 in a rank at strength 1e-3.
    """
    prefix = torch.nn.functional.pad(sorted_vals.double().cumsum(dim=-1), (1, 0))
    return prefix.gather(-1, hi) - prefix.gather(-1, lo)


class _LinearSoftRank(torch.autograd.Function):
    """Soft rank with the clipped-linear kernel, O(n log n) forward and backward per row.

    ``k(d) = clip(1/2 + d / (2h), 0, 1)``, ``rank_i = 1/2 + sum_j k(z_i - z_j)`` (the j = i term
    is k(0) = 1/2). In sorted order ``v``, with ``lo_p`` = #{q: v_q <= v_p - h} (pairs with
    k = 1) and the window ``W_p = [lo_p, hi_p)`` = {q: |v_p - v_q| < h} of ``c_p`` elements
    (p itself and its ties included):
    ``rank_p = 1/2 + lo_p + c_p / 2 + (c_p v_p - sum_{q in W_p} v_q) / (2h)``.
    Each pair inside the window has slope ±1/(2h), each pair outside slope 0; the window relation
    is symmetric, so ``dL/dv_p = (g_p c_p - sum_{q in W_p} g_q) / (2h)`` — again one prefix sum
    (of g in sorted order). One sort, one ``searchsorted``, prefix sums: no n x n buffer.
    Results are scattered back to the input order; ties get identical values (their windows
    coincide), so the sort's order among ties does not matter.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: FunctionCtx, z: Tensor, half_width: float, chunk: int
    ) -> Tensor:
        out = torch.empty_like(z)
        saved = []
        for start in range(0, z.shape[0], chunk):
            v, order, lo, hi, h = _linear_window(z[start:start + chunk], half_width)
            inside = ((hi - lo) * v.double() - _window_sums(v, lo, hi)).to(z.dtype) / (2 * h)
            # A window of ties only (always so in the hard limit) contributes exactly 0; the
            # prefix-sum difference would leave rounding error / h there.
            flat = v.gather(-1, hi - 1) == v.gather(-1, lo)
            # 1/2 + lo + c/2 with c = hi - lo
            ranks = inside.masked_fill_(flat, 0.0).add_((lo + hi + 1).to(z.dtype), alpha=0.5)
            out[start:start + chunk].scatter_(-1, order, ranks)
            saved += [order, lo, hi, h]
        ctx.save_for_backward(*saved)
        ctx.chunk = chunk  # type: ignore[attr-defined]
        return out

    @staticmethod
    @once_differentiable
    def backward(  # type: ignore[override]
        ctx: FunctionCtx, grad_out: Tensor
    ) -> tuple[Tensor | None, None, None]:
        chunk = ctx.chunk  # type: ignore[attr-defined]
        saved = ctx.saved_tensors  # type: ignore[attr-defined]
        grad = torch.empty(grad_out.shape, dtype=saved[3].dtype, device=grad_out.device)
        for i in range(len(saved) // 4):
            order, lo, hi, h = saved[4 * i:4 * i + 4]
            rows = slice(i * chunk, (i + 1) * chunk)
            g = grad_out[rows].to(h.dtype).gather(-1, order)
            wg = _window_sums(g, lo, hi).to(g.dtype)
            grad[rows].scatter_(-1, order, (g * (hi - lo) - wg) / (2 * h))
        return grad, None, None


# --------------------------------------------------------------------------- public API


def hard_rank(x: Tensor, dim: int = -1) -> Tensor:
    """Exact ranks 1..n along ``dim``, ties get their average rank (``scipy.stats.rankdata``).

    Accepts floating or integer input; returns float32 (float64 for float64 input), detached.
    A vector containing NaN gets all-NaN ranks (scipy's ``nan_policy='propagate'``).
    """
    if not isinstance(x, Tensor):
        raise ValueError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.is_complex() or x.dtype == torch.bool:
        raise ValueError(f"x must be real-valued (floating or integer), got dtype {x.dtype}")
    if x.dim() == 0:
        raise ValueError("x must have at least one dimension, got a 0-d tensor")
    dim = _check_dim(dim, x.dim())
    out_dtype = _compute_dtype(x)
    with torch.no_grad():
        rows, shape = _to_rows(x.detach(), dim)
        if rows.numel() == 0:
            return _from_rows(rows.to(out_dtype), shape, dim)
        if _numpy_rows(rows):
            ranks = _on_numpy(_hard_rank_rows_eager, torch.ops.lud.hard_rank_rows, rows)
        else:
            ranks = _hard_rank_rows(rows, out_dtype)
        return _from_rows(ranks, shape, dim)


def _hard_rank_rows(rows: Tensor, out_dtype: torch.dtype) -> Tensor:
    ordered, order = _sort_rows(rows)
    avg = _sorted_average_ranks(ordered, out_dtype)
    ranks = torch.empty(order.shape, dtype=out_dtype, device=rows.device)
    return _nan_rows(rows, ranks.scatter_(-1, order, avg))


def _hard_rank_rows_eager(rows: Tensor) -> Tensor:
    return _hard_rank_rows(rows.contiguous(), _compute_dtype(rows))


@torch.library.custom_op("lud::hard_rank_rows", mutates_args=(), device_types="cpu")
def _hard_rank_rows_op(rows: Tensor) -> Tensor:
    return _hard_rank_rows_eager(rows)


@_hard_rank_rows_op.register_fake
def _hard_rank_rows_fake(rows: Tensor) -> Tensor:
    return torch.empty(rows.shape, dtype=_compute_dtype(rows), device=rows.device)


def _sorted_average_ranks(ordered: Tensor, out_dtype: torch.dtype) -> Tensor:
    """1-based average ranks of the (rows, n) rows ``ordered``, each sorted ascending."""
    rows, n = ordered.shape
    pos = torch.arange(n, device=ordered.device)
    tied = ordered[:, 1:] == ordered[:, :-1]
    if ordered.device.type != "cpu" or torch.compiler.is_compiling():
        return _tie_average(tied, pos, out_dtype)
    # On CPU a data-dependent branch costs no device sync: the rank is the position except inside
    # tie groups, so only those positions are visited (the running max/min over every position
    # took two thirds of this function's time on a tied 1000 x 1000 Gram matrix, and most of it on
    # 131072-wide vocabulary rows, where every row holds some ties).
    avg = (pos + 1).to(out_dtype).expand(rows, n)
    with_ties = tied.any(dim=-1).nonzero().squeeze(-1)  # often none, or a few rows
    if with_ties.numel() == 0:
        return avg
    r, c = tied[with_ties].nonzero(as_tuple=True)  # entry c equals entry c + 1; row-major order
    r = with_ties[r]
    # consecutive tied pairs of a row form one group: positions first .. last
    new = torch.ones_like(r, dtype=torch.bool)
    new[1:] = (r[1:] != r[:-1]) | (c[1:] != c[:-1] + 1)
    is_last = torch.ones_like(new)
    is_last[:-1] = new[1:]
    group = new.cumsum(0) - 1
    last = c[is_last] + 1
    group_avg = (c[new] + last).to(out_dtype) / 2 + 1
    avg = avg.clone()
    avg[r, c] = group_avg[group]
    avg[r[is_last], last] = group_avg
    return avg


def _tie_average(tied: Tensor, pos: Tensor, out_dtype: torch.dtype) -> Tensor:
    """Average 1-based ranks in sorted rows given ``tied`` (rows, n - 1): entry i equals i + 1.

    A tie group spans positions first..last; its average rank is (first + last) / 2 + 1. Both
    come from running max/min: O(n).
    """
    rows, n = tied.shape[0], tied.shape[1] + 1
    pos = pos.expand(rows, n)
    starts = torch.ones((rows, n), dtype=torch.bool, device=tied.device)
    starts[:, 1:] = ~tied
    ends = torch.ones_like(starts)
    ends[:, :-1] = ~tied
    first = torch.where(starts, pos, 0).cummax(dim=-1).values
    last = torch.where(ends, pos, n - 1).flip(-1).cummin(dim=-1).values.flip(-1)
    return (first + last).to(out_dtype) / 2 + 1


def _nan_rows(rows: Tensor, ranks: Tensor) -> Tensor:
    """``ranks`` with every row of ``rows`` that holds a NaN set to NaN."""
    if not rows.is_floating_point():
        return ranks
    return ranks.masked_fill(rows.isnan().any(dim=-1, keepdim=True), float("nan"))


def soft_rank(
    x: Tensor,
    dim: int = -1,
    strength: float = 1e-2,
    backend: str = "auto",
    standardize: bool = True,
    chunk_rows: int | None = None,
) -> Tensor:
    """Differentiable ranks (1 = smallest) along ``dim``; same shape as ``x``.

    Args:
        x: floating tensor of any shape.
        dim: the dimension to rank along.
        strength: softness; the width of the sigmoid / the l2 regularisation, in units of the
            vector's std when ``standardize``. Smaller = closer to hard ranks, sharper gradients.
        backend: ``"auto"``, ``"linear"``, ``"pairwise"``, ``"torchsort"`` or ``"hard"``
            (module docstring).
        standardize: z-score each vector first (scale-free ``strength``; constant vectors give
            all-tied ranks ``(n + 1) / 2``). Without it ``strength`` is in the input's units.
        chunk_rows: rows per chunk of the pairwise backend (default from a 64 MiB budget for its
            n x n buffer) and of the linear backend (default: all rows in one chunk up to 4M
            elements). Results do not depend on it. Ignored by other backends.

    Returns:
        float32 ranks (float64 for float64 input). ``"hard"`` returns a tensor without grad.
    """
    x = _check_tensor(x, "x")
    dim = _check_dim(dim, x.dim())
    strength = _check_strength(strength)
    if chunk_rows is not None and (not isinstance(chunk_rows, int) or chunk_rows < 1):
        raise ValueError(f"chunk_rows must be a positive int or None, got {chunk_rows!r}")
    name = resolve_backend(backend, x)
    dtype = _compute_dtype(x)
    with _no_autocast(x.device):
        rows, shape = _to_rows(x.to(dtype), dim)
        n = rows.shape[-1]
        if rows.numel() == 0:
            return _from_rows(rows, shape, dim)
        z = _standardize(rows, -1) if standardize else rows
        if name == "hard":
            ranks = hard_rank(z, dim=-1)
        elif name == "torchsort":
            ts = _load_torchsort()
            assert ts is not None  # resolve_backend checked
            ranks = ts.soft_rank(
                z.contiguous(), regularization="l2", regularization_strength=strength
            )
        elif name == "linear":
            rows_n = z.shape[0]
            chunk = chunk_rows if chunk_rows is not None else _auto_chunk_rows_linear(rows_n, n)
            # half-width 2 * strength: the kernel's slope at 0, 1/(4 strength), is the sigmoid's
            ranks = _LinearSoftRank.apply(z.contiguous(), 2 * strength, chunk)
        else:
            chunk = chunk_rows if chunk_rows is not None else _auto_chunk_rows(n, dtype)
            ranks = _PairwiseSoftRank.apply(z.contiguous(), strength, chunk)
        return _from_rows(ranks, shape, dim)


def pearson(a: Tensor, b: Tensor, dim: int = -1, eps: float | None = None) -> Tensor:
    """Pearson correlation of ``a`` and ``b`` along ``dim`` (that dimension is reduced).

    A vector that is constant (length 1 included) correlates 0 with anything, with finite
    (zero) gradients. The result is clamped into [-1, 1]; float32 (float64 if an input is).

    Args:
        eps: relative tolerance for "constant": a vector whose centred values are all within
            ``eps * max|value|`` of zero. Default ``32 * torch.finfo(dtype).eps``. A vector whose
            spread is below ``sqrt(torch.finfo(dtype).tiny)`` (~1e-19 in float32) also counts as
            constant: its ``1 / spread`` gradient would overflow.
    """
    a, b = _check_tensor(a, "a"), _check_tensor(b, "b")
    if a.shape != b.shape:
        raise ValueError(
            f"shape mismatch: a has shape {tuple(a.shape)}, b has shape {tuple(b.shape)}"
        )
    dim = _check_dim(dim, a.dim())
    dtype = _compute_dtype(a, b)
    rel_eps = _REL_EPS_ULPS * torch.finfo(dtype).eps if eps is None else float(eps)
    if not (math.isfinite(rel_eps) and rel_eps >= 0):
        raise ValueError(f"eps must be a finite non-negative number, got {eps!r}")
    with _no_autocast(a.device):
        a, b = a.to(dtype), b.to(dtype)
        if a.shape[dim] == 0:
            return a.sum(dim=dim) * 0  # no data: correlation 0, keeps the graph
        ua, const_a = _center_unit_max(a, dim, rel_eps)
        ub, const_b = _center_unit_max(b, dim, rel_eps)
        # Scaling by the detached max leaves r unchanged; it keeps the sums of squares >= 1.
        num = (ua * ub).sum(dim=dim)
        degenerate = (const_a | const_b).squeeze(dim)
        prod = ua.square().sum(dim=dim) * ub.square().sum(dim=dim)
        den = prod.masked_fill(degenerate, 1.0).sqrt()
        return (num / den).masked_fill_(degenerate, 0.0).clamp_(-1.0, 1.0)


def spearman(
    a: Tensor,
    b: Tensor,
    dim: int = -1,
    strength: float = 1e-2,
    backend: str = "auto",
    eps: float | None = None,
) -> Tensor:
    """(Soft) Spearman rank correlation of ``a`` and ``b`` along ``dim`` (reduced).

    Pearson correlation of :func:`soft_rank` of each input (standardised, same ``strength`` and
    ``backend``). At small ``strength`` this matches ``scipy.stats.spearmanr`` including ties.
    Constant or length-1 vectors give 0. A loss is typically ``1 - spearman(s, t).mean()``.
    """
    a, b = _check_tensor(a, "a"), _check_tensor(b, "b")
    if a.shape != b.shape:
        raise ValueError(
            f"shape mismatch: a has shape {tuple(a.shape)}, b has shape {tuple(b.shape)}"
        )
    dim = _check_dim(dim, a.dim())
    dtype = _compute_dtype(a, b)
    ra = soft_rank(a.to(dtype), dim=dim, strength=strength, backend=backend)
    rb = soft_rank(b.to(dtype), dim=dim, strength=strength, backend=backend)
    return pearson(ra, rb, dim=dim, eps=eps)
