"""`python -m analysis source=wandb_offline`: the offline W&B runs that training writes, read back
with W&B's own reader (wandb-core), without an API key or a network (issue 30, item 5)."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from analysis.__main__ import main
from analysis.records import load_curves, load_runs
from analysis.wandb_offline import load_offline, offline_logs, raw_run
from tests.conftest import ROOT, SERIAL, TINY


def test_raw_run_merges_config_summary_and_history_records():
    records = [
        {"type": "run", "run": {"run_id": "x-s0", "display_name": "x s0", "run_group": "g",
                                "config": {"update": {"seed": 0, "optimizer": {"lr": 0.1}}}}},
        {"type": "history", "history": {"item": {"step": 0, "eval/loss": 3.0}}},
        {"type": "summary", "summary": {"update": {"status": "running", "steps": 0}}},
        {"type": "config", "config": {"update": {"extra": 1}}},
        {"type": "history", "history": {"item": {"step": 5, "eval/loss": 2.0}}},
        {"type": "summary", "summary": {"update": {"status": "completed"}}},
        {"type": "exit", "exit": {"exit_code": 0}},
    ]
    raw = raw_run(records)
    assert (raw["id"], raw["name"], raw["group"], raw["state"]) == ("x-s0", "x s0", "g",
                                                                     "finished")
    assert raw["config"] == {"seed": 0, "optimizer": {"lr": 0.1}, "extra": 1}
    assert raw["summary"] == {"status": "completed", "steps": 0}
    assert [h["step"] for h in raw["history"]] == [0, 5]
    assert raw_run(records[:-1])["state"] == "running"
    assert raw_run([*records[:-1], {"type": "exit", "exit": {"exit_code": 1}}])["state"] == \
        "failed"


@pytest.fixture(scope="module")
def offline_sweep(tmp_path_factory) -> Path:
    """Two tiny runs logged to W&B offline (the default logger), in a subprocess with no W&B
    credentials and W&B's folders in tmp."""
    tmp = tmp_path_factory.mktemp("wandb_offline")
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(WANDB_SILENT="true", WANDB_CONFIG_DIR=str(tmp / "home" / "config"),
               WANDB_CACHE_DIR=str(tmp / "home" / "cache"),
               WANDB_DATA_DIR=str(tmp / "home" / "data"))
    overrides = [a for a in TINY if not a.startswith("logger=")]
    out = tmp / "runs"
    done = subprocess.run(
        [sys.executable, "-m", "bench.run", "-m", *overrides, "logger=wandb_offline",
         "seed=0,1", "optimizer=adamw,sgd", "sweep=offline", f"out_dir={out}", SERIAL],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out


def test_offline_runs_read_back_as_the_records_state_them(offline_sweep, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    runs, curves = load_offline(offline_sweep)
    local = load_runs(offline_sweep)
    assert sorted(runs["run_id"]) == sorted(local["run_id"]) and len(runs) == 4
    merged = runs.merge(local, on="run_id", suffixes=("_wandb", "_local"))
    for key in ("final_eval_loss", "best_eval_loss", "steps", "optimizer.lr", "seed"):
        assert merged[f"{key}_wandb"].tolist() == pytest.approx(merged[f"{key}_local"].tolist())
    assert set(runs["status"]) == {"completed"} and set(runs["sweep"]) == {"offline"}
    assert set(runs["method"]) == {"full/adamw", "full/sgd"}
    mine = curves[curves["metric"] == "eval/loss"].sort_values(["run_id", "step"])
    theirs = load_curves(local)
    theirs = theirs[theirs["metric"] == "eval/loss"].sort_values(["run_id", "step"])
    assert mine["value"].tolist() == pytest.approx(theirs["value"].tolist())
    assert mine["step"].tolist() == theirs["step"].tolist()


def test_analysis_from_offline_runs_matches_the_local_records(offline_sweep, tmp_path,
                                                               monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    assert main([f"runs={offline_sweep}", f"figures={tmp_path / 'local'}"]) == 0
    assert main(["source=wandb_offline", f"runs={offline_sweep}",
                 f"figures={tmp_path / 'offline'}"]) == 0
    assert main(["source=wandb", f"project={offline_sweep}",
                 f"figures={tmp_path / 'folder'}"]) == 0
    local = pd.read_csv(tmp_path / "local" / "offline_tuned.csv")
    for where in ("offline", "folder"):
        pd.testing.assert_frame_equal(pd.read_csv(tmp_path / where / "offline_tuned.csv"),
                                      local)


def test_partial_segments_are_left_out_and_the_newest_segment_wins(offline_sweep, tmp_path):
    """A relaunched run's earlier segments (wandb/partial/) are not read, as `wandb sync`'s glob
    leaves them; of two offline folders of one run id the newest (by name: its time) is."""
    copy = tmp_path / "runs"
    shutil.copytree(offline_sweep, copy)
    logs = offline_logs(copy)
    assert len(logs) == 4
    run_wandb = logs[0].parent.parent  # <run>/wandb
    partial = run_wandb / "partial" / logs[0].parent.name
    shutil.copytree(logs[0].parent, partial)
    older = run_wandb / logs[0].parent.name.replace("offline-run-", "offline-run-19990101_")
    shutil.copytree(logs[0].parent, older)
    assert offline_logs(copy) == logs


def test_no_offline_runs_is_one_line(tmp_path, capsys):
    (tmp_path / "runs").mkdir()
    assert main(["source=wandb_offline", f"runs={tmp_path / 'runs'}",
                 f"figures={tmp_path / 'fig'}"]) == 2
    assert "no offline W&B runs under" in capsys.readouterr().err
