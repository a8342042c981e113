"""The ``lud`` command line: ``train``, ``eval``, ``bench``, ``tune``, ``report``, ``list``, ``config``,
``lm-bench``, ``demo``, ``cache-teacher``.

Exit codes: 0 success; 1 training diverged (NaN/Inf loss); 2 bad usage, configuration, data or
checkpoint, or an output folder that cannot be written (full disk, read-only): the message goes to
stderr, without a traceback (set ``LUD_TRACEBACK=1`` to see one); 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from .. import __version__

__all__ = ["main"]

_COMMANDS = {
    "train": "train a model (a teacher with loss 'ce', or a student distilled from a teacher)",
    "eval": "evaluate a checkpoint: top-1, top-5, NLL, ECE",
    "bench": "benchmark methods side by side over seeds (and ablate LUD); write the tables",
    "tune": "tune every method's loss parameters with the same budget on the validation split",
    "report": "plots and a Markdown page for a run folder or a benchmark folder",
    "list": "list registered losses, models and data sets, and the packaged configs",
    "config": "show a config fully resolved: bases merged, overrides applied, loss parameters",
    "lm-bench": "language-model benchmark, by stage: data, teacher, screen, tune, test, trl",
    "demo": "run the built-in demonstration",
    "cache-teacher": "write a teacher's top-k log-probabilities over a tokenized data set (resumable)",
}


def _top_help() -> str:
    lines = [
        f"usage: lud {{{','.join(_COMMANDS)}}} ...",
        "",
        "lud — logit-based knowledge distillation",
        "",
        "commands:",
    ]
    width = max(map(len, _COMMANDS))
    lines += [f"  {name:<{width}} {text}" for name, text in _COMMANDS.items()]
    lines += [
        "",
        "Run 'lud COMMAND -h' for the options of a command.",
        "options:",
        "  -h, --help  show this help",
        "  --version   print the version",
    ]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- train
def _train_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lud train", description=_COMMANDS["train"])
    p.add_argument(
        "config",
        help="YAML config file, or the name of a packaged config "
        "(e.g. cifar100/lud/resnet32x4_resnet8x4; see 'lud list configs')",
    )
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="config overrides, e.g. solver.lr=0.1 loss.params.beta=2",
    )
    p.add_argument("--resume", action="store_true", help="continue the run folder's last.pt")
    p.add_argument("--output-dir", help="parent folder of the run folder (experiment.output_dir)")
    p.add_argument(
        "--name", help="run folder name (experiment.name; default: the config file name)"
    )
    p.add_argument(
        "--stop-after",
        type=int,
        metavar="N",
        help="stop once N epochs are complete (continue later with --resume)",
    )
    p.add_argument(
        "--allow-changed-params",
        action="store_true",
        help="with --resume: go on although the loss's resolved parameters differ from those "
        "the checkpoint recorded (runtime.allow_changed_params; default: refuse, naming them)",
    )
    return p


def _cmd_train(argv: list[str]) -> int:
    from ..config import load_config, resolve_config, validate_config
    from ..engine import train

    args = _train_parser().parse_intermixed_args(argv)
    cfg = load_config(resolve_config(args.config), args.overrides, validate=False)
    if args.output_dir is not None:
        cfg.experiment.output_dir = args.output_dir
    if args.name is not None:
        cfg.experiment.name = args.name
    if args.allow_changed_params:
        cfg.runtime.allow_changed_params = True
    validate_config(cfg)
    summary = train(cfg, resume=args.resume, stop_after=args.stop_after)
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun, one summary, from rank 0
        return 0
    best, last = summary["best"], summary["last"]
    print(f"run folder: {summary['run_dir']}")
    print(f"epochs: {summary['epochs_completed']}/{summary['epochs']}")
    if best.get("epoch") is not None:
        scores = (  # data.eval_test=false: the test set was never scored, say what was
            f"test top-1 {best['test_top1']:.2f}  top-5 {best['test_top5']:.2f}"
            if best.get("test_top1") is not None
            else f"{best['split']} top-1 {best['top1']:.2f} (test set not scored)"
        )
        print(f"best (by {best['split']} top-1, epoch {best['epoch']}): {scores}")
    if last.get("test_top1") is not None:
        print(
            f"last (epoch {last['epoch']}): "
            f"test top-1 {last['test_top1']:.2f}  top-5 {last['test_top5']:.2f}"
        )
    return 0


# ----------------------------------------------------------------------------- eval
def _eval_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lud eval", description=_COMMANDS["eval"])
    p.add_argument("checkpoint", help="a lud run checkpoint (last.pt / best.pt)")
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="overrides of the config stored in the checkpoint, e.g. data.root=/data",
    )
    p.add_argument("--data", help="data set name (default: the one the checkpoint was trained on)")
    p.add_argument("--root", help="data folder (data.root)")
    p.add_argument("--split", choices=("test", "val"), default="test")
    p.add_argument("--device", help="runtime.device (default: the stored one, usually auto)")
    p.add_argument("--batch-size", type=int, help="evaluation batch size")
    p.add_argument("--json", action="store_true", help="print the metrics as one JSON object")
    return p


def evaluate_checkpoint(
    path: str,
    overrides: Sequence[str] = (),
    *,
    data: str | None = None,
    root: str | None = None,
    split: str = "test",
    device: str | None = None,
    batch_size: int | None = None,
) -> dict[str, Any]:
    """Rebuild the model stored in a lud checkpoint and evaluate it on ``split``.

    Returns ``{"top1","top5","loss","nll","ece","n","split","epoch","checkpoint",
    "lud_version","changed_params"}``: ``changed_params`` lists the loss parameters the
    checkpoint recorded with another value than the code builds today for its config (empty when
    they agree or the checkpoint predates their recording).
    """
    from ..config import ConfigError, apply_overrides, config_from_dict, validate_config
    from ..data import make_batch_transform, make_loader
    from ..engine import evaluate, load_checkpoint, resolve_device
    from ..engine.build import run_data
    from ..models import build_model, load_checkpoint_weights

    ckpt = load_checkpoint(path)
    cfg = config_from_dict(apply_overrides(ckpt["config"], list(overrides)))
    if data is not None:
        cfg.data.name = data
    if root is not None:
        cfg.data.root = root
    if device is not None:
        cfg.runtime.device = device
    if batch_size is not None:
        cfg.data.eval_batch_size = batch_size
    validate_config(cfg, registries=False)
    d = cfg.data
    bundle = run_data(cfg)
    if bundle.num_classes != int(ckpt["num_classes"]):
        raise ValueError(
            f"class-count mismatch: checkpoint {path} has {ckpt['num_classes']} classes, "
            f"data set '{d.name}' has {bundle.num_classes}"
        )
    dataset = bundle.val if split == "val" else bundle.test
    if dataset is None:
        raise ConfigError(
            f"the run has no validation split (data.val_split={d.val_split}); "
            "use --split test, or pass data.val_split=<fraction> to carve one"
        )
    dev = resolve_device(cfg.runtime.device)
    shape = tuple(bundle.input_shape)
    model = build_model(
        str(ckpt["model_name"]),
        bundle.num_classes,
        in_channels=shape[0],
        input_shape=shape,
        **cfg.model.kwargs,
    )
    try:
        load_checkpoint_weights(model, ckpt["model"], strict=True)
    except ValueError as exc:
        stored = "x".join(str(v) for v in ckpt.get("input_shape", ())) or "?"
        raise ValueError(
            f"checkpoint {path} holds a '{ckpt['model_name']}' trained on {stored} inputs; "
            f"data set '{d.name}' gives {'x'.join(map(str, shape))} inputs and "
            f"{bundle.num_classes} classes: {exc}"
        ) from None
    model.to(dev)
    if cfg.runtime.channels_last:
        import torch

        model.to(memory_format=torch.channels_last)
    loader = make_loader(dataset, d.eval_batch_size, shuffle=False)
    res = evaluate(
        model,
        loader,
        make_batch_transform(bundle, train=False).to(dev),
        dev,
        amp=cfg.runtime.amp,
        channels_last=cfg.runtime.channels_last,
    )
    return {**res, "split": split, "epoch": int(ckpt["epoch"]), "checkpoint": str(path),
            "lud_version": ckpt.get("lud_version"), "changed_params": _changed_params(ckpt, cfg)}


def _changed_params(ckpt: dict[str, Any], cfg: Any) -> list[str]:
    """:func:`lud.engine.runfolder.diff_resolved_params` of a checkpoint and today's loss."""
    from ..engine.runfolder import diff_resolved_params
    from ..losses import build_loss

    saved = ckpt.get("resolved_loss_params")
    if saved is None:
        return []
    try:
        now = build_loss(cfg.loss.name, **cfg.loss.params).resolved_params()
    except (TypeError, ValueError) as exc:
        return [f"loss '{cfg.loss.name}' cannot be built today: {exc}"]
    return diff_resolved_params(saved, now, str(ckpt.get("lud_version", "?")))


