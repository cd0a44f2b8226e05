"""The toy study, reduced, through the entry point and the analysis."""

from __future__ import annotations

import json
import math

import pytest
import yaml

from analysis.toy import toy_figures
from bench.run import run as launch
from tests.bench.test_toy import SMALL
from tests.conftest import SERIAL, compose, read_jsonl, run_cli, run_dirs


@pytest.mark.e2e
def test_reduced_study_writes_records_and_figures(tmp_path, one_thread):
    out = tmp_path / "runs"
    args = ["-m", "+experiment=balora_toy", "adapter=lora,balora", "toy.method=gd", "seed=0",
            *SMALL, SERIAL,
            f"out_dir={out}"]
    proc = run_cli(args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    dirs = run_dirs(out)
    assert [d.parent.name for d in dirs] == ["balora_toy"] * 2
    methods = {}
    for d in dirs:
        config = yaml.safe_load((d / "config.yaml").read_text())
        assert config["task"] == "toy" and config["meta"]["run_id"] == d.name
        assert config["adapter"]["alpha"] == config["adapter"]["r"] == config["toy"]["r"] == 4
        methods[config["meta"]["method"]] = d
        rows = read_jsonl(d / "metrics.jsonl")
        assert [row["step"] for row in rows] == list(range(21))
        for row in rows:
            assert row["toy/excess_q25"] <= row["toy/excess_median"] <= row["toy/excess_q75"]
        summary = json.loads((d / "summary.json").read_text())
        assert summary["status"] == "completed" and summary["error"] is None
        assert summary["steps"] == 20
        assert summary["final_excess_median"] == pytest.approx(rows[-1]["toy/excess_median"])
        toy = json.loads((d / "toy.json").read_text())
        assert toy["method"] == config["meta"]["method"] and toy["problems"] == [0, 1]
        assert len(toy["optimal_loss"]) == 2 and min(toy["optimal_loss"]) > 0
        assert len(toy["lr"]) == len(toy["excess"]) == len(toy["kappa"]) == 4  # 2 x 2 inits
        assert all(len(curve) == 21 for curve in toy["excess"])
        assert all(lr in toy["lr_grid"] for lr in toy["lr"])
        assert all(math.isfinite(k) and k >= 1 for k in toy["kappa"])
        assert all(lam > 0 for lam in toy["lambda_max"])
        assert summary["cond/kappa_median"] >= 1
    assert set(methods) == {"lora/gd", "balora/gd"}
    assert json.loads((methods["balora/gd"] / "toy.json").read_text())["alignment"] == "procrustes"
    assert max(json.loads((methods["balora/gd"] / "toy.json").read_text())["gap"]) < 1e-8
    assert min(json.loads((methods["lora/gd"] / "toy.json").read_text())["gap"]) > 1.0

    # a rerun of the same config finds its completed record (same run id) and leaves it alone
    before = (methods["balora/gd"] / "toy.json").stat().st_mtime_ns
    cfg = compose(["+experiment=balora_toy", "adapter=balora", "toy.method=gd", *SMALL,
                   f"out_dir={out}"])
    summary = launch(cfg)
    assert summary == json.loads((methods["balora/gd"] / "summary.json").read_text())
    assert (methods["balora/gd"] / "toy.json").stat().st_mtime_ns == before
    assert len(run_dirs(out)) == 2

    figures = toy_figures(out / "balora_toy", tmp_path / "figures")
    names = sorted(p.name for p in figures)
    assert names == ["balora_toy_excess_loss.pdf", "balora_toy_excess_loss.png",
                     "balora_toy_gap_per_problem.pdf", "balora_toy_gap_per_problem.png",
                     "balora_toy_kappa_hist.pdf", "balora_toy_kappa_hist.png",
                     "balora_toy_toy.md"]
    assert all(p.stat().st_size > 0 for p in figures)

