"""Every fault confined to its own run: the five worst cases of a hostile or clumsy user, and
the checks of what a run is given (README, Reliability)."""

from __future__ import annotations

import json
import math
import os

import pytest
import torch
import yaml

from analysis.__main__ import main as analysis_main
from bench.config import ConfigError, validate
from bench.run import run
from bench.train import Trainer
from tests.conftest import compose, config_error, read_jsonl, run_dirs


def _relaunchable(run_dir):
    """The record as a kill leaves it: summary `running`."""
    summary = json.loads((run_dir / "summary.json").read_text())
    (run_dir / "summary.json").write_text(json.dumps({**summary, "status": "running"}))


# -- 1. records append, never shrink ---------------------------------------------------------
def test_a_garbage_row_in_the_middle_loses_no_valid_row(finished, tiny, capfd):
    rows = (finished / "metrics.jsonl").read_text().splitlines(keepends=True)
    middle = len(rows) // 2
    garbage = '{"step": 1e400, "eval/loss": NaN}\n'
    (finished / "metrics.jsonl").write_text("".join(rows[:middle]) + garbage
                                            + "".join(rows[middle:]))
    _relaunchable(finished)
    assert run(compose(tiny))["status"] == "completed"
    assert (finished / "metrics.jsonl").read_text().splitlines(keepends=True) == rows
    assert (finished / "metrics.rejected.jsonl").read_text() == garbage
    assert "1 line(s) that are not metric rows moved to metrics.rejected.jsonl" in (
        capfd.readouterr().err)


def test_a_record_that_lost_its_rows_is_failed_not_completed(finished, tiny):
    n = len(read_jsonl(finished / "metrics.jsonl"))
    (finished / "metrics.jsonl").unlink()
    _relaunchable(finished)
    summary = run(compose(tiny))
    assert summary["status"] == "failed"
    assert f"holds 0 of the {n} rows logged up to the checkpoint at step 12" in summary["error"]


# -- 3. paths confined -----------------------------------------------------------------------
@pytest.mark.parametrize("sweep", ["../../escape", "/tmp/abs", "", "a/b/c", "..", "x" * 101,
                                   "${oc.env:HOME}"])
def test_a_sweep_is_one_safe_folder_name(tmp_path, tiny, sweep):
    line = config_error([*tiny, f"sweep='{sweep}'"])
    assert line.startswith("error: sweep=") and "allowed values: one folder name" in line
    assert not (tmp_path / "runs").exists()


def test_out_dir_that_is_a_file_or_unwritable_is_one_line(tmp_path, tiny):
    (tmp_path / "afile").write_text("")
    with pytest.raises(ConfigError, match=r"^out_dir='.*afile' is a file; allowed values"):
        run(compose([*tiny, f"out_dir={tmp_path / 'afile'}"]))
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(ConfigError, match=r"cannot be used \(PermissionError"):
            run(compose([*tiny, f"out_dir={locked}"]))


def test_analysis_writes_under_figures_whatever_a_record_says(finished, tmp_path):
    config = yaml.safe_load((finished / "config.yaml").read_text())
    config["sweep"] = "../../../../" + str(tmp_path / "pwn").lstrip("/")
    (finished / "config.yaml").write_text(yaml.safe_dump(config))
    figures = tmp_path / "figures"
    assert analysis_main([f"runs={tmp_path / 'runs'}", f"figures={figures}"]) == 0
    assert not (tmp_path / "pwn").exists()
    written = [p for p in tmp_path.rglob("*") if p.is_file() and "runs" not in p.parts]
    assert written and all(figures in p.parents for p in written)
    assert (figures / "default_summary.md").exists()  # named by its folder, not the record's word


def test_analysis_does_not_follow_a_record_folder_linked_out_of_runs(finished, tmp_path):
    outside = tmp_path / "outside" / "elsewhere"
    outside.parent.mkdir()
    finished.rename(outside)
    finished.symlink_to(outside, target_is_directory=True)
    (tmp_path / "runs" / "default" / "real").mkdir()
    with pytest.warns(UserWarning, match="outside .*runs: skipped"):
        from analysis.records import record_dirs

        assert record_dirs(tmp_path / "runs") == []


# -- 4. one run's fault is that run's -------------------------------------------------------
@pytest.mark.parametrize("damage", [
    "metrics_nan", "alias_bomb", "deep_nesting", "seed_abc", "summary_inf", "empty_config"])
