"""Optimizer-step cost of the Riemannian geometries against AdamW (`make perf`; prints ratios).

Every configuration is stepped in turn, round after round, in one process (interleaved), so
that load on the machine affects all of them alike; the best (minimum) time over rounds is
reported, the usual estimator on a shared host (timeit's advice).
Gradients are fixed random tensors: only the optimizer step is timed. Both layouts, one
ManifoldParameter holding all 96 points ("batched") and one per point ("separate"), are
stepped as one stack (bench.optim.riemannian.PointStack): the separate layout costs only the
gathering of its points, which is asserted on one thread (within 1.5x the batched layout's
step; printed for the default threads, where noise of the shared cores dominates it).
"""

from __future__ import annotations

import time

import geoopt
import pytest
import torch

from bench.manifolds import GEOMETRIES, make
from bench.optim.riemannian import RiemannianAdam, RiemannianNormalized

pytestmark = pytest.mark.perf

POINTS, SIDE, RANK = 96, 256, 32  # e.g. 6 layers x 8 heads x (QK, VO), head width 32
ROUNDS, WARMUP = 8, 2


def _with_grads(params, gen, scale=1e-3):
    for p in params:
        p.grad = scale * torch.randn(p.shape, dtype=p.dtype, generator=gen)
    return params


def _adamw(gen):
    shapes = [(SIDE, RANK)] * (2 * POINTS)  # the two factors of each point, as plain tensors
    params = [torch.nn.Parameter(torch.randn(s, generator=gen) / SIDE**0.5) for s in shapes]
    return torch.optim.AdamW(_with_grads(params, gen), lr=1e-3)


def _riemannian(name, opt, batched, gen, n=SIDE, r=RANK, points=POINTS):
    manifold = make(name, n, n, r)
    if batched:  # one ManifoldParameter holding all points (batched QR / SVD)
        data = [manifold.random_point(points, dtype=torch.float32, generator=gen)]
    else:  # one ManifoldParameter per point
        data = [manifold.random_point(dtype=torch.float32, generator=gen) for _ in range(points)]
    params = _with_grads([geoopt.ManifoldParameter(d, manifold=manifold) for d in data], gen)
    if opt == "riemannian_adam":
        return RiemannianAdam(params, lr=1e-3)
    return RiemannianNormalized(params, lr=1e-3, repair_every=None)


def _interleaved_best(optimizers: dict, rounds=ROUNDS, warmup=WARMUP) -> dict:
    times = {key: [] for key in optimizers}
    for _ in range(rounds + warmup):
        for key, opt in optimizers.items():
            start = time.perf_counter()
            opt.step()
            times[key].append(time.perf_counter() - start)
    return {key: min(ts[warmup:]) for key, ts in times.items()}


@pytest.mark.parametrize("threads", ["default", 1])
def test_optimizer_step_against_adamw(threads, perf_table):
    """96 points with 256 x 32 factors: RiemannianAdam / RiemannianNormalized vs AdamW."""
    previous = torch.get_num_threads()
    if threads != "default":
        torch.set_num_threads(threads)
    try:
        gen = torch.Generator().manual_seed(0)
        optimizers = {"adamw": _adamw(gen)}
        for name in GEOMETRIES:
            for opt in ("riemannian_adam", "riemannian_normalized"):
                for batched in (False, True):
                    layout = "batched" if batched else "separate"
                    optimizers[(name, opt, layout)] = _riemannian(name, opt, batched, gen)
        best = _interleaved_best(optimizers)
    finally:
        torch.set_num_threads(previous)
    base = best.pop("adamw")
    print(
        f"\noptimizer step, {POINTS} points of {SIDE}x{RANK} factors, float32, "
        f"torch threads={threads if threads != 'default' else previous}: "
        f"AdamW {base * 1e3:.2f} ms"
    )
    print(f"{'geometry':28s} {'optimizer':22s} {'layout':9s} {'ms':>8s} {'x AdamW':>8s}")
    for (name, opt, layout), t in best.items():
        print(f"{name:28s} {opt:22s} {layout:9s} {t * 1e3:8.2f} {t / base:8.2f}")
    threads_label = threads if threads != "default" else previous
    slower = []
    for name in GEOMETRIES:
        for opt in ("riemannian_adam", "riemannian_normalized"):
            batched, separate = best[(name, opt, "batched")], best[(name, opt, "separate")]
            perf_table(f"{name}, {opt}: step of 96 points x AdamW's ({threads_label} threads; "
                       "separate layout)", f"{batched / base:.2f} ({separate / base:.2f})",
                       "separate <= 1.5 x batched", separate <= 1.5 * batched,
                       f"AdamW {base * 1e3:.2f} ms", asserted=threads == 1)
            if separate > 1.5 * batched:
                slower.append((name, opt, separate / batched))
    # on one thread, where the per-parameter gathering is not lost in the threads' noise
    assert threads != 1 or not slower, slower


def test_step_time_grows_at_most_linearly_in_n(perf_table):
    """One point, n = m from 512 to 8192, r = 8: step time grows no faster than n (x1.5)."""
    sizes = (512, 1024, 2048, 4096, 8192)
    gen = torch.Generator().manual_seed(0)
    optimizers = {}
    for name in GEOMETRIES:
        for opt in ("riemannian_adam", "riemannian_normalized"):
            for n in sizes:
                optimizers[(name, opt, n)] = _riemannian(name, opt, False, gen, n=n, r=8, points=1)
    best = _interleaved_best(optimizers, rounds=15, warmup=3)
    print(f"\nstep time (ms) for n = m in {sizes}, r = 8, and growth t(n)/t({sizes[0]})")
    failures = []
    for name in GEOMETRIES:
        for opt in ("riemannian_adam", "riemannian_normalized"):
            ts = [best[(name, opt, n)] for n in sizes]
            growth = ts[-1] / ts[0]
            print(
                f"{name:28s} {opt:22s} "
                + " ".join(f"{t * 1e3:7.3f}" for t in ts)
                + f"   growth x{growth:.1f} (size x{sizes[-1] // sizes[0]})"
            )
            perf_table(f"{name}, {opt}: step time n = {sizes[0]} -> {sizes[-1]} (r = 8)",
                       f"x{growth:.1f}", "<= 1.5 x size ratio",
                       growth <= 1.5 * sizes[-1] / sizes[0], f"x{sizes[-1] // sizes[0]}")
            if growth > 1.5 * sizes[-1] / sizes[0]:
                failures.append((name, opt, growth))
    assert not failures, failures
