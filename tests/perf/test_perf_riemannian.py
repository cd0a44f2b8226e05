"""Benchmark (make perf): a training step with a Riemannian optimizer on the attention vs AdamW.

gpt_small (6 layers, 8 heads of width 32): 96 rank-32 points (48 QK, 48 VO, all of one kind,
stepped as one stack). The models' steps are interleaved step by step in one process, so that
machine noise hits both alike; each model's best step counts (noise only adds time).
Goals (issue 32, docs/design.md §9): the training step within 1.10x AdamW's, the optimizer
step alone within 4x AdamW's.

The optimizer step's floor, measured in the same run: the AdamW part of the Riemannian run's
optimizer (every parameter outside attention), the embedded geometries' factorisation of one
2r x 2r core per point (R1: LAPACK's SVD; P1: K^T K's eigendecomposition, `top_singular`, on a
stack like the step's) and the step's batched products with an n x r factor
(`FLOOR_PARTS`: gradient projection, norm, retraction and transport). Where that floor is above
0.9 x 4 (R1 on a 2-core machine whose logical cores share one physical core: the SVDs alone take
about 3x AdamW's step), the 4x goal is printed, not asserted, and the step is asserted within
1.25x its floor instead.
"""

from __future__ import annotations

import copy
import time

import pytest
import torch

from bench.data.corpus import get_batch, load_corpus
from bench.manifolds.linalg import top_singular
from bench.models.gpt import GPT, GPTConfig
from bench.models.lowrank_attention import to_manifold_attention
from bench.optim import build_optimizer
from tests.conftest import GEOMETRY_VARIANTS
from tests.perf.test_perf_balora import best_time

pytestmark = pytest.mark.perf
SMALL = GPTConfig(d_model=256, n_layer=6, n_head=8, seq_len=256)
BATCH, WARMUP, STEPS = 8, 2, 12
TRAINING_GOAL, OPTIMIZER_GOAL = 1.10, 4.0
# geometries whose retraction factorises a 2r x 2r core: (top_singular's unit_values, the
# step's products with an n x r factor: egrad2rgrad, norm, retr_transp_along)
FLOOR_PARTS = {"fixed_rank_embedded": (False, 14), "partial_isometry_embedded": (True, 19)}


class _Opt:  # the optimizer config group, as bench.config.OptimizerConfig
    def __init__(self, name, lr=1e-3, manifold_lr=1e-2):
        self.name, self.lr, self.manifold_lr, self.weight_decay = name, lr, manifold_lr, 0.0
        self.betas, self.eps, self.momentum, self.trust_floor, self.repair_every = (
            (0.9, 0.999), 1e-8, 0.9, 1e-3, 100)


