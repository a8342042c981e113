"""``lud bench``: the table, its numbers, resuming, ablation, and errors (lud.bench)."""

from __future__ import annotations

import csv
import itertools
import json
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from lud.cli import main
from lud.config import config_from_dict
from lud.data import build_data, make_batch_transform, make_loader, write_cifar_like
from lud.engine import load_checkpoint, predict_logits
from lud.engine import train as engine_train
from lud.engine.runlog import read_metrics
from lud.experiments import bench
from lud.experiments.bench import (
    ABLATIONS,
    DEFAULT_METHODS,
    STUDENT,
    parse_method_params,
    parse_seeds,
    plan_bench,
    run_bench,
)
from lud.experiments.results import aggregate, collect_results
from lud.losses import build_loss
from lud.models import build_model

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny CIFAR-like data, a trained MLP teacher and a distillation config.

    The student recipe (lr 0.001, two steps per epoch) leaves the student alone well below the
    teacher, so the gap-closed column has something to measure.
    """
    root = tmp_path_factory.mktemp("bench")
    write_cifar_like(root / "data", num_classes=10, n_train=200, n_test=80, seed=3)
    common = {
        "data": {
            "name": "cifar10",
            "root": str(root / "data"),
            "val_split": 0.2,
            "batch_size": 32,
            "eval_batch_size": 80,
            "augment": "none",
        },
        "solver": {"epochs": 2, "lr": 0.001, "schedule": "constant", "milestones": []},
        "runtime": {
            "progress": False,
            "tensorboard": False,
            "log_every": 100,
            "max_steps_per_epoch": 2,
        },
    }
    teacher = config_from_dict(
        {
            **common,
            "experiment": {"name": "teacher", "output_dir": str(root / "runs"), "seed": 0},
            "model": {"name": "mlp"},
            "loss": {"name": "ce"},
            "solver": {"epochs": 4, "lr": 0.05, "schedule": "constant", "milestones": []},
            "runtime": {"progress": False, "tensorboard": False, "log_every": 100},
        }
    )
    engine_train(teacher)
    student = {
        **common,
        "experiment": {"name": "tiny", "output_dir": str(root / "runs"), "seed": 0},
        "model": {"name": "mlp_tiny"},
        "loss": {"name": "kd"},
        "teacher": {"name": "mlp", "checkpoint": str(root / "runs" / "teacher" / "best.pt")},
    }
    (root / "kd.yaml").write_text(yaml.safe_dump(student))
    return {"root": root, "config": root / "kd.yaml"}


class Counter:
    """Wraps :func:`lud.experiments.bench.train`: counts calls and remembers what was resumed."""

    def __init__(self, real: Any) -> None:
        self.real, self.calls = real, []

    def __call__(self, cfg: Any, *, resume: bool = False) -> dict[str, Any]:
        self.calls.append((cfg.loss.name, cfg.experiment.seed, resume))
        return self.real(cfg, resume=resume)


@pytest.fixture(scope="module")
def benched(project: dict[str, Path]) -> Path:
    """`lud bench CONFIG --methods kd,lud --seeds 2` through the command line."""
    out = project["root"] / "bench"
    code = main(
        [
            "bench",
            str(project["config"]),
            "--methods",
            "kd,lud",
            "--seeds",
            "2",
            "--output-dir",
            str(out),
            "--method-params",
            "lud.rank_method=pearson",
        ]
    )
    assert code == 0
    return out


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as fh:
        return list(csv.DictReader(fh))


def _f(text: str) -> float | None:
    return None if text == "" else float(text)


# ----------------------------------------------------------------------------- parsing
def test_parse_seeds() -> None:
    assert parse_seeds(3, base=5) == [5, 6, 7]
    assert parse_seeds("2", base=0) == [0, 1]
    assert parse_seeds("4,1,9") == [4, 1, 9]
    assert parse_seeds([2, 3]) == [2, 3]
    for bad, msg in (
        ("0", ">= 1"),
        ("1,1", "distinct"),
        ("a", "count or a comma"),
        ([-1], r"\[0, 2\*\*32\)"),
    ):
        with pytest.raises(ValueError, match=msg):
            parse_seeds(bad)


def test_parse_method_params(tmp_path: Path) -> None:
    got = parse_method_params(
        [
            "lud.cdl_weight=2,dkd.beta=4,kd+ls.temperature=2.5",
            "mlkd.temperatures=[2,4],lud.dynamic_temperature=off",
        ]
    )
    assert got == {
        "lud": {"cdl_weight": 2, "dynamic_temperature": "off"},
        "dkd": {"beta": 4},
        "kd+ls": {"temperature": 2.5},
        "mlkd": {"temperatures": [2, 4]},
    }
    f = tmp_path / "p.yaml"
    f.write_text("lud: {sdl_weight: 3}\nstudent: {label_smoothing: 0.1}\n")
    assert parse_method_params([str(f), "lud.sdl_weight=5"]) == {
        "lud": {"sdl_weight": 5},
        "student": {"label_smoothing": 0.1},
    }
    with pytest.raises(ValueError, match="method.param=value"):
        parse_method_params("cdl_weight=2")
    with pytest.raises(ValueError, match="not found"):
        parse_method_params(str(tmp_path / "missing.yaml"))
    f.write_text("lud: 3\n")
    with pytest.raises(ValueError, match="must map each method"):
        parse_method_params(str(f))


def test_plan_ablation_variants(project: dict[str, Path], tmp_path: Path) -> None:
    """--ablate lud: full LUD plus one variant per part, each switching exactly that part off."""
    plan = plan_bench(
        project["config"],
        None,
        1,
        output_dir=tmp_path / "b",
        ablate="lud",
        method_params={"lud": {"cdl_weight": 2.0}},
    )
    labels = [v.label for v in plan.variants]
    assert labels == [
        STUDENT,
        "lud",
        "lud-no_mask",
        "lud-no_weighting",
        "lud-no_cdl",
        "lud-no_sdl",
        "lud-no_dyntemp",
        "lud-no_instance",
        "lud-no_relations",
    ]
    assert all(r.status == "new" for r in plan.runs) and len(plan.runs) == 9
    built = {
        r.variant.label: build_loss(r.config.loss.name, **r.config.loss.params) for r in plan.runs
    }
    full = built["lud"]
    assert full.cdl_weight == 2.0  # per-method parameters reach every variant...
    expected = {  # ...and each variant differs from full LUD in its own switch only
        "lud-no_mask": {"sample_mask": False, "class_mask": False},
        "lud-no_weighting": {"uncertainty_weighting": False},
        "lud-no_cdl": {"cdl_weight": 0.0},
        "lud-no_sdl": {"sdl_weight": 0.0},
        "lud-no_dyntemp": {"dynamic_temperature": "off"},
        "lud-no_instance": {"instance_weight": 0.0},
        "lud-no_relations": {"inter_weight": 0.0, "intra_weight": 0.0},
    }
    names = set().union(*expected.values())
    for label, switch in expected.items():
        for attr in names:
            want = switch.get(attr, getattr(full, attr))
            assert getattr(built[label], attr) == want, (label, attr)
    assert {label for label, _, _ in ABLATIONS["lud"]} == set(expected)
    student = next(r for r in plan.runs if r.variant.label == STUDENT)
    assert student.config.loss.name == "ce" and student.config.teacher.name is None


def test_default_methods_include_the_newer_baselines(
    project: dict[str, Path], tmp_path: Path
) -> None:
    """No --methods: every default builds and validates in the bench's one-view setting
    (lud-released as its weak-view objective), wttm, rld and lud-released among them."""
    plan = plan_bench(project["config"], None, 1, output_dir=tmp_path / "b")
    labels = [v.label for v in plan.variants]
    assert labels == [STUDENT, *DEFAULT_METHODS]
    assert {"wttm", "rld", "lud-released"} <= set(labels)
    for r in plan.runs:
        assert r.config.data.strong_augment is None
        assert not build_loss(r.config.loss.name, **r.config.loss.params).two_views


# ----------------------------------------------------------------------------- the table
def test_results_tables(benched: Path, project: dict[str, Path]) -> None:
    """results.csv rows/columns, and mean ± std recomputed from the runs' summary.json."""
    rows = {r["label"]: r for r in _read_csv(benched / "results.csv")}
    assert list(rows) == ["teacher", STUDENT, "kd", "lud"]
    for col in (
        "best_test_top1_mean",
        "best_test_top1_std",
        "last_test_top1_mean",
        "best_val_top1_mean",
        "test_ece_mean",
        "test_nll_mean",
        "wall_time_s_mean",
        "gap_closed",
        "teacher_test_top1",
        "seeds_done",
    ):
        assert col in rows["kd"], col
    teacher_top1 = float(rows["teacher"]["best_test_top1_mean"])
    runs = _read_csv(benched / "runs.csv")
    assert sorted((r["label"], r["seed"]) for r in runs) == sorted(
        (m, str(s)) for m in (STUDENT, "kd", "lud") for s in (0, 1)
    )

    means = {}
    for label in (STUDENT, "kd", "lud"):
        sums = [
            json.loads((benched / label / f"seed{s}" / "summary.json").read_text()) for s in (0, 1)
        ]
        assert all(s["completed"] for s in sums)
        best = np.array([s["best"]["test_top1"] for s in sums])
        last = np.array([s["last"]["test_top1"] for s in sums])
        val = np.array([s["best"]["top1"] for s in sums])
        wall = np.array([s["wall_time_s"] for s in sums])
        row = rows[label]
        assert row["seeds_done"] == "2"
        for key, vals in (
            ("best_test_top1", best),
            ("last_test_top1", last),
            ("best_val_top1", val),
            ("wall_time_s", wall),
        ):
            assert float(row[f"{key}_mean"]) == pytest.approx(vals.mean(), abs=1e-9)
            assert float(row[f"{key}_std"]) == pytest.approx(vals.std(ddof=1), abs=1e-9)
        means[label] = best.mean()
        # The teacher's accuracy agrees with what the trainer measured in the distilled runs.
        if label != STUDENT:
            assert sums[0]["teacher_test_top1"] == pytest.approx(teacher_top1)
    assert teacher_top1 > means[STUDENT]
    for label in ("kd", "lud"):
        want = 100 * (means[label] - means[STUDENT]) / (teacher_top1 - means[STUDENT])
        assert float(rows[label]["gap_closed"]) == pytest.approx(want)

    md = (benched / "results.md").read_text()
    assert "## Methods" in md and "## Ablation" not in md
    for text in ("| student alone |", "| kd |", "| lud |", "teacher (mlp)", " ± "):
        assert text in md
    assert "lud: `lud` rank_method=pearson" in md


