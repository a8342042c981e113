"""torch.compile of the losses inside a training loop: one graph for every epoch.

A training loop passes a new fractional epoch at every step. A loss that turns it into a Python
float (a warm-up factor, a cosine curriculum) makes Dynamo specialise on its value and recompile at
every step (DKD did: 26 graphs for 7 calls). Given the epoch as a 0-d tensor every loss now keeps
its epoch-dependent weights as tensors, so one graph serves every epoch, with the values eager mode
gives for the same epoch as a number. ``aot_eager`` traces exactly the graphs Inductor would get
without its C++ build; recompiles and graph breaks are decided before the backend runs.
"""

from __future__ import annotations

import pytest
import torch

from lud.losses import build_loss
from lud.losses.base import as_epoch, linear_warmup

dynamo = pytest.importorskip("torch._dynamo")
from torch._dynamo.utils import counters  # noqa: E402

EPOCHS = (0.0, 0.37, 1.5, 2.25, 9.0)  # inside and past every warm-up below


def _inputs(b: int = 16, c: int = 10, seed: int = 5):
    g = torch.Generator().manual_seed(seed)
    t = torch.randn(b, c, generator=g) * 3
    return t + torch.randn(b, c, generator=g), t, torch.randint(0, c, (b,), generator=g)


@pytest.mark.parametrize(
    "name, params",
    [
        ("dkd", {"warmup": 2.0}),
        ("rld", {"warmup": 2.0}),
        ("ctkd", {"curriculum_epochs": 2.0}),
        ("lud", {"rank_warmup": 2.0}),  # rank_backend auto: the pure-PyTorch one under compile
    ],
)
@pytest.mark.slow
def test_tensor_epoch_compiles_once_and_matches_eager(name: str, params: dict) -> None:
    s0, t, y = _inputs()
    loss = build_loss(name, validate=False, **params)
    dynamo.reset()
    counters.clear()
    compiled = torch.compile(loss, backend="aot_eager")
    for epoch in EPOCHS:
        results = []
        for fn, e in ((compiled, torch.tensor(epoch)), (loss, epoch)):
            s = s0.clone().requires_grad_(True)
            out = fn(s, t, y, epoch=e)
            out.total.backward()
            results.append((out, s.grad))
        (got, got_grad), (want, want_grad) = results
        torch.testing.assert_close(got.total, want.total, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(got_grad, want_grad, rtol=1e-4, atol=1e-7)
        for key, value in want.terms.items():  # the epoch-weighted terms follow the epoch
            torch.testing.assert_close(got.terms[key], value, rtol=1e-5, atol=1e-6)
    assert sum(counters["graph_break"].values()) == 0, dict(counters["graph_break"])
    assert counters["stats"]["unique_graphs"] == 1


@pytest.mark.slow
def test_float_epoch_is_what_recompiles() -> None:
    """The counterfactual the tensor epoch avoids: each new float epoch is a new graph."""
    s, t, y = _inputs()
    loss = build_loss("dkd", warmup=2.0, validate=False)
    dynamo.reset()
    counters.clear()
    compiled = torch.compile(loss, backend="aot_eager")
    for epoch in EPOCHS[:3]:
        compiled(s, t, y, epoch=epoch)
    assert counters["stats"]["unique_graphs"] >= 3


def test_epoch_weights_keep_the_type_they_are_given() -> None:
    assert linear_warmup(1.0, 4.0) == 0.25 and linear_warmup(9.0, 4.0) == 1.0
    assert linear_warmup(-1.0, 4.0) == 0.0 and linear_warmup(3.0, 0.0) == 1.0
    ramp = linear_warmup(torch.tensor(1.0), 4.0)
    assert isinstance(ramp, torch.Tensor) and float(ramp) == 0.25
    assert as_epoch(3) == 3.0 and as_epoch(torch.tensor(2, dtype=torch.int64)).dtype == torch.float32
    s, t, y = _inputs()
    out = build_loss("dkd", warmup=4.0)(s, t, y, epoch=torch.tensor(1.0))
    assert out.stats["warmup"] == 0.25


@pytest.mark.parametrize("epoch", [torch.ones(2), torch.tensor(True), "late", None])
def test_bad_epoch_is_named(epoch: object) -> None:
    s, t, y = _inputs()
    with pytest.raises(ValueError, match="epoch must be a number or a"):
        build_loss("kd")(s, t, y, epoch=epoch)
