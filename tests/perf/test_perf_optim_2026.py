"""Benchmark (make perf): each optimizer of issue 29 against AdamW on gpt_small (6 layers,
d_model 256, seq_len 256), side by side in one process
(tests/perf/test_perf_riemannian.side_by_side: steps interleaved, each model's best step
counts): the optimizer step's and the training step's ratio to AdamW's, in make perf's table.

Every parameter trains (from scratch); LoRA-RITE: LoRA r = 8 on q, k, v, o against AdamW on the
same factors. The first steps are untimed (state allocation, SOAP's first
eigendecompositions). Shampoo is timed twice: between inverse-root computations (the steps its
YAML runs 99 of every 100) and on a step that recomputes them all (coupled Schur-Newton on every
block). NorMuon and MuonH orthogonalise in bfloat16 inside their libraries, which is very slow
on a CPU without bfloat16 matrix units (test_perf_optim.py says the same of Muon): one timed
step each.
"""

from __future__ import annotations

import pytest
import torch

from bench.data.corpus import load_corpus
from bench.models.gpt import GPT
from tests.perf.test_perf_optim import FULL, _built
from tests.perf.test_perf_riemannian import SMALL, side_by_side

pytestmark = pytest.mark.perf
LORA = ("adapter=lora", "adapter.r=8")
CHEAP, ONE = {"warmup": 1, "steps": 2}, {"warmup": 1, "steps": 1}  # side_by_side's

# label -> (overrides, adapter, timing, whether the optimizer step must cost more than AdamW's:
# asserted only where the extra work is matrix products, not elementwise, so noise cannot flip it)
CASES = {
    "soap": (["optimizer=soap"], FULL, CHEAP, True),
    "shampoo (between inverse-root computations)": (
        ["optimizer=shampoo", "optimizer.start_preconditioning_step=1"], FULL, CHEAP, True),
    "shampoo (a step computing every inverse root)": (
        ["optimizer=shampoo", "optimizer.start_preconditioning_step=1",
         "optimizer.preconditioning_compute_steps=1"], FULL, ONE, True),
    "ademamix": (["optimizer=ademamix"], FULL, CHEAP, False),
    "mars": (["optimizer=mars"], FULL, CHEAP, False),
    "schedule_free_adamw": (["optimizer=schedule_free_adamw"], FULL, CHEAP, False),
    "normuon": (["optimizer=normuon"], FULL, ONE, True),
    "adamh": (["optimizer=adamh"], FULL, CHEAP, False),
    "muonh": (["optimizer=muonh"], FULL, ONE, True),
    "lora_rite (LoRA r=8 on q, k, v, o)": (["optimizer=lora_rite"], LORA, CHEAP, False),
}


@pytest.mark.parametrize("label", CASES)
def test_step_vs_adamw(label, perf_table):
    overrides, adapter, timing, costs_more = CASES[label]
    torch.manual_seed(0)
    base = GPT(SMALL)
    runs = {"adamw": _built(base, ["optimizer=adamw"], adapter),
            "other": _built(base, overrides, adapter)}
    best = side_by_side(runs, load_corpus(domain="stdlib_core").train, **timing)
    (total_e, step_e), (total_o, step_o) = best["adamw"], best["other"]
    ratio, opt_ratio = total_o / total_e, step_o / step_e
    print(f"\n[perf] {label} (gpt_small): training step {ratio:.3f}x AdamW's, optimizer step "
          f"{opt_ratio:.2f}x ({step_o * 1e3:.1f} vs {step_e * 1e3:.1f} ms)")
    perf_table(f"{label}: training step / AdamW's", f"{ratio:.3f}", "(reported)", True,
               f"AdamW {total_e * 1e3:.0f} ms", asserted=False)
    if costs_more:
        perf_table(f"{label}: optimizer step / AdamW's", f"{opt_ratio:.2f}", "> 1",
                   opt_ratio > 1, f"AdamW {step_e * 1e3:.1f} ms")
        assert opt_ratio > 1
