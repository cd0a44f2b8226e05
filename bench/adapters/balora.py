"""BaLoRA: LoRA kept on the balanced manifold A A^T = B^T B (docs/papers/balora.md §2-§3).

The adapter: LoRA plus a projection after optimizer steps; the math (the projection, the gap,
the moment rotations) is in `bench.adapters.balancing`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from bench.adapters.balancing import (
    ALIGNMENTS,
    balancing_gap,
    project_balanced_with_rotation,
    rotate_moments,
    rotate_second_moments,
)
from bench.adapters.lora import LoRA, LoRAKnobs, LoRALinear, ManifoldLoRALinear
from bench.errors import ConfigError, choice, positive

# What happens to Adam's moments at a projection: keep them (the paper) or rotate them into the
# new frame (`rotate_moments`; adapter.moments): AdamW's on lora_A/lora_B, and Riemannian Adam's
# on the packed point of a Riemannian LoRA layer on R2 (adapter=balora_riemannian).
MOMENTS = ("keep", "transport")
# the optimizers whose Adam moments adapter.moments=transport rotates
WITH_MOMENTS = ("adamw", "riemannian_adam")


@dataclass
class BaLoRAKnobs(LoRAKnobs):
    """LoRA's keys plus the projection's (docs/papers/balora.md §3)."""

    project_every: int = 1
    start_step: int = 1
    alignment: str = "procrustes"  # procrustes | sign | none: the representative chosen
    moments: str = "keep"  # keep | transport: what happens to Adam's moments


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
    knobs = BaLoRAKnobs

    @classmethod
    def check(cls, cfg) -> None:
        super().check(cfg)
        a = cfg.adapter
        choice("adapter.alignment", a.alignment, ALIGNMENTS)
        choice("adapter.moments", a.moments, MOMENTS)
        positive("adapter.project_every", a.project_every)
        if a.start_step < 1:
            raise ConfigError(f"adapter.start_step={a.start_step} must be >= 1: projecting before "
                              "the first optimizer step maps B A = 0 to the saddle (0, 0)")
        if a.moments == "transport" and cfg.optimizer.name not in WITH_MOMENTS:
            raise ConfigError(f"adapter.moments=transport needs an optimizer with moment estimates "
                              f"({' or '.join(WITH_MOMENTS)}); optimizer.name="
                              f"{cfg.optimizer.name!r} has none")
        if a.geometry not in ("euclidean", "fixed_rank_quotient"):
            raise ConfigError(f"adapter.geometry={a.geometry!r} with adapter=balora: allowed "
                              "values: euclidean, fixed_rank_quotient (the balanced manifold is a "
                              "section of its quotient)")

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
                elif c.moments == "transport" and isinstance(layer, ManifoldLoRALinear):
                    self._transport_point(optimizer, layer, R[i])

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

    @staticmethod
    def _transport_point(optimizer, layer, R: Tensor) -> None:
        """Rotate Riemannian Adam's moments of an R2 layer's packed point [L; R_f] (geoopt:
        exp_avg, a horizontal tangent vector, and exp_avg_sq, packed like the point).

        The projection moves the point along its GL(r) orbit, (L, R_f) -> ~(L O, R_f O) with
        O = R orthogonal (B = L, A = R_f^T: B_new ~ B R, A_new ~ R^T A), keeping W = L R_f^T.
        The quotient metric is invariant under that action, so a horizontal lift (xi_L, xi_R)
        at the old point is (xi_L O, xi_R O) at the new one: with the views m_B = m_L and
        m_A = m_R^T, `rotate_moments` gives exactly that (m_B R, R^T m_A), and
        `rotate_second_moments` its entrywise heuristic, v_L (R∘R), v_R (R∘R)."""
        state = _adam_state(optimizer, layer.point)
        if not state or "exp_avg" not in state:
            return
        manifold = layer.manifold
        m_left, m_right = manifold.unpack(state["exp_avg"])  # views: (out, r), (in, r)
        v_left, v_right = manifold.unpack(state["exp_avg_sq"])
        m_A, m_B = rotate_moments(R, m_right.mT, m_left)  # (r, in), (out, r)
        v_A, v_B = rotate_second_moments(R, v_right.mT, v_left)
        m_right.copy_(m_A.mT), m_left.copy_(m_B)
        v_right.copy_(v_A.mT), v_left.copy_(v_B)

    def metrics(self) -> dict:
        return {"balora/gap": self._gap} if self._gap is not None else super().metrics()
