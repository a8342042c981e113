"""Run one ``lud lm-bench`` student stage as several processes at a time, under a deadline.

    .venv/bin/python scripts/lm_bench_parallel.py test --config stdlib_bpe8k_long --device cuda \
        --jobs 8 --deadline 480 --work-dir runs/lm --results-dir benchmarks/lm-long \
        --img-dir docs/img/lm-long

Each (seed, student, method) of the stage is one job: ``python -m lud lm-bench STAGE --methods M
--students S --seeds K`` (all jobs share the work and results folders; the runner writes its
tables atomically after every finished run). Jobs start in the order seed, student, method, so a
deadline leaves whole seeds rather than whole methods undone. At the deadline the running jobs
are stopped (their ``last.pt`` checkpoints stay: rerun the same command to resume them), and the
tables and plots are rewritten from every finished run (``--report-only``). Small models leave a
GPU mostly idle between kernel launches; several processes fill it. Wall times in the tables are
then per-process times on a shared device.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from lud.experiments.lm_bench import _plan, _stage_settings, load_lm_config, methods_of  # noqa: E402


def jobs_of(cfg: dict, stage: str, methods: list[str] | None, students: list[str] | None,
            seeds: list[int] | None) -> list[tuple[int, str, str]]:
    """``(seed, student, method)`` of the runner's plan (trials run inside one job), seed first."""
    labels = methods or _stage_settings(cfg, stage).get("methods")
    plan = _plan(cfg, stage, methods_of(cfg, labels), students, seeds)
    jobs = dict.fromkeys((seed, st, m.label) for st, m, seed, _trial in plan)
    return sorted(jobs, key=lambda job: job[0])  # stable: students and methods in plan order


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("stage", choices=("screen", "tune", "test"))
    p.add_argument("--config", default="stdlib_bpe8k")
    p.add_argument("--device", default="cpu")
    p.add_argument("--jobs", type=int, default=2, help="processes at a time")
    p.add_argument("--deadline", type=float, default=None, help="seconds; then stop and report")
    p.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of each job")
    p.add_argument("--work-dir", default="runs/lm")
    p.add_argument("--results-dir", default="benchmarks/lm")
    p.add_argument("--img-dir", default=None)
    p.add_argument("--log-dir", default=None, help="one log per job (default: <work-dir>/logs)")
    p.add_argument("--methods")
    p.add_argument("--students")
    p.add_argument("--seeds")
    a = p.parse_args(argv)

    def split(text: str | None) -> list[str] | None:
        return None if text is None else [t for t in text.split(",") if t]

    cfg = load_lm_config(a.config)
    seeds = split(a.seeds)
    todo = jobs_of(cfg, a.stage, split(a.methods), split(a.students),
                   None if seeds is None else [int(x) for x in seeds])
    logs = Path(a.log_dir or Path(a.work_dir) / "logs")
    logs.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(a.threads), "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join(x for x in (str(ROOT / "src"), os.environ.get("PYTHONPATH")) if x)}
    t0 = time.monotonic()
    running: dict[subprocess.Popen, tuple[tuple[int, str, str], float]] = {}
    done: list[tuple[tuple[int, str, str], int, float]] = []
    queue = list(todo)
    print(f"{len(queue)} jobs, {a.jobs} at a time, deadline {a.deadline} s", flush=True)
    while queue or running:
        late = a.deadline is not None and time.monotonic() - t0 > a.deadline
        if late:
            queue.clear()  # nothing new starts after the deadline
        while queue and len(running) < a.jobs:
            seed, st, m = job = queue.pop(0)
            cmd = [sys.executable, "-m", "lud", "lm-bench", a.stage, "--config", a.config,
                   "--device", a.device, "--work-dir", a.work_dir, "--results-dir", a.results_dir,
                   "--img-dir", str(logs / "img"), "--methods", m, "--students", st, "--seeds", str(seed)]
            out = open(logs / f"{a.stage}-{st}-{m}-seed{seed}.log", "w")  # noqa: SIM115 - closed by the child's exit
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
            running[proc] = (job, time.monotonic())
        if late and running:
            print(f"deadline: stopping {len(running)} running job(s)", flush=True)
            for proc in running:
                proc.terminate()
            for proc, (job, start) in running.items():
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                done.append((job, -1, time.monotonic() - start))
            running.clear()
        for proc in [q for q in running if q.poll() is not None]:
            job, start = running.pop(proc)
            done.append((job, proc.returncode, time.monotonic() - start))
            print(f"[{time.monotonic() - t0:6.0f} s] seed {job[0]} {job[1]} {job[2]}: rc {proc.returncode} "
                  f"({done[-1][2]:.0f} s)", flush=True)
        time.sleep(0.5)
    print(f"jobs finished in {time.monotonic() - t0:.0f} s; writing the tables", flush=True)
    report = [sys.executable, "-m", "lud", "lm-bench", a.stage, "--config", a.config, "--report-only",
              "--work-dir", a.work_dir, "--results-dir", a.results_dir,
              "--img-dir", a.img_dir or str(logs / "img"),
              "--methods", ",".join(dict.fromkeys(j[2] for j in todo)),
              "--students", ",".join(dict.fromkeys(j[1] for j in todo))]
    rc = subprocess.call(report, env=env)
    failed = [j for j, code, _ in done if code != 0]
    print(f"{len(done) - len(failed)} jobs ok, {len(failed)} failed or stopped: {failed}", flush=True)
    return 1 if rc or any(code > 0 for _, code, _ in done) else 0


if __name__ == "__main__":
    sys.exit(main())
