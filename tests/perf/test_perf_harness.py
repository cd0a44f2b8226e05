"""Benchmark (make perf): harness loop vs a bare PyTorch loop, interleaved in one process."""

from __future__ import annotations

import time

import pytest
import torch
from omegaconf import OmegaConf

from bench.adapters.full import Full
from bench.data.corpus import get_batch, load_corpus
from bench.metrics.cost import measure_matmul_peak, mfu
from bench.models.gpt import GPT, GPTConfig
from bench.record import RunRecord
from bench.train import Trainer, TrainerConfig

pytestmark = pytest.mark.perf
STEPS, BATCH = 60, 16


def bare_loop(model, data, steps):
    """The 20-line loop a researcher would write: batch, forward, backward, clip, step."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    seq = model.cfg.seq_len
    t0 = time.perf_counter()
    for step in range(steps):
        x, y = get_batch(data, BATCH, seq, 0, step)
        _, loss = model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        loss.item()
    return steps * BATCH * seq / (time.perf_counter() - t0)


def harness_loop(model, corpus, steps, run_dir):
    adapter = Full(OmegaConf.create({"target_modules": ["all"]}))
    adapter.apply(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    cfg = OmegaConf.structured(TrainerConfig(
        max_steps=steps, batch_size=BATCH, eval_every=steps, log_every=10, checkpoint_every=20,
        device="cpu"))
    record = RunRecord(run_dir)
    record.create({"bench": "perf"})
    t0 = time.perf_counter()
    Trainer(model=model, optimizer=opt, adapter=adapter, train_data=corpus.train,
            eval_sets={"": corpus.eval}, cfg=cfg, record=record, seed=0,
            device=torch.device("cpu"), n_eval_batches=1).run()
    record.close()
    return steps * BATCH * model.cfg.seq_len / (time.perf_counter() - t0)


def test_harness_throughput_vs_bare_loop(tmp_path, perf_table):
    corpus = load_corpus(domain="stdlib_core")
    cfg = GPTConfig()  # gpt_tiny
    peak = measure_matmul_peak()
    bare, harness = [], []
    for i in range(3):  # interleaved rounds, so machine noise hits both alike
        torch.manual_seed(i)
        bare.append(bare_loop(GPT(cfg), corpus.train, STEPS))
        torch.manual_seed(i)
        harness.append(harness_loop(GPT(cfg), corpus, STEPS, tmp_path / f"run{i}"))
    ratio = max(harness) / max(bare)
    fpt = GPT(cfg).flops_per_token()
    print(
        f"\n[perf] harness/bare throughput ratio: {ratio:.3f} "
        f"(harness {max(harness):.0f} tok/s, bare {max(bare):.0f} tok/s)"
    )
    print(
        f"[perf] matmul peak {peak / 1e9:.1f} GFLOP/s ({torch.get_num_threads()} threads); "
        f"MFU bare {mfu(fpt, max(bare), peak):.1%}, harness {mfu(fpt, max(harness), peak):.1%}"
    )
    perf_table("harness / bare PyTorch loop tokens/s (gpt_tiny)", f"{ratio:.3f}", ">= 0.95",
               ratio >= 0.95, f"bare {max(bare):.0f} tok/s")
    assert ratio >= 0.95
