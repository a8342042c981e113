"""Typed run configuration: YAML in, dotted overrides, validation before any work.

A run is described by one YAML file with the sections below (every key optional except
``data.name`` and ``model.name``)::

    experiment: {name, output_dir, seed, deterministic}
    data:       {name, root, val_split, subset, augment, strong_augment, batch_size,
                 eval_batch_size, num_workers, image_size, eval_test, options}
    model:      {name, kwargs}                   # the network being trained
    teacher:    {name, checkpoint, kwargs}       # name: null = no teacher
    loss:       {name, params}                   # build_loss(name, **params)
    solver:     {optimizer, lr, momentum, nesterov, weight_decay, epochs, schedule,
                 milestones, gamma, warmup_epochs, min_lr}
    runtime:    {device, amp, channels_last, compile, log_every, progress, eval_every,
                 teacher_cache, teacher_cache_dir, max_steps_per_epoch, tensorboard,
                 dist_backend, sync_bn, data_on_device, compile_teacher, compile_loss, nonfinite,
                 grad_norms_every, keep_freed_memory, allow_changed_params}

``loss.name`` is a registered name (``lud list losses``) or the import path of a user's own loss
class, ``my_pkg.my_mod:MyLoss`` (a :class:`lud.losses.DistillationLoss` subclass).
:func:`resolved_config_dict` is a config with every loss parameter resolved (what a run folder's
``resolved.yaml`` holds and ``lud config show`` prints).

Inheritance: a file may say ``_base_: ../base.yaml`` (or a list of paths, applied in order),
relative to the file itself. Mappings merge key by key, recursively; lists and scalars are
replaced. A mapping that contains ``_replace_: true`` replaces the inherited mapping instead of
merging into it (useful when switching ``loss.name`` and the old ``loss.params`` must not
leak into the new loss).

Overrides: ``section.key=value`` (``solver.lr=0.1``, ``loss.params.beta=2``,
``solver.milestones=[30,60]``); the value is parsed as YAML. Free-form mappings
(``model.kwargs``, ``teacher.kwargs``, ``loss.params``, ``data.options``) accept new keys;
everything else must already exist.

YAML is read with :func:`load_yaml`, which follows YAML 1.2 where PyYAML follows 1.1: only
``true``/``false`` are booleans (``amp: off``, ``dynamic_temperature: off`` stay strings) and
``1e-3`` is a float.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import yaml

__all__ = [
    "CONFIGS_DIR",
    "Config",
    "ConfigError",
    "DataConfig",
    "ExperimentConfig",
    "LossConfig",
    "ModelConfig",
    "RuntimeConfig",
    "SolverConfig",
    "TeacherConfig",
    "apply_overrides",
    "config_from_dict",
    "config_to_dict",
    "load_config",
    "load_yaml",
    "packaged_configs",
    "resolve_config",
    "resolved_config_dict",
    "validate_config",
]


# ----------------------------------------------------------------------------- YAML
class _Yaml12Loader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2 scalars.

    YAML 1.1 (PyYAML's default) reads ``on/off/yes/no`` as booleans, which turns choices such as
    ``amp: off`` or ``loss.params.dynamic_temperature=off`` into ``False``, and reads ``1e-3``
    as a string. YAML 1.2 has neither quirk; fixing it here fixes it for every consumer.
    """


_Yaml12Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
_Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def load_yaml(text: str) -> Any:
    """Parse YAML text with YAML 1.2 booleans and floats (see :class:`_Yaml12Loader`)."""
    return yaml.load(text, Loader=_Yaml12Loader)


class ConfigError(ValueError):
    """A configuration problem the user can fix; the CLI prints it without a traceback."""


@dataclass
class ExperimentConfig:
    """Where the run goes and how it is seeded."""

    name: str = ""  # empty: derived from the config file name
    output_dir: str = "runs"
    seed: int = 0
    deterministic: bool = False


