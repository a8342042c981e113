"""The language-model benchmark: split by document, metrics on hand-made logits, resuming, the CLI."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

from conftest import lm_config as _config  # noqa: E402
from conftest import lm_corpus as _corpus  # noqa: E402

from lud.data.text import build_text_data, list_documents, split_documents  # noqa: E402
from lud.experiments import lm_bench  # noqa: E402
from lud.experiments.lm_metrics import token_metrics  # noqa: E402


def test_split_is_by_document_disjoint_and_deterministic(tmp_path: Path) -> None:
    corpus = _corpus(tmp_path / "corpus")
    files = list_documents(corpus)
    assert "tests/mod5.py" not in files and "notes.txt" not in files  # test folders and other files out
    assert len(files) == 11
    a = split_documents(files, seed=0, fractions=(0.2, 0.2))
    b = split_documents(list(reversed(files)), seed=0, fractions=(0.2, 0.2))
    assert a == b
    assert split_documents(files, seed=1, fractions=(0.2, 0.2)) != a
    sets = [set(a[s]) for s in ("train", "validation", "test")]
    assert sum(map(len, sets)) == len(files) and set().union(*sets) == set(files)
    assert not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])

    d1 = build_text_data(tmp_path / "d1", root=corpus, vocab_size=300, fractions=(0.2, 0.2))
    d2 = build_text_data(tmp_path / "d2", root=corpus, vocab_size=300, fractions=(0.2, 0.2))
    for split in ("train", "validation", "test"):
        assert torch.equal(d1.tokens(split), d2.tokens(split))
        assert d1.meta["splits"][split] == d2.meta["splits"][split]
        assert (tmp_path / "d1" / f"{split}_files.txt").read_text().split() == a[split]
    # every document ends with the end-of-text token
    assert int((d1.tokens("validation") == d1.eos_id).sum()) == len(a["validation"])
    # cached: not rebuilt; other settings in the same folder refused
    stamp = (tmp_path / "d1" / "train.pt").stat().st_mtime_ns
    build_text_data(tmp_path / "d1", root=corpus, vocab_size=300, fractions=(0.2, 0.2))
    assert (tmp_path / "d1" / "train.pt").stat().st_mtime_ns == stamp
    with pytest.raises(ValueError, match="vocab_size"):
        build_text_data(tmp_path / "d1", root=corpus, vocab_size=280, fractions=(0.2, 0.2))


def test_metrics_on_hand_made_logits() -> None:
    # 4 tokens, 3 classes; argmax = [0, 1, 2, 0]
    probs = [[0.72, 0.18, 0.10], [0.07, 0.63, 0.30], [0.20, 0.15, 0.65], [0.45, 0.35, 0.20]]
    logits = torch.log(torch.tensor(probs)) + 3.0  # any shift: softmax gives the probabilities back
    targets = torch.tensor([0, 2, 2, 1])
    teacher = torch.tensor([0, 1, 1, 1])
    m = token_metrics(logits, targets, teacher, n_bins=10)
    assert m["accuracy"] == pytest.approx(2 / 4)
    assert m["agreement"] == pytest.approx(2 / 4)
    nll = -(math.log(0.72) + math.log(0.30) + math.log(0.65) + math.log(0.35)) / 4
    assert m["perplexity"] == pytest.approx(math.exp(nll), rel=1e-6)
    # bins of width 0.1 (confidences away from the edges): 0.72 -> (0.7, 0.8], correct;
    # 0.63 (wrong) and 0.65 (correct) -> (0.6, 0.7]; 0.45 -> (0.4, 0.5], wrong
    ece = (abs(0.72 - 1) + abs(0.63 + 0.65 - 1) + abs(0.45 - 0)) / 4
    assert m["ece"] == pytest.approx(ece, abs=1e-6)


def _run(stage: str, cfg: Path, tmp: Path, **kw: object) -> object:
    return lm_bench.run_stage(
        stage,
        cfg,
        work_dir=tmp / "work",
        results_dir=tmp / "results",
        img_dir=None,
        log=lambda _m: None,
        **kw,
    )


def test_stages_resume_after_a_kill_without_redoing_finished_runs(tmp_path: Path) -> None:
    cfg = _config(tmp_path, _corpus(tmp_path / "corpus"))
    assert _run("teacher", cfg, tmp_path, stop_after=3) is None  # "killed" after 3 of 6 steps
    assert (tmp_path / "work" / "teacher" / "last.pt").exists()
    assert not (tmp_path / "work" / "teacher" / "summary.json").exists()
    summary = _run("teacher", cfg, tmp_path)
    assert summary is not None and [c["step"] for c in summary["curve"]] == [3, 6]
    # the resumed teacher is the uninterrupted one, weight for weight
    other = tmp_path / "other"
    lm_bench.run_stage(
        "teacher", cfg, work_dir=other / "work", results_dir=other / "results", log=lambda _m: None
    )
    a = torch.load(tmp_path / "work" / "teacher" / "teacher.pt", weights_only=True)
    b = torch.load(other / "work" / "teacher" / "teacher.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)

    # screen: ce finishes, fkl is killed after 2 of 4 steps
    rows = _run("screen", cfg, tmp_path, methods=["ce", "fkl"], stop_after=2)
    assert [r["method"] for r in rows] == []
    rows = _run("screen", cfg, tmp_path, methods=["ce", "fkl"], stop_after=2)  # ce resumes and ends
    ce_summary = tmp_path / "work" / "screen" / "tiny" / "ce" / "seed0" / "summary.json"
    assert ce_summary.exists() and [r["method"] for r in rows] == ["ce"]
    stamp = ce_summary.stat().st_mtime_ns
    # a corrupt checkpoint (a kill mid-write of an old version) restarts cleanly
    fkl_run = tmp_path / "work" / "screen" / "tiny" / "fkl" / "seed0"
    assert (fkl_run / "last.pt").exists()  # the fkl run was stopped after 2 of its 4 steps
    (fkl_run / "last.pt").write_bytes(b"garbage")
    messages: list[str] = []
    rows = lm_bench.run_stage(
        "screen",
        cfg,
        work_dir=tmp_path / "work",
        results_dir=tmp_path / "results",
        img_dir=None,
        log=messages.append,
        methods=["ce", "fkl"],
    )
    assert ce_summary.stat().st_mtime_ns == stamp  # finished: not redone
    assert any("ce" in m and "done" in m for m in messages)
    assert any("unreadable" in m for m in messages) and (fkl_run / "last.pt.bad").exists()
    assert [r["method"] for r in rows] == ["ce", "fkl"]
    for r in rows:
        assert set(r["metrics"]) >= {
            "perplexity",
            "accuracy",
            "agreement",
            "ece",
            "rougeL_ref",
            "rougeL_teacher",
        }
        assert all(math.isfinite(v) for v in r["metrics"].values())
    results = json.loads((tmp_path / "results" / "screen.json").read_text())
    assert [r["method"] for r in results["runs"]] == ["ce", "fkl"]
    assert "| fkl |" in (tmp_path / "results" / "screen.md").read_text()
    # other settings in the same run folder are refused, nothing is overwritten
    text = cfg.read_text().replace("steps: 4", "steps: 5")
    cfg.write_text(text)
    with pytest.raises(ValueError, match="other settings"):
        _run("screen", cfg, tmp_path, methods=["ce"])
    assert ce_summary.stat().st_mtime_ns == stamp
    # a config whose teacher is not the one trained in the folder is refused too
    cfg.write_text(text.replace("steps: 5", "steps: 4").replace("steps: 6", "steps: 7"))
    with pytest.raises(ValueError, match="the teacher in .* was trained with"):
        _run("screen", cfg, tmp_path, methods=["ce"])


def test_unknown_method_and_stage_are_value_errors(tmp_path: Path) -> None:
    cfg = _config(tmp_path, _corpus(tmp_path / "corpus"))
    with pytest.raises(ValueError, match="unknown stage"):
        _run("nope", cfg, tmp_path)
    with pytest.raises(ValueError, match="unknown method 'fkll'"):
        lm_bench.methods_of(lm_bench.load_lm_config(cfg), ["fkll"])
    with pytest.raises(ValueError, match="teacher"):
        _run("screen", cfg, tmp_path)  # no teacher yet


def test_packaged_config_names_registered_losses() -> None:
    cfg = lm_bench.load_lm_config(lm_bench.DEFAULT_CONFIG)
    methods = lm_bench.methods_of(cfg, None)
    assert {
        "ce",
        "fkl",
        "fkl-pure",
        "rkl",
        "gjsd",
        "skl",
        "srkl",
        "tvd",
        "kd",
        "dist",
        "lud",
        "lud-paper",
    } <= {m.label for m in methods}
    assert {m.label for m in methods if m.image_defaults} == {"kd", "dist"}
    for stage in ("screen", "tune", "test"):
        lm_bench._plan(cfg, stage, methods, None, None)  # every stage plans
    from lud.losses import build_loss

    trials = lm_bench._plan(cfg, "tune", methods, None, None)
    for _student, m, _seed, _trial in trials:
        build_loss(m.loss, **m.params)  # every tuning candidate names real parameters
    per_method = {m.label: sum(1 for t in trials if t[1].label == m.label) for m in methods}
    tuned = set(cfg["tune"]["candidates"])
    assert {n for label, n in per_method.items() if label in tuned} == {2}  # the same budget each
    assert {n for label, n in per_method.items() if label not in tuned} == {1}


@pytest.mark.slow
def test_cli_runs_a_tiny_benchmark_end_to_end(tmp_path: Path) -> None:
    cfg = _config(tmp_path, _corpus(tmp_path / "corpus"))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    src = str(next(p for p in Path(__file__).resolve().parents if (p / "pyproject.toml").is_file()) / "src")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    for stage in ("data", "teacher", "screen"):
        res = subprocess.run(
            [
                sys.executable,
                "-m",
                "lud",
                "lm-bench",
                stage,
                "--config",
                str(cfg),
                "--work-dir",
                str(tmp_path / "w"),
                "--results-dir",
                str(tmp_path / "r"),
                "--img-dir",
                str(tmp_path / "img"),
                "--methods",
                "ce,kd,lud",
            ],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert res.returncode == 0, res.stderr[-3000:]
    assert json.loads((tmp_path / "r" / "data.json").read_text())["splits"]["train"]["documents"] == 7
    assert (tmp_path / "r" / "teacher.json").exists()
    table = (tmp_path / "r" / "screen.md").read_text()
    assert "kd (image defaults)" in table and "| lud |" in table
    assert (tmp_path / "img" / "screen_tiny_perplexity.png").exists()
    assert (tmp_path / "img" / "screen_tiny_lud_stats.png").exists()
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "lud",
            "lm-bench",
            "screen",
            "--config",
            str(cfg),
            "--methods",
            "nope",
            "--work-dir",
            str(tmp_path / "w"),
            "--results-dir",
            str(tmp_path / "r2"),
        ],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 2 and "unknown method 'nope'" in res.stderr
    assert not (tmp_path / "r2").exists()


def test_tune_trials_and_test_use_the_chosen_parameters(tmp_path: Path) -> None:
    import yaml

    cfg_path = _config(tmp_path, _corpus(tmp_path / "corpus"))
    cfg = yaml.safe_load(cfg_path.read_text())
    cfg["train"]["steps"] = 2
    cfg["tune"] = {"candidates": {"fkl": [{"ce_weight": 0.5}, {"ce_weight": 0.0}]}}
    cfg["test"] = {"params": {"fkl": {"ce_weight": 0.0}}}
    cfg["stages"]["test"] = {"students": ["tiny"], "seeds": [0, 1]}
    cfg_path.write_text(yaml.safe_dump(cfg))
    _run("teacher", cfg_path, tmp_path)
    rows = _run("tune", cfg_path, tmp_path, methods=["fkl"])
    assert [(r["trial"], r["params"]) for r in rows] == [
        ("trial0", {"ce_weight": 0.5}),
        ("trial1", {"ce_weight": 0.0}),
    ]
    assert "fkl trial1" in (tmp_path / "results" / "tune.md").read_text()
    rows = _run("test", cfg_path, tmp_path, methods=["fkl"])
    assert [(r["split"], r["seed"], r["params"]) for r in rows] == [
        ("test", 0, {"ce_weight": 0.0}),
        ("test", 1, {"ce_weight": 0.0}),
    ]
    assert " ± " in (tmp_path / "results" / "test.md").read_text()  # mean ± std over the 2 seeds


def test_top_k_teacher_row_and_gradient_probe(tmp_path: Path) -> None:
    import yaml

    cfg_path = _config(tmp_path, _corpus(tmp_path / "corpus"))
    cfg = yaml.safe_load(cfg_path.read_text())
    cfg["methods"]["fkl-top8"] = {"loss": "fkl", "teacher_top_k": 8}
    cfg["methods"]["fkl-topall"] = {"loss": "fkl", "teacher_top_k": 300}
    cfg_path.write_text(yaml.safe_dump(cfg))
    _run("teacher", cfg_path, tmp_path)
    rows = _run("screen", cfg_path, tmp_path, methods=["fkl", "fkl-top8", "fkl-topall"])
    by = {r["method"]: r for r in rows}
    assert by["fkl-top8"]["teacher_top_k"] == 8 and "teacher_top_k" not in by["fkl"]
    # the top-8 teacher is another teacher: another student; k = V is the dense teacher up to
    # the float16 rounding of the log-probs the cache stores
    assert by["fkl-top8"]["metrics"]["perplexity"] != by["fkl"]["metrics"]["perplexity"]
    assert by["fkl-topall"]["metrics"]["perplexity"] == pytest.approx(
        by["fkl"]["metrics"]["perplexity"], rel=1e-2)
    # the probe: per term, the gradient norm and its cosine with forward KL's, at every curve point
    for point in by["fkl"]["curve"]:
        assert point["cos_fkl/fkl"] == pytest.approx(1.0, abs=1e-4)  # fKL at T = 1 is the reference
        assert point["grad/fkl"] > 0 and point["grad/ce"] > 0
        assert -1.0 <= point["cos_total/ce"] <= 1.0
    with pytest.raises(ValueError, match="teacher_top_k"):
        lm_bench.methods_of({"methods": {"x": {"loss": "fkl", "teacher_top_k": 0}}}, None)


def test_probe_table_summarises_the_curve() -> None:
    curve = [
        {"step": 2, "grad/fkl_ref": 1.0, "grad/fkl": 0.5, "cos_fkl/fkl": 1.0, "cos_total/fkl": 0.5},
        {"step": 4, "grad/fkl_ref": 3.0, "grad/fkl": 1.5, "cos_fkl/fkl": 1.0, "cos_total/fkl": 0.7},
    ]
    row = {"student": "s", "method": "fkl", "display": "fkl", "trial": "", "seed": 0, "curve": curve}
    table = lm_bench.probe_table([row, {**row, "seed": 1}])
    assert table.count("| s | fkl | fkl |") == 1  # one line per method and term: the first seed
    assert "| 0.5 → 1.5 | +1.000 | +0.600 | 3 |" in table
    assert lm_bench.probe_table([{**row, "curve": [{"step": 2}]}]) == ""  # no probe: no table


def test_base_config_is_merged_key_by_key_and_loops_are_refused(tmp_path: Path) -> None:
    import yaml

    cfg = _config(tmp_path, _corpus(tmp_path / "corpus"))
    child = tmp_path / "long.yaml"
    child.write_text(yaml.safe_dump({"base": "lm.yaml", "train": {"steps": 9, "batch_size": 2},
                                     "stages": {"test": {"seeds": [0, 1]}}}))
    base, merged = lm_bench.load_lm_config(cfg), lm_bench.load_lm_config(child)
    assert merged["train"] == {**base["train"], "steps": 9, "batch_size": 2}
    assert merged["stages"]["screen"] == base["stages"]["screen"]
    assert merged["stages"]["test"] == {"seeds": [0, 1]}
    assert {k: v for k, v in merged.items() if k not in ("train", "stages")} == {
        k: v for k, v in base.items() if k not in ("train", "stages")}
    packaged = lm_bench.load_lm_config("stdlib_bpe8k_long")  # the packaged long-budget config
    assert packaged["methods"] == lm_bench.load_lm_config("stdlib_bpe8k")["methods"]
    assert packaged["train"]["steps"] * packaged["train"]["batch_size"] > 300 * 16
    loop = tmp_path / "loop.yaml"
    loop.write_text(yaml.safe_dump({"base": "loop.yaml"}))
    with pytest.raises(ValueError, match="'base' loops"):
        lm_bench.load_lm_config(loop)


def test_committed_results_are_restored_on_a_fresh_work_folder(tmp_path: Path) -> None:
    """A fresh machine: the results folder holds runs the work folder lacks; they are kept."""
    cfg = _config(tmp_path, _corpus(tmp_path / "corpus"))
    _run("teacher", cfg, tmp_path)
    _run("screen", cfg, tmp_path, methods=["ce"])
    fresh, third = tmp_path / "fresh", tmp_path / "third"
    for folder in (fresh, third):
        for name in ("data", "teacher"):  # what a new machine rebuilds (the same teacher)
            shutil.copytree(tmp_path / "work" / name, folder / name)
    messages: list[str] = []
    rows = lm_bench.run_stage("screen", cfg, work_dir=fresh, results_dir=tmp_path / "results",
                              log=messages.append, methods=["fkl"])
    assert [r["method"] for r in rows] == ["ce", "fkl"]  # ce restored, not retrained
    assert any("restored 1 finished run" in m for m in messages)
    assert not any("ce" in m and "seed 0 (" in m for m in messages)
    table = (tmp_path / "results" / "screen.md").read_text()
    assert "| ce |" in table and "| fkl |" in table
    # --report-only trains nothing and rewrites the same tables
    (tmp_path / "results" / "screen.md").unlink()
    rows = lm_bench.run_stage("screen", cfg, work_dir=fresh, results_dir=tmp_path / "results",
                              log=messages.append, methods=["kd"], train=False)
    assert [r["method"] for r in rows] == ["ce", "fkl"]
    assert not (fresh / "screen" / "tiny" / "kd").exists()
    assert (tmp_path / "results" / "screen.md").read_text() == table
    # results made with another teacher are refused, not silently dropped from the tables
    data = json.loads((tmp_path / "results" / "screen.json").read_text())
    data["runs"][0]["teacher"]["validation_perplexity"] += 1.0
    (tmp_path / "results" / "screen.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="made with another teacher"):
        lm_bench.run_stage("screen", cfg, work_dir=third, results_dir=tmp_path / "results",
                           log=messages.append, methods=["ce"])


def test_a_missing_cuda_device_is_a_value_error(tmp_path: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    cfg = _config(tmp_path, _corpus(tmp_path / "corpus"))
    with pytest.raises(ValueError, match="CUDA is not available"):
        lm_bench.run_stage("teacher", cfg, work_dir=tmp_path / "w", results_dir=tmp_path / "r", device="cuda")
