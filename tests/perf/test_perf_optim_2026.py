"""Benchmark (make perf): each optimizer of issue 29 against AdamW on gpt_small (6 layers,
d_model 256, seq_len 256), side by side in one process (tests/perf/test_perf_optim.py's
_side_by_side: steps interleaved, best of the rounds): the optimizer step's and the training
step's ratio to AdamW's.

Every parameter trains (from scratch); LoRA-RITE: LoRA r = 8 on q, k, v, o against AdamW on the
same factors. The first step of each round is untimed (state allocation, SOAP's first
eigendecompositions). Shampoo is timed twice: between inverse-root computations (the steps its
YAML runs 99 of every 100) and on a step that recomputes them all (coupled Schur-Newton on every
block). NorMuon and MuonH orthogonalise in bfloat16 inside their libraries, which is very slow
on a CPU without bfloat16 matrix units (test_perf_optim.py says the same of Muon): one timed
step each.
"""

from __future__ import annotations

import pytest
import torch

from bench.models.gpt import GPT
from tests.perf.test_perf_optim import FULL, _side_by_side
from tests.perf.test_perf_riemannian import SMALL

pytestmark = pytest.mark.perf
LORA = ("adapter=lora", "adapter.r=8")
CHEAP, ONE = {"rounds": 2, "steps": (1, 2)}, {"rounds": 1, "steps": (1, 1)}

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
def test_step_vs_adamw(label):
    overrides, adapter, timing, costs_more = CASES[label]
    torch.manual_seed(0)
    _, opt_ratio = _side_by_side(f"{label} (gpt_small)", GPT(SMALL), overrides, adapter=adapter,
                                 **timing)
    if costs_more:
        assert opt_ratio > 1
