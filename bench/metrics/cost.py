"""Cost of training: the cores a run may use, the machine's matmul peak and model FLOPs
utilisation (MFU).

MFU = (model FLOPs per token x tokens per second) / peak FLOP/s, with the peak measured on this
machine (a square fp32 matmul at the current thread count) and cached per machine and thread count.
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import torch

CACHE = Path(".cache/matmul_peak.json")


def usable_cpus() -> int:
    """The cores this process may run on: its CPU affinity (taskset, SLURM's cgroups, a pinned
    test worker) where the system reports one, else every core of the machine."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0)) or 1
    return os.cpu_count() or 1


def free_cpus() -> int:
    """The usable cores no other process is busy on: `usable_cpus` minus the machine's load
    (its 1-minute average, rounded), at least 1. A busy 2-core machine gives 1: two intra-op
    threads there share a core with the other load and run several times slower than one."""
    try:
        busy = round(os.getloadavg()[0])
    except OSError:  # no load average on this system
        busy = 0
    return max(1, usable_cpus() - busy)


def measure_matmul_peak(n: int = 1024, repeats: int = 10, device: str = "cpu") -> float:
    """FLOP/s of the best of `repeats` n x n x n matmuls (2 n^3 FLOPs each)."""
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    best = float("inf")
    for _ in range(repeats + 2):
        t0 = time.perf_counter()
        torch.mm(a, b)
        if device == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def matmul_peak(device: str = "cpu", cache: Path = CACHE) -> float:
    """The cached peak for this machine, device and thread count (measured once)."""
    key = f"{platform.node()}|{platform.processor()}|{device}|threads={torch.get_num_threads()}"
    table = json.loads(cache.read_text()) if cache.exists() else {}
    if key not in table:
        table[key] = measure_matmul_peak(device=device)
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps(table, indent=2))
    return table[key]


def mfu(flops_per_token: float, tokens_per_s: float, peak_flops: float) -> float:
    return flops_per_token * tokens_per_s / peak_flops
