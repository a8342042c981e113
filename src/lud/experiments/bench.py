"""``lud bench``: methods side by side — same teacher, same recipe, several seeds, one table.

A benchmark starts from one distillation config (it names the teacher checkpoint and the recipe)
and trains, for every seed, the student alone (loss ``ce``, no teacher) and the student with each
method. Each (method, seed) pair gets its own run folder::

    BENCH/bench.json               what was asked: base config, methods, their loss parameters
    BENCH/<label>/seed<k>/         an ordinary run folder (config.yaml, metrics.jsonl, best.pt, …)
    BENCH/<label>/seed<k>/eval_best.json   best.pt on the test set: NLL, ECE, bins, per class
    BENCH/teacher_eval.json        the teacher on the test set
    BENCH/results.md, results.csv, runs.csv

Decisions:

* **Loss parameters** are each method's defaults unless given per method
  (``--method-params lud.cdl_weight=2,dkd.beta=4`` or a YAML file ``{lud: {cdl_weight: 2}}``).
  The config's own ``loss`` section is replaced, so every method starts from the same place;
  ``loss.*`` overrides are refused for that reason.
* **Resuming**: a run whose ``summary.json`` says ``completed`` is done and never retrained; a run
  with ``last.pt`` and no complete summary continues with ``resume=True``; a folder with
  unreadable files stops the benchmark with a message naming the file (a checkpoint is
  verified against its SHA-256), and temporary files of writes cut short by a kill are
  removed. A run that diverges (NaN loss) is marked ``bench_failed.json`` and skipped, so one
  bad method does not stop the benchmark; ``retry_failed=True`` tries it again.
* **One recipe per folder**: ``bench.json`` keeps the base config; re-running in the same folder
  with a different recipe is refused (a finished run's config is compared too). Methods and
  seeds may be added later: the tables cover everything the folder holds (so an ablation run
  in the folder of a methods benchmark reuses the student and full-LUD runs).
* **Seeds**: ``seeds=3`` means ``experiment.seed, +1, +2``; an explicit list is used as given.
  The validation carve-out is drawn per seed; the test set is the same for every run.
"""

from __future__ import annotations

import copy
import json
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..config import (
    Config,
    ConfigError,
    LossConfig,
    TeacherConfig,
    config_to_dict,
    load_config,
    load_yaml,
    validate_config,
)
from .runs import (
    _FORMAT,
    BENCH_FILE,
    FAILED_FILE,
    STUDENT,
    _read_manifest,
    run_status,
)

__all__ = [
    "ABLATIONS",
    "BENCH_FILE",
    "DEFAULT_METHODS",
    "FAILED_FILE",
    "STUDENT",
    "BenchPlan",
    "PlannedRun",
    "Variant",
    "config_diffs",
    "parse_method_params",
    "parse_seeds",
    "plan_bench",
    "run_bench",
    "run_status",
]


def default_methods() -> tuple[str, ...]:
    """The losses registered with ``bench=True`` (:func:`lud.losses.loss_entries`): the
    baselines by name, then LUD's family, ``lud`` last. All run one-view (the bench's single-view
    default): ``lud-released`` is the released objective's weak-view part (``two_views`` off)."""
    from ..losses import loss_entries

    entries = loss_entries(bench=True)
    return tuple(e.name for e in sorted(entries, key=lambda e: (e.family == "lud", e.name == "lud", e.name)))


#: Methods benchmarked when none are named (:func:`default_methods`, from the registry).
DEFAULT_METHODS = default_methods()

#: ``--ablate NAME``: (label, part switched off, loss parameters that switch it off).
ABLATIONS: dict[str, tuple[tuple[str, str, dict[str, Any]], ...]] = {
    "lud": (
        ("lud-no_mask", "confidence masks", {"sample_mask": False, "class_mask": False}),
        ("lud-no_weighting", "uncertainty weighting", {"uncertainty_weighting": False}),
        ("lud-no_cdl", "category Spearman (CDL)", {"cdl_weight": 0.0}),
        ("lud-no_sdl", "sample Spearman (SDL)", {"sdl_weight": 0.0}),
        ("lud-no_dyntemp", "dynamic temperature", {"dynamic_temperature": "off"}),
        ("lud-no_instance", "instance KL term", {"instance_weight": 0.0}),
        ("lud-no_relations", "first-order rank terms (inter, intra)",
         {"inter_weight": 0.0, "intra_weight": 0.0}),
    ),
}