@dataclass
class DataConfig:
    """Arguments of :func:`lud.data.build_data` plus loader sizes."""

    name: str = ""
    root: str | None = None
    val_split: float = 0.0
    subset: int | None = None
    augment: str = "default"
    # Two views per image: null = one view; {num_ops: n, magnitude: m} = a second, strong view
    # (the weak view's crop/flip drawn again, then RandAugment(n, m), lud.data.randaugment),
    # for losses built with two_views=true. Both keys optional (2 and 10).
    strong_augment: dict[str, Any] | None = None
    batch_size: int = 64
    eval_batch_size: int = 256
    num_workers: int = 0
    image_size: int | None = None
    # False: the test set is never scored (hyper-parameter tuning must not see it);
    # needs a validation split, which then picks best.pt.
    eval_test: bool = True
    # Build-time options of data sets that take them (build_data(..., options=...)); e.g.
    # fashion_pairs: train_per_class, test_per_class, pair_seed.
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class ModelConfig:
    """The network being trained (the student, or a teacher trained from scratch)."""

    name: str = ""
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class TeacherConfig:
    """A frozen, pre-trained teacher; ``name: null`` means none."""

    name: str | None = None
    checkpoint: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class LossConfig:
    """``build_loss(name, **params)``."""

    name: str = "ce"
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class SolverConfig:
    """Optimiser and learning-rate schedule (defaults: the CIFAR-100 mdistiller recipe)."""

    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    epochs: int = 240
    schedule: Literal["step", "cosine", "constant"] = "step"
    milestones: list[int] = field(default_factory=lambda: [150, 180, 210])
    gamma: float = 0.1
    warmup_epochs: float = 0.0
    min_lr: float = 0.0


@dataclass
class RuntimeConfig:
    """How the run executes; none of these change the maths except ``amp``."""

    device: str = "auto"
    amp: Literal["off", "bf16", "fp16"] = "off"
    channels_last: bool = False
    compile: bool = False
    log_every: int = 50
    progress: bool = True
    eval_every: int = 1
    teacher_cache: bool = False
    # a folder where cached teacher logits are kept and reused by every run whose teacher weights,
    # training images and preprocessing are the same (a benchmark's many runs share one pass);
    # unused without teacher_cache (a benchmark's student-alone row keeps the same overrides)
    teacher_cache_dir: str | None = None
    max_steps_per_epoch: int | None = None
    tensorboard: bool = True
    # data-parallel and GPU path (docs/distributed.md)
    dist_backend: Literal["auto", "gloo", "nccl"] = "auto"
    sync_bn: bool = False
    data_on_device: bool = False
    compile_teacher: bool | None = None  # None: follow `compile`
    # torch.compile of the loss (one graph for every epoch: the epoch reaches it as a tensor);
    # None: follow `compile`
    compile_loss: bool | None = None
    # a NaN/Inf in the logits, the loss or a gradient: "stop" the run (last.pt keeps the last good
    # epoch) or "skip" the step (no update; counted as train/skipped_steps; a sync per step)
    nonfinite: Literal["stop", "skip"] = "stop"
    # every N training steps, the gradient norm each loss term puts on the student logits
    # (lud.engine.gradnorms; epoch means as grad_norm/<term> in metrics.jsonl); 0 = off
    grad_norms_every: int = 0
    # glibc: keep freed CPU memory for the next tensor instead of page-faulting it in again
    # (lud.engine.malloc; LUD at B=256, C=1000 on CPU ~25 % faster); values are unchanged
    keep_freed_memory: bool = True
    # resuming: continue although the loss's resolved parameters differ from those the checkpoint
    # recorded (a default changed between versions); the run then goes on with today's values.
    # Off: resume refuses and names the parameter (`lud train --resume --allow-changed-params`)
    allow_changed_params: bool = False


