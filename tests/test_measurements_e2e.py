"""Measurements through the whole harness: Hessian spectra logged by a run and drawn by
`make plots`; time to a baseline's loss filled in at the end of a sweep."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from bench.run import run
from tests.conftest import ROOT, compose, read_jsonl, run_dirs


@pytest.mark.e2e
def test_lora_run_logs_hessian_spectra_that_the_analysis_draws(tmp_path, tiny):
    summary = run(compose([*tiny, "adapter=lora", "adapter.r=2", "metrics.hessian.every=6",
                           "metrics.hessian.iters=8"]))
    assert summary["status"] == "completed"
    (d,) = run_dirs(tmp_path / "runs")
    rows = [r for r in read_jsonl(d / "metrics.jsonl") if "cond/lambda_max" in r]
    assert [r["step"] for r in rows] == [6, 12]
    assert all(r["sharpness/lambda_max"] == r["cond/lambda_max"] > 0 for r in rows)
    proc = subprocess.run([sys.executable, "-m", "analysis", f"runs={tmp_path / 'runs'}",
                           f"figures={tmp_path / 'fig'}"], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "fig" / "default_sharpness_vs_step.png").exists()


def test_time_to_the_baseline_loss_is_filled_in_for_the_sweep(tmp_path, tiny):
    extra = ["metrics.target_loss=from_baseline", "metrics.baseline=full/adamw"]
    run(compose([*tiny, *extra, "optimizer=sgd", "optimizer.lr=0.5"]))
    run(compose([*tiny, *extra]))  # the baseline finishes last and fills in both
    summaries = {d.name: json.loads((d / "summary.json").read_text())
                 for d in run_dirs(tmp_path / "runs")}
    baseline = next(s for name, s in summaries.items() if name.startswith("full-adamw"))
    assert all(s["target_loss"] == baseline["final_eval_loss"] for s in summaries.values())
    assert baseline["steps_to_target"] == 12  # its own final loss is reached at its last eval
