"""Cost of the Hessian monitor against training steps of the same model (issue 6, `make perf`).

gpt_tiny (GPTConfig() defaults) with LoRA r = 8 on q, k, v, o, training batch 16 x 128; the
estimate on the Hessian batch a run uses by default (metrics.hessian.batch_size: half the training
batch) and, for reference, on the full training batch; on the CPU with one intra-op thread.
Times are this process's CPU time (time.process_time), and training steps and estimates are
sampled alternately, each the median of its samples: robust to other processes sharing the cores.

Why the ratio is what it is: an exact Hessian-vector product by double backward costs about two
forward+backward passes (Pearlmutter), a LoRA training step about one (frozen weights get no
gradient), so a k-iteration Lanczos estimate costs about 2k training steps.

Run with `pytest -m perf tests/perf/test_perf_hessian.py -s` to see the printed numbers.
"""

import math
import statistics
import time

import pytest
import torch
from omegaconf import OmegaConf

from bench.adapters import build_adapter
from bench.config import AdapterConfig
from bench.metrics.config import HessianConfig
from bench.metrics.monitor import HessianMonitor
from bench.models.gpt import GPT, GPTConfig

pytestmark = pytest.mark.perf

BATCH, SEQ = 16, 128


@pytest.fixture(scope="module")
def setting():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield _setting()
    torch.set_num_threads(threads)


def _setting():
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
    t0 = time.process_time()
    fn()
    return time.process_time() - t0


def interleaved(step, estimate, rounds: int, steps_per_round: int = 5):
    """Median seconds of one training step and of one estimate, sampled alternately."""
    step_s, est_s = [], []
    for _ in range(rounds):
        step_s += [timed(step) for _ in range(steps_per_round)]
        est_s.append(timed(estimate))
    return statistics.median(step_s), statistics.median(est_s)


def test_lanczos_30_costs_at_most_40_training_steps(setting, perf_table):
    model, adapter, batch, step = setting
    half_batch = [t[: BATCH // 2] for t in batch]  # the default Hessian batch of a run
    mon = HessianMonitor(
        every=1, iters=30, layers=[], adapter=adapter, batch=half_batch, per_layer=False
    )
    mon.estimate(model)  # warm-up
    step_s, est_s = interleaved(step, lambda: mon.estimate(model), rounds=3)
    ratio = est_s / step_s
    full = HessianMonitor(
        every=1, iters=30, layers=[], adapter=adapter, batch=batch, per_layer=False
    )
    _, full_s = interleaved(step, lambda: full.estimate(model), rounds=1, steps_per_round=1)
    print(
        f"\ngpt_tiny LoRA r=8 q,k,v,o, batch {BATCH}x{SEQ}, 1 thread, CPU time: "
        f"training step {1e3 * step_s:.0f} ms, 30-iteration Lanczos estimate on the default "
        f"Hessian batch {BATCH // 2}x{SEQ}: {est_s:.2f} s, ratio {ratio:.1f} (bound 40); on the "
        f"whole training batch: {full_s:.2f} s, ratio {full_s / step_s:.1f}"
    )
    perf_table("Hessian estimate (30 Lanczos) / LoRA training step (gpt_tiny, 1 thread)",
               f"{ratio:.1f}", "<= 40", ratio <= 40, f"step {1e3 * step_s:.0f} ms (CPU time)")
    assert ratio <= 40


def test_overhead_of_a_200_step_run(setting, perf_table):
    """The monitor's cost over a 200-step run logging every 10 steps, at the default settings
    and at every=50 (per_layer off, HessianConfig's default iters)."""
    model, adapter, batch, step = setting
    iters = HessianConfig().iters
    mon = HessianMonitor(every=50, iters=iters, layers=[], adapter=adapter, batch=batch)
    mon.estimate(model)  # warm-up
    step_s, est_s = interleaved(step, lambda: mon.estimate(model), rounds=2)
    steps, log_every = 200, 10

    def overhead(every):
        calls = HessianMonitor(every=every, iters=iters, layers=[], adapter=adapter, batch=batch)
        fired = sum(calls.due(s) for s in range(log_every, steps + 1, log_every))
        return fired * est_s / (steps * step_s)

    default_every = HessianConfig().every
    quiet = HessianMonitor(
        every=default_every, iters=iters, layers=[], adapter=adapter, batch=batch
    )
    hook_s = min(timed(lambda s=s: quiet(s, model)) for s in range(log_every, steps + 1, log_every))
    below = math.ceil(10 * est_s / step_s)  # one estimate per `every` steps costs < 10%
    print(
        f"\n{steps}-step run, {iters}-iteration estimates ({est_s:.2f} s each = "
        f"{est_s / step_s:.1f} training steps): overhead at every=50 "
        f"{100 * overhead(50):.0f}%; at the default every={default_every} "
        f"{100 * overhead(default_every):.1f}% (+ {1e6 * hook_s:.1f} us per log-step call); "
        f"every >= {below} keeps it under 10%"
    )
    perf_table(f"Hessian monitor overhead, 200-step run (every={default_every})",
               f"{overhead(default_every):.1%}", "< 10%", overhead(default_every) < 0.10,
               f"estimate {est_s:.2f} s")
    assert overhead(default_every) < 0.10