def _cmd_eval(argv: list[str]) -> int:
    args = _eval_parser().parse_intermixed_args(argv)
    res = evaluate_checkpoint(
        args.checkpoint,
        args.overrides,
        data=args.data,
        root=args.root,
        split=args.split,
        device=args.device,
        batch_size=args.batch_size,
    )
    if args.json:
        print(json.dumps(res))
    else:
        print(f"checkpoint: {res['checkpoint']} (epoch {res['epoch']})")
        print(f"split: {res['split']} ({int(res['n'])} samples)")
        print(f"top-1: {res['top1']:.2f}%")
        print(f"top-5: {res['top5']:.2f}%")
        print(f"NLL:   {res['nll']:.4f}")
        print(f"ECE:   {res['ece']:.4f}")
        if res["changed_params"]:
            print(f"note: trained with lud {res['lud_version']}, whose loss differs from what "
                  f"lud {__version__} builds for the same config (see CHANGELOG.md):")
            print("\n".join(f"  {line}" for line in res["changed_params"]))
    return 0


# ----------------------------------------------------------------------------- bench / report
def _bench_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lud bench",
        description=_COMMANDS["bench"],
        epilog="Finished runs are never retrained: rerun the same command to resume a benchmark.",
    )
    p.add_argument("config", help="distillation config (YAML) naming the teacher checkpoint")
    p.add_argument(
        "overrides", nargs="*", metavar="key=value", help="config overrides (not loss.*)"
    )
    from ..experiments.bench import DEFAULT_METHODS

    p.add_argument(
        "--methods",
        help=f"comma-separated losses (default: {','.join(DEFAULT_METHODS)}; none with --ablate);"
        " the student alone is always trained",
    )
    p.add_argument(
        "--seeds",
        default="3",
        help="number of seeds, counted from experiment.seed (default 3), or a list: 0,1,2 "
        "(one given seed: 7,)",
    )
    p.add_argument(
        "--output-dir", help="benchmark folder (default: <experiment.output_dir>/bench-<name>)"
    )
    p.add_argument(
        "--method-params",
        action="append",
        metavar="SPEC",
        help="per-method loss parameters: lud.cdl_weight=2,dkd.beta=4 or a YAML file "
        "{lud: {cdl_weight: 2}}; repeatable",
    )
    p.add_argument("--ablate", choices=("lud",), help="also run LUD with each part switched off")
    p.add_argument("--retry-failed", action="store_true", help="train diverged runs again")
    _add_jobs(p)
    p.add_argument(
        "--dry-run", action="store_true", help="list the runs and their state; train nothing"
    )
    return p


