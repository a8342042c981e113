"""``lud lm-bench STAGE``: a staged, resumable language-model distillation benchmark.

Stages, each resumable after a kill, each writing compact results to the results folder
(``benchmarks/lm/`` by default, committed) and big artefacts (data, checkpoints) to the work
folder (``runs/lm/`` by default, git-ignored)::

    data     tokenizer + train/validation/test token streams (lud.data.text)   WORK/data/
    teacher  the GPT-2 teacher trained with CE                                 WORK/teacher/
    screen   every screen method once: one seed, one student, validation       WORK/screen/...
    tune     every method's candidates, same budget each, validation           WORK/tune/...
    test     the chosen parameters, several seeds, both students, test split  WORK/test/...

A config (YAML; the packaged ones are in ``lud/lm_configs/``) holds the data, model and
stage settings and the methods. A method is a label with a registry name and parameters::

    methods:
      fkl-pure: {loss: fkl, params: {ce_weight: 0.0}}
      kd: {loss: kd, image_defaults: true}

so any registered loss (``lud-lm`` and LUD variants once they exist) is added by name, with no
code change. Tune candidates are lists of parameter dicts per method (``tune.candidates``).

Runs. A student run is ``WORK/<stage>/<student>/<method>/seed<k>/``; it writes ``last.pt``
(model, optimiser, scheduler, step, the curve so far) every ``checkpoint_every`` steps, atomically
(temporary file + rename), and ``summary.json`` when done. A run with a ``summary.json`` is
skipped; one with ``last.pt`` resumes from it (batches are drawn from a generator seeded by the
run's seed and the step, so a resumed run sees the batches an uninterrupted one would); one whose
``last.pt`` cannot be read restarts from step 0 (the file is moved aside as ``last.pt.bad``).
A run folder records its method, parameters and budget in ``run.json``; re-running with other
settings in the same folder is refused (``ValueError``), so results never mix recipes.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from typing import Any

import torch
import yaml

from ..data.text import TextData, build_text_data
from ..losses.registry import build_loss, loss_entry
from ..losses.topk import TopKTeacher
from ..models.gpt import build_gpt2, param_counts
from .lm_metrics import evaluate_lm, greedy_continuations, model_device, rouge_l, windows

__all__ = [
    "STAGES",
    "Method",
    "load_lm_config",
    "run_stage",
]

STAGES = ("data", "teacher", "screen", "tune", "test")
DEFAULT_CONFIG = "stdlib_bpe8k"
Tensor_ = torch.Tensor
Log = Callable[[str], None]


def _log(message: str) -> None:
    print(message, flush=True)


# ----------------------------------------------------------------------------- config
def load_lm_config(name_or_path: str | os.PathLike[str], _seen: tuple[str, ...] = ()) -> dict[str, Any]:
    """A benchmark config: a YAML path, or the name of one in ``lud/lm_configs/`` (``stdlib_bpe8k``).

    ``base: NAME`` (a packaged name, or a path relative to the config's folder) starts from that
    config and merges this one into it: mappings key by key, anything else replaced. They are not
    under ``lud/configs/``: that tree holds the training configs (``scripts/make_configs.py``
    generates it), which these are not."""
    path = Path(name_or_path)
    if path.is_file():
        text = path.read_text()
        key, folder = str(path.resolve()), path.parent
    else:
        name = str(name_or_path).removesuffix(".yaml")
        res = resources.files("lud").joinpath("lm_configs", f"{name}.yaml")
        if "/" in name or not res.is_file():
            raise ValueError(
                f"no config file {name_or_path!r} and no packaged config 'lm_configs/{name}.yaml'"
            )
        text = res.read_text()
        key, folder = f"lm_configs/{name}", None
    if key in _seen:
        raise ValueError(f"config {name_or_path!r}: 'base' loops ({' -> '.join((*_seen, key))})")
    cfg = yaml.safe_load(text)
    if not isinstance(cfg, dict):
        raise ValueError(f"config {name_or_path!r} is not a mapping")
    base = cfg.pop("base", None)
    if base is not None:
        if not isinstance(base, str):
            raise ValueError(f"config {name_or_path!r}: 'base' must be a config name or path, got {base!r}")
        local = folder / base if folder is not None else None
        parent = load_lm_config(local if local is not None and local.is_file() else base, (*_seen, key))
        cfg = _merged(parent, cfg)
    for section in ("data", "model", "teacher", "students", "methods", "train", "eval"):
        if section not in cfg:
            raise ValueError(f"config {name_or_path!r} has no '{section}' section")
    return cfg


def _merged(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merged(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


@dataclass(frozen=True)
class Method:
    """A benchmark row: ``label`` → registry ``loss`` name + ``params``."""

    label: str
    loss: str
    params: dict[str, Any]
    image_defaults: bool = False
    teacher_top_k: int | None = None

    @property
    def display(self) -> str:
        return f"{self.label} (image defaults)" if self.image_defaults else self.label


def methods_of(cfg: dict[str, Any], labels: Sequence[str] | None) -> list[Method]:
    """The config's methods (all, or the ``labels`` asked for, in that order); names checked."""
    table = cfg["methods"]
    chosen = list(table) if labels is None else list(labels)
    out = []
    for label in chosen:
        if label not in table:
            raise ValueError(f"unknown method {label!r}; the config has: {', '.join(table)}")
        spec = table[label] or {}
        name = spec.get("loss", label)
        loss_entry(name)  # ValueError naming the valid losses
        top_k = spec.get("teacher_top_k")
        if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
            raise ValueError(f"method {label!r}: teacher_top_k must be a positive int, got {top_k!r}")
        out.append(
            Method(label, name, dict(spec.get("params") or {}), bool(spec.get("image_defaults")), top_k)
        )
    return out


# ----------------------------------------------------------------------------- io helpers
def _atomic_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=False) + "\n")
    os.replace(tmp, path)


