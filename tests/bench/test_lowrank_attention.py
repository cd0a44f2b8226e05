"""Low-rank attention: every design point keeps (or matches) the model at init and trains."""

from __future__ import annotations

import copy
import json

import geoopt
import pytest
import torch
import yaml

from bench.config import ConfigError, validate
from bench.manifolds import FIXED_RANK, GEOMETRIES, PARTIAL_ISOMETRY
from bench.models import build_model
from bench.models.gpt import GPT, GPTConfig
from bench.models.lowrank_attention import to_manifold_attention
from bench.run import run
from tests.conftest import compose, read_jsonl, run_dirs

CFG = GPTConfig(d_model=32, n_layer=2, n_head=4, n_kv_head=2, seq_len=16)


def _base():
    torch.manual_seed(0)
    return GPT(CFG)


def _x():
    return torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(3))


@pytest.mark.parametrize("block", [False, True])
@pytest.mark.parametrize("geometry", FIXED_RANK)
def test_fixed_rank_attention_keeps_the_function_at_init(geometry, block):
    base = _base()
    model = to_manifold_attention(copy.deepcopy(base), geometry, block)
    torch.testing.assert_close(model(_x()), base(_x()), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("block", [False, True])
@pytest.mark.parametrize("geometry", PARTIAL_ISOMETRY)
def test_partial_isometry_starts_from_the_polar_factor_with_matching_norm(geometry, block):
    base = _base()
    attn = to_manifold_attention(copy.deepcopy(base), geometry, block).blocks[0].attn
    left, right = attn.qk_manifold.factors(attn.qk.detach())
    eye = torch.eye(CFG.head_dim)
    torch.testing.assert_close(left.mT @ left, eye.expand_as(left.mT @ left), atol=1e-5, rtol=0)
    torch.testing.assert_close(right.mT @ right, eye.expand_as(right.mT @ right), atol=1e-5,
                               rtol=0)
    # s ||U V^T||_F = ||W_Q,h^T W_K,h||_F per head (per group for block): s sqrt(D) = ||Sigma||
    wq = base.blocks[0].attn.q.weight.detach().view(4, 8, 32)
    wk = base.blocks[0].attn.k.weight.detach().view(2, 8, 32)
    dense = torch.stack([wq[h].T @ wk[h // 2] for h in range(4)])  # (H, C, C)
    if block:
        dense = dense.view(2, 2 * 32, 32)
    expected = torch.linalg.matrix_norm(dense) / CFG.head_dim**0.5
    torch.testing.assert_close(attn.qk_scale.detach(), expected, rtol=1e-4, atol=1e-6)


def test_block_variant_has_one_point_per_kv_group():
    per_head = to_manifold_attention(_base(), "fixed_rank_embedded", False).blocks[0].attn
    per_group = to_manifold_attention(_base(), "fixed_rank_embedded", True).blocks[0].attn
    assert per_head.qk.shape[0] == 4 and per_group.qk.shape[0] == 2
    assert isinstance(per_group.qk, geoopt.ManifoldParameter)


TINY_GQA = ["model.init=scratch", "model.d_model=32", "model.n_layer=1", "model.n_head=4",
            "model.n_kv_head=2", "model.seq_len=32", "trainer.batch_size=8",
            "trainer.max_steps=40", "trainer.eval_every=20", "trainer.log_every=10",
            "trainer.progress=false", "data.eval_batches=2", "logger=none",
            "adapter.target_modules=[all]", "optimizer=riemannian_normalized",
            "optimizer.lr=3e-3", "optimizer.manifold_lr=3e-2", "trainer.threads=1"]


@pytest.mark.parametrize("block", [False, True])
@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_every_design_point_trains(tmp_path, geometry, block):
    summary = run(compose([*TINY_GQA, f"model.attention.geometry={geometry}",
                           f"model.attention.block={str(block).lower()}",
                           f"out_dir={tmp_path}"]))
    assert summary["status"] == "completed"
    (d,) = run_dirs(tmp_path)
    rows = [r for r in read_jsonl(d / "metrics.jsonl") if "eval/loss" in r]
    assert rows[-1]["eval/loss"] < rows[0]["eval/loss"] - 0.3
    config = (d / "config.yaml").read_text()
    assert f"geometry: {geometry}" in config


def test_orthographic_retraction_trains_and_is_its_own_method(tmp_path):
    """model.attention.retraction reaches the manifolds, trains like the other design points
    and names its own method (so the analysis never merges it with the SVD retraction)."""
    summary = run(compose([*TINY_GQA, "model.attention.geometry=fixed_rank_embedded",
                           "model.attention.retraction=orthographic", f"out_dir={tmp_path}"]))
    assert summary["status"] == "completed"
    (d,) = run_dirs(tmp_path)
    rows = [r for r in read_jsonl(d / "metrics.jsonl") if "eval/loss" in r]
    assert rows[-1]["eval/loss"] < rows[0]["eval/loss"] - 0.3
    config = yaml.safe_load((d / "config.yaml").read_text())
    assert config["meta"]["method"].endswith("/fixed_rank_embedded+orthographic")
    model = build_model(compose(["model.attention.geometry=fixed_rank_embedded",
                                 "model.attention.retraction=orthographic",
                                 "model.init=scratch"]).model)
    assert {m.retraction for m in model.modules() if hasattr(m, "retraction")} == {
        "orthographic"}


def test_riemannian_optimizer_without_manifold_parameters_is_rejected():
    with pytest.raises(ConfigError, match="needs manifold parameters"):
        validate(compose(["optimizer=riemannian_adam"]))


def test_unknown_geometry_lists_the_allowed_ones():
    with pytest.raises(ConfigError, match="fixed_rank_quotient, partial_isometry_embedded"):
        validate(compose(["model.attention.geometry=stiefel"]))


def test_riemannian_lora_keeps_the_function_at_init(tmp_path):
    from omegaconf import OmegaConf

    from bench.adapters import build_adapter
    from bench.config import AdapterConfig

    base = _base()
    adapter = build_adapter(OmegaConf.structured(
        AdapterConfig(name="lora", r=4, geometry="fixed_rank_embedded", init_scale=1e-2)))
    model = adapter.apply(copy.deepcopy(base))
    torch.testing.assert_close(model(_x()), base(_x()), rtol=1e-4, atol=1e-5)
    points = [p for p in model.parameters() if isinstance(p, geoopt.ManifoldParameter)]
    assert len(points) == 2 * 4 and all(p.requires_grad for p in points)


def test_riemannian_lora_trains_with_riemannian_adam(tmp_path):
    summary = run(compose([*TINY_GQA[:-5], "adapter=lora", "adapter.r=4",
                           "adapter.geometry=fixed_rank_embedded", "optimizer=riemannian_adam",
                           "optimizer.manifold_lr=1e-2", f"out_dir={tmp_path}"]))
    assert summary["status"] == "completed"
    (d,) = run_dirs(tmp_path)
    rows = [r for r in read_jsonl(d / "metrics.jsonl") if "eval/loss" in r]
    assert rows[-1]["eval/loss"] < rows[0]["eval/loss"]
    # packed [U; V; S] per adapted Linear: (out + in + r) x r; k and v are 16 x 32 under GQA
    packed = sum((out + 32 + 4) * 4 for out in (32, 16, 16, 32))
    assert json.loads((d / "summary.json").read_text())["trainable_params"] == packed
