"""AdEMAMix (Pagliardini, Ablin & Grangier 2024, arXiv 2409.03033): Adam with a second, slow
momentum mixed in. pytorch_optimizer.AdEMAMix on every trainable parameter (or, with
optimizer.muon_modules, on those modules' matrices and AdamW on the rest: bench.optim.matrix).

    m1 <- b1 m1 + (1 - b1) g;  v <- b2 v + (1 - b2) g^2;  m2 <- b3(t) m2 + (1 - b3(t)) g
    W  <- W - lr (m1 / (1 - b1^t) + alpha(t) m2) / (sqrt(v / (1 - b2^t)) + eps) - lr wd W
alpha(t) = alpha min(1, t / T) and b3(t) rise from b1 to b3 over T = t_alpha_beta3 steps (the
paper's schedulers; null: none).

Keys and defaults, the paper's: betas [0.9, 0.999], beta3 0.9999, ademamix_alpha 5 (its
language-model runs use 5 to 8), t_alpha_beta3 = the run's length (the YAML sets
${trainer.max_steps}: the paper warms alpha and b3 up over all of training), decoupled weight
decay on matrices only (bench's rule; the library's default is coupled).
"""

from __future__ import annotations

from dataclasses import dataclass

from bench.errors import at_least, in_unit
from bench.optim.base import OptimizerSpec, euclidean_groups
from bench.optim.library import require
from bench.optim.matrix import MatrixKnobs, check_matrix, split, with_adamw


@dataclass
class AdEMAMixKnobs(MatrixKnobs):
    beta3: float = 0.9999  # the slow momentum's decay
    ademamix_alpha: float = 5.0  # the slow momentum's weight
    t_alpha_beta3: int | None = None  # warm-up steps of alpha and beta3; None: none


def check_ademamix(cfg) -> None:
    require("pytorch_optimizer", "ademamix")
    check_matrix(cfg)
    o = cfg.optimizer
    in_unit("optimizer.beta3", o.beta3)
    at_least("optimizer.ademamix_alpha", o.ademamix_alpha, 0)
    if o.t_alpha_beta3 is not None:
        at_least("optimizer.t_alpha_beta3", o.t_alpha_beta3, 1)


def ademamix(model, params, cfg):
    """pytorch_optimizer.AdEMAMix (decoupled decay on matrices) + AdamW on what it leaves."""
    lib = require("pytorch_optimizer", "ademamix")
    mine, rest = split(model, params, cfg, matrices_only=False)
    opt = lib.AdEMAMix(euclidean_groups(mine, cfg.weight_decay), lr=cfg.lr,
                       betas=(*cfg.betas, cfg.beta3), alpha=cfg.ademamix_alpha,
                       t_alpha_beta3=cfg.t_alpha_beta3, eps=cfg.eps,
                       weight_decay=cfg.weight_decay, weight_decouple=True)
    return with_adamw("ademamix", opt, rest, cfg)


ADEMAMIX = OptimizerSpec(ademamix, knobs=AdEMAMixKnobs, check=check_ademamix)
