"""The tuning protocol applies to every arm of every study (docs/design.md §8): each method's
tuned knobs (its grid's swept ones and the study's `tune` ones, re-chosen by the long stage)
include every knob it has."""

from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path

import pytest

from bench.adapters import ADAPTERS
from bench.optim import OPTIMIZERS
from experiments.__main__ import (
    discover,
    stages,
    study_of,
    sweep_params,
    tuned_values,
)
from tests.conftest import compose

STUDIES, _ = discover()


def knobs_of(cfg) -> set[str]:
    """The knobs a method (a composed run config) has: its learning rate (the manifold one for
    a Riemannian optimizer), alpha/r for a factored adapter ("adapter.alpha|adapter.scale":
    either spelling), LoRA+'s ratio, and where parameters outside the main optimizer's train
    (an AdamW part: embeddings, norms, the MLP), that part's LR; weight decay wherever it
    reaches a trained weight."""
    spec = OPTIMIZERS[cfg.optimizer.name]
    manifold = spec.needs_manifold
    rest_trains = "all" in cfg.adapter.target_modules  # an AdamW part beside the main one
    knobs = {"optimizer.manifold_lr" if manifold else "optimizer.lr"}
    if "alpha" in {f.name for f in dataclasses.fields(ADAPTERS[cfg.adapter.name].knobs)}:
        knobs.add("adapter.alpha|adapter.scale")
    if cfg.optimizer.name == "loraplus":
        knobs.add("optimizer.lr_ratio")
    if rest_trains and cfg.optimizer.name == "muon":
        knobs.add("optimizer.adamw_lr")
    if rest_trains and manifold:
        knobs.add("optimizer.lr")
    if not manifold or rest_trains or cfg.adapter.get("geometry", "euclidean") == "euclidean":
        knobs.add("optimizer.weight_decay")
    return knobs


def _cells(experiment: str):
    """The composed config of every (adapter, optimizer) cell of an experiment's grid."""
    params = sweep_params(experiment)
    for adapter, optimizer in itertools.product(params.get("adapter") or [None],
                                                params.get("optimizer") or [None]):
        yield compose([f"+experiment={experiment}",
                       *([f"adapter={adapter}"] if adapter else []),
                       *([f"optimizer={optimizer}"] if optimizer else [])])


@pytest.mark.parametrize("name", sorted(n for n in STUDIES if n != "balora_toy"))
def test_every_knob_of_every_arm_is_tuned(name, tmp_path):
    study = STUDIES[name]
    assert len(study.tuning_seeds) >= 2, f"{name}: the long stage chooses on two tuning seeds"
    for experiment in {e for kind, e in stages(study) if kind == "grid"}:
        tuned = set(tuned_values(experiment, study_of(experiment), Path(tmp_path)))
        for cfg in _cells(experiment):
            missing = {k for k in knobs_of(cfg) if not set(k.split("|")) & tuned}
            assert not missing, (f"{experiment}: {cfg.adapter.name}/{cfg.optimizer.name} has "
                                 f"{sorted(missing)} untuned")
