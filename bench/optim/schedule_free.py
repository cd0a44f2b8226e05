"""Schedule-Free AdamW (Defazio et al. 2024, arXiv 2405.15682): no LR decay; the model is
evaluated at an average of the iterates. pytorch_optimizer.ScheduleFreeAdamW on every trainable
parameter (or, with optimizer.muon_modules, on those modules' matrices and AdamW on the rest:
bench.optim.matrix).

Three sequences per parameter: z (the base SGD-like iterate), x (the weighted average of the
z's, the point the method is evaluated at) and y = (1 - b1) z + b1 x (where gradients are taken;
what the parameters hold while training). Per step, with c = w_t / sum w (w_t = lr_max^2, the
library's weight_lr_power 2, r 0):
    v <- b2 v + (1 - b2) g^2;  d = g / (sqrt(v_hat) + eps) + wd y
    z <- z - lr d;  x <- (1 - c) x + c z;  y <- (1 - b1) z + b1 x
The library keeps y in the parameters and z in its state; `eval()` turns the parameters into x,
`train()` back into y.

Where the trainer needs x (bench.train): every evaluation (eval/loss, test/loss, measurements)
and every checkpoint run inside `ScheduleFree.eval_mode()`, so the record's losses are x's and a
checkpoint holds x with the groups marked as evaluating; restoring a checkpoint runs inside it
too, so leaving it turns x back into the y the uninterrupted run continues from, with the same
arithmetic (a resumed run is bitwise). The record states `meta.evaluates_at: averaged`
(bench.run.prepare reads `evaluates_at` off the optimizer).

Keys and defaults, the paper's (its AdamW recipe): betas [0.9, 0.999] (b1 is the interpolation
between z and x), weight_lr_power 2, sf_r 0, warmup through the trainer (trainer.warmup_steps:
the library's own warmup is left at 0, the LR it reads is the trainer's), a constant LR after it:
trainer.lr_schedule=warmup_cosine is refused (decaying the LR is what the method replaces).
lr 2.5e-3 is the library's default.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

from bench.errors import ConfigError, at_least
from bench.optim.base import CombinedOptimizer, OptimizerSpec, euclidean_groups
from bench.optim.library import require
from bench.optim.matrix import MatrixKnobs, check_matrix, split, with_adamw


@dataclass
class ScheduleFreeKnobs(MatrixKnobs):
    weight_lr_power: float = 2.0  # the averaging weight w_t = t^r lr_max^weight_lr_power
    sf_r: float = 0.0  # r in w_t


def check_schedule_free(cfg) -> None:
    require("pytorch_optimizer", "schedule_free_adamw")
    check_matrix(cfg)
    at_least("optimizer.weight_lr_power", cfg.optimizer.weight_lr_power, 0)
    at_least("optimizer.sf_r", cfg.optimizer.sf_r, 0)
    if cfg.trainer.lr_schedule == "warmup_cosine":
        raise ConfigError("optimizer.name='schedule_free_adamw' replaces the LR decay: "
                          "trainer.lr_schedule=warmup_cosine is not allowed; allowed values: "
                          "constant, warmup_constant")


class ScheduleFree(CombinedOptimizer):
    """ScheduleFreeAdamW (and AdamW on the rest, if any) stepped as one; evaluated at x."""

    evaluates_at = "averaged"  # the record's meta.evaluates_at

    @contextmanager
    def eval_mode(self):
        """The parameters hold x inside, y again after (the library's eval() and train())."""
        averaged = self.optimizers["schedule_free"]
        averaged.eval()
        try:
            yield
        finally:
            averaged.train()


def schedule_free_adamw(model, params, cfg) -> ScheduleFree:
    """pytorch_optimizer.ScheduleFreeAdamW (+ AdamW on what it leaves, with muon_modules)."""
    lib = require("pytorch_optimizer", "schedule_free_adamw")
    mine, rest = split(model, params, cfg, matrices_only=False)
    opt = lib.ScheduleFreeAdamW(euclidean_groups(mine, cfg.weight_decay), lr=cfg.lr,
                                betas=tuple(cfg.betas), weight_decay=cfg.weight_decay,
                                r=cfg.sf_r, weight_lr_power=cfg.weight_lr_power, eps=cfg.eps)
    return with_adamw("schedule_free", opt, rest, cfg, combined=ScheduleFree)


SCHEDULE_FREE_ADAMW = OptimizerSpec(schedule_free_adamw, knobs=ScheduleFreeKnobs,
                                    check=check_schedule_free)
