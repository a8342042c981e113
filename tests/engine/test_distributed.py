"""Data-parallel training on CPU with gloo (lud.engine.distributed, DDP in the trainer, gather).

The multi-process parts launch this very file under ``torchrun --standalone --nproc_per_node=2``
(see :func:`_worker_main`): twice in all, to keep process start-up (~3 s per process on the
project's 2-core machine) within budget. References are computed in the pytest process with one
process and the same *global* batch.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

torch.set_num_threads(1)
pytestmark = pytest.mark.slow  # torchrun: two processes per run
HERE = Path(__file__).resolve()
TORCHRUN = Path(sys.executable).with_name("torchrun")
B, C, F = 8, 6, 5  # per-rank batch, classes, features of the loss-level gather test
WORLD = 2
TIMING = ("time/",)


# ----------------------------------------------------------------------------- shared helpers
def make_cfg(root: Path, name: str, **sections: dict[str, Any]) -> Any:
    """A tiny run on 10-class CIFAR-format data: 96 training and 75 test images (odd on
    purpose: the two evaluation shards are 38 and 37 images, padded to 38 each)."""
    from lud.config import config_from_dict

    raw: dict[str, Any] = {
        "experiment": {"name": name, "output_dir": str(root / "runs"), "seed": 5},
        "data": {
            "name": "cifar10",
            "root": str(root / "data"),
            "batch_size": 2 * B,
            "eval_batch_size": 32,
            "augment": "cifar",
        },
        "model": {"name": "mlp_tiny"},
        "solver": {"epochs": 2, "lr": 0.02, "schedule": "constant"},
        "runtime": {"progress": False, "tensorboard": False, "log_every": 2},
    }
    for key, value in sections.items():
        raw[key] = {**raw.get(key, {}), **value}
    return config_from_dict(raw)


def student(root: Path, name: str, loss: dict[str, Any], **sections: dict[str, Any]) -> Any:
    teacher = {"name": "mlp_tiny", "checkpoint": str(root / "runs" / "teacher" / "last.pt")}
    return make_cfg(root, name, teacher=teacher, loss=loss, **sections)


KD = {"name": "kd"}
# Hard ranks (the dynamic temperature's Spearman ρ, hard teacher ranks) are step functions: a
# 1e-7 difference between the logits of a batch-8 and a batch-16 forward can flip a near-tie and
# move the loss by 1e-3, which training then amplifies; sharp soft ranks amplify too. So: no
# hard ranks and smoother soft ranks here, so that a float tolerance applies. The batch
# statistics that `gather` is about (median masks, Gram rows, class confidences, weights) stay.
LUD_PARAMS = {"dynamic_temperature": "off", "teacher_rank": "soft", "rank_strength": 1.0}
LUD_GATHER = {"name": "lud", "params": {**LUD_PARAMS, "gather": True}}
LUD_LOCAL = {"name": "lud", "params": LUD_PARAMS}
SKIP = {"nonfinite": "skip", "log_every": 2}
# Two views (weak + RandAugment strong, two forward passes per step through DDP). MLKD reduced to
# per-sample terms (no masks, no class/batch Gram terms), so 2 × 8 = 1 × 16 holds exactly.
MLKD_2V = {"name": "mlkd", "params": {"two_views": True, "mask_mode": "none",
                                      "class_weight": 0.0, "batch_weight": 0.0}}
STRONG = {"strong_augment": {"num_ops": 2, "magnitude": 9}}
# Dropout draws from the global RNG: resuming must restore each rank's own stream.
DROPOUT_MODEL = {"name": "mlp", "kwargs": {"hidden": [32], "dropout": 0.3}}


def gather_inputs() -> tuple[torch.Tensor, ...]:
    """Global batch (rank r holds rows r·B .. (r+1)·B − 1) for the loss-level gather test."""
    g = torch.Generator().manual_seed(11)
    t = torch.randn(WORLD * B, C, generator=g) * 3
    s = t + torch.randn(WORLD * B, C, generator=g) * 2
    y = torch.randint(0, C, (WORLD * B,), generator=g)
    x = torch.randn(WORLD * B, F, generator=g)
    return s, t, y, x


def lud_loss(gather: bool) -> nn.Module:
    from lud.losses import build_loss

    return build_loss("lud", gather=gather)


def linear_model() -> nn.Module:
    torch.manual_seed(3)
    return nn.Linear(F, C)


class nan_input_at:  # noqa: N801 - used as a context manager, like a function
    """While active, the student's input is NaN at its ``call``-th training forward pass —
    on rank ``rank`` only, or on every process if ``rank`` is None (``runtime.nonfinite``)."""

    def __init__(self, call: int, rank: int | None) -> None:
        self.call, self.rank = call, rank

    def __enter__(self) -> None:
        import lud.models

        self.real = real = lud.models.build_model
        calls = [0]
        here = int(os.environ.get("RANK", "0"))

        def build(*a: Any, **kw: Any) -> nn.Module:
            model = real(*a, **kw)

            def pre(module: nn.Module, args: tuple[Any, ...]) -> Any:
                if not module.training:  # evaluation and the frozen teacher do not count
                    return None
                calls[0] += 1
                if calls[0] == self.call and self.rank in (None, here):
                    return (args[0] * float("nan"),)
                return None

            model.register_forward_pre_hook(pre)
            return model

        lud.models.build_model = build

    def __exit__(self, *exc: Any) -> None:
        import lud.models

        lud.models.build_model = self.real


# ----------------------------------------------------------------------------- worker (torchrun)
def _audit_writes(root: Path, log: list[str]) -> None:
    """Record every file-system write under ``root`` (open for writing, mkdir, rename, remove)."""
    prefix = str(root)
    events = ("open", "os.mkdir", "os.rename", "os.remove")

    def hook(event: str, args: tuple[Any, ...]) -> None:
        if event not in events:
            return
        if event == "open":
            path, mode, flags = args
            if isinstance(mode, str):
                writing = any(c in mode for c in "wax+")
            else:
                writing = bool(flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))
        else:
            path, writing = args[0], True
        if writing and isinstance(path, (str, os.PathLike)) and str(path).startswith(prefix):
            log.append(f"{event} {path}")

    sys.addaudithook(hook)


def _gather_checks(out: Path) -> None:
    """Loss-level: LUD with/without gather, and a DDP-wrapped linear model with gather."""
    import torch.distributed as dist

    from lud.engine.distributed import wrap_model

    r = dist.get_rank()
    s, t, y, x = gather_inputs()
    mine = slice(r * B, (r + 1) * B)
    res: dict[str, Any] = {}
    for gather in (True, False):
        z = s[mine].clone().requires_grad_(True)
        loss = lud_loss(gather)(z, t[mine], y[mine]).total
        loss.backward()
        res[f"loss_{gather}"], res[f"grad_{gather}"] = loss.detach(), z.grad
    model = wrap_model(linear_model(), torch.device("cpu"))
    logits = model(x[mine])
    lud_loss(True)(logits, t[mine], y[mine]).total.backward()
    res["param_grads"] = [p.grad.clone() for p in model.parameters()]
    rows = B - r  # unequal batches must fail loudly on every rank, not hang or mix rows
    try:
        lud_loss(True)(s[:rows], t[:rows], y[:rows])
        res["unequal_error"] = ""
    except ValueError as exc:
        res["unequal_error"] = str(exc)
    torch.save(res, out / f"gather_rank{r}.pt")


def _worker_main(argv: list[str]) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--root", type=Path, required=True)
    args = p.parse_args(argv)
    root: Path = args.root
    rank = int(os.environ["RANK"])
    writes: list[str] = []
    _audit_writes(root / "runs", writes)
    # One group for the whole worker, which train() then uses (and leaves alone): a group
    # destroyed and created again in one torchrun worker finds stale rendezvous keys.
    import torch.distributed as dist

    dist.init_process_group("gloo")
    _gather_checks(root)

    from lud.engine import train

    train(student(root, "kd_w2", KD, data={"batch_size": B}))
    lud_cfg = student(root, "lud_w2", LUD_GATHER, data={"batch_size": B})
    lud_cfg.runtime.data_on_device = True  # on CPU: the device-resident batching code path
    train(lud_cfg)
    train(student(root, "lud_w2_local", LUD_LOCAL, data={"batch_size": B}))
    train(student(root, "views_w2", MLKD_2V, data={"batch_size": B, **STRONG}))
    for name in ("drop_full", "drop_part"):
        cfg = student(root, name, KD, data={"batch_size": B}, model=DROPOUT_MODEL)
        train(cfg, stop_after=1 if name == "drop_part" else None)
    # A NaN on rank 1 alone: both ranks must skip the step together (else DDP hangs).
    with nan_input_at(3, rank=1):
        train(student(root, "skip_w2", KD, data={"batch_size": B}, runtime=SKIP))
    (root / f"writes_rank{rank}.json").write_text(json.dumps(writes))
    dist.destroy_process_group()
    from lud.engine.distributed import exit_worker

    exit_worker(0)  # as `lud train` under torchrun does: no abort at interpreter shutdown


def _child_env() -> dict[str, str]:
    """This environment, with ``tests/`` on PYTHONPATH: child processes import the same lud as
    this process (a PYTHONPATH given to pytest is kept) and can import this file."""
    path = os.pathsep.join(filter(None, [str(HERE.parent), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path}


def torchrun(*args: str, timeout: float = 150) -> str:
    """Run ``torchrun --standalone --nproc_per_node=2 ARGS``; its stdout+stderr.

    In its own session, so that a hang is ended by killing the launcher *and* its workers.
    """
    env = {**_child_env(), "OMP_NUM_THREADS": "1"}
    cmd = [str(TORCHRUN), "--standalone", f"--nproc_per_node={WORLD}", *args]
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"{' '.join(cmd)} hung for {timeout} s:\n{out[-4000:]}")
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{out[-6000:]}"
    return out


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Data, a teacher (1 process), the 2-process runs, and the 1-process references."""
    import yaml

    from lud.config import config_to_dict
    from lud.data import write_cifar_like
    from lud.engine import train

    root = tmp_path_factory.mktemp("ddp")
    write_cifar_like(root / "data", num_classes=10, n_train=96, n_test=75, seed=0)
    train(make_cfg(root, "teacher", loss={"name": "ce"}, solver={"epochs": 1}))
    torchrun(str(HERE), "--root", str(root))
    # The second half of drop_part, resumed from the command line in fresh processes.
    part = student(root, "drop_part", KD, data={"batch_size": B}, model=DROPOUT_MODEL)
    (root / "drop_part.yaml").write_text(yaml.safe_dump(config_to_dict(part)))
    torchrun("-m", "lud", "train", str(root / "drop_part.yaml"), "--resume")
    train(student(root, "kd_w1", KD))
    train(student(root, "lud_w1", LUD_GATHER))
    train(student(root, "views_w1", MLKD_2V, data=STRONG))
    with nan_input_at(3, rank=None):
        train(student(root, "skip_w1", KD, runtime=SKIP))
    return root