# Config entries that do not change what a run computes: ignored when an existing run folder is
# matched against the planned config (a different device or log interval must not force a rerun).
_EXECUTION_KEYS = frozenset(
    {
        "experiment.output_dir",
        "experiment.name",
        "experiment.deterministic",
        "data.eval_batch_size",
        "data.num_workers",
        "teacher.checkpoint",  # an absolute path: moving the project must not invalidate runs
        "runtime.device",
        "runtime.teacher_cache_dir",  # where cached teacher logits are kept, not what they are
        "runtime.progress",
        "runtime.log_every",
        "runtime.tensorboard",
        "runtime.compile",
        "runtime.channels_last",
        "runtime.teacher_cache",
        "runtime.grad_norms_every",  # the probe only reads gradients (tests/engine/test_gradnorms.py)
        "runtime.allow_changed_params",  # what resuming may accept, not what a run computes
    }
)


@dataclass(frozen=True)
class Variant:
    """One row of the table: a loss with its parameters.

    Attributes:
        label: row name and folder name (``student``, ``kd``, ``lud-no_cdl`` …).
        loss: registered loss name. params: its parameters (defaults when empty).
        group: ``"baseline"`` (the student alone), ``"method"`` or ``"ablation"``.
        off: for ablation rows, the part of the method switched off.
    """

    label: str
    loss: str
    params: dict[str, Any] = field(default_factory=dict, hash=False)
    group: str = "method"
    off: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "loss": self.loss,
            "params": dict(self.params),
            "group": self.group,
            "off": self.off,
        }


@dataclass
class PlannedRun:
    """One (variant, seed) run: its folder, config and current state."""

    variant: Variant
    seed: int
    run_dir: Path
    config: Config
    status: str = "new"  # "done" | "resume" | "new" | "failed"
    epochs_done: int = 0


@dataclass
class BenchPlan:
    """What :func:`run_bench` will do; :func:`plan_bench` builds it without training."""

    bench_dir: Path
    base: Config
    config_path: str
    overrides: list[str]
    variants: list[Variant]
    seeds: list[int]
    runs: list[PlannedRun]

    @property
    def needs_teacher(self) -> bool:
        from ..losses import loss_class

        return any(loss_class(v.loss).requires_teacher for v in self.variants)


# ----------------------------------------------------------------------------- parsing
def parse_seeds(spec: int | str | Sequence[int], base: int = 0) -> list[int]:
    """``3`` or ``"3"`` → ``[base, base+1, base+2]``; ``"0,4,7"`` or ``[0, 4, 7]`` → those seeds."""
    bad_spec = f"seeds must be a count or a comma list of integers, got {spec!r}"
    if isinstance(spec, str):
        parts = [p.strip() for p in spec.split(",") if p.strip()]
        try:
            values = [int(p) for p in parts]
        except ValueError:
            raise ValueError(bad_spec) from None
        if "," not in spec and len(values) == 1:
            spec = values[0]  # a count
        else:
            spec = values
    if isinstance(spec, bool):
        raise ValueError(bad_spec)
    if isinstance(spec, int):
        if spec < 1:
            raise ValueError(f"the number of seeds must be >= 1, got {spec}")
        seeds = list(range(base, base + spec))
    else:
        seeds = list(spec)
        if not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
            raise ValueError(bad_spec)
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct, got {seeds}")
    bad = [s for s in seeds if not 0 <= s < 2**32]
    if bad:
        raise ValueError(f"seeds must be in [0, 2**32), got {bad}")
    return seeds


def _split_top_level(text: str) -> list[str]:
    """Split on commas that are not inside brackets/braces (``a=[1,2],b=3`` → two items)."""
    items, depth, cur = [], 0, []
    for ch in text:
        if ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
        if ch == "," and depth == 0:
            items.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    items.append("".join(cur))
    return [s.strip() for s in items if s.strip()]


def _value(text: str, item: str) -> Any:
    try:
        return load_yaml(text)
    except yaml.YAMLError as exc:
        raise ValueError(f"cannot parse the value of '{item}': {exc}") from None


