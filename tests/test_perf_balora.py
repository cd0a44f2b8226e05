"""Cost of the balanced projection: linear in in + out, no in x out matrix (balora.md §3).

Run with `pytest -m perf tests/test_perf_balora.py -s` to see the printed numbers.
"""

import subprocess
import sys
import textwrap
import time

import pytest
import torch

from bench.adapters.balancing import project_balanced

pytestmark = pytest.mark.perf

SIZES = (1024, 2048, 4096, 8192, 16384)
RANK = 8


def best_time(fn, repeats=20):
    """Best of `repeats` (as timeit): robust to other processes sharing the cores."""
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def test_projection_time_grows_at_most_linearly(one_thread):
    g = torch.Generator().manual_seed(0)
    times = {}
    for n in SIZES:  # in = out = n
        A = torch.randn(RANK, n, generator=g)  # (r, in)
        B = torch.randn(n, RANK, generator=g)  # (out, r)
        times[n] = best_time(lambda A=A, B=B: project_balanced(A, B))
    base = SIZES[0]
    print(f"\nproject_balanced, r = {RANK}, float32 in, float64 compute, 1 thread, best of 20")
    print(f"{'in=out':>7} {'ms':>8} {'time ratio':>11} {'size ratio':>11}")
    for n in SIZES:
        print(f"{n:>7} {1e3 * times[n]:>8.3f} {times[n] / times[base]:>11.2f} {n / base:>11.1f}")
    for n in SIZES[1:]:
        assert times[n] / times[base] <= 1.5 * n / base, (n, times)


# Peak resident memory of a fresh process (ru_maxrss, KiB on Linux) around one projection; a
# dense in x out float32 product would add n^2 * 4 bytes (1 GiB at n = 16384).
_RSS_PROBE = textwrap.dedent("""
    import resource, sys, torch
    from bench.adapters.balancing import project_balanced
    n, r, dense = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "dense"
    project_balanced(torch.randn(r, 64), torch.randn(64, r))  # load the kernels
    g = torch.Generator().manual_seed(0)
    A, B = torch.randn(r, n, generator=g), torch.randn(n, r, generator=g)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if dense:
        W = B @ A  # the control: what forming the product costs
    else:
        project_balanced(A, B)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print((after - before) * 1024)
""")


def peak_rss_growth(n, mode):
    out = subprocess.run([sys.executable, "-c", _RSS_PROBE, str(n), str(RANK), mode],
                         capture_output=True, text=True, check=True, timeout=120)
    return int(out.stdout.split()[-1])


def test_projection_never_forms_the_dense_product():
    n = SIZES[-1]
    dense_bytes = n * n * 4
    grown = peak_rss_growth(n, "project")
    control = peak_rss_growth(n, "dense")
    print(f"\npeak RSS growth at in = out = {n}: projection {grown / 2**20:.1f} MiB, "
          f"dense product (control) {control / 2**20:.1f} MiB")
    assert control > 0.9 * dense_bytes  # the probe does see an in x out matrix
    assert grown < 0.05 * dense_bytes


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_projection_memory_on_cuda():
    n = SIZES[-1]
    A = torch.randn(RANK, n, device="cuda")
    B = torch.randn(n, RANK, device="cuda")
    project_balanced(A, B)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    project_balanced(A, B)
    torch.cuda.synchronize()
    grown = torch.cuda.max_memory_allocated() - base
    print(f"\nCUDA peak growth at in = out = {n}: {grown / 2**20:.1f} MiB")
    assert grown < 0.05 * n * n * 4


def test_projection_share_of_a_gpt_small_training_step():
    """BaLoRA's projection after a step vs the whole training step: gpt_small, r = 8, attention
    and MLP adapted (24 + 12 layers), AdamW; interleaved rounds, best of each."""
    import time

    from omegaconf import OmegaConf

    from bench.adapters import build_adapter
    from bench.config import AdapterConfig
    from bench.data.corpus import get_batch, load_corpus
    from bench.models.gpt import GPT, GPTConfig

    cfg = GPTConfig(d_model=256, n_layer=6, n_head=8, seq_len=256)
    torch.manual_seed(0)
    adapter = build_adapter(OmegaConf.structured(AdapterConfig(
        name="balora", r=8, alpha=16.0, target_modules=["q", "k", "v", "o", "up", "down"])))
    model = adapter.apply(GPT(cfg))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    data = load_corpus(domain="stdlib_core").train
    step_times, projection_times = [], []
    for i in range(8):
        x, y = get_batch(data, 8, cfg.seq_len, 0, i)
        t0 = time.perf_counter()
        _, loss = model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        t1 = time.perf_counter()
        adapter.after_step(i + 1, opt)
        t2 = time.perf_counter()
        if i >= 2:
            step_times.append(t1 - t0)
            projection_times.append(t2 - t1)
    share = min(projection_times) / (min(step_times) + min(projection_times))
    print(f"\n[perf] BaLoRA projection on gpt_small (36 layers, r = 8): "
          f"{1e3 * min(projection_times):.1f} ms of a {1e3 * min(step_times):.0f} ms step "
          f"= {share:.1%}")
    assert share <= 0.03
