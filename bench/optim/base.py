"""What every optimizer builder shares: its registry entry, the decay groups and the combination
of a Riemannian optimizer with AdamW for the Euclidean rest."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class OptimizerSpec:
    """One entry of bench.optim.OPTIMIZERS.

    `build(params, cfg)` makes the optimizer from the trainable parameters (a non-empty list) and
    the optimizer config group. `needs_manifold`: it steps `geoopt.ManifoldParameter`s, so a run
    must have some (model.attention.geometry or adapter.geometry not euclidean).
    """

    build: Callable[[list[torch.nn.Parameter], object], torch.optim.Optimizer]
    needs_manifold: bool = False


class CombinedOptimizer(torch.optim.Optimizer):
    """Several optimizers stepped as one (a Riemannian one and AdamW for the rest)."""

    def __init__(self, optimizers: dict[str, torch.optim.Optimizer]):
        self.optimizers = optimizers
        self.param_groups = [g for opt in optimizers.values() for g in opt.param_groups]
        self.defaults = {}
        self.state = {}

    def step(self, closure=None):
        for opt in self.optimizers.values():
            opt.step()

    def zero_grad(self, set_to_none: bool = True):
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=set_to_none)

    def state_dict(self):
        return {k: opt.state_dict() for k, opt in self.optimizers.items()}

    def load_state_dict(self, state):
        for k, opt in self.optimizers.items():
            opt.load_state_dict(state[k])


def euclidean_groups(params, weight_decay: float) -> list[dict]:
    """Decay on matrices only; norms, biases and scales are not decayed."""
    decay = [p for p in params if p.ndim >= 2]
    rest = [p for p in params if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if rest:
        groups.append({"params": rest, "weight_decay": 0.0})
    return groups
