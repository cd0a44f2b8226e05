"""Builds the optimizer for a model whose trainable parameters an adapter has chosen.

Euclidean: AdamW or SGD over every trainable parameter. Riemannian: the parameters that live on a
manifold (`geoopt.ManifoldParameter`) get the Riemannian optimizer at `manifold_lr` (default
`lr`), every other trainable parameter gets AdamW at `lr`; both are stepped together. Weight decay
applies to the Euclidean matrices only (decoupled, AdamW's); manifold points get none, because
geoopt's coupled L2 decay would not be comparable (papers/knight.md §5).
"""

from __future__ import annotations

import torch

from bench.config import OPTIMIZERS, ConfigError


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


def _euclidean_groups(params, weight_decay: float):
    """Decay on matrices only; norms, biases and scales are not decayed."""
    decay = [p for p in params if p.ndim >= 2]
    rest = [p for p in params if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if rest:
        groups.append({"params": rest, "weight_decay": 0.0})
    return groups


def _adamw(params, cfg):
    return torch.optim.AdamW(
        _euclidean_groups(params, cfg.weight_decay), lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps
    )


def build_optimizer(model: torch.nn.Module, cfg) -> torch.optim.Optimizer:
    """`cfg` is the optimizer config group (name, lr, weight_decay, ...)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ConfigError("the adapter left no trainable parameter; check adapter.target_modules")
    if cfg.name == "adamw":
        return _adamw(params, cfg)
    if cfg.name == "sgd":
        return torch.optim.SGD(
            _euclidean_groups(params, cfg.weight_decay), lr=cfg.lr, momentum=cfg.momentum
        )
    if cfg.name.startswith("riemannian"):
        import geoopt

        from bench.optim.riemannian import build_riemannian

        on_manifold = [p for p in params if isinstance(p, geoopt.ManifoldParameter)]
        rest = [p for p in params if not isinstance(p, geoopt.ManifoldParameter)]
        # Each optimizer's own knobs; repairs (QR re-orthonormalisation) every repair_every.
        kwargs = {
            "riemannian_normalized": {"momentum": cfg.momentum, "c": cfg.trust_floor,
                                      "repair_every": cfg.repair_every},
            "riemannian_sgd": {"momentum": cfg.momentum, "stabilize": cfg.repair_every},
            "riemannian_adam": {"betas": tuple(cfg.betas), "eps": cfg.eps,
                                "stabilize": cfg.repair_every},
        }[cfg.name]
        opts = {
            "riemannian": build_riemannian(
                cfg.name, on_manifold, lr=cfg.manifold_lr or cfg.lr, **kwargs
            )
        }
        if rest:
            opts["adamw"] = _adamw(rest, cfg)
        return CombinedOptimizer(opts)
    raise ConfigError(
        f"optimizer.name={cfg.name!r} is not allowed; allowed values: {', '.join(OPTIMIZERS)}"
    )
