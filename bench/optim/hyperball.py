"""Hyperball (Wen, Dang, Lyu, Ma & Liang 2026, "Fantastic Pretraining Optimizers and Where to
Find Them II", arXiv 2606.16899): AdamH and MuonH, Adam and Muon with the Frobenius norm of each
block matrix and of its update held fixed, i.e. optimisation on a product of spheres. Built here
from the paper's definition; the block matrices are muon's (bench.optim.matrix), AdamW steps the
rest.

The paper's update for a matrix W with initial norm R = ||W_0||_F, learning rate eta_t and the
base optimizer's update u_t (Adam's m_hat / (sqrt(v_hat) + eps), or Muon's orthogonalised
Nesterov momentum):
    W_{t+1} = R Normalize(W_t - eta_t R Normalize(u_t)),   Normalize(X) = X / ||X||_F
so every step moves W by eta_t R before the projection back onto the sphere of radius R, and W
never leaves it. There is no weight decay on these matrices (the constraint replaces it; the
paper's point): optimizer.weight_decay applies to the AdamW part only. A matrix that starts at 0
(LoRA's lora_B) has no sphere: such a run is refused.

u_t comes from the base optimizer itself (torch.optim.Adam or torch.optim.Muon, no weight decay,
LR 1), stepped from W = 0: the base's update does not depend on W, so after its step the
parameter holds exactly -u_t (Muon's shape factor sqrt(max(1, m/n)) is a scalar that Normalize
removes). Its state (Adam's moments, Muon's momentum) is the base's own, checkpointed with R.

Why not heavyball==3.2.1's HyperBallAdamW, though it installs without moving the torch pin
(it needs opt_einsum): (1) its 2-D route steps by RMSProp, not Adam: the first moment is never
kept, beta1 is ignored (two runs with beta1 0.9 and 0 are bitwise equal), so it is not the
paper's AdamH; (2) it has no MuonH; (3) it compiles every kernel with torch.compile
(max-autotune) unless a process-global switch is turned off: about 45 s for the first three
steps of an 8 x 6 matrix on our loaded 2-core CPU; (4) it overwrites each param group's base_lr
with the current LR, which bench's trainer uses as the schedule's base, so a warmup or a decay
would compound.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from bench.errors import ConfigError
from bench.optim.base import OptimizerSpec
from bench.optim.matrix import MatrixKnobs, check_matrix, split, with_adamw


class Hyperball(torch.optim.Optimizer):
    """W <- R Normalize(W - lr R Normalize(u)) for every matrix, u from `base` (built on the same
    matrices with LR 1 and no weight decay). State: each matrix's radius R (its norm when this
    optimizer was built); the base's own state is checkpointed beside it."""

    def __init__(self, matrices: list, base: torch.optim.Optimizer, lr: float):
        super().__init__(matrices, {"lr": lr})
        self.base = base
        for p in matrices:
            self.state[p]["radius"] = torch.linalg.vector_norm(p.detach())

    @torch.no_grad()
    def step(self, closure=None):
        if closure is not None:
            raise ValueError("Hyperball.step takes no closure")
        stepped = [(g["lr"], p) for g in self.param_groups for p in g["params"]
                   if p.grad is not None]
        start = [p.clone() for _, p in stepped]  # W_t
        for _, p in stepped:
            p.zero_()
        self.base.step()  # from W = 0 at LR 1: p = -u_t
        tiny = torch.finfo(torch.float32).tiny
        for (lr, p), w in zip(stepped, start):  # w: W_t (m x n), p: -u_t, radius: R (0-dim)
            radius = self.state[p]["radius"]
            u = p.neg()
            w.sub_(u * (lr * radius / torch.linalg.vector_norm(u).clamp_min(tiny)))
            p.copy_(w * (radius / torch.linalg.vector_norm(w).clamp_min(tiny)))

    def state_dict(self):
        return {"hyperball": super().state_dict(), "base": self.base.state_dict()}

    def load_state_dict(self, state):
        super().load_state_dict(state["hyperball"])
        self.base.load_state_dict(state["base"])


@dataclass
class AdamHKnobs(MatrixKnobs):
    """lr: eta (each step moves a matrix by lr x its norm); betas, eps: Adam's (and AdamW's)."""


@dataclass
class MuonHKnobs(MatrixKnobs):
    momentum: float = 0.9  # muon's key: Muon's Nesterov momentum (the YAML: 0.95)


def _matrices(model, params, cfg) -> tuple[list, list]:
    matrices, rest = split(model, params, cfg)
    names = {id(p): n for n, p in model.named_parameters()}
    flat = [names.get(id(p), "?") for p in matrices if not torch.linalg.vector_norm(p).item()]
    if flat:
        raise ConfigError(
            f"optimizer.name={cfg.name!r} keeps each matrix on the sphere of its initial norm, "
            f"and {flat[0]} starts at 0 (no sphere): use adapter=full, or another optimizer for "
            "LoRA (whose lora_B starts at 0)")
    return matrices, rest


def adamh(model, params, cfg):
    """AdamH (Hyperball over torch.optim.Adam) on the block matrices + AdamW on the rest."""
    matrices, rest = _matrices(model, params, cfg)
    base = torch.optim.Adam(matrices, lr=1.0, betas=tuple(cfg.betas), eps=cfg.eps,
                            weight_decay=0.0)
    return with_adamw("adamh", Hyperball(matrices, base, cfg.lr), rest, cfg)


def muonh(model, params, cfg):
    """MuonH (Hyperball over torch.optim.Muon) on the block matrices + AdamW on the rest."""
    matrices, rest = _matrices(model, params, cfg)
    base = torch.optim.Muon(matrices, lr=1.0, weight_decay=0.0, momentum=cfg.momentum,
                            nesterov=True, adjust_lr_fn="original")
    return with_adamw("muonh", Hyperball(matrices, base, cfg.lr), rest, cfg)


ADAMH = OptimizerSpec(adamh, knobs=AdamHKnobs, check=check_matrix)
MUONH = OptimizerSpec(muonh, knobs=MuonHKnobs, check=check_matrix)
