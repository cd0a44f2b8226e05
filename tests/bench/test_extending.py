"""README's "Extending", worked: a new optimizer with a new knob is its module (here, this file),
one registry entry, its YAML and its test. Nothing else of the project changes: the schema, the
value checks, the run id, the record and the method name all follow from the registry."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass

import pytest
import torch

import bench.config
from bench.errors import ConfigError, in_unit
from bench.optim import OPTIMIZERS
from bench.optim.base import OptimizerKnobs, OptimizerSpec
from tests.conftest import ROOT, TINY


# -- the optimizer's module: its knobs, their check, its builder --------------------------------
@dataclass
class SignumKnobs(OptimizerKnobs):
    sign_beta: float = 0.9  # the new knob: the momentum whose sign steps


def check_signum(cfg) -> None:
    in_unit("optimizer.sign_beta", cfg.optimizer.sign_beta)


class Signum(torch.optim.Optimizer):
    """signSGD with momentum (Bernstein et al. 2018): m <- beta m + (1 - beta) g,
    theta <- theta - lr sign(m)."""

    def __init__(self, params, lr: float, beta: float):
        super().__init__(params, {"lr": lr, "beta": beta})

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                m = self.state[p].setdefault("m", torch.zeros_like(p))
                m.mul_(group["beta"]).add_(p.grad, alpha=1 - group["beta"])
                p.add_(m.sign(), alpha=-group["lr"])


def signum(model, params, cfg):
    return Signum(params, lr=cfg.lr, beta=cfg.sign_beta)


# -- its registry entry and its YAML --------------------------------------------------------------
@pytest.fixture
def registered(tmp_path, monkeypatch):
    """The entry in bench.optim.OPTIMIZERS, the schema rebuilt from the registry, and
    conf/optimizer/signum.yaml in a copy of conf/; everything undone afterwards."""
    monkeypatch.setitem(OPTIMIZERS, "signum",
                        OptimizerSpec(signum, knobs=SignumKnobs, check=check_signum))
    bench.config.register_configs()
    conf = tmp_path / "conf"
    shutil.copytree(ROOT / "conf", conf)
    (conf / "optimizer" / "signum.yaml").write_text("name: signum\nlr: 3e-3\nsign_beta: 0.9\n")
    yield conf
    monkeypatch.undo()
    bench.config.register_configs()


def _compose(conf, overrides):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        return compose("config", overrides=overrides)


def test_a_new_optimizer_with_a_new_knob_trains_gpt_tiny_from_scratch(registered, tmp_path):
    from bench.run import run

    overrides = [*TINY, "optimizer=signum", "optimizer.sign_beta=0.8", "adapter=full",
                 "adapter.target_modules=[all]", f"out_dir={tmp_path / 'runs'}"]
    summary = run(_compose(registered, overrides))
    assert summary["status"] == "completed"
    (record,) = [d for d in (tmp_path / "runs" / "default").iterdir() if d.is_dir()]
    rows = [json.loads(line) for line in (record / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["eval/loss"] < rows[0]["eval/loss"]  # it learns
    config = (record / "config.yaml").read_text()
    assert "sign_beta: 0.8" in config and "method: full/signum" in config
    # the knob is part of the run's identity: another value is another run
    other = run(_compose(registered, [*overrides[:-1], "optimizer.sign_beta=0.5",
                                      f"out_dir={tmp_path / 'runs'}"]))
    assert other["status"] == "completed"
    assert len([d for d in (tmp_path / "runs" / "default").iterdir() if d.is_dir()]) == 2


def test_its_check_and_its_ownership_come_with_the_registry_entry(registered):
    from bench.config import validate

    with pytest.raises(ConfigError) as bad:
        validate(_compose(registered, ["optimizer=signum", "optimizer.sign_beta=1.5"]))
    assert str(bad.value) == "optimizer.sign_beta=1.5 must be in [0, 1)"
    with pytest.raises(ConfigError) as foreign:  # its knob on another optimizer is refused
        validate(_compose(registered, ["optimizer=adamw", "optimizer.sign_beta=0.5"]))
    assert str(foreign.value).startswith("optimizer.sign_beta=0.5 is a key of optimizer=signum")