def _ckpt(root: Path, name: str) -> dict[str, Any]:
    from lud.engine import load_checkpoint

    return load_checkpoint(root / "runs" / name / "last.pt")


def _rel_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> dict[str, float]:
    """Per tensor ‖a − b‖ / ‖b‖."""
    return {k: float((a[k] - b[k]).norm() / b[k].norm().clamp_min(1e-12)) for k in b}


def _rows(root: Path, name: str) -> list[dict[str, Any]]:
    from lud.engine.runlog import read_metrics

    rows = read_metrics(root / "runs" / name / "metrics.jsonl")
    return [{k: v for k, v in r.items() if not k.startswith(TIMING)} for r in rows]


# ----------------------------------------------------------------------------- in-process units
def test_shard_size_matches_the_loader_padding() -> None:
    from lud.data.loader import epoch_indices
    from lud.engine.distributed import shard_size

    for n in range(1, 12):
        for w in range(1, 5):
            shards = [
                epoch_indices(n, shuffle=False, seed=0, epoch=0, rank=r, world_size=w).tolist()
                for r in range(w)
            ]
            kept = [s[: shard_size(n, r, w)] for r, s in enumerate(shards)]
            assert sorted(i for k in kept for i in k) == list(range(n)), (n, w)
    with pytest.raises(ValueError, match="rank"):
        shard_size(4, 2, 2)


