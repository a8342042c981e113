"""``lud report``: PNG plots and a Markdown page for a run folder or a benchmark folder.

What it draws (each piece is skipped, with a note on the page, when its inputs are missing):

* ``curves_top1.png`` / ``curves_loss.png``: train/val/test top-1 and loss per epoch, one panel
  per method (mean over seeds, shaded min–max over seeds). The training loss is each method's
  own objective; validation/test loss is the NLL. ``test_top1.png``: all methods on one axis.
* ``lud_stats.png``: for LUD runs, the kept fraction of samples and classes, the temperature
  (mean, and the band between the batch minimum and maximum, each averaged over the epoch) and
  the Spearman ρ of the category and sample terms, per epoch (``train/stat/*`` in
  ``metrics.jsonl``).
* ``grad_norms.png``: for runs trained with ``runtime.grad_norms_every`` (``grad_norm/*`` in
  ``metrics.jsonl``), one panel per method: the gradient norm each loss term puts on the
  student logits, per epoch (the epoch's mean over probed steps; mean over seeds, shaded
  min–max), log scale. Which term drives learning, and which goes quiet.
* ``reliability.png``: reliability diagram (accuracy against confidence, 15 bins, pooled over
  seeds) and confidence histogram of the teacher and of each student's best checkpoint on the
  test set.
* ``class_gain.png``: per-class test accuracy of each method minus the student alone, in
  percentage points (grouped bars up to 20 classes, a heat map beyond).

Folders understood: a benchmark folder (``bench.json``), a single run folder (``config.yaml`` +
``metrics.jsonl``), or any folder holding run folders up to two levels down (e.g. ``lud demo``
output), where the student alone is a ``ce`` run of the students' architecture.
Plots use matplotlib's object API with the Agg canvas: no pyplot state, no display needed.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import yaml

from ..config import Config, config_from_dict

if TYPE_CHECKING:
    from .calibration import ModelEval

__all__ = ["RunGroup", "discover_runs", "make_report"]

_SPLITS = (("train", "-"), ("val", "--"), ("test", ":"))


@dataclass
class RunGroup:
    """The runs of one method (one per seed) and what the report learns about them."""

    label: str
    loss: str
    runs: list[Path]
    baseline: bool = False
    group: str = "method"  # "baseline" | "method" | "ablation" (benchmark rows)
    metrics: list[list[dict[str, Any]]] = field(default_factory=list)
    evals: list[Any] = field(default_factory=list)  # ModelEval of each evaluated best.pt
    eval_of: dict[Path, Any] = field(default_factory=dict)  # the same, by run folder


def _load_config(run: Path) -> Config:
    raw = yaml.safe_load((run / "config.yaml").read_text())
    if not isinstance(raw, dict):
        raise ValueError(f"{run / 'config.yaml'} is not a run config")
    return config_from_dict(raw)


def _is_run(path: Path) -> bool:
    return (path / "config.yaml").is_file() and (path / "metrics.jsonl").is_file()


def discover_runs(path: str | os.PathLike[str]) -> tuple[str, list[RunGroup], Config | None]:
    """``(kind, groups, config naming the teacher)`` for a folder.

    ``kind`` is ``"bench"``, ``"run"`` or ``"folder"``.

    Raises:
        ValueError: no run folder found.
    """
    from .runs import STUDENT, base_config_of, load_manifest, run_status

    root = Path(path)
    if not root.is_dir():
        raise ValueError(f"{root} is not a folder")
    if (root / "bench.json").is_file():
        manifest = load_manifest(root)
        groups = []
        for v in manifest["variants"]:
            runs = []
            for e in manifest["runs"]:
                run = root / e["run_dir"]
                if e["label"] == v["label"] and run.is_dir() and run_status(run)[0] == "done":
                    runs.append(run)
            groups.append(RunGroup(v["label"], v["loss"], runs, v["label"] == STUDENT, v["group"]))
        base = base_config_of(manifest)
        groups = [g for g in groups if g.runs]
        if not groups:
            raise ValueError(f"benchmark folder {root} has no finished run yet")
        return "bench", groups, base if base.teacher.name else None
    if _is_run(root):
        cfg = _load_config(root)
        return (
            "run",
            [RunGroup(cfg.loss.name, cfg.loss.name, [root])],
            (cfg if cfg.teacher.name and cfg.loss.name != "ce" else None),
        )
    found = sorted(
        {p.parent for p in root.glob("*/config.yaml")}
        | {p.parent for p in root.glob("*/*/config.yaml")}
    )
    runs = [p for p in found if _is_run(p)]
    if not runs:
        raise ValueError(
            f"no run folder under {root}: a run folder holds config.yaml and metrics.jsonl, "
            "a benchmark folder holds bench.json"
        )
    cfgs = {r: _load_config(r) for r in runs}
    distilled = [r for r in runs if cfgs[r].loss.name != "ce" and cfgs[r].teacher.name]
    student_model = Counter(cfgs[r].model.name for r in distilled).most_common(1)
    groups = [
        RunGroup(
            r.relative_to(root).as_posix(),
            cfgs[r].loss.name,
            [r],
            baseline=bool(student_model)
            and cfgs[r].loss.name == "ce"
            and cfgs[r].model.name == student_model[0][0],
        )
        for r in runs
    ]
    # the student alone first, as in the benchmark tables
    groups.sort(key=lambda g: not g.baseline)
    return "folder", groups, (cfgs[distilled[0]] if distilled else None)


# ----------------------------------------------------------------------------- plotting helpers
def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _colors(labels: Sequence[str]) -> dict[str, Any]:
    """One colour per label, stable across plots; grey and black are kept for the student alone
    and the teacher."""
    from matplotlib import colormaps

    tab10, tab20 = colormaps["tab10"], colormaps["tab20"]
    palette = [tab10(i) for i in range(10) if i != 7]  # tab10's 8th colour is grey
    palette += [tab20(i) for i in range(1, 20, 2) if i != 15]  # the light tab20 shades
    out: dict[str, Any] = {}
    i = 0
    for label in labels:
        if label in ("student", "student alone"):
            out[label] = "0.45"
        elif label not in out:
            out[label] = palette[i % len(palette)]
            i += 1
    out["teacher"] = "black"
    return out


def _integer_epochs(ax: Any) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _series(rows_per_run: list[list[dict[str, Any]]], key: str) -> tuple[np.ndarray, ...] | None:
    """Epochs, mean, min, max of ``key`` over runs (epochs any run logged it)."""
    per_epoch: dict[int, list[float]] = {}
    for rows in rows_per_run:
        for row in rows:
            v = row.get(key)
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                per_epoch.setdefault(int(row["epoch"]), []).append(float(v))
    if not per_epoch:
        return None
    ep = np.array(sorted(per_epoch))
    vals = [np.array(per_epoch[e]) for e in ep]
    return (
        ep,
        np.array([v.mean() for v in vals]),
        np.array([v.min() for v in vals]),
        np.array([v.max() for v in vals]),
    )


def _plot_band(ax: Any, s: tuple[np.ndarray, ...], color: Any, style: str, label: str) -> None:
    ep, mean, lo, hi = s
    ax.plot(ep, mean, style, color=color, label=label, marker="o" if len(ep) < 3 else None, ms=3)
    if np.any(hi > lo):
        ax.fill_between(ep, lo, hi, color=color, alpha=0.15, linewidth=0)


def _grid(n: int) -> tuple[int, int]:
    cols = min(4, n)
    return math.ceil(n / cols), cols


def _plot_curves(groups: list[RunGroup], metric: str, colors: dict[str, Any], out: Path) -> bool:
    rows, cols = _grid(len(groups))
    fig = _figure(3.4 * cols, 2.6 * rows + 0.4)
    axes = fig.subplots(rows, cols, sharey=metric == "top1", squeeze=False)
    drawn = False
    for ax, g in zip(axes.flat, groups):
        for split, style in _SPLITS:
            s = _series(g.metrics, f"{split}/{metric}")
            if s is not None:
                _plot_band(ax, s, colors[g.label], style, split)
                drawn = True
        n = len(g.runs)
        ax.set_title(f"{_name(g)} ({n} seed{'s' if n > 1 else ''})", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        _integer_epochs(ax)
    for i, ax in enumerate(axes.flat):
        if i >= len(groups):
            ax.set_visible(False)
        elif i + cols >= len(groups):  # nothing below it
            ax.set_xlabel("epoch")
    ylabel = "top-1 (%)" if metric == "top1" else "loss (train: objective; val/test: NLL)"
    for ax in axes[:, 0]:
        ax.set_ylabel(ylabel, fontsize=8)
    if metric == "loss":
        for ax in axes.flat:
            if (
                ax.get_visible()
                and ax.lines
                and all(np.all(np.asarray(line.get_ydata()) > 0) for line in ax.lines)
            ):
                ax.set_yscale("log")
    if drawn:
        fig.savefig(out)
    return drawn


def _plot_test_overlay(groups: list[RunGroup], colors: dict[str, Any], out: Path) -> bool:
    fig = _figure(6.5, 4.0)
    ax = fig.add_subplot()
    drawn = False
    for g in groups:
        s = _series(g.metrics, "test/top1")
        if s is not None:
            _plot_band(ax, s, colors[g.label], "-", _name(g))
            drawn = True
    ax.set_xlabel("epoch")
    _integer_epochs(ax)
    ax.set_ylabel("test top-1 (%)")
    ax.set_title("test top-1 per epoch (mean over seeds, band: min–max)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    if drawn:
        fig.savefig(out)
    return drawn


def _plot_lud(groups: list[RunGroup], colors: dict[str, Any], out: Path) -> bool:
    lud = [g for g in groups if g.loss == "lud"]
    if not lud:
        return False
    fig = _figure(13.0, 4.0)
    ax_keep, ax_temp, ax_rho = fig.subplots(1, 3)
    bands = len(lud) <= 2  # with many runs, shaded bands hide each other: thin lines instead
    for g in lud:
        c, name = colors[g.label], _name(g)
        for key, style in (("kept_samples", "-"), ("kept_classes", "--")):
            s = _series(g.metrics, f"train/stat/{key}")
            if s is not None:
                _plot_band(ax_keep, s, c, style, name if style == "-" else "_")
        mean = _series(g.metrics, "train/stat/temperature_mean")
        lo = _series(g.metrics, "train/stat/temperature_min")
        hi = _series(g.metrics, "train/stat/temperature_max")
        if mean is not None:
            ax_temp.plot(mean[0], mean[1], "-", color=c, label=name)
        if lo is not None and hi is not None and len(lo[0]) == len(hi[0]):
            if bands:
                ax_temp.fill_between(lo[0], lo[1], hi[1], color=c, alpha=0.15, linewidth=0)
            else:
                ax_temp.plot(lo[0], lo[1], ":", color=c, lw=0.8)
                ax_temp.plot(hi[0], hi[1], ":", color=c, lw=0.8)
        labelled = False
        for key, style in (("rho_cdl", "-"), ("rho_sdl", "--")):
            s = _series(g.metrics, f"train/stat/{key}")
            if s is not None:
                _plot_band(ax_rho, s, c, style, "_" if labelled else name)
                labelled = True
    ax_keep.set_title("kept fraction: samples (solid), classes (dashed)", fontsize=10)
    ax_keep.set_ylim(-0.02, 1.02)
    ax_temp.set_title(
        "temperature: mean, " + ("band" if bands else "dotted") + " = batch min / max", fontsize=10
    )
    ax_rho.set_title("Spearman ρ: CDL (solid), SDL (dashed)", fontsize=10)
    for ax in (ax_keep, ax_temp, ax_rho):
        ax.set_xlabel("epoch")
        _integer_epochs(ax)
        ax.grid(alpha=0.3)
    ax_rho.legend(fontsize=7, loc="best")
    fig.savefig(out)
    return True


def _grad_norm_terms(g: RunGroup) -> list[str]:
    """The loss terms whose gradient norm ``g``'s runs logged (first-seen order)."""
    keys = (k for rows in g.metrics for row in rows for k in row if k.startswith("grad_norm/"))
    return [k.removeprefix("grad_norm/") for k in dict.fromkeys(keys)]


