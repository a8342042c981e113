"""`lud tune` (equal-budget tuning on the validation split) and the run scheduler (`--jobs`)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from lud.cli import main
from lud.config import ConfigError, config_from_dict, load_config, validate_config
from lud.data import write_cifar_like
from lud.engine import TrainingDivergedError
from lud.engine import train as engine_train
from lud.engine.runlog import read_metrics
from lud.experiments import bench
from lud.experiments.bench import plan_bench
from lud.experiments.scheduler import RunTask, execute_runs
from lud.experiments.tune import collect_trials, load_grid, run_tune

torch.set_num_threads(1)
ROOT = next(p for p in Path(__file__).resolve().parents if (p / "pyproject.toml").is_file())

GRID = {"kd": [{}, {"temperature": 1.0, "ce_weight": 1.0, "kd_weight": 0.0}], "dist": {"tau": [1.0, 4.0]}}


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Generated CIFAR-10 files, an MLP teacher, and a KD config with a validation split."""
    root = tmp_path_factory.mktemp("tune")
    write_cifar_like(root / "data", num_classes=10, n_train=160, n_test=40, seed=5)
    data = {"name": "cifar10", "root": str(root / "data"), "val_split": 0.25, "batch_size": 32,
            "eval_batch_size": 40, "augment": "none"}
    runtime = {"progress": False, "tensorboard": False, "log_every": 100}
    engine_train(config_from_dict({
        "experiment": {"name": "teacher", "output_dir": str(root / "runs")},
        "data": data, "model": {"name": "mlp"}, "loss": {"name": "ce"},
        "solver": {"epochs": 2, "lr": 0.05, "milestones": []}, "runtime": runtime,
    }))
    student = {
        "experiment": {"name": "tiny", "output_dir": str(root / "runs"), "seed": 0},
        "data": data, "model": {"name": "mlp_tiny"}, "loss": {"name": "kd"},
        "teacher": {"name": "mlp", "checkpoint": str(root / "runs" / "teacher" / "best.pt")},
        "solver": {"epochs": 2, "lr": 0.01, "schedule": "constant", "milestones": []},
        "runtime": {**runtime, "max_steps_per_epoch": 2},
    }
    (root / "kd.yaml").write_text(yaml.safe_dump(student))
    (root / "grid.yaml").write_text(yaml.safe_dump(GRID, sort_keys=False))
    return {"root": root, "config": root / "kd.yaml", "grid": root / "grid.yaml"}


@pytest.fixture(scope="module")
def tuned(project: dict[str, Path]) -> Path:
    """`lud tune kd.yaml --grid grid.yaml --seeds 0,1` through the command line."""
    out = project["root"] / "tune"
    assert main(["tune", str(project["config"]), "--grid", str(project["grid"]),
                 "--seeds", "0,1", "--output-dir", str(out)]) == 0
    return out