def test_ece_nll_against_numpy(benched: Path) -> None:
    """ECE/NLL/per-class counts of a run's best.pt, recomputed in numpy from its logits."""
    run = benched / "kd" / "seed1"
    ev = json.loads((run / "eval_best.json").read_text())
    ckpt = load_checkpoint(run / "best.pt")
    cfg = config_from_dict(ckpt["config"])
    d = cfg.data
    bundle = build_data(
        d.name, d.root, val_split=d.val_split, seed=cfg.experiment.seed, augment=d.augment
    )
    model = build_model("mlp_tiny", 10, in_channels=3, input_shape=(3, 32, 32))
    model.load_state_dict(ckpt["model"])
    logits = (
        predict_logits(
            model,
            make_loader(bundle.test, 80, shuffle=False),
            make_batch_transform(bundle, train=False),
            "cpu",
        )
        .double()
        .numpy()
    )
    y = bundle.test.labels.numpy()
    z = logits - logits.max(1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(1, keepdims=True))
    p = np.exp(logp)
    conf, pred = p.max(1), p.argmax(1)
    nll = -logp[np.arange(len(y)), y].mean()
    ece = 0.0
    edges = np.linspace(0, 1, 16)
    for lo, hi in itertools.pairwise(edges):
        sel = (conf > lo) & (conf <= hi)
        if sel.any():
            ece += sel.mean() * abs((pred[sel] == y[sel]).mean() - conf[sel].mean())
    assert ev["nll"] == pytest.approx(nll, rel=1e-5)
    assert ev["ece"] == pytest.approx(ece, abs=1e-6)
    assert ev["top1"] == pytest.approx(100 * (pred == y).mean())
    assert ev["class_total"] == np.bincount(y, minlength=10).tolist()
    assert ev["class_correct"] == np.bincount(y[pred == y], minlength=10).tolist()
    # The table reports the same numbers, and the same test top-1 the trainer logged.
    summary = json.loads((run / "summary.json").read_text())
    assert ev["top1"] == pytest.approx(summary["best"]["test_top1"])
    row = next(
        r for r in _read_csv(benched / "runs.csv") if r["label"] == "kd" and r["seed"] == "1"
    )
    assert float(row["test_ece"]) == pytest.approx(ece, abs=1e-6)


