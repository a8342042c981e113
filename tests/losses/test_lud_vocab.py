"""LUD at vocabulary size: the restricted class set (``category_top_k``) and the SDL row
subsample (``sample_max_rows``) of :class:`lud.losses.lud.LUDLoss`."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from lud.losses import build_loss
from lud.losses.lud import category_subset, restrict_columns

EPOCH = 10.0  # past the default 2-epoch rank warm-up: every term at full weight


def _logits(n: int, c: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    t = torch.randn(n, c, generator=g) * 3
    s = t + torch.randn(n, c, generator=g) * 2
    return s, t, torch.randint(0, c, (n,), generator=g)


def _terms_and_grad(loss, s, t, y):
    s = s.clone().requires_grad_(True)
    out = loss(s, t, y, epoch=EPOCH)
    out.total.backward()
    return {k: float(v.detach()) for k, v in out.terms.items()}, s.grad


@pytest.mark.parametrize("extra", [
    {},
    {"dynamic_temperature": "class", "rank_method": "pearson"},
    {"gram_reduction": "flat", "relation_mask": True, "rank_scale": "log"},
])
def test_top_k_covering_every_class_without_tail_is_the_unrestricted_loss(extra) -> None:
    s, t, y = _logits(24, 12)
    want, want_grad = _terms_and_grad(build_loss("lud", **extra), s, t, y)
    got, grad = _terms_and_grad(
        build_loss("lud", category_top_k=12, category_tail="drop", **extra), s, t, y)
    assert set(want) == {"ce", "instance", "cdl", "sdl", "inter", "intra"} == set(got)
    for k in want:
        assert got[k] == pytest.approx(want[k], rel=1e-5, abs=1e-6), k
    torch.testing.assert_close(grad, want_grad, rtol=1e-5, atol=1e-7)


def test_sample_max_rows_at_or_above_n_is_the_unrestricted_loss() -> None:
    s, t, y = _logits(16, 10)
    want, want_grad = _terms_and_grad(build_loss("lud"), s, t, y)
    for m in (16, 100):
        got, grad = _terms_and_grad(build_loss("lud", sample_max_rows=m), s, t, y)
        assert got == pytest.approx(want, rel=1e-6)
        torch.testing.assert_close(grad, want_grad)


def test_category_subset_is_the_union_of_top_k_capped_by_teacher_mass() -> None:
    t = torch.tensor([[9.0, 8.0, 0.0, 0.0, 0.0],
                      [0.0, 9.0, 0.0, 8.0, 0.0],
                      [0.0, 0.0, 0.0, 9.0, 8.5]])
    mass = torch.softmax(t, dim=1).sum(dim=0)
    assert category_subset(t, mass, top_k=2, max_categories=10).tolist() == [0, 1, 3, 4]
    # cap 2: the two members with the largest total probability (classes 1 and 3), sorted
    assert category_subset(t, mass, top_k=2, max_categories=2).tolist() == [1, 3]
    assert category_subset(t, mass, top_k=99, max_categories=99).tolist() == [0, 1, 2, 3, 4]


def test_folded_tail_holds_the_mass_of_the_other_classes() -> None:
    p = torch.softmax(torch.randn(6, 9), dim=1)
    cols = torch.tensor([1, 4, 7])
    folded = restrict_columns(p, cols, fold=True)
    assert folded.shape == (6, 4)
    torch.testing.assert_close(folded.sum(dim=1), torch.ones(6))
    torch.testing.assert_close(folded[:, 3], p[:, [0, 2, 3, 5, 6, 8]].sum(dim=1))
    assert restrict_columns(p, cols, fold=False).shape == (6, 3)


def test_relation_scale_uses_the_restricted_class_count() -> None:
    # rows' top-2 classes: {0, 1}, {1, 3}, {3, 4} -> K = 4 classes, 5 columns with the tail
    t = torch.tensor([[9.0, 8.0, 0.0, 0.0, 0.0, 0.0],
                      [0.0, 9.0, 0.0, 8.0, 0.0, 0.0],
                      [0.0, 0.0, 0.0, 9.0, 8.5, 0.0]])
    s = t.flip(1)
    y = torch.zeros(3, dtype=torch.long)
    for tail, n in (("fold", 5), ("drop", 4)):
        kw = {"category_top_k": 2, "category_tail": tail, "ce_weight": 0.0,
              "instance_weight": 0.0, "cdl_weight": 0.0, "sdl_weight": 0.0}
        scaled = build_loss("lud", relation_class_scale=True, **kw)(s, t, y, epoch=EPOCH).terms
        plain = build_loss("lud", relation_class_scale=False, **kw)(s, t, y, epoch=EPOCH).terms
        for k in ("inter", "intra"):
            assert float(plain[k]) > 0
            assert float(scaled[k]) == pytest.approx(float(plain[k]) * n / 10, rel=1e-6), (tail, k)


def _sdl_only(**kw):
    # SDL alone, with nothing that depends on rows outside the subsample (temperature, weights,
    # mask): it must then equal the unrestricted SDL on the chosen rows
    return build_loss("lud", ce_weight=0.0, instance_weight=0.0, cdl_weight=0.0,
                      inter_weight=0.0, intra_weight=0.0, dynamic_temperature="off",
                      uncertainty_weighting=False, sample_mask=False, **kw)


def test_subsampled_sdl_is_sdl_on_the_chosen_rows_and_no_gradient_elsewhere() -> None:
    s, t, y = _logits(40, 8)
    loss = _sdl_only(sample_max_rows=10, sample_seed=3).eval()
    rows = loss._sample_rows(40, s.device)  # eval mode: does not advance the counter
    assert rows is not None and rows.shape == (10,) and rows.unique().numel() == 10
    got, grad = _terms_and_grad(loss, s, t, y)
    want, want_grad = _terms_and_grad(_sdl_only(), s[rows], t[rows], y[rows])
    assert got["sdl"] == pytest.approx(want["sdl"], rel=1e-6)
    torch.testing.assert_close(grad[rows], want_grad)
    others = torch.ones(40, dtype=torch.bool)
    others[rows] = False
    assert grad[others].abs().max() == 0 and grad[rows].abs().max() > 0


def test_subsample_is_seeded_advances_per_training_step_and_resumes() -> None:
    s, t, y = _logits(64, 10)

    def sdl(loss) -> float:
        return float(loss(s, t, y, epoch=EPOCH).terms["sdl"])

    a, b = build_loss("lud", sample_max_rows=8), build_loss("lud", sample_max_rows=8)
    first = [sdl(a) for _ in range(3)]
    assert first == [sdl(b) for _ in range(3)]  # same seed, same counter: same rows
    assert len(set(first)) == 3  # a new draw every step
    assert int(a.sample_calls) == 3
    other_seed = build_loss("lud", sample_max_rows=8, sample_seed=1)
    assert sdl(other_seed) != first[0]
    # evaluation neither moves the counter nor changes the draw
    a.eval()
    assert sdl(a) == sdl(a) and int(a.sample_calls) == 3
    a.train()
    resumed = build_loss("lud", sample_max_rows=8)
    resumed.load_state_dict(a.state_dict())
    assert sdl(resumed) == sdl(a)
    assert "sample_calls" not in build_loss("lud").state_dict()  # default keys unchanged


VOCAB_OPTS = {"category_top_k": 3, "max_categories": 12, "sample_max_rows": 6}


def test_token_logits_with_ignored_positions_equal_the_flattened_valid_rows() -> None:
    g = torch.Generator().manual_seed(1)
    b, n, v = 3, 5, 40
    t = torch.randn(b, n, v, generator=g) * 3
    s = (t + torch.randn(b, n, v, generator=g)).requires_grad_(True)
    y = torch.randint(0, v, (b, n), generator=g)
    y[0, :2] = -100
    y[2, 3:] = -100
    out = build_loss("lud", **VOCAB_OPTS)(s, t, y, epoch=EPOCH)
    out.total.backward()
    keep = y != -100
    flat = s.detach()[keep].clone().requires_grad_(True)
    ref = build_loss("lud", **VOCAB_OPTS)(flat, t[keep], y[keep], epoch=EPOCH)
    ref.total.backward()
    assert {k: float(x.detach()) for k, x in out.terms.items()} == pytest.approx(
        {k: float(x.detach()) for k, x in ref.terms.items()}, rel=1e-6)
    torch.testing.assert_close(s.grad[keep], flat.grad)
    assert s.grad[~keep].abs().max() == 0


def test_an_all_ignored_batch_is_a_finite_zero() -> None:
    s = torch.randn(2, 3, 50, requires_grad=True)
    y = torch.full((2, 3), -100)
    out = build_loss("lud", **VOCAB_OPTS)(s, torch.randn(2, 3, 50), y, epoch=EPOCH)
    out.total.backward()
    assert float(out.total.detach()) == 0.0 and torch.isfinite(out.total)
    assert torch.equal(s.grad, torch.zeros_like(s))


class _LargestOutputs(TorchDispatchMode):
    """Records the element count of every op's output and the side of every square matrix."""

    def __init__(self) -> None:
        super().__init__()
        self.max_numel, self.max_square = 0, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for x in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(x, torch.Tensor):
                self.max_numel = max(self.max_numel, x.numel())
                if x.dim() == 2 and x.shape[0] == x.shape[1]:
                    self.max_square = max(self.max_square, x.shape[0])
        return out


