"""lud.integrations.lm_trl: the on- and off-policy rows of ``lud lm-bench`` through TRL's GKD.

Tiny corpus, teacher and student (``conftest.lm_config``). Off-policy rows never generate and
train on the runner's batches in order; on-policy rows score the student's own samples; the rows
land in ``trl.md``/``trl.json`` with the runner's metrics; a finished run is skipped; a bad row is
a ``ValueError`` naming it.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch
import yaml

pytest.importorskip("trl")
pytest.importorskip("transformers")
pytest.importorskip("tokenizers")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from conftest import lm_config, lm_corpus  # noqa: E402

from lud.experiments import lm_bench  # noqa: E402
from lud.integrations import lm_trl  # noqa: E402


def _trl_config(tmp: Path) -> Path:
    path = lm_config(tmp, lm_corpus(tmp / "corpus"))
    cfg = yaml.safe_load(path.read_text())
    cfg["methods"]["fkl-pure"] = {"loss": "fkl", "params": {"ce_weight": 0.0}}
    cfg["trl"] = {"students": ["tiny"], "seeds": [0], "prompt_tokens": 8,
                  "rows": {"off": {"method": "fkl-pure", "lmbda": 0.0},
                           "on": {"method": "fkl", "lmbda": 1.0, "params": {"ce_weight": 0.0}}}}
    path.write_text(yaml.safe_dump(cfg))
    return path


def _stage(cfg: Path, tmp: Path, **kw: object) -> list[dict]:
    return lm_trl.run_trl_stage(cfg, work_dir=tmp / "work", results_dir=tmp / "results", img_dir=None,
                                log=lambda _m: None, **kw)


def test_on_and_off_policy_rows_end_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = _trl_config(tmp_path)
    lm_bench.run_stage("teacher", cfg, work_dir=tmp_path / "work", results_dir=tmp_path / "results",
                       log=lambda _m: None)
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    original = lm_trl.GKDDistillationTrainer.compute_loss

    def spy(self, model, inputs, *a, **k):  # noqa: ANN001, ANN002, ANN003
        seen.append((inputs["input_ids"].clone(), inputs["labels"].clone()))
        return original(self, model, inputs, *a, **k)

    monkeypatch.setattr(lm_trl.GKDDistillationTrainer, "compute_loss", spy)
    rows = _stage(cfg, tmp_path, methods=["off"])
    # off-policy: the runner's batches, in order, the prompt never scored, no generation
    data = lm_bench.stage_data(lm_bench.load_lm_config(cfg), tmp_path / "work")
    train = lm_bench.load_lm_config(cfg)["train"]
    assert len(seen) == train["steps"]
    for step, (ids, labels) in enumerate(seen):
        assert torch.equal(ids, lm_bench._batch(data.tokens("train"), 16, train["batch_size"], 0, step))
        assert (labels[:, :8] == -100).all() and torch.equal(labels[:, 8:], ids[:, 8:])
    assert [r["method"] for r in rows] == ["off"] and rows[0]["generations"] == 0
    # on-policy: every step scores the student's own sample (not the dataset's completion)
    seen.clear()
    rows = _stage(cfg, tmp_path, methods=["on"])
    on = [r for r in rows if r["method"] == "on"][0]
    assert on["generations"] == train["steps"] == len(seen) and on["params"] == {"ce_weight": 0.0}
    batches = [lm_bench._batch(data.tokens("train"), 16, train["batch_size"], 0, k) for k in range(len(seen))]
    assert all(torch.equal(ids[:, :8], b[:, :8]) for (ids, _), b in zip(seen, batches, strict=True))
    assert not all(torch.equal(ids[:, 8:], b[:, 8:]) for (ids, _), b in zip(seen, batches, strict=True))
    for r in rows:
        assert r["display"].startswith(r["method"]) and "TRL GKD" in r["display"]
        assert all(math.isfinite(v) for v in r["metrics"].values())
        assert [c["step"] for c in r["curve"]] == [2, 4]
    results = json.loads((tmp_path / "results" / "trl.json").read_text())
    assert sorted(r["method"] for r in results["runs"]) == ["off", "on"]
    assert "on-policy λ=1" in (tmp_path / "results" / "trl.md").read_text()
    # a finished run is skipped
    summary = tmp_path / "work" / "trl" / "tiny" / "on" / "seed0" / "summary.json"
    stamp = summary.stat().st_mtime_ns
    seen.clear()
    _stage(cfg, tmp_path)
    assert seen == [] and summary.stat().st_mtime_ns == stamp


def test_bad_rows_are_value_errors(tmp_path: Path) -> None:
    cfg = lm_bench.load_lm_config(_trl_config(tmp_path))
    with pytest.raises(ValueError, match="unknown TRL row 'nope'"):
        lm_trl.trl_rows(cfg, ["nope"])
    cfg["trl"]["rows"]["bad"] = {"method": "fkl", "lmbda": 1.5}
    with pytest.raises(ValueError, match="'bad': lmbda must be a number in"):
        lm_trl.trl_rows(cfg, ["bad"])
    cfg["trl"]["rows"]["img"] = {"method": "kd", "lmbda": 0.0}
    with pytest.raises(ValueError, match="image defaults"):
        lm_trl.trl_rows(cfg, ["img"])
    cfg["trl"]["rows"]["x"] = {"method": "nope", "lmbda": 0.0}
    with pytest.raises(ValueError, match="unknown method 'nope'"):
        lm_trl.trl_rows(cfg, ["x"])
    del cfg["trl"]
    with pytest.raises(ValueError, match="no 'trl: rows:'"):
        lm_trl.trl_rows(cfg)