def test_aggregate_matches_hand_computation() -> None:
    recs = [
        {
            "label": "a",
            "status": "done",
            "best_test_top1": v,
            "last_test_top1": v - 1,
            "best_val_top1": None,
            "test_ece": 0.1,
            "test_nll": 1.0,
            "wall_time_s": 2.0,
        }
        for v in (50.0, 54.0, 58.0)
    ]
    recs += [
        {
            "label": STUDENT,
            "status": "done",
            "best_test_top1": 40.0,
            "last_test_top1": 40.0,
            "best_val_top1": None,
            "test_ece": None,
            "test_nll": None,
            "wall_time_s": 1.0,
        },
        {
            "label": "a",
            "status": "diverged",
            "best_test_top1": None,
            "last_test_top1": None,
            "best_val_top1": None,
            "test_ece": None,
            "test_nll": None,
            "wall_time_s": None,
        },
    ]
    variants = [
        {"label": STUDENT, "group": "baseline", "loss": "ce", "params": {}},
        {"label": "a", "group": "method", "loss": "kd", "params": {"temperature": 2}},
    ]
    rows = {r["label"]: r for r in aggregate(recs, variants, teacher_top1=70.0)}
    a = rows["a"]
    assert a["best_test_top1_mean"] == pytest.approx(54.0)
    assert a["best_test_top1_std"] == pytest.approx(4.0)  # sample std of 50, 54, 58
    assert a["best_val_top1_mean"] is None and a["best_val_top1_std"] is None
    assert (a["seeds_done"], a["seeds_planned"], a["diverged"]) == (3, 4, 1)
    assert a["gap_closed"] == pytest.approx(100 * 14 / 30)
    assert rows[STUDENT]["best_test_top1_std"] is None  # one seed: no spread
    assert aggregate(recs, variants, teacher_top1=30.0)[1]["gap_closed"] is None