@dataclass
class Config:
    """The whole run configuration."""

    experiment: ExperimentConfig = field(default_factory=ExperimentConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    solver: SolverConfig = field(default_factory=SolverConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)


# Mappings whose keys are free (passed through as **kwargs to a builder).
_FREE_FORM = {
    ("model", "kwargs"), ("teacher", "kwargs"), ("loss", "params"), ("data", "options"),
}  # fmt: skip
_BASE_KEY = "_base_"
_REPLACE_KEY = "_replace_"
_MISSING = object()


# ----------------------------------------------------------------------------- key errors
def _unknown_key(path: str, key: str, valid: list[str]) -> ConfigError:
    where = f"'{path}'" if path else "the top level"
    full = f"{path}.{key}" if path else key
    close = difflib.get_close_matches(key, valid, n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return ConfigError(
        f"unknown config key '{full}'.{hint} Valid keys in {where}: {', '.join(valid)}."
    )


def _fields(cls: type) -> dict[str, Any]:
    hints = get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


# ----------------------------------------------------------------------------- type checks
def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if origin is Union or (origin is not None and type(tp).__name__ == "UnionType"):
        return " | ".join("null" if a is type(None) else _type_name(a) for a in get_args(tp))
    if origin is list:
        return f"list of {_type_name(get_args(tp)[0])}"
    if origin is dict:
        return "mapping"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Return ``value`` checked (and minimally converted) against annotation ``tp``."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin is Union or type(tp).__name__ == "UnionType":
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as exc:
                errors.append(exc)
        raise ConfigError(
            f"'{key}' must be {_type_name(tp)}, got {value!r} ({type(value).__name__})"
        )
    if origin is Literal:
        choices = get_args(tp)
        if value not in choices:
            close = difflib.get_close_matches(
                str(value), [str(c) for c in choices], n=1, cutoff=0.5
            )
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ConfigError(
                f"'{key}' must be one of {', '.join(repr(c) for c in choices)}, "
                f"got {value!r}.{hint}"
            )
        return value
    if origin is list:
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, list):
            raise ConfigError(
                f"'{key}' must be a {_type_name(tp)}, got {value!r} ({type(value).__name__})"
            )
        (item_tp,) = get_args(tp)
        return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"'{key}' must be a mapping, got {value!r} ({type(value).__name__})")
        bad = [k for k in value if not isinstance(k, str)]
        if bad:
            raise ConfigError(f"'{key}' keys must be strings, got {bad[0]!r}")
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(
                f"'{key}' must be true or false, got {value!r} ({type(value).__name__})"
            )
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"'{key}' must be an integer, got {value!r} ({type(value).__name__})")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"'{key}' must be a number, got {value!r} ({type(value).__name__})")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"'{key}' must be a string, got {value!r} ({type(value).__name__})")
        return value
    raise TypeError(f"unsupported annotation {tp!r} for '{key}'")  # pragma: no cover


# ----------------------------------------------------------------------------- dict <-> config
def config_from_dict(raw: dict[str, Any] | None, *, name: str | None = None) -> Config:
    """Build a :class:`Config` from a nested mapping; unknown keys and bad types raise.

    Args:
        raw: the mapping (as read from YAML); missing keys take their defaults.
        name: fallback for ``experiment.name`` when the mapping leaves it empty.
    """
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise ConfigError(f"a config must be a mapping of sections, got {type(raw).__name__}")
    sections = _fields(Config)
    kwargs: dict[str, Any] = {}
    for sec_name, sec_raw in raw.items():
        if sec_name not in sections:
            raise _unknown_key("", str(sec_name), list(sections))
        if sec_raw is None:
            continue
        if not isinstance(sec_raw, dict):
            raise ConfigError(f"section '{sec_name}' must be a mapping, got {sec_raw!r}")
        sec_cls = sections[sec_name]
        fields = _fields(sec_cls)
        values = {}
        for key, value in sec_raw.items():
            if key == _REPLACE_KEY:
                continue
            if key not in fields:
                raise _unknown_key(sec_name, str(key), list(fields))
            values[key] = _coerce(value, fields[key], f"{sec_name}.{key}")
            if isinstance(values[key], dict):
                values[key] = _strip_replace(values[key])
        kwargs[sec_name] = sec_cls(**values)
    cfg = Config(**kwargs)
    if not cfg.experiment.name and name:
        cfg.experiment.name = name
    return cfg