def test_exit_worker_flushes_then_exits_with_the_code(tmp_path: Path) -> None:
    """exit_worker skips interpreter shutdown (no atexit), but nothing written is lost."""
    script = (
        "import atexit, logging, sys\n"
        "from lud.engine.distributed import exit_worker\n"
        f"h = logging.FileHandler({str(tmp_path / 'w.log')!r}); logging.getLogger('x').addHandler(h)\n"
        "logging.getLogger('x').warning('logged')\n"
        "atexit.register(lambda: print('atexit ran'))\n"
        "sys.stdout.write('no newline'); sys.stderr.write('err')\n"
        "exit_worker(3)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
        env=_child_env(),
    )
    assert proc.returncode == 3
    assert proc.stdout == "no newline" and proc.stderr == "err"  # buffered output flushed
    assert (tmp_path / "w.log").read_text() == "logged\n"


def test_single_process_helpers_are_identities() -> None:
    from lud.engine import distributed as d

    x = torch.randn(3, 2, requires_grad=True)
    assert d.gather_rows(x, differentiable=True) is x
    assert d.broadcast_object({"a": 1}) == {"a": 1} and d.gather_object(5) == [5]
    t = torch.ones(2)
    assert d.all_reduce_sum(t) is t and torch.equal(t, torch.ones(2))
    model = nn.Linear(2, 2)
    assert d.wrap_model(model, torch.device("cpu")) is model
    assert not d.is_distributed() and d.world_size() == 1 and d.rank() == 0