def _add_jobs(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="runs trained side by side, each in its own process with an equal share of the "
        "CPU threads (default 1)",
    )


def _cmd_bench(argv: list[str]) -> int:
    from ..config import resolve_config
    from ..experiments.bench import plan_bench, run_bench

    args = _bench_parser().parse_intermixed_args(argv)
    args.config = str(resolve_config(args.config))
    methods = None if args.methods is None else args.methods.split(",")
    kwargs = {"method_params": args.method_params, "ablate": args.ablate}
    if args.dry_run:
        plan = plan_bench(
            args.config, methods, args.seeds, args.overrides, args.output_dir, **kwargs
        )
        print(f"benchmark folder: {plan.bench_dir}")
        for run in plan.runs:
            epochs = run.config.solver.epochs
            print(
                f"  {run.variant.label:<18} seed {run.seed:<4} {run.status:<7} "
                f"{run.epochs_done}/{epochs} epochs  {run.run_dir}"
            )
        return 0
    result = run_bench(
        args.config,
        methods,
        args.seeds,
        args.overrides,
        args.output_dir,
        retry_failed=args.retry_failed,
        jobs=args.jobs,
        **kwargs,
    )
    from ..experiments.results import markdown

    print(markdown(result, title=False, runs=False).rstrip())
    print(f"\ntables: {result.bench_dir / 'results.md'}, results.csv, runs.csv")
    return 0


