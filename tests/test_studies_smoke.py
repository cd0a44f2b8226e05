"""Smoke-sized versions of the studies: the experiment configs compose, run and are analysed.

Each sweep is the study's own experiment config, shrunk by overrides (a tiny model, a few steps,
one point of its grid), through the real entry point and launcher."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT, run_cli, run_dirs

SHRINK = ["model.d_model=32", "model.n_layer=1", "model.n_head=4", "model.seq_len=32",
          "trainer.max_steps=8", "trainer.eval_every=4", "trainer.batch_size=4",
          "data.eval_batches=1", "model.pretrain.max_steps=4", "model.pretrain.batch_size=4"]


def _smoke(tmp_path, experiment, sweep_overrides):
    out = tmp_path / "runs"
    proc = run_cli(["-m", f"+experiment={experiment}", *SHRINK, *sweep_overrides,
                    f"out_dir={out}", f"model.pretrain.cache_dir={tmp_path / 'cache'}"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    dirs = run_dirs(out)
    statuses = [json.loads((d / "summary.json").read_text())["status"] for d in dirs]
    assert statuses and all(s == "completed" for s in statuses), statuses
    return out, dirs


@pytest.mark.parametrize(("experiment", "overrides", "n_runs"), [
    ("balora_finetune", ["adapter=lora,balora", "optimizer.lr=1e-3", "adapter.alpha=16"], 2),
    ("riemannian_attention", ["model.attention.geometry=fixed_rank_embedded,"
                              "partial_isometry_canonical", "model.attention.block=true",
                              "optimizer.manifold_lr=3e-2"], 2),
    ("adapters_x_optimizers_riemannian", ["adapter=lora_riemannian,balora_riemannian",
                                          "optimizer.manifold_lr=1e-3"], 2),
])
def test_study_smoke(tmp_path, experiment, overrides, n_runs):
    out, dirs = _smoke(tmp_path, experiment, overrides)
    assert len(dirs) == n_runs
    figures = tmp_path / "figures"
    proc = subprocess.run([sys.executable, "-m", "analysis", f"runs={out}",
                           f"figures={figures}"], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    sweep = dirs[0].parent.name
    assert (figures / f"{sweep}_tuned.md").exists() and (figures / "REPORT.md").exists()


def test_every_stage_finds_its_sweep_folder():
    from experiments.__main__ import STUDIES, sweep_of

    expected = {"balora_toy": "balora_toy", "balora_finetune_full": "balora_finetune",
                "riemannian_attention_adamw": "riemannian_attention",
                "adapters_x_optimizers_riemannian": "adapters_x_optimizers"}
    for name, (stages, _) in STUDIES.items():
        for _, experiment in stages:
            assert sweep_of(experiment) == expected.get(experiment, name), experiment
