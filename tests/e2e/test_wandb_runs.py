"""Weights & Biases offline runs written by real launches: one complete W&B run per record."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml

from tests.bench.test_wandb import FAST, REPO, bench_run, read_wandb_log, wandb_env, wandb_history


@pytest.mark.e2e
def test_offline_run_files_hold_the_logged_metrics(tmp_path):
    run_dir = bench_run(tmp_path, "wandb_offline")
    files = list(run_dir.glob("wandb/offline-run-*/run-*.wandb"))
    assert len(files) == 1, list(run_dir.rglob("*"))
    records = read_wandb_log(files[0], tmp_path)
    by_type: dict[str, list[dict]] = {}
    for rec in records:
        by_type.setdefault(rec["type"], []).append(rec[rec["type"]])
    assert by_type["exit"][-1].get("exit_code", 0) == 0

    # History: one record per metrics.jsonl row, same step, same values.
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    history = [h["item"] for h in by_type["history"]]
    assert [h["step"] for h in history] == [r["step"] for r in rows]
    assert len(rows) == 5 and "train/loss" not in rows[0]  # step 0: the eval before training
    assert all("train/loss" in r for r in rows[1:])
    for row, item in zip(rows, history, strict=True):
        for key, value in row.items():
            if value is None:  # WandbLogger drops None; metrics.jsonl keeps it as null
                assert key not in item, key
            else:
                assert item[key] == pytest.approx(value, rel=1e-6, abs=1e-6), key

    # Run record: config.yaml's leaves as flat dotted keys, only those that apply to the run
    # (AdamW's own knobs, no toy.*), group = sweep, tags.
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    (run,) = by_type["run"]
    logged = {k: v for k, v in run["config"]["update"].items() if k != "_wandb"}

    def flat(tree, prefix=""):
        for key, value in tree.items():
            if isinstance(value, dict) and value:
                yield from flat(value, f"{prefix}{key}.")
            else:
                yield f"{prefix}{key}", value

    leaves = dict(flat(config))
    assert all(not isinstance(v, dict) for v in logged.values())
    for key, value in logged.items():
        if key != "swept":
            assert leaves[key] == (list(value) if isinstance(value, tuple) else value), key
    assert logged["adapter.name"] == "full" and logged["optimizer.name"] == "adamw"
    assert logged["optimizer.lr"] == config["optimizer"]["lr"]
    assert logged["model.d_model"] == config["model"]["d_model"]
    assert not any(k.startswith("toy.") for k in logged)  # the LM task's run
    unused = ("optimizer.lr_ratio", "optimizer.momentum")  # in config.yaml, not AdamW's knobs
    assert all(k in leaves and k not in logged for k in unused)
    assert run["run_id"] == run_dir.name == config["meta"]["run_id"]
    assert run["run_group"] == config["sweep"] == run_dir.parent.name
    assert run["tags"] == [config["adapter"]["name"], config["optimizer"]["name"]]
    assert run["project"] == config["logger"]["project"]

    # Summary: summary.json's values end up in the run's summary.
    final: dict = {}
    for update in by_type["summary"]:
        final.update(update.get("update", {}))
    summary = json.loads((run_dir / "summary.json").read_text())
    for key, value in summary.items():
        if value is not None:
            expected = pytest.approx(value, rel=1e-6) if isinstance(value, float) else value
            assert final[key] == expected, key


@pytest.mark.e2e
def test_logger_none_leaves_no_wandb_files(tmp_path):
    run_dir = bench_run(tmp_path, "none")
    assert (run_dir / "metrics.jsonl").exists()
    out_dir = tmp_path / "runs"
    assert not [p for p in out_dir.rglob("*") if "wandb" in p.name.lower()]


@pytest.mark.e2e
def test_killed_and_relaunched_run_is_one_complete_wandb_run(tmp_path):
    """A run killed at its first checkpoint and launched again: exactly one offline folder (the
    one `wandb sync runs/*/*/wandb/offline-run-*` publishes) holds every metrics.jsonl row once,
    in order; the killed and resumed segments of its id are under wandb/partial/."""
    from tests.conftest import kill_at_first_checkpoint

    args = [*FAST, "trainer.max_steps=120", "trainer.log_every=20", "trainer.eval_every=60",
            "trainer.checkpoint_every=40", "trainer.threads=1", "logger=wandb_offline"]
    out_dir = tmp_path / "runs"
    kill_at_first_checkpoint(args, out_dir, env=wandb_env(tmp_path, WANDB_MODE="offline"))
    (run_dir,) = [p.parent for p in out_dir.glob("*/*/config.yaml")]
    killed = list(run_dir.glob("wandb/offline-run-*"))
    assert len(killed) == 1  # the killed process's own folder
    proc = subprocess.run(
        [sys.executable, "-m", "bench.run", *args, f"out_dir={out_dir}"],
        cwd=REPO, env=wandb_env(tmp_path), capture_output=True, text=True, timeout=180,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed"
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(0, 121, 20))

    published = sorted(out_dir.glob("*/*/wandb/offline-run-*"))  # what the README syncs
    assert len(published) == 1 and published[0].name.endswith(run_dir.name)
    history, final = wandb_history(published[0], tmp_path)
    assert [h["step"] for h in history] == [r["step"] for r in rows]  # every row once, in order
    for row, item in zip(rows, history, strict=True):
        for key, value in row.items():
            if value is not None:
                assert item[key] == pytest.approx(value, rel=1e-6, abs=1e-6), key
    assert final["status"] == "completed" and final["steps"] == 120
    # define_metric: the run table shows the best eval loss, not the last.
    evals = [r["eval/loss"] for r in rows if r.get("eval/loss") is not None]
    assert final["eval/loss"]["min"] == pytest.approx(min(evals), rel=1e-6)

    # Both processes' folders (the killed one, the resumed one with only the later rows) are
    # kept apart, outside the sync glob.
    partial = sorted((run_dir / "wandb" / "partial").iterdir())
    assert killed[0].name in [p.name for p in partial] and len(partial) == 2
    resumed, _ = wandb_history(next(p for p in partial if p.name != killed[0].name), tmp_path)
    assert 0 < len(resumed) < len(rows) and resumed[0]["step"] > 0



@pytest.mark.e2e
def test_a_kill_between_the_mirror_and_the_summary_repairs_the_mirror_without_training(
        tmp_path, monkeypatch):
    """`completed` is the last word: a run killed after its W&B finish but before its summary
    says completed is unfinished; its relaunch trains nothing (the checkpoint is at the last
    step) and leaves one complete offline W&B run holding every row."""
    from bench.record import RunRecord
    from bench.run import run
    from bench.train import Trainer
    from tests.conftest import compose

    for key in [k for k in os.environ if k.startswith("WANDB_")]:
        monkeypatch.delenv(key)
    for key, value in wandb_env(tmp_path, WANDB_MODE="offline").items():
        if key.startswith("WANDB_"):
            monkeypatch.setenv(key, value)
    args = [*FAST, "logger=wandb_offline", "trainer.threads=1", f"out_dir={tmp_path / 'runs'}"]
    write = RunRecord.write_summary

    def killed_after_the_mirror(self, summary):
        if summary["status"] != "running":
            raise KeyboardInterrupt  # SIGINT, between logger.finish and the final summary
        write(self, summary)

    monkeypatch.setattr(RunRecord, "write_summary", killed_after_the_mirror)
    with pytest.raises(KeyboardInterrupt):
        run(compose(args))
    (run_dir,) = [p.parent for p in (tmp_path / "runs").glob("*/*/config.yaml")]
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "running"

    monkeypatch.setattr(RunRecord, "write_summary", write)
    monkeypatch.setattr(Trainer, "train_step", lambda *_: pytest.fail("the relaunch retrained"))
    assert run(compose(args))["status"] == "completed"
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    (published,) = run_dir.glob("wandb/offline-run-*")  # what `wandb sync` publishes
    history, final = wandb_history(published, tmp_path)
    assert [h["step"] for h in history] == [r["step"] for r in rows]
    assert final["status"] == "completed"
