"""Smoke-sized versions of the studies: the experiment configs compose, run through the real
entry point and launcher, and are analysed. The studies and their smoke overrides come from their
YAMLs (`study.smoke` in conf/experiment/<study>.yaml, discovered by `python -m experiments`)."""

from __future__ import annotations

import json

import pytest
import yaml

from tests.conftest import SERIAL, run_analysis, run_cli, run_dirs
from tests.experiments.test_stages import STUDIES

# A tiny model and budget for any LM study (the toy ignores them).
SHRINK = ["model.d_model=32", "model.n_layer=1", "model.n_head=4", "model.seq_len=32",
          "trainer.max_steps=8", "trainer.eval_every=4", "trainer.batch_size=4",
          "data.eval_batches=1", "model.pretrain.max_steps=4", "model.pretrain.batch_size=4"]

def _smoke(tmp_path, experiment, sweep_overrides):
    out = tmp_path / "runs"
    proc = run_cli(["-m", f"+experiment={experiment}", *SHRINK, *sweep_overrides, SERIAL,
                    f"out_dir={out}", f"model.pretrain.cache_dir={tmp_path / 'cache'}"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    dirs = run_dirs(out)
    statuses = [json.loads((d / "summary.json").read_text())["status"] for d in dirs]
    assert statuses and all(s == "completed" for s in statuses), statuses
    return out, dirs


def _n_runs(overrides: list[str]) -> int:
    """The runs a multirun of these overrides makes: the product of their value counts."""
    n = 1
    for override in overrides:
        n *= len(override.split("=", 1)[1].split(","))
    return n








def test_every_study_declares_a_smoke_run():
    assert set(STUDIES) == {"balora_toy", "balora_finetune", "riemannian_attention",
                            "adapters_x_optimizers", "balora_rank", "smollm2_finetune"}
    for study in STUDIES.values():
        assert study.smoke, f"{study.name}: study.smoke is empty"


@pytest.mark.parametrize("name", sorted(STUDIES))
def test_study_smoke(tmp_path, name):
    study = STUDIES[name]
    out, dirs = _smoke(tmp_path, name, study.smoke)
    assert len(dirs) == _n_runs(study.smoke)
    config = yaml.safe_load((dirs[0] / "config.yaml").read_text())
    assert config["study"]["name"] == name and config["study"]["baseline"] == study.baseline
    figures = tmp_path / "figures"
    run_analysis(out, figures)
    sweep = dirs[0].parent.name
    table = "toy" if config["task"] == "toy" else "tuned"
    assert (figures / f"{sweep}_{table}.md").exists() and (figures / "REPORT.md").exists()
    tuned = (figures / f"{sweep}_{table}.md").read_text()
    for key in study.rows:  # a row per value; a numeric key (balora_rank: r) gets its figure
        name = key.rsplit(".", 1)[-1]
        assert f" {name}=" in tuned
        assert (figures / f"{sweep}_loss_vs_{name}.png").exists() == (key == "adapter.r")

