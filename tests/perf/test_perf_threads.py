"""Benchmark (make perf): the default thread count (bench.metrics.cost.free_cpus, divided among
a launch's workers) against 1 and 2 intra-op threads, a gpt_small training step each, measured
interleaved in one process so that the machine's load hits every count alike."""

from __future__ import annotations

import pytest
import torch

from bench.data.corpus import load_corpus
from bench.metrics.cost import free_cpus
from bench.models.gpt import GPT, GPTConfig
from tests.perf.test_perf_harness import BATCH, bare_loop

pytestmark = pytest.mark.perf
STEPS, ROUNDS = 4, 2


def _step_seconds(model, data, threads: int) -> float:
    torch.set_num_threads(threads)
    return BATCH * model.cfg.seq_len / bare_loop(model, data, STEPS)  # tokens/s -> s a step


def test_default_threads_against_one_and_two():
    previous = torch.get_num_threads()
    default = free_cpus()
    corpus = load_corpus(domain="stdlib_core")
    torch.manual_seed(0)
    model = GPT(GPTConfig(d_model=256, n_layer=6, n_head=8, seq_len=256))  # gpt_small
    counts = {"1 thread": 1, "2 threads": 2, f"default ({default})": default}
    times = {label: [] for label in counts}
    _step_seconds(model, corpus.train, 1)  # warm-up
    try:
        for _ in range(ROUNDS):
            for label, n in counts.items():
                times[label].append(_step_seconds(model, corpus.train, n))
    finally:
        torch.set_num_threads(previous)
    best = {label: min(t) for label, t in times.items()}
    fastest = min(best.values())
    for label, seconds in best.items():
        print(f"gpt_small training step, {label}: {seconds * 1e3:.0f} ms, "
              f"{seconds / fastest:.2f}x the fastest")
    # the default is the free cores' count: never much slower than the better of 1 and 2
    assert best[f"default ({default})"] <= 1.25 * min(best["1 thread"], best["2 threads"])
