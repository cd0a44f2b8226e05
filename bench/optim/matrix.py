"""What the optimizers wrapping a library class share: which parameters the class steps and
AdamW on the rest.

Matrix optimizers (soap, shampoo, normuon, adamh, muonh) take muon's split
(bench.optim.muon.block_matrices: the trainable 2-D matrices inside the blocks, or those of the
modules named in `optimizer.muon_modules`; embeddings, head, norms and biases to AdamW). The
elementwise ones (ademamix, schedule_free_adamw) step every trainable parameter, or, with
`optimizer.muon_modules` set, the matrices of those modules only (a study's row "on the attention
weights"), AdamW the rest. AdamW runs at `optimizer.adamw_lr` (null: `optimizer.lr`) with
`optimizer.adamw_betas` (null: cfg.betas; SOAP's paper betas (0.95, 0.95) are not AdamW's),
cfg.eps and decoupled weight decay on matrices (bench.optim.euclidean.adamw_over), and the two
are stepped as one (CombinedOptimizer), exactly as optimizer=muon does.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from bench.errors import positive
from bench.optim.base import AdamKnobs, CombinedOptimizer, check_betas
from bench.optim.euclidean import adamw_over
from bench.optim.muon import block_matrices


@dataclass
class MatrixKnobs(AdamKnobs):
    """adamw_lr and muon_modules: muon's keys, with muon's meaning, type and default."""

    adamw_lr: float | None = None  # the AdamW part's LR; None: lr
    # the modules whose matrices the library class steps, by their last name ([q, k, v, o]:
    # attention only); empty: every block matrix (matrix optimizers) or every parameter
    muon_modules: list[str] = field(default_factory=list)
    adamw_betas: list[float] | None = None  # the AdamW part's betas; None: betas


def check_matrix(cfg) -> None:
    o = cfg.optimizer
    if o.adamw_lr is not None:
        positive("optimizer.adamw_lr", o.adamw_lr)
    if o.get("adamw_betas") is not None:
        check_betas("optimizer.adamw_betas", list(o.adamw_betas),
                    allowed="null (the optimizer's betas) or ")


def split(model, params, cfg, matrices_only: bool = True) -> tuple[list, list]:
    """(what the library class steps, what AdamW steps), each in `params` order."""
    if not matrices_only and not cfg.get("muon_modules"):
        return list(params), []
    return block_matrices(model, params, cfg)


def with_adamw(name: str, opt, rest: list, cfg,
               combined: type[CombinedOptimizer] = CombinedOptimizer) -> CombinedOptimizer:
    """`opt` (under `name`) and AdamW at cfg.adamw_lr or cfg.lr on `rest` (if any), as one."""
    opts = {name: opt}
    if rest:
        opts["adamw"] = adamw_over(rest, cfg, lr=cfg.adamw_lr or cfg.lr,
                                   betas=cfg.get("adamw_betas"))
    return combined(opts)
