"""Time to target on hand-made rows, from_baseline targets resolved by analysis from synthetic
run folders, and a from_baseline sweep whose runs each write only their own record."""

import json
import math

import pytest
import yaml

from analysis import targets as analysis_targets
from analysis.__main__ import main as analysis_main
from analysis.records import load_runs
from bench.record import time_to_target
from bench.run import run
from tests.conftest import compose, read_jsonl, run_dirs

ROWS = [
    {"step": 0, "tokens": 0, "wall_s": 0.0, "eval/loss": 5.0},
    {"step": 10, "tokens": 640, "wall_s": 1.5, "train/loss": 3.9},  # no eval in this row
    {"step": 20, "tokens": 1280, "wall_s": 3.0, "eval/loss": 3.5},
    {"step": 30, "tokens": 1920, "wall_s": 4.5, "eval/loss": None},  # a NaN eval, as logged
    {"step": 40, "tokens": 2560, "wall_s": 6.0, "eval/loss": 2.9},
    {"step": 50, "tokens": 3200, "wall_s": 7.5, "eval/loss": 2.5},
]


def test_time_to_target_is_the_first_eval_row_at_or_below():
    assert time_to_target(ROWS, 3.0) == {
        "steps_to_target": 40,
        "tokens_to_target": 2560,
        "seconds_to_target": 6.0,
    }
    assert time_to_target(ROWS, 3.5)["steps_to_target"] == 20  # <= counts
    assert time_to_target(ROWS, 3.9)["steps_to_target"] == 20  # train loss does not count
    assert time_to_target(ROWS, 9.0)["steps_to_target"] == 0
    assert time_to_target(ROWS, 2.0) == dict.fromkeys(
        ("steps_to_target", "tokens_to_target", "seconds_to_target")
    )
    assert time_to_target([], 1.0)["steps_to_target"] is None
    assert time_to_target(ROWS, None)["steps_to_target"] is None
    with pytest.raises(ValueError, match="finite"):
        time_to_target(ROWS, float("nan"))


def make_run(
    sweep,
    name,
    method,
    final,
    status="completed",
    seed=0,
    lr=1e-3,
    rows=None,
    target_loss="from_baseline",
):
    run = sweep / name
    run.mkdir(parents=True)
    config = {
        "seed": seed,
        "optimizer": {"lr": lr},
        "trainer": {"log_every": 10},
        "metrics": {"target_loss": target_loss, "baseline": "full/adamw"},
        "meta": {"method": method, "run_id": name},
    }
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    summary = {
        "status": status,
        "final_eval_loss": final,
        "steps_to_target": None,
        "tokens_to_target": None,
        "seconds_to_target": None,
    }
    (run / "summary.json").write_text(json.dumps(summary))
    rows = rows if rows is not None else ROWS
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return run


def table(runs_dir):
    """The run table with time to target resolved, as `python -m analysis` draws it."""
    from analysis.records import load_curves

    runs = load_runs(runs_dir)
    return analysis_targets.with_targets(runs, load_curves(runs)).set_index("run_id")


def test_baseline_target_is_the_best_mean_over_seeds(tmp_path):
    sweep = tmp_path / "s"
    make_run(sweep, "full-s0", "full/adamw", 3.0, seed=0)
    make_run(sweep, "full-s1", "full/adamw", 3.2, seed=1, status="completed")
    make_run(sweep, "full-s2", "full/adamw", None, seed=2, status="diverged")  # left out
    make_run(sweep, "full-s3", "full/adamw", 2.0, seed=3, status="running")  # left out
    make_run(sweep, "full-lr-s0", "full/adamw", 3.4, seed=0, lr=1e-2)  # worse mean 3.15
    make_run(sweep, "full-lr-s1", "full/adamw", 2.9, seed=1, lr=1e-2)  # (but the best seed)
    make_run(sweep, "lora-s0", "lora/adamw", 2.5)
    runs = load_runs(tmp_path)
    assert analysis_targets.baseline_target(runs, "full/adamw") == pytest.approx(3.1)
    assert analysis_targets.baseline_target(runs, "lora/adamw") == pytest.approx(2.5)
    assert analysis_targets.baseline_target(runs, "balora/adamw") is None


