"""``lud lm-bench trl``: on- and off-policy rows of the language-model benchmark, through TRL.

The rows are TRL's GKD trainer with a lud loss (:class:`lud.integrations.trl.GKDDistillationTrainer`)
on the benchmark's own data, teacher, students, recipe and metrics (:mod:`lud.experiments.lm_bench`),
so that they sit in the same tables as the runner's rows. A config's ``trl:`` section::

    trl:
      students: [s8]
      seeds: [0, 1, 2]
      prompt_tokens: 32          # of each seq_len window; the rest is the completion
      rows:
        fkl-pure-off: {method: fkl-pure, lmbda: 0.0}   # a method of `methods:`, test.params applied
        fkl-pure-on: {method: fkl-pure, lmbda: 1.0}
        lud-lm-pure-on: {method: lud-lm, lmbda: 1.0, params: {ce_weight: 0.0, instance_weight: 1.0}}

``params`` (optional) go over the method's. On an on-policy step the labels are the student's
own sample, so a loss with a CE term trains toward it: on-policy rows are usually pure.

Each run trains on the runner's batches (``_batch(train, seq_len, batch_size, seed, step)`` for
every step, in order: the sampler is sequential) with the runner's optimiser and schedule (AdamW
β = (0.9, 0.95), warm-up then cosine to 0.1×, gradient clip 1.0). The first ``prompt_tokens`` of a
window are the prompt (never scored). ``lmbda`` is GKD's: with that probability a step replaces
the completion by the student's own sample for the prompt (temperature 1, ``top_k`` 0, up to
``seq_len − prompt_tokens`` new tokens; the tokens after a sampled end-of-text are not scored),
otherwise the dataset's completion is scored. So ``lmbda: 0`` is off-policy (supervised KD on the
completions) and ``lmbda: 1`` fully on-policy. The runner's rows score every position of the
window; these score the completion only, half the tokens per step: compare the TRL rows with each
other, and with the runner's rows only as a reference.

The metrics are the runner's (test split: perplexity, accuracy, agreement, ECE, ROUGE-L), with a
validation-perplexity curve every ``eval_every`` steps. A run folder is
``WORK/trl/<student>/<row>/seed<k>/`` with ``run.json`` (other settings are refused) and
``summary.json`` (a finished run is skipped); a killed run restarts from step 0 (no checkpoint:
the runs are short). Results: ``RESULTS/trl.json|csv|md``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import datasets
import torch
import transformers
from torch.utils.data import SequentialSampler
from transformers import TrainerCallback
from trl.experimental.gkd import GKDConfig

from lud.experiments import lm_bench as lb
from lud.experiments.lm_metrics import evaluate_lm

from .trl import GKDDistillationTrainer

__all__ = ["TrlRow", "run_trl_stage", "trl_rows"]

STAGE = "trl"
SPEC_KEYS = (*lb.RUN_SPEC_KEYS, "lmbda", "prompt_tokens")


@dataclass(frozen=True)
class TrlRow:
    """A TRL row: a ``label``, a benchmark method (tuned parameters applied) and GKD's ``lmbda``."""

    label: str
    method: lb.Method
    lmbda: float

    @property
    def display(self) -> str:
        mode = "on-policy" if self.lmbda == 1.0 else "off-policy" if self.lmbda == 0.0 else "mixed"
        return f"{self.label} (TRL GKD, {mode} λ={self.lmbda:g})"


def trl_rows(cfg: dict[str, Any], labels: Sequence[str] | None = None) -> list[TrlRow]:
    """The config's ``trl.rows`` (all, or ``labels`` in that order), checked."""
    section = cfg.get("trl") or {}
    table = section.get("rows") or {}
    if not table:
        raise ValueError("the config has no 'trl: rows:' section")
    out = []
    for label in list(table) if labels is None else list(labels):
        if label not in table:
            raise ValueError(f"unknown TRL row {label!r}; the config has: {', '.join(table)}")
        spec = table[label] or {}
        if "method" not in spec:
            raise ValueError(f"TRL row {label!r} names no 'method'")
        (method,) = lb.methods_of(cfg, [spec["method"]])
        if method.image_defaults or method.teacher_top_k is not None:
            raise ValueError(f"TRL row {label!r}: method {method.label!r} (image defaults or a top-k "
                             "teacher) is not supported through TRL")
        lmbda = spec.get("lmbda")
        if isinstance(lmbda, bool) or not isinstance(lmbda, int | float) or not 0.0 <= lmbda <= 1.0:
            raise ValueError(f"TRL row {label!r}: lmbda must be a number in [0, 1], got {lmbda!r}")
        extra = spec.get("params") or {}
        if not isinstance(extra, dict):
            raise ValueError(f"TRL row {label!r}: params must be a mapping, got {extra!r}")
        tuned = lb._tuned(cfg, method)
        out.append(TrlRow(label, replace(tuned, params={**tuned.params, **extra}), float(lmbda)))
    return out


