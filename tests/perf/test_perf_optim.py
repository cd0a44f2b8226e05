"""Benchmark (make perf): Muon's and lora_preconditioned's optimizer step against AdamW's.

gpt_small (6 layers, d_model 256, seq_len 256). Muon: every parameter trains (from scratch), Muon
on the 36 block matrices (its Newton-Schulz iteration in bfloat16), AdamW on the rest, against
AdamW on everything. lora_preconditioned: LoRA r = 8 on q, k, v, o (24 pairs), AdamW base,
against AdamW on the same factors. Steps are interleaved in one process so machine noise hits
both alike; the best of several rounds counts.

On a CPU without native bfloat16 matrix units Muon's Newton-Schulz iteration (bfloat16 inside
torch) is very slow: seconds per 256 x 256 matrix on the 2-core development machine, hence one
timed step for Muon. Its cost there is a property of torch's CPU bfloat16 matmul, not of Muon.
"""

from __future__ import annotations

import copy

import pytest
import torch

from bench.adapters import build_adapter
from bench.data.corpus import load_corpus
from bench.models.gpt import GPT
from bench.optim import build_optimizer
from tests.conftest import compose
from tests.perf.test_perf_riemannian import SMALL, STEPS, WARMUP, _timed_steps

pytestmark = pytest.mark.perf
ROUNDS = 3


FULL = ("adapter=full", "adapter.target_modules=[all]")  # every parameter trains


def _side_by_side(label, model, overrides, adapter=FULL, rounds=ROUNDS, steps=(WARMUP, STEPS)):
    """Time AdamW and the optimizer of `overrides` on two copies of `model`; print the ratios."""
    data = load_corpus(domain="stdlib_core").train
    cfg_e = compose([*adapter, "optimizer=adamw"])
    cfg_n = compose([*adapter, *overrides])
    reference = build_adapter(cfg_e.adapter).apply(copy.deepcopy(model))
    new = build_adapter(cfg_n.adapter).apply(copy.deepcopy(model))
    opt_e = build_optimizer(reference, cfg_e.optimizer)
    opt_n = build_optimizer(new, cfg_n.optimizer)
    best_e, best_n = (float("inf"),) * 2, (float("inf"),) * 2
    for _ in range(rounds):  # interleaved rounds
        best_e = min(best_e, _timed_steps(reference, opt_e, data, *steps))
        best_n = min(best_n, _timed_steps(new, opt_n, data, *steps))
    step_ratio, opt_ratio = best_n[0] / best_e[0], best_n[1] / best_e[1]
    print(f"\n[perf] {label}: optimizer step {opt_ratio:.2f}x AdamW's ({best_n[1] * 1e3:.1f} vs "
          f"{best_e[1] * 1e3:.1f} ms); training step {step_ratio:.2f}x ({best_n[0] * 1e3:.0f} "
          f"vs {best_e[0] * 1e3:.0f} ms), {torch.get_num_threads()} threads")
    return step_ratio, opt_ratio


def test_muon_step_vs_adamw():
    torch.manual_seed(0)
    _, opt_ratio = _side_by_side("muon (gpt_small, all parameters)", GPT(SMALL),
                                 ["optimizer=muon"], rounds=1, steps=(1, 1))
    assert opt_ratio > 1  # five Newton-Schulz matmul rounds per matrix cost more than AdamW's
    # elementwise update, on any device


def test_lora_preconditioned_step_vs_adamw():
    torch.manual_seed(0)
    lora = ("adapter=lora", "adapter.r=8")
    step_ratio, _ = _side_by_side("lora_preconditioned (gpt_small, LoRA r=8 on q, k, v, o)",
                                  GPT(SMALL), ["optimizer=lora_preconditioned"], adapter=lora)
    assert step_ratio < 1.5  # 48 r x r pseudo-inverses per step, batched into one call
