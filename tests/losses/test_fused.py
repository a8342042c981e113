"""Token-chunked and fused (output layer + loss) paths of :mod:`lud.losses.fused`: equal to the
unfused loss in value and gradient, and the fused path never allocates the (N, V) logits."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from lud.losses import build_loss
from lud.losses.fused import (
    chunked_token_loss,
    forward_kl_rows,
    fused_linear_token_loss,
    resolve_row_loss,
)


def _problem(n: int = 37, h: int = 16, v: int = 50, seed: int = 0, ignored: int = 5):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, h, generator=g)
    weight = torch.randn(v, h, generator=g) / h**0.5
    bias = torch.randn(v, generator=g)
    teacher = (hidden @ weight.t() + torch.randn(n, v, generator=g)) * 2
    targets = torch.randint(0, v, (n,), generator=g)
    targets[:ignored] = -100
    return hidden, weight, bias, teacher, targets


def _unfused(row_loss, hidden, weight, bias, teacher, targets):
    z = F.linear(hidden, weight, bias).float()
    values = row_loss(z, teacher, targets)
    keep = targets != -100
    return values[keep].sum() / keep.sum().clamp_min(1)


def _grads(loss, tensors):
    return torch.autograd.grad(loss, tensors)


def _ce_rows(z, t, y):
    return F.cross_entropy(z, y, reduction="none", ignore_index=-100)


def _kl_plus_ce_rows(z, t, y):
    return forward_kl_rows(z, t) + 0.5 * _ce_rows(z, t, y)


@pytest.mark.parametrize("row_loss", [forward_kl_rows, _kl_plus_ce_rows])
@pytest.mark.parametrize("chunk", [1, 7, 37, 100])
@pytest.mark.parametrize("grad_in_forward", [True, False])
@pytest.mark.parametrize("with_bias", [True, False])
def test_fused_equals_unfused_value_and_gradients(row_loss, chunk, grad_in_forward, with_bias) -> None:
    hidden, weight, bias, teacher, targets = _problem()
    bias = bias if with_bias else None
    leaves = [x.clone().requires_grad_(True) for x in (hidden, weight) + ((bias,) if with_bias else ())]
    want = _unfused(row_loss, leaves[0], leaves[1], leaves[2] if with_bias else None, teacher, targets)
    want_g = _grads(want, leaves)
    got = fused_linear_token_loss(row_loss, leaves[0], leaves[1], leaves[2] if with_bias else None,
                                  teacher, targets, chunk_size=chunk,
                                  grad_in_forward=grad_in_forward)
    got_g = _grads(got, leaves)
    assert got.dtype == torch.float32 and got.dim() == 0
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    for a, b in zip(got_g, want_g):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("chunk", [1, 8, 64])
def test_chunked_equals_unchunked_value_and_gradient(chunk) -> None:
    hidden, weight, bias, teacher, targets = _problem()
    z = F.linear(hidden, weight, bias).requires_grad_(True)
    want = _unfused(_kl_plus_ce_rows, z, torch.eye(z.shape[1]), None, teacher, targets)
    (want_g,) = _grads(want, [z])
    got = chunked_token_loss(_kl_plus_ce_rows, z, teacher, targets, chunk_size=chunk)
    (got_g,) = _grads(got, [z])
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(got_g, want_g, rtol=1e-5, atol=1e-7)
    assert got_g[targets == -100].abs().max() == 0


def test_mean_is_over_the_global_valid_count_not_a_mean_of_chunk_means() -> None:
    # chunk 0 holds 5 ignored + 3 valid tokens, the others 8 valid: chunk means would weigh
    # the 3 valid tokens of chunk 0 more
    hidden, weight, bias, teacher, targets = _problem(ignored=5)
    z = F.linear(hidden, weight, bias)
    values = forward_kl_rows(z, teacher)
    got = chunked_token_loss(forward_kl_rows, z, teacher, targets, chunk_size=8)
    keep = targets != -100
    torch.testing.assert_close(got, values[keep].mean())
    chunk_means = torch.stack([values[s:s + 8][keep[s:s + 8]].mean() for s in range(0, 37, 8)])
    assert abs(float(chunk_means.mean()) - float(got)) > 1e-3


def test_all_tokens_ignored_is_a_finite_zero_with_zero_gradients() -> None:
    hidden, weight, bias, teacher, _ = _problem()
    targets = torch.full((hidden.shape[0],), -100)
    h, w = hidden.requires_grad_(True), weight.requires_grad_(True)
    loss = fused_linear_token_loss(_kl_plus_ce_rows, h, w, None, teacher, targets, chunk_size=8)
    gh, gw = _grads(loss, [h, w])
    assert float(loss.detach()) == 0.0
    assert torch.equal(gh, torch.zeros_like(gh)) and torch.equal(gw, torch.zeros_like(gw))
    z = F.linear(hidden, weight).detach().requires_grad_(True)
    loss = chunked_token_loss(forward_kl_rows, z, teacher, targets, chunk_size=8)
    (gz,) = _grads(loss, [z])
    assert float(loss) == 0.0 and torch.equal(gz, torch.zeros_like(gz))


def test_one_token_and_no_targets() -> None:
    hidden, weight, bias, teacher, targets = _problem(n=1, ignored=0)
    h = hidden.clone().requires_grad_(True)
    got = fused_linear_token_loss(forward_kl_rows, h, weight, bias, teacher, None, chunk_size=4)
    (gh,) = _grads(got, [h])
    h2 = hidden.clone().requires_grad_(True)
    want = forward_kl_rows(F.linear(h2, weight, bias), teacher).mean()
    (gh2,) = _grads(want, [h2])
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(gh, gh2)


def test_bf16_hidden_states_loss_in_fp32() -> None:
    hidden, weight, bias, teacher, targets = _problem(n=64, h=32, v=300)
    hb = hidden.bfloat16().requires_grad_(True)
    wb = weight.bfloat16().requires_grad_(True)
    got = fused_linear_token_loss(forward_kl_rows, hb, wb, None, teacher, targets, chunk_size=16)
    gh, gw = _grads(got, [hb, wb])
    assert got.dtype == torch.float32 and gh.dtype == torch.bfloat16 and gw.dtype == torch.bfloat16
    hr, wr = hb.detach().clone().requires_grad_(True), wb.detach().clone().requires_grad_(True)
    want = _unfused(forward_kl_rows, hr, wr, None, teacher, targets)  # bf16 matmul, fp32 loss
    rh, rw = _grads(want, [hr, wr])
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)  # same bf16 logits, fp32 loss
    # gradients: the unfused weight gradient is one bf16 matmul, ours a float32 sum of chunk ones
    torch.testing.assert_close(gh.float(), rh.float(), rtol=1e-2, atol=1e-3)
    torch.testing.assert_close(gw.float(), rw.float(), rtol=2e-2, atol=2e-3)


def test_teacher_as_chunk_callable_equals_teacher_tensor() -> None:
    hidden, weight, bias, teacher, targets = _problem()
    calls = []

    def rows(start: int, end: int) -> torch.Tensor:
        calls.append((start, end))
        return teacher[start:end]

    h = hidden.clone().requires_grad_(True)
    a = fused_linear_token_loss(forward_kl_rows, h, weight, bias, rows, targets, chunk_size=10)
    (ga,) = _grads(a, [h])
    h2 = hidden.clone().requires_grad_(True)
    b = fused_linear_token_loss(forward_kl_rows, h2, weight, bias, teacher, targets, chunk_size=10)
    (gb,) = _grads(b, [h2])
    assert torch.equal(a, b) and torch.equal(ga, gb)
    assert calls == [(0, 10), (10, 20), (20, 30), (30, 37)]


class _Largest(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.max_numel = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for x in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(x, torch.Tensor):
                self.max_numel = max(self.max_numel, x.numel())
        return out


@pytest.mark.parametrize("grad_in_forward", [True, False])
def test_fused_never_allocates_the_full_logits(grad_in_forward) -> None:
    n, h, v, chunk = 256, 8, 2000, 32
    hidden, weight, bias, _, targets = _problem(n=n, h=h, v=v)
    h_ = hidden.requires_grad_(True)
    w_ = weight.requires_grad_(True)
    teacher_w = torch.randn(v, h)

    def teacher(start: int, end: int) -> torch.Tensor:
        return hidden[start:end].detach() @ teacher_w.t()

    with _Largest() as seen:
        loss = fused_linear_token_loss(forward_kl_rows, h_, w_, None, teacher, targets,
                                       chunk_size=chunk, grad_in_forward=grad_in_forward)
        loss.backward()
    assert torch.isfinite(h_.grad).all() and h_.grad.abs().max() > 0
    assert seen.max_numel == chunk * v  # the chunk's logits; nothing N x V (= 8x that)


class _TokenMean(torch.nn.Module):
    """A loss module exposing the row-loss hook (what a registered token divergence implements)."""

    def row_loss(self, z, t, y):
        return forward_kl_rows(z, t)


def test_resolve_row_loss_takes_callables_and_modules_with_row_loss_and_refuses_others() -> None:
    assert resolve_row_loss(forward_kl_rows) is forward_kl_rows
    mod = _TokenMean()
    hidden, weight, bias, teacher, targets = _problem()
    z = F.linear(hidden, weight, bias)
    torch.testing.assert_close(chunked_token_loss(mod, z, teacher, targets, 8),
                               chunked_token_loss(forward_kl_rows, z, teacher, targets, 8))
    with pytest.raises(ValueError, match="LUDLoss.*row_loss"):
        resolve_row_loss(build_loss("lud"))
    with pytest.raises(ValueError, match="callable"):
        resolve_row_loss(3)


@pytest.mark.parametrize(("change", "match"), [
    ({"chunk_size": 0}, "chunk_size"),
    ({"chunk_size": 2.0}, "chunk_size"),
    ({"hidden": torch.randn(37, 15)}, "hidden has 15 columns"),
    ({"hidden": torch.randn(37)}, "hidden must be a 2-D"),
    ({"weight": torch.randn(50)}, "weight must be a 2-D"),
    ({"bias": torch.randn(49)}, "bias must have shape"),
    ({"teacher": torch.randn(36, 50)}, "teacher_logits has 36 rows"),
    ({"teacher": torch.randn(37, 49)}, "teacher_logits has 49 columns"),
    ({"teacher": lambda s, e: torch.randn(e - s + 1, 50)}, r"teacher\(0, 37\) must return"),
    ({"teacher": "x"}, "teacher_logits must be a tensor or a callable"),
    ({"targets": torch.zeros(36, dtype=torch.long)}, r"targets must have shape \(37,\)"),
    ({"targets": torch.zeros(37)}, "integer class indices"),
    ({"targets": torch.full((37,), 50)}, "targets out of range"),
    ({"row_loss": lambda z, t, y: z.sum(1, keepdim=True)}, "one value per token"),
])
def test_bad_input_names_the_problem(change, match) -> None:
    hidden, weight, bias, teacher, targets = _problem()
    kw = {"row_loss": forward_kl_rows, "hidden": hidden, "weight": weight, "bias": bias,
          "teacher": teacher, "targets": targets, "chunk_size": 37}
    kw.update(change)
    with pytest.raises(ValueError, match=match):
        fused_linear_token_loss(kw["row_loss"], kw["hidden"], kw["weight"], kw["bias"],
                                kw["teacher"], kw["targets"], chunk_size=kw["chunk_size"])


def test_compiles_and_matches_eager() -> None:
    pytest.importorskip("torch._dynamo")
    hidden, weight, bias, teacher, targets = _problem()

    def step(h, w):
        return fused_linear_token_loss(_kl_plus_ce_rows, h, w, None, teacher, targets,
                                       chunk_size=8, validate=False)

    h, w = hidden.clone().requires_grad_(True), weight.clone().requires_grad_(True)
    want = step(h, w)
    want_g = _grads(want, [h, w])
    torch._dynamo.reset()
    h2, w2 = hidden.clone().requires_grad_(True), weight.clone().requires_grad_(True)
    got = torch.compile(step, backend="aot_eager")(h2, w2)
    got_g = _grads(got, [h2, w2])
    torch.testing.assert_close(got, want)
    for a, b in zip(got_g, want_g):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("name", ["fkl", "rkl", "gjsd", "skl", "srkl", "tvd"])
@pytest.mark.parametrize("ce_weight", [0.0, 0.5])
def test_registered_token_divergences_are_chunkable_and_fusable(name, ce_weight) -> None:
    """A token divergence's row_loss: chunked and fused give its own (unchunked) total."""
    loss = build_loss(name, ce_weight=ce_weight)
    hidden, weight, bias, teacher, targets = _problem()
    leaves = [x.clone().requires_grad_(True) for x in (hidden, weight, bias)]
    z = F.linear(*leaves)
    keep = targets != -100
    want = loss(z[keep], teacher[keep], targets[keep]).total
    want_g = _grads(want, leaves)
    got = fused_linear_token_loss(loss, *leaves, teacher, targets, chunk_size=8)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    for a, b in zip(_grads(got, leaves), want_g):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    z2 = F.linear(*leaves)
    torch.testing.assert_close(chunked_token_loss(loss, z2, teacher, targets, 5), want,
                               rtol=1e-6, atol=1e-6)
