"""BaLoRA: LoRA kept on the balanced manifold A A^T = B^T B (papers/balora.md §2-§3).

The adapter: LoRA plus a projection after optimizer steps; the math (the projection, the gap,
the moment rotations) is in `bench.adapters.balancing`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from bench.adapters.balancing import (
    balancing_gap,
    project_balanced_with_rotation,
    rotate_moments,
    rotate_second_moments,
)
from bench.adapters.lora import LoRA, LoRALinear, ManifoldLoRALinear

# What happens to Adam's moments at a projection: keep them (the paper) or rotate them into the
# new frame (`rotate_moments`; adapter.moments).
MOMENTS = ("keep", "transport")


def _adam_state(optimizer, p) -> dict | None:
    """The state of parameter p in optimizer (or in one of a CombinedOptimizer's parts)."""
    for opt in getattr(optimizer, "optimizers", {"": optimizer}).values():
        if p in opt.state:
            return opt.state[p]
    return None


class BaLoRA(LoRA):
    """LoRA whose factors are projected onto A A^T = B^T B after optimizer steps.

    Projects at steps start_step, start_step + project_every, ... (never before the first step:
    at B A = 0 the projection gives the saddle (0, 0)). Layers of equal shape are projected in
    one batched call. `balora/gap` is the mean gap over layers just before the last projection.
    """

    name = "balora"

    def __init__(self, cfg):
        super().__init__(cfg)
        self._gap: float | None = None

    def factor_pairs(self) -> list[tuple[Tensor, Tensor, object]]:
        """(A, B, layer) of every adapted layer: lora_A/lora_B, or for Riemannian LoRA on the
        quotient geometry R2 (W = L R^T) the views A = R^T, B = L into the packed point."""
        pairs = [(layer.lora_A, layer.lora_B, layer) for layer in self.layers()]
        for _, layer in self.targets:
            if isinstance(layer, ManifoldLoRALinear):
                left, right = layer.manifold.unpack(layer.point)
                pairs.append((right.mT, left, layer))
        return pairs

    @torch.no_grad()
    def after_step(self, step: int, optimizer) -> None:
        c = self.cfg
        if step < c.start_step or (step - c.start_step) % c.project_every:
            return
        pairs = self.factor_pairs()
        self._gap = sum(balancing_gap(A, B) for A, B, _ in pairs) / len(pairs)
        by_shape: dict[tuple, list] = {}
        for pair in pairs:
            by_shape.setdefault((pair[0].shape, pair[1].shape), []).append(pair)
        for group in by_shape.values():
            A = torch.stack([a for a, _, _ in group])  # (L, r, in)
            B = torch.stack([b for _, b, _ in group])  # (L, out, r)
            A_new, B_new, R = project_balanced_with_rotation(A, B, c.alignment)
            for i, (a, b, layer) in enumerate(group):
                a.copy_(A_new[i])  # in place: views into the packed point for R2 layers
                b.copy_(B_new[i])
                if c.moments == "transport" and isinstance(layer, LoRALinear):
                    self._transport(optimizer, layer, R[i])

    @staticmethod
    def _transport(optimizer, layer, R: Tensor) -> None:
        """Rotate Adam's moments into the new frame: m_B R, R^T m_A (see rotate_moments)."""
        sa, sb = _adam_state(optimizer, layer.lora_A), _adam_state(optimizer, layer.lora_B)
        if not sa or not sb or "exp_avg" not in sa:
            return
        m_A, m_B = rotate_moments(R, sa["exp_avg"], sb["exp_avg"])
        v_A, v_B = rotate_second_moments(R, sa["exp_avg_sq"], sb["exp_avg_sq"])
        sa["exp_avg"].copy_(m_A), sb["exp_avg"].copy_(m_B)
        sa["exp_avg_sq"].copy_(v_A), sb["exp_avg_sq"].copy_(v_B)

    def metrics(self) -> dict:
        return {"balora/gap": self._gap} if self._gap is not None else super().metrics()