def test_evaluate_shards_plus_reduce_equal_one_pass() -> None:
    """Three simulated ranks: shard-local sums (padding dropped) summed = the whole split."""
    from lud.data import make_loader
    from lud.data.bundle import ArrayDataset
    from lud.engine import evaluate
    from lud.engine.distributed import shard_size

    g = torch.Generator().manual_seed(0)
    ds = ArrayDataset(
        torch.randint(0, 256, (10, 1, 4, 4), dtype=torch.uint8, generator=g),
        torch.randint(0, 3, (10,), generator=g),
    )
    from lud.data.augment import BatchTransform

    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    tf = BatchTransform([0.5], [0.25])
    full = evaluate(model, make_loader(ds, 4, shuffle=False), tf, "cpu")
    packed: list[torch.Tensor] = []

    def capture(t: torch.Tensor) -> torch.Tensor:
        packed.append(t.clone())
        return t

    w = 3
    loaders = [make_loader(ds, 3, shuffle=False, rank=r, world_size=w) for r in range(w)]
    for r, loader in enumerate(loaders):
        evaluate(model, loader, tf, "cpu", max_samples=shard_size(10, r, w), reduce=capture)
    total = torch.stack(packed).sum(0)
    for r, loader in enumerate(loaders):
        got = evaluate(
            model, loader, tf, "cpu", max_samples=shard_size(10, r, w), reduce=lambda t: total
        )
        assert got["n"] == 10
        assert (got["top1"], got["top5"]) == (full["top1"], full["top5"])  # counts: exact
        for k in ("nll", "loss", "ece"):  # float32 per-batch sums, other batch boundaries
            assert got[k] == pytest.approx(full[k], rel=1e-6), k
    # Without the de-duplication the two padded samples would be counted twice.
    assert sum(len(lo.indices()) for lo in loaders) == 12


