"""Full fine-tuning of the targeted modules: their weights train, everything else is frozen.

`target_modules=[all]` trains every parameter (training from scratch). With a manifold attention
geometry (model.attention.geometry) the attention's q, k, v, o live in manifold points: targeting
any of q, k, v, o trains those points (and their scales).
"""

from __future__ import annotations

import torch.nn as nn

from bench.adapters.base import Adapter, find_targets, freeze_all


class Full(Adapter):
    name = "full"

    def apply(self, model: nn.Module) -> nn.Module:
        if "all" in self.cfg.target_modules:
            return model
        from bench.models.lowrank_attention import ManifoldAttention

        wanted = list(self.cfg.target_modules)
        attention = [(n, m) for n, m in model.named_modules() if isinstance(m, ManifoldAttention)]
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