def test_one_crafted_record_is_skipped_and_named_and_the_rest_drawn(finished, tmp_path, tiny,
                                                                     capsys, damage):
    assert run(compose([*tiny, "seed=1"]))["status"] == "completed"
    config = finished / "config.yaml"
    if damage == "metrics_nan":
        with open(finished / "metrics.jsonl", "a") as f:
            f.write('{"step": 1e400, "eval/loss": NaN}\n')
    elif damage == "alias_bomb":
        config.write_text("a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a]\n"
                          "c: &c [*b, *b, *b, *b, *b, *b]\nd: [*c, *c, *c, *c, *c, *c]\n")
    elif damage == "deep_nesting":
        config.write_text("a: " + "[" * 20000 + "]" * 20000 + "\n")
    elif damage == "seed_abc":
        config.write_text(config.read_text().replace("\nseed: 0\n", "\nseed: abc\n"))
    elif damage == "summary_inf":
        summary = json.loads((finished / "summary.json").read_text())
        (finished / "summary.json").write_text(
            json.dumps({**summary, "final_eval_loss": math.inf}))
    else:
        config.write_text("")
    figures = tmp_path / "figures"
    assert analysis_main([f"runs={tmp_path / 'runs'}", f"figures={figures}"]) == 0
    err = capsys.readouterr().err
    runs = [line for line in (figures / "default_summary.md").read_text().splitlines()
            if line.startswith("| full/adamw |")]
    if damage == "metrics_nan":  # the row is left out, the run kept
        assert "1 line(s) that are not metric rows left out" in err and len(runs) == 2
    else:
        assert f"skipped {finished}" in err and len(runs) == 1


def test_a_crafted_sibling_record_does_not_stop_a_new_launch(finished, tiny, capfd):
    """find_record reads the sweep's other records of the same method and seed: a crafted one
    is skipped with a warning, and the new run goes on."""
    sibling = finished.with_name(finished.name.rsplit("-", 1)[0] + "-0ld1d000")
    sibling.mkdir()
    (sibling / "config.yaml").write_text("a: " + "[" * 20000 + "]" * 20000 + "\n")
    (sibling / "summary.json").write_text(json.dumps({"status": "completed"}))
    other = compose([*tiny, "optimizer.lr=0.02"])  # a new config of the same method and seed
    assert run(other)["status"] == "completed"
    assert f"{sibling / 'config.yaml'}: does not parse" in capfd.readouterr().err


def test_a_stale_temp_file_of_an_interrupted_write_is_removed(finished, tiny):
    stale = finished / ".checkpoint.pt.abc123.tmp"
    stale.write_bytes(b"half a checkpoint")
    _relaunchable(finished)
    assert run(compose(tiny))["status"] == "completed"
    assert not stale.exists()


def test_records_are_readable_by_the_group(finished):
    for name in ("config.yaml", "metrics.jsonl", "summary.json", "checkpoint.pt"):
        assert (finished / name).stat().st_mode & 0o777 == 0o644, name


# -- 5. divergence a LayerNorm model shows ---------------------------------------------------
def _poison(monkeypatch, at_step: int, how, steps: int = 12):
    """Apply `how` to the model before step `at_step` of the 12-step run (not of a pretraining
    run, which trains with the same Trainer)."""
    step_once = Trainer.train_step

    def poisoned(self, step, stats):
        if step == at_step and self.cfg.max_steps == steps:
            with torch.no_grad():
                how(self.model)
        return step_once(self, step, stats)

    monkeypatch.setattr(Trainer, "train_step", poisoned)


def test_a_collapse_to_the_uniform_prediction_is_diverged(tmp_path, tiny, monkeypatch):
    """A fine-tuned model whose logits go flat (the head zeroed) predicts uniformly: its loss
    is ln(256) = 5.545, below 10 x its start, and the run is diverged, naming the rule."""
    def flatten_head(model):  # tied embedding and head zeroed: every logit 0
        model.tok_emb.weight.zero_()
        model.tok_emb.weight.requires_grad_(False)

    _poison(monkeypatch, 7, flatten_head)
    summary = run(compose([*tiny, "model.init=pretrained",
                           f"model.pretrain.cache_dir={tmp_path / 'base'}",
                           "model.pretrain.max_steps=150", "model.pretrain.lr=1e-2"]))
    assert summary["status"] == "diverged" and summary["diverged_step"] == 12
    assert "uniform prediction's ln(256) = 5.5452" in summary["error"]


