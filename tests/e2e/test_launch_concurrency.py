"""Concurrent launches of one sweep (two terminals, a resubmitted array task): every run is
executed once and every record is complete and uncorrupted (bench/run.py `run`: a file lock per
run folder, and completeness re-checked once the lock is held)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml

from bench.tracking.identity import run_id
from tests.conftest import ROOT, TINY, compose, read_jsonl, run_dirs

SEEDS = (0, 1, 2)
STEPS = [0, 3, 6, 9, 12]  # conftest TINY: 12 steps, a metrics row every 3


def _check_record(run_dir) -> None:
    """One complete record: config.yaml parses, each logged step once and in order, completed."""
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["meta"]["run_id"] == run_dir.name
    assert [row["step"] for row in read_jsonl(run_dir / "metrics.jsonl")] == STEPS
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed", summary


@pytest.mark.e2e
def test_two_launches_of_one_sweep_run_every_run_once(tmp_path):
    out = tmp_path / "runs"
    args = [sys.executable, "-m", "bench.run", "-m", *TINY, f"out_dir={out}",
            "hydra/launcher=serial", "hydra.sweeper.params=null",
            "seed=" + ",".join(map(str, SEEDS))]
    env = {**os.environ, "WANDB_MODE": "disabled", "WANDB_SILENT": "true"}
    procs = [subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, err[-2000:]
    stdout = "".join(o for o, _ in outputs)

    dirs = run_dirs(out)
    assert len(dirs) == len(SEEDS)
    for d in dirs:
        _check_record(d)
        rid = d.name
        executed = stdout.count(f"[bench] {rid}: completed")
        skipped = (stdout.count(f"[bench] {rid}: running in another process, skipped")
                   + stdout.count(f"[bench] {rid}: already completed, skipped"))
        assert (executed, skipped) == (1, 1), (rid, stdout)


def test_a_run_finished_by_another_process_while_this_one_prepared_is_not_rerun(
        tmp_path, monkeypatch):
    """The race between the first completeness check and the lock: another launch completes the
    run while this one builds its model; once this one holds the lock it finds the record
    complete and skips it, instead of executing (and rewriting) it a second time."""
    import bench.run as bench_run

    cfg = compose([*TINY, f"out_dir={tmp_path / 'runs'}"])
    original = bench_run.TASKS["lm"]
    executions = []

    def execute(*args):
        executions.append(1)
        return original.execute(*args)

    def prepare_while_the_other_runs(c, inputs):
        monkeypatch.setitem(bench_run.TASKS, "lm", counted)  # the other launch: no recursion
        assert bench_run.run(c)["status"] == "completed"  # takes the lock, runs, releases it
        return original.prepare(c, inputs)

    counted = bench_run.Task(original.identify, original.prepare, execute, original.describe)
    racing = bench_run.Task(original.identify, prepare_while_the_other_runs, execute,
                            original.describe)
    monkeypatch.setitem(bench_run.TASKS, "lm", racing)
    record_dir = tmp_path / "runs" / cfg.sweep / run_id(cfg, bench_run.identify(cfg).content)

    summary = bench_run.run(cfg)
    assert summary["status"] == "completed"
    assert len(executions) == 1  # the other launch's execution only
    _check_record(record_dir)