def _plot_grad_norms(groups: list[RunGroup], out: Path) -> bool:
    """One panel per method with ``grad_norm/*`` columns: each term's norm per epoch, log y."""
    probed = [g for g in groups if _grad_norm_terms(g)]
    if not probed:
        return False
    from matplotlib import colormaps

    rows, cols = _grid(len(probed))
    fig = _figure(3.6 * cols, 2.8 * rows + 0.4)
    axes = fig.subplots(rows, cols, squeeze=False)
    tab10 = colormaps["tab10"]
    for ax, g in zip(axes.flat, probed):
        zero = []
        for i, term in enumerate(_grad_norm_terms(g)):
            s = _series(g.metrics, f"grad_norm/{term}")
            if s is None or not np.all(s[2] > 0):  # a log axis cannot show a zero norm
                zero.append(term)
                continue
            _plot_band(ax, s, tab10(i % 10), "-", term)
        n = len(g.runs)
        title = f"{_name(g)} ({n} seed{'s' if n > 1 else ''})"
        ax.set_title(title + (f"\nnorm 0: {', '.join(zero)}" if zero else ""), fontsize=9)
        if ax.lines:
            ax.set_yscale("log")
            ax.legend(fontsize=7)
        ax.grid(alpha=0.3, which="both")
        ax.set_xlabel("epoch")
        _integer_epochs(ax)
    for ax in axes[:, 0]:
        ax.set_ylabel("‖∂ term / ∂ student logits‖", fontsize=8)
    for ax in list(axes.flat)[len(probed):]:
        ax.set_visible(False)
    fig.savefig(out)
    return True


