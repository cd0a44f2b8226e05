"""Benchmark (make perf): a training step with a Riemannian optimizer on the attention vs AdamW.

gpt_small (6 layers, 8 heads of width 32): 96 rank-32 points per product kind. Steps are
interleaved in one process so machine noise hits both alike; the best of several rounds counts.
"""

from __future__ import annotations

import copy
import time

import pytest
import torch

from bench.data.corpus import get_batch, load_corpus
from bench.models.gpt import GPT, GPTConfig
from bench.models.lowrank_attention import to_manifold_attention
from bench.optim import build_optimizer
from tests.conftest import GEOMETRY_VARIANTS

pytestmark = pytest.mark.perf
SMALL = GPTConfig(d_model=256, n_layer=6, n_head=8, seq_len=256)
BATCH, WARMUP, STEPS = 8, 2, 6


class _Opt:  # the optimizer config group, as bench.config.OptimizerConfig
    def __init__(self, name, lr=1e-3, manifold_lr=1e-2):
        self.name, self.lr, self.manifold_lr, self.weight_decay = name, lr, manifold_lr, 0.0
        self.betas, self.eps, self.momentum, self.trust_floor, self.repair_every = (
            (0.9, 0.999), 1e-8, 0.9, 1e-3, 100)


def _timed_steps(model, opt, data, warmup=WARMUP, steps=STEPS):
    """(mean seconds per full training step, mean seconds of optimizer.step alone)."""
    total = step_only = 0.0
    for i in range(warmup + steps):
        x, y = get_batch(data, BATCH, SMALL.seq_len, 0, i)
        t0 = time.perf_counter()
        _, loss = model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        t1 = time.perf_counter()
        opt.step()
        t2 = time.perf_counter()
        if i >= warmup:
            total += t2 - t0
            step_only += t2 - t1
    return total / steps, step_only / steps


@pytest.mark.parametrize("variant", GEOMETRY_VARIANTS)
def test_riemannian_training_step_vs_adamw(variant):
    geometry, options = GEOMETRY_VARIANTS[variant]
    data = load_corpus(domain="stdlib_core").train
    torch.manual_seed(0)
    base = GPT(SMALL)
    euclid = copy.deepcopy(base)
    riem = to_manifold_attention(copy.deepcopy(base), geometry, block=False, **options)
    opt_e = build_optimizer(euclid, _Opt("adamw"))
    opt_r = build_optimizer(riem, _Opt("riemannian_normalized"))
    best_e, best_r = (float("inf"),) * 2, (float("inf"),) * 2
    for _ in range(3):  # interleaved rounds
        best_e = min(best_e, _timed_steps(euclid, opt_e, data))
        best_r = min(best_r, _timed_steps(riem, opt_r, data))
    step_ratio = best_r[0] / best_e[0]
    opt_ratio = best_r[1] / best_e[1]
    print(f"\n[perf] {variant}: training step {step_ratio:.3f}x AdamW's "
          f"({best_r[0] * 1e3:.0f} vs {best_e[0] * 1e3:.0f} ms); optimizer step alone "
          f"{opt_ratio:.1f}x ({best_r[1] * 1e3:.1f} vs {best_e[1] * 1e3:.1f} ms)")
    assert step_ratio <= 1.10
