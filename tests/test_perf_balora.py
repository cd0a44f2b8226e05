"""Cost of the balanced projection: linear in in + out, no in x out matrix (balora.md §3).

Run with `pytest -m perf tests/test_perf_balora.py -s` to see the printed numbers.
"""

import subprocess
import sys
import textwrap
import time

import pytest
import torch

from bench.adapters.balora import project_balanced

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
    from bench.adapters.balora import project_balanced
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