def test_running_sums_reduce_sums_counts_not_means() -> None:
    from lud.engine import RunningSums

    ranks = [RunningSums(torch.device("cpu")) for _ in range(2)]
    ranks[0].add({"loss": torch.tensor(1.0)}, 3)
    ranks[1].add({"loss": torch.tensor(4.0)}, 1)
    vecs: list[torch.Tensor] = []
    for rs in ranks:
        rs.means(lambda t: vecs.append(t.clone()) or t)
    total = vecs[0] + vecs[1]
    assert ranks[1].means(lambda t: total) == {"loss": pytest.approx((3 * 1.0 + 4.0) / 4)}


def test_device_batches_follow_the_loader() -> None:
    from lud.data import make_loader
    from lud.data.bundle import ArrayDataset
    from lud.engine.runtime import DeviceBatches

    ds = ArrayDataset(torch.arange(7 * 2).to(torch.uint8).view(7, 1, 1, 2), torch.arange(7))
    for rank in (0, 1):
        loader = make_loader(ds, 2, shuffle=True, seed=4, rank=rank, world_size=2, drop_last=True)
        dev = DeviceBatches(loader, ds.images, ds.labels)
        for epoch in (0, 1):
            dev.set_epoch(epoch)
            ours, ref = list(dev), list(loader)
            assert len(ours) == len(ref) == len(dev) == 2
            for (a, b), (c, d) in zip(ours, ref):
                assert torch.equal(a, c) and torch.equal(b, d)


def test_setup_refuses_unusable_distributed_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    from lud.config import RuntimeConfig
    from lud.engine import setup_runtime

    launcher = {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "2"}
    for k, v in launcher.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ValueError, match="sync_bn needs CUDA"):
        setup_runtime(RuntimeConfig(device="cpu", sync_bn=True))
    with pytest.raises(ValueError, match="'nccl' needs CUDA"):
        setup_runtime(RuntimeConfig(device="cpu", dist_backend="nccl"))
    if torch.cuda.is_available():  # pragma: no cover - GPU machines only
        with pytest.raises(ValueError, match="one GPU"):
            setup_runtime(RuntimeConfig(device="cuda:0"))


def test_gather_option_type_checked() -> None:
    with pytest.raises(ValueError, match="gather must be a bool"):
        lud_loss("yes")  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- multi-process
