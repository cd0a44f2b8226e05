"""Builds the optimizer for a model whose trainable parameters an adapter has chosen.

`OPTIMIZERS` is the one list of optimizer names (`optimizer.name`, conf/optimizer/*.yaml): each
maps to an `OptimizerSpec` that its module defines (its builder, its keys with their defaults and
checks, and whether it needs manifold parameters or a LoRA adapter). Adding an optimizer is its
module, one entry below, its YAML and its test: nothing else (README, Extending).

Euclidean (euclidean.py): AdamW or SGD over every trainable parameter. Riemannian
(riemannian.py): the parameters that live on a manifold (`geoopt.ManifoldParameter`) get the
Riemannian optimizer at `manifold_lr` (default `lr`), every other trainable parameter gets AdamW
at `lr`; both are stepped together. Weight decay applies to the Euclidean matrices only
(decoupled, AdamW's); manifold points get none, because geoopt's coupled L2 decay would not be
comparable (docs/papers/knight.md §5). Muon (muon.py): torch.optim.Muon on the block matrices,
AdamW on embeddings, head, norms and biases. LoRA-only: lora_preconditioned.py (the factor
gradients preconditioned by the other factor's r x r Gram, then AdamW or SGD) and loraplus.py
(B at lr_ratio x A's LR).

The optimizers of the 2025-26 benchmarks (issue 29), each wrapping a library class (pytorch-
optimizer==4.1.0, imported on first use: bench.optim.library): soap.py, shampoo.py (scalable
Shampoo with grafting) and normuon.py on the block matrices with AdamW on the rest, as muon
(matrix.py); ademamix.py, mars.py and schedule_free.py (evaluated at its averaged point:
ScheduleFree.eval_mode) on every parameter; lora_rite.py on LoRA pairs; hyperball.py (AdamH,
MuonH: the norm of each block matrix and of its update fixed), written from the paper over
torch's Adam and Muon.
"""

from __future__ import annotations

import torch

from bench.errors import ConfigError
from bench.optim.ademamix import ADEMAMIX
from bench.optim.base import CombinedOptimizer, OptimizerSpec
from bench.optim.euclidean import ADAMW, SGD
from bench.optim.hyperball import ADAMH, MUONH
from bench.optim.lora_preconditioned import LORA_PRECONDITIONED
from bench.optim.lora_rite import LORA_RITE
from bench.optim.loraplus import LORAPLUS
from bench.optim.mars import MARS
from bench.optim.muon import MUON
from bench.optim.normuon import NORMUON
from bench.optim.riemannian import RIEMANNIAN_ADAM, RIEMANNIAN_NORMALIZED, RIEMANNIAN_SGD
from bench.optim.schedule_free import SCHEDULE_FREE_ADAMW
from bench.optim.shampoo import SHAMPOO
from bench.optim.soap import SOAP

OPTIMIZERS: dict[str, OptimizerSpec] = {
    "adamw": ADAMW,
    "sgd": SGD,
    "riemannian_adam": RIEMANNIAN_ADAM,
    "riemannian_sgd": RIEMANNIAN_SGD,
    "riemannian_normalized": RIEMANNIAN_NORMALIZED,
    "muon": MUON,
    "lora_preconditioned": LORA_PRECONDITIONED,
    "loraplus": LORAPLUS,
    "soap": SOAP,
    "shampoo": SHAMPOO,
    "ademamix": ADEMAMIX,
    "mars": MARS,
    "schedule_free_adamw": SCHEDULE_FREE_ADAMW,
    "normuon": NORMUON,
    "adamh": ADAMH,
    "muonh": MUONH,
    "lora_rite": LORA_RITE,
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
