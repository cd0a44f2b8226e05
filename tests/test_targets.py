"""Time to target and from_baseline targets on hand-made rows and synthetic run folders."""

import json

import pytest
import yaml

from bench.config import ConfigError
from bench.metrics.targets import (
    BaselineNotReady,
    baseline_target,
    check_baseline,
    fill_targets,
    time_to_target,
)

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
        "metrics": {"target_loss": target_loss},
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


def read_summary(run):
    return json.loads((run / "summary.json").read_text())


def test_baseline_target_is_the_best_mean_over_seeds(tmp_path):
    make_run(tmp_path, "full-s0", "full/adamw", 3.0, seed=0)
    make_run(tmp_path, "full-s1", "full/adamw", 3.2, seed=1, status="completed")
    make_run(tmp_path, "full-s2", "full/adamw", None, seed=2, status="diverged")  # left out
    make_run(tmp_path, "full-s3", "full/adamw", 2.0, seed=3, status="running")  # left out
    make_run(tmp_path, "full-lr-s0", "full/adamw", 3.4, seed=0, lr=1e-2)  # worse mean 3.15
    make_run(tmp_path, "full-lr-s1", "full/adamw", 2.9, seed=1, lr=1e-2)  # (but the best seed)
    make_run(tmp_path, "lora-s0", "lora/adamw", 2.5)
    assert baseline_target(tmp_path, "full/adamw") == pytest.approx(3.1)
    assert baseline_target(tmp_path, "lora/adamw") == pytest.approx(2.5)


def test_unknown_baseline_is_a_config_error_listing_the_methods(tmp_path):
    make_run(tmp_path, "full-s0", "full/adamw", 3.0)
    make_run(tmp_path, "lora-s0", "lora/adamw", 2.5)
    with pytest.raises(ConfigError, match="metrics.baseline='balora/adamw'") as err:
        baseline_target(tmp_path, "balora/adamw")
    assert "full/adamw, lora/adamw" in str(err.value)
    with pytest.raises(ConfigError, match="needs metrics.baseline"):
        baseline_target(tmp_path, None)
    with pytest.raises(ConfigError, match="methods there are: none"):
        baseline_target(tmp_path / "empty", "full/adamw")


def test_baseline_without_a_completed_run_is_not_ready(tmp_path):
    make_run(tmp_path, "full-s0", "full/adamw", None, status="running")
    with pytest.raises(BaselineNotReady, match="none of its 1 run"):
        fill_targets(tmp_path, "full/adamw")
    assert isinstance(BaselineNotReady("x"), ConfigError)


def test_fill_targets_rewrites_finished_summaries(tmp_path):
    base = make_run(tmp_path, "full-s0", "full/adamw", 3.0)
    lora = make_run(tmp_path, "lora-s0", "lora/adamw", 2.5)
    slow = make_run(tmp_path, "sgd-s0", "lora/sgd", 4.0, rows=ROWS[:3])  # never reaches 3.0
    going = make_run(tmp_path, "balora-s0", "balora/adamw", None, status="running")
    own = make_run(tmp_path, "own-s0", "lora/adamw", 2.5, seed=1, target_loss=4.0)
    before = {run: read_summary(run) for run in (going, own)}
    assert fill_targets(tmp_path, "full/adamw") == 3.0
    for run in (base, lora):
        summary = read_summary(run)
        assert summary["steps_to_target"] == 40
        assert summary["tokens_to_target"] == 2560
        assert summary["seconds_to_target"] == 6.0
        assert summary["target_loss"] == 3.0 and summary["target_baseline"] == "full/adamw"
        assert summary["status"] == "completed" and summary["final_eval_loss"] is not None
    assert read_summary(slow)["steps_to_target"] is None
    assert read_summary(slow)["target_loss"] == 3.0
    for run, summary in before.items():  # running runs and runs with their own target: as is
        assert read_summary(run) == summary
    assert not list(tmp_path.glob("*/.summary.json.*"))  # no temp files left behind
    assert fill_targets(tmp_path, "full/adamw") == 3.0  # idempotent
    assert read_summary(base)["steps_to_target"] == 40


def test_check_baseline_before_a_run(tmp_path):
    make_run(tmp_path, "full-s0", "full/adamw", None, status="running")
    check_baseline(tmp_path, "full/adamw", "lora/adamw")  # the baseline's run is there
    check_baseline(tmp_path / "new", "lora/sgd", "lora/sgd")  # this run is a baseline run
    with pytest.raises(ConfigError, match="full/adamw, lora/adamw"):
        check_baseline(tmp_path, "balora/adamw", "lora/adamw")
    with pytest.raises(ConfigError, match="needs metrics.baseline"):
        check_baseline(tmp_path, None, "lora/adamw")
