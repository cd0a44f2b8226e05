"""What every optimizer builder shares: its registry entry, the decay groups, the combination
of two optimizers stepped as one (a Riemannian one or Muon, and AdamW for the rest) and the LoRA
factor pairs of a model."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from bench.errors import ConfigError, at_least, in_unit, positive


@dataclass
class OptimizerKnobs:
    """The keys every optimizer has (`optimizer.<key>`); an optimizer with more subclasses this
    and names it in its registry entry (bench.config builds the group's schema from every
    optimizer's)."""

    name: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 0.0


@dataclass
class AdamKnobs(OptimizerKnobs):
    """The keys of every optimizer that steps some parameters with AdamW (or Adam's moments)."""

    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8


def check_betas(key: str, betas: list, allowed: str = "") -> None:
    """`betas` (at `key`) is two numbers in [0, 1); `allowed` names another accepted value."""
    if len(betas) != 2:
        raise ConfigError(f"{key}={betas} must be {allowed}two numbers in [0, 1) (beta1, beta2)")
    for i, beta in enumerate(betas):
        in_unit(f"{key}[{i}]", beta)


def check_common(cfg) -> None:
    """lr > 0, weight_decay >= 0, and betas, eps, momentum where the optimizer has them."""
    o = cfg.optimizer
    positive("optimizer.lr", o.lr)
    at_least("optimizer.weight_decay", o.weight_decay, 0)
    check_betas("optimizer.betas", list(o.get("betas") or []))
    positive("optimizer.eps", o.eps)
    in_unit("optimizer.momentum", o.momentum)


@dataclass(frozen=True)
class OptimizerSpec:
    """One entry of bench.optim.OPTIMIZERS.

    `build(model, params, cfg)` makes the optimizer from the model (for parameter names and
    modules), its trainable parameters (a non-empty list, in `model.parameters()` order) and the
    optimizer config group. `needs_manifold`: it steps `geoopt.ManifoldParameter`s, so a run
    must have some (model.attention.geometry or adapter.geometry not euclidean). `needs_lora`: it
    steps LoRA factor pairs (`lora_A`, `lora_B`), so a run needs a LoRA adapter.
    `method_suffix(cfg)`: appended to the optimizer's name in the method name
    (bench.tracking.identity.method_name) when an option changes what the optimizer computes.
    `knobs`: the dataclass of its keys and their defaults; `check(cfg)`: the value checks of its
    own keys beyond `check_common` (cfg: the whole config), raising ConfigError.
    """

    build: Callable[[torch.nn.Module, list[torch.nn.Parameter], object], torch.optim.Optimizer]
    knobs: type = AdamKnobs
    check: Callable[[object], None] | None = None
    needs_manifold: bool = False
    needs_lora: bool = False
    method_suffix: Callable[[object], str] | None = None


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
        # torch's load_state_dict replaces each optimizer's group dicts: without this the
        # trainer's LR schedule would set the LR of groups no optimizer reads any more
        self.param_groups = [g for opt in self.optimizers.values() for g in opt.param_groups]


def euclidean_groups(params, weight_decay: float) -> list[dict]:
    """Decay on matrices only; norms, biases and scales are not decayed."""
    decay = [p for p in params if p.ndim >= 2]
    rest = [p for p in params if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if rest:
        groups.append({"params": rest, "weight_decay": 0.0})
    return groups


def lora_pairs(model: torch.nn.Module) -> list[tuple[torch.nn.Parameter, torch.nn.Parameter]]:
    """(A, B) = (lora_A (r x in), lora_B (out x r)) of every module that holds both as trainable
    2-D parameters (bench.adapters.lora.LoRALinear and its kin), in `model.modules()` order."""
    pairs = []
    for module in model.modules():
        a, b = getattr(module, "lora_A", None), getattr(module, "lora_B", None)
        if (isinstance(a, torch.nn.Parameter) and isinstance(b, torch.nn.Parameter)
                and a.ndim == b.ndim == 2 and a.requires_grad and b.requires_grad):
            pairs.append((a, b))
    return pairs
