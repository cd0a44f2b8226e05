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


def busy_elsewhere(interval: float = 0.1, stat: str = "/proc/stat") -> float | None:
    """How many CPUs other processes keep busy, averaged over `interval` seconds: the machine's
    busy time (/proc/stat: every state but idle and iowait) less this process's own CPU time
    (os.times), over the elapsed time. None where /proc/stat cannot be read.

    Unlike the load average, it leaves out this process's own recent work: a run that follows
    another in the same process (hydra/launcher=serial, a test session) would otherwise count
    its predecessor's threads as another program's and take one core where two are free."""

    def sample() -> tuple[int, int, float]:
        with open(stat) as f:
            ticks = [int(x) for x in f.readline().split()[1:9]]  # user .. steal (jiffies)
        own = os.times()
        return sum(ticks) - ticks[3] - ticks[4], sum(ticks), own.user + own.system

    try:
        busy0, total0, own0 = sample()
        time.sleep(interval)
        busy1, total1, own1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    cpus = os.cpu_count() or 1
    elapsed = (total1 - total0) / cpus  # jiffies of wall time (every CPU ticks)
    if elapsed <= 0:
        return None
    own = (own1 - own0) * os.sysconf("SC_CLK_TCK")  # jiffies (/proc/stat means a POSIX system)
    return max(0.0, (busy1 - busy0 - own) / elapsed)


def free_cpus() -> int:
    """The usable cores no other process is busy on: `usable_cpus` minus the CPUs other
    processes keep busy (`busy_elsewhere`, rounded; the 1-minute load average where /proc/stat
    is missing), at least 1. A busy 2-core machine gives 1: two intra-op threads there share a
    core with the other load and run several times slower than one. One usable core gives 1
    without measuring."""
    usable = usable_cpus()
    if usable == 1:
        return 1
    busy = busy_elsewhere()
    if busy is None:
        try:
            busy = os.getloadavg()[0]
        except OSError:  # no load average on this system
            busy = 0.0
    return max(1, usable - round(busy))


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
