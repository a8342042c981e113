"""The gradient-norm probe: values against a hand computation, no effect on the update, all losses."""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from lud.config import ConfigError, config_from_dict, validate_config
from lud.data import write_cifar_like
from lud.engine import load_checkpoint, train
from lud.engine.gradnorms import term_grad_norms
from lud.engine.runlog import read_metrics
from lud.losses import available_losses, build_loss
from lud.losses.base import LossOutput


def _batch(b: int = 16, c: int = 10, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(b, c, generator=g) * 2,
        torch.randn(b, c, generator=g) * 3,
        torch.randint(0, c, (b,), generator=g),
    )


def test_kd_norms_equal_the_analytic_gradient():
    s, t, y = _batch()
    s = s.requires_grad_()
    temp, wce, wkd = 4.0, 0.1, 0.9
    out = build_loss("kd", temperature=temp, ce_weight=wce, kd_weight=wkd)(s, t, y)
    norms = term_grad_norms(out, s)
    b = s.shape[0]
    p_s, p_t = F.softmax(s.detach() / temp, 1), F.softmax(t / temp, 1)
    # d/dz [w · T² · mean_b KL(p_T || p_S)] = w · T · (p_S − p_T) / B
    kd_grad = wkd * temp * (p_s - p_t) / b
    ce_grad = wce * (F.softmax(s.detach(), 1) - F.one_hot(y, 10).float()) / b
    assert set(norms) == {"ce", "kd"}
    assert norms["kd"] == pytest.approx(float(kd_grad.norm()), rel=1e-5)
    assert norms["ce"] == pytest.approx(float(ce_grad.norm()), rel=1e-5)


def test_terms_independent_of_logits_give_zero():
    s, _, _ = _batch()
    s = s.requires_grad_()
    other = torch.randn(3, requires_grad=True)
    out = LossOutput(
        total=s.sum(), terms={"s": s.sum(), "const": torch.tensor(2.0), "other": other.sum()}
    )
    norms = term_grad_norms(out, s)
    assert norms["const"] == 0.0 and norms["other"] == 0.0
    assert norms["s"] == pytest.approx(float(torch.ones_like(s).norm()))


def test_detached_logits_are_refused():
    s, t, y = _batch()
    out = build_loss("kd")(s.requires_grad_(), t, y)
    with pytest.raises(ValueError, match="does not require grad"):
        term_grad_norms(out, s.detach())


def _step(
    loss_name: str, probe: bool
) -> tuple[dict[str, torch.Tensor], dict[str, float], list[str]]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 10))
    loss_fn = build_loss(loss_name)
    params = list(model.parameters()) + list(loss_fn.parameters())  # CTKD's temperature module
    opt = torch.optim.SGD(params, lr=0.5, momentum=0.9)
    g = torch.Generator().manual_seed(1)
    x, t = torch.randn(32, 6, generator=g), torch.randn(32, 10, generator=g) * 3
    y = torch.randint(0, 10, (32,), generator=g)
    norms: dict[str, float] = {}
    for step in range(2):
        logits = model(x)
        out = loss_fn(logits, t, y, epoch=float(step))
        if probe:
            norms = term_grad_norms(out, logits)
        opt.zero_grad()
        out.total.backward()
        opt.step()
    state = {**model.state_dict(), **{f"loss.{k}": v for k, v in loss_fn.state_dict().items()}}
    return copy.deepcopy(state), norms, list(out.terms)


@pytest.mark.parametrize("loss_name", available_losses())
def test_probe_leaves_the_update_unchanged_for_every_loss(loss_name):
    off, _, _ = _step(loss_name, probe=False)
    on, norms, terms = _step(loss_name, probe=True)
    assert off.keys() == on.keys()
    for k in off:
        assert torch.equal(off[k], on[k]), f"{loss_name}: {k} differs with the probe on"
    assert list(norms) == terms
    assert all(v >= 0.0 and v == v for v in norms.values())  # finite, non-negative
    assert any(v > 0.0 for v in norms.values()), f"{loss_name}: every term norm is 0"


def test_several_logits_tensors_count_as_one_vector():
    """Two views: each term's norm is over both student logits tensors together."""
    s1, t1, y = _batch(seed=3)
    s2, t2, _ = _batch(seed=4)
    s1, s2 = s1.requires_grad_(), s2.requires_grad_()
    loss_fn = build_loss("mlkd", two_views=True)
    out = loss_fn(s1, t1, y, strong_student_logits=s2, strong_teacher_logits=t2)
    norms = term_grad_norms(out, [s1, s2])
    b, w = s1.shape[0], loss_fn.ce_weight
    ce2 = w * (F.softmax(s2.detach(), 1) - F.one_hot(y, 10).float()) / b
    assert norms["ce_strong"] == pytest.approx(float(ce2.norm()), rel=1e-5)  # strong view only
    # the release's strong instance term takes two temperatures on the weak view: both count
    g1, g2 = torch.autograd.grad(out.terms["instance_strong"], [s1, s2], retain_graph=True)
    assert float(g1.norm()) > 0 and float(g2.norm()) > 0
    assert norms["instance_strong"] == pytest.approx(
        math.sqrt(float(g1.norm()) ** 2 + float(g2.norm()) ** 2), rel=1e-5
    )