def parse_method_params(specs: Sequence[str] | str | None) -> dict[str, dict[str, Any]]:
    """Per-method loss parameters from ``method.param=value`` lists or YAML files.

    Each spec is either a YAML file (a mapping ``method: {param: value}``) or a comma-separated
    list ``lud.cdl_weight=2,dkd.beta=4`` (values parsed as YAML, except that ``on``/``off``/
    ``yes``/``no`` stay strings: ``lud.dynamic_temperature=off``). Later specs win. A method is a
    loss name (``kd+ls``, ``lud``; ``student`` or ``ce`` for the student alone) or a row label
    (``lud-no_cdl``).
    """
    if specs is None:
        return {}
    if isinstance(specs, str):
        specs = [specs]
    out: dict[str, dict[str, Any]] = {}

    def add(method: str, param: str, value: Any, where: str) -> None:
        if not method or not param:
            raise ValueError(f"{where}: expected method.param=value, e.g. lud.cdl_weight=2")
        out.setdefault(method, {})[param] = value

    for spec in specs:
        path = Path(spec).expanduser()
        if spec.endswith((".yaml", ".yml", ".json")) or path.is_file():
            if not path.is_file():
                raise ValueError(f"method-params file not found: {path}")
            try:
                raw = load_yaml(path.read_text())
            except yaml.YAMLError as exc:
                raise ValueError(f"cannot parse method-params file {path}: {exc}") from None
            if not isinstance(raw, dict) or not all(isinstance(v, dict) for v in raw.values()):
                raise ValueError(
                    f"method-params file {path} must map each method to a mapping of "
                    "parameters, e.g. 'lud: {cdl_weight: 2}'"
                )
            for method, params in raw.items():
                for param, value in params.items():
                    add(str(method), str(param), value, str(path))
            continue
        for item in _split_top_level(spec):
            key, eq, text = item.partition("=")
            method, dot, param = key.strip().partition(".")
            if not eq or not dot:
                raise ValueError(
                    f"method parameter '{item}' must look like method.param=value "
                    "(e.g. lud.cdl_weight=2)"
                )
            add(method.strip(), param.strip(), _value(text, item), repr(item))
    return out


# ----------------------------------------------------------------------------- run folders
def _flatten(cfg: Mapping[str, Any]) -> dict[str, Any]:
    return {
        f"{sec}.{key}": value
        for sec, body in cfg.items()
        if isinstance(body, Mapping)
        for key, value in body.items()
    }


def config_diffs(
    saved: Mapping[str, Any], planned: Mapping[str, Any], ignore: Sequence[str] = ()
) -> list[str]:
    """``key: saved vs planned`` for every entry that changes what a run computes.

    Execution-only entries (device, logging, output folder, …) and ``ignore`` are skipped.
    """
    a, b = _flatten(saved), _flatten(planned)
    skip = _EXECUTION_KEYS | set(ignore)
    return [
        f"{k}: {a.get(k)!r} vs {b.get(k)!r}"
        for k in sorted(set(a) | set(b))
        if k not in skip
        and not k.startswith(tuple(f"{i}." for i in ignore))
        and a.get(k) != b.get(k)
    ]


def _saved_config(run: Path, status: str) -> dict[str, Any]:
    path = run / "config.yaml"
    if not path.is_file():
        raise ValueError(
            f"{run} has a {'summary' if status == 'done' else 'checkpoint'} but no config.yaml; "
            f"delete the run folder {run} to train this run again"
        )
    try:
        raw = load_yaml(path.read_text())
    except yaml.YAMLError as exc:
        raise ValueError(f"cannot parse {path}: {exc}") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{path} is not a run config")
    return raw