# ----------------------------------------------------------------------------- grids
def test_load_grid_forms_and_errors(tmp_path: Path) -> None:
    trials = load_grid({"kd": [{}, {"temperature": 2}],
                        "dkd": {"beta": [1, 8], "warmup": 1}})
    assert trials["kd"] == [{}, {"temperature": 2}]
    assert trials["dkd"] == [{"beta": 1, "warmup": 1}, {"beta": 8, "warmup": 1}]

    with pytest.raises(ValueError, match="same tuning budget.*kd 2, dkd 3"):
        load_grid({"kd": [{}, {"temperature": 2}], "dkd": {"beta": [1, 2, 8]}})
    with pytest.raises(ValueError, match="unknown method 'kdd'.*kd"):
        load_grid({"kdd": [{}]})
    with pytest.raises(ValueError, match="temprature"):
        load_grid({"kd": [{"temprature": 2}]})  # a typo fails before any training
    with pytest.raises(ValueError, match="same trial twice"):
        load_grid({"kd": [{"temperature": 2}, {"temperature": 2}]})
    with pytest.raises(ValueError, match="empty list"):
        load_grid({"kd": {"temperature": []}})
    with pytest.raises(ValueError, match="list of trials or a mapping"):
        load_grid({"kd": 3})
    with pytest.raises(ValueError, match="not found"):
        load_grid(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("kd: [unclosed\n")
    with pytest.raises(ValueError, match="cannot parse"):
        load_grid(bad)
    # the shipped Fashion-MNIST grid is even and every trial builds
    shipped = load_grid(ROOT / "benchmarks" / "fashion_mnist" / "grid.yaml")
    assert len({len(t) for t in shipped.values()}) == 1 and "lud-paper" in shipped


def _fake_run(folder: Path, top1: float | None, *, failed: bool = False) -> None:
    folder.mkdir(parents=True)
    if failed:
        (folder / bench.FAILED_FILE).write_text("{}")
        return
    summary = {"completed": top1 is not None, "best": {"top1": top1}, "wall_time_s": 1.0}
    (folder / "summary.json").write_text(json.dumps(summary))


def test_selection_mean_over_seeds_ties_and_divergence(tmp_path: Path) -> None:
    trials = {"kd": [{}, {"temperature": 2}, {"temperature": 8}],
              "dkd": [{}, {"beta": 2}, {"beta": 4}]}
    for k, vals in enumerate([(80.0, 70.0), (76.0, 74.0), (90.0, None)]):  # means 75, 75, -inf
        for seed, v in zip((0, 1), vals):
            _fake_run(tmp_path / "kd" / f"trial{k}" / f"seed{seed}", v, failed=v is None)
    for k, vals in enumerate([(60.0, 60.0), (61.0, 61.0), (70.0, 70.0)]):
        for seed, v in zip((0, 1), vals):
            _fake_run(tmp_path / "dkd" / f"trial{k}" / f"seed{seed}", v)
    results = collect_trials(tmp_path, trials, [0, 1])
    kd = [r for r in results if r.method == "kd"]
    assert [r.score for r in kd[:2]] == [75.0, 75.0] and kd[2].score == -math.inf
    assert [r.chosen for r in kd] == [True, False, False]  # a tie goes to the earlier trial
    assert [r.chosen for r in results if r.method == "dkd"] == [False, False, True]
    assert [r.diverged for r in kd] == [0, 0, 1]


# ----------------------------------------------------------------------------- lud tune
def test_tune_picks_best_validation_trial(tuned: Path) -> None:
    rows = list(csv.DictReader((tuned / "tuning.csv").open()))
    assert [(r["method"], r["trial"]) for r in rows] == [
        ("kd", "0"), ("kd", "1"), ("dist", "0"), ("dist", "1")]
    chosen = yaml.safe_load((tuned / "tuned.yaml").read_text())
    for method, listed in load_grid(GRID).items():
        means = []
        for k in range(len(listed)):
            vals = [json.loads((tuned / method / f"trial{k}" / f"seed{s}" / "summary.json")
                               .read_text())["best"]["top1"] for s in (0, 1)]
            means.append(sum(vals) / 2)
            row = next(r for r in rows if r["method"] == method and r["trial"] == str(k))
            assert float(row["val_top1_mean"]) == pytest.approx(means[-1])
        best = max(range(len(means)), key=lambda k: (means[k], -k))
        assert chosen[method] == listed[best]
        assert [r["chosen"] for r in rows if r["method"] == method] == [
            "1" if k == best else "0" for k in range(len(listed))]
    assert "the test set was not scored" in (tuned / "tuning.md").read_text()


def test_tuning_never_scores_the_test_set(tuned: Path) -> None:
    run = tuned / "kd" / "trial0" / "seed0"
    rows = read_metrics(run / "metrics.jsonl")
    assert rows and all("val/top1" in r for r in rows)
    assert not any(k.startswith("test/") and r[k] is not None for r in rows for k in r)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["best"]["split"] == "val" and summary["best"]["test_top1"] is None
    assert summary["max_test_top1"] is None and "test_top1" not in summary["last"]
    assert load_config(run / "config.yaml").data.eval_test is False


def test_rerun_trains_nothing_and_other_grid_refused(
    tuned: Path, project: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[Any] = []
    monkeypatch.setattr(bench, "train", lambda cfg, resume=False: calls.append(cfg))
    results = run_tune(project["config"], project["grid"], "0,1", output_dir=tuned, log=None)
    assert calls == [] and sum(r.chosen for r in results) == 2
    with pytest.raises(ValueError, match="already tried other 'kd' settings"):
        run_tune(project["config"], {"kd": [{"temperature": 3}, {}]}, "0,1",
                 output_dir=tuned, log=None)
    with pytest.raises(ValueError, match="another recipe"):
        run_tune(project["config"], project["grid"], "0,1", ["solver.lr=0.5"],
                 output_dir=tuned, log=None)


def test_tuned_yaml_feeds_bench(tuned: Path, project: dict[str, Path]) -> None:
    plan = plan_bench(project["config"], ["kd", "dist"], "2,", output_dir=project["root"] / "b",
                      method_params=[str(tuned / "tuned.yaml")])
    chosen = yaml.safe_load((tuned / "tuned.yaml").read_text())
    assert {v.label: v.params for v in plan.variants if v.label != "student"} == chosen


def test_tuning_needs_a_validation_split(project: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="validation split"):
        run_tune(project["config"], project["grid"], overrides=["data.val_split=0.0"],
                 output_dir=tmp_path, log=None)
    cfg = load_config(project["config"], ["data.eval_test=false", "data.val_split=0.0"],
                      validate=False)
    with pytest.raises(ConfigError, match="eval_test=false needs a validation split"):
        validate_config(cfg)
    with pytest.raises(ConfigError, match="tune on the validation split"):
        plan_bench(project["config"], ["kd"], 1, ["data.eval_test=false"], tmp_path)


# ----------------------------------------------------------------------------- scheduler
@pytest.mark.slow
def test_two_jobs_match_one(tuned: Path, project: dict[str, Path]) -> None:
    """Worker processes train the same runs as the in-process path, to the bit."""
    grid = project["root"] / "grid_kd.yaml"
    grid.write_text(yaml.safe_dump({"kd": GRID["kd"]}, sort_keys=False))
    out = project["root"] / "tune-jobs2"
    assert main(["tune", str(project["config"]), "--grid", str(grid), "--seeds", "0,1",
                 "--jobs", "2", "--output-dir", str(out)]) == 0
    for k in range(2):
        for seed in (0, 1):
            a = json.loads((tuned / "kd" / f"trial{k}" / f"seed{seed}" / "summary.json").read_text())
            b = json.loads((out / "kd" / f"trial{k}" / f"seed{seed}" / "summary.json").read_text())
            assert a["best"] == b["best"] and a["last"] == b["last"]
    one, two = (yaml.safe_load((d / "tuned.yaml").read_text()) for d in (tuned, out))
    assert two == {"kd": one["kd"]}


def test_scheduler_divergence_errors_and_order(tmp_path: Path) -> None:
    cfgs = []
    for name in ("a", "b", "c"):
        cfg = config_from_dict({"experiment": {"name": name, "output_dir": str(tmp_path)},
                                "data": {"name": "digits"}, "model": {"name": "mlp"}})
        cfgs.append(cfg)

    def fake(cfg: Any, *, resume: bool = False) -> dict[str, Any]:
        if cfg.experiment.name == "b":
            raise TrainingDivergedError("loss is nan at epoch 1")
        return {"best": {"top1": 50.0, "split": "val", "test_top1": None}}

    seen, lines = [], []
    tasks = [RunTask(c.experiment.name, c, epochs_left=2) for c in cfgs]
    out = execute_runs(tasks, train_fn=fake, on_done=lambda o: seen.append(o.task.name),
                       log=lines.append)
    assert seen == ["a", "b", "c"]
    assert [o.diverged is not None for o in out] == [False, True, False]
    assert any("b diverged" in line for line in lines)
    assert any("[2/3 done, ETA" in line for line in lines)

    def broken(cfg: Any, *, resume: bool = False) -> dict[str, Any]:
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        execute_runs(tasks, train_fn=broken)
    with pytest.raises(ValueError, match="jobs must be >= 1"):
        execute_runs(tasks, jobs=0)


@pytest.mark.parametrize(
    "grid",
    sorted((ROOT / "benchmarks").glob("*/grid*.yaml")),
    ids=lambda p: f"{p.parent.name}/{p.name}",
)
def test_every_shipped_grid_is_even_and_builds(grid: Path) -> None:
    """Each benchmark grid gives its methods the same number of settings, and each setting is a
    valid loss configuration (load_grid builds every one)."""
    trials = load_grid(grid)
    assert trials and len({len(t) for t in trials.values()}) == 1, grid