def test_vocabulary_size_allocates_nothing_vocab_by_vocab() -> None:
    n, v, k = 64, 32_000, 8
    s, t, y = _logits(n, v)
    s.requires_grad_(True)
    loss = build_loss("lud", category_top_k=k)
    with _LargestOutputs() as seen:
        out = loss(s, t, y, epoch=EPOCH)
        out.total.backward()
    assert set(out.terms) == {"ce", "instance", "cdl", "sdl", "inter", "intra"}
    assert torch.isfinite(out.total) and torch.isfinite(s.grad).all()
    # the largest square matrix is the CDL Gram over at most n*k kept classes (+ the tail)
    assert n <= seen.max_square <= n * k + 1
    assert seen.max_numel <= 4 * n * v  # nothing near v*v = 1.0e9 elements
    # the inter term's relation scale is |K|/10, not 32000/10
    plain = build_loss("lud", category_top_k=k, relation_class_scale=False)(s, t, y, epoch=EPOCH)
    ratio = float(out.terms["inter"].detach()) / float(plain.terms["inter"].detach())
    kept = category_subset(t, torch.softmax(t / 4.0, dim=1).sum(dim=0), k, 1024).numel()
    assert n <= kept <= n * k
    assert ratio == pytest.approx((kept + 1) / 10, rel=1e-5)


