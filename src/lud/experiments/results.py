"""The tables of a benchmark folder: ``results.md``, ``results.csv`` (per method) and ``runs.csv``.

Everything is read back from the run folders (``summary.json``, ``eval_best.json``) listed in
``bench.json``, so the tables can be rebuilt at any time, also from a half-finished benchmark.

Columns, per method, mean ± std over the seeds whose run completed (std: sample standard
deviation, n − 1; blank for one seed):

* ``best test top-1``: test top-1 at the epoch with the best validation top-1 (the best test
  top-1 itself when the recipe has no validation split); ``last``: the final epoch;
* ``val top-1``: the best validation top-1 (blank without a validation split);
* ``ECE`` (15 bins) and ``NLL`` of the best checkpoint on the test set;
* ``time``: wall time of one run;
* ``gap closed``: ``(method − student alone) / (teacher − student alone)`` on mean best test
  top-1, in percent (blank when the teacher is not better than the student alone).
"""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .runs import (
    FAILED_FILE,
    STUDENT,
    base_config_of,
    load_manifest,
    run_status,
)

__all__ = ["METRICS", "BenchResult", "aggregate", "collect_results", "markdown", "write_results"]

#: (key, header, digits) of the per-method metrics.
METRICS: tuple[tuple[str, str, int], ...] = (
    ("best_test_top1", "best test top-1", 2),
    ("last_test_top1", "last test top-1", 2),
    ("best_val_top1", "val top-1", 2),
    ("test_ece", "ECE", 4),
    ("test_nll", "NLL", 4),
    ("wall_time_s", "time / run (s)", 1),
)


@dataclass
class BenchResult:
    """The tables of one benchmark folder.

    Attributes:
        bench_dir: the folder. rows: one dict per method (the rows of ``results.csv``).
        runs: one dict per (method, seed) run (``runs.csv``). teacher: the teacher's test
        evaluation as a dict (``None`` without a teacher). manifest: ``bench.json``.
    """

    bench_dir: Path
    rows: list[dict[str, Any]]
    runs: list[dict[str, Any]]
    teacher: dict[str, Any] | None
    manifest: dict[str, Any] = field(repr=False)

    @property
    def markdown(self) -> str:
        return markdown(self)

    def row(self, label: str) -> dict[str, Any]:
        """The row of ``label`` (``KeyError`` if absent)."""
        for r in self.rows:
            if r["label"] == label:
                return r
        raise KeyError(label)


def _run_record(
    bench_dir: Path, entry: dict[str, Any], variant: dict[str, Any], evaluate: bool
) -> dict[str, Any]:
    from .calibration import evaluate_run
    from .runs import _read_json

    run = bench_dir / entry["run_dir"]
    rec: dict[str, Any] = {
        "label": entry["label"],
        "group": variant["group"],
        "loss": variant["loss"],
        "seed": entry["seed"],
        "run_dir": entry["run_dir"],
        "status": "missing",
        "epochs_completed": None,
        "best_epoch": None,
        **{k: None for k, _, _ in METRICS},
        "teacher_test_top1": None,
        "lud_version": None,
        "resolved_loss_params": None,  # JSON text: every loss parameter's value (summary.json)
    }
    if not run.is_dir():
        return rec
    status, done = run_status(run)
    rec["status"], rec["epochs_completed"] = (
        {"done": "done", "resume": "incomplete", "new": "missing", "failed": "diverged"}[status],
        done,
    )
    if status == "failed":
        rec["error"] = _read_json(run / FAILED_FILE).get("error")
    if status != "done":
        return rec
    s = _read_json(run / "summary.json")
    best, last = s.get("best") or {}, s.get("last") or {}
    rec.update(
        best_epoch=best.get("epoch"),
        best_test_top1=best.get("test_top1"),
        last_test_top1=last.get("test_top1"),
        best_val_top1=best.get("top1") if best.get("split") == "val" else None,
        wall_time_s=s.get("wall_time_s"),
        teacher_test_top1=s.get("teacher_test_top1"),
        lud_version=s.get("lud_version"),
        resolved_loss_params=(None if s.get("resolved_loss_params") is None
                              else json.dumps(s["resolved_loss_params"])),
    )
    if evaluate or (run / "eval_best.json").is_file():
        ev = evaluate_run(run)
        rec.update(test_ece=ev.ece, test_nll=ev.nll)
    return rec