def _tune_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lud tune",
        description=_COMMANDS["tune"],
        epilog="Finished trials are never retrained: rerun the same command to resume. "
        "Then: lud bench CONFIG --method-params TUNE_DIR/tuned.yaml",
    )
    p.add_argument("config", help="distillation config (YAML) with a validation split")
    p.add_argument(
        "overrides", nargs="*", metavar="key=value", help="config overrides (not loss.*)"
    )
    p.add_argument(
        "--grid",
        required=True,
        help="YAML file: method → list of trials, or method → {param: [values]} (every "
        "combination); every method must have the same number of trials",
    )
    p.add_argument(
        "--seeds", default="0,", help="seeds per trial: a count or a list (default: 0,)"
    )
    p.add_argument(
        "--output-dir", help="tuning folder (default: <experiment.output_dir>/tune-<name>)"
    )
    _add_jobs(p)
    return p


def _cmd_lm_bench(argv: list[str]) -> int:
    from ..experiments.lm_bench import DEFAULT_CONFIG, STAGES, run_stage

    p = argparse.ArgumentParser(prog="lud lm-bench", description=_COMMANDS["lm-bench"],
                                epilog="Finished runs are never retrained: rerun the same command to resume.")
    p.add_argument("stage", choices=(*STAGES, "trl"),
                   help="trl: the on- and off-policy rows through TRL's GKD (the config's 'trl:' section)")
    p.add_argument("--config", default=DEFAULT_CONFIG,
                   help=f"YAML file or packaged name (default {DEFAULT_CONFIG})")
    p.add_argument("--work-dir", default="runs/lm", help="data and checkpoints (default runs/lm)")
    p.add_argument("--results-dir", default="benchmarks/lm", help="compact results (default benchmarks/lm)")
    p.add_argument("--img-dir", default="docs/img/lm", help="plots (default docs/img/lm)")
    p.add_argument("--methods", help="comma-separated method labels of the config (default: the stage's)")
    p.add_argument("--students", help="comma-separated student names (default: the stage's)")
    p.add_argument("--seeds", help="comma-separated seeds (default: the stage's)")
    p.add_argument("--device", default="cpu", help="where models train and evaluate (default cpu; e.g. cuda)")
    p.add_argument("--report-only", action="store_true",
                   help="student stages: rewrite the tables and plots from the finished runs, "
                        "training nothing")
    a = p.parse_args(argv)

    def split(text: str | None) -> list[str] | None:
        return None if text is None else [t for t in text.split(",") if t]

    seeds = split(a.seeds)
    if a.stage == "trl":
        from ..integrations.lm_trl import run_trl_stage

        run_trl_stage(a.config, work_dir=a.work_dir, results_dir=a.results_dir, img_dir=a.img_dir,
                      methods=split(a.methods), students=split(a.students),
                      seeds=None if seeds is None else [int(x) for x in seeds], device=a.device,
                      train=not a.report_only)
        return 0
    run_stage(a.stage, a.config, work_dir=a.work_dir, results_dir=a.results_dir, img_dir=a.img_dir,
              methods=split(a.methods), students=split(a.students),
              seeds=None if seeds is None else [int(x) for x in seeds], device=a.device,
              train=not a.report_only)
    return 0


