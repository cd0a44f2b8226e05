"""LoRA-RITE (Yen et al. 2024, arXiv 2410.20625): an adaptive LoRA optimizer invariant to how
the update Z = B A is split between its factors (the factor imbalance BaLoRA balances away).
pytorch_optimizer.LoRARite on the LoRA pairs; AdamW on any other trainable parameter.

For a pair A = lora_A (r x in) and B = lora_B (out x r), seen as A^T (in x r) and B (out x r),
with QR factors A^T = U_A R_A and B = U_B R_B, and symmetrically for B:
    g_A' = g_A^T R_B^{-1}              the "unmagnified" gradient (in x r)
    P = U_B^T U_B,prev                 carries the r x r statistics to the new basis
    V <- b2 P V P^T + (1 - b2) g_A'^T g_A' / in;  rho: the escaped mass (apply_escape)
    S = g_A' (V + rho I)^{-1/2};  M <- b1 M P^T + (1 - b1) S
    A^T <- A^T - lr (M R_B^{-T} + wd A^T)
g_A' is clipped jointly over all pairs to norm clip_unmagnified_grad, and an unmagnified update
with RMS above update_skipping is skipped (the library's guards).

The library takes the pairs as alternating parameters (A_1, B_1, A_2, B_2, ...) with the rank
on A's dim 0 and B's last dim: bench.optim.base.lora_pairs gives exactly those.

Keys and defaults: betas [0.9, 0.999] and eps 1e-6 (the library's, which ports the authors'
code; the YAML sets eps), apply_escape true (the escaped mass is part of the paper's Algorithm 1;
the library defaults it off), clip_unmagnified_grad 1.0 and update_skipping 1.0 (the
library's). Needs a LoRA adapter (needs_lora).
"""

from __future__ import annotations

from dataclasses import dataclass

from bench.errors import ConfigError, at_least
from bench.optim.base import AdamKnobs, OptimizerSpec, lora_pairs
from bench.optim.library import require
from bench.optim.matrix import with_adamw


@dataclass
class LoRARiteKnobs(AdamKnobs):
    clip_unmagnified_grad: float = 1.0  # the joint norm of the unmagnified gradients; 0: off
    update_skipping: float = 1.0  # skip an unmagnified update whose RMS exceeds this; 0: off
    apply_escape: bool = True  # the escaped-mass correction rho
    adamw_lr: float | None = None  # muon's key: AdamW's LR on non-LoRA parameters; None: lr


def check_lora_rite(cfg) -> None:
    require("pytorch_optimizer", "lora_rite")
    o = cfg.optimizer
    at_least("optimizer.clip_unmagnified_grad", o.clip_unmagnified_grad, 0)
    at_least("optimizer.update_skipping", o.update_skipping, 0)


def lora_rite(model, params, cfg):
    """pytorch_optimizer.LoRARite on the (lora_A, lora_B) pairs + AdamW on the rest."""
    lib = require("pytorch_optimizer", "lora_rite")
    pairs = lora_pairs(model)
    if not pairs:
        raise ConfigError(
            "optimizer.name='lora_rite' found no LoRA factors (lora_A, lora_B): it needs "
            "adapter.name=lora or balora with adapter.geometry=euclidean")
    factors = [p for pair in pairs for p in pair]  # A_1, B_1, A_2, B_2, ...
    chosen = {id(p) for p in factors}
    rest = [p for p in params if id(p) not in chosen]
    opt = lib.LoRARite(factors, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps,
                       weight_decay=cfg.weight_decay,
                       clip_unmagnified_grad=cfg.clip_unmagnified_grad,
                       update_skipping=cfg.update_skipping, apply_escape=cfg.apply_escape)
    return with_adamw("lora_rite", opt, rest, cfg)


LORA_RITE = OptimizerSpec(lora_rite, knobs=LoRARiteKnobs, check=check_lora_rite,
                          needs_lora=True)