def test_a_weight_that_explodes_is_diverged_naming_it(tiny, monkeypatch):
    _poison(monkeypatch, 2, lambda model: model.blocks[0].attn.q.weight.mul_(1e5))
    summary = run(compose([*tiny, "adapter.target_modules=[q]", "optimizer.lr=1e-6"]))
    assert summary["status"] == "diverged" and summary["diverged_step"] == 6
    assert summary["error"].startswith("blocks.0.attn.q.weight has RMS")
    assert "trainer.weight_growth=1000" in summary["error"]


def test_a_healthy_run_fires_no_rule_and_the_rules_can_be_turned_off(tiny, monkeypatch):
    assert run(compose(tiny))["status"] == "completed"
    _poison(monkeypatch, 2, lambda model: model.blocks[0].attn.q.weight.mul_(1e5))
    off = run(compose([*tiny, "adapter.target_modules=[q]", "optimizer.lr=1e-6",
                       "trainer.weight_growth=0", "trainer.divergence_factor=1e9"]))
    assert off["status"] == "completed"


# -- 6. inputs you can trust -----------------------------------------------------------------
def _pretrained(tmp_path, tiny):
    return [*tiny, "model.init=pretrained", f"model.pretrain.cache_dir={tmp_path / 'base'}",
            "model.pretrain.max_steps=4", "model.pretrain.batch_size=4"]


def test_a_base_changed_after_pretraining_is_refused(tmp_path, tiny):
    args = _pretrained(tmp_path, tiny)
    first = run(compose(args))
    (record,) = run_dirs(tmp_path / "runs")
    sha = yaml.safe_load((record / "config.yaml").read_text())["meta"]["base_sha256"]
    (weights,) = (tmp_path / "base").glob("*/model.pt")
    assert first["status"] == "completed" and len(sha) == 64
    state = torch.load(weights, weights_only=True)
    torch.save({k: v * 1000 for k, v in state.items()}, weights)  # scaled x1000
    with pytest.raises(ConfigError, match=r"model.pt: its sha256 \w{12} is not the "
                                          rf"{sha[:12]} its pretraining record states"):
        run(compose([*args, "seed=1"]))


@pytest.mark.parametrize(("override", "message"), [
    ("optimizer.betas=[2,3]", "optimizer.betas[0]=2.0 must be in [0, 1)"),
    ("optimizer.betas=[0.9]", "optimizer.betas=[0.9] must be two numbers in [0, 1)"),
    ("optimizer.eps=-1", "optimizer.eps=-1.0 must be > 0"),
    ("optimizer=sgd optimizer.momentum=-1", "optimizer.momentum=-1.0 must be in [0, 1)"),
    ("trainer.threads=-1", "trainer.threads=-1 must be > 0"),
    ("metrics.hessian.batch_size=-1", "metrics.hessian.batch_size=-1 must be > 0"),
    ("seed=18446744073709551617", "seed=18446744073709551617 is not allowed"),
    ("model.dropout=2", "model.dropout=2.0 must be in [0, 1)"),
    ("data.eval_batches=0", "data.eval_batches=0 must be >= 1"),
    ("data.paths=[a.txt,a.txt]", "data.paths lists a.txt more than once"),
])
def test_every_bad_value_is_one_line_before_anything_is_written(tmp_path, tiny, override,
                                                                  message):
    extra = ["data=text"] if "data.paths" in override else []
    line = config_error([*tiny, *extra, *override.split(" ")])
    assert line.startswith(f"error: {message}"), line
    assert not (tmp_path / "runs").exists()


def test_a_geometry_on_lora_factors_needs_an_optimizer_that_steps_manifolds():
    with pytest.raises(ConfigError) as err:
        validate(compose(["adapter=lora_riemannian", "optimizer=adamw"]))
    assert str(err.value) == (
        "adapter.geometry='fixed_rank_embedded' with optimizer.name='adamw': a point on a "
        "manifold needs an optimizer that steps manifolds: allowed optimizer.name: "
        "riemannian_adam, riemannian_sgd, riemannian_normalized")
