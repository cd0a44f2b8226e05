"""LoRA options against PEFT 0.21.2 on identical weights: PiSSA and OLoRA inits, rsLoRA, DoRA;
each trains, names its own method, and bad combinations stop in validate."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import yaml
from omegaconf import OmegaConf

from bench.adapters import build_adapter
from bench.adapters.dora import DoRALinear
from bench.adapters.lora import LoRALinear
from bench.config import AdapterConfig, ConfigError, validate
from bench.models.gpt import GPT, GPTConfig
from bench.run import run
from bench.tracking.identity import config_digest, method_name, run_id
from tests.conftest import compose, config_error, read_jsonl, run_dirs

peft = pytest.importorskip("peft")
from peft.tuners.lora import Linear as PeftLinear  # noqa: E402

R, ALPHA = 3, 6.0
SHAPES = [(12, 10), (10, 14)]  # (in, out): wide and tall W0 (out x in)


def _linear(in_f, out_f, seed=0, bias=True):
    torch.manual_seed(seed)
    return torch.nn.Linear(in_f, out_f, bias=bias)


def _pair(linear, init="default", rslora=False, dora=False, dropout=0.0):
    """(ours, PEFT's) around copies of one Linear; default init: PEFT's A, B set to ours."""
    cls = DoRALinear if dora else LoRALinear
    ours = cls(copy.deepcopy(linear), R, ALPHA, dropout, init, rslora)
    config = peft.LoraConfig(
        r=R, lora_alpha=ALPHA, lora_dropout=dropout, use_rslora=rslora, use_dora=dora,
        init_lora_weights=True if init == "default" else init,
    )
    theirs = PeftLinear(copy.deepcopy(linear), "default", config=config, r=R, lora_alpha=ALPHA)
    if init == "default":
        with torch.no_grad():
            theirs.lora_A["default"].weight.copy_(ours.lora_A)
    return ours, theirs


def _factors(theirs):
    return theirs.lora_A["default"].weight, theirs.lora_B["default"].weight


@pytest.mark.parametrize("rslora", [False, True])
@pytest.mark.parametrize("init", ["pissa", "olora"])
@pytest.mark.parametrize(("in_f", "out_f"), SHAPES)
def test_pissa_and_olora_give_peft_factors_and_base_weight(in_f, out_f, init, rslora):
    ours, theirs = _pair(_linear(in_f, out_f), init, rslora)
    A, B = _factors(theirs)
    assert ours.scaling == theirs.scaling["default"]
    assert torch.equal(ours.lora_A, A) and torch.equal(ours.lora_B, B)
    assert torch.equal(ours.base.weight, theirs.base_layer.weight)


@pytest.mark.parametrize(("in_f", "out_f"), SHAPES)
def test_pissa_is_exactly_balanced_and_takes_the_top_singular_part(in_f, out_f):
    linear = _linear(in_f, out_f)
    W0 = linear.weight.detach().clone()
    layer = LoRALinear(linear, R, ALPHA, init="pissa")
    A, B, s = layer.lora_A.detach(), layer.lora_B.detach(), layer.scaling
    S = torch.linalg.svdvals(W0.double())
    torch.testing.assert_close(A @ A.T, B.T @ B, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(torch.diag(A @ A.T).double(), S[:R] / s, rtol=1e-5, atol=1e-6)
    # the residual keeps W0's other singular values: W0 - s B A = its best rank-r error
    residual = torch.linalg.svdvals(layer.base.weight.detach().double())
    torch.testing.assert_close(residual[: len(S) - R], S[R:], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(layer.base.weight + s * B @ A, W0, rtol=1e-5, atol=1e-6)


def test_olora_is_maximally_unbalanced_orthonormal_b():
    layer = LoRALinear(_linear(12, 10), R, ALPHA, init="olora")
    A, B = layer.lora_A.detach(), layer.lora_B.detach()
    torch.testing.assert_close(B.T @ B, torch.eye(R), rtol=1e-5, atol=1e-6)
    assert torch.allclose(A, A.triu())  # R's first rows: upper triangular
    assert (A @ A.T - B.T @ B).norm() > 0.1 * (A @ A.T).norm()


@pytest.mark.parametrize("rslora", [False, True])
def test_rslora_scale_and_forward_match_peft(rslora):
    ours, theirs = _pair(_linear(12, 10), rslora=rslora)
    assert ours.scaling == pytest.approx(ALPHA / (R**0.5 if rslora else R))
    with torch.no_grad():
        B = torch.randn_like(ours.lora_B)
        ours.lora_B.copy_(B)
        theirs.lora_B["default"].weight.copy_(B)
    x = torch.randn(5, 12)
    assert torch.equal(ours(x), theirs(x))


def _dora_pair(in_f, out_f, dropout=0.0, init="default", bias=True):
    ours, theirs = _pair(_linear(in_f, out_f, bias=bias), init, dora=True, dropout=dropout)
    assert torch.equal(ours.lora_magnitude, theirs.lora_magnitude_vector["default"].weight)
    with torch.no_grad():  # off the init: B random, magnitude not the norm
        torch.manual_seed(5)
        B, m = torch.randn_like(ours.lora_B), torch.rand(out_f) + 0.5
        for b, mag in ((ours.lora_B, ours.lora_magnitude),
                       (_factors(theirs)[1], theirs.lora_magnitude_vector["default"].weight)):
            b.copy_(B)
            mag.copy_(m)
    return ours, theirs


@pytest.mark.parametrize("dropout", [0.0, 0.3])
@pytest.mark.parametrize(("in_f", "out_f"), SHAPES)
def test_dora_forward_gradients_and_merge_match_peft(in_f, out_f, dropout):
    ours, theirs = _dora_pair(in_f, out_f, dropout)
    x = torch.randn(4, 5, in_f)
    torch.manual_seed(1)  # the same dropout mask on both sides
    y_ours = ours(x)
    torch.manual_seed(1)
    y_theirs = theirs(x)
    torch.testing.assert_close(y_ours, y_theirs, rtol=1e-6, atol=1e-6)
    g = torch.randn_like(y_ours)
    (y_ours * g).sum().backward()
    (y_theirs * g).sum().backward()
    A, B = _factors(theirs)
    for mine, peft_param in ((ours.lora_A, A), (ours.lora_B, B),
                             (ours.lora_magnitude, theirs.lora_magnitude_vector["default"].weight)):
        torch.testing.assert_close(mine.grad, peft_param.grad, rtol=1e-6, atol=1e-6)
    ours.eval(), theirs.eval()
    before = ours(x).detach()
    ours.merge()
    theirs.merge()
    torch.testing.assert_close(ours.base.weight, theirs.base_layer.weight, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(ours(x), before, rtol=1e-5, atol=1e-5)  # same function merged
    W0 = _linear(in_f, out_f).weight
    ours.unmerge()
    torch.testing.assert_close(ours.base.weight, W0, rtol=1e-5, atol=1e-6)


def test_dora_norm_is_a_constant_in_backpropagation():
    """With n = ||W0 + s B A||_row detached, d loss / dB only flows through (m/n) s B A x:
    the gradient of sum(y) w.r.t. B is s (m/n) 1 (A x)^T summed over the batch."""
    ours, _ = _dora_pair(12, 10, bias=False)
    x = torch.randn(7, 12)
    ours(x).sum().backward()
    with torch.no_grad():
        n = torch.linalg.norm(ours.base.weight + ours.scaling * ours.lora_B @ ours.lora_A, dim=1)
        expected = ours.scaling * (ours.lora_magnitude / n)[:, None] * (
            x @ ours.lora_A.T).sum(0)[None, :]
    torch.testing.assert_close(ours.lora_B.grad, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("init", ["pissa", "olora"])
def test_dora_with_an_init_matches_peft(init):
    ours, theirs = _pair(_linear(12, 10), init, dora=True)
    assert torch.equal(ours.base.weight, theirs.base_layer.weight)
    torch.testing.assert_close(ours.lora_magnitude, theirs.lora_magnitude_vector["default"].weight,
                               rtol=1e-6, atol=1e-6)
    x = torch.randn(5, 12)
    torch.testing.assert_close(ours(x), theirs(x), rtol=1e-6, atol=1e-6)


SMALL = GPTConfig(d_model=32, n_layer=2, n_head=2, seq_len=16, tie_embeddings=False)


def _gpt():
    torch.manual_seed(0)
    return GPT(SMALL)


def _adapter(**kw):
    return build_adapter(OmegaConf.structured(AdapterConfig(**kw)))


@pytest.mark.parametrize("name", ["lora", "balora", "dora"])
@pytest.mark.parametrize("init", ["pissa", "olora"])
def test_inits_keep_the_model_function_and_rewrite_the_base(name, init):
    x = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(1))
    base = _gpt()
    ref = base(x)
    adapter = _adapter(name=name, init=init, r=4, target_modules=["q", "v", "up", "lm_head"])
    model = adapter.apply(_gpt())
    torch.testing.assert_close(model(x), ref, rtol=1e-4, atol=1e-4)
    layer = adapter.layers()[0]
    assert layer.lora_B.abs().max() > 0  # B A starts off zero ...
    assert not torch.equal(layer.base.weight, base.blocks[0].attn.q.weight)  # ... from the base


def test_an_init_refuses_a_tied_weight():
    model = GPT(GPTConfig(d_model=32, n_layer=1, n_head=2, seq_len=16))  # lm_head tied to tok_emb
    with pytest.raises(ConfigError, match=r"adapter.init=pissa rewrites the base weight of "
                       r"lm_head, which is tied to another module"):
        _adapter(name="lora", init="pissa", target_modules=["lm_head"]).apply(model)


@pytest.mark.parametrize("init", ["pissa", "olora"])
def test_balora_projects_an_init_onto_the_balanced_manifold(init):
    adapter = _adapter(name="balora", init=init, r=4, alpha=8.0)
    model = adapter.apply(_gpt())
    gaps = [(l.lora_A @ l.lora_A.T - l.lora_B.T @ l.lora_B).norm() for l in adapter.layers()]
    if init == "pissa":  # balanced from the start
        assert max(gaps) < 1e-4
    else:  # OLoRA: far from it
        assert min(gaps) > 0.1
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    x = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(1))
    _, loss = model(x, x)
    loss.backward()
    opt.step()
    products = [(l.lora_B @ l.lora_A).detach().clone() for l in adapter.layers()]
    adapter.after_step(1, opt)
    for layer, prod in zip(adapter.layers(), products):
        A, B = layer.lora_A.detach(), layer.lora_B.detach()
        torch.testing.assert_close(B @ A, prod, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(A @ A.T, B.T @ B, rtol=1e-4, atol=1e-5)


OPTIONS = [
    (["adapter=lora", "adapter.init=pissa"], "lora+pissa/adamw"),
    (["adapter=lora", "adapter.init=olora"], "lora+olora/adamw"),
    (["adapter=lora", "adapter.rslora=true"], "lora+rslora/adamw"),
    (["adapter=dora"], "dora/adamw"),
    (["adapter=balora", "adapter.init=olora", "adapter.rslora=true"], "balora+olora+rslora/adamw"),
]


@pytest.mark.parametrize(("overrides", "method"), OPTIONS)
def test_each_option_trains_and_is_its_own_method(tmp_path, tiny, overrides, method):
    """From scratch the base is random and frozen: the adapters on attention and MLP take the
    eval loss (the same held-out batches at every eval) from ~5.48 to ~5.41 in 24 steps."""
    summary = run(compose([*tiny, *overrides, "adapter.r=2", "trainer.max_steps=24",
                           "optimizer.lr=1e-2", "adapter.target_modules=[q,k,v,o,up,down]"]))
    assert summary["status"] == "completed"
    (d,) = run_dirs(tmp_path / "runs")
    assert yaml.safe_load((d / "config.yaml").read_text())["meta"]["method"] == method
    losses = [r["eval/loss"] for r in read_jsonl(d / "metrics.jsonl") if "eval/loss" in r]
    assert losses[-1] < losses[0] - 0.03


def test_defaults_keep_existing_method_names_and_run_ids():
    for group, method in (("lora", "lora/adamw"), ("balora", "balora/adamw"),
                          ("full", "full/adamw")):
        cfg = compose([f"adapter={group}"])
        assert method_name(cfg) == method
        assert run_id(compose([f"adapter={group}", "adapter.init=default",
                               "adapter.rslora=false"])) == run_id(cfg)
        old = OmegaConf.to_container(cfg)  # a record written before the keys existed
        del old["adapter"]["init"], old["adapter"]["rslora"]
        assert config_digest(OmegaConf.create(old)) == config_digest(cfg)
    assert run_id(compose(["adapter=lora", "adapter.init=pissa"])).startswith("lora_pissa-adamw-")


def test_a_baseline_may_name_an_option_method():
    validate(compose(["metrics.target_loss=from_baseline", "metrics.baseline=lora+pissa/adamw"]))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["adapter=full", "adapter.init=pissa"],
         "adapter.init='pissa' is a key of adapter=lora|balora|dora, not of adapter=full: with "
         "adapter=full, allowed values: 'default' (its default)"),
        (["adapter=full", "adapter.init=olora"],
         "adapter.init='olora' is a key of adapter=lora|balora|dora, not of adapter=full: with "
         "adapter=full, allowed values: 'default' (its default)"),
        (["adapter=full", "adapter.rslora=true"],
         "adapter.rslora=True is a key of adapter=lora|balora|dora, not of adapter=full: with "
         "adapter=full, allowed values: False (its default)"),
        (["adapter=lora", "adapter.init=loftq"],
         "adapter.init='loftq' is not allowed; allowed values: default, pissa, olora"),
        (["adapter=lora_riemannian", "adapter.init=pissa"],
         "adapter.init='pissa' with adapter.geometry='fixed_rank_embedded': allowed "
         "adapter.init=default (a Riemannian LoRA starts at its own random point)"),
        (["adapter=dora", "adapter.alignment=sign"],
         "adapter.alignment='sign' is a key of adapter=balora, not of adapter=dora: with "
         "adapter=dora, allowed values: 'procrustes' (its default)"),
        (["adapter=dora", "adapter.project_every=5"],
         "adapter.project_every=5 is a key of adapter=balora, not of adapter=dora: with "
         "adapter=dora, allowed values: 1 (its default)"),
        (["adapter=dora", "adapter.moments=transport"],
         "adapter.moments='transport' is a key of adapter=balora, not of adapter=dora: with "
         "adapter=dora, allowed values: 'keep' (its default)"),
        (["adapter=dora", "adapter.geometry=fixed_rank_quotient",
          "optimizer=riemannian_adam"],
         "adapter.geometry='fixed_rank_quotient' is a key of adapter=lora|balora, not of "
         "adapter=dora: with adapter=dora, allowed values: 'euclidean' (its default)"),
        (["task=toy", "adapter=lora", "adapter.init=pissa"],
         "adapter.init='pissa' applies to task=lm only (got 'toy')"),
    ],
)
def test_bad_lora_options_stop_in_validate(overrides, message):
    with pytest.raises(ConfigError) as err:
        validate(compose(overrides))
    assert str(err.value) == message


def test_rslora_scales_a_riemannian_lora_too():
    cfg = compose(["adapter=lora_riemannian", "adapter.rslora=true", "adapter.r=4",
                   "optimizer=riemannian_adam"])
    validate(cfg)
    assert method_name(cfg) == "lora+rslora/riemannian_adam/lora:fixed_rank_embedded"
    adapter = build_adapter(cfg.adapter)
    adapter.apply(_gpt())
    assert {layer.scaling for _, layer in adapter.targets} == {cfg.adapter.alpha / 2}


@pytest.mark.parametrize("rslora", [False, True])
def test_adapter_scale_fixes_alpha_over_r_across_ranks(rslora):
    """adapter.scale = alpha / r: alpha is scale * r, so every rank gets the same s (rsLoRA:
    s = scale * sqrt(r)); the layers' scaling is what PEFT computes from that alpha."""
    from bench.models.gpt import GPT, GPTConfig

    for r in (4, 16):
        cfg = compose(["adapter=lora", f"adapter.r={r}", "adapter.scale=2",
                       f"adapter.rslora={str(rslora).lower()}"])
        model = build_adapter(cfg.adapter).apply(GPT(GPTConfig(d_model=32, n_layer=1, n_head=2,
                                                               seq_len=16)))
        scalings = [m.scaling for m in model.modules() if hasattr(m, "lora_A")]
        assert len(scalings) == 4  # q, k, v, o
        assert scalings == pytest.approx([2 * r / math.sqrt(r) if rslora else 2.0] * 4)


def test_adapter_scale_and_alpha_together_is_one_line(tmp_path):
    line = config_error([f"out_dir={tmp_path}", "adapter=lora", "adapter.alpha=8",
                         "adapter.scale=2"])
    assert line == ("error: adapter.alpha=8 and adapter.scale=2 are both set: set one "
                    "(alpha = scale * r)")