@pytest.mark.parametrize(("kw", "name"), [
    ({"category_top_k": 0}, "category_top_k"),
    ({"category_top_k": 2.5}, "category_top_k"),
    ({"category_top_k": 64, "max_categories": 32}, "max_categories"),
    ({"max_categories": 0}, "max_categories"),
    ({"category_tail": "x"}, "category_tail"),
    ({"sample_max_rows": 1}, "sample_max_rows"),
    ({"sample_max_rows": True}, "sample_max_rows"),
    ({"sample_seed": -1}, "sample_seed"),
])
def test_bad_values_name_the_parameter(kw, name) -> None:
    with pytest.raises(ValueError, match=name):
        build_loss("lud", **kw)


@pytest.mark.parametrize("mode", ["sample", "class", "full"])
def test_chunked_temperature_ranks_give_the_same_temperatures(monkeypatch, mode) -> None:
    # at vocabulary size the hard ranks of the dynamic temperature run a chunk at a time
    from lud.losses.lud import temperature as lud_temperature

    s, t, _ = _logits(12, 30)
    whole = lud_temperature.temperature_correlation(s, t, mode)
    monkeypatch.setattr(lud_temperature, "_TEMP_CHUNK_ELEMENTS", 64)  # 2 rows / 5 columns a chunk
    chunked = lud_temperature.temperature_correlation(s, t, mode)
    if mode == "sample":  # rows are reduced alike whatever the chunk: bit for bit
        assert torch.equal(chunked, whole)
    else:  # column chunks are strided differently: the reductions may round differently
        torch.testing.assert_close(chunked, whole, rtol=0, atol=1e-6)
