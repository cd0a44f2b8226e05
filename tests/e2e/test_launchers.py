"""Scale-out: the same sweep through submitit's local executor (what SLURM runs), resumable."""

from __future__ import annotations

import json

import pytest

from tests.conftest import SERIAL, run_cli, run_dirs

pytestmark = pytest.mark.e2e  # every test here launches sweeps in subprocesses


def test_two_run_sweep_completes_on_submitit_local(tmp_path, tiny):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    out = tmp_path / "runs"
    proc = run_cli(["-m", *tiny, f"out_dir={out}", "hydra/launcher=submitit_local_test",
                    "seed=0,1"], timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    dirs = run_dirs(out)
    assert len(dirs) == 2
    assert all(json.loads((d / "summary.json").read_text())["status"] == "completed" for d in dirs)


def test_relaunching_a_sweep_skips_completed_runs(tmp_path, tiny):
    out = tmp_path / "runs"
    args = ["-m", *tiny, f"out_dir={out}", SERIAL, "seed=0,1"]
    first = run_cli(args)
    assert first.returncode == 0, first.stderr
    again = run_cli(args)
    assert again.returncode == 0
    assert again.stdout.count("already completed, skipped") == 2


def test_a_sweep_runs_exactly_its_cells_skipping_the_invalid_ones_and_counts_them(tmp_path,
                                                                                  tiny):
    """The cross product the command line names, nothing of the default sweep (no seed 1, no
    sgd); its two invalid cells (a manifold optimizer without a manifold, a manifold without a
    manifold optimizer) are one line each, the valid ones run; the last line and the exit
    status count them."""
    out = tmp_path / "runs"
    proc = run_cli(["-m", *tiny, f"out_dir={out}", SERIAL, "adapter=lora,lora_riemannian",
                    "optimizer=adamw,riemannian_adam"])
    assert proc.returncode == 1, proc.stderr[-2000:]
    dirs = run_dirs(out)
    assert sorted(d.name.rsplit("-", 2)[0] for d in dirs) == [
        "lora-adamw", "lora-riemannian_adam-lora_fixed_rank_embedded"]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 2
    assert proc.stdout.strip().splitlines()[-1] == (
        "[bench] 2 runs: 2 completed; 2 invalid cells skipped")