def _cmd_tune(argv: list[str]) -> int:
    from ..config import resolve_config
    from ..experiments.tune import run_tune

    args = _tune_parser().parse_intermixed_args(argv)
    args.config = str(resolve_config(args.config))
    results = run_tune(
        args.config, args.grid, args.seeds, args.overrides, args.output_dir, jobs=args.jobs
    )
    for r in results:
        if r.chosen:
            print(f"{r.method:<8} trial {r.index}: val top-1 {r.score:.2f}  {r.params}")
    return 0


def _report_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lud report", description=_COMMANDS["report"])
    p.add_argument("run_dir", help="a run folder, a benchmark folder, or a folder of run folders")
    p.add_argument("--output-dir", help="where report.md and the PNGs go (default: RUN_DIR/report)")
    p.add_argument(
        "--no-eval",
        action="store_true",
        help="evaluate no checkpoint: reliability and per-class plots use cached results only",
    )
    p.add_argument("--device", help="device for evaluating checkpoints (default: the run's)")
    return p


def _cmd_report(argv: list[str]) -> int:
    from ..experiments.report import make_report

    args = _report_parser().parse_args(argv)
    path = make_report(
        args.run_dir, args.output_dir, evaluate=not args.no_eval, device=args.device
    )
    print(f"report: {path}")
    return 0


# ----------------------------------------------------------------------------- list / demo
def _list_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lud list", description=_COMMANDS["list"])
    p.add_argument(
        "kind",
        nargs="?",
        choices=("losses", "models", "datasets", "configs"),
        help="what to list (default: everything, with headers)",
    )
    p.add_argument(
        "prefix",
        nargs="?",
        default="",
        help="with 'configs': only names starting with this (e.g. cifar100/lud)",
    )
    return p


def _cmd_list(argv: list[str]) -> int:
    args = _list_parser().parse_args(argv)
    from ..config import packaged_configs
    from ..data import available_datasets
    from ..losses import available_losses
    from ..models import available_models

    if args.prefix and args.kind != "configs":
        raise ValueError(f"a prefix ('{args.prefix}') filters configs only: lud list configs PREFIX")
    if args.kind == "configs":
        names = packaged_configs(args.prefix)
        if not names:
            raise ValueError(f"no packaged config name starts with '{args.prefix}'")
        print("\n".join(names))
        return 0
    tables = {
        "losses": available_losses,
        "models": available_models,
        "datasets": available_datasets,
    }
    if args.kind == "losses":  # one line each: name and summary (its defaults)
        from ..losses import loss_entries

        entries = loss_entries()
        width = max(len(e.name) for e in entries)
        print("\n".join(f"{e.name:<{width}}  {e.summary}".rstrip() for e in entries))
        return 0
    if args.kind is not None:
        print("\n".join(tables[args.kind]()))
        return 0
    for i, (kind, names_of) in enumerate(tables.items()):
        print(("\n" if i else "") + f"{kind}:")
        print("\n".join(f"  {n}" for n in names_of()))
    print(f"\nconfigs: {len(packaged_configs())} packaged ('lud list configs [PREFIX]' lists them)")
    return 0