def test_from_baseline_times_are_computed_from_the_records(tmp_path):
    sweep = tmp_path / "s"
    make_run(sweep, "full-s0", "full/adamw", 3.0)
    make_run(sweep, "lora-s0", "lora/adamw", 2.5)
    make_run(sweep, "sgd-s0", "lora/sgd", 4.0, rows=ROWS[:3])  # never reaches 3.0
    make_run(sweep, "balora-s0", "balora/adamw", None, status="running")
    own = make_run(sweep, "own-s0", "lora/adamw", 2.5, seed=1, target_loss=4.0)
    summary = json.loads((own / "summary.json").read_text())
    summary["steps_to_target"] = 20  # its own numbers, as its run wrote them
    (own / "summary.json").write_text(json.dumps(summary))
    before = {p: p.read_bytes() for p in sweep.glob("*/*")}
    runs = table(tmp_path)
    for name in ("full-s0", "lora-s0"):
        assert runs.loc[name, "steps_to_target"] == 40
        assert runs.loc[name, "tokens_to_target"] == 2560
        assert runs.loc[name, "seconds_to_target"] == 6.0
        assert runs.loc[name, "target_loss"] == 3.0
    assert math.isnan(runs.loc["sgd-s0", "steps_to_target"])
    assert math.isnan(runs.loc["balora-s0", "steps_to_target"])  # still running: no time yet
    assert runs.loc["own-s0", "steps_to_target"] == 20 and runs.loc["own-s0", "target_loss"] == 4
    assert {p: p.read_bytes() for p in sweep.glob("*/*")} == before  # analysis writes no record


def test_baseline_without_a_completed_run_warns_and_shows_no_time(tmp_path):
    make_run(tmp_path / "s", "full-s0", "full/adamw", None, status="running")
    make_run(tmp_path / "s", "lora-s0", "lora/adamw", 2.5)
    with pytest.warns(UserWarning, match="metrics.baseline='full/adamw' has no completed run"):
        runs = table(tmp_path)
    assert runs["steps_to_target"].isna().all()


def summary_column(path, column: str) -> dict:
    """run_id -> the value of `column` in a `<sweep>_summary.md` markdown table."""
    lines = [line for line in path.read_text().splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:]]
    return {row[header.index("run_id")]: row[header.index(column)] for row in cells}


def test_from_baseline_sweep_each_run_writes_only_its_own_record(tmp_path, tiny):
    """A from_baseline sweep whose baseline ends last: the earlier run's summary.json is not
    touched when the baseline ends, and analysis shows both runs' time to the baseline's loss."""
    extra = ["metrics.target_loss=from_baseline", "metrics.baseline=full/adamw"]
    run(compose([*tiny, *extra, "optimizer=sgd", "optimizer.lr=0.5"]))
    (sgd,) = run_dirs(tmp_path / "runs")
    written = (sgd / "summary.json").read_bytes(), (sgd / "summary.json").stat().st_mtime_ns
    run(compose([*tiny, *extra]))  # the baseline ends last
    assert ((sgd / "summary.json").read_bytes(), (sgd / "summary.json").stat().st_mtime_ns) \
        == written
    dirs = run_dirs(tmp_path / "runs")
    (base,) = [d for d in dirs if d.name.startswith("full-adamw")]
    summaries = {d.name: json.loads((d / "summary.json").read_text()) for d in dirs}
    assert all(s["status"] == "completed" and s["steps_to_target"] is None
               for s in summaries.values())  # no run knew the baseline's loss
    target = summaries[base.name]["final_eval_loss"]

    assert analysis_main([f"runs={tmp_path / 'runs'}", f"figures={tmp_path / 'fig'}"]) == 0
    shown = summary_column(tmp_path / "fig" / "default_summary.md", "steps to target")
    for d in dirs:  # bench's own rule on each record's rows, against the baseline's loss
        expected = time_to_target(read_jsonl(d / "metrics.jsonl"), target)["steps_to_target"]
        assert shown[d.name] == ("" if expected is None else str(expected)), d.name
    assert shown[base.name] == "12"  # its own final loss is reached at its last eval
    assert (tmp_path / "fig" / "default_steps_to_target.png").exists()
