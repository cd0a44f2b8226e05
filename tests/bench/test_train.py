"""The training loop and run record: determinism, resume after kill -9, divergence, skipping."""

from __future__ import annotations

import json

import torch

from bench.config import schema_defaults
from bench.run import run
from bench.tracking.identity import run_id
from bench.train import lr_factor
from tests.conftest import (
    compose,
    read_jsonl,
    run_analysis,
    run_dirs,
)


def _curve(run_dir):
    return [
        (r["step"], r.get("train/loss"), r.get("eval/loss"))
        for r in read_jsonl(run_dir / "metrics.jsonl")
    ]


def test_same_seed_gives_the_same_curve(tmp_path, tiny):
    a = run(compose([*tiny, f"out_dir={tmp_path / 'a'}"]))
    b = run(compose([*tiny, f"out_dir={tmp_path / 'b'}"]))
    run(compose([*tiny, f"out_dir={tmp_path / 'c'}", "seed=1"]))
    (da,), (db,), (dc,) = (
        run_dirs(tmp_path / "a"),
        run_dirs(tmp_path / "b"),
        run_dirs(tmp_path / "c"),
    )
    assert a["status"] == b["status"] == "completed"
    assert _curve(da) == _curve(db)
    assert _curve(da) != _curve(dc)


def test_run_record_follows_the_contract(tmp_path, tiny):
    summary = run(compose(tiny))
    (d,) = run_dirs(tmp_path / "runs")
    assert d.parent.name == "default"
    assert {p.name for p in d.iterdir()} >= {
        "config.yaml",
        "metrics.jsonl",
        "summary.json",
        "checkpoint.pt",
    }
    saved = json.loads((d / "summary.json").read_text())
    assert saved["status"] == "completed" and saved == {**summary, **saved}
    for key in (
        "final_eval_loss",
        "best_eval_loss",
        "steps",
        "steps_to_target",
        "seconds_to_target",
        "tokens_per_s",
        "peak_mem_mb",
        "error",
    ):
        assert key in saved
    rows = read_jsonl(d / "metrics.jsonl")
    assert [r["step"] for r in rows] == [0, 3, 6, 9, 12]
    assert rows[0].keys() == {"step", "tokens", "wall_s", "eval/loss"}  # before any step
    assert all(
        {"step", "tokens", "wall_s", "train/loss", "lr", "grad_norm"} <= r.keys() for r in rows[1:]
    )
    assert rows[-1]["eval/loss"] == saved["final_eval_loss"]
    assert saved["best_eval_loss"] == min(r["eval/loss"] for r in rows if "eval/loss" in r)
    assert rows[-1]["tokens"] == 12 * 4 * 32
    import yaml

    config = yaml.safe_load((d / "config.yaml").read_text())
    assert config["meta"]["run_id"] == d.name
    assert len(config["meta"]["data_hash"]) == 64
    assert config["meta"]["versions"]["torch"].startswith("2.13")
    # where it executed: the ATen kernel path torch dispatches to on this processor
    assert config["meta"]["host"]["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert config["meta"]["host"]["threads"] == torch.get_num_threads()


def test_run_id_depends_on_semantics_not_logging(tiny):
    base = run_id(compose(tiny))
    assert run_id(compose([*tiny, "trainer.log_every=1", "logger=wandb_offline"])) == base
    assert run_id(compose([*tiny, "optimizer.lr=0.01"])) != base
    assert run_id(compose([*tiny, "seed=3"])).endswith(base[-8:]) is False


def test_run_id_survives_a_new_schema_key_with_its_default(tiny, monkeypatch):
    """Only values that differ from the schema's defaults are hashed: a key added to the schema
    later, present in the config at its default, does not change any existing run id."""
    from omegaconf import OmegaConf

    import bench.tracking.identity

    cfg = compose(tiny)
    base = run_id(cfg)
    defaults = schema_defaults()
    defaults["trainer"]["new_knob"] = 3
    monkeypatch.setattr(bench.tracking.identity, "schema_defaults", lambda: defaults)
    cfg = OmegaConf.create(OmegaConf.to_container(cfg))  # untyped, so that it takes a new key
    cfg.trainer.new_knob = 3
    assert run_id(cfg) == base
    cfg.trainer.new_knob = 4  # a non-default value of the new key is part of the id
    assert run_id(cfg) != base


def test_completed_run_is_skipped_when_launched_again(tmp_path, tiny):
    run(compose(tiny))
    (d,) = run_dirs(tmp_path / "runs")
    before = (d / "metrics.jsonl").read_text()
    again = run(compose(tiny))
    assert again["status"] == "completed"
    assert (d / "metrics.jsonl").read_text() == before


def test_a_record_under_an_older_id_of_the_same_config_is_found_and_skipped(tmp_path, tiny):
    """Records written before the id scheme changed are recognised by their stored config: a
    relaunch skips them instead of training again, and a different config still trains."""
    run(compose(tiny))
    (d,) = run_dirs(tmp_path / "runs")
    old = d.with_name(d.name.rsplit("-", 1)[0] + "-0ld1d000")  # the same run, another id
    d.rename(old)
    again = run(compose(tiny))
    assert again == json.loads((old / "summary.json").read_text())
    assert run_dirs(tmp_path / "runs") == [old]
    run(compose([*tiny, "optimizer.lr=0.02"]))
    assert len(run_dirs(tmp_path / "runs")) == 2


def test_an_own_folder_is_resumed_before_an_older_record_of_the_same_config(tmp_path, tiny):
    """An interrupted run's own folder wins over an older completed record of the same config
    (the run resumes there); tests/bench/test_migrate.py: a record of an older format is never
    taken."""
    hessian = [*tiny, "metrics.hessian.every=10", "metrics.hessian.iters=2"]
    run(compose(hessian))
    (d,) = run_dirs(tmp_path / "runs")
    old = d.with_name(d.name.rsplit("-", 1)[0] + "-0ld1d000")
    d.rename(old)
    d.mkdir()  # the own folder exists but holds no finished run (a relaunch was killed)
    assert run(compose(hessian))["status"] == "completed"
    assert (d / "summary.json").is_file()  # trained in its own folder, not skipped




def test_nan_in_one_run_of_a_sweep_marks_it_diverged_and_the_sweep_goes_on(
        tmp_path, tiny, monkeypatch):
    """A weight of seed 1's model turns NaN before its 5th step: that run alone is diverged."""
    from bench.train import Trainer

    step_once = Trainer.train_step

    def poisoned(self, step, stats):
        if self.seed == 1 and step == 4:
            with torch.no_grad():
                next(self.model.parameters()).fill_(float("nan"))
        return step_once(self, step, stats)

    monkeypatch.setattr(Trainer, "train_step", poisoned)
    out = tmp_path / "runs"
    statuses = [run(compose([*tiny, f"seed={seed}"]))["status"] for seed in (0, 1, 2)]
    assert statuses == ["completed", "diverged", "completed"]
    (diverged,) = [d for d in run_dirs(out) if "-s1-" in d.name]
    summary = json.loads((diverged / "summary.json").read_text())
    assert summary["diverged_step"] == 5 and summary["final_eval_loss"] is None
    assert summary["error"] == "loss nan at step 5"
    run_analysis(out, tmp_path / "figures")
    table = next((tmp_path / "figures").glob("*summary.md")).read_text()
    assert table.count("diverged") >= 1 and table.count("completed") >= 2


def test_loss_explosion_counts_as_divergence(tmp_path, tiny):
    summary = run(
        compose([*tiny, "adapter.target_modules=[all]", "optimizer.lr=10", "trainer.grad_clip=0"])
    )
    assert summary["diverged_step"] > 1
    assert summary["status"] == "diverged"


def test_lr_schedules():
    assert lr_factor(0, "constant", 10, 100) == 1.0
    assert lr_factor(0, "warmup_constant", 10, 100) == 0.1
    assert lr_factor(50, "warmup_constant", 10, 100) == 1.0
    assert lr_factor(9, "warmup_cosine", 10, 100) == 1.0
    assert abs(lr_factor(55, "warmup_cosine", 10, 100) - 0.5) < 1e-12
    assert lr_factor(100, "warmup_cosine", 10, 100) < 1e-12


def test_a_failed_factorisation_in_the_step_counts_as_divergence(tmp_path, tiny, monkeypatch):
    def broken_step(self, closure=None):
        raise torch.linalg.LinAlgError("linalg.svd: the algorithm failed to converge")

    monkeypatch.setattr(torch.optim.AdamW, "step", broken_step)
    summary = run(compose(tiny))
    assert summary["status"] == "diverged" and summary["diverged_step"] == 1
    assert "LinAlgError in the optimizer step" in summary["error"]


def test_a_run_held_by_another_process_is_skipped(tmp_path, tiny):
    from filelock import FileLock

    from bench.run import identify

    cfg = compose(tiny)
    run_dir = tmp_path / "runs" / "default" / run_id(cfg, identify(cfg).content)
    run_dir.mkdir(parents=True)
    with FileLock(str(run_dir / ".lock")):  # as a concurrent worker would hold it
        assert run(cfg) is None
    assert not (run_dir / "metrics.jsonl").exists()
    assert run(cfg)["status"] == "completed"  # once released, the run goes ahead


def test_time_to_a_numeric_target_is_the_first_eval_at_or_below_it(tmp_path, tiny):
    for target, out in ((100.0, "reached"), (0.01, "never")):
        overrides = [*tiny, f"metrics.target_loss={target}", f"out_dir={tmp_path / out}"]
        summary = run(compose(overrides))
        (d,) = run_dirs(tmp_path / out)
        rows = [r for r in read_jsonl(d / "metrics.jsonl") if "eval/loss" in r]
        if out == "reached":  # every eval is below 100: the first one, before training
            assert (summary["steps_to_target"], summary["tokens_to_target"]) == (0, 0)
            assert summary["seconds_to_target"] == rows[0]["wall_s"]
        else:
            assert summary["steps_to_target"] is None and summary["seconds_to_target"] is None
