"""``lud tune``: every method gets the same tuning budget, judged on the validation split only.

A grid file lists, per method, the loss-parameter settings to try::

    kd:                                  # a list: these trials, in this order
      - {temperature: 4}
      - {temperature: 2}
    dkd: {beta: [2, 8], warmup: 1}       # a mapping: every combination (here 2 trials)

Every method must have the same number of trials (the budget), so no method is favoured by
being searched harder; ``lud tune`` refuses a grid that is not even. Each trial trains the
student from the same teacher with the same recipe, on the given seeds, as an ordinary run
folder ``TUNE/<method>/trial<k>/seed<s>``, with ``data.eval_test=false``: the test set is never
scored while tuning. The trial with the best validation top-1 (the best epoch's, averaged over
seeds; the earlier trial on a tie) wins.

Outputs, in the tuning folder:

* ``tuned.yaml`` — the winners, in the ``--method-params`` format of ``lud bench``;
* ``tuning.md`` / ``tuning.csv`` — every trial with its validation top-1 and wall time;
* ``tune.json`` — what was asked (recipe, grid, seeds), so a rerun resumes: finished trials are
  never retrained, and a different recipe or grid in the same folder is refused.
"""

from __future__ import annotations

import copy
import csv
import io
import itertools
import json
import math
import os
import statistics
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..config import Config, ConfigError, LossConfig, TeacherConfig, config_to_dict
from .bench import _base_config, check_same_recipe, parse_seeds, prepare_run
from .runs import _read_json
from .scheduler import FAILED_FILE

__all__ = ["TUNE_FILE", "TrialResult", "load_grid", "run_tune"]

TUNE_FILE = "tune.json"
_FORMAT = "lud-tune/1"


def _expand(method: str, spec: Any, where: str) -> list[dict[str, Any]]:
    if isinstance(spec, list):
        if not all(isinstance(t, Mapping) for t in spec):
            raise ValueError(f"{where}: '{method}' must list mappings of parameters")
        return [dict(t) for t in spec]
    if isinstance(spec, Mapping):
        keys = list(spec)
        values = [v if isinstance(v, list) else [v] for v in spec.values()]
        if any(not v for v in values):
            raise ValueError(f"{where}: '{method}' has a parameter with an empty list of values")
        return [dict(zip(keys, combo)) for combo in itertools.product(*values)]
    raise ValueError(
        f"{where}: '{method}' must be a list of trials or a mapping of parameter → values, "
        f"got {type(spec).__name__}"
    )


