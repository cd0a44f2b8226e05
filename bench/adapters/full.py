"""Full fine-tuning of the targeted modules: their weights train, everything else is frozen.

`target_modules=[all]` trains every parameter (training from scratch).
"""

from __future__ import annotations

import torch.nn as nn

from bench.adapters.base import Adapter, find_targets, freeze_all


class Full(Adapter):
    name = "full"

    def apply(self, model: nn.Module) -> nn.Module:
        if "all" in self.cfg.target_modules:
            return model
        self.targets = find_targets(model, self.cfg.target_modules)
        freeze_all(model)
        for _, module in self.targets:
            for p in module.parameters():
                p.requires_grad_(True)
        return model
