"""SOAP (Vyas et al. 2024, arXiv 2409.11321): Adam in the eigenbasis of Shampoo's
preconditioner, on the block matrices; AdamW on the rest (bench.optim.matrix).

pytorch_optimizer.SOAP, for a matrix W (m x n) with gradient G:
    L <- b L + (1 - b) G G^T (m x m),  R <- b R + (1 - b) G^T G (n x n)      b = shampoo_beta
    Q_L, Q_R: eigenvectors of L, R (eigh at the first step, then one power iteration + QR every
    precondition_frequency steps)
    G' = Q_L^T G Q_R;  M <- b1 M + (1 - b1) G;  V <- b2 V + (1 - b2) G'^2 (in the rotated basis)
    W <- W - lr Q_L ((Q_L^T M Q_R) / (sqrt(V) + eps)) Q_R^T (bias-corrected), then decoupled
    weight decay lr wd W.
The library skips the first step's update (it only initialises the eigenbases), as the paper's
code does. Dimensions above max_precondition_dim keep an identity basis there.

Keys and defaults, the paper's (its released code): lr 3e-3, betas [0.95, 0.95], shampoo_beta
null (= beta2), precondition_frequency 10, weight_decay 0.01, eps 1e-8 (the YAML; the schema's
shared betas and eps keep their AdamW defaults). betas and eps are the AdamW part's too.
"""

from __future__ import annotations

from dataclasses import dataclass

from bench.errors import at_least, in_unit
from bench.optim.base import OptimizerSpec, euclidean_groups
from bench.optim.library import require
from bench.optim.matrix import MatrixKnobs, check_matrix, split, with_adamw


@dataclass
class SOAPKnobs(MatrixKnobs):
    shampoo_beta: float | None = None  # the preconditioner statistics' decay; None: beta2
    precondition_frequency: int = 10  # steps between eigenbasis updates
    max_precondition_dim: int = 10000  # larger dimensions are not rotated


def check_soap(cfg) -> None:
    require("pytorch_optimizer", "soap")
    check_matrix(cfg)
    o = cfg.optimizer
    if o.shampoo_beta is not None:
        in_unit("optimizer.shampoo_beta", o.shampoo_beta)
    at_least("optimizer.precondition_frequency", o.precondition_frequency, 1)
    at_least("optimizer.max_precondition_dim", o.max_precondition_dim, 1)


def soap(model, params, cfg):
    """pytorch_optimizer.SOAP on the block matrices + AdamW on the rest."""
    lib = require("pytorch_optimizer", "soap")
    matrices, rest = split(model, params, cfg)
    opt = lib.SOAP(euclidean_groups(matrices, cfg.weight_decay), lr=cfg.lr,
                   betas=tuple(cfg.betas), shampoo_beta=cfg.shampoo_beta, eps=cfg.eps,
                   weight_decay=cfg.weight_decay,
                   precondition_frequency=cfg.precondition_frequency,
                   max_precondition_dim=cfg.max_precondition_dim)
    return with_adamw("soap", opt, rest, cfg)


SOAP = OptimizerSpec(soap, knobs=SOAPKnobs, check=check_soap)
