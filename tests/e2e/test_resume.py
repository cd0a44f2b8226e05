"""A run killed with SIGKILL and launched again resumes bitwise."""

from __future__ import annotations

import json

import pytest
import torch

from bench.run import run
from tests.conftest import (
    compose,
    kill_at_first_checkpoint,
    read_jsonl,
    run_cli,
    run_dirs,
)


@pytest.mark.e2e
def test_kill_9_then_rerun_resumes_to_the_bitwise_same_loss(tmp_path):
    args = [
        "model.init=scratch",
        "model.d_model=32",
        "model.n_layer=1",
        "model.n_head=2",
        "model.seq_len=32",
        "trainer.max_steps=200",
        "trainer.batch_size=4",
        "trainer.eval_every=50",
        "trainer.log_every=20",
        "trainer.checkpoint_every=40",
        "trainer.progress=false",
        "data.eval_batches=2",
        "logger=none",
        "trainer.threads=1",
    ]
    # the uninterrupted reference runs in this process, the killed and resumed one in two others
    assert run(compose([*args, f"out_dir={tmp_path / 'clean'}"]))["status"] == "completed"
    out = tmp_path / "killed"
    checkpoint = kill_at_first_checkpoint(args, out)
    (killed_dir,) = run_dirs(out)
    assert json.loads((killed_dir / "summary.json").read_text())["status"] == "running"
    state = torch.load(checkpoint, weights_only=False)
    assert 0 < state["step"] < 200
    resumed = run_cli([*args, f"out_dir={out}"])
    assert resumed.returncode == 0, resumed.stderr
    (clean_dir,) = run_dirs(tmp_path / "clean")
    a = json.loads((clean_dir / "summary.json").read_text())
    b = json.loads((killed_dir / "summary.json").read_text())
    assert b["status"] == "completed"
    assert a["final_eval_loss"] == b["final_eval_loss"]  # bitwise: same float
    assert [r.get("train/loss") for r in read_jsonl(clean_dir / "metrics.jsonl")] == [
        r.get("train/loss") for r in read_jsonl(killed_dir / "metrics.jsonl")
    ]

