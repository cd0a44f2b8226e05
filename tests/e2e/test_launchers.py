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
                    "hydra.sweeper.params=null", "seed=0,1"], timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    dirs = run_dirs(out)
    assert len(dirs) == 2
    assert all(json.loads((d / "summary.json").read_text())["status"] == "completed" for d in dirs)


def test_relaunching_a_sweep_skips_completed_runs(tmp_path, tiny):
    out = tmp_path / "runs"
    args = ["-m", *tiny, f"out_dir={out}", SERIAL, "hydra.sweeper.params=null", "seed=0,1"]
    first = run_cli(args)
    assert first.returncode == 0, first.stderr
    again = run_cli(args)
    assert again.returncode == 0
    assert again.stdout.count("already completed, skipped") == 2