def _config_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lud config", description=_COMMANDS["config"])
    p.add_argument("action", choices=("show",), help="show: print the resolved config as YAML")
    p.add_argument("config", help="YAML config file, or the name of a packaged config")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    return p


def _cmd_config(argv: list[str]) -> int:
    import yaml

    from ..config import load_config, resolve_config, resolved_config_dict

    args = _config_parser().parse_intermixed_args(argv)
    cfg = load_config(resolve_config(args.config), args.overrides, validate=False)
    print(f"# {args.config} resolved by lud {__version__} (loss.params: every parameter's value)")
    print(yaml.safe_dump(resolved_config_dict(cfg), sort_keys=False), end="")
    return 0


def _cmd_cache_teacher(argv: list[str]) -> int:
    from .cache_teacher import main as cache_main

    return cache_main(argv, _COMMANDS["cache-teacher"])


def _cmd_demo(argv: list[str]) -> int:
    from .demo import main as demo_main

    return demo_main(argv)


# ----------------------------------------------------------------------------- main
class _CurrentStderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is when a record is emitted.

    A plain StreamHandler keeps the stream it was built with; when the caller later replaces
    ``sys.stderr`` (pytest's capture, notebooks, a second ``main()`` call in one process) it would
    write to a closed stream.
    """

    @property  # type: ignore[override]
    def stream(self):  # noqa: ANN201
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # noqa: ANN001 - set by StreamHandler.__init__, ignored
        pass


def _setup_logging() -> None:
    log = logging.getLogger("lud")
    if not any(
        isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)
        for h in log.handlers
    ):
        handler = _CurrentStderrHandler()
        handler.setFormatter(logging.Formatter("[lud] %(message)s"))
        log.addHandler(handler)
    log.setLevel(logging.INFO)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``lud`` console script; returns the exit code.

    As a process's own entry (``argv`` None) inside a ``torchrun`` worker (``WORLD_SIZE > 1``),
    it ends the process itself with that code once everything is written
    (:func:`lud.engine.distributed.exit_worker`, which says why).
    """
    code = _main(argv)
    if argv is None and int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
        from ..engine.distributed import exit_worker

        exit_worker(code)
    return code


def _main(argv: Sequence[str] | None) -> int:
    from ..config import ConfigError
    from ..engine import RunFolderError, TrainingDivergedError

    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(_top_help(), file=sys.stdout if args else sys.stderr)
        return 0 if args else 2
    if args[0] == "--version":
        print(f"lud {__version__}")
        return 0
    commands: dict[str, Callable[[list[str]], int]] = {
        "train": _cmd_train,
        "eval": _cmd_eval,
        "bench": _cmd_bench,
        "tune": _cmd_tune,
        "report": _cmd_report,
        "list": _cmd_list,
        "config": _cmd_config,
        "lm-bench": _cmd_lm_bench,
        "demo": _cmd_demo,
        "cache-teacher": _cmd_cache_teacher,
    }
    cmd = args[0]
    if cmd not in commands:
        from ..losses.registry import suggest

        print(
            f"lud: error: unknown command '{cmd}'.{suggest(cmd, list(commands))}", file=sys.stderr
        )
        return 2
    _setup_logging()
    try:
        return commands[cmd](args[1:])
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2)
        return int(exc.code) if isinstance(exc.code, int) else 2
    except KeyboardInterrupt:
        print(f"lud {cmd}: interrupted", file=sys.stderr)
        return 130
    except TrainingDivergedError as exc:
        if os.environ.get("LUD_TRACEBACK"):
            raise
        print(f"lud {cmd}: error: {exc}", file=sys.stderr)
        return 1
    except (ConfigError, RunFolderError, ValueError, OSError, ImportError) as exc:
        if os.environ.get("LUD_TRACEBACK"):
            raise
        print(f"lud {cmd}: error: {exc}", file=sys.stderr)
        return 2