def load_grid(grid: str | os.PathLike[str] | Mapping[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """The trials of each method from a grid file or mapping (see the module docstring).

    Raises:
        ValueError: unreadable file, unknown method, malformed entry, duplicate trials, or
            methods with different numbers of trials (an uneven budget).
    """
    from ..config import load_yaml
    from ..losses import available_losses, build_loss
    from ..losses.registry import suggest

    where = "tuning grid"
    if not isinstance(grid, Mapping):
        path = Path(grid).expanduser()
        where = str(path)
        if not path.is_file():
            raise ValueError(f"tuning grid file not found: {path}")
        try:
            grid = load_yaml(path.read_text())
        except yaml.YAMLError as exc:
            raise ValueError(f"cannot parse tuning grid {path}: {exc}") from None
        if not isinstance(grid, Mapping) or not grid:
            raise ValueError(f"{path} must map each method to its trials")
    trials: dict[str, list[dict[str, Any]]] = {}
    losses = available_losses()
    for method, spec in grid.items():
        method = str(method)
        if method not in losses:
            raise ValueError(f"{where}: unknown method '{method}'.{suggest(method, losses)}")
        expanded = _expand(method, spec, where)
        if not expanded:
            raise ValueError(f"{where}: '{method}' has no trials")
        seen = [json.dumps(t, sort_keys=True) for t in expanded]
        if len(set(seen)) != len(seen):
            raise ValueError(f"{where}: '{method}' lists the same trial twice")
        for t in expanded:
            try:
                build_loss(method, **t)  # a typo in a parameter fails here, not hours later
            except (TypeError, ValueError) as exc:
                raise ValueError(f"{where}: '{method}' trial {t}: {exc}") from None
        trials[method] = expanded
    sizes = {m: len(t) for m, t in trials.items()}
    if len(set(sizes.values())) > 1:
        raise ValueError(
            f"{where}: every method needs the same tuning budget (number of trials), got "
            + ", ".join(f"{m} {n}" for m, n in sizes.items())
        )
    return trials


@dataclass
class TrialResult:
    """One trial: its parameters and its validation top-1 per seed (``None``: not done/diverged)."""

    method: str
    index: int
    params: dict[str, Any]
    val_top1: dict[int, float | None]
    wall_s: float
    chosen: bool = False
    diverged: int = 0  # seeds whose loss went NaN/Inf (the others missing are not trained yet)
    # every loss parameter's value and the version, as the trial's runs recorded them
    # (summary.json; None before a run completed, or from a version that did not record them)
    resolved_params: dict[str, Any] | None = None
    lud_version: str | None = None

    @property
    def score(self) -> float:
        """Mean validation top-1 over the seeds; ``-inf`` if any seed diverged or is missing."""
        vals = list(self.val_top1.values())
        if not vals or any(v is None for v in vals):
            return -math.inf
        return statistics.fmean(v for v in vals if v is not None)


def _trial_dir(tune_dir: Path, method: str, index: int) -> Path:
    return tune_dir / method / f"trial{index}"


def _trial_config(
    base: Config, method: str, params: dict[str, Any], seed: int, folder: Path
) -> Config:
    from ..losses import loss_class

    cfg = copy.deepcopy(base)
    cfg.experiment.output_dir = str(folder)
    cfg.experiment.name = f"seed{seed}"
    cfg.experiment.seed = seed
    cfg.data.eval_test = False  # tuning never looks at the test set
    cfg.loss = LossConfig(name=method, params=copy.deepcopy(params))
    if not loss_class(method).requires_teacher:
        cfg.teacher = TeacherConfig()
        cfg.runtime.teacher_cache = False
    return cfg


def _check_folder(tune_dir: Path, base: Config, trials: dict[str, list[dict[str, Any]]]) -> None:
    path = tune_dir / TUNE_FILE
    if not path.is_file():
        return
    old = _read_json(path)
    if old.get("format") != _FORMAT:
        raise ValueError(f"{path} is not a lud tuning manifest (format {old.get('format')!r})")
    check_same_recipe(old["base_config"], base, f"tuning folder {tune_dir}")
    for method, listed in trials.items():
        before = old["trials"].get(method)
        if before is not None and before[: len(listed)] != listed[: len(before)]:
            raise ValueError(
                f"tuning folder {tune_dir} already tried other '{method}' settings "
                f"({before}); use another --output-dir for another grid"
            )


def _write_tables(tune_dir: Path, results: list[TrialResult], seeds: list[int]) -> None:
    from ..engine.checkpoint import atomic_write_text

    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(
        ["method", "trial", "params", "val_top1_mean", "val_top1_std", "seeds", "diverged", "chosen",
         "lud_version", "resolved_params"]
    )
    md = [
        "# Tuning on the validation split",
        "",
        f"Seeds {', '.join(map(str, seeds))}; validation top-1 of the best epoch (mean ± std "
        "over seeds); the test set was not scored. ✓ = chosen (`tuned.yaml`).",
        "",
        "| method | trial | parameters | val top-1 | time / run (s) | chosen |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        vals = [v for v in r.val_top1.values() if v is not None]
        mean = statistics.fmean(vals) if vals else None
        std = statistics.stdev(vals) if len(vals) > 1 else 0.0 if vals else None
        waiting = len(r.val_top1) - len(vals) - r.diverged
        cell = "–" if mean is None else f"{mean:.2f}" + (f" ± {std:.2f}" if len(vals) > 1 else "")
        if r.diverged:
            cell += f" (diverged: {r.diverged} seed{'s' if r.diverged > 1 else ''})"
        if waiting:
            cell += f" (not trained yet: {waiting} seed{'s' if waiting > 1 else ''})"
        params = json.dumps(r.params, sort_keys=True) if r.params else "(defaults)"
        md.append(
            f"| {r.method} | {r.index} | `{params}` | {cell} | {r.wall_s:.0f} | "
            f"{'✓' if r.chosen else ''} |"
        )
        resolved = "" if r.resolved_params is None else json.dumps(r.resolved_params)
        w.writerow([r.method, r.index, params, mean, std, len(vals), r.diverged, int(r.chosen),
                    r.lud_version or "", resolved])
    chosen = [r for r in results if r.chosen and r.resolved_params is not None]
    if chosen:
        md += ["", "Every loss parameter of the chosen trials, as their runs recorded it "
               "(`resolved_params` in tuning.csv for every trial):", ""]
        md += [f"- {r.method} (lud {r.lud_version}): `{json.dumps(r.resolved_params)}`" for r in chosen]
    atomic_write_text(buf.getvalue(), tune_dir / "tuning.csv")
    atomic_write_text("\n".join(md) + "\n", tune_dir / "tuning.md")


def collect_trials(
    tune_dir: Path, trials: dict[str, list[dict[str, Any]]], seeds: list[int]
) -> list[TrialResult]:
    """Read every trial's summaries and mark each method's winner."""
    out: list[TrialResult] = []
    for method, listed in trials.items():
        rows = []
        for k, params in enumerate(listed):
            vals: dict[int, float | None] = {}
            wall, diverged = 0.0, 0
            resolved, version = None, None
            for seed in seeds:
                run = _trial_dir(tune_dir, method, k) / f"seed{seed}"
                summary = run / "summary.json"
                vals[seed] = None
                if (run / FAILED_FILE).is_file():
                    diverged += 1
                elif summary.is_file():
                    s = _read_json(summary)
                    if s.get("completed"):
                        vals[seed] = s["best"]["top1"]
                        wall += float(s.get("wall_time_s", 0.0))
                        resolved = s.get("resolved_loss_params", resolved)
                        version = s.get("lud_version", version)
            rows.append(
                TrialResult(
                    method, k, dict(params), vals, wall / max(1, len(seeds)), diverged=diverged,
                    resolved_params=resolved, lud_version=version,
                )
            )
        best = max(rows, key=lambda r: (r.score, -r.index))
        if best.score > -math.inf:
            best.chosen = True
        out += rows
    return out


def _log(message: str) -> None:
    print(f"[tune] {message}", file=sys.stderr, flush=True)


def run_tune(
    config: str | os.PathLike[str],
    grid: str | os.PathLike[str] | Mapping[str, Any],
    seeds: int | str | Sequence[int] = "0,",
    overrides: Sequence[str] = (),
    output_dir: str | os.PathLike[str] | None = None,
    *,
    jobs: int = 1,
    log: Callable[[str], None] | None = _log,
) -> list[TrialResult]:
    """Train every trial of ``grid`` not done yet; write ``tuned.yaml`` and the tuning tables.

    Args:
        config: distillation config naming the teacher checkpoint and the recipe; it needs a
            validation split (``data.val_split``).
        grid: a grid file or mapping (see the module docstring).
        seeds: seeds each trial is trained with (default: seed 0 only).
        overrides: ``section.key=value`` applied to the config (not ``loss.*``).
        output_dir: the tuning folder (default ``<experiment.output_dir>/tune-<name>``).
        jobs: trials trained side by side (:mod:`lud.experiments.scheduler`).
        log: progress messages (``None``: silent).

    Returns:
        Every trial's result; the winners have ``chosen=True``.
    """
    from ..engine.checkpoint import atomic_write_text, remove_stale_temp_files
    from .scheduler import RunOutcome, RunTask, execute_runs

    say = log or (lambda _m: None)
    base = _base_config(config, overrides)
    if base.data.val_split <= 0.0:
        raise ConfigError(
            "tuning needs a validation split carved from the training data: set data.val_split "
            "(e.g. data.val_split=0.1); the test set is never used to tune"
        )
    trials = load_grid(grid)
    seed_list = parse_seeds(seeds, base.experiment.seed)
    tune_dir = Path(
        output_dir
        if output_dir is not None
        else Path(base.experiment.output_dir) / f"tune-{base.experiment.name}"
    ).expanduser().resolve()
    _check_folder(tune_dir, base, trials)

    tasks: list[RunTask] = []
    total = 0
    for method, listed in trials.items():
        for k, params in enumerate(listed):
            for seed in seed_list:
                total += 1
                cfg = _trial_config(base, method, params, seed, _trial_dir(tune_dir, method, k))
                remove_stale_temp_files(Path(cfg.experiment.output_dir) / cfg.experiment.name)
                _, status, done = prepare_run(cfg, f"{method} trial {k} (seed {seed})")
                if status in ("new", "resume"):
                    tasks.append(
                        RunTask(
                            name=f"{method} trial {k} seed {seed}",
                            config=cfg,
                            resume=status == "resume",
                            epochs_left=cfg.solver.epochs - done,
                        )
                    )

    tune_dir.mkdir(parents=True, exist_ok=True)
    manifest = {
        "format": _FORMAT,
        "config": str(config),
        "overrides": list(overrides),
        "base_config": config_to_dict(base),
        "trials": trials,
        "seeds": seed_list,
    }
    atomic_write_text(json.dumps(manifest, indent=1) + "\n", tune_dir / TUNE_FILE)
    budget = len(next(iter(trials.values())))
    say(
        f"{len(trials)} methods × {budget} trials × {len(seed_list)} seed(s) in {tune_dir}: "
        f"{total - len(tasks)} done, {len(tasks)} to train"
    )

    def finish() -> list[TrialResult]:
        results = collect_trials(tune_dir, trials, seed_list)
        _write_tables(tune_dir, results, seed_list)
        chosen = {r.method: r.params for r in results if r.chosen}
        text = (
            "# lud tune: the trial with the best validation top-1 per method "
            "(lud bench --method-params this file)\n"
            + (yaml.safe_dump(chosen, sort_keys=False) if chosen else "{}\n")
        )
        atomic_write_text(text, tune_dir / "tuned.yaml")
        return results

    def done(_outcome: RunOutcome) -> None:
        finish()

    from . import bench

    execute_runs(
        tasks,
        jobs=jobs,
        train_fn=lambda cfg, resume=False: bench.train(cfg, resume=resume),
        on_done=done,
        log=say,
        done_before=total - len(tasks),
        total=total,
    )
    results = finish()
    for r in results:
        if r.chosen:
            say(f"{r.method}: trial {r.index} {r.params or '(defaults)'} val top-1 {r.score:.2f}%")
    say(f"winners in {tune_dir / 'tuned.yaml'}; all trials in {tune_dir / 'tuning.md'}")
    return results
