"""Riemannian-preconditioned LoRA (Zhang & Pilanci 2024, arXiv 2402.02347).

For each LoRA pair, A = lora_A (r x in) and B = lora_B (out x r), the Euclidean factor gradients
are preconditioned by the r x r Gram of the other factor before the base optimizer steps:
    g_A <- (B^T B + reg I_r)^-1 g_A        (r x in)
    g_B <- g_B (A A^T + reg I_r)^-1        (out x r)
in place on `.grad`, after the trainer's gradient clipping, as PEFT 0.21.2's
`peft.optimizers.create_riemannian_optimizer` does (its name-based pairing, `.lora_A.` in a
parameter name, does not match our modules, whose factors are `<module>.lora_A`, so the pairs come
from the modules themselves: bench.optim.base.lora_pairs). The inverses are pseudo-inverses
computed in at least float32, as in PEFT; ours are batched over the pairs (same rank) and use
the symmetric eigen-solver (`hermitian=True`): the same matrices to rounding.

Where the LoRA scale s = alpha / r enters: only through the gradients themselves. With
W = W0 + s B A and G = dL/dW, autograd gives g_A = s B^T G and g_B = s G A^T; the
preconditioners are the plain Grams B^T B and A A^T, not s^2 B^T B (PEFT ignores s in the
preconditioner as well; we match it). So the step on W is s^2 times the scale-free one:
dW = -lr s^2 (P_B G + G P_A) for a plain SGD base, P the projectors onto B's columns and A's rows
(reg = 0).

At reg = 0 the preconditioned pair is the Riemannian gradient of the quotient geometry R2
(bench/manifolds/fixed_rank_quotient.py, egrad2rgrad with L = B, R = A^T): tests check it.

`optimizer.reg` defaults to 1e-6, the original code's damping (pilancilab's repository); PEFT's
default 1e-2 is 10^4 times larger and at small factors (B grows from 0) makes the preconditioner
about I / reg, i.e. a rescaled Euclidean gradient. `optimizer.base`: adamw (cfg.betas, cfg.eps,
decoupled cfg.weight_decay) or sgd (heavy-ball cfg.momentum, coupled L2 decay; with momentum 0
it is ScaledGD, Tong, Ma & Chi 2021). Every other trainable parameter is stepped by the base
optimizer unpreconditioned (a LoRA run has none).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import torch

from bench.errors import ConfigError, at_least, choice
from bench.optim.base import AdamKnobs, CombinedOptimizer, OptimizerSpec, lora_pairs
from bench.optim.euclidean import adamw_over, sgd_over

BASES = {"adamw": adamw_over, "sgd": sgd_over}


@dataclass
class PreconditionedKnobs(AdamKnobs):
    """betas, eps: the adamw base's; momentum: the sgd base's."""

    momentum: float = 0.9
    reg: float = 1e-6  # the damping of (B^T B + reg I)^-1 (the original code's, not PEFT's 1e-2)
    base: str = "adamw"  # adamw | sgd (ScaledGD)


def check_preconditioned(cfg) -> None:
    choice("optimizer.base", cfg.optimizer.base, tuple(BASES))
    at_least("optimizer.reg", cfg.optimizer.reg, 0)


@torch.no_grad()
def precondition_lora_grads(pairs, reg: float) -> None:
    """In place, for every (A (r, in), B (out, r)) with gradients:
    g_A <- pinv(B^T B + reg I) g_A and g_B <- g_B pinv(A A^T + reg I)."""
    by_rank = defaultdict(list)
    for a, b in pairs:
        if a.grad is not None or b.grad is not None:
            by_rank[a.shape[0]].append((a, b))
    for r, group in by_rank.items():
        dtype = torch.promote_types(group[0][0].dtype, torch.float32)
        a0 = group[0][0]
        grams = [b.to(dtype).T @ b.to(dtype) for _, b in group]  # B^T B: (r, r) each
        grams += [a.to(dtype) @ a.to(dtype).T for a, _ in group]  # A A^T: (r, r) each
        damp = reg * torch.eye(r, dtype=dtype, device=a0.device)
        inverses = torch.linalg.pinv(torch.stack(grams) + damp, hermitian=True)  # (2n, r, r)
        n = len(group)
        for i, (a, b) in enumerate(group):
            if a.grad is not None:
                a.grad.copy_(inverses[i] @ a.grad.to(dtype))
            if b.grad is not None:
                b.grad.copy_(b.grad.to(dtype) @ inverses[n + i])


class LoRAPreconditioned(CombinedOptimizer):
    """The base optimizer stepping the preconditioned LoRA gradients; its state is the base's."""

    def __init__(self, base: torch.optim.Optimizer, pairs, reg: float):
        super().__init__({"base": base})
        self.pairs, self.reg = pairs, reg

    def step(self, closure=None):
        if closure is not None:  # a closure would recompute .grad after the preconditioning
            raise ValueError("LoRAPreconditioned.step takes no closure")
        precondition_lora_grads(self.pairs, self.reg)
        super().step()


def lora_preconditioned(model, params, cfg) -> LoRAPreconditioned:
    """The preconditioner (cfg.reg) + the base optimizer cfg.base (adamw | sgd) at cfg.lr."""
    pairs = lora_pairs(model)
    if not pairs:
        raise ConfigError(
            "optimizer.name='lora_preconditioned' found no LoRA factors (lora_A, lora_B): it "
            "needs adapter.name=lora or balora with adapter.geometry=euclidean"
        )
    if cfg.base not in BASES:
        raise ConfigError(
            f"optimizer.base={cfg.base!r} is not allowed; allowed values: {', '.join(BASES)}"
        )
    return LoRAPreconditioned(BASES[cfg.base](params, cfg), pairs, cfg.reg)


def method_suffix(cfg) -> str:
    """'' for the adamw base (the default), '+sgd' for ScaledGD: each base is its own method."""
    return "" if cfg.base == "adamw" else "+" + cfg.base


LORA_PRECONDITIONED = OptimizerSpec(lora_preconditioned, knobs=PreconditionedKnobs,
                                    check=check_preconditioned, needs_lora=True,
                                    method_suffix=method_suffix)
