"""NorMuon (Li et al. 2025, arXiv 2510.05491): Muon's orthogonalised momentum with a per-row
second moment that equalises the rows' update sizes. pytorch_optimizer.NorMuon (its Muon groups
only) on the block matrices, AdamW on the rest (bench.optim.matrix), as optimizer=muon does.

For a matrix W (m x n) with gradient G:
    M <- mu M + (1 - mu) G;  O = NS_5(G + mu (M - G))     (Nesterov; Newton-Schulz in bfloat16)
    v <- b2 v + (1 - b2) mean_j O_ij^2   (v: m x 1);  O' = O / (sqrt(v) + 1e-10)
    update_scale=match_rms: O' <- 0.2 sqrt(mn) O' / ||O'||_F  (RMS 0.2, the paper's Algorithm 1)
    update_scale=preserve_norm: O' <- ||O||_F O' / ||O'||_F, LR times muon's shape factor
        (optimizer.adjust_lr: original sqrt(max(1, m/n)) | match_rms_adamw 0.2 sqrt(max(m, n)))
    W <- W - lr wd W - lr O'

Keys and defaults, the paper's: momentum 0.95, normuon_beta2 0.95, update_scale match_rms (its
Algorithm 1, so AdamW's LR carries over: lr 1e-3 in the YAML, as muon.yaml's). momentum and
adjust_lr are muon's keys (the schema's momentum default 0.9 is shared; the YAML sets 0.95).
"""

from __future__ import annotations

from dataclasses import dataclass

from bench.errors import choice, in_unit
from bench.optim.base import OptimizerSpec
from bench.optim.library import require
from bench.optim.matrix import MatrixKnobs, check_matrix, split, with_adamw
from bench.optim.muon import ADJUST_LR

UPDATE_SCALES = ("match_rms", "preserve_norm")


@dataclass
class NorMuonKnobs(MatrixKnobs):
    momentum: float = 0.9  # muon's key (conf/optimizer/normuon.yaml: 0.95)
    adjust_lr: str = "original"  # muon's key: the shape factor in preserve_norm mode
    normuon_beta2: float = 0.95  # the per-row second moment's decay
    update_scale: str = "match_rms"  # match_rms | preserve_norm


def check_normuon(cfg) -> None:
    require("pytorch_optimizer", "normuon")
    check_matrix(cfg)
    o = cfg.optimizer
    in_unit("optimizer.normuon_beta2", o.normuon_beta2)
    choice("optimizer.update_scale", o.update_scale, UPDATE_SCALES)
    choice("optimizer.adjust_lr", o.adjust_lr, ADJUST_LR)


def normuon(model, params, cfg):
    """pytorch_optimizer.NorMuon on the block matrices + AdamW on the rest."""
    lib = require("pytorch_optimizer", "normuon")
    matrices, rest = split(model, params, cfg)
    group = {"params": matrices, "use_muon": True, "lr": cfg.lr, "momentum": cfg.momentum,
             "beta2": cfg.normuon_beta2, "weight_decay": cfg.weight_decay, "nesterov": True,
             "update_scale": cfg.update_scale,
             "use_adjusted_lr": cfg.adjust_lr == "match_rms_adamw"}
    return with_adamw("normuon", lib.NorMuon([group]), rest, cfg)


NORMUON = OptimizerSpec(normuon, knobs=NorMuonKnobs, check=check_normuon)
