"""Benchmark (make perf): 4 equal gpt_tiny runs, joblib launcher (2 workers) vs serial.

The speed-up two 1-thread workers can reach over one 2-thread process is measured in the same
run (one run on 1 and on 2 threads): 2 t(2) / t(1), about 1.1x on 2 cores where a 2-thread run
is almost twice as fast as a 1-thread one. The launcher must reach 90% of it."""

from __future__ import annotations

import json
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


def _train_seconds(tmp_path, threads: int) -> float:
    """Training wall clock (summary wall_s) of one of those runs with `threads` torch threads."""
    out = tmp_path / f"threads{threads}"
    proc = run_cli([*RUN[:-2], f"trainer.threads={threads}", f"out_dir={out}"], timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (run,) = run_dirs(out)
    return json.loads((run / "summary.json").read_text())["wall_s"]


def test_parallel_launcher_beats_serial(tmp_path, perf_table):
    serial = _sweep(tmp_path, "serial")
    parallel = _sweep(tmp_path, "local")
    ratio = serial / parallel
    # What two processes can gain over one process with both cores' threads: a serial run uses
    # `cores` intra-op threads, a worker one, so the ideal ratio is cores x t(cores) / t(1).
    one, two = _train_seconds(tmp_path, 1), _train_seconds(tmp_path, 2)
    print(f"\n[perf] joblib (2 workers) vs serial, 4 gpt_tiny runs: {ratio:.2f}x faster "
          f"({parallel:.0f} s vs {serial:.0f} s); one run on 2 threads is {one / two:.2f}x "
          f"faster than on 1, so 2 workers of 1 thread can gain at most {2 * two / one:.2f}x "
          "(plus start-up overlap)")
    bound = 2 * two / one
    perf_table("joblib (2 workers x 1 thread) vs serial (2 threads), 4 gpt_tiny runs: speed-up",
               f"{ratio:.2f}", ">= 0.9 x bound", ratio >= 0.9 * bound,
               f"2 t(2 threads) / t(1 thread) = {bound:.2f}")
    assert ratio >= 0.9 * bound
