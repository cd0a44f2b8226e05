"""Adapters: LoRA keeps the function at init and merges exactly; BaLoRA balances after steps."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from bench.adapters import build_adapter
from bench.config import AdapterConfig, ConfigError
from bench.models.gpt import GPT, GPTConfig
from bench.run import run
from tests.conftest import compose

SMALL = GPTConfig(d_model=32, n_layer=2, n_head=2, seq_len=16)


def _adapter(**kw):
    return build_adapter(OmegaConf.structured(AdapterConfig(**kw)))


def _model(seed=0):
    torch.manual_seed(seed)
    return GPT(SMALL)


def _x():
    return torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(1))


def test_lora_keeps_the_function_at_init_and_merge_is_exact():
    ref = _model()(_x())
    model = _model()
    adapter = _adapter(name="lora", r=4, alpha=8.0)
    model = adapter.apply(model)
    torch.testing.assert_close(model(_x()), ref)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.endswith(("lora_A", "lora_B")) for n in trainable)
    for layer in adapter.layers():
        torch.nn.init.normal_(layer.lora_B)
    before = model(_x())
    adapter.merge()
    torch.testing.assert_close(model(_x()), before, rtol=1e-5, atol=1e-5)


def test_lora_rank_too_large_names_module_and_shape():
    with pytest.raises(
        ConfigError,
        match=r"adapter.r=64 does not fit module blocks.0.attn.q of "
        r"shape 32 x 32: allowed 1 <= r <= 32",
    ):
        _adapter(name="lora", r=64).apply(_model())


def test_target_modules_matching_nothing_lists_the_linear_modules():
    with pytest.raises(
        ConfigError, match="matches no Linear module.*down, k, lm_head, o, q, up, v"
    ):
        _adapter(name="lora", target_modules=["query"]).apply(_model())


def test_full_trains_only_the_targets():
    model = _adapter(name="full", target_modules=["up"]).apply(_model())
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"blocks.0.mlp.up.weight", "blocks.1.mlp.up.weight"}


def _step(model, opt):
    x = _x()
    _, loss = model(x, x)
    opt.zero_grad()
    loss.backward()
    opt.step()


@pytest.mark.parametrize("alignment", ["procrustes", "sign", "none"])
def test_balora_balances_after_each_step_and_keeps_the_product(alignment):
    adapter = _adapter(name="balora", r=4, alpha=8.0, alignment=alignment)
    model = adapter.apply(_model())
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for step in (1, 2, 3):
        _step(model, opt)
        products = [(layer.lora_B @ layer.lora_A).detach().clone() for layer in adapter.layers()]
        adapter.after_step(step, opt)
        for layer, prod in zip(adapter.layers(), products):
            A, B = layer.lora_A.detach(), layer.lora_B.detach()
            torch.testing.assert_close(B @ A, prod, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(A @ A.T, B.T @ B, rtol=1e-4, atol=1e-6)
    assert adapter.metrics()["balora/gap"] > 0  # the gap measured before the projection


def test_balora_does_not_project_before_start_step():
    adapter = _adapter(name="balora", r=4, start_step=3, project_every=2)
    model = adapter.apply(_model())
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    for step in (1, 2):
        _step(model, opt)
        A = adapter.layers()[0].lora_A.detach().clone()
        adapter.after_step(step, opt)
        assert torch.equal(adapter.layers()[0].lora_A, A)
    _step(model, opt)
    adapter.after_step(3, opt)
    layer = adapter.layers()[0]
    torch.testing.assert_close(
        layer.lora_A @ layer.lora_A.T, layer.lora_B.T @ layer.lora_B, rtol=1e-4, atol=1e-6
    )


def test_moment_transport_rotates_adam_first_moments_with_the_frame():
    adapter = _adapter(name="balora", r=4, alignment="none", moments="transport")
    model = adapter.apply(_model())
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    _step(model, opt)
    adapter.after_step(1, opt)  # first projection: frames jump from LoRA's init
    _step(model, opt)
    layer = adapter.layers()[0]
    m_before = opt.state[layer.lora_B]["exp_avg"].clone()
    norm = m_before.norm()
    adapter.after_step(2, opt)
    m_after = opt.state[layer.lora_B]["exp_avg"]
    torch.testing.assert_close(m_after.norm(), norm, rtol=1e-5, atol=1e-7)  # a rotation


def test_lora_and_balora_runs_log_the_gap(tmp_path, tiny):
    for name in ("lora", "balora"):
        summary = run(compose([*tiny, f"adapter={name}", "adapter.r=2", f"sweep={name}"]))
        assert summary["status"] == "completed"
        rows = (tmp_path / "runs" / name).glob("*/metrics.jsonl")
        text = next(rows).read_text()
        assert '"balora/gap"' in text