def side_by_side(runs: dict, data, warmup=WARMUP, steps=STEPS) -> dict:
    """{name: (model, optimizer)} -> {name: (best training step s, best optimizer.step s)},
    the models stepped in turn at every step (same batch), the first `warmup` steps dropped."""
    best = {name: (float("inf"), float("inf")) for name in runs}
    for i in range(warmup + steps):
        x, y = get_batch(data, BATCH, SMALL.seq_len, 0, i)
        for name, (model, opt) in runs.items():
            t0 = time.perf_counter()
            _, loss = model(x, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            t1 = time.perf_counter()
            opt.step()
            t2 = time.perf_counter()
            if i >= warmup:
                total, step = best[name]
                best[name] = (min(total, t2 - t0), min(step, t2 - t1))
    return best


def _floor_seconds(riem_opt, points: int, n: int, r: int, variant: str) -> float:
    """The optimizer step's floor (module docstring): AdamW's part, the cores' factorisation
    on 2r x 2r cores like the step's (a point's singular values and the step's small ones, or
    with unit_values P1's kept values about 1) and the n x r products, each timed alone."""
    unit_values, products = FLOOR_PARTS[variant]
    gen = torch.Generator().manual_seed(0)
    k = 0.01 * torch.randn(points, 2 * r, 2 * r, generator=gen)
    k[:, r:, r:] = 0  # K = [[core, R_v^T], [R_u, 0]]
    k[:, :r, :r] += torch.diag_embed(torch.linspace(1.0, 1.0 if unit_values else 0.1, r))
    factor, coefficients = torch.randn(points, n, r), torch.randn(points, r, r)
    return (best_time(riem_opt.optimizers["adamw"].step, repeats=5)
            + best_time(lambda: top_singular(k, r, unit_values), repeats=5)
            + products * best_time(lambda: torch.bmm(factor, coefficients), repeats=5))


@pytest.fixture(scope="module")
def base_model():
    torch.manual_seed(0)
    return GPT(SMALL)


@pytest.mark.parametrize("variant", GEOMETRY_VARIANTS)
def test_riemannian_training_step_vs_adamw(variant, base_model, perf_table):
    geometry, options = GEOMETRY_VARIANTS[variant]
    data = load_corpus(domain="stdlib_core").train
    euclid = copy.deepcopy(base_model)
    riem = to_manifold_attention(copy.deepcopy(base_model), geometry, block=False, **options)
    riem_opt = build_optimizer(riem, _Opt("riemannian_normalized"))
    best = side_by_side({"adamw": (euclid, build_optimizer(euclid, _Opt("adamw"))),
                         "riemannian": (riem, riem_opt)}, data)
    (total_e, step_e), (total_r, step_r) = best["adamw"], best["riemannian"]
    step_ratio, opt_ratio = total_r / total_e, step_r / step_e
    print(f"\n[perf] {variant}: training step {step_ratio:.3f}x AdamW's "
          f"({total_r * 1e3:.0f} vs {total_e * 1e3:.0f} ms); optimizer step alone "
          f"{opt_ratio:.2f}x ({step_r * 1e3:.1f} vs {step_e * 1e3:.1f} ms)")
    bound = f"AdamW {total_e * 1e3:.0f} ms"
    perf_table(f"{variant}: training step / AdamW's (gpt_small, riemannian_normalized)",
               f"{step_ratio:.3f}", f"<= {TRAINING_GOAL:.2f}", step_ratio <= TRAINING_GOAL, bound)
    assert step_ratio <= TRAINING_GOAL
    if variant not in FLOOR_PARTS:  # r x r factorisations only: the floor is far below
        perf_table(f"{variant}: optimizer step / AdamW's", f"{opt_ratio:.2f}",
                   f"<= {OPTIMIZER_GOAL:.1f}", opt_ratio <= OPTIMIZER_GOAL,
                   f"AdamW {step_e * 1e3:.1f} ms")
        assert opt_ratio <= OPTIMIZER_GOAL
        return
    packed = [p for p in riem.parameters() if getattr(p, "manifold", None) is not None]
    points, r = sum(p[..., 0, 0].numel() for p in packed), packed[0].shape[-1]  # 96, 32
    floor_s = _floor_seconds(riem_opt, points, SMALL.d_model, r, variant)
    floor = floor_s / step_e
    reachable = floor <= 0.9 * OPTIMIZER_GOAL
    print(f"[perf] {variant}: floor {floor:.2f}x ({floor_s * 1e3:.1f} ms)")
    perf_table(f"{variant}: optimizer step / AdamW's", f"{opt_ratio:.2f}",
               f"<= {OPTIMIZER_GOAL:.1f}", opt_ratio <= OPTIMIZER_GOAL,
               f"floor (AdamW part + cores + products) {floor:.2f}", asserted=reachable)
    if reachable:
        assert opt_ratio <= OPTIMIZER_GOAL
        return
    perf_table(f"{variant}: optimizer step (ms)", f"{step_r * 1e3:.1f}", "<= 1.25 x its floor",
               step_r <= 1.25 * floor_s, f"{1.25 * floor_s * 1e3:.1f}")
    assert step_r <= 1.25 * floor_s
