"""Two-view training in the trainer (data.strong_augment + a loss built with two_views=true)."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
import yaml

from lud.cli import main
from lud.config import ConfigError, config_from_dict, config_to_dict
from lud.data import write_cifar_like
from lud.data.augment import BatchTransform
from lud.data.randaugment import BatchRandAugment
from lud.engine import load_checkpoint, train
from lud.engine.build import Run
from lud.engine.runlog import read_metrics
from lud.engine.step import augment_views
from lud.losses import loss_entries

torch.set_num_threads(1)
STRONG = {"num_ops": 2, "magnitude": 9}
# every registered loss that takes two views (from the registry)
TWO_VIEW_LOSSES = [e.name for e in loss_entries(inputs="two_views")]


def make_cfg(root: Path, name: str, **sections: dict[str, Any]) -> Any:
    """cnn_small on 10-class CIFAR-format data (crop/flip augmentation), 16-image batches."""
    raw: dict[str, Any] = {
        "experiment": {"name": name, "output_dir": str(root / "runs"), "seed": 7},
        "data": {"name": "cifar10", "root": str(root / "data"), "batch_size": 16,
                 "eval_batch_size": 64, "augment": "cifar"},
        "model": {"name": "cnn_small"},
        "solver": {"epochs": 2, "lr": 0.02, "schedule": "constant"},
        "runtime": {"progress": False, "tensorboard": False, "log_every": 2},
    }
    for key, value in sections.items():
        raw[key] = {**raw.get(key, {}), **value}
    return config_from_dict(raw)


def two_view_cfg(root: Path, name: str, loss: str, **sections: dict[str, Any]) -> Any:
    teacher = {"name": "mlp_tiny", "checkpoint": str(root / "runs" / "teacher" / "last.pt")}
    loss_sec = {"name": loss, "params": {"two_views": True}}
    data = {"strong_augment": STRONG, **sections.pop("data", {})}
    return make_cfg(root, name, teacher=teacher, loss=loss_sec, data=data, **sections)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("two_views")
    write_cifar_like(root / "data", num_classes=10, n_train=96, n_test=48, seed=0)
    train(make_cfg(root, "teacher", model={"name": "mlp_tiny"}, solver={"epochs": 1}))
    return root


@pytest.mark.parametrize("loss", sorted(TWO_VIEW_LOSSES))
def test_two_view_run_finishes_and_logs_strong_terms(root: Path, loss: str) -> None:
    cfg = two_view_cfg(root, f"run_{loss}", loss, solver={"epochs": 1},
                       runtime={"max_steps_per_epoch": 3})
    summary = train(cfg)
    assert summary["completed"]
    (row,) = read_metrics(root / "runs" / f"run_{loss}" / "metrics.jsonl")
    # the strong view's terms: its cross-entropy (ce_on_both_views) and at least one distillation
    strong = [k for k in row if k.startswith("train/term/") and k.endswith("_strong")]
    assert "train/term/ce_strong" in strong and len(strong) >= 2, strong
    for term in strong:
        value = row[term]
        assert math.isfinite(value) and value > 0, term
    numbers = [v for v in row.values() if isinstance(v, float)]
    assert all(math.isfinite(v) for v in numbers)


@pytest.mark.slow
def test_two_view_resume_is_exact(root: Path) -> None:
    """Interrupted after epoch 1 and resumed = uninterrupted, bit for bit (the strong view's
    RandAugment draws come from the epoch generator, like the crop/flip)."""
    train(two_view_cfg(root, "full", "mlkd"))
    part = two_view_cfg(root, "part", "mlkd")
    assert train(part, stop_after=1)["epochs_completed"] == 1
    train(part, resume=True)
    a = load_checkpoint(root / "runs" / "full" / "last.pt")
    b = load_checkpoint(root / "runs" / "part" / "last.pt")
    assert a["epoch"] == b["epoch"] == 2
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    rows = [read_metrics(root / "runs" / n / "metrics.jsonl") for n in ("full", "part")]
    strip = [[{k: v for k, v in r.items() if not k.startswith("time/")} for r in rs]
             for rs in rows]
    assert strip[0] == strip[1] and len(strip[0]) == 2
    # the control: the strong view changes training (a one-view MLKD run ends elsewhere)
    one = make_cfg(root, "one_view", teacher=config_to_dict(part)["teacher"],
                   loss={"name": "mlkd"})
    train(one)
    c = load_checkpoint(root / "runs" / "one_view" / "last.pt")
    assert not all(torch.equal(a["model"][k], c["model"][k]) for k in a["model"])


def _write(root: Path, name: str, cfg: Any) -> str:
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config_to_dict(cfg)))
    return str(path)


def test_view_mismatch_fails_before_training(
    root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    two_without = two_view_cfg(root, "no_strong", "mlkd")
    two_without.data.strong_augment = None
    one_with = one_view_loss(two_view_cfg(root, "one_with", "kd"))
    bad_magnitude = two_view_cfg(root, "bad_m", "mlkd", data={"strong_augment": {"magnitude": 31}})
    cached = two_view_cfg(root, "cached", "mlkd", data={"augment": "none"},
                          runtime={"teacher_cache": True})
    cases = [
        (two_without, "takes two views (two_views=true): set data.strong_augment"),
        (one_with, "data.strong_augment is set but loss 'kd' takes one view"),
        (bad_magnitude, "magnitude must lie in [0, 30], got 31"),
        (cached, "runtime.teacher_cache cannot be used with data.strong_augment"),
    ]
    for cfg, message in cases:
        code = main(["train", _write(root, cfg.experiment.name, cfg)])
        err = capsys.readouterr().err
        assert code == 2 and message in err, err
        assert not (root / "runs" / cfg.experiment.name / "metrics.jsonl").exists()


def one_view_loss(cfg: Any) -> Any:
    cfg.loss.params = {}
    return cfg


def test_trainer_refuses_what_validation_would(root: Path) -> None:
    """Run() checks the views itself: a config that skipped validation cannot reach a step."""
    for cfg, message in [
        (two_view_cfg(root, "raw_cache", "mlkd", data={"augment": "none"},
                      runtime={"teacher_cache": True}), "cannot be used with data.strong_augment"),
        (one_view_loss(two_view_cfg(root, "raw_one", "kd")), "takes one view"),
    ]:
        with pytest.raises(ConfigError, match=message):
            Run(cfg, resume=False)
    raw = two_view_cfg(root, "raw_two", "mlkd")
    raw.data.strong_augment = None
    with pytest.raises(ConfigError, match="takes two views"):
        Run(raw, resume=False)


def test_data_parallel_views_are_the_global_batch_rows() -> None:
    """Each rank's (weak, strong) views are its rows of one process's views of the global
    batch (the loader hands rank r the rows r, r + W, ...)."""
    world, b = 2, 6
    tf = BatchTransform([0.5] * 3, [0.25] * 3, "cifar", train=True,
                        strong=BatchRandAugment(2, 12))
    eval_tf = BatchTransform([0.5] * 3, [0.25] * 3, "cifar", train=False)
    images = torch.randint(0, 256, (world * b, 3, 16, 16), dtype=torch.uint8)
    gen = torch.Generator().manual_seed(4)
    ref_weak, ref_strong = tf.two_views(images, generator=gen)
    for rank in range(world):
        run = SimpleNamespace(train_tf=tf, eval_tf=eval_tf,
                              ctx=SimpleNamespace(world_size=world, rank=rank))
        gen = torch.Generator().manual_seed(4)
        weak, strong = augment_views(run, images[rank::world], gen)  # type: ignore[arg-type]
        assert strong is not None
        assert torch.equal(weak, ref_weak[rank::world])
        assert torch.equal(strong, ref_strong[rank::world])
    assert not torch.equal(ref_weak, ref_strong)