def _mean_std(values: Sequence[float | None]) -> tuple[float | None, float | None]:
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not vals:
        return None, None
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else None)


def aggregate(
    runs: list[dict[str, Any]],
    variants: list[dict[str, Any]],
    teacher_top1: float | None,
) -> list[dict[str, Any]]:
    """One row per variant: mean/std of :data:`METRICS` over completed runs, gap closed."""
    rows = []
    for v in variants:
        mine = [r for r in runs if r["label"] == v["label"]]
        done = [r for r in mine if r["status"] == "done"]
        row: dict[str, Any] = {
            "label": v["label"],
            "group": v["group"],
            "loss": v["loss"],
            "params": _params_text(v["params"]),
            "switched_off": v.get("off", ""),
            "seeds_done": len(done),
            "seeds_planned": len(mine),
            "diverged": sum(r["status"] == "diverged" for r in mine),
            **_resolved(done),
        }
        for key, _, _ in METRICS:
            row[f"{key}_mean"], row[f"{key}_std"] = _mean_std([r[key] for r in done])
        rows.append(row)
    alone = next((r["best_test_top1_mean"] for r in rows if r["label"] == STUDENT), None)
    for row in rows:
        m = row["best_test_top1_mean"]
        ok = None not in (m, alone, teacher_top1) and teacher_top1 > alone  # type: ignore[operator]
        row["gap_closed"] = 100.0 * (m - alone) / (teacher_top1 - alone) if ok else None
        row["teacher_test_top1"] = teacher_top1
    return rows


def _resolved(done: list[dict[str, Any]]) -> dict[str, Any]:
    """The row's ``lud_version`` and ``resolved_params`` (JSON) as its completed runs recorded
    them; ``"differs between seeds (runs.csv)"`` when they do not agree."""
    versions = {r["lud_version"] for r in done if r.get("lud_version") is not None}
    params = {r["resolved_loss_params"] for r in done if r.get("resolved_loss_params") is not None}
    mixed = "differs between seeds (runs.csv)"
    return {
        "lud_version": None if not versions else versions.pop() if len(versions) == 1 else mixed,
        "resolved_params": None if not params else params.pop() if len(params) == 1 else mixed,
    }


def _params_text(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in params.items()) if params else "defaults"


def collect_results(bench_dir: str | Path, *, evaluate: bool = True) -> BenchResult:
    """Read a benchmark folder back into tables.

    Args:
        evaluate: evaluate the best checkpoint of finished runs that have no ``eval_best.json``
            yet, and the teacher if ``teacher_eval.json`` is missing (``False``: leave those
            cells blank).
    """
    from .calibration import ModelEval, evaluate_teacher

    bench = Path(bench_dir)
    manifest = load_manifest(bench)
    variants = {v["label"]: v for v in manifest["variants"]}
    runs = [_run_record(bench, e, variants[e["label"]], evaluate) for e in manifest["runs"]]
    teacher: dict[str, Any] | None = None
    t = manifest.get("teacher") or {}
    if t.get("name") and t.get("checkpoint"):
        cache = bench / "teacher_eval.json"
        ev: ModelEval | None = None
        if evaluate or cache.is_file():
            try:
                ev = evaluate_teacher(base_config_of(manifest), cache_path=cache)
            except FileNotFoundError:
                ev = None  # the teacher file moved: fall back to the runs' own record
        if ev is not None:
            teacher = {
                "name": t["name"],
                "checkpoint": t["checkpoint"],
                "test_top1": ev.top1,
                "test_ece": ev.ece,
                "test_nll": ev.nll,
            }
        else:
            recorded = [r["teacher_test_top1"] for r in runs if r["teacher_test_top1"] is not None]
            if recorded:
                teacher = {
                    "name": t["name"],
                    "checkpoint": t["checkpoint"],
                    "test_top1": recorded[0],
                    "test_ece": None,
                    "test_nll": None,
                }
    top1 = teacher["test_top1"] if teacher else None
    rows = aggregate(runs, list(variants.values()), top1)
    return BenchResult(bench, rows, runs, teacher, manifest)