def _pool(evals: Sequence[Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bins, per-class correct and per-class total summed over seeds."""
    bins = np.sum([np.asarray(e.bins, dtype=float) for e in evals], axis=0)
    correct = np.sum([np.asarray(e.class_correct, dtype=float) for e in evals], axis=0)
    total = np.sum([np.asarray(e.class_total, dtype=float) for e in evals], axis=0)
    return bins, correct, total


def _ece(bins: np.ndarray) -> float:
    n = bins[:, 0].sum()
    return float(np.abs(bins[:, 1] - bins[:, 2]).sum() / n) if n else float("nan")


def _plot_reliability(
    models: list[tuple[str, np.ndarray]], colors: dict[str, Any], out: Path
) -> None:
    from .calibration import reliability_curve

    fig = _figure(11.0, 4.2)
    ax, ax_hist = fig.subplots(1, 2)
    ax.plot([0, 1], [0, 1], color="0.6", lw=1, ls="--", label="perfect calibration")
    for name, bins in models:
        c = reliability_curve(bins)
        style = "-" if name != "teacher" else "-."
        ax.plot(
            c["confidence"],
            c["accuracy"],
            style,
            marker="o",
            ms=3,
            color=colors[name],
            label=f"{name} (ECE {_ece(bins):.3f})",
        )
        width = 1.0 / bins.shape[0]
        ax_hist.plot(
            np.asarray(c["edges_lo"]) + width / 2,
            c["fraction"],
            style,
            marker=".",
            color=colors[name],
            label=name,
        )
    ax.set_xlabel("confidence (max softmax probability)")
    ax.set_ylabel("accuracy")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title("reliability on the test set (best checkpoints, seeds pooled)", fontsize=10)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    ax_hist.set_xlabel("confidence")
    ax_hist.set_ylabel("fraction of test samples")
    ax_hist.set_yscale("log")
    ax_hist.set_title("confidence histogram", fontsize=10)
    ax_hist.grid(alpha=0.3)
    fig.savefig(out)


def _plot_class_gain(
    gains: list[tuple[str, np.ndarray]], class_names: list[str], colors: dict[str, Any], out: Path
) -> None:
    n_cls = len(class_names)
    if n_cls <= 20:
        fig = _figure(min(14.0, max(7.0, 0.35 * n_cls * max(1, len(gains)) ** 0.5 + 3)), 4.2)
        ax = fig.add_subplot()
        width = 0.8 / len(gains)
        x = np.arange(n_cls)
        for i, (name, gain) in enumerate(gains):
            ax.bar(
                x - 0.4 + width * (i + 0.5),
                gain,
                width,
                color=colors[name],
                label=f"{name} (mean {np.nanmean(gain):+.2f})",
            )
        ax.axhline(0, color="black", lw=0.8)
        ax.set_xticks(
            x,
            class_names,
            rotation=45 if max(map(len, class_names)) > 3 else 0,
            ha="right" if max(map(len, class_names)) > 3 else "center",
            fontsize=8,
        )
        ax.set_ylabel("accuracy gain over the student alone (pp)")
        ax.legend(fontsize=7, ncol=2)
        ax.grid(alpha=0.3, axis="y")
    else:
        fig = _figure(min(16.0, 4 + 0.12 * n_cls), 1.2 + 0.45 * len(gains))
        ax = fig.add_subplot()
        mat = np.vstack([g for _, g in gains])
        lim = float(np.nanmax(np.abs(mat))) or 1.0
        im = ax.imshow(mat, aspect="auto", cmap="RdBu", vmin=-lim, vmax=lim, interpolation="none")
        ax.set_yticks(
            range(len(gains)), [f"{n} ({np.nanmean(g):+.2f})" for n, g in gains], fontsize=8
        )
        ax.set_xlabel("class index")
        fig.colorbar(im, ax=ax, label="gain (pp)")
    ax.set_title(
        "per-class test accuracy gain over the student alone (best checkpoints, seeds pooled)",
        fontsize=10,
    )
    fig.savefig(out)


def _same_file(a: Path, b: Path | None) -> bool:
    """Same checkpoint: same path, or a copy (same size and modification time)."""
    if b is None or not a.is_file() or not b.expanduser().is_file():
        return False
    sa, sb = a.stat(), b.expanduser().stat()
    return a.resolve() == b.expanduser().resolve() or (
        sa.st_size == sb.st_size and sa.st_mtime_ns == sb.st_mtime_ns
    )


def _name(g: RunGroup) -> str:
    return "student alone" if g.baseline and g.label == "student" else g.label


# ----------------------------------------------------------------------------- the page
def _summary_table(groups: list[RunGroup]) -> str:
    import json

    lines = [
        "| run | loss | epochs | best test top-1 | last test top-1 | val top-1 | ECE | NLL "
        + "| time (s) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for g in groups:
        for run in g.runs:
            ev = g.eval_of.get(run)
            s: dict[str, Any] = {}
            if (run / "summary.json").is_file():
                s = json.loads((run / "summary.json").read_text())
            best, last = s.get("best") or {}, s.get("last") or {}

            def f(v: Any, d: int = 2) -> str:
                return "–" if v is None else f"{v:.{d}f}"

            val = best.get("top1") if best.get("split") == "val" else None
            lines.append(
                f"| {_name(g)} | {g.loss} | {s.get('epochs_completed', '–')}/{s.get('epochs', '–')}"
                f" | {f(best.get('test_top1'))} | {f(last.get('test_top1'))} | {f(val)} | "
                f"{f(ev.ece if ev else None, 4)} | {f(ev.nll if ev else None, 4)} | "
                f"{f(s.get('wall_time_s'), 1)} |"
            )
    return "\n".join(lines)


_TEXT = {
    "top1": (
        "Top-1 per epoch (train: running mean over the epoch's batches; val/test: end of epoch). "
        "Lines: mean over seeds; band: min–max over seeds."
    ),
    "loss": (
        "Loss per epoch: the training objective (each method's own total loss, so the scales "
        "differ between methods) and the validation/test NLL."
    ),
    "lud": (
        "Per epoch, averaged over the epoch's batches: the fraction of samples and classes the "
        "confidence masks keep (a variant with the masks switched off still logs what they would "
        "keep), the dynamic temperature (mean; batch minimum and maximum) and the correlation ρ "
        "between teacher and student Gram rows of the category (CDL) and sample (SDL) terms."
    ),
    "grad_norms": (
        "Per loss term, the norm of the gradient it puts on the student logits "
        "(`runtime.grad_norms_every`: every N steps, before the backward pass; the epoch's mean "
        "over probed steps, both views together for two-view losses), mean over seeds with the "
        "min–max band, log scale. The terms are weighted as in the loss, so the curves compare "
        "what each term contributes to the update."
    ),
    "reliability": (
        "Reliability diagram on the test set: accuracy against mean confidence in each of 15 "
        "equal-width confidence bins (students: best checkpoints, seeds pooled), and how the "
        "test samples spread over the bins."
    ),
    "gain": (
        "Per-class test accuracy of each method minus that of the student alone, in percentage "
        "points (best checkpoints, seeds pooled); the legend gives the mean over classes."
    ),
}


def make_report(
    path: str | os.PathLike[str],
    output_dir: str | os.PathLike[str] | None = None,
    *,
    evaluate: bool = True,
    device: str | None = None,
    log: Callable[[str], None] | None = None,
) -> Path:
    """Write the plots and ``report.md`` for ``path``; return the path of ``report.md``.

    The page is built in the order of its sections, one step each: the runs and their
    evaluations (:func:`_load_runs`), the results table (:func:`_results_section`), training
    curves, LUD internals, gradient norms, the teacher's evaluation (:func:`_evaluate_teacher`),
    which methods the comparison plots show (:func:`_comparison_groups`), calibration, the
    per-class gain, and the notes that every step adds to when something is skipped.

    Args:
        path: a benchmark folder, a run folder, or a folder of run folders.
        output_dir: where to write (default ``path/report``).
        evaluate: evaluate best checkpoints (and the teacher) that have no cached evaluation;
            ``False`` uses cached evaluations only.
        device: device for those evaluations (default: each run's ``runtime.device``).
        log: progress messages (``None``: silent).
    """
    say = log or (lambda _m: None)
    root = Path(path)
    kind, groups, teacher_cfg = discover_runs(root)
    out = Path(output_dir) if output_dir is not None else root / "report"
    out.mkdir(parents=True, exist_ok=True)
    notes: list[str] = []
    _load_runs(groups, evaluate, device, notes)
    colors = _colors([g.label for g in groups] + ["student alone"])
    for g in groups:
        colors.setdefault(_name(g), colors[g.label])

    md = _results_section(kind, root, groups, evaluate)
    md += _curves_section(groups, colors, out, notes)
    md += _lud_section(groups, colors, out, notes)
    md += _grad_norms_section(groups, out)
    teacher_eval = _evaluate_teacher(kind, root, out, teacher_cfg, evaluate, device, say, notes)
    focus = _comparison_groups(groups, teacher_cfg, notes)
    md += _calibration_section(teacher_eval, focus, colors, out, notes)
    md += _class_gain_section(focus, colors, out, notes)
    if notes:
        md += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    page = out / "report.md"
    page.write_text("\n".join(md))
    return page


# ----------------------------------------------------------------------------- report steps
def _load_runs(groups: list[RunGroup], evaluate: bool, device: str | None,
               notes: list[str]) -> None:
    """Each group's ``metrics.jsonl`` rows and the evaluation of each run's best checkpoint
    (cached ones only unless ``evaluate``); a checkpoint that cannot be evaluated is a note."""
    from ..engine.runlog import read_metrics
    from .calibration import EVAL_FILE, evaluate_run

    for g in groups:
        g.metrics = [read_metrics(r / "metrics.jsonl") for r in g.runs]
        g.evals = []
        for r in g.runs:
            if not (r / "best.pt").is_file():
                continue
            if not evaluate and not (r / EVAL_FILE).is_file():
                continue
            try:
                g.eval_of[r] = evaluate_run(r, device=device)
                g.evals.append(g.eval_of[r])
            except (ValueError, FileNotFoundError) as exc:
                notes.append(f"{r}: best checkpoint not evaluated ({exc}).")


def _results_section(kind: str, root: Path, groups: list[RunGroup], evaluate: bool) -> list[str]:
    """The title, the source and the results: a benchmark's tables, or one row per run."""
    title = {"bench": "Benchmark", "run": "Run", "folder": "Runs"}[kind]
    what = {"bench": "a benchmark folder", "run": "a run folder", "folder": "a folder of runs"}[
        kind
    ]
    md = [f"# {title} report: {root.resolve().name}", "", f"Source: `{root}` ({what}).", ""]
    if kind == "bench":
        from .results import collect_results, markdown

        tables = markdown(collect_results(root, evaluate=evaluate), title=False, runs=False)
        md += ["## Results", "", tables.replace("\n## ", "\n### "), ""]
    else:
        md += ["## Results", "", _summary_table(groups), ""]
    return md


def _curves_section(groups: list[RunGroup], colors: dict[str, Any], out: Path,
                    notes: list[str]) -> list[str]:
    """Top-1 and loss per epoch (one panel per method), and all methods' test top-1 together."""
    md = ["## Training curves", ""]
    if _plot_curves(groups, "top1", colors, out / "curves_top1.png"):
        md += [_TEXT["top1"], "", "![top-1 per epoch](curves_top1.png)", ""]
    else:
        notes.append("No top-1 values in metrics.jsonl: top-1 curves skipped.")
    if _plot_curves(groups, "loss", colors, out / "curves_loss.png"):
        md += [_TEXT["loss"], "", "![loss per epoch](curves_loss.png)", ""]
    if len(groups) > 1 and _plot_test_overlay(groups, colors, out / "test_top1.png"):
        md += ["![test top-1 per epoch, all methods](test_top1.png)", ""]
    return md


def _lud_section(groups: list[RunGroup], colors: dict[str, Any], out: Path,
                 notes: list[str]) -> list[str]:
    """The LUD statistics per epoch (kept fractions, temperature, rank correlations)."""
    md = ["## LUD internals", ""]
    if _plot_lud(groups, colors, out / "lud_stats.png"):
        return md + [_TEXT["lud"], "", "![LUD statistics](lud_stats.png)", ""]
    notes.append("No LUD run: the LUD statistics plot is skipped.")
    return md + ["_No LUD run here: skipped._", ""]


def _grad_norms_section(groups: list[RunGroup], out: Path) -> list[str]:
    """Each loss term's gradient norm per epoch (runs trained with ``grad_norms_every``)."""
    md = ["## Gradient norm of each loss term", ""]
    if _plot_grad_norms(groups, out / "grad_norms.png"):
        return md + [_TEXT["grad_norms"], "", "![gradient norm per loss term](grad_norms.png)", ""]
    return md + ["_No run logged gradient norms (runtime.grad_norms_every = 0): skipped._", ""]


def _evaluate_teacher(
    kind: str,
    root: Path,
    out: Path,
    teacher_cfg: Config | None,
    evaluate: bool,
    device: str | None,
    say: Callable[[str], None],
    notes: list[str],
) -> ModelEval | None:
    """The teacher's test-set evaluation (cached in ``teacher_eval.json``), or
    ``None`` when there is no teacher or it cannot be evaluated (a note says why)."""
    from .calibration import evaluate_teacher

    if teacher_cfg is None:
        notes.append(
            "No teacher in the configuration: the teacher is left out of the reliability diagram."
        )
        return None
    cache = (root / "teacher_eval.json") if kind == "bench" else (out / "teacher_eval.json")
    if not (evaluate or cache.is_file()):
        return None
    try:
        say(f"evaluating teacher {teacher_cfg.teacher.checkpoint}")
        return evaluate_teacher(teacher_cfg, device=device, cache_path=cache)
    except (ValueError, FileNotFoundError) as exc:
        notes.append(f"Teacher not evaluated: {exc}.")
        return None


def _comparison_groups(groups: list[RunGroup], teacher_cfg: Config | None,
                       notes: list[str]) -> list[RunGroup]:
    """The groups the reliability and per-class plots compare.

    With both methods and ablation variants, the methods only; a run folder that trained the
    teacher itself is drawn once, as "teacher".
    """
    teacher_file = None if teacher_cfg is None else Path(str(teacher_cfg.teacher.checkpoint))
    groups_cmp = [
        g for g in groups if not any(_same_file(r / "best.pt", teacher_file) for r in g.runs)
    ]
    focus = [g for g in groups_cmp if g.group != "ablation"]
    if len(focus) < 2 or len(focus) == len(groups_cmp):
        return groups_cmp
    notes.append(
        "Ablation variants are left out of the reliability and per-class plots "
        "(their numbers are in the tables)."
    )
    return focus


def _calibration_section(teacher_eval: ModelEval | None, focus: list[RunGroup], colors: dict[str, Any],
                         out: Path, notes: list[str]) -> list[str]:
    """The reliability diagram and the top-1/ECE/NLL table of the teacher and each method."""
    models = [("teacher", teacher_eval)] if teacher_eval is not None else []
    models += [(_name(g), g.evals) for g in focus if g.evals]
    md = ["## Calibration", ""]
    if not models:
        notes.append("No best checkpoint was evaluated: the reliability diagram is skipped.")
        return md + ["_No evaluated checkpoint: skipped._", ""]
    bins = [(name, _pool(ev if isinstance(ev, list) else [ev])[0]) for name, ev in models]
    _plot_reliability(bins, colors, out / "reliability.png")
    md += [_TEXT["reliability"], "", "![reliability diagram](reliability.png)", ""]
    md += ["| model | test top-1 | ECE | NLL | runs |", "|---|---|---|---|---|"]
    for name, ev in models:
        evs = ev if isinstance(ev, list) else [ev]
        md.append(
            f"| {name} | {np.mean([e.top1 for e in evs]):.2f} | "
            f"{np.mean([e.ece for e in evs]):.4f} | {np.mean([e.nll for e in evs]):.4f} | "
            f"{len(evs)} |"
        )
    return md + ["", "(top-1, ECE and NLL: means over the runs' best checkpoints.)", ""]


def _class_gain_section(focus: list[RunGroup], colors: dict[str, Any], out: Path,
                        notes: list[str]) -> list[str]:
    """Per-class test accuracy of each distilled method minus the student alone's."""
    md = ["## Per-class accuracy gain over the student alone", ""]
    base = next((g for g in focus if g.baseline and g.evals), None)
    others = [g for g in focus if not g.baseline and g.evals and g.loss != "ce"]
    if base is None or not others:
        why = "no student-alone run" if base is None else "no distilled run"
        notes.append(f"Per-class gain skipped: {why}.")
        return md + [f"_Skipped: {why} with an evaluated best checkpoint._", ""]
    _, bc, bt = _pool(base.evals)
    with np.errstate(invalid="ignore", divide="ignore"):
        base_acc = 100.0 * bc / bt
        gains = [
            (_name(g), 100.0 * _pool(g.evals)[1] / _pool(g.evals)[2] - base_acc) for g in others
        ]
    names = base.evals[0].class_names or [str(i) for i in range(len(bc))]
    _plot_class_gain(gains, names, colors, out / "class_gain.png")
    return md + [_TEXT["gain"], "", "![per-class gain](class_gain.png)", ""]