def _atomic_torch(path: Path, obj: Any) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(buf.getvalue())
    os.replace(tmp, path)


def _check_run_json(run: Path, spec: dict[str, Any]) -> None:
    path = run / "run.json"
    if path.exists():
        old = json.loads(path.read_text())
        if old != json.loads(json.dumps(spec)):
            diff = sorted(
                k for k in set(old) | set(spec) if old.get(k) != json.loads(json.dumps(spec)).get(k)
            )
            raise ValueError(
                f"run folder {run} was made with other settings ({', '.join(diff)} differ); "
                "use another --work-dir or delete the folder"
            )
    else:
        run.mkdir(parents=True, exist_ok=True)
        _atomic_json(path, spec)


# ----------------------------------------------------------------------------- data + models
def stage_data(cfg: dict[str, Any], work: Path, log: Log = _log) -> TextData:
    d = cfg["data"]
    root = d.get("root")
    return build_text_data(
        work / "data",
        root=root,
        pattern=d.get("pattern", "*.py"),
        vocab_size=int(d["vocab_size"]),
        seed=int(d.get("seed", 0)),
        fractions=tuple(d.get("fractions", (0.05, 0.05))),
        log=log,
    )


def _model(cfg: dict[str, Any], arch: dict[str, Any], data: TextData, seed: int) -> Any:
    return build_gpt2(
        vocab_size=data.vocab_size,
        layers=int(arch["layers"]),
        width=int(arch["width"]),
        heads=int(arch["heads"]),
        seq_len=int(cfg["model"]["seq_len"]),
        seed=seed,
        eos_id=data.eos_id,
    )


def _lr_lambda(steps: int, warmup: int) -> Callable[[int], float]:
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, steps - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    return f


def _batch(stream: Tensor_, seq_len: int, batch: int, seed: int, step: int) -> Tensor_:
    g = torch.Generator().manual_seed(seed * 1_000_003 + step)
    starts = torch.randint(0, len(stream) - seq_len, (batch,), generator=g)
    return torch.stack([stream[s : s + seq_len] for s in starts.tolist()])


# ----------------------------------------------------------------------------- one training run
def train_run(
    run: Path,
    *,
    model: torch.nn.Module,
    loss: torch.nn.Module,
    teacher: torch.nn.Module | None,
    train_stream: Tensor_,
    curve_windows: Tensor_,
    seq_len: int,
    steps: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    warmup: int,
    seed: int,
    eval_every: int,
    checkpoint_every: int,
    log: Log = _log,
    stop_after: int | None = None,
    teacher_top_k: int | None = None,
) -> tuple[torch.nn.Module, dict[str, Any] | None]:
    """Train ``model`` with ``loss`` (resuming ``run/last.pt``); ``(model, state)``.

    ``state`` holds ``curve`` (step, validation perplexity, mean loss terms and stats, and the
    gradient probe of :func:`probe_terms` on the last batch before each evaluation point) and
    ``wall_s``; it is ``None`` when ``stop_after`` stopped the run early (as a kill would).
    ``teacher_top_k``: the loss sees only the teacher's top-k log-probabilities
    (:meth:`~lud.losses.TopKTeacher.from_logits` with float16 log-probs, what the offline cache
    stores), not its dense logits. Batches go to the model's device (the teacher and the loss must
    be there too).
    """
    device = model_device(model)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay, betas=(0.9, 0.95))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(steps, warmup))
    step, curve, wall = 0, [], 0.0
    last = run / "last.pt"
    if last.exists():
        try:
            ck = torch.load(last, weights_only=False, map_location=device)
            model.load_state_dict(ck["model"])
            opt.load_state_dict(ck["opt"])
            sched.load_state_dict(ck["sched"])
            if hasattr(loss, "load_state_dict") and ck.get("loss") is not None:
                loss.load_state_dict(ck["loss"])
            step, curve, wall = int(ck["step"]), list(ck["curve"]), float(ck["wall_s"])
            log(f"  resumed {run} at step {step}")
        except Exception as exc:  # noqa: BLE001 - any unreadable checkpoint: restart cleanly
            log(f"  {last} unreadable ({type(exc).__name__}: {exc}); restarting from step 0")
            os.replace(last, run / "last.pt.bad")
    if teacher is not None:
        teacher.eval()
    model.train()
    acc: dict[str, float] = {}
    n_acc = 0
    t0 = time.perf_counter()
    done_here = 0
    probe: dict[str, float] = {}
    while step < steps:
        ids = _batch(train_stream, seq_len, batch_size, seed, step).to(device)
        logits = model(input_ids=ids).logits[:, :-1]
        labels = ids[:, 1:]
        t_logits = None
        t_input: Any = None
        if teacher is not None:
            with torch.no_grad():
                t_logits = teacher(input_ids=ids).logits[:, :-1]
            t_input = t_logits
            if teacher_top_k is not None:
                t_input = TopKTeacher.from_logits(t_logits, teacher_top_k, log_prob_dtype=torch.float16)
        out = loss(logits, t_input, labels, epoch=step / max(1, steps))
        if t_logits is not None and ((step + 1) % eval_every == 0 or step + 1 == steps):
            probe = probe_terms(out, logits, t_logits)
        if not torch.isfinite(out.total):
            raise ValueError(f"run {run}: loss is {float(out.total)} at step {step}")
        opt.zero_grad(set_to_none=True)
        out.total.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        step += 1
        done_here += 1
        for k, v in out.terms.items():
            acc[f"term/{k}"] = acc.get(f"term/{k}", 0.0) + float(v.detach())
        for k, v in out.stats.items():
            acc[f"stat/{k}"] = acc.get(f"stat/{k}", 0.0) + float(v)
        acc["loss"] = acc.get("loss", 0.0) + float(out.total.detach())
        n_acc += 1
        if step % eval_every == 0 or step == steps:
            m, _ = evaluate_lm(model, curve_windows, batch_size=batch_size)
            point = {
                "step": step,
                "val_perplexity": m["perplexity"],
                **{k: v / n_acc for k, v in acc.items()},
                **probe,
            }
            probe = {}
            curve.append(point)
            log(f"  step {step}/{steps} loss {point['loss']:.3f} val ppl {m['perplexity']:.2f}")
            acc, n_acc = {}, 0
        if step % checkpoint_every == 0 or step == steps:
            state = {
                "model": model.state_dict(),
                "opt": opt.state_dict(),
                "sched": sched.state_dict(),
                "loss": loss.state_dict(),
                "step": step,
                "curve": curve,
                "wall_s": wall + time.perf_counter() - t0,
            }
            _atomic_torch(last, state)
        if stop_after is not None and done_here >= stop_after and step < steps:
            return model, None
    return model, {"curve": curve, "wall_s": wall + time.perf_counter() - t0, "steps": steps}


