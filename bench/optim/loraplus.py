"""LoRA+ (Hayou, Ghosh & Yu 2024, arXiv 2402.12354): B's learning rate is lr_ratio x A's.

PEFT 0.21.2's `peft.optimizers.create_loraplus_optimizer` rule, on our parameter names:
  group A:            every other trainable parameter (lora_A, ...)  lr        weight_decay
  group B:            lora_B and every 1-D parameter                  lr x ratio weight_decay
  group B, no decay:  those of group B that are biases or in a LayerNorm (transformers'
                      ALL_LAYERNORM_LAYERS, which PEFT reads)        lr x ratio 0
stepped by AdamW (cfg.betas, cfg.eps). PEFT's fourth group, LoRA on embeddings (its
`loraplus_lr_embedding`, 1e-6), is always empty here: our LoRA wraps nn.Linear only. Empty
groups are left out. Weight decay is optimizer.weight_decay, passed as PEFT's
`loraplus_weight_decay` (a plain `weight_decay` argument would be overridden by every group's
own, so PEFT silently drops it).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from bench.errors import ConfigError, positive
from bench.optim.base import AdamKnobs, OptimizerSpec, lora_pairs


@dataclass
class LoraPlusKnobs(AdamKnobs):
    lr_ratio: float = 16.0  # B's LR / A's LR


def check_loraplus(cfg) -> None:
    positive("optimizer.lr_ratio", cfg.optimizer.lr_ratio)

NORMS = (nn.LayerNorm,)  # transformers.pytorch_utils.ALL_LAYERNORM_LAYERS


def loraplus_groups(model: nn.Module, params: list, cfg) -> list[dict]:
    """PEFT's LoRA+ param groups (non-empty ones, in PEFT's order) of the trainable `params`."""
    trainable = {id(p) for p in params}
    in_norm = {id(p) for m in model.modules() if isinstance(m, NORMS) for p in m.parameters()}
    group_a, group_b, group_b_no_decay = [], [], []
    for name, p in model.named_parameters():
        if id(p) not in trainable:
            continue
        if "lora_B" in name or p.ndim == 1:
            no_decay = "bias" in name or id(p) in in_norm
            (group_b_no_decay if no_decay else group_b).append(p)
        else:
            group_a.append(p)
    lr_b = cfg.lr * cfg.lr_ratio
    groups = [
        {"params": group_a, "weight_decay": cfg.weight_decay, "lr": cfg.lr},
        {"params": group_b, "weight_decay": cfg.weight_decay, "lr": lr_b},
        {"params": group_b_no_decay, "weight_decay": 0.0, "lr": lr_b},
    ]
    return [g for g in groups if g["params"]]


def loraplus(model, params, cfg) -> torch.optim.AdamW:
    """AdamW over PEFT's LoRA+ groups: A at cfg.lr, B at cfg.lr x cfg.lr_ratio."""
    if not lora_pairs(model):
        raise ConfigError(
            "optimizer.name='loraplus' found no LoRA factors (lora_A, lora_B): it needs "
            "adapter.name=lora or balora with adapter.geometry=euclidean"
        )
    return torch.optim.AdamW(loraplus_groups(model, params, cfg), lr=cfg.lr,
                             betas=tuple(cfg.betas), eps=cfg.eps)


LORAPLUS = OptimizerSpec(loraplus, knobs=LoraPlusKnobs, check=check_loraplus, needs_lora=True)
