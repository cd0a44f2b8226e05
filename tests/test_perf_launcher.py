"""Benchmark (make perf): 4 equal gpt_tiny runs, joblib launcher (2 workers) vs serial."""

from __future__ import annotations

import time

import pytest

from tests.conftest import run_cli, run_dirs

pytestmark = pytest.mark.perf
RUN = ["model.init=scratch", "trainer.max_steps=200", "trainer.eval_every=200",
       "trainer.progress=false", "logger=none", "hydra.sweeper.params=null", "seed=0,1,2,3"]


def _sweep(tmp_path, launcher):
    out = tmp_path / launcher
    t0 = time.perf_counter()
    proc = run_cli(["-m", *RUN, f"out_dir={out}", f"hydra/launcher={launcher}"], timeout=1800)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert len(run_dirs(out)) == 4
    return time.perf_counter() - t0


def test_parallel_launcher_beats_serial(tmp_path):
    serial = _sweep(tmp_path, "serial")
    parallel = _sweep(tmp_path, "local")
    ratio = serial / parallel
    print(f"\n[perf] joblib (2 workers) vs serial, 4 gpt_tiny runs: {ratio:.2f}x faster "
          f"({parallel:.0f} s vs {serial:.0f} s)")
    assert ratio >= 1.6
