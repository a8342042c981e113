"""Training-time costs of two switches: the second (strong) view, and the gradient-norm probe.

Run (from the repository root; OMP_NUM_THREADS=2):

    python scripts/bench_train_costs.py views [--reps 3] [--out /tmp/lud_costs]
    python scripts/bench_train_costs.py probe --teacher PATH/TO/fashion_pairs-ce-cnn_large/best.pt

Each setting is trained as ``--reps`` one-epoch runs, the settings alternating, and the medians
are printed (on a shared machine the load drifts; alternating spreads it over the settings).

``views``: MLKD, student ``cnn_small`` (live ``cnn_small`` teacher trained here 1 epoch), on a
generated CIFAR-format set (10 classes, 1024 training images 3×32×32, batch 64, crop/flip), one
view vs two views (``data.strong_augment: {num_ops: 2, magnitude: 10}``, ``two_views: true``):
``time/images_per_s``.

``view-steps``: the same two settings built once in one process, their training steps
(augmentation, both networks, loss, backward, update) alternating one by one, one thread: the
median milliseconds per step. The steadiest comparison on a loaded machine.

``probe-steps``: the probe config below as one run, the probe switched off and on (N = 1) on
alternating steps, one thread: median milliseconds per step; N = 10 derived as a tenth of the
difference.

``probe``: the packaged ``fashion_pairs/lud/cnn_large_mlp_tiny`` config (LUD, 100 classes,
teacher logits cached, batch 128), made smaller to fit the time on a shared machine (60 training
pairs per class: 5,400 training images after the 10 % validation split, 42 steps per epoch), with
``runtime.grad_norms_every`` 0 (off), 10 and 1: ``time/epoch_s``.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
from pathlib import Path
from typing import Any

from lud.config import config_from_dict, load_config, resolve_config
from lud.data import write_cifar_like
from lud.engine import train
from lud.engine.runlog import read_metrics

RUNTIME = {"progress": False, "tensorboard": False, "log_every": 1000}


def _epochs(run_dir: Path, key: str) -> list[float]:
    return [float(r[key]) for r in read_metrics(run_dir / "metrics.jsonl")]


def _interleaved(settings: dict[str, Any], reps: int, key: str) -> None:
    """Train one 1-epoch run per setting, ``reps`` rounds, the settings alternating within each
    round (so a change in the machine's load hits every setting alike); print the medians."""
    got: dict[str, list[float]] = {label: [] for label in settings}
    for rep in range(reps):
        for label, make in settings.items():
            run_dir = make(f"{label.replace(' ', '_').replace('=', '')}_{rep}")
            got[label] += _epochs(run_dir, key)
    base = statistics.median(next(iter(got.values())))
    for label, values in got.items():
        med = statistics.median(values)
        print(f"{label}: {key} {[round(v, 2) for v in values]}, median {med:.2f} "
              f"({med / base:.2f}x the first)", flush=True)


def _views_setup(out: Path) -> tuple[dict[str, Any], dict[str, str]]:
    """CIFAR-format data, the base config of the view benchmarks and a teacher trained on it."""
    write_cifar_like(out / "data", num_classes=10, n_train=1024, n_test=128, seed=0)
    base: dict[str, Any] = {
        "experiment": {"output_dir": str(out / "runs"), "seed": 0},
        "data": {"name": "cifar10", "root": str(out / "data"), "batch_size": 64,
                 "eval_batch_size": 256, "augment": "cifar"},
        "model": {"name": "cnn_small"},
        "solver": {"epochs": 1, "lr": 0.05, "schedule": "constant"},
        "runtime": RUNTIME,
    }
    train(config_from_dict({**base, "experiment": {**base["experiment"], "name": "teacher"}}))
    teacher = {"name": "cnn_small", "checkpoint": str(out / "runs" / "teacher" / "best.pt")}
    return base, teacher


def views(out: Path, reps: int) -> None:
    base, teacher = _views_setup(out)

    def setting(params: dict[str, Any], strong: dict[str, int] | None) -> Any:
        def make(name: str) -> Path:
            raw = {**base, "experiment": {**base["experiment"], "name": name},
                   "teacher": teacher, "loss": {"name": "mlkd", "params": params},
                   "data": {**base["data"], "strong_augment": strong}}
            train(config_from_dict(raw))
            return out / "runs" / name
        return make

    _interleaved({"mlkd one view": setting({}, None),
                  "mlkd two views": setting({"two_views": True},
                                            {"num_ops": 2, "magnitude": 10})},
                 reps, "time/images_per_s")


def view_steps(out: Path, steps: int) -> None:
    """One view vs two views, step by step: both runs built once, their training steps
    alternating (A, B, A, B, ...), so load changes hit both alike; median seconds per step."""
    import time

    import torch

    from lud.engine.build import Run
    from lud.engine.seeding import make_generator
    from lud.engine.step import augment_views, train_step

    torch.set_num_threads(1)  # the steadiest figure on a shared machine
    base, teacher = _views_setup(out)
    runs = {}
    for label, params, strong in (("one view", {}, None),
                                  ("two views", {"two_views": True},
                                   {"num_ops": 2, "magnitude": 10})):
        raw = {**base, "experiment": {**base["experiment"], "name": label.replace(" ", "_")},
               "teacher": teacher, "loss": {"name": "mlkd", "params": params},
               "data": {**base["data"], "strong_augment": strong}}
        run = Run(config_from_dict(raw), resume=False)
        run.model.train()
        runs[label] = (run, make_generator(run.ctx.device, 0, 0, 0), iter(run.train_loader))
    times: dict[str, list[float]] = {label: [] for label in runs}
    for i in range(steps + 3):  # 3 warm-up steps each
        for label, (run, gen, batches) in runs.items():
            try:
                images, labels = next(batches)
            except StopIteration:
                batches = iter(run.train_loader)
                runs[label] = (run, gen, batches)
                images, labels = next(batches)
            t0 = time.perf_counter()
            x, x2 = augment_views(run, images, gen)
            first_bad = torch.full((), -1, dtype=torch.long)
            train_step(run, x, None, labels, 0, i % run.steps, first_bad, x2)
            if i >= 3:
                times[label].append(time.perf_counter() - t0)
    base_ms = 1e3 * statistics.median(times["one view"])
    for label, ts in times.items():
        ms = 1e3 * statistics.median(ts)
        q1, q3 = (1e3 * q for q in statistics.quantiles(ts, n=4)[::2])
        print(f"mlkd {label}: median {ms:.1f} ms per 64-image step (quartiles {q1:.1f}–{q3:.1f}), "
              f"{64e3 / ms:.0f} images/s, {ms / base_ms:.2f}x one view", flush=True)
    for run, _, _ in runs.values():
        run.ctx.close()


def probe_steps(out: Path, steps: int, teacher: str) -> None:
    """The probe toggled step by step in one run (off, on, off, on, ...), one thread: median
    milliseconds per step without and with it; N = 10 costs a tenth of the difference."""
    import time

    import torch

    from lud.engine.build import Run
    from lud.engine.step import train_step

    torch.set_num_threads(1)
    cfg = load_config(resolve_config("fashion_pairs/lud/cnn_large_mlp_tiny"), [
        "experiment.name=probe_steps", f"experiment.output_dir={out}/runs",
        f"teacher.checkpoint={teacher}", "data.options.train_per_class=60",
        "data.options.test_per_class=20", "runtime.progress=false", "runtime.tensorboard=false"])
    run = Run(cfg, resume=False)
    run.model.train()
    order = run.train_loader.indices()
    bs = run.train_loader.batch_size
    times: dict[int, list[float]] = {0: [], 1: []}
    batches = iter(run.train_loader)
    for i in range(2 * (steps + 3)):
        step = i % run.steps
        if step == 0:
            batches = iter(run.train_loader)
        images, labels = next(batches)
        every = i % 2
        run.cfg.runtime.grad_norms_every = every
        t0 = time.perf_counter()
        x = run.train_tf(images)
        t_logits = run.cache.lookup(order[step * bs: step * bs + labels.shape[0]], run.ctx.device)
        train_step(run, x, t_logits, labels, 0, step, torch.full((), -1, dtype=torch.long))
        if i >= 6:
            times[every].append(time.perf_counter() - t0)
        assert (run.grad_norms is not None) == bool(every)
    off, on = (1e3 * statistics.median(times[k]) for k in (0, 1))
    for label, ms in (("off", off), ("N=10 (derived)", off + (on - off) / 10), ("N=1", on)):
        print(f"lud grad_norms_every {label}: {ms:.1f} ms per 128-image step, {ms / off:.2f}x off",
              flush=True)
    q = {k: [1e3 * v for v in statistics.quantiles(times[k], n=4)[::2]] for k in times}
    print(f"quartiles: off {q[0][0]:.1f}–{q[0][1]:.1f} ms, N=1 {q[1][0]:.1f}–{q[1][1]:.1f} ms")
    run.ctx.close()


def probe(out: Path, reps: int, teacher: str) -> None:
    path = resolve_config("fashion_pairs/lud/cnn_large_mlp_tiny")

    def setting(every: int) -> Any:
        def make(name: str) -> Path:
            train(load_config(path, [
                f"experiment.name={name}", f"experiment.output_dir={out}/runs",
                f"teacher.checkpoint={teacher}", "solver.epochs=1", "solver.warmup_epochs=0",
                "data.options.train_per_class=60", "data.options.test_per_class=20",
                f"runtime.grad_norms_every={every}", "runtime.progress=false",
                "runtime.tensorboard=false", "runtime.log_every=1000"]))
            return out / "runs" / name
        return make

    _interleaved({f"lud grad_norms_every={n}": setting(n) for n in (0, 10, 1)},
                 reps, "time/epoch_s")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("what", choices=("views", "view-steps", "probe", "probe-steps"))
    p.add_argument("--steps", type=int, default=40, help="view-steps: timed steps per setting")
    p.add_argument("--reps", type=int, default=3, help="1-epoch runs per setting")
    p.add_argument("--out", type=Path, default=Path("/tmp/lud_costs"))
    p.add_argument("--teacher", default="runs/fashion_pairs-ce-cnn_large/best.pt")
    a = p.parse_args()
    out = a.out / a.what
    shutil.rmtree(out, ignore_errors=True)
    if a.what == "views":
        views(out, a.reps)
    elif a.what == "view-steps":
        view_steps(out, a.steps)
    elif a.what == "probe-steps":
        probe_steps(out, a.steps, a.teacher)
    else:
        probe(out, a.reps, a.teacher)


if __name__ == "__main__":
    main()
