"""Benchmark (make perf): the default thread count (bench.metrics.cost.free_cpus, divided among
a launch's workers) against 1 and 2 intra-op threads, a gpt_small training step each, measured
interleaved in one process so that the machine's load hits every count alike."""

from __future__ import annotations

import time

import pytest
import torch

from bench.data.corpus import get_batch, load_corpus
from bench.metrics.cost import free_cpus
from bench.models.gpt import GPT, GPTConfig

pytestmark = pytest.mark.perf
STEPS, ROUNDS, BATCH = 4, 2, 8


def _step_seconds(model, opt, data, threads: int) -> float:
    torch.set_num_threads(threads)
    seq = model.cfg.seq_len
    start = time.perf_counter()
    for step in range(STEPS):
        x, y = get_batch(data, BATCH, seq, 0, step)
        _, loss = model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return (time.perf_counter() - start) / STEPS


def test_default_threads_against_one_and_two():
    previous = torch.get_num_threads()
    default = free_cpus()
    corpus = load_corpus(domain="stdlib_core")
    torch.manual_seed(0)
    model = GPT(GPTConfig(d_model=256, n_layer=6, n_head=8, seq_len=256))  # gpt_small
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    counts = {"1 thread": 1, "2 threads": 2, f"default ({default})": default}
    times = {label: [] for label in counts}
    _step_seconds(model, opt, corpus.train, 1)  # warm-up
    try:
        for _ in range(ROUNDS):
            for label, n in counts.items():
                times[label].append(_step_seconds(model, opt, corpus.train, n))
    finally:
        torch.set_num_threads(previous)
    best = {label: min(t) for label, t in times.items()}
    fastest = min(best.values())
    for label, seconds in best.items():
        print(f"gpt_small training step, {label}: {seconds * 1e3:.0f} ms, "
              f"{seconds / fastest:.2f}x the fastest")
    # the default is the free cores' count: never much slower than the better of 1 and 2
    assert best[f"default ({default})"] <= 1.25 * min(best["1 thread"], best["2 threads"])
