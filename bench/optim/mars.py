"""MARS (Yuan et al. 2024, arXiv 2411.10438): variance-reduced gradients fed to AdamW (or Lion,
or Shampoo). pytorch_optimizer.MARS on every trainable parameter: its own MARS step on the
matrices, its own AdamW on 1-D parameters (the paper's optimize_1d=False).

For a matrix, with the previous step's gradient g' (MARS-AdamW):
    c = g + gamma (b1 / (1 - b1)) (g - g'),  clipped to norm 1
    m <- b1 m + (1 - b1) c;  v <- b2 v + (1 - b2) c^2
    W <- W - lr m_hat / (sqrt(v_hat) + eps) - lr wd W
1-D parameters: AdamW at adamw_lr (null: lr) with betas_1d, no weight decay (bench's rule: norms
and biases are not decayed).

Keys and defaults, the paper's (its GPT-2 runs): betas [0.95, 0.99], mars_gamma 0.025,
betas_1d [0.9, 0.95], mars_type adamw (lion and shampoo are other methods: the method name
carries them, mars+lion). lr 3e-3 is the library's default.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from bench.errors import ConfigError, at_least, choice, in_unit, positive
from bench.optim.base import AdamKnobs, OptimizerSpec
from bench.optim.library import require

MARS_TYPES = ("adamw", "lion", "shampoo")


@dataclass
class MARSKnobs(AdamKnobs):
    mars_gamma: float = 0.025  # the strength of the gradient correction
    mars_type: str = "adamw"  # adamw | lion | shampoo: what steps the corrected gradient
    betas_1d: list[float] = field(default_factory=lambda: [0.9, 0.95])  # 1-D AdamW's
    adamw_lr: float | None = None  # the 1-D AdamW's LR (muon's key); None: lr


def check_mars(cfg) -> None:
    require("pytorch_optimizer", "mars")
    o = cfg.optimizer
    at_least("optimizer.mars_gamma", o.mars_gamma, 0)
    choice("optimizer.mars_type", o.mars_type, MARS_TYPES)
    betas = list(o.betas_1d)
    if len(betas) != 2:
        raise ConfigError(f"optimizer.betas_1d={betas} must be two numbers in [0, 1)")
    for i, beta in enumerate(betas):
        in_unit(f"optimizer.betas_1d[{i}]", beta)
    if o.adamw_lr is not None:
        positive("optimizer.adamw_lr", o.adamw_lr)


def mars(model, params, cfg):
    """pytorch_optimizer.MARS (MARS on matrices, its AdamW on 1-D parameters)."""
    lib = require("pytorch_optimizer", "mars")
    return lib.MARS(params, lr=cfg.lr, betas=tuple(cfg.betas), gamma=cfg.mars_gamma,
                    mars_type=cfg.mars_type, optimize_1d=False, lr_1d=cfg.adamw_lr or cfg.lr,
                    betas_1d=tuple(cfg.betas_1d), weight_decay=cfg.weight_decay,
                    weight_decay_1d=0.0, eps=cfg.eps)


def method_suffix(cfg) -> str:
    """'' for MARS-AdamW (the paper's main method), '+lion' or '+shampoo' otherwise."""
    return "" if cfg.mars_type == "adamw" else "+" + cfg.mars_type


MARS = OptimizerSpec(mars, knobs=MARSKnobs, check=check_mars, method_suffix=method_suffix)
