"""`torchrun --nproc-per-node 2 -m bench.run`: a run killed under torchrun resumes in one process
to the uninterrupted one-process run's curve (tests/bench/test_distributed.py checks the rest
with both ranks in one spawn: the optimizers, bitwise-equal ranks, 1 -> 2 processes)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml

from bench.run import run
from tests.conftest import ROOT, TINY, compose, read_jsonl, run_dirs

pytestmark = pytest.mark.e2e

ARGS = [*TINY, "trainer.max_steps=24", "trainer.threads=1"]


def torchrun(n: int, args: list[str]) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc-per-node={n}", "-m", "bench.run", *args]


ENV = {**os.environ, "WANDB_MODE": "disabled", "WANDB_SILENT": "true"}


def test_a_run_killed_under_torchrun_resumes_in_one_process_to_its_curve(tmp_path):
    assert run(compose([*ARGS, f"out_dir={tmp_path / 'one'}"]))["status"] == "completed"
    out = tmp_path / "two"
    # torchrun stops its workers when it is terminated (they run in sessions of their own)
    proc = subprocess.Popen(torchrun(2, [*ARGS, f"out_dir={out}"]), cwd=ROOT, env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while proc.poll() is None and time.time() < deadline and not list(
            out.glob("*/*/checkpoint.pt")):
        time.sleep(0.02)
    alive = proc.poll() is None
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    assert alive, "the run ended before its first checkpoint"
    (killed,) = run_dirs(out)
    assert json.loads((killed / "summary.json").read_text())["status"] == "running"

    assert yaml.safe_load((killed / "config.yaml").read_text())["meta"]["world_size"] == 2
    assert 0 < torch.load(killed / "checkpoint.pt", weights_only=True)["step"] < 24

    assert run(compose([*ARGS, f"out_dir={out}"]))["status"] == "completed"  # 1 process
    (reference,) = run_dirs(tmp_path / "one")
    assert run_dirs(out) == [killed]
    a, b = read_jsonl(reference / "metrics.jsonl"), read_jsonl(killed / "metrics.jsonl")
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for ra, rb in zip(a, b):
        for key in ("train/loss", "eval/loss", "test/loss"):
            if key in ra:
                assert rb[key] == pytest.approx(ra[key], rel=1e-5), (ra["step"], key)
    assert json.loads((killed / "summary.json").read_text())["status"] == "completed"