# ----------------------------------------------------------------------------- planning
def _variants(
    methods: Sequence[str], ablate: str | None, params: dict[str, dict[str, Any]]
) -> list[Variant]:
    from ..losses import available_losses, loss_class
    from ..losses.registry import suggest

    losses = available_losses()
    names: list[str] = []
    for m in methods:
        m = m.strip()
        if not m or m in (STUDENT, "ce"):
            continue  # the student alone is always part of the benchmark
        if m not in losses:
            raise ValueError(f"unknown method '{m}'.{suggest(m, [x for x in losses if x != 'ce'])}")
        if m not in names:
            names.append(m)
    if ablate is not None and ablate not in ABLATIONS:
        raise ValueError(
            f"--ablate supports {', '.join(ABLATIONS)}, got '{ablate}' (each ablation is a list "
            "of parameters that switch one part of the method off)"
        )

    def merged(label: str, loss: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        key = STUDENT if loss == "ce" else loss
        out = {**params.get(key, {}), **(params.get("ce", {}) if loss == "ce" else {})}
        if label != key:
            out.update(params.get(label, {}))
        out.update(extra or {})
        return out

    out = [Variant(STUDENT, "ce", merged(STUDENT, "ce"), group="baseline")]
    out += [Variant(m, m, merged(m, m), group="method") for m in names]
    if ablate is not None:
        if ablate not in names:
            out.append(Variant(ablate, ablate, merged(ablate, ablate), group="ablation"))
        full = merged(ablate, ablate)
        for label, off, switch in ABLATIONS[ablate]:
            variant = merged(label, ablate, switch)
            if variant == full:  # that part is already off in the tuned setting: the same run
                continue
            out.append(Variant(label, ablate, variant, group="ablation", off=off))
    known = {v.label for v in out} | {v.loss for v in out} | {"ce"}
    unknown = sorted(set(params) - known)
    if unknown:
        raise ValueError(
            f"--method-params names {', '.join(repr(u) for u in unknown)}, which this benchmark "
            f"does not run (it runs {', '.join(v.label for v in out)})"
        )
    for v in out:
        if not loss_class(v.loss).requires_teacher and v.label != STUDENT:
            raise ValueError(f"method '{v.label}' uses no teacher; it is not a distillation method")
    return out


def check_same_recipe(saved_base: Mapping[str, Any], base: Config, folder: str) -> None:
    """Refuse to add runs to a folder made with another recipe (seed and loss may differ).

    Raises:
        ValueError: naming every entry that differs.
    """
    diffs = config_diffs(saved_base, config_to_dict(base), ignore=("experiment.seed", "loss"))
    if diffs:
        raise ValueError(
            f"{folder} was made with another recipe:\n  "
            + "\n  ".join(diffs)
            + "\nuse another --output-dir, or the same config and overrides as before"
        )


def prepare_run(cfg: Config, what: str) -> tuple[Path, str, int]:
    """Validate a planned run and read the state of its folder.

    Returns:
        ``(run folder, status, epochs done)`` as :func:`run_status`.

    Raises:
        ConfigError: the config is invalid (the message starts with ``what``).
        ValueError: the folder holds a run trained with another config, or unreadable files.
    """
    try:
        validate_config(cfg)
    except ConfigError as exc:
        raise ConfigError(f"{what}: {exc}") from None
    run_dir = Path(cfg.experiment.output_dir) / cfg.experiment.name
    status, done = run_status(run_dir)
    if status in ("done", "resume"):
        diffs = config_diffs(_saved_config(run_dir, status), config_to_dict(cfg))
        if diffs:
            raise ValueError(
                f"run folder {run_dir} was trained with another config:\n  "
                + "\n  ".join(diffs)
                + "\ndelete it or use another --output-dir"
            )
    if status == "done":
        _check_recorded_params(run_dir, cfg)
    return run_dir, status, done


def _check_recorded_params(run_dir: Path, cfg: Config) -> None:
    """A finished run counts only if its loss was built as today's code builds it from ``cfg``
    (``summary.json``'s resolved parameters; runs of versions that did not record them pass)."""
    from ..engine.runfolder import diff_resolved_params
    from ..losses import build_loss
    from .runs import _read_json

    summary = _read_json(run_dir / "summary.json")
    saved = summary.get("resolved_loss_params")
    if saved is None:
        return
    now = build_loss(cfg.loss.name, **cfg.loss.params).resolved_params()
    diffs = diff_resolved_params(saved, now, str(summary.get("lud_version", "?")))
    if diffs:
        raise ValueError(
            f"run folder {run_dir} was trained with other loss parameters than the code builds "
            "today (a default changed, see CHANGELOG.md):\n  " + "\n  ".join(diffs)
            + "\nset them with --method-params to keep the old values, or delete it or use "
            "another --output-dir"
        )


def _run_config(base: Config, v: Variant, seed: int, bench_dir: Path) -> Config:
    from ..losses import loss_class

    cfg = copy.deepcopy(base)
    cfg.experiment.output_dir = str(bench_dir / v.label)
    cfg.experiment.name = f"seed{seed}"
    cfg.experiment.seed = seed
    cfg.loss = LossConfig(name=v.loss, params=copy.deepcopy(dict(v.params)))
    if not loss_class(v.loss).requires_teacher:
        cfg.teacher = TeacherConfig()  # the student alone: no teacher to load or warn about
        cfg.runtime.teacher_cache = False
    return cfg


def _base_config(config: str | os.PathLike[str], overrides: Sequence[str]) -> Config:
    bad = [o for o in overrides if o.strip().startswith("loss.")]
    if bad:
        raise ConfigError(
            f"override {bad[0]!r}: a benchmark sets the loss of every run itself; give per-method "
            "loss parameters with --method-params (e.g. lud.cdl_weight=2)"
        )
    base = load_config(config, list(overrides), validate=False)
    if not base.data.eval_test:
        raise ConfigError(
            "data.eval_test=false: a benchmark reports test accuracy; tune on the validation "
            "split with `lud tune` instead"
        )
    if base.teacher.checkpoint:
        base.teacher.checkpoint = str(Path(base.teacher.checkpoint).expanduser().resolve())
    return base


def plan_bench(
    config: str | os.PathLike[str],
    methods: Sequence[str] | None = None,
    seeds: int | str | Sequence[int] = 3,
    overrides: Sequence[str] = (),
    output_dir: str | os.PathLike[str] | None = None,
    *,
    method_params: Mapping[str, Mapping[str, Any]] | Sequence[str] | str | None = None,
    ablate: str | None = None,
) -> BenchPlan:
    """Resolve the runs of a benchmark and the state of their folders, without training.

    Arguments as for :func:`run_bench`. Every run config is validated here (loss parameters,
    teacher checkpoint, data set name), so a typo fails before hours of training.
    """
    base = _base_config(config, overrides)
    if methods is None:
        methods = () if ablate is not None else DEFAULT_METHODS
    elif isinstance(methods, str):
        methods = [m for m in methods.split(",")]
    if method_params is None or isinstance(method_params, (str, list, tuple)):
        params = parse_method_params(method_params)  # type: ignore[arg-type]
    else:
        params = {str(k): dict(v) for k, v in method_params.items()}
    variants = _variants(methods, ablate, params)
    seed_list = parse_seeds(seeds, base.experiment.seed)
    bench_dir = (
        Path(
            output_dir
            if output_dir is not None
            else Path(base.experiment.output_dir) / f"bench-{base.experiment.name}"
        )
        .expanduser()
        .resolve()
    )

    manifest = _read_manifest(bench_dir)
    if manifest is not None:
        check_same_recipe(manifest["base_config"], base, f"benchmark folder {bench_dir}")
        old_teacher = (manifest.get("teacher") or {}).get("checkpoint")
        if (
            old_teacher
            and old_teacher != base.teacher.checkpoint
            and Path(old_teacher).is_file()  # a moved project may leave a stale path: accept it
        ):
            raise ValueError(
                f"benchmark folder {bench_dir} was made with teacher {old_teacher}, now asked for "
                f"{base.teacher.checkpoint}; use another --output-dir"
            )
        earlier = {v["label"]: v for v in manifest["variants"]}
        for v in variants:
            old = earlier.get(v.label)
            if old is not None and (old["loss"], old["params"]) != (v.loss, v.params):
                raise ValueError(
                    f"benchmark folder {bench_dir} already has '{v.label}' with loss "
                    f"{old['loss']} {old['params'] or '(defaults)'}; now asked for "
                    f"{v.params or '(defaults)'}. Use another --output-dir for other parameters"
                )

    runs: list[PlannedRun] = []
    for v in variants:
        for seed in seed_list:
            cfg = _run_config(base, v, seed, bench_dir)
            run_dir, status, done = prepare_run(cfg, f"run '{v.label}' (seed {seed})")
            runs.append(PlannedRun(v, seed, run_dir, cfg, status, done))
    return BenchPlan(
        bench_dir=bench_dir,
        base=base,
        config_path=str(config),
        overrides=list(overrides),
        variants=variants,
        seeds=seed_list,
        runs=runs,
    )


def _write_manifest(plan: BenchPlan) -> None:
    """Record the plan, merged with what the folder already holds (methods added later)."""
    from ..engine.checkpoint import atomic_write_text

    old = _read_manifest(plan.bench_dir) or {"variants": [], "runs": []}
    variants = {v["label"]: v for v in old["variants"]}
    for v in plan.variants:
        prev = variants.get(v.label)
        entry = v.to_dict()
        if prev is not None and "method" in (prev["group"], v.group):
            entry["group"] = "method"  # full LUD asked as a method once stays a method row
        variants[v.label] = entry if prev is None else {**prev, "group": entry["group"]}
    runs = {(r["label"], r["seed"]): r for r in old["runs"]}
    for r in plan.runs:
        rel = r.run_dir.relative_to(plan.bench_dir).as_posix()
        runs[(r.variant.label, r.seed)] = {"label": r.variant.label, "seed": r.seed, "run_dir": rel}
    order = list(variants)
    manifest = {
        "format": _FORMAT,
        "config": plan.config_path,
        "overrides": plan.overrides,
        "base_config": config_to_dict(plan.base),
        "teacher": {"name": plan.base.teacher.name, "checkpoint": plan.base.teacher.checkpoint},
        "variants": list(variants.values()),
        "runs": sorted(runs.values(), key=lambda r: (order.index(r["label"]), r["seed"])),
    }
    plan.bench_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(json.dumps(manifest, indent=1) + "\n", plan.bench_dir / BENCH_FILE)


# ----------------------------------------------------------------------------- running
def _default_log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


# Looked up at call time so that tests can count or interrupt training.
def train(cfg: Config, *, resume: bool = False) -> dict[str, Any]:
    from ..engine import train as _train

    return _train(cfg, resume=resume)


def run_bench(
    config: str | os.PathLike[str],
    methods: Sequence[str] | None = None,
    seeds: int | str | Sequence[int] = 3,
    overrides: Sequence[str] = (),
    output_dir: str | os.PathLike[str] | None = None,
    *,
    method_params: Mapping[str, Mapping[str, Any]] | Sequence[str] | str | None = None,
    ablate: str | None = None,
    retry_failed: bool = False,
    jobs: int = 1,
    log: Callable[[str], None] | None = _default_log,
) -> Any:
    """Train every (method, seed) run that is not done yet and write the tables.

    Args:
        config: a distillation config (YAML) naming the teacher checkpoint and the recipe.
        methods: loss names (default :data:`DEFAULT_METHODS`, or none with ``ablate``); the
            student alone is always added.
        seeds: a count (from ``experiment.seed``) or the seeds themselves.
        overrides: ``section.key=value`` applied to the config (not ``loss.*``).
        output_dir: the benchmark folder (default ``<experiment.output_dir>/bench-<name>``).
        method_params: per-method loss parameters, ``{"lud": {"cdl_weight": 2}}``, or specs for
            :func:`parse_method_params`.
        ablate: ``"lud"``: also run LUD with each part switched off in turn.
        retry_failed: train runs marked as diverged again.
        jobs: runs trained side by side (worker processes, threads shared out;
            :mod:`lud.experiments.scheduler`).
        log: progress messages (``None``: silent).

    Returns:
        The :class:`lud.experiments.results.BenchResult` (rows of ``results.csv`` and the markdown).
    """
    from ..engine.checkpoint import remove_stale_temp_files
    from .calibration import evaluate_teacher
    from .results import collect_results, write_results
    from .scheduler import RunOutcome, RunTask, execute_runs

    say = log or (lambda _m: None)
    plan = plan_bench(
        config, methods, seeds, overrides, output_dir, method_params=method_params, ablate=ablate
    )
    # A killed benchmark may have left temporary files of interrupted writes (tables, caches).
    for folder in (plan.bench_dir, *(r.run_dir for r in plan.runs)):
        remove_stale_temp_files(folder)
    _write_manifest(plan)
    if plan.needs_teacher:
        ev = evaluate_teacher(plan.base, cache_path=plan.bench_dir / "teacher_eval.json")
        say(f"teacher {plan.base.teacher.name}: test top-1 {ev.top1:.2f}%")
    total = len(plan.runs)
    todo = [
        r
        for r in plan.runs
        if r.status in ("new", "resume") or (r.status == "failed" and retry_failed)
    ]
    say(
        f"{total} runs in {plan.bench_dir}: {total - len(todo)} already done or failed, "
        f"{len(todo)} to train"
    )
    tasks = []
    for run in todo:
        if run.status == "failed":
            (run.run_dir / FAILED_FILE).unlink()
            run.status, run.epochs_done = run_status(run.run_dir)
        tasks.append(
            RunTask(
                name=f"{run.variant.label} seed {run.seed}",
                config=run.config,
                resume=run.status == "resume",
                epochs_left=run.config.solver.epochs - run.epochs_done,
                evaluate=True,
            )
        )

    def done(_outcome: RunOutcome) -> None:
        write_results(collect_results(plan.bench_dir))  # partial tables survive an interruption

    execute_runs(
        tasks,
        jobs=jobs,
        train_fn=lambda cfg, resume=False: train(cfg, resume=resume),
        on_done=done,
        log=say,
        done_before=total - len(todo),
        total=total,
    )
    result = collect_results(plan.bench_dir)
    write_results(result)
    say(f"{total}/{total} done; tables in {plan.bench_dir / 'results.md'}")
    return result