# ----------------------------------------------------------------------------- resuming
def test_rerun_redoes_nothing(
    benched: Path, project: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    counter = Counter(bench.train)
    monkeypatch.setattr(bench, "train", counter)
    stamps = {p: p.stat().st_mtime_ns for p in benched.glob("*/seed*/*.pt")}
    before = (benched / "results.csv").read_text()
    result = run_bench(
        project["config"],
        ["kd", "lud"],
        2,
        output_dir=benched,
        log=None,
        method_params="lud.rank_method=pearson",
    )
    assert counter.calls == []
    assert {p: p.stat().st_mtime_ns for p in benched.glob("*/seed*/*.pt")} == stamps
    assert (benched / "results.csv").read_text() == before
    assert [r["label"] for r in result.rows][:3] == [STUDENT, "kd", "lud"]


def test_interrupted_benchmark_resumes(
    project: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C in the middle of a run: the rerun skips finished runs and resumes the cut one."""
    out = tmp_path / "b"
    calls: list[tuple[str, bool]] = []

    def interrupted(cfg: Any, *, resume: bool = False) -> dict[str, Any]:
        calls.append((cfg.loss.name, resume))
        if cfg.loss.name == "kd":  # stop after one of two epochs, as a kill would
            engine_train(cfg, resume=resume, stop_after=1)
            raise KeyboardInterrupt
        return engine_train(cfg, resume=resume)

    monkeypatch.setattr(bench, "train", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_bench(project["config"], ["kd"], 1, output_dir=out, log=None)
    assert calls == [("ce", False), ("kd", False)]
    kd_run = out / "kd" / "seed0"
    first_epoch = read_metrics(kd_run / "metrics.jsonl")
    assert [r["epoch"] for r in first_epoch] == [1]
    assert not json.loads((kd_run / "summary.json").read_text())["completed"]
    assert plan_bench(project["config"], ["kd"], 1, output_dir=out).runs[1].status == "resume"

    counter = Counter(engine_train)
    monkeypatch.setattr(bench, "train", counter)
    result = run_bench(project["config"], ["kd"], 1, output_dir=out, log=None)
    assert counter.calls == [("kd", 0, True)]
    rows = read_metrics(kd_run / "metrics.jsonl")
    assert [r["epoch"] for r in rows] == [1, 2]
    assert rows[0] == first_epoch[0]  # epoch 1 was not trained again
    assert result.row("kd")["seeds_done"] == 1


def test_garbage_run_folders_raise(project: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "b"
    run = out / "kd" / "seed0"
    run.mkdir(parents=True)
    (run / "last.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"cannot resume .*last\.pt is not a readable"):
        plan_bench(project["config"], ["kd"], 1, output_dir=out)
    (run / "last.pt").unlink()
    (run / "summary.json").write_text("{oops")
    with pytest.raises(ValueError, match=r"summary\.json is not readable JSON"):
        plan_bench(project["config"], ["kd"], 1, output_dir=out)
    (run / "summary.json").unlink()
    (run / "best.pt").write_bytes(b"x")
    with pytest.raises(ValueError, match="no last.pt"):
        plan_bench(project["config"], ["kd"], 1, output_dir=out)


def test_other_recipe_in_same_folder_refused(benched: Path, project: dict[str, Path]) -> None:
    with pytest.raises(ValueError, match=r"another recipe:\n  solver\.lr: 0\.001 vs 0\.01"):
        plan_bench(project["config"], ["kd"], 2, ["solver.lr=0.01"], output_dir=benched)
    with pytest.raises(ValueError, match="already has 'lud'"):
        plan_bench(project["config"], ["lud"], 2, output_dir=benched)  # other lud parameters
    other = benched.parent / "other_teacher.pt"
    shutil.copy(benched.parent / "runs" / "teacher" / "best.pt", other)
    with pytest.raises(ValueError, match="was made with teacher"):
        plan_bench(
            project["config"], ["kd"], 2, [f"teacher.checkpoint={other}"], output_dir=benched
        )


# ----------------------------------------------------------------------------- ablation
def test_ablation_reuses_runs_and_tabulates(
    benched: Path, project: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """--ablate lud in the methods' folder: only the ablation variants are trained."""
    counter = Counter(engine_train)
    monkeypatch.setattr(bench, "train", counter)
    code = main(
        [
            "bench",
            str(project["config"]),
            "--ablate",
            "lud",
            "--seeds",
            "1",
            "--output-dir",
            str(benched),
            "--method-params",
            "lud.rank_method=pearson",
        ]
    )
    assert code == 0
    n = len(ABLATIONS["lud"])
    assert n == 7 and sorted(c[2] for c in counter.calls) == [False] * n
    assert len(counter.calls) == n and {c[0] for c in counter.calls} == {"lud"}
    md = (benched / "results.md").read_text()
    abl = md.split("## Ablation")[1].split("\n\n")[1]
    lines = [ln for ln in abl.splitlines() if ln.startswith("| ")][1:]
    assert [ln.split(" | ")[0][2:] for ln in lines] == [
        "teacher (mlp)",
        "student alone",
        "lud",
        *(label for label, _, _ in ABLATIONS["lud"]),
    ]
    assert "| lud-no_cdl | category Spearman (CDL) |" in md
    rows = {r["label"]: r for r in _read_csv(benched / "results.csv")}
    assert rows["lud-no_sdl"]["seeds_done"] == "1" and rows["lud"]["seeds_done"] == "2"
    got = yaml.safe_load((benched / "lud-no_sdl" / "seed0" / "config.yaml").read_text())
    assert got["loss"]["params"] == {"rank_method": "pearson", "sdl_weight": 0.0}


# ----------------------------------------------------------------------------- command line
def test_cli_errors_and_dry_run(
    project: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = str(project["config"])
    assert main(["bench", cfg, "--methods", "kd,dkdd", "--output-dir", str(tmp_path)]) == 2
    assert "unknown method 'dkdd'" in capsys.readouterr().err
    assert main(["bench", cfg, "loss.params.beta=2", "--output-dir", str(tmp_path)]) == 2
    assert "--method-params" in capsys.readouterr().err
    assert (
        main(
            [
                "bench",
                cfg,
                "--methods",
                "kd",
                "--method-params",
                "dkd.beta=2",
                "--output-dir",
                str(tmp_path),
            ]
        )
        == 2
    )
    assert "does not run" in capsys.readouterr().err
    assert (
        main(
            [
                "bench",
                cfg,
                "--methods",
                "kd",
                "--method-params",
                "kd.temprature=2",
                "--output-dir",
                str(tmp_path),
            ]
        )
        == 2
    )
    assert "unknown parameter 'temprature'" in capsys.readouterr().err
    assert (
        main(
            [
                "bench",
                cfg,
                "--methods",
                "kd",
                "--seeds",
                "1",
                "--dry-run",
                "--output-dir",
                str(tmp_path / "d"),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "student" in out and "kd" in out and out.count(" new ") == 2
    assert not (tmp_path / "d").exists()  # a dry run writes nothing


def test_diverged_run_is_skipped(
    project: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lud.engine import TrainingDivergedError

    def diverge(cfg: Any, *, resume: bool = False) -> dict[str, Any]:
        if cfg.loss.name == "kd":
            raise TrainingDivergedError("training diverged at epoch 1, step 1")
        return engine_train(cfg, resume=resume)

    monkeypatch.setattr(bench, "train", diverge)
    out = tmp_path / "b"
    result = run_bench(project["config"], ["kd"], 1, output_dir=out, log=None)
    assert result.row("kd")["diverged"] == 1 and result.row("kd")["seeds_done"] == 0
    assert "0/1 (1 diverged)" in (out / "results.md").read_text()
    counter = Counter(engine_train)
    monkeypatch.setattr(bench, "train", counter)
    run_bench(project["config"], ["kd"], 1, output_dir=out, log=None)
    assert counter.calls == []  # a diverged run is not retried unless asked
    run_bench(project["config"], ["kd"], 1, output_dir=out, log=None, retry_failed=True)
    assert counter.calls == [("kd", 0, False)]
    assert collect_results(out).row("kd")["seeds_done"] == 1
    shutil.rmtree(out)
    assert math.isfinite(result.teacher["test_top1"])


@pytest.mark.slow
def test_two_jobs_train_the_same_runs(benched: Path, project: dict[str, Path]) -> None:
    """`--jobs 2` trains each run in a worker process; the runs match the in-process ones."""
    out = project["root"] / "bench-jobs2"
    assert main(["bench", str(project["config"]), "--methods", "kd", "--seeds", "2",
                 "--jobs", "2", "--output-dir", str(out)]) == 0
    for label in ("student", "kd"):
        for seed in (0, 1):
            a = json.loads((benched / label / f"seed{seed}" / "summary.json").read_text())
            b = json.loads((out / label / f"seed{seed}" / "summary.json").read_text())
            assert a["best"] == b["best"] and a["last"] == b["last"]
            assert (out / label / f"seed{seed}" / "eval_best.json").is_file()
    rows = {r["label"]: r for r in _read_csv(out / "results.csv")}
    assert rows["kd"]["seeds_done"] == "2" and rows["student"]["seeds_done"] == "2"


def test_ablation_skips_parts_already_off(tmp_path: Path, project: dict[str, Path]) -> None:
    """A part the tuned setting already switches off has no ablation row (it would be the very
    same run as full LUD, trained again)."""
    plan = plan_bench(
        project["config"],
        ["lud"],
        1,
        output_dir=tmp_path / "b",
        ablate="lud",
        method_params={"lud": {"cdl_weight": 0.0, "sdl_weight": 0.0}},
    )
    labels = [v.label for v in plan.variants]
    assert "lud-no_cdl" not in labels and "lud-no_sdl" not in labels
    assert {"lud-no_mask", "lud-no_instance", "lud-no_relations"} <= set(labels)