def _tokenizer(data: Any) -> Any:
    eos = "<|endoftext|>"
    return transformers.PreTrainedTokenizerFast(tokenizer_object=data.tokenizer(), eos_token=eos,
                                                pad_token=eos)


def _collator(prompt_tokens: int) -> Any:
    def collate(rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        ids = torch.tensor([r["ids"] for r in rows], dtype=torch.long)
        labels = ids.clone()
        labels[:, :prompt_tokens] = -100
        prompts = ids[:, :prompt_tokens]
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels,
                "prompts": prompts, "prompt_attention_mask": torch.ones_like(prompts)}

    return collate


def run_trl_stage(
    config: str | os.PathLike[str] = lb.DEFAULT_CONFIG,
    *,
    work_dir: str | os.PathLike[str] = "runs/lm",
    results_dir: str | os.PathLike[str] = "benchmarks/lm",
    img_dir: str | os.PathLike[str] | None = None,
    methods: Sequence[str] | None = None,
    students: Sequence[str] | None = None,
    seeds: Sequence[int] | None = None,
    device: str | torch.device | None = None,
    train: bool = True,
    log: lb.Log = lb._log,
) -> list[dict[str, Any]]:
    """Train and evaluate every planned TRL run (``methods`` = row labels); write ``trl.*``."""
    transformers.logging.set_verbosity_error()
    cfg = lb.load_lm_config(config)
    rows = trl_rows(cfg, methods)
    section = cfg["trl"]
    studs = list(students or section.get("students") or list(cfg["students"]))
    for st in studs:
        if st not in cfg["students"]:
            raise ValueError(f"unknown student {st!r}; the config has: {', '.join(cfg['students'])}")
    seed_list = list(seeds if seeds is not None else section.get("seeds", [0]))
    dev = lb.resolve_device(device)
    s = dict(cfg["train"])
    seq_len = int(cfg["model"]["seq_len"])
    prompt_tokens = int(section.get("prompt_tokens", seq_len // 2))
    if not 1 <= prompt_tokens < seq_len:
        raise ValueError(f"trl.prompt_tokens must be in [1, {seq_len - 1}], got {prompt_tokens}")
    work, results = Path(work_dir), Path(results_dir)
    inputs = lb.stage_inputs(cfg, STAGE, "test", work, results, dev, log, SPEC_KEYS)
    data, teacher_id = inputs.data, inputs.teacher_id
    hf_tok = _tokenizer(data)
    steps, batch = int(s["steps"]), int(s["batch_size"])
    eval_every = int(s.get("eval_every", 100))
    plan = [(st, r, seed) for st in studs for r in rows for seed in seed_list] if train else []
    for i, (st, r, seed) in enumerate(plan):
        m = r.method
        run = lb.run_folder(work, {"stage": STAGE, "student": st, "method": r.label, "seed": seed})
        spec = {"stage": STAGE, "student": st, "arch": cfg["students"][st], "method": r.label,
                "loss": m.loss, "params": m.params, "seed": seed, "split": "test",
                "train": {k: s[k] for k in ("steps", "batch_size", "lr")}, "teacher": teacher_id,
                "lmbda": r.lmbda, "prompt_tokens": prompt_tokens}
        lb._check_run_json(run, spec)
        if (run / "summary.json").exists():
            log(f"[{i + 1}/{len(plan)}] {st} {r.label} seed {seed}: done")
            continue
        log(f"[{i + 1}/{len(plan)}] {st} {r.label} seed {seed} ({m.loss} {m.params}, lmbda {r.lmbda})")
        model = lb._model(cfg, cfg["students"][st], data, 1000 + seed).to(dev)
        opt = torch.optim.AdamW(model.parameters(), lr=float(s["lr"]), betas=(0.9, 0.95),
                                weight_decay=float(s.get("weight_decay", 0.1)))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lb._lr_lambda(steps, int(s.get("warmup", 50))))
        ids = torch.cat([lb._batch(inputs.train_stream, seq_len, batch, seed, k) for k in range(steps)])
        curve = _Curve(model, inputs.curve_windows, batch, eval_every, steps, log)
        args = GKDConfig(
            output_dir=str(run / "trainer"), max_steps=steps, per_device_train_batch_size=batch,
            learning_rate=float(s["lr"]), lmbda=r.lmbda, seq_kd=False, max_new_tokens=seq_len - prompt_tokens,
            temperature=1.0, max_grad_norm=1.0, logging_steps=eval_every, report_to=[],
            use_cpu=dev.type == "cpu", save_strategy="no", disable_tqdm=True, seed=seed,
            dataloader_num_workers=0)
        dataset = datasets.Dataset.from_dict({"ids": ids.tolist()})
        trainer = _SequentialGKD(model=model, teacher_model=inputs.teacher, args=args,
                                 processing_class=hf_tok, data_collator=_collator(prompt_tokens),
                                 train_dataset=dataset, optimizers=(opt, sched), callbacks=[curve],
                                 loss=m.loss, loss_params=m.params)
        t0 = time.perf_counter()
        trainer.train()
        wall = time.perf_counter() - t0
        metrics = lb.held_out_metrics(cfg, model, inputs)
        row = {**spec, "display": r.display, "trial": "", "image_defaults": False, "metrics": metrics,
               "wall_s": wall, "curve": curve.points(), "threads": torch.get_num_threads(),
               "device": lb._device_name(dev), "generations": trainer.generations}
        lb._atomic_json(run / "summary.json", row)
        log(f"  ppl {metrics['perplexity']:.2f} acc {metrics['accuracy']:.4f} "
            f"agree {metrics['agreement']:.4f} ece {metrics['ece']:.4f} "
            f"({wall:.0f} s, {trainer.generations} on-policy steps)")
        lb.write_results(results, STAGE, lb.finished_runs(work / STAGE), inputs.ref["metrics"])
    done = lb.finished_runs(work / STAGE)
    if done:
        lb.write_results(results, STAGE, done, inputs.ref["metrics"])
        if img_dir is not None:
            lb.plot_stage(results, STAGE, Path(img_dir))
    return done


class _Curve(TrainerCallback):
    """Validation perplexity every ``every`` steps (and at the end), with the logged loss."""

    def __init__(self, model: torch.nn.Module, wins: torch.Tensor, batch: int, every: int, steps: int,
                 log: lb.Log) -> None:
        self.model, self.wins, self.batch, self.log = model, wins, batch, log
        self.every, self.steps = every, steps
        self.curve: list[dict[str, Any]] = []
        self.logged: dict[int, float] = {}

    def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kw: Any) -> None:
        if logs and "loss" in logs:
            self.logged[int(state.global_step)] = float(logs["loss"])

    def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        k = int(state.global_step)
        if k % self.every == 0 or k == self.steps:
            metrics, _ = evaluate_lm(self.model, self.wins, batch_size=self.batch)
            self.curve.append({"step": k, "val_perplexity": metrics["perplexity"]})
            self.log(f"  step {k}/{self.steps} val ppl {metrics['perplexity']:.2f}")

    def points(self) -> list[dict[str, Any]]:
        return [{**p, **({"loss": self.logged[p["step"]]} if p["step"] in self.logged else {})}
                for p in self.curve]


class _SequentialGKD(GKDDistillationTrainer):
    """GKD on the benchmark's batches in their order, counting its on-policy (generating) steps."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.generations = 0

    def _get_train_sampler(self, *args: Any, **kwargs: Any) -> Any:
        return SequentialSampler(self.train_dataset)

    def generate_on_policy_outputs(self, model: Any, inputs: Any, generation_config: Any) -> Any:  # type: ignore[override]
        self.generations += 1
        return GKDDistillationTrainer.generate_on_policy_outputs(model, inputs, generation_config)
