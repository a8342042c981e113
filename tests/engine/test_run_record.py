"""A run records the hyper-parameters it really used: resolved.yaml, summary.json, checkpoints;
resume and ``lud eval`` compare them with what the code builds today; ``lud config show``."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import torch
import yaml
from conftest import kd_project

import lud
from lud.cli import main
from lud.config import ConfigError, load_config, load_yaml, validate_config
from lud.engine import load_checkpoint
from lud.engine.checkpoint import save_checkpoint
from lud.losses import build_loss

torch.set_num_threads(1)
SOLVER = {"epochs": 2, "lr": 0.05, "schedule": "constant", "milestones": []}


@pytest.fixture(scope="module")
def proj(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return kd_project(tmp_path_factory.mktemp("record"), n_train=96, eval_batch_size=64, seed=1,
                      solver=SOLVER)


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_the_run_folder_records_the_resolved_parameters_and_the_version(proj: dict) -> None:
    run = proj["runs"] / "ref"
    kd = build_loss("kd").resolved_params()
    assert load_yaml((run / "config.yaml").read_text())["loss"]["params"] == {}  # as given
    text = (run / "resolved.yaml").read_text()
    assert text.startswith(f"# written by lud {lud.__version__}:")
    resolved = load_config(run / "resolved.yaml", validate=False)
    assert resolved.loss.name == "kd" and resolved.loss.params == kd
    summary = json.loads((run / "summary.json").read_text())
    assert summary["resolved_loss_params"] == kd and summary["lud_version"] == lud.__version__
    for name in ("last.pt", "best.pt"):
        ckpt = load_checkpoint(run / name)
        assert ckpt["resolved_loss_params"] == kd and ckpt["lud_version"] == lud.__version__


def _rewrite_last(run: Path, **changes: object) -> None:
    ckpt = load_checkpoint(run / "last.pt")
    for key, value in changes.items():
        if value is None:
            ckpt.pop(key, None)
        else:
            ckpt[key] = value
    ckpt.pop("digest", None)
    save_checkpoint(ckpt, run / "last.pt")


def test_resume_refuses_a_changed_default_unless_told(
    proj: dict, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = str(proj["config"])
    assert _cli(capsys, "train", cfg, "--name", "part", "--stop-after", "1")[0] == 0
    run = proj["runs"] / "part"
    # a checkpoint written by a version whose KD default temperature was 2
    old = {**build_loss("kd").resolved_params(), "temperature": 2.0}
    _rewrite_last(run, resolved_loss_params=old, lud_version="0.0.9")
    code, _, err = _cli(capsys, "train", cfg, "--name", "part", "--resume")
    assert code == 2
    assert "loss parameter 'temperature': recorded 2.0 (lud 0.0.9) vs now 4.0" in err
    assert "--allow-changed-params" in err
    assert load_checkpoint(run / "last.pt")["epoch"] == 1  # nothing written
    # keeping the checkpoint's value in the config resumes without a flag
    code, _, err = _cli(capsys, "train", cfg, "--name", "part", "--resume", "--stop-after", "1",
                        "loss.params.temperature=2.0")
    assert code == 0, err
    # told to go on with today's values
    code, _, err = _cli(capsys, "train", cfg, "--name", "part", "--resume", "--allow-changed-params")
    assert code == 0, err
    assert "resuming with a changed loss parameter 'temperature'" in err
    summary = json.loads((run / "summary.json").read_text())
    assert summary["completed"] and summary["resolved_loss_params"]["temperature"] == 4.0


def test_a_checkpoint_without_the_record_resumes_with_a_warning(
    proj: dict, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = str(proj["config"])
    assert _cli(capsys, "train", cfg, "--name", "old", "--stop-after", "1")[0] == 0
    _rewrite_last(proj["runs"] / "old", resolved_loss_params=None, lud_version="0.1.0")
    code, _, err = _cli(capsys, "train", cfg, "--name", "old", "--resume")
    assert code == 0, err
    assert "the checkpoint (lud 0.1.0) records no resolved loss parameters" in err


def test_eval_says_when_the_loss_would_differ_today(
    proj: dict, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    ckpt = load_checkpoint(proj["runs"] / "ref" / "best.pt")
    code, out, _ = _cli(capsys, "eval", str(proj["runs"] / "ref" / "best.pt"))
    assert code == 0 and "note:" not in out
    ckpt["resolved_loss_params"] = {**ckpt["resolved_loss_params"], "kd_weight": 0.5}
    ckpt["lud_version"] = "0.0.9"
    ckpt.pop("digest", None)
    save_checkpoint(ckpt, tmp_path / "old.pt")
    code, out, _ = _cli(capsys, "eval", str(tmp_path / "old.pt"))
    assert code == 0
    assert f"note: trained with lud 0.0.9, whose loss differs from what lud {lud.__version__}" in out
    assert "loss parameter 'kd_weight': recorded 0.5 (lud 0.0.9) vs now 0.9" in out
    code, out, _ = _cli(capsys, "eval", str(tmp_path / "old.pt"), "--json")
    assert json.loads(out)["changed_params"] == [
        f"loss parameter 'kd_weight': recorded 0.5 (lud 0.0.9) vs now 0.9 (lud {lud.__version__})"
    ]


def test_config_show_prints_every_loss_parameter(capsys: pytest.CaptureFixture[str]) -> None:
    name = "cifar100/lud-paper/resnet32x4_resnet8x4"
    code, out, _ = _cli(capsys, "config", "show", name, "loss.params.rank_warmup=3")
    assert code == 0
    assert out.startswith(f"# {name} resolved by lud {lud.__version__}")
    shown = yaml.safe_load(out)
    want = build_loss("lud-paper", rank_warmup=3).resolved_params()
    assert shown["loss"] == {"name": "lud-paper", "params": want}
    assert shown["solver"]["epochs"] == 240 and shown["teacher"]["name"] == "resnet32x4"
    code, _, err = _cli(capsys, "config", "show", name, "loss.params.rank_warmup=-1")
    assert code == 2 and "rank_warmup" in err
    code, _, err = _cli(capsys, "config", "show", "cifar100/lud/no_such_pair")
    assert code == 2 and "config file not found" in err


def _user_loss_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    (tmp_path / "my_run_losses.py").write_text(textwrap.dedent("""
        import torch.nn.functional as F

        from lud.losses import DistillationLoss


        class HalfKD(DistillationLoss):
            \"\"\"CE plus KL at one temperature.\"\"\"

            def __init__(self, temperature: float = 2.0, validate: bool = True) -> None:
                super().__init__(validate=validate)
                self.temperature = float(temperature)

            def compute(self, s, t, y, epoch):
                T = self.temperature
                kl = F.kl_div(F.log_softmax(s / T, 1), F.log_softmax(t / T, 1),
                              log_target=True, reduction="batchmean")
                return self.output({"ce": F.cross_entropy(s, y), "kd": T * T * kl})
        """))
    monkeypatch.syspath_prepend(str(tmp_path))
    return "my_run_losses:HalfKD"


def test_a_config_names_a_users_loss_by_import_path(
    proj: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _user_loss_module(tmp_path, monkeypatch)
    cfg = str(proj["config"])
    code, _, err = _cli(capsys, "train", cfg, "--name", "mine", f"loss.name={path}",
                        "loss.params.temperature=3", "solver.epochs=1")
    assert code == 0, err
    run = proj["runs"] / "mine"
    resolved = load_config(run / "resolved.yaml", validate=False)
    assert resolved.loss.name == path
    assert resolved.loss.params == {"temperature": 3.0, "validate": True}
    assert "train/term/kd" in (run / "metrics.jsonl").read_text()
    # bad paths: a clear error naming the problem, before any work
    base = load_config(proj["config"], validate=False)
    for name, fragment in [
        ("my_run_losses:Nope", "module 'my_run_losses' has no attribute 'Nope'"),
        ("no_such_module_q:Loss", "cannot import module 'no_such_module_q'"),
        ("torch.nn:Linear", "not a subclass of lud.losses.DistillationLoss"),
    ]:
        base.loss.name = name
        with pytest.raises(ConfigError, match="loss.name: ") as err:
            validate_config(base)
        assert fragment in str(err.value)


def test_bench_and_tune_tables_record_them(proj: dict, tmp_path: Path) -> None:
    import csv

    cfg = str(proj["config"])
    kd = build_loss("kd", temperature=3.0).resolved_params()
    out = tmp_path / "bench"
    assert main(["bench", cfg, "solver.epochs=1", "--methods", "kd", "--seeds", "0,",
                 "--method-params", "kd.temperature=3", "--output-dir", str(out)]) == 0
    rows = {r["label"]: r for r in csv.DictReader((out / "results.csv").open())}
    assert json.loads(rows["kd"]["resolved_params"]) == kd
    assert rows["kd"]["lud_version"] == lud.__version__
    (run,) = [r for r in csv.DictReader((out / "runs.csv").open()) if r["label"] == "kd"]
    assert json.loads(run["resolved_loss_params"]) == kd and run["lud_version"] == lud.__version__
    assert f"- kd (lud {lud.__version__}): `{json.dumps(kd)}`" in (out / "results.md").read_text()
    # a finished run whose loss was built otherwise (an older default) is not taken as done
    summary_path = out / "kd" / "seed0" / "summary.json"
    summary = json.loads(summary_path.read_text())
    summary["resolved_loss_params"]["kd_weight"], summary["lud_version"] = 0.5, "0.0.9"
    summary_path.write_text(json.dumps(summary))
    from lud.experiments.bench import plan_bench

    with pytest.raises(ValueError, match=r"loss parameter 'kd_weight': recorded 0.5 \(lud 0.0.9\)"):
        plan_bench(cfg, ["kd"], "0,", ["solver.epochs=1"], out, method_params=["kd.temperature=3"])

    grid = tmp_path / "grid.yaml"
    grid.write_text("kd: {temperature: [3.0]}\n")
    tune = tmp_path / "tune"
    assert main(["tune", cfg, "solver.epochs=1", "--grid", str(grid), "--output-dir", str(tune)]) == 0
    (trial,) = list(csv.DictReader((tune / "tuning.csv").open()))
    assert json.loads(trial["resolved_params"]) == kd and trial["lud_version"] == lud.__version__
    assert f"- kd (lud {lud.__version__}): `{json.dumps(kd)}`" in (tune / "tuning.md").read_text()
