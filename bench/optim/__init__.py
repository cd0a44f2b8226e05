"""Builds the optimizer for a model whose trainable parameters an adapter has chosen.

`OPTIMIZERS` is the one list of optimizer names (`optimizer.name`, conf/optimizer/*.yaml): each
maps to an `OptimizerSpec` (its builder, and whether it needs manifold parameters or a LoRA
adapter). Adding an optimizer is its builder module, one entry below and its YAML.

Euclidean (euclidean.py): AdamW or SGD over every trainable parameter. Riemannian
(riemannian.py): the parameters that live on a manifold (`geoopt.ManifoldParameter`) get the
Riemannian optimizer at `manifold_lr` (default `lr`), every other trainable parameter gets AdamW
at `lr`; both are stepped together. Weight decay applies to the Euclidean matrices only
(decoupled, AdamW's); manifold points get none, because geoopt's coupled L2 decay would not be
comparable (papers/knight.md §5). Muon (muon.py): torch.optim.Muon on the block matrices,
AdamW on embeddings, head, norms and biases. LoRA-only: lora_preconditioned.py (the factor
gradients preconditioned by the other factor's r x r Gram, then AdamW or SGD) and loraplus.py
(B at lr_ratio x A's LR).
"""

from __future__ import annotations

import torch

from bench.errors import ConfigError
from bench.optim.base import CombinedOptimizer, OptimizerSpec
from bench.optim.euclidean import adamw, sgd
from bench.optim.lora_preconditioned import lora_preconditioned, method_suffix
from bench.optim.loraplus import loraplus
from bench.optim.muon import muon
from bench.optim.riemannian import riemannian_adam, riemannian_normalized, riemannian_sgd

OPTIMIZERS: dict[str, OptimizerSpec] = {
    "adamw": OptimizerSpec(adamw),
    "sgd": OptimizerSpec(sgd),
    "riemannian_adam": OptimizerSpec(riemannian_adam, needs_manifold=True),
    "riemannian_sgd": OptimizerSpec(riemannian_sgd, needs_manifold=True),
    "riemannian_normalized": OptimizerSpec(riemannian_normalized, needs_manifold=True),
    "muon": OptimizerSpec(muon),
    "lora_preconditioned": OptimizerSpec(lora_preconditioned, needs_lora=True,
                                         method_suffix=method_suffix),
    "loraplus": OptimizerSpec(loraplus, needs_lora=True),
}


def build_optimizer(model: torch.nn.Module, cfg) -> torch.optim.Optimizer:
    """`cfg` is the optimizer config group (name, lr, weight_decay, ...)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ConfigError("the adapter left no trainable parameter; check adapter.target_modules")
    if cfg.name not in OPTIMIZERS:
        raise ConfigError(
            f"optimizer.name={cfg.name!r} is not allowed; allowed values: {', '.join(OPTIMIZERS)}"
        )
    return OPTIMIZERS[cfg.name].build(model, params, cfg)


__all__ = ["OPTIMIZERS", "CombinedOptimizer", "OptimizerSpec", "build_optimizer"]
