"""AdamW and SGD over every trainable parameter (weight decay on matrices only)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from bench.optim.base import OptimizerKnobs, OptimizerSpec, euclidean_groups


@dataclass
class SGDKnobs(OptimizerKnobs):
    momentum: float = 0.9  # heavy ball


def adamw_over(params, cfg, lr: float | None = None, betas=None) -> torch.optim.AdamW:
    """AdamW at `lr` (default cfg.lr) with `betas` (default cfg.betas), cfg.eps and decoupled
    cfg.weight_decay: the Euclidean part of the optimizers that combine AdamW with another."""
    return torch.optim.AdamW(
        euclidean_groups(params, cfg.weight_decay), lr=cfg.lr if lr is None else lr,
        betas=tuple(cfg.betas if betas is None else betas), eps=cfg.eps,
    )


def sgd_over(params, cfg) -> torch.optim.SGD:
    """SGD at cfg.lr with heavy-ball cfg.momentum and coupled (L2) cfg.weight_decay."""
    return torch.optim.SGD(
        euclidean_groups(params, cfg.weight_decay), lr=cfg.lr, momentum=cfg.momentum
    )


def adamw(model, params, cfg) -> torch.optim.Optimizer:
    """AdamW at cfg.lr with cfg.betas, cfg.eps and decoupled cfg.weight_decay."""
    return adamw_over(params, cfg)


def sgd(model, params, cfg) -> torch.optim.Optimizer:
    """SGD at cfg.lr with heavy-ball cfg.momentum and coupled (L2) cfg.weight_decay."""
    return sgd_over(params, cfg)


ADAMW = OptimizerSpec(adamw)
SGD = OptimizerSpec(sgd, knobs=SGDKnobs)
