"""Measurements through the whole harness: Hessian spectra logged by a run and drawn by
`make plots` (time to a baseline's loss: tests/analysis/test_targets.py)."""

from __future__ import annotations

import pytest

from bench.run import run
from tests.conftest import compose, read_jsonl, run_analysis, run_dirs


@pytest.mark.e2e
def test_lora_run_logs_hessian_spectra_that_the_analysis_draws(tmp_path, tiny):
    summary = run(compose([*tiny, "adapter=lora", "adapter.r=2", "metrics.hessian.every=6",
                           "metrics.hessian.iters=8", "metrics.hessian.at_start=true",
                           "adapter.init=pissa", "metrics.hessian.gauss_newton=true"]))
    assert summary["status"] == "completed"
    (d,) = run_dirs(tmp_path / "runs")
    rows = [r for r in read_jsonl(d / "metrics.jsonl") if "cond/lambda_max" in r]
    assert [r["step"] for r in rows] == [0, 6, 12]  # start (PiSSA: B != 0), middle, end
    assert all(r["sharpness/lambda_max"] == r["cond/lambda_max"] > 0 for r in rows)
    # the Gauss-Newton matrix is positive semidefinite: its kappa exists (PiSSA's factors have
    # full rank from the start) where the Hessian's may not
    assert all(0 < r["cond/gn/lambda_min_h"] <= r["cond/gn/lambda_max"] for r in rows)
    assert all(r["cond/gn/kappa"] == r["cond/gn/lambda_max"] / r["cond/gn/lambda_min_h"]
               for r in rows)
    for key in ("cond/kappa", "cond/lambda_min_h", "sharpness/lambda_max", "cond/gn/kappa",
                "cond/gn/lambda_min_h", "cond/gn/lambda_max"):  # the last estimate
        assert summary[f"final_{key}"] == rows[-1][key]
    run_analysis(tmp_path / "runs", tmp_path / "fig")
    assert (tmp_path / "fig" / "default_sharpness_vs_step.png").exists()
    assert (tmp_path / "fig" / "default_kappa_gn_vs_step.png").exists()