# ----------------------------------------------------------------------------- formatting
def _num(value: float | None, digits: int) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _pm(mean: float | None, std: float | None, digits: int) -> str:
    if mean is None:
        return "–"
    return f"{mean:.{digits}f}" if std is None else f"{mean:.{digits}f} ± {std:.{digits}f}"


def _table(result: BenchResult, labels: list[str], ablation: bool) -> str:
    rows = [result.row(label) for label in labels]
    best = max(
        (r["best_test_top1_mean"] for r in rows if r["best_test_top1_mean"] is not None),
        default=None,
    )
    head = ["method"] + (["switched off"] if ablation else []) + [h for _, h, _ in METRICS]
    head += ["gap closed", "seeds"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    t = result.teacher
    if t is not None:
        cells = [f"teacher ({t['name']})"] + ([""] if ablation else [])
        cells += [
            _num(t["test_top1"], 2),
            "–",
            "–",
            _num(t["test_ece"], 4),
            _num(t["test_nll"], 4),
            "–",
            "",
            "–",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    for r in rows:
        name = "student alone" if r["label"] == STUDENT else r["label"]
        cells = [name] + (
            [r["switched_off"] or ("nothing" if r["group"] != "baseline" else "")]
            if ablation
            else []
        )
        for key, _, digits in METRICS:
            text = _pm(r[f"{key}_mean"], r[f"{key}_std"], digits)
            if (
                key == "best_test_top1"
                and r[f"{key}_mean"] is not None
                and r[f"{key}_mean"] == best
            ):
                text = f"**{text}**"
            cells.append(text)
        cells.append(
            "" if r["gap_closed"] is None or r["label"] == STUDENT else f"{r['gap_closed']:+.0f}%"
        )
        seeds = f"{r['seeds_done']}/{r['seeds_planned']}"
        if r["diverged"]:
            seeds += f" ({r['diverged']} diverged)"
        cells.append(seeds)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def method_labels(result: BenchResult) -> tuple[list[str], list[str]]:
    """Row labels of the methods table and of the ablation table (empty if no ablation)."""
    variants = result.manifest["variants"]
    methods = [v["label"] for v in variants if v["group"] in ("baseline", "method")]
    abl = [v for v in variants if v["group"] == "ablation"]
    if not any(v["off"] for v in abl):
        return (methods if len(methods) > 1 else []), []
    bases = {v["loss"] for v in abl if v["off"]}
    full = [v["label"] for v in variants if v["label"] in bases]
    ablation = [STUDENT] + full + [v["label"] for v in abl if v["off"]]
    return (methods if len(methods) > 1 else []), ablation


def markdown(result: BenchResult, *, title: bool = True, runs: bool = True) -> str:
    """``results.md``: the recipe, the methods table, the ablation table, the per-run table.

    ``title``/``runs``: include the page title / the per-run table.
    """
    m = result.manifest
    cfg = base_config_of(m)
    s, d = cfg.solver, cfg.data
    lines = [f"# Benchmark: {cfg.experiment.name}", ""] if title else []
    lines.append(
        f"- config: `{m['config']}`"
        + (f", overrides: `{' '.join(m['overrides'])}`" if m["overrides"] else "")
    )
    lines.append(
        f"- data: {d.name} (validation split {d.val_split:g}"
        + (f", training subset {d.subset}" if d.subset else "")
        + f"); student {cfg.model.name}"
        + (f"; teacher {cfg.teacher.name} (`{cfg.teacher.checkpoint}`)" if cfg.teacher.name else "")
    )
    lines.append(
        f"- recipe: {s.optimizer}, lr {s.lr:g}, {s.schedule} schedule, {s.epochs} epochs, "
        f"batch {d.batch_size}, weight decay {s.weight_decay:g}"
    )
    seeds = sorted({r["seed"] for r in result.runs})
    lines += [f"- seeds: {', '.join(map(str, seeds))}", ""]
    methods, ablation = method_labels(result)
    if methods:
        lines += ["## Methods", "", _table(result, methods, ablation=False), ""]
    if ablation:
        lines += [
            "## Ablation: one part switched off at a time",
            "",
            _table(result, ablation, ablation=True),
            "",
        ]
    lines += ["Loss parameters (method defaults unless listed):", ""]
    for v in m["variants"]:
        lines.append(f"- {v['label']}: `{v['loss']}` {_params_text(v['params'])}")
    resolved = [r for r in result.rows if r.get("resolved_params")]
    if resolved:
        lines += ["", "Every loss parameter, as the runs recorded it (`resolved_params` in "
                  "results.csv):", ""]
        lines += [f"- {r['label']} (lud {r['lud_version']}): `{r['resolved_params']}`"
                  for r in resolved]
    lines += ["", _NOTE, ""]
    if not runs:
        return "\n".join(lines)
    lines += [
        "## Runs",
        "",
        "| method | seed | status | epochs | best epoch | best test top-1 | last test top-1 "
        + "| val top-1 | ECE | NLL | time (s) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result.runs:
        lines.append(
            f"| {r['label']} | {r['seed']} | {r['status']} | {r['epochs_completed'] or 0} | "
            f"{r['best_epoch'] or '–'} | {_num(r['best_test_top1'], 2)} | "
            f"{_num(r['last_test_top1'], 2)} | {_num(r['best_val_top1'], 2)} | "
            f"{_num(r['test_ece'], 4)} | {_num(r['test_nll'], 4)} | {_num(r['wall_time_s'], 1)} |"
        )
    return "\n".join(lines) + "\n"


_NOTE = (
    "Top-1 in %, mean ± sample std over the seeds whose run completed. *best*: test top-1 at the "
    "epoch with the best validation top-1 (the best test top-1 without a validation split); "
    "*last*: final epoch; *val top-1*: best validation top-1. ECE (15 bins) and NLL: best "
    "checkpoint on the test set. *gap closed*: (method − student alone) / (teacher − student "
    "alone) on mean best test top-1."
)


def _csv(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return ""
    keys: list[str] = []
    for r in sorted(rows, key=len, reverse=True):  # the fullest row sets the column order
        keys += [k for k in r if k not in keys]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: "" if r.get(k) is None else r.get(k) for k in keys})
    return buf.getvalue()


def write_results(result: BenchResult) -> None:
    """Write ``results.md``, ``results.csv`` (per method, teacher first) and ``runs.csv``."""
    from ..engine.checkpoint import atomic_write_text

    rows = list(result.rows)
    if result.teacher is not None:
        t = result.teacher
        rows.insert(
            0,
            {
                "label": "teacher",
                "group": "teacher",
                "loss": "",
                "params": t["name"],
                "switched_off": "",
                "seeds_done": 1,
                "seeds_planned": 1,
                "diverged": 0,
                "best_test_top1_mean": t["test_top1"],
                "test_ece_mean": t["test_ece"],
                "test_nll_mean": t["test_nll"],
            },
        )
    atomic_write_text(markdown(result), result.bench_dir / "results.md")
    atomic_write_text(_csv(rows), result.bench_dir / "results.csv")
    atomic_write_text(_csv(result.runs), result.bench_dir / "runs.csv")