# ----------------------------------------------------------------------------- the trainer switch
def _cfg(root: Path, name: str, loss_name: str, every: int, **sections: dict[str, Any]) -> Any:
    raw: dict[str, Any] = {
        "experiment": {"name": name, "output_dir": str(root / "runs"), "seed": 2},
        "data": {"name": "cifar10", "root": str(root / "data"), "batch_size": 16,
                 "eval_batch_size": 64, "augment": "cifar"},
        "model": {"name": "mlp_tiny"},
        "loss": {"name": loss_name},
        "solver": {"epochs": 2, "lr": 0.05, "schedule": "constant"},
        "runtime": {"progress": False, "tensorboard": False, "log_every": 2,
                    "grad_norms_every": every},
    }
    if build_loss(loss_name).requires_teacher:
        raw["teacher"] = {"name": "mlp_tiny",
                          "checkpoint": str(root / "runs" / "teacher" / "last.pt")}
    for key, value in sections.items():
        raw[key] = {**raw.get(key, {}), **value}
    return config_from_dict(raw)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("probe")
    write_cifar_like(root / "data", num_classes=10, n_train=64, n_test=32, seed=0)
    train(_cfg(root, "teacher", "ce", 0, solver={"epochs": 1}))
    return root


def test_switch_is_validated():
    with pytest.raises(ConfigError, match="runtime.grad_norms_every must be >= 0"):
        validate_config(config_from_dict({"data": {"name": "cifar10"}, "model": {"name": "mlp"},
                                          "experiment": {"name": "x"},
                                          "runtime": {"grad_norms_every": -1}}),
                        registries=False)
    with pytest.raises(ConfigError, match="grad_norms_every"):
        config_from_dict({"runtime": {"grad_norms_every": "often"}})


@pytest.mark.parametrize("loss", available_losses())
def test_every_loss_logs_each_term_norm(root: Path, loss: str):
    train(_cfg(root, f"all_{loss}", loss, 1, solver={"epochs": 1},
               runtime={"max_steps_per_epoch": 2}))
    (row,) = read_metrics(root / "runs" / f"all_{loss}" / "metrics.jsonl")
    terms = sorted(k.removeprefix("train/term/") for k in row if k.startswith("train/term/"))
    norms = sorted(k.removeprefix("grad_norm/") for k in row if k.startswith("grad_norm/"))
    assert norms == terms and terms
    assert all(math.isfinite(row[f"grad_norm/{k}"]) and row[f"grad_norm/{k}"] >= 0 for k in norms)


@pytest.mark.parametrize(
    ("loss", "sections"),
    [("lud", {}),
     ("mlkd", {"loss": {"params": {"two_views": True}},
               "data": {"strong_augment": {"num_ops": 2, "magnitude": 9}}})],
)
def test_switch_never_changes_the_update(root: Path, loss: str, sections: dict[str, Any]):
    """Parameters after 2 epochs are bit-identical with the probe every step and with it off;
    the epoch rows differ only by the grad_norm/* columns (and timings)."""
    tag = loss.replace("-", "_")
    train(_cfg(root, f"off_{tag}", loss, 0, **sections))
    train(_cfg(root, f"on_{tag}", loss, 1, **sections, runtime={"tensorboard": True}))
    runs = root / "runs"
    a, b = load_checkpoint(runs / f"off_{tag}" / "last.pt"), load_checkpoint(
        runs / f"on_{tag}" / "last.pt")
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    off, on = (read_metrics(runs / n / "metrics.jsonl") for n in (f"off_{tag}", f"on_{tag}"))
    for r_off, r_on in zip(off, on, strict=True):
        probed = {k for k in r_on if k.startswith("grad_norm/")}
        assert probed and not any(k.startswith("grad_norm/") for k in r_off)
        same = {k: v for k, v in r_on.items() if k not in probed and not k.startswith("time/")}
        assert same == {k: v for k, v in r_off.items() if not k.startswith("time/")}
        assert all(r_on[k] > 0 for k in probed if k.removeprefix("grad_norm/") in ("ce", "kd"))
    if loss == "mlkd":
        assert on[-1]["grad_norm/instance_strong"] > 0 and on[-1]["grad_norm/ce_strong"] > 0
    assert any((runs / f"on_{tag}" / "tb" / "steps").glob("events.out.tfevents*"))


def test_probe_every_n_steps_averages_those_steps(root: Path):
    """N=3 over 4 steps per epoch probes global steps 0, 3 | 6 (epoch 2): the epoch means are
    means of those probes, which the per-step TensorBoard points hold."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    train(_cfg(root, "every3", "kd", 3, runtime={"tensorboard": True}))
    run = root / "runs" / "every3"
    acc = EventAccumulator(str(run / "tb" / "steps"))
    acc.Reload()
    points = {e.step: e.value for e in acc.Scalars("grad_norm_step/kd")}
    assert sorted(points) == [0, 3, 6]
    rows = read_metrics(run / "metrics.jsonl")
    assert rows[0]["grad_norm/kd"] == pytest.approx((points[0] + points[3]) / 2, rel=1e-6)
    assert rows[1]["grad_norm/kd"] == pytest.approx(points[6], rel=1e-6)
