"""Muon's Newton-Schulz iteration batched per shape and in the device's fast dtype (issue 32):
the step against torch.optim.Muon (an independent computation: one matrix at a time, in
bfloat16) to the tolerance the dtype allows, the float32 iteration against float64, and the
dtype in the run record."""

from __future__ import annotations

import pytest
import torch
from torch.optim._muon import DEFAULT_A, DEFAULT_B, DEFAULT_C, _zeropower_via_newtonschulz

from bench.models.gpt import GPT, GPTConfig
from bench.optim import build_optimizer
from bench.optim.muon import MuonWithAdamW, newton_schulz, newton_schulz_dtype
from tests.conftest import TINY, compose

COEFFICIENTS = (DEFAULT_A, DEFAULT_B, DEFAULT_C)
BF16_EPS = 2.0**-8  # bfloat16's unit roundoff: 8 significand bits
# torch's bfloat16 iteration is the exact iteration to about 2% (relative Frobenius error of its
# output, measured: 1.2% at 256 x 1024 to 1.9% at 32 x 32; float32's is 1e-6), so Muon steps in
# either dtype agree with torch's to that
NS_TOLERANCE = 0.03


def _model(seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(d_model=32, n_layer=2, n_head=2, seq_len=16))


def _steps(model, opt, steps=3):
    """`steps` steps with fixed gradients (the same for every model of one seed, whatever its
    parameters), so that two optimizers are compared step for step, not along trajectories."""
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        for p in model.parameters():
            p.grad = 0.01 * torch.randn(p.shape, generator=g)
        opt.step()


@pytest.mark.parametrize("shape", [(16, 24), (24, 16), (32, 32)])
def test_bfloat16_iteration_is_torchs_to_bfloat16_rounding(shape):
    """A stack of matrices iterated in one batched call gives torch's per-matrix bfloat16
    result to bfloat16's rounding (the products' summation order may differ)."""
    g = torch.randn(5, *shape, generator=torch.Generator().manual_seed(0))
    wide = g if shape[0] <= shape[1] else g.mT
    ours = newton_schulz(wide, torch.bfloat16, COEFFICIENTS, 5, 1e-7)
    ours = ours if shape[0] <= shape[1] else ours.mT
    theirs = torch.stack([_zeropower_via_newtonschulz(m, COEFFICIENTS, 5, 1e-7) for m in g])
    assert ours.dtype == torch.bfloat16
    torch.testing.assert_close(ours.float(), theirs.float(), rtol=0, atol=4 * BF16_EPS)


def test_float32_iteration_is_the_float64_iteration():
    """In float32 the iteration is the exact polynomial map to float32's rounding (checked
    against the same iteration in float64); torch's bfloat16 iteration is it to NS_TOLERANCE."""
    g = torch.randn(4, 24, 40, generator=torch.Generator().manual_seed(1))
    ours = newton_schulz(g, torch.float32, COEFFICIENTS, 5, 1e-7)
    exact = newton_schulz(g.double(), torch.float64, COEFFICIENTS, 5, 1e-7)
    assert (torch.linalg.matrix_norm(ours.double() - exact)
            <= 1e-5 * torch.linalg.matrix_norm(exact)).all()
    theirs = torch.stack([_zeropower_via_newtonschulz(m, COEFFICIENTS, 5, 1e-7) for m in g])
    error = torch.linalg.matrix_norm(theirs.double() - exact) / torch.linalg.matrix_norm(exact)
    assert (error > 1e-3).all() and (error < NS_TOLERANCE).all()  # bfloat16's, not float32's


@pytest.mark.parametrize("ns_dtype", [torch.bfloat16, torch.float32])
def test_muon_step_is_torchs_to_the_dtypes_tolerance(ns_dtype):
    """Three steps of the built optimizer (Muon batched per shape, AdamW on the rest) against
    torch.optim.Muon + AdamW built by hand, with the same gradients: each Muon matrix's
    displacement to NS_TOLERANCE (bfloat16's error of the iteration; in bfloat16 on this CPU
    it is bitwise), AdamW's parameters bitwise."""
    cfg = compose(["optimizer=muon", "adapter=full", "adapter.target_modules=[all]",
                   "optimizer.adjust_lr=original", "optimizer.weight_decay=0.01",
                   "optimizer.adamw_lr=0.002", "optimizer.lr=0.02"]).optimizer
    ours, ref = _model(), _model()
    opt = build_optimizer(ours, cfg)
    assert isinstance(opt, MuonWithAdamW)
    opt.ns_dtype = ns_dtype
    matrices = [p for n, p in ref.named_parameters() if n.startswith("blocks") and p.ndim == 2]
    rest = [p for n, p in ref.named_parameters() if not (n.startswith("blocks") and p.ndim == 2)]
    ref_muon = torch.optim.Muon(matrices, lr=0.02, weight_decay=0.01, momentum=0.95,
                                adjust_lr_fn="original")
    ref_adamw = torch.optim.AdamW([{"params": [p for p in rest if p.ndim == 2],
                                    "weight_decay": 0.01},
                                   {"params": [p for p in rest if p.ndim < 2],
                                    "weight_decay": 0.0}], lr=0.002)

    class Both:
        def step(self):
            ref_muon.step(), ref_adamw.step()

    _steps(ours, opt)
    _steps(ref, Both())
    for (name, a), b, start in zip(ours.named_parameters(), ref.parameters(),
                                   _model().parameters()):
        if name.startswith("blocks") and a.ndim == 2:  # Muon: the displacement, relatively
            moved = torch.linalg.matrix_norm(b - start)
            assert moved > 0.1 * torch.linalg.matrix_norm(start), name  # real steps
            assert torch.linalg.matrix_norm(a - b) <= NS_TOLERANCE * moved, name
        else:  # AdamW's part is the same computation
            assert torch.equal(a, b), name


def test_the_dtype_is_the_devices_and_in_the_record():
    assert newton_schulz_dtype("cuda") == torch.bfloat16
    assert newton_schulz_dtype("cpu") in (torch.bfloat16, torch.float32)
    from bench.run import prepare

    meta = prepare(compose([*TINY, "optimizer=muon", "adapter=full",
                            "adapter.target_modules=[all]"])).meta
    assert meta["ns_dtype"] == str(newton_schulz_dtype("cpu"))
    assert "ns_dtype" not in prepare(compose([*TINY, "optimizer=adamw"])).meta
