"""Smoke-sized versions of the studies: the experiment configs compose, run and are analysed.

The studies and their smoke overrides come from their YAMLs (`study.smoke` in
conf/experiment/<study>.yaml, discovered by `python -m experiments`); each sweep is the study's
own experiment config shrunk by those overrides and a tiny model, through the real entry point
and launcher."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from experiments.__main__ import discover, load_experiment, sweep_of
from tests.conftest import ROOT, run_cli, run_dirs

# A tiny model and budget for any LM study (the toy ignores them).
SHRINK = ["model.d_model=32", "model.n_layer=1", "model.n_head=4", "model.seq_len=32",
          "trainer.max_steps=8", "trainer.eval_every=4", "trainer.batch_size=4",
          "data.eval_batches=1", "model.pretrain.max_steps=4", "model.pretrain.batch_size=4"]
STUDIES, _ = discover()


def _smoke(tmp_path, experiment, sweep_overrides):
    out = tmp_path / "runs"
    proc = run_cli(["-m", f"+experiment={experiment}", *SHRINK, *sweep_overrides,
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
                            "adapters_x_optimizers"}
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
    proc = subprocess.run([sys.executable, "-m", "analysis", f"runs={out}",
                           f"figures={figures}"], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    sweep = dirs[0].parent.name
    table = "toy" if config["task"] == "toy" else "tuned"
    assert (figures / f"{sweep}_{table}.md").exists() and (figures / "REPORT.md").exists()


def test_every_stage_finds_its_sweep_folder():
    expected = {"balora_toy": "balora_toy", "balora_finetune_full": "balora_finetune",
                "riemannian_attention_adamw": "riemannian_attention",
                "adapters_x_optimizers_riemannian": "adapters_x_optimizers"}
    for name, study in STUDIES.items():
        for _, experiment in study.stages:
            assert sweep_of(experiment) == expected.get(experiment, name), experiment
            block = load_experiment(experiment).study
            assert (block.name, block.baseline) == (name, study.baseline), experiment
