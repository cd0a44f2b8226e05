"""Full fine-tuning of the targeted modules: their weights train, everything else is frozen.

`target_modules=[all]` trains every parameter (training from scratch). With a manifold attention
geometry (model.attention.geometry) the attention's q, k, v, o live in manifold points: targeting
any of q, k, v, o trains those points (and their scales). Such an attention layer is recognised
by the manifold points it holds itself (`geoopt.ManifoldParameter`), so that adapters need not
import the models.
"""

from __future__ import annotations

import geoopt
import torch.nn as nn

from bench.adapters.base import Adapter, find_targets, freeze_all


def _holds_manifold_points(module: nn.Module) -> bool:
    """True for a module with a manifold point among its own (not its children's) parameters:
    the manifold attention of bench.models.lowrank_attention."""
    return any(isinstance(p, geoopt.ManifoldParameter) for p in module.parameters(recurse=False))


class Full(Adapter):
    name = "full"

    def apply(self, model: nn.Module) -> nn.Module:
        if "all" in self.cfg.target_modules:
            return model
        wanted = list(self.cfg.target_modules)
        attention = [(n, m) for n, m in model.named_modules() if _holds_manifold_points(m)]
        if attention and {"q", "k", "v", "o"} & set(wanted):
            wanted = [t for t in wanted if t not in ("q", "k", "v", "o")]
        else:
            attention = []
        self.targets = attention + (find_targets(model, wanted) if wanted else [])
        freeze_all(model)
        for _, module in self.targets:
            for p in module.parameters():
                p.requires_grad_(True)
        return model
