"""Shampoo, in its scalable form with grafting (Anil et al. 2020, arXiv 2002.09018; the family
of AlgoPerf's Distributed Shampoo): pytorch_optimizer.ScalableShampoo on the block matrices,
AdamW on the rest (bench.optim.matrix).

For a matrix W (blocks of at most block_size per side) with gradient G:
    L <- b2 L + (1 - b2) G G^T,  R <- b2 R + (1 - b2) G^T G                 every step
    P = L^{-1/4} G R^{-1/4}      inverse roots (coupled Schur-Newton) every
                                 preconditioning_compute_steps steps
    graft: the step length of a diagonal method (graft_type, e.g. RMSProp's G / sqrt(v)) given
    to P's direction: P <- P ||graft(G)|| / ||P||
    M <- b1 M + P;  W <- W - lr (b1 M + P)  (Nesterov), after decoupled decay lr wd W
Before start_preconditioning_step the grafted method steps alone. The Schur-Newton iteration
starts a power iteration at torch.randn (the global RNG, which every checkpoint holds).

Keys and defaults: betas [0.9, 0.999] (the library's), start_preconditioning_step 25 and
block_size 512 (the library's), graft_type rmsprop (AlgoPerf's Shampoo grafts Adam's step
length; RMSProp with Shampoo's momentum is the library's nearest), preconditioning_compute_steps
100 (ours: the library's 1000 would leave the inverse roots at the identity in every run shorter
than 1000 steps), decoupled weight decay (bench's rule for every AdamW-like part; the library's
default is coupled).

Checkpoints: the library keeps each matrix's statistics in Python objects (PreConditioner,
Graft), which `torch.load(weights_only=True)` refuses; `Shampoo.state_dict` stores their tensors
instead and `load_state_dict` rebuilds the objects around them, so a resumed run is bitwise.
"""

from __future__ import annotations

from dataclasses import dataclass

from bench.errors import at_least, choice
from bench.optim.base import CombinedOptimizer, OptimizerSpec, euclidean_groups
from bench.optim.library import require
from bench.optim.matrix import MatrixKnobs, check_matrix, split, with_adamw

GRAFTS = ("rmsprop", "adagrad", "sgd", "sqrtn", "none")  # pytorch_optimizer LayerWiseGrafting


@dataclass
class ShampooKnobs(MatrixKnobs):
    start_preconditioning_step: int = 25  # the grafted method alone before this step
    preconditioning_compute_steps: int = 100  # steps between inverse-root computations
    block_size: int = 512  # larger dimensions are split into blocks of this size
    graft_type: str = "rmsprop"  # rmsprop | adagrad | sgd | sqrtn | none


def check_shampoo(cfg) -> None:
    require("pytorch_optimizer", "shampoo")
    check_matrix(cfg)
    o = cfg.optimizer
    for key in ("start_preconditioning_step", "preconditioning_compute_steps", "block_size"):
        at_least(f"optimizer.{key}", o[key], 1)
    choice("optimizer.graft_type", o.graft_type, GRAFTS)


class Shampoo(CombinedOptimizer):
    """ScalableShampoo and AdamW stepped as one, with a checkpoint of tensors only."""

    def state_dict(self):
        state = super().state_dict()
        packed = {}
        for key, entry in state["shampoo"]["state"].items():
            entry = dict(entry)  # a copy: the live state keeps its objects
            pre, graft = entry.pop("pre_conditioner"), entry.pop("graft")
            entry["pre_statistics"] = pre.statistics  # a tensor, or a list of tensors
            entry["pre_conditioners"] = pre.pre_conditioners
            entry["graft_momentum"] = graft.momentum
            if hasattr(graft, "statistics"):  # RMSProp's and AdaGrad's second moments
                entry["graft_statistics"] = graft.statistics
            packed[key] = entry
        return {**state, "shampoo": {**state["shampoo"], "state": packed}}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        opt = self.optimizers["shampoo"]
        for group in opt.param_groups:
            for p in group["params"]:
                entry = opt.state.get(p)
                if entry and "pre_statistics" in entry:
                    pre, graft = _objects(opt, p, group)
                    pre.statistics = entry.pop("pre_statistics")
                    pre.pre_conditioners = entry.pop("pre_conditioners")
                    graft.momentum = entry.pop("graft_momentum")
                    if "graft_statistics" in entry:
                        graft.statistics = entry.pop("graft_statistics")
                    entry["pre_conditioner"], entry["graft"] = pre, graft


def _objects(opt, p, group):
    """A fresh PreConditioner and Graft for `p`, made as ScalableShampoo.init_group makes them."""
    from pytorch_optimizer.optimizer.utils.graft import build_graft
    from pytorch_optimizer.optimizer.utils.preconditioner import PreConditioner

    pre = PreConditioner(p, group["betas"][1], opt.inverse_exponent_override, opt.block_size,
                         opt.skip_preconditioning_rank_lt,
                         opt.no_preconditioning_for_layers_with_dim_gt, opt.shape_interpretation,
                         opt.pre_conditioner_type, opt.matrix_eps, opt.use_svd)
    return pre, build_graft(p, opt.graft_type, opt.diagonal_eps)


def shampoo(model, params, cfg) -> Shampoo:
    """pytorch_optimizer.ScalableShampoo on the block matrices + AdamW on the rest."""
    lib = require("pytorch_optimizer", "shampoo")
    from pytorch_optimizer.optimizer.utils.graft import LayerWiseGrafting

    matrices, rest = split(model, params, cfg)
    opt = lib.ScalableShampoo(
        euclidean_groups(matrices, cfg.weight_decay), lr=cfg.lr, betas=tuple(cfg.betas),
        weight_decay=cfg.weight_decay, decoupled_weight_decay=True,
        start_preconditioning_step=cfg.start_preconditioning_step,
        preconditioning_compute_steps=cfg.preconditioning_compute_steps,
        block_size=cfg.block_size, graft_type=LayerWiseGrafting[cfg.graft_type.upper()])
    return with_adamw("shampoo", opt, rest, cfg, combined=Shampoo)


SHAMPOO = OptimizerSpec(shampoo, knobs=ShampooKnobs, check=check_shampoo)