def _strip_replace(d: dict[str, Any]) -> dict[str, Any]:
    return {
        k: _strip_replace(v) if isinstance(v, dict) else v
        for k, v in d.items()
        if k != _REPLACE_KEY
    }


def config_to_dict(cfg: Config) -> dict[str, Any]:
    """Plain nested dict (YAML/JSON-serialisable) of ``cfg``."""
    return dataclasses.asdict(cfg)


def _merge(base: dict[str, Any], child: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in child.items():
        if (
            isinstance(value, dict)
            and isinstance(out.get(key), dict)
            and not value.get(_REPLACE_KEY)
        ):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _read_yaml(path: Path, stack: tuple[Path, ...] = ()) -> dict[str, Any]:
    path = path.resolve()
    if path in stack:
        chain = " -> ".join(str(p) for p in (*stack, path))
        raise ConfigError(f"config inheritance cycle: {chain}")
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        raw = load_yaml(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"cannot parse YAML in {path}: {exc}") from None
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a config file must contain a mapping, got {type(raw).__name__}")
    bases = raw.pop(_BASE_KEY, None)
    if bases is None:
        return raw
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise ConfigError(f"{path}: '{_BASE_KEY}' must be a path or a list of paths, got {bases!r}")
    merged: dict[str, Any] = {}
    for base in bases:
        merged = _merge(merged, _read_yaml(path.parent / base, (*stack, path)))
    return _merge(merged, raw)


# ----------------------------------------------------------------------------- overrides
_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+$")


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``section.key=value`` strings to a raw config mapping (a new mapping is returned).

    Keys are checked against the schema here so the error can name the override.
    """
    out = copy.deepcopy(raw)
    sections = _fields(Config)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(
                f"override '{item}' must look like section.key=value (e.g. solver.lr=0.1)"
            )
        key, text = item.split("=", 1)
        key = key.strip()
        if not _KEY_RE.match(key):
            raise ConfigError(
                f"override key '{key}' must be dotted, like solver.lr or loss.params.beta"
            )
        try:
            value = load_yaml(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"cannot parse the value of override '{item}': {exc}") from None
        parts = key.split(".")
        if parts[0] not in sections:
            raise _unknown_key("", parts[0], list(sections))
        fields = _fields(sections[parts[0]])
        if parts[1] not in fields:
            raise _unknown_key(parts[0], parts[1], list(fields))
        if len(parts) > 2 and (parts[0], parts[1]) not in _FREE_FORM:
            raise ConfigError(f"override '{key}': '{parts[0]}.{parts[1]}' is not a mapping")
        node = out
        for part in parts[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = {}
                node[part] = child
            node = child
        node[parts[-1]] = value
    return out


def load_config(
    path: str | os.PathLike[str], overrides: list[str] | None = None, *, validate: bool = True
) -> Config:
    """Read a YAML config (resolving ``_base_``), apply overrides, and validate it.

    ``experiment.name`` defaults to the file name without extension.
    """
    p = Path(path)
    raw = apply_overrides(_read_yaml(p), list(overrides or []))
    cfg = config_from_dict(raw, name=p.stem)
    if validate:
        validate_config(cfg)
    return cfg


# ----------------------------------------------------------------------------- validation
_DEVICE_RE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")
_RESERVED_MODEL_KWARGS = ("num_classes", "in_channels", "input_shape")


def _check(cond: bool, message: str) -> None:
    if not cond:
        raise ConfigError(message)


def teacher_cache_error(augment: str) -> str:
    """Why the teacher-logit cache cannot be used with augmentation ``augment``."""
    return (
        f"runtime.teacher_cache needs data.augment='none' (got {augment!r}): with random "
        "augmentation the teacher sees a different image every epoch, so logits computed "
        "once would not match the student's inputs"
    )


STRONG_AUGMENT_KEYS = ("num_ops", "magnitude")


def strong_augment_params(value: dict[str, Any]) -> tuple[int, int]:
    """``(num_ops, magnitude)`` of ``data.strong_augment``; :class:`ConfigError` naming the key."""
    unknown = [k for k in value if k not in STRONG_AUGMENT_KEYS]
    _check(
        not unknown,
        f"data.strong_augment: unknown key {unknown[0]!r}; valid: {', '.join(STRONG_AUGMENT_KEYS)}"
        if unknown else "",
    )
    from .data.randaugment import check_randaugment

    try:
        return check_randaugment(value.get("num_ops", 2), value.get("magnitude", 10))
    except ValueError as exc:
        raise ConfigError(f"data.strong_augment: {exc}") from None


def validate_config(cfg: Config, *, registries: bool = True) -> None:
    """Raise :class:`ConfigError` on the first invalid value.

    Args:
        registries: also check loss/model/dataset names against the registries, build the loss
            once to check its parameters, and check that the teacher checkpoint file exists.
    """
    e, d, m, t = cfg.experiment, cfg.data, cfg.model, cfg.teacher
    s, r = cfg.solver, cfg.runtime
    _check(bool(e.name), "experiment.name is empty (set it, or load the config from a file)")
    _check(
        "/" not in e.name and "\\" not in e.name and e.name not in (".", ".."),
        f"experiment.name must be a plain folder name, got {e.name!r}",
    )
    _check(0 <= e.seed < 2**32, f"experiment.seed must be in [0, 2**32), got {e.seed}")
    _check(bool(d.name), "data.name is required (see `lud list datasets`)")
    _check(0.0 <= d.val_split < 1.0, f"data.val_split must be in [0, 1), got {d.val_split}")
    _check(
        d.eval_test or d.val_split > 0.0,
        "data.eval_test=false needs a validation split (data.val_split > 0) to pick best.pt",
    )
    _check(d.subset is None or d.subset >= 1, f"data.subset must be null or >= 1, got {d.subset}")
    _check(d.batch_size >= 1, f"data.batch_size must be >= 1, got {d.batch_size}")
    _check(d.eval_batch_size >= 1, f"data.eval_batch_size must be >= 1, got {d.eval_batch_size}")
    _check(d.num_workers >= 0, f"data.num_workers must be >= 0, got {d.num_workers}")
    _check(
        d.image_size is None or d.image_size >= 1,
        f"data.image_size must be null or >= 1, got {d.image_size}",
    )
    if d.strong_augment is not None:
        strong_augment_params(d.strong_augment)
    _check(bool(m.name), "model.name is required (see `lud list models`)")
    for sec, kw in (("model", m.kwargs), ("teacher", t.kwargs)):
        for k in _RESERVED_MODEL_KWARGS:
            _check(k not in kw, f"{sec}.kwargs must not set '{k}': it comes from the data set")
    _check(
        t.name is not None or t.checkpoint is None,
        "teacher.checkpoint is set but teacher.name is null; name the teacher architecture",
    )
    _check(
        t.name is None or bool(t.checkpoint),
        f"teacher.name is '{t.name}' but teacher.checkpoint is null; "
        "a teacher needs trained weights",
    )
    _check(s.lr > 0, f"solver.lr must be > 0, got {s.lr}")
    _check(0.0 <= s.momentum < 1.0, f"solver.momentum must be in [0, 1), got {s.momentum}")
    _check(
        not s.nesterov or (s.optimizer == "sgd" and s.momentum > 0),
        "solver.nesterov needs optimizer 'sgd' with momentum > 0",
    )
    _check(s.weight_decay >= 0, f"solver.weight_decay must be >= 0, got {s.weight_decay}")
    _check(s.epochs >= 1, f"solver.epochs must be >= 1, got {s.epochs}")
    _check(all(x >= 1 for x in s.milestones), f"solver.milestones must be >= 1, got {s.milestones}")
    _check(
        all(a < b for a, b in zip(s.milestones, s.milestones[1:])),
        f"solver.milestones must be strictly increasing, got {s.milestones}",
    )
    _check(s.gamma > 0, f"solver.gamma must be > 0, got {s.gamma}")
    _check(
        0 <= s.warmup_epochs <= s.epochs,
        f"solver.warmup_epochs must be in [0, solver.epochs={s.epochs}], got {s.warmup_epochs}",
    )
    _check(0 <= s.min_lr <= s.lr, f"solver.min_lr must be in [0, solver.lr={s.lr}], got {s.min_lr}")
    _check(
        bool(_DEVICE_RE.match(r.device)),
        f"runtime.device must be auto, cpu, mps, cuda or cuda:N, got {r.device!r}",
    )
    _check(r.log_every >= 1, f"runtime.log_every must be >= 1, got {r.log_every}")
    _check(r.eval_every >= 1, f"runtime.eval_every must be >= 1, got {r.eval_every}")
    _check(
        r.max_steps_per_epoch is None or r.max_steps_per_epoch >= 1,
        f"runtime.max_steps_per_epoch must be null or >= 1, got {r.max_steps_per_epoch}",
    )
    _check(
        r.grad_norms_every >= 0,
        f"runtime.grad_norms_every must be >= 0 (0 = off), got {r.grad_norms_every}",
    )
    if r.teacher_cache:
        _check(t.name is not None, "runtime.teacher_cache needs a teacher (teacher.name is null)")
        # "default" may resolve to "none" for some data sets; the trainer re-checks the bundle.
        _check(d.augment in ("none", "default"), teacher_cache_error(d.augment))
        _check(
            d.strong_augment is None,
            "runtime.teacher_cache cannot be used with data.strong_augment: the strong view is "
            "random on every step, so cached teacher logits would belong to another image",
        )
    if registries:
        _validate_registries(cfg)


def _validate_registries(cfg: Config) -> None:
    from .data import available_datasets
    from .data.augment import AUGMENTATIONS
    from .data.build import DATA_OPTIONS
    from .losses import build_loss, loss_entry
    from .losses.registry import suggest
    from .models.registry import resolve_model_name

    datasets = available_datasets()
    key = cfg.data.name.strip().lower().replace("-", "_")  # the spellings build_data accepts
    _check(key in datasets, f"unknown dataset '{cfg.data.name}'.{suggest(key, datasets)}")
    allowed = DATA_OPTIONS.get(key, ())
    unknown = sorted(set(cfg.data.options) - set(allowed))
    _check(
        not unknown,
        f"data.options {unknown} not understood by data set '{key}' "
        f"(it takes: {', '.join(allowed) or 'no options'})",
    )
    augments = ["default", *AUGMENTATIONS]
    _check(
        cfg.data.augment in augments,
        f"unknown data.augment '{cfg.data.augment}'.{suggest(cfg.data.augment, augments)}",
    )
    for key, name in (("model.name", cfg.model.name), ("teacher.name", cfg.teacher.name)):
        if name is not None:
            try:
                resolve_model_name(name)
            except ValueError as exc:
                raise ConfigError(f"{key}: {exc}") from None
    if cfg.teacher.name is not None:
        ckpt = Path(str(cfg.teacher.checkpoint)).expanduser()
        _check(ckpt.is_file(), f"teacher.checkpoint not found: {ckpt}")
    try:  # a registered name or an import path, module:Class
        loss_entry(cfg.loss.name)
    except ValueError as exc:
        raise ConfigError(f"loss.name: {exc}") from None
    try:
        loss = build_loss(cfg.loss.name, **cfg.loss.params)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"loss.params: {exc}") from None
    _check(
        not loss.requires_teacher or cfg.teacher.name is not None,
        f"loss '{cfg.loss.name}' needs a teacher: set teacher.name and teacher.checkpoint",
    )
    two_views = bool(getattr(loss, "two_views", False))  # a user's wrapper module may lack it
    _check(
        not two_views or cfg.data.strong_augment is not None,
        f"loss '{cfg.loss.name}' takes two views (two_views=true): set data.strong_augment "
        "(e.g. {num_ops: 2, magnitude: 10})",
    )
    _check(
        two_views or cfg.data.strong_augment is None,
        f"data.strong_augment is set but loss '{cfg.loss.name}' takes one view: set "
        "loss.params.two_views=true (lud-released, mlkd) or remove data.strong_augment",
    )


def resolved_config_dict(cfg: Config) -> dict[str, Any]:
    """:func:`config_to_dict` of ``cfg`` with ``loss.params`` holding every constructor argument's
    effective value (:meth:`lud.losses.DistillationLoss.resolved_params`), not only those given.

    Loading it as a config builds the same loss whatever the defaults of a later version are.
    ``ConfigError`` when the loss cannot be built from ``cfg``.
    """
    from .losses import build_loss

    out = config_to_dict(cfg)
    try:
        loss = build_loss(cfg.loss.name, **cfg.loss.params)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"loss.params: {exc}") from None
    out["loss"]["params"] = loss.resolved_params()
    return out


# ----------------------------------------------------------------------------- packaged configs
#: The experiment configs shipped inside the package (``src/lud/configs``).
CONFIGS_DIR = Path(__file__).resolve().parent / "configs"


def packaged_configs(prefix: str = "") -> list[str]:
    """Names of the packaged configs (``cifar100/lud/resnet32x4_resnet8x4``) starting with
    ``prefix``, sorted; a prefix that is a folder matches inside it only. The base files that
    configs inherit (``_base_``: ``_base.yaml``, ``_pairs/``; names starting with ``_``) are not
    configs of their own."""
    rels = (p.relative_to(CONFIGS_DIR) for p in CONFIGS_DIR.rglob("*.yaml"))
    names = (r.with_suffix("").as_posix() for r in rels
             if not any(part.startswith("_") for part in r.parts))
    prefix = prefix.strip("/")
    if prefix and (CONFIGS_DIR / prefix).is_dir():  # a folder: ``cifar100/lud`` not ``lud-released``
        prefix += "/"
    return sorted(n for n in names if n.startswith(prefix))


def resolve_config(spec: str | os.PathLike[str]) -> Path:
    """The YAML file ``spec`` names: an existing path wins, else a packaged config's name.

    ``cifar100/lud/resnet32x4_resnet8x4`` (``.yaml`` optional) is
    ``CONFIGS_DIR/cifar100/lud/resnet32x4_resnet8x4.yaml``. Raises ``ConfigError`` naming the
    closest packaged configs when neither exists.
    """
    path = Path(spec)
    if path.is_file():
        return path
    name = str(spec).replace(os.sep, "/").removesuffix(".yaml").strip("/")
    packaged = CONFIGS_DIR / f"{name}.yaml"
    if name and ".." not in name.split("/") and packaged.is_file():
        return packaged
    close = difflib.get_close_matches(name, packaged_configs(), n=5, cutoff=0.6)
    if not close:  # a known folder: list what it holds
        close = packaged_configs(name.rsplit("/", 1)[0] + "/")[:5] if "/" in name else []
    hint = (" Close names: " + ", ".join(close) + "." if close else "")
    raise ConfigError(
        f"config file not found: '{spec}' (nor a packaged config of that name).{hint} "
        "'lud list configs' lists the packaged configs."
    )
