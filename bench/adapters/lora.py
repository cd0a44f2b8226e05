"""LoRA (Hu et al. 2021) in PEFT's notation: W = W0 + s * B @ A, s = alpha / r.

A = `lora_A` (r x in, kaiming-uniform), B = `lora_B` (out x r, zeros), so the model's function is
unchanged at init. Base weights are frozen. `balora/gap = ||B^T B - A A^T||_F` is logged for
plain LoRA too: under gradient flow it is conserved, so LoRA never balances itself
(papers/balora.md §2).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from bench.adapters.base import Adapter, find_targets, freeze_all
from bench.config import ConfigError


class LoRALinear(nn.Module):
    """y = base(x) + s * dropout(x) A^T B^T, with x (..., in) -> y (..., out)."""

    def __init__(self, base: nn.Linear, r: int, alpha: float, dropout: float = 0.0):
        super().__init__()
        self.base = base
        out_features, in_features = base.weight.shape
        self.r, self.scaling = r, alpha / r
        self.lora_A = nn.Parameter(torch.empty(r, in_features, device=base.weight.device))
        self.lora_B = nn.Parameter(torch.zeros(out_features, r, device=base.weight.device))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # PEFT's init of A
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        if self.merged:
            return y
        return y + (self.dropout(x) @ self.lora_A.T @ self.lora_B.T) * self.scaling

    @torch.no_grad()
    def merge(self) -> None:
        """Fold s B A into the base weight (for export or fast evaluation)."""
        if not self.merged:
            self.base.weight += self.scaling * (self.lora_B @ self.lora_A)
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged:
            self.base.weight -= self.scaling * (self.lora_B @ self.lora_A)
            self.merged = False


def gap(layer: LoRALinear) -> torch.Tensor:
    """||B^T B - A A^T||_F, two r x r Grams (papers/balora.md §2)."""
    A, B = layer.lora_A.detach(), layer.lora_B.detach()
    return torch.linalg.matrix_norm(B.T @ B - A @ A.T)


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


class LoRA(Adapter):
    name = "lora"

    def apply(self, model: nn.Module) -> nn.Module:
        targets = find_targets(model, self.cfg.target_modules)
        freeze_all(model)
        r = self.cfg.r
        self.targets = []
        for name, linear in targets:
            out_f, in_f = linear.weight.shape
            if not 0 < r <= min(in_f, out_f):
                raise ConfigError(
                    f"adapter.r={r} does not fit module {name} of shape {out_f} x {in_f}: "
                    f"allowed 1 <= r <= {min(in_f, out_f)}"
                )
            layer = self.make_layer(linear)
            _set_module(model, name, layer)
            self.targets.append((name, layer))
        return model

    def make_layer(self, linear: nn.Linear) -> nn.Module:
        return LoRALinear(linear, self.cfg.r, self.cfg.alpha, self.cfg.dropout)

    def layers(self) -> list[LoRALinear]:
        return [layer for _, layer in self.targets]

    def metrics(self) -> dict:
        gaps = [gap(layer) for layer in self.layers()]
        return {"balora/gap": float(torch.stack(gaps).mean())} if gaps else {}

    def merge(self) -> None:
        for layer in self.layers():
            layer.merge()
