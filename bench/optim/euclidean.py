"""AdamW and SGD over every trainable parameter (weight decay on matrices only)."""

from __future__ import annotations

import torch

from bench.optim.base import euclidean_groups


def adamw(params, cfg) -> torch.optim.Optimizer:
    """AdamW at cfg.lr with cfg.betas, cfg.eps and decoupled cfg.weight_decay."""
    return torch.optim.AdamW(
        euclidean_groups(params, cfg.weight_decay), lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps
    )


def sgd(params, cfg) -> torch.optim.Optimizer:
    """SGD at cfg.lr with heavy-ball cfg.momentum and coupled (L2) cfg.weight_decay."""
    return torch.optim.SGD(
        euclidean_groups(params, cfg.weight_decay), lr=cfg.lr, momentum=cfg.momentum
    )
