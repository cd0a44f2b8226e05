"""DoRA (Liu et al. 2024), PEFT's definition (peft 0.21.2, `use_dora=True`).

The adapted weight is split into a magnitude per output row and a direction:

    W' = m * V / ||V||_row,   V = W0 + s B A (out x in),   m (out,) trainable,

with m initialised to ||W0 + s B A||_row (= ||W0||_row at LoRA's init B = 0), so the function is
unchanged at init. As in PEFT (and the paper's section 4.3), the norm ||V||_row is treated as a
constant in backpropagation (detached): gradients reach A and B only through V x, and m through
m / ||V||. The forward never forms W': with n = ||V||_row (detached) and x (..., in),

    y = W0 x + b + (m / n - 1) * W0 x + (m / n) * s * B A x.

A, B, the scale (rsLoRA too) and the inits are LoRA's (bench.adapters.lora); BaLoRA's
projection is not offered (bench.config.validate refuses its keys with adapter=dora).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from bench.adapters.lora import FactorKnobs, LoRA, LoRALinear, check_factors


class DoRALinear(LoRALinear):
    """LoRALinear plus `lora_magnitude` m (out,): y = base(x) + (m/n - 1) W0 x + (m/n) s B A x."""

    def __init__(self, base: nn.Linear, *args, **kwargs):
        super().__init__(base, *args, **kwargs)
        with torch.no_grad():
            norm = self.weight_norm(self.lora_B @ self.lora_A)  # (out,)
        self.lora_magnitude = nn.Parameter(norm)
        self._merged_norm: torch.Tensor | None = None

    def weight_norm(self, lora_weight: torch.Tensor, scaling: float | None = None) -> torch.Tensor:
        """||W0 + s * lora_weight||_row (out,), lora_weight = B A (out x in)."""
        s = self.scaling if scaling is None else scaling
        return torch.linalg.norm(self.base.weight + s * lora_weight, dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)  # (..., out)
        if self.merged:
            return y
        lora_weight = (self.lora_A.T @ self.lora_B.T).T  # B A (out, in), as PEFT forms it
        norm = self.weight_norm(lora_weight.detach()).detach()  # a constant (DoRA section 4.3)
        ratio = self.lora_magnitude / norm  # (out,)
        if isinstance(self.dropout, nn.Identity) or not self.training:
            bias = self.base.bias
            base_out = y if bias is None else y - bias  # W0 x
        else:
            x = self.dropout(x)
            base_out = F.linear(x, self.base.weight)  # W0 dropout(x), as PEFT
        lora_out = x @ self.lora_A.T @ self.lora_B.T  # (..., out)
        return y + ((ratio - 1) * base_out + ratio * lora_out * self.scaling)

    @torch.no_grad()
    def merge(self) -> None:
        """W0 <- (m / n) * (W0 + s B A), n = ||W0 + s B A||_row: the same function."""
        if not self.merged:
            delta = (self.lora_B @ self.lora_A) * self.scaling  # (out, in)
            self._merged_norm = self.weight_norm(delta, scaling=1.0)
            ratio = (self.lora_magnitude / self._merged_norm)[:, None]  # (out, 1)
            self.base.weight.copy_(ratio * (self.base.weight + delta))
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged:
            delta = (self.lora_B @ self.lora_A) * self.scaling
            ratio = (self.lora_magnitude / self._merged_norm)[:, None]
            self.base.weight.copy_(self.base.weight / ratio - delta)
            self._merged_norm, self.merged = None, False


class DoRA(LoRA):
    """DoRA: LoRA's factor keys; no geometry (its magnitude and direction have no fixed-rank
    manifold here) and no balancing projection."""

    name = "dora"
    layer_class = DoRALinear
    knobs = FactorKnobs

    @classmethod
    def check(cls, cfg) -> None:
        check_factors(cfg)
