"""Cost of the Hessian monitor against training steps of the same model (issue 6, `make perf`).

gpt_tiny (GPTConfig() defaults) with LoRA r = 8 on q, k, v, o, batch 16 x 128, on whatever
device and thread count this process has. Training steps and estimates are timed interleaved, so
that other load on a shared machine hits both alike; each is the median of its samples.

Run with `pytest -m perf tests/test_perf_hessian.py -s` to see the printed numbers.
"""

import statistics
import time

import pytest
import torch
from omegaconf import OmegaConf

from bench.adapters import build_adapter
from bench.config import AdapterConfig, HessianConfig
from bench.metrics.monitor import HessianMonitor
from bench.models.gpt import GPT, GPTConfig

pytestmark = pytest.mark.perf

BATCH, SEQ = 16, 128


@pytest.fixture(scope="module")
def setting():
    torch.manual_seed(0)
    model = GPT(GPTConfig())
    adapter = build_adapter(OmegaConf.structured(AdapterConfig(name="lora", r=8)))
    model = adapter.apply(model)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-3)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (BATCH, SEQ), generator=g)
    y = torch.randint(0, 256, (BATCH, SEQ), generator=g)

    def step():
        """One training step as the trainer takes it: forward, backward, AdamW."""
        opt.zero_grad(set_to_none=True)
        _, loss = model(x, y)
        loss.backward()
        opt.step()

    for _ in range(3):  # warm-up; B leaves its zero init, as in training
        step()
    return model, adapter, (x, y), step


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def interleaved(step, estimate, rounds: int, steps_per_round: int = 3):
    """Median seconds of one training step and of one estimate, sampled alternately."""
    step_s, est_s = [], []
    for _ in range(rounds):
        step_s += [timed(step) for _ in range(steps_per_round)]
        est_s.append(timed(estimate))
    return statistics.median(step_s), statistics.median(est_s)


def test_lanczos_30_costs_at_most_40_training_steps(setting):
    model, adapter, batch, step = setting
    mon = HessianMonitor(every=1, iters=30, layers=[], adapter=adapter, batch=batch,
                         per_layer=False)
    mon.estimate(model)  # warm-up
    step_s, est_s = interleaved(step, lambda: mon.estimate(model), rounds=3)
    ratio = est_s / step_s
    print(f"\ngpt_tiny LoRA r=8 q,k,v,o, batch {BATCH}x{SEQ}, {torch.get_num_threads()} threads: "
          f"training step {1e3 * step_s:.0f} ms, 30-iteration Lanczos estimate "
          f"{est_s:.2f} s, ratio {ratio:.1f} (bound 40)")
    assert ratio <= 40


def test_overhead_of_a_200_step_run(setting):
    """The monitor's cost over a 200-step run logging every 10 steps, at the default settings
    and at every=50 (per_layer off, HessianConfig's default iters)."""
    model, adapter, batch, step = setting
    iters = HessianConfig().iters
    mon = HessianMonitor(every=50, iters=iters, layers=[], adapter=adapter, batch=batch)
    mon.estimate(model)  # warm-up
    step_s, est_s = interleaved(step, lambda: mon.estimate(model), rounds=2)
    steps, log_every = 200, 10

    def overhead(every):
        calls = HessianMonitor(every=every, iters=iters, layers=[], adapter=adapter,
                               batch=batch)
        fired = sum(calls.due(s) for s in range(log_every, steps + 1, log_every))
        return fired * est_s / (steps * step_s)

    default_every = HessianConfig().every
    quiet = HessianMonitor(every=default_every, iters=iters, layers=[], adapter=adapter,
                           batch=batch)
    hook_s = min(timed(lambda s=s: quiet(s, model)) for s in range(log_every, steps + 1,
                                                                     log_every))
    below = next((e for e in range(50, 100_000, 50) if overhead(e) < 0.10), None)
    print(f"\n{steps}-step run, {iters}-iteration estimates ({est_s:.2f} s each = "
          f"{est_s / step_s:.1f} training steps): overhead at every=50 "
          f"{100 * overhead(50):.0f}%; at the default every={default_every} "
          f"{100 * overhead(default_every):.1f}% (+ {1e6 * hook_s:.1f} us per log-step call); "
          f"smallest every (multiple of 50) under 10%: {below}")
    assert overhead(default_every) < 0.10
