"""Write the experiment configs under src/lud/configs/ (package data) from the published recipes
(mdistiller's CIFAR-100 and ImageNet recipes, each method's paper for its own values).

One experiment = one file (none hidden in file names), which states what is its own and inherits
the rest (``_base_``, :mod:`lud.config`) from
``<dataset>/_base.yaml`` (what every config of the data set shares), ``<dataset>/_pairs/<pair>.yaml``
(the student, the teacher and what goes with them) and ``<dataset>/<method>/_base.yaml`` (what
every config of a method on that data set shares, where that is more than the loss name). The
bases are computed from the full configs (:func:`all_configs`), so a file holds exactly what
differs. ``lud config show NAME`` prints one fully resolved.
Re-run after changing a recipe: ``python scripts/make_configs.py``; tests/config/test_configs_tree.py checks
that the tree equals what this script writes, that every config loads to exactly its full config,
validates, and that every registered distillation loss has its configs.
Layout: ``<dataset>/<method>/<teacher>_<student>.yaml`` for distillation and
``<dataset>/ce/<model>.yaml`` for training a model alone (teachers and student baselines); the
name without ``.yaml`` is what ``lud train NAME`` and ``lud list configs`` use. The methods come
from the loss registry (:func:`lud.losses.loss_entries`), not from a list here.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from lud.losses import loss_entries

ROOT = Path(__file__).resolve().parents[1] / "src" / "lud" / "configs"

# --- CIFAR-100 (mdistiller lineage) -------------------------------------------------------------
CIFAR_PAIRS = [  # (teacher, student, DKD beta)
    ("resnet56", "resnet20", 2.0),
    ("resnet110", "resnet32", 2.0),
    ("resnet32x4", "resnet8x4", 8.0),
    ("wrn_40_2", "wrn_16_2", 6.0),
    ("wrn_40_2", "wrn_40_1", 6.0),
    ("vgg13", "vgg8", 6.0),
    ("resnet32x4", "ShuffleV1", 8.0),
    ("resnet32x4", "ShuffleV2", 8.0),
    ("wrn_40_2", "ShuffleV1", 6.0),
    ("vgg13", "MobileNetV2", 6.0),
    ("ResNet50", "MobileNetV2", 8.0),
]
LIGHT_STUDENTS = {"ShuffleV1", "ShuffleV2", "MobileNetV2"}  # lr 0.01 instead of 0.05
# Where mdistiller's release unpacks the CIFAR-100 teachers; override with teacher.checkpoint=...
CIFAR_TEACHER_CKPT = "download_ckpts/cifar_teachers/{t}_vanilla/ckpt_epoch_240.pth"

CIFAR_SOLVER = {
    "optimizer": "sgd",
    "lr": 0.05,
    "momentum": 0.9,
    "nesterov": False,
    "weight_decay": 5e-4,
    "epochs": 240,
    "schedule": "step",
    "milestones": [150, 180, 210],
    "gamma": 0.1,
    "warmup_epochs": 0,
    "min_lr": 0.0,
}
CIFAR_DATA = {
    "name": "cifar100",
    "root": None,
    "val_split": 0.0,
    "augment": "default",
    "batch_size": 64,
    "eval_batch_size": 256,
    "num_workers": 0,
}

# Methods whose configs follow a recipe of their own instead of the shared tables below (and why).
OWN_RECIPE = {"lud-released": "the released LUD code's recipe: two views, 480 epochs (below)"}


def distillation_methods() -> list[str]:
    """Every registered distillation loss (family baseline or lud) that uses the shared recipe."""
    return [e.name for e in loss_entries()
            if e.family in ("baseline", "lud") and e.name not in OWN_RECIPE]


# Loss parameters per method on CIFAR-100: the registered defaults are the published CIFAR values
# (lud-paper is the paper-faithful LUD beside the improved default; WTTM: README values gamma 0.2,
# beta 4 for every pair, the paper's per-pair A.4 table is not in the public repository, see
# lud/losses/wttm.py; RLD: its release sets no per-pair values), so only what differs per pair is
# written (DKD's beta, below).
CIFAR_PARAMS: dict[str, dict[str, Any]] = {}

# The released LUD code's recipe (llieeai/lud configs/cifar100/lud/*.yaml + mdistiller cfg):
# its CSKD objective on a weak and a RandAugment(2, 10) strong view, 480 epochs, batch 64,
# lr 0.025 (0.01 for ShuffleNet/MobileNet students), x0.1 at 150/180/210 (as its configs say,
# although that leaves 270 of the 480 epochs at lr x0.001), weight decay 5e-4.
RELEASED_LUD_SOLVER = dict(CIFAR_SOLVER, epochs=480, lr=0.025)
RELEASED_LUD_LIGHT_LR = 0.01
RELEASED_LUD_DATA = dict(CIFAR_DATA, strong_augment={"num_ops": 2, "magnitude": 10})
RELEASED_LUD_PARAMS = {"two_views": True}

# --- ImageNet ------------------------------------------------------------------------------------
IMAGENET_PAIRS = [  # (teacher, student, DKD beta)
    ("imagenet_resnet34", "imagenet_resnet18", 0.5),
    ("imagenet_resnet50", "imagenet_mobilenetv1", 2.0),
]
IMAGENET_TEACHER_CKPT = (
    "checkpoints/imagenet/{t}.pth"  # torchvision weights saved to disk by the user
)
IMAGENET_SOLVER = {
    "optimizer": "sgd",
    "lr": 0.2,
    "momentum": 0.9,
    "nesterov": False,
    "weight_decay": 1e-4,
    "epochs": 100,
    "schedule": "step",
    "milestones": [30, 60, 90],
    "gamma": 0.1,
    "warmup_epochs": 0,
    "min_lr": 0.0,
}
IMAGENET_DATA = {
    "name": "imagenet",
    "root": None,
    "val_split": 0.0,
    "augment": "default",
    "batch_size": 512,
    "eval_batch_size": 512,
    "num_workers": 8,
}
# ImageNet: the methods whose papers give ImageNet values (the papers' own ImageNet settings),
# with those values; the others have no ImageNet config.
IMAGENET_METHODS: dict[str, dict[str, Any]] = {
    "kd": {"temperature": 1.0, "ce_weight": 0.5, "kd_weight": 0.5},
    "dkd": {"temperature": 1.0, "alpha": 0.5, "warmup": 1.0},
    "dist": {"tau": 1.0},
    "lud": {},
    # RLD's configs/imagenet/*/rld.yaml: T = 1 (alpha_T follows), warm-up 1 epoch; beta per pair
    # (0.5 R34->R18, 2 R50->MobileNetV1) is written below like DKD's.
    "rld": {"temperature": 1.0, "alpha_temperature": 1.0, "warmup": 1.0},
    # WTTM's ImageNet runs used torchdistill with settings not in its repository: defaults.
    "wttm": {},
}

# --- small real data: Fashion-MNIST and MNIST-5k -------------------------------------------------
SMALL_PAIRS = [("cnn_large", "cnn_small"), ("cnn_large", "mlp_tiny")]
SMALL_SOLVER = {
    "optimizer": "sgd",
    "lr": 0.05,
    "momentum": 0.9,
    "nesterov": True,
    "weight_decay": 5e-4,
    "epochs": 20,
    "schedule": "cosine",
    "milestones": [],
    "gamma": 0.1,
    "warmup_epochs": 1,
    "min_lr": 0.0,
}
SMALL_DATASETS = {
    "fashion_mnist": {"epochs": 20, "batch_size": 128},
    "mnist5k": {"epochs": 30, "batch_size": 64},
}

# --- fashion_pairs: 100 classes, two Fashion-MNIST garments side by side (lud.data.fashion_pairs)
# Sizes are the data set's defaults, written out so that every file states them. Students cache
# the teacher's logits (no augmentation on this set), so a student run costs its own steps only.
PAIRS_OPTIONS = {"train_per_class": 150, "test_per_class": 100, "pair_seed": 0}
# The label says which garment is on the left: the CNNs average each half separately (global
# pooling cannot tell left from right; cnn_small reached 9 % with it, 35 % without, 2 epochs).
PAIRS_CNN_KWARGS = {"pool_grid": [1, 2]}
PAIRS_EPOCHS = {"teacher": 8, "student": 5}


def _config(
    name: str,
    data: dict,
    model: str,
    solver: dict,
    loss: str,
    params: dict,
    teacher: str | None = None,
    teacher_ckpt: str | None = None,
    runtime: dict | None = None,
    model_kwargs: Callable[[str], dict] = lambda name: {},
) -> dict:
    return {
        "experiment": {"name": name, "output_dir": "runs", "seed": 0, "deterministic": False},
        "data": copy.deepcopy(data),
        "model": {"name": model, "kwargs": model_kwargs(model)},
        "teacher": {"name": teacher, "checkpoint": teacher_ckpt,
                    "kwargs": model_kwargs(teacher) if teacher else {}},
        "loss": {"name": loss, "params": copy.deepcopy(params)},
        "solver": copy.deepcopy(solver),
        "runtime": {"device": "auto", "amp": "off", "channels_last": False, **(runtime or {})},
    }


def _file_stem(teacher: str, student: str) -> str:
    return f"{teacher}_{student}"


def all_configs() -> dict[Path, dict]:
    """Relative path → config dict for every experiment file."""
    out: dict[Path, dict] = {}
    # CIFAR-100: every model alone, then every pair × method.
    models = sorted({m for t, s, _ in CIFAR_PAIRS for m in (t, s)})
    for m in models:
        solver = dict(CIFAR_SOLVER, lr=0.01 if m in LIGHT_STUDENTS else 0.05)
        out[Path("cifar100/ce") / f"{m}.yaml"] = _config(
            f"cifar100-ce-{m}", CIFAR_DATA, m, solver, "ce", {}
        )
    for t, s, beta in CIFAR_PAIRS:
        solver = dict(CIFAR_SOLVER, lr=0.01 if s in LIGHT_STUDENTS else 0.05)
        for method in distillation_methods():
            params = CIFAR_PARAMS.get(method, {})
            params = dict(params, beta=beta) if method == "dkd" else params
            out[Path("cifar100") / method / f"{_file_stem(t, s)}.yaml"] = _config(
                f"cifar100-{method}-{t}_{s}",
                CIFAR_DATA,
                s,
                solver,
                method,
                params,
                teacher=t,
                teacher_ckpt=CIFAR_TEACHER_CKPT.format(t=t),
            )
        released = dict(
            RELEASED_LUD_SOLVER, lr=RELEASED_LUD_LIGHT_LR if s in LIGHT_STUDENTS else 0.025
        )
        out[Path("cifar100/lud-released") / f"{_file_stem(t, s)}.yaml"] = _config(
            f"cifar100-lud-released-{t}_{s}",
            RELEASED_LUD_DATA,
            s,
            released,
            "lud-released",
            RELEASED_LUD_PARAMS,
            teacher=t,
            teacher_ckpt=CIFAR_TEACHER_CKPT.format(t=t),
        )
    # ImageNet.
    for t, s, beta in IMAGENET_PAIRS:
        out[Path("imagenet/ce") / f"{s}.yaml"] = _config(
            f"imagenet-ce-{s}",
            IMAGENET_DATA,
            s,
            IMAGENET_SOLVER,
            "ce",
            {},
            runtime={"amp": "bf16", "channels_last": True},
        )
        for method, params in IMAGENET_METHODS.items():
            params = dict(params, beta=beta) if method in ("dkd", "rld") else params
            out[Path("imagenet") / method / f"{_file_stem(t, s)}.yaml"] = _config(
                f"imagenet-{method}-{t}_{s}",
                IMAGENET_DATA,
                s,
                IMAGENET_SOLVER,
                method,
                params,
                teacher=t,
                teacher_ckpt=IMAGENET_TEACHER_CKPT.format(t=t),
                runtime={"amp": "bf16", "channels_last": True},
            )
    # Small real data sets.
    for ds, over in SMALL_DATASETS.items():
        data = {
            "name": ds,
            "root": None,
            "val_split": 0.1,
            "augment": "default",
            "batch_size": over["batch_size"],
            "eval_batch_size": 1000,
            "num_workers": 0,
        }
        solver = dict(SMALL_SOLVER, epochs=over["epochs"])
        for m in sorted({m for pair in SMALL_PAIRS for m in pair}):
            out[Path(ds) / "ce" / f"{m}.yaml"] = _config(f"{ds}-ce-{m}", data, m, solver, "ce", {})
        for t, s in SMALL_PAIRS:
            for method in distillation_methods():
                out[Path(ds) / method / f"{_file_stem(t, s)}.yaml"] = _config(
                    f"{ds}-{method}-{t}_{s}",
                    data,
                    s,
                    solver,
                    method,
                    {},
                    teacher=t,
                    teacher_ckpt=f"runs/{ds}-ce-{t}/best.pt",
                )
    _fashion_pairs(out)
    return out


def _fashion_pairs(out: dict[Path, dict]) -> None:
    ds = "fashion_pairs"
    data = {
        "name": ds,
        "root": None,
        "val_split": 0.1,
        "augment": "default",
        "batch_size": 128,
        "eval_batch_size": 1000,
        "num_workers": 0,
        "options": dict(PAIRS_OPTIONS),
    }
    teachers = {t for t, _ in SMALL_PAIRS}
    for m in sorted({m for pair in SMALL_PAIRS for m in pair}):
        role = "teacher" if m in teachers else "student"
        solver = dict(SMALL_SOLVER, epochs=PAIRS_EPOCHS[role])
        out[Path(ds) / "ce" / f"{m}.yaml"] = _config(
            f"{ds}-ce-{m}", data, m, solver, "ce", {}, model_kwargs=_pairs_kwargs
        )
    solver = dict(SMALL_SOLVER, epochs=PAIRS_EPOCHS["student"])
    for t, s in SMALL_PAIRS:
        for method in distillation_methods():
            out[Path(ds) / method / f"{_file_stem(t, s)}.yaml"] = _config(
                f"{ds}-{method}-{t}_{s}",
                data,
                s,
                solver,
                method,
                {},
                teacher=t,
                teacher_ckpt=f"runs/{ds}-ce-{t}/best.pt",
                runtime={"teacher_cache": True},
                model_kwargs=_pairs_kwargs,
            )


def _pairs_kwargs(model: str) -> dict:
    return copy.deepcopy(PAIRS_CNN_KWARGS) if model.startswith("cnn_") else {}


# --- inheritance: the bases and what each file adds -------------------------------------------
BASE = "_base.yaml"
PAIRS = "_pairs"


def _common(dicts: list[dict], majority: bool = False) -> dict:
    """The entries every mapping of ``dicts`` has with the same value (mappings: recursively).

    ``majority``: an entry every mapping has takes the value more than half of them hold (the
    others state theirs), so a base holds the usual recipe and a file only its exceptions.
    """
    out: dict = {}
    for key in dicts[0]:
        if not all(key in d for d in dicts):
            continue
        values = [d[key] for d in dicts]
        if all(isinstance(v, dict) for v in values):
            sub = _common(values, majority)
            if sub:
                out[key] = sub
            elif _pick(values, majority) == {}:
                out[key] = {}
            continue
        pick = _pick(values, majority)
        if pick is not _NONE:
            out[key] = copy.deepcopy(pick)
    return out


_NONE = object()


def _pick(values: list, majority: bool) -> Any:
    """The value all of ``values`` hold (or, with ``majority``, more than half); else ``_NONE``."""
    if all(v == values[0] for v in values):
        return values[0]
    if majority:
        for v in values:
            if 2 * sum(1 for w in values if w == v) > len(values):
                return v
    return _NONE


def _diff(full: dict, base: dict) -> dict:
    """The entries of ``full`` that ``base`` lacks or holds with another value (recursively)."""
    out: dict = {}
    for key, value in full.items():
        if key not in base:
            out[key] = copy.deepcopy(value)
        elif isinstance(value, dict) and isinstance(base[key], dict) and value and base[key]:
            sub = _diff(value, base[key])
            if sub:
                out[key] = sub
        elif value != base[key]:
            out[key] = copy.deepcopy(value)
    return out


def _merge(base: dict, child: dict) -> dict:
    """``child`` over ``base`` as lud.config merges ``_base_`` files (mappings key by key)."""
    out = copy.deepcopy(base)
    for key, value in child.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _pair_of(rel: Path) -> str | None:
    """``<teacher>_<student>`` of a distillation config, None for a model trained alone."""
    return None if rel.parts[1] == "ce" else rel.stem


def all_files() -> dict[Path, dict]:
    """Relative path → file content (``_base_`` first) for every config and base file."""
    configs = all_configs()
    files: dict[Path, dict] = {}
    for ds in sorted({rel.parts[0] for rel in configs}):
        mine = {rel: cfg for rel, cfg in configs.items() if rel.parts[0] == ds}
        ds_base = _common(list(mine.values()), majority=True)
        files[Path(ds) / BASE] = ds_base
        pair_bases: dict[str, dict] = {}
        for pair in sorted({p for p in map(_pair_of, mine) if p is not None}):
            group = [cfg for rel, cfg in mine.items() if _pair_of(rel) == pair]
            pair_bases[pair] = _diff(_common(group), ds_base)
            files[Path(ds) / PAIRS / f"{pair}.yaml"] = pair_bases[pair]
        for method in sorted({rel.parts[1] for rel in mine}):
            rels = [rel for rel in mine if rel.parts[1] == method]

            # what a file inherits from the data set's base and its pair's
            above = {rel: ds_base if _pair_of(rel) is None else _merge(ds_base, pair_bases[_pair_of(rel)])
                     for rel in rels}
            # a method base where the method's files share more than the loss name
            method_base = _common([_diff(mine[rel], above[rel]) for rel in rels]) if len(rels) > 1 else {}
            name = method_base.get("loss", {}).get("name")
            own = bool(_diff(method_base, {"loss": {"name": name, "params": {}}}))
            if own:
                files[Path(ds) / method / BASE] = method_base
            for rel in rels:
                bases = [f"../{BASE}"]
                if _pair_of(rel) is not None:
                    bases.append(f"../{PAIRS}/{_pair_of(rel)}.yaml")
                merged = above[rel]
                if own:
                    bases.append(BASE)
                    merged = _merge(merged, method_base)
                files[rel] = {"_base_": bases if len(bases) > 1 else bases[0],
                              **_diff(mine[rel], merged)}
    return files


def render(cfg: dict) -> str:
    return yaml.safe_dump(cfg, sort_keys=False, default_flow_style=False)


def main() -> None:
    files = all_files()
    stale = [p for p in ROOT.rglob("*.yaml") if p.relative_to(ROOT) not in files]
    for path in stale:
        path.unlink()
    for rel, content in files.items():
        path = ROOT / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(render(content))
    n = sum(1 for rel in files if not any(part.startswith("_") for part in rel.parts))
    print(f"wrote {n} configs and {len(files) - n} base files under {ROOT}"
          + (f"; removed {len(stale)} stale files" if stale else ""))


if __name__ == "__main__":
    main()