def probe_terms(out: Any, logits: Tensor_, teacher_logits: Tensor_) -> dict[str, float]:
    """How each loss term pushes the student logits on this batch (before the update).

    For every term of ``out`` (its graph alive): ``grad/<term>`` the norm of ∂term/∂logits,
    ``cos_fkl/<term>`` its cosine with the gradient of plain forward KL at T = 1 (the mean over
    tokens of KL(p_teacher ‖ p_student), whose gradient is ``(p_s − p_t) / N``) and
    ``cos_total/<term>`` its cosine with the gradient of the whole loss; and ``grad/fkl_ref`` the
    norm of that forward-KL gradient. Uses ``torch.autograd.grad`` only: nothing is accumulated
    into ``.grad``, the training step's own backward is unchanged.
    """
    z = logits
    n = max(1, z.numel() // z.shape[-1])
    with torch.no_grad():
        ref = (torch.softmax(z.detach().float(), -1) - torch.softmax(teacher_logits.float(), -1)) / n
    grads: dict[str, Tensor_] = {}
    for name, term in out.terms.items():
        if isinstance(term, torch.Tensor) and term.requires_grad:
            (g,) = torch.autograd.grad(term, z, retain_graph=True, allow_unused=True)
            if g is not None:
                grads[name] = g.detach().float()
    if not grads:
        return {}
    total = torch.stack(list(grads.values())).sum(0)

    def cos(a: Tensor_, b: Tensor_) -> float:
        den = float(a.norm() * b.norm())
        return float((a * b).sum()) / den if den > 0 else 0.0

    res: dict[str, float] = {"grad/fkl_ref": float(ref.norm())}
    for name, g in grads.items():
        res[f"grad/{name}"] = float(g.norm())
        res[f"cos_fkl/{name}"] = cos(g, ref)
        res[f"cos_total/{name}"] = cos(g, total)
    return res


# ----------------------------------------------------------------------------- stages
def _eval_windows(cfg: dict[str, Any], data: TextData, split: str) -> Tensor_:
    return windows(data.tokens(split), int(cfg["model"]["seq_len"]), int(cfg["eval"]["max_tokens"]))


def _prompts(cfg: dict[str, Any], data: TextData, split: str) -> tuple[Tensor_, Tensor_]:
    """``count`` prompts of ``prompt_tokens`` evenly spaced in the split, and the reference text
    (the next ``new_tokens`` tokens)."""
    e = cfg["eval"]
    p, n, count = int(e["prompt_tokens"]), int(e["new_tokens"]), int(e["prompts"])
    stream = data.tokens(split)
    span = p + n
    if len(stream) < span * count:
        raise ValueError(f"split {split!r} has {len(stream)} tokens, too few for {count} prompts of {span}")
    step = (len(stream) - span) // max(1, count - 1) if count > 1 else 0
    rows = torch.stack([stream[i * step : i * step + span] for i in range(count)])
    return rows[:, :p], rows[:, p:]


def _load_teacher(
    cfg: dict[str, Any], work: Path, data: TextData, device: torch.device | None = None
) -> torch.nn.Module:
    path = work / "teacher" / "teacher.pt"
    if not (work / "teacher" / "summary.json").exists() or not path.exists():
        raise ValueError(f"no trained teacher in {work / 'teacher'}: run 'lud lm-bench teacher' first")
    t = cfg["teacher"]
    saved = json.loads((work / "teacher" / "summary.json").read_text())
    want = {
        "arch": {k: t[k] for k in ("layers", "width", "heads")},
        "train": {k: t[k] for k in ("steps", "batch_size", "lr")},
    }
    if {k: saved[k] for k in want} != want:
        raise ValueError(
            f"the teacher in {work / 'teacher'} was trained with {saved['arch']} {saved['train']}, "
            f"the config asks {want['arch']} {want['train']}: use another --work-dir, or delete "
            "the teacher folder and the student runs made with it"
        )
    model = _model(cfg, t, data, 0)
    model.load_state_dict(torch.load(path, weights_only=True, map_location="cpu"))
    model.to(device or "cpu").eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def _teacher_reference(
    cfg: dict[str, Any], work: Path, data: TextData, teacher: torch.nn.Module, split: str, log: Log
) -> dict[str, Any]:
    """The teacher's argmax on the split's eval windows and its greedy continuations (cached)."""
    path = work / "teacher" / f"reference_{split}.pt"
    if path.exists():
        return torch.load(path, weights_only=False)
    log(f"teacher reference on {split}")
    metrics, top1 = evaluate_lm(
        teacher, _eval_windows(cfg, data, split), batch_size=int(cfg["eval"]["batch_size"])
    )
    prompts, refs = _prompts(cfg, data, split)
    cont = greedy_continuations(teacher, prompts, refs.shape[1])
    tok = data.tokenizer()
    ref_text = tok.decode_batch(refs.tolist())
    t_text = tok.decode_batch(cont.tolist())
    metrics["rougeL_ref"] = rouge_l(t_text, ref_text)
    obj = {"top1": top1.to(torch.int32), "metrics": metrics, "continuations": t_text, "references": ref_text}
    _atomic_torch(path, obj)
    return obj


def stage_teacher(
    cfg: dict[str, Any],
    work: Path,
    results: Path,
    log: Log = _log,
    stop_after: int | None = None,
    device: torch.device | None = None,
) -> dict[str, Any] | None:
    data = stage_data(cfg, work, log)
    run = work / "teacher"
    t = cfg["teacher"]
    spec = {
        "arch": {k: t[k] for k in ("layers", "width", "heads")},
        "seq_len": cfg["model"]["seq_len"],
        "train": {k: t[k] for k in ("steps", "batch_size", "lr")},
        "data": data.meta["splits"]["train"],
    }
    _check_run_json(run, spec)
    summary_path = run / "summary.json"
    if summary_path.exists():
        summary = json.loads(summary_path.read_text())
        log(f"teacher done: validation perplexity {summary['validation']['perplexity']:.2f}")
        return summary
    model = _model(cfg, t, data, int(t.get("seed", 0))).to(device or "cpu")
    torch.manual_seed(int(t.get("seed", 0)))
    counts = param_counts(model)
    log(f"teacher: {counts}")
    model, state = train_run(
        run,
        model=model,
        loss=build_loss("ce"),
        teacher=None,
        train_stream=data.tokens("train"),
        curve_windows=windows(
            data.tokens("validation"), int(cfg["model"]["seq_len"]), int(cfg["eval"]["curve_tokens"])
        ),
        seq_len=int(cfg["model"]["seq_len"]),
        steps=int(t["steps"]),
        batch_size=int(t["batch_size"]),
        lr=float(t["lr"]),
        weight_decay=float(t.get("weight_decay", 0.1)),
        warmup=int(t.get("warmup", 100)),
        seed=int(t.get("seed", 0)),
        eval_every=int(t.get("eval_every", 500)),
        checkpoint_every=int(t.get("checkpoint_every", 200)),
        log=log,
        stop_after=stop_after,
    )
    if state is None:
        return None
    _atomic_torch(run / "teacher.pt", model.state_dict())
    val, _ = evaluate_lm(
        model, _eval_windows(cfg, data, "validation"), batch_size=int(cfg["eval"]["batch_size"])
    )
    summary = {
        "params": counts,
        "arch": spec["arch"],
        "train": spec["train"],
        "wall_s": state["wall_s"],
        "validation": val,
        "curve": [
            {"step": c["step"], "val_perplexity": c["val_perplexity"], "loss": c["loss"]}
            for c in state["curve"]
        ],
        "threads": torch.get_num_threads(),
        "device": _device_name(device),
    }
    _atomic_json(summary_path, summary)
    results.mkdir(parents=True, exist_ok=True)
    students = {}
    for name, arch in cfg["students"].items():
        students[name] = {"arch": arch, "params": param_counts(_model(cfg, arch, data, 0))}
    _atomic_json(results / "teacher.json", {**summary, "data": data.meta, "students": students})
    (run / "last.pt").unlink(missing_ok=True)
    log(f"teacher done in {state['wall_s']:.0f} s: validation perplexity {val['perplexity']:.2f}")
    return summary


def _stage_settings(cfg: dict[str, Any], stage: str) -> dict[str, Any]:
    s = dict(cfg["train"])
    s.update(cfg.get("stages", {}).get(stage, {}) or {})
    return s


def _plan(
    cfg: dict[str, Any],
    stage: str,
    methods: list[Method],
    students: Sequence[str] | None,
    seeds: Sequence[int] | None,
) -> list[tuple[str, Method, int, str]]:
    """``(student, method, seed, trial)`` runs of a stage."""
    s = _stage_settings(cfg, stage)
    studs = list(students or s.get("students") or list(cfg["students"]))
    for st in studs:
        if st not in cfg["students"]:
            raise ValueError(f"unknown student {st!r}; the config has: {', '.join(cfg['students'])}")
    seed_list = list(seeds if seeds is not None else s.get("seeds", [0]))
    plan: list[tuple[str, Method, int, str]] = []
    for st in studs:
        for m in methods:
            if stage == "tune":
                cands = (cfg.get("tune", {}).get("candidates", {}) or {}).get(m.label) or [{}]
                for i, c in enumerate(cands):
                    mm = replace(m, params={**m.params, **c})
                    for seed in seed_list:
                        plan.append((st, mm, seed, f"trial{i}"))
            else:
                if stage == "test":
                    m = _tuned(cfg, m)
                for seed in seed_list:
                    plan.append((st, m, seed, ""))
    return plan


def _tuned(cfg: dict[str, Any], m: Method) -> Method:
    chosen = (cfg.get("test", {}) or {}).get("params", {}) or {}
    return replace(m, params={**m.params, **(chosen.get(m.label) or {})})


def run_student_stage(
    cfg: dict[str, Any],
    stage: str,
    work: Path,
    results: Path,
    *,
    methods: Sequence[str] | None = None,
    students: Sequence[str] | None = None,
    seeds: Sequence[int] | None = None,
    log: Log = _log,
    stop_after: int | None = None,
    device: torch.device | None = None,
    train: bool = True,
) -> list[dict[str, Any]]:
    """Train and evaluate every planned run of ``stage`` (skipping finished ones); write results.

    Runs already in ``results/<stage>.json`` (committed by an earlier machine) are restored into
    the work folder first (:func:`restore_runs`), so the tables keep them. ``train=False`` trains
    nothing: it rewrites the tables from the finished runs."""
    s = _stage_settings(cfg, stage)
    labels = methods if methods is not None else s.get("methods")
    plan = _plan(cfg, stage, methods_of(cfg, labels), students, seeds)  # bad names: before any work
    split = "test" if stage == "test" else "validation"
    inputs = stage_inputs(cfg, stage, split, work, results, device, log)
    data, teacher, teacher_id, ref = inputs.data, inputs.teacher, inputs.teacher_id, inputs.ref
    if not train:
        plan = []
    for i, (st, m, seed, trial) in enumerate(plan):
        where = {"stage": stage, "student": st, "method": m.label, "trial": trial, "seed": seed}
        run = run_folder(work, where)
        spec = {
            "stage": stage,
            "student": st,
            "arch": cfg["students"][st],
            "method": m.label,
            "loss": m.loss,
            "params": m.params,
            **({"teacher_top_k": m.teacher_top_k} if m.teacher_top_k is not None else {}),
            "seed": seed,
            "split": split,
            "train": {k: s[k] for k in ("steps", "batch_size", "lr")},
            "teacher": teacher_id,
        }
        _check_run_json(run, spec)
        summary_path = run / "summary.json"
        if summary_path.exists():
            log(f"[{i + 1}/{len(plan)}] {st} {m.label} {trial} seed {seed}: done")
            continue
        log(f"[{i + 1}/{len(plan)}] {st} {m.label} {trial} seed {seed} ({m.loss} {m.params})")
        model = _model(cfg, cfg["students"][st], data, 1000 + seed).to(device or "cpu")
        loss = build_loss(m.loss, **m.params).to(device or "cpu")
        needs_teacher = getattr(loss, "requires_teacher", True)
        model, state = train_run(
            run,
            model=model,
            loss=loss,
            teacher=teacher if needs_teacher else None,
            train_stream=inputs.train_stream,
            curve_windows=inputs.curve_windows,
            seq_len=int(cfg["model"]["seq_len"]),
            steps=int(s["steps"]),
            batch_size=int(s["batch_size"]),
            lr=float(s["lr"]),
            weight_decay=float(s.get("weight_decay", 0.1)),
            warmup=int(s.get("warmup", 50)),
            seed=seed,
            eval_every=int(s.get("eval_every", 100)),
            checkpoint_every=int(s.get("checkpoint_every", 100)),
            log=log,
            stop_after=stop_after,
            teacher_top_k=m.teacher_top_k,
        )
        if state is None:
            return finished_runs(work / stage)
        metrics = held_out_metrics(cfg, model, inputs)
        row = {
            **spec,
            "display": m.display,
            "trial": trial,
            "image_defaults": m.image_defaults,
            "metrics": metrics,
            "wall_s": state["wall_s"],
            "curve": state["curve"],
            "threads": torch.get_num_threads(),
            "device": _device_name(device),
        }
        _atomic_json(summary_path, row)
        (run / "last.pt").unlink(missing_ok=True)
        log(
            f"  ppl {metrics['perplexity']:.2f} acc {metrics['accuracy']:.4f} "
            f"agree {metrics['agreement']:.4f} ece {metrics['ece']:.4f} "
            f"rougeL ref {metrics['rougeL_ref']:.3f} teacher {metrics['rougeL_teacher']:.3f} "
            f"({state['wall_s']:.0f} s)"
        )
        write_results(results, stage, finished_runs(work / stage), ref["metrics"])
    rows = finished_runs(work / stage)
    write_results(results, stage, rows, ref["metrics"])
    return rows


@dataclass(frozen=True)
class StageInputs:
    """What every student run of a stage shares: data, teacher and its references, eval windows."""

    data: TextData
    teacher: torch.nn.Module
    teacher_id: dict[str, Any]
    ref: dict[str, Any]  # the teacher's argmax, metrics and continuations on the split
    eval_windows: Tensor_
    curve_windows: Tensor_
    prompts: Tensor_
    references: Tensor_
    train_stream: Tensor_


def stage_inputs(
    cfg: dict[str, Any],
    stage: str,
    split: str,
    work: Path,
    results: Path,
    device: torch.device | None = None,
    log: Log = _log,
    spec_keys: Sequence[str] | None = None,
) -> StageInputs:
    """Load the data and teacher, restore the committed runs of ``stage`` (:func:`restore_runs`),
    compute (or read) the teacher's references on ``split``."""
    data = stage_data(cfg, work, log)
    teacher = _load_teacher(cfg, work, data, device)
    teacher_id = teacher_identity(work)
    restore_runs(results, stage, work, teacher_id, log, spec_keys or RUN_SPEC_KEYS)
    ref = _teacher_reference(cfg, work, data, teacher, split, log)
    prompts, refs = _prompts(cfg, data, split)
    curve = windows(data.tokens("validation"), int(cfg["model"]["seq_len"]), int(cfg["eval"]["curve_tokens"]))
    return StageInputs(data, teacher, teacher_id, ref, _eval_windows(cfg, data, split), curve, prompts, refs,
                       data.tokens("train"))


def held_out_metrics(cfg: dict[str, Any], model: torch.nn.Module, inputs: StageInputs) -> dict[str, float]:
    """The row metrics of a trained student: token metrics on the split's windows (with the
    teacher's argmax), ROUGE-L of its greedy continuations against the references and the teacher's."""
    metrics, _ = evaluate_lm(
        model, inputs.eval_windows, batch_size=int(cfg["eval"]["batch_size"]),
        teacher_top1=inputs.ref["top1"].long(),
    )
    tok = inputs.data.tokenizer()
    cont = tok.decode_batch(greedy_continuations(model, inputs.prompts, inputs.references.shape[1]).tolist())
    metrics["rougeL_ref"] = rouge_l(cont, inputs.ref["references"])
    metrics["rougeL_teacher"] = rouge_l(cont, inputs.ref["continuations"])
    return metrics


def teacher_identity(work: Path) -> dict[str, Any]:
    """What a student run records of its teacher: architecture, recipe, validation perplexity."""
    t_summary = json.loads((work / "teacher" / "summary.json").read_text())
    return {
        **t_summary["arch"],
        **t_summary["train"],
        "validation_perplexity": round(t_summary["validation"]["perplexity"], 4),
    }


RUN_SPEC_KEYS = ("stage", "student", "arch", "method", "loss", "params", "teacher_top_k", "seed",
                 "split", "train", "teacher")


def run_folder(work: Path, row: dict[str, Any]) -> Path:
    """``WORK/<stage>/<student>/<method>/[<trial>/]seed<k>`` of a run (its summary row)."""
    trial = row.get("trial") or ""
    run = work / row["stage"] / row["student"] / row["method"] / (f"{trial}/" if trial else "")
    return Path(os.path.normpath(run / f"seed{row['seed']}"))


def restore_runs(
    results: Path,
    stage: str,
    work: Path,
    teacher_id: dict[str, Any],
    log: Log = _log,
    spec_keys: Sequence[str] = RUN_SPEC_KEYS,
) -> int:
    """Put the runs of ``results/<stage>.json`` that the work folder lacks back into it.

    The results folder is the durable record (committed); the work folder a cache that a fresh
    machine does not have. A restored run gets its ``run.json`` and ``summary.json`` and is not
    retrained (``spec_keys``: the row keys its ``run.json`` holds). Runs made with another teacher
    are refused (``ValueError``): writing the stage's tables from this work folder would drop
    them. Returns how many were restored."""
    path = results / f"{stage}.json"
    if not path.exists():
        return 0
    rows = json.loads(path.read_text()).get("runs") or []
    other = [r for r in rows if r.get("teacher") != teacher_id]
    if other:
        raise ValueError(
            f"{path} holds {len(other)} run(s) made with another teacher ({other[0].get('teacher')}; "
            f"this work folder's: {teacher_id}): use another --results-dir, or retrain the teacher "
            "that made them"
        )
    restored = 0
    for row in rows:
        run = run_folder(work, row)
        if (run / "summary.json").exists():
            continue
        _check_run_json(run, {k: row[k] for k in spec_keys if k in row})
        _atomic_json(run / "summary.json", row)
        restored += 1
    if restored:
        log(f"restored {restored} finished run(s) of {path} into {work / stage}")
    return restored


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``device`` as a ``torch.device`` (default the CPU); ``ValueError`` for CUDA where there is none."""
    dev = torch.device(device or "cpu")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r}: CUDA is not available here")
    return dev


def _device_name(device: torch.device | None) -> str:
    device = torch.device(device or "cpu")
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return str(device)


def finished_runs(stage_dir: Path) -> list[dict[str, Any]]:
    """Every finished run under a stage folder (any process, any earlier call), in a fixed order."""
    rows = [json.loads(p.read_text()) for p in sorted(stage_dir.rglob("summary.json"))]
    return sorted(rows, key=lambda r: (r["student"], r["method"], r.get("trial", ""), r["seed"]))


# ----------------------------------------------------------------------------- results
METRICS = (
    ("perplexity", "ppl ↓", 2),
    ("accuracy", "next-token acc. ↑", 4),
    ("agreement", "top-1 agr. ↑", 4),
    ("ece", "ECE ↓", 4),
    ("rougeL_ref", "ROUGE-L ref ↑", 3),
    ("rougeL_teacher", "ROUGE-L teacher ↑", 3),
)


def _pm(values: list[float], digits: int) -> str:
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def markdown_tables(rows: list[dict[str, Any]], teacher: dict[str, Any] | None = None) -> str:
    """One Markdown table per student: mean ± std over seeds per (method, trial)."""
    out = []
    for st in dict.fromkeys(r["student"] for r in rows):
        sub = [r for r in rows if r["student"] == st]
        head = "| method | params | seeds | " + " | ".join(h for _, h, _ in METRICS) + " | wall s |"
        lines = [
            f"**student `{st}`** ({sub[0]['arch']}), split `{sub[0]['split']}`",
            "",
            head,
            "|" + "---|" * (len(METRICS) + 4),
        ]
        if teacher is not None:
            lines.append(
                "| teacher | | | "
                + " | ".join(
                    f"{teacher[k]:.{d}f}" if k in teacher and k != "agreement" else "" for k, _, d in METRICS
                )
                + " | |"
            )
        groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for r in sub:
            groups.setdefault((r["display"], r.get("trial", "")), []).append(r)
        for (disp, trial), rs in groups.items():
            params = json.dumps(rs[0]["params"], sort_keys=True) if rs[0]["params"] else ""
            cells = [_pm([r["metrics"][k] for r in rs], d) for k, _, d in METRICS]
            wall = statistics.mean(r["wall_s"] for r in rs)
            name = f"{disp} {trial}".strip()
            lines.append(f"| {name} | {params} | {len(rs)} | " + " | ".join(cells) + f" | {wall:.0f} |")
        out.append("\n".join(lines))
    return "\n\n".join(out) + "\n"


def probe_table(rows: list[dict[str, Any]]) -> str:
    """The gradient probe (:func:`probe_terms`) per run and loss term, as a Markdown table.

    Each cell is the mean over the run's curve points (the seed-0 run of each method and trial),
    early (first point) → late (mean of the last half) for the norm; ``|∇ fKL|`` is the norm of
    plain forward KL's gradient on the same batches, for scale."""
    lines = [
        "| student | method | term | ‖∇term‖ first → late | cos with ∇fKL | cos with ∇total | ‖∇fKL‖ late |",
        "|---|---|---|---|---|---|---|",
    ]
    seen = False
    for r in rows:
        if r["seed"] != min(x["seed"] for x in rows if x["method"] == r["method"]):
            continue
        pts = [c for c in r["curve"] if "grad/fkl_ref" in c]
        if not pts:
            continue
        late = pts[len(pts) // 2 :]
        terms = [k.removeprefix("grad/") for k in pts[0] if k.startswith("grad/") and k != "grad/fkl_ref"]
        name = f"{r['display']} {r.get('trial', '')}".strip()
        ref = statistics.mean(c["grad/fkl_ref"] for c in late)
        for t in terms:
            if not all(f"grad/{t}" in c for c in pts):
                continue
            g0, gl = pts[0][f"grad/{t}"], statistics.mean(c[f"grad/{t}"] for c in late)
            cf = statistics.mean(c[f"cos_fkl/{t}"] for c in pts)
            ct = statistics.mean(c[f"cos_total/{t}"] for c in pts)
            lines.append(
                f"| {r['student']} | {name} | {t} | {g0:.3g} → {gl:.3g} | {cf:+.3f} | {ct:+.3f} | {ref:.3g} |"
            )
            seen = True
    return "\n".join(lines) + "\n" if seen else ""


def write_results(
    results: Path, stage: str, rows: list[dict[str, Any]], teacher: dict[str, Any] | None
) -> None:
    """``<stage>.json`` (every run with its curve), ``<stage>.csv`` and ``<stage>.md``."""
    results.mkdir(parents=True, exist_ok=True)
    _atomic_json(results / f"{stage}.json", {"teacher": teacher, "runs": rows})
    buf = io.StringIO()
    w = csv.writer(buf)
    keys = [k for k, _, _ in METRICS]
    w.writerow(["student", "method", "trial", "loss", "params", "seed", "split", *keys, "wall_s"])
    for r in rows:
        w.writerow(
            [
                r["student"],
                r["method"],
                r.get("trial", ""),
                r["loss"],
                json.dumps(r["params"], sort_keys=True),
                r["seed"],
                r["split"],
                *[f"{r['metrics'][k]:.6g}" for k in keys],
                f"{r['wall_s']:.1f}",
            ]
        )
    (results / f"{stage}.csv").write_text(buf.getvalue())
    probes = probe_table(rows)
    text = markdown_tables(rows, teacher)
    if probes:
        text += "\n**Gradient probe** (per loss term, on the student logits; `probe_table`)\n\n" + probes
    (results / f"{stage}.md").write_text(text)


def plot_stage(results: Path, stage: str, img_dir: Path) -> list[Path]:
    """Perplexity over steps per method, and LUD's logged stats, from ``<stage>.json``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = json.loads((results / f"{stage}.json").read_text())
    img_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for st in dict.fromkeys(r["student"] for r in data["runs"]):
        runs = [r for r in data["runs"] if r["student"] == st]
        fig, ax = plt.subplots(figsize=(7, 4.2))
        for r in runs:
            xs = [c["step"] for c in r["curve"]]
            ys = [c["val_perplexity"] for c in r["curve"]]
            ax.plot(
                xs,
                ys,
                marker="o",
                ms=3,
                label=" ".join(x for x in (r["display"], r.get("trial", ""), f"s{r['seed']}") if x),
            )
        ax.set_xlabel("step")
        ax.set_ylabel("validation perplexity (curve subset)")
        ax.set_yscale("log")
        ax.set_title(f"{stage}: student {st}")
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = img_dir / f"{stage}_{st}_perplexity.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
        lud_runs = [r for r in runs if r.get("loss", "").startswith("lud")]
        if lud_runs:
            keys = sorted(
                {
                    k
                    for r in lud_runs
                    for c in r["curve"]
                    for k in c
                    if k.startswith("stat/")
                    and any(w in k for w in ("temperature", "kept", "confidence", "threshold"))
                }
            )
            if keys:
                cols = min(4, len(keys))
                nrows = -(-len(keys) // cols)
                fig, axes = plt.subplots(nrows, cols, figsize=(3.2 * cols, 2.8 * nrows), squeeze=False)
                for ax in axes.flat[len(keys) :]:
                    ax.axis("off")
                for ax, k in zip(axes.flat, keys):
                    for r in lud_runs:
                        ax.plot(
                            [c["step"] for c in r["curve"] if k in c],
                            [c[k] for c in r["curve"] if k in c],
                            marker="o",
                            ms=3,
                            label=r["display"],
                        )
                    ax.set_title(k.removeprefix("stat/"), fontsize=9)
                    ax.set_xlabel("step")
                axes[0][0].legend(fontsize=7)
                fig.tight_layout()
                path = img_dir / f"{stage}_{st}_lud_stats.png"
                fig.savefig(path, dpi=110)
                plt.close(fig)
                written.append(path)
    return written


# ----------------------------------------------------------------------------- entry
def run_stage(
    stage: str,
    config: str | os.PathLike[str] = DEFAULT_CONFIG,
    *,
    work_dir: str | os.PathLike[str] = "runs/lm",
    results_dir: str | os.PathLike[str] = "benchmarks/lm",
    img_dir: str | os.PathLike[str] | None = None,
    methods: Sequence[str] | None = None,
    students: Sequence[str] | None = None,
    seeds: Sequence[int] | None = None,
    log: Log = _log,
    stop_after: int | None = None,
    device: str | torch.device | None = None,
    train: bool = True,
) -> Any:
    """Run one stage (see the module docstring). ``stop_after`` stops a training run after that many
    steps of this call, leaving it resumable (what a kill does; used by the tests). ``device``:
    where models train and evaluate (default the CPU; the data and batches are the same
    everywhere, the values are not bit-identical across devices, and each row records its
    device). ``train=False`` (student stages): rewrite the tables and plots from the finished
    runs, training nothing."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; valid: {', '.join(STAGES)}")
    dev = resolve_device(device)
    import transformers

    transformers.logging.set_verbosity_error()  # e.g. "pass an attention_mask": no padding here
    cfg = load_lm_config(config)
    work, results = Path(work_dir), Path(results_dir)
    if stage == "data":
        data = stage_data(cfg, work, log)
        results.mkdir(parents=True, exist_ok=True)
        _atomic_json(results / "data.json", data.meta)
        log(json.dumps(data.meta["splits"], indent=1))
        return data.meta
    if stage == "teacher":
        return stage_teacher(cfg, work, results, log, stop_after, dev)
    rows = run_student_stage(
        cfg,
        stage,
        work,
        results,
        methods=methods,
        students=students,
        seeds=seeds,
        log=log,
        stop_after=stop_after,
        device=dev,
        train=train,
    )
    if img_dir is not None and rows and (results / f"{stage}.json").exists():
        plot_stage(results, stage, Path(img_dir))
    return rows