def test_lud_gather_equals_one_process_on_the_global_batch(env: Path) -> None:
    s, t, y, x = gather_inputs()
    z = s.clone().requires_grad_(True)
    ref = lud_loss(False)(z, t, y).total
    ref.backward()
    assert z.grad is not None
    model = linear_model()
    lud_loss(False)(model(x), t, y).total.backward()
    for r in range(WORLD):
        got = torch.load(env / f"gather_rank{r}.pt", weights_only=True)
        mine = slice(r * B, (r + 1) * B)
        torch.testing.assert_close(got["loss_True"], ref.detach(), rtol=1e-6, atol=1e-7)
        # Each rank back-propagates its own copy of the global loss; the rows it owns receive
        # the sum over ranks, W × the single-process gradient (DDP's mean then removes the W).
        torch.testing.assert_close(got["grad_True"], WORLD * z.grad[mine], rtol=1e-5, atol=1e-7)
        # Per-rank statistics by default: the local loss is the loss of the local batch alone.
        zl = s[mine].clone().requires_grad_(True)
        local = lud_loss(False)(zl, t[mine], y[mine]).total
        local.backward()
        torch.testing.assert_close(got["loss_False"], local.detach(), rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(got["grad_False"], zl.grad, rtol=1e-5, atol=1e-7)
        assert not torch.allclose(got["loss_False"], ref.detach(), rtol=1e-3)  # it matters
        # DDP + gather: the parameter gradient of one process on the global batch.
        for g_ddp, p in zip(got["param_grads"], model.parameters()):
            torch.testing.assert_close(g_ddp, p.grad, rtol=1e-5, atol=1e-6)
        assert "same batch size on every rank, got [8, 7]" in got["unequal_error"]


@pytest.mark.parametrize(
    ("w2", "w1"),
    [("kd_w2", "kd_w1"), ("lud_w2", "lud_w1"), ("skip_w2", "skip_w1"),
     ("views_w2", "views_w1")],
)
def test_two_processes_equal_one_with_the_global_batch(env: Path, w2: str, w1: str) -> None:
    """batch 8 × 2 processes = batch 16 × 1 process: weights, training and test metrics.
    KD: per-sample loss; LUD with gather: batch statistics over the global batch (and the
    2-process LUD run cuts its batches from device-resident data); skip: runtime.nonfinite=skip
    with a NaN in one rank's half of step 3 skips that step on both ranks, as one process with
    the whole batch does; views: two-view MLKD, each rank training on its rows of the global
    batch's weak and strong views."""
    a, b = _ckpt(env, w2), _ckpt(env, w1)
    assert a["world_size"] == 2 and b["world_size"] == 1
    # Measured: KD 2e-7, LUD 3e-5 (its soft ranks amplify rounding over 12 steps); LUD without
    # gather (per-rank statistics) 0.2–0.8, so this tolerance separates right from wrong.
    assert max(_rel_diff(a["model"], b["model"]).values()) < 1e-3
    rows_a, rows_b = _rows(env, w2), _rows(env, w1)
    assert len(rows_a) == len(rows_b) == 2
    for ra, rb in zip(rows_a, rows_b):
        assert ra.keys() == rb.keys()
        for k, v in rb.items():
            if isinstance(v, float):
                assert ra[k] == pytest.approx(v, rel=1e-3, abs=1e-5), k
            else:
                assert ra[k] == v, k
    # 75 test images: the padded duplicate on rank 1 is not counted (top-1 is a multiple of 1/75).
    assert round(rows_a[-1]["test/top1"] * 75 / 100, 6).is_integer()
    if w2 == "skip_w2":
        assert [r["train/skipped_steps"] for r in rows_a] == [1, 0]


def test_lud_without_gather_is_not_the_global_batch_loss(env: Path) -> None:
    """The control for the test above: per-rank statistics train a different model."""
    diff = _rel_diff(_ckpt(env, "lud_w2_local")["model"], _ckpt(env, "lud_w1")["model"])
    assert max(diff.values()) > 1e-2


def test_resume_under_two_processes_equals_uninterrupted(env: Path) -> None:
    """stop after epoch 1, resume with `torchrun -m lud train --resume` (fresh processes): the
    same weights, optimizer state and metrics as the uninterrupted 2-process run, bit for bit.
    The model has dropout, so every rank must get back its own RNG stream."""
    a, b = _ckpt(env, "drop_full"), _ckpt(env, "drop_part")
    assert a["epoch"] == b["epoch"] == 2 and len(b["rng_ranks"]) == 2
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert _rows(env, "drop_full") == _rows(env, "drop_part")
    assert not torch.equal(a["rng_ranks"][0]["torch"], a["rng_ranks"][1]["torch"])


def test_only_rank_zero_writes(env: Path) -> None:
    w0 = json.loads((env / "writes_rank0.json").read_text())
    w1 = json.loads((env / "writes_rank1.json").read_text())
    assert any("last.pt" in w for w in w0) and any("metrics.jsonl" in w for w in w0)
    assert w1 == []


def test_resume_with_another_world_size_is_refused(env: Path) -> None:
    from lud.engine import RunFolderError, train

    with pytest.raises(RunFolderError, match="2 process"):
        train(student(env, "kd_w2", KD, data={"batch_size": B}), resume=True)


if __name__ == "__main__":  # a torchrun worker, see _worker_main
    _worker_main(sys.argv[1:])
