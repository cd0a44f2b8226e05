"""Muon, Riemannian-preconditioned LoRA and LoRA+ (issue 13): which parameters each steps, PEFT's
semantics on identical weights, the quotient geometry's Riemannian gradient, bad input, resume,
and a tiny training run of each."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
import yaml

import bench.train
from bench.adapters import LORA_ADAPTERS, build_adapter
from bench.config import ConfigError, validate
from bench.manifolds import make
from bench.models.gpt import GPT, GPTConfig
from bench.optim import build_optimizer
from bench.optim.base import lora_pairs
from bench.optim.lora_preconditioned import precondition_lora_grads
from bench.optim.loraplus import loraplus_groups
from bench.run import run
from bench.tracking.identity import method_name, run_id
from tests.conftest import ROOT, compose, read_jsonl, run_dirs

LORA = ["adapter=lora", "adapter.r=4", "adapter.alpha=8"]


def _gpt(seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(d_model=32, n_layer=2, n_head=2, seq_len=16))


def _batch(seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(seed))


def _loss(model, x):
    out = model(x, x)
    return out[1]


def _lora_gpt(seed: int = 0, dtype=torch.float32):
    """Our LoRA (r=4, alpha=8) on q, k, v, o of a tiny GPT, with B random (B A != 0)."""
    model = build_adapter(compose(LORA).adapter).apply(_gpt(seed))
    g = torch.Generator().manual_seed(seed + 7)
    with torch.no_grad():
        for _, b in lora_pairs(model):
            b.copy_(torch.randn(b.shape, generator=g) * 0.3)
    return model.to(dtype)


def _peft_twin(ours, seed: int = 0):
    """PEFT's LoRA (same r, alpha, targets) on the same base weights, factors copied from `ours`;
    returns (model, {PEFT parameter name: our parameter name})."""
    peft = pytest.importorskip("peft")
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q", "k", "v", "o"],
                             lora_dropout=0.0)
    theirs = peft.inject_adapter_in_model(config, _gpt(seed)).to(next(ours.parameters()).dtype)
    ours_by_name = dict(ours.named_parameters())
    names = {}
    with torch.no_grad():
        for name, p in theirs.named_parameters():
            mine = (name.replace(".lora_A.default.weight", ".lora_A")
                    .replace(".lora_B.default.weight", ".lora_B")
                    .replace(".base_layer.", ".base."))
            p.copy_(ours_by_name[mine])
            names[name] = mine
    return theirs, names


def _named(model, params) -> list[str]:
    by_id = {id(p): n for n, p in model.named_parameters()}
    return [by_id[id(p)] for p in params]


# ----------------------------------------------------------------------------------- muon
def test_muon_steps_the_block_matrices_and_adamw_the_rest():
    cfg = compose(["optimizer=muon", "adapter=full", "adapter.target_modules=[all]",
                   "optimizer.adamw_lr=0.003"])
    model = _gpt()
    opt = build_optimizer(model, cfg.optimizer)
    muon, adamw = opt.optimizers["muon"], opt.optimizers["adamw"]
    assert type(muon) is torch.optim.Muon and type(adamw) is torch.optim.AdamW
    on_muon = _named(model, muon.param_groups[0]["params"])
    assert on_muon == [f"blocks.{i}.{m}.weight" for i in range(2)
                       for m in ("attn.q", "attn.k", "attn.v", "attn.o", "mlp.up", "mlp.down")]
    on_adamw = [n for g in adamw.param_groups for n in _named(model, g["params"])]
    # the token embedding is also the head (tied); norms are 1-D
    assert sorted(on_adamw) == sorted(["tok_emb.weight", "pos_emb.weight", "norm_f.weight",
                                       *(f"blocks.{i}.norm{j}.weight" for i in range(2)
                                         for j in (1, 2))])
    group = muon.param_groups[0]
    assert (group["lr"], group["weight_decay"], group["momentum"], group["adjust_lr_fn"]) == (
        cfg.optimizer.lr, 0.0, 0.95, "match_rms_adamw")
    assert [g["lr"] for g in adamw.param_groups] == [0.003, 0.003]


def test_muon_on_named_modules_only_leaves_the_other_matrices_to_adamw():
    """optimizer.muon_modules=[q, k, v, o] (riemannian_attention's Muon row): Muon on the
    attention weights, the MLP's matrices with the embeddings and norms on AdamW."""
    cfg = compose(["optimizer=muon", "adapter=full", "adapter.target_modules=[all]",
                   "optimizer.muon_modules=[q,k,v,o]"])
    model = _gpt()
    opt = build_optimizer(model, cfg.optimizer)
    on_muon = _named(model, opt.optimizers["muon"].param_groups[0]["params"])
    assert on_muon == [f"blocks.{i}.attn.{m}.weight" for i in range(2) for m in "qkvo"]
    on_adamw = {n for g in opt.optimizers["adamw"].param_groups for n in _named(model,
                                                                               g["params"])}
    assert {f"blocks.{i}.mlp.{m}.weight" for i in range(2) for m in ("up", "down")} <= on_adamw
    assert len(on_muon) + len(on_adamw) == len(list(model.parameters()))
    cfg = compose(["optimizer=muon", "adapter=full", "adapter.target_modules=[all]",
                   "optimizer.muon_modules=[nothing]"])
    with pytest.raises(ConfigError, match=r"optimizer.muon_modules=\['nothing'\]"):
        build_optimizer(_gpt(), cfg.optimizer)


def test_muon_takes_the_lora_factors_in_a_lora_run():
    model = build_adapter(compose(LORA).adapter).apply(_gpt())
    opt = build_optimizer(model, compose(["optimizer=muon", *LORA]).optimizer)
    assert set(opt.optimizers) == {"muon"}  # nothing else trains
    names = _named(model, opt.optimizers["muon"].param_groups[0]["params"])
    assert names == [n for n, p in model.named_parameters() if p.requires_grad]
    assert all(n.endswith(("lora_A", "lora_B")) for n in names) and len(names) == 16


def test_muon_step_is_torchs_muon_and_adamw_built_by_hand():
    """The same steps as torch.optim.Muon + AdamW constructed independently (bitwise), with the
    Newton-Schulz iteration in torch's dtype (bfloat16; the batched one, MuonWithAdamW, runs in
    ns_dtype: float32 on CPUs without native bfloat16, tests/bench/test_muon_newton_schulz.py)."""
    cfg = compose(["optimizer=muon", "adapter=full", "adapter.target_modules=[all]",
                   "optimizer.adjust_lr=original", "optimizer.weight_decay=0.01",
                   "optimizer.adamw_lr=0.002", "optimizer.lr=0.02"]).optimizer
    ours, ref = _gpt(), _gpt()
    opt = build_optimizer(ours, cfg)
    opt.ns_dtype = torch.bfloat16
    matrices = [p for n, p in ref.named_parameters() if n.startswith("blocks") and p.ndim == 2]
    rest = [p for n, p in ref.named_parameters() if not (n.startswith("blocks") and p.ndim == 2)]
    ref_opts = [
        torch.optim.Muon(matrices, lr=0.02, weight_decay=0.01, momentum=0.95,
                         adjust_lr_fn="original"),
        torch.optim.AdamW([{"params": [p for p in rest if p.ndim == 2], "weight_decay": 0.01},
                           {"params": [p for p in rest if p.ndim < 2], "weight_decay": 0.0}],
                          lr=0.002),
    ]
    for step in range(3):
        for model, step_fn in ((ours, opt.step), (ref, lambda: [o.step() for o in ref_opts])):
            model.zero_grad()
            _loss(model, _batch(step)).backward()
            step_fn()
    for (name, a), b in zip(ours.named_parameters(), ref.parameters()):
        assert torch.equal(a, b), name


def test_muon_newton_schulz_runs_in_bfloat16():
    """The update's singular values are those of torch's bf16 iteration, not float32's: the
    docstring and the YAML say so."""
    from torch.optim._muon import _zeropower_via_newtonschulz

    g = torch.randn(16, 24, generator=torch.Generator().manual_seed(0))
    out = _zeropower_via_newtonschulz(g, (3.4445, -4.775, 2.0315), 5, 1e-7)
    assert out.dtype == torch.bfloat16
    assert "bfloat16" in Path(ROOT / "bench/optim/muon.py").read_text()
    assert "bfloat16" in (ROOT / "conf/optimizer/muon.yaml").read_text()


# ------------------------------------------------------------------ lora_preconditioned
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize(("base", "reg"), [("sgd", 1e-6), ("sgd", 1e-2), ("adamw", 1e-6)])
def test_preconditioned_gradients_and_steps_are_peft_s(base, reg, dtype):
    from peft.optimizers import create_riemannian_optimizer

    ours = _lora_gpt(dtype=dtype)
    theirs, _ = _peft_twin(ours)
    cfg = compose(["optimizer=lora_preconditioned", *LORA, f"optimizer.base={base}",
                   f"optimizer.reg={reg}", "optimizer.lr=0.01"]).optimizer
    opt = build_optimizer(ours, cfg)
    cls, kwargs = ((torch.optim.SGD, {"momentum": 0.9}) if base == "sgd"
                   else (torch.optim.AdamW, {"weight_decay": 0.0}))
    peft_opt = create_riemannian_optimizer(theirs, cls, lr=0.01, reg=reg, **kwargs)
    tol = {"atol": 1e-12, "rtol": 1e-10} if dtype == torch.float64 else {"atol": 1e-6,
                                                                        "rtol": 1e-4}
    for step in range(2):
        for model, o in ((ours, opt), (theirs, peft_opt)):
            o.zero_grad()
            _loss(model, _batch(step)).backward()
            o.step()  # both leave the preconditioned gradient in .grad
        mine = [p for p in ours.parameters() if p.requires_grad]
        peft_params = [p for p in theirs.parameters() if p.requires_grad]
        assert len(mine) == len(peft_params) == 16
        for a, b in zip(mine, peft_params):
            torch.testing.assert_close(a.grad, b.grad, **tol)
            torch.testing.assert_close(a, b, **tol)


def test_preconditioning_at_reg_0_is_the_quotient_riemannian_gradient():
    """egrad2rgrad of fixed_rank_quotient at (L, R) = (B, A^T) maps the factor gradients
    (g_B, g_A^T) to (g_B (A A^T)^-1, ((B^T B)^-1 g_A)^T): the preconditioned pair at reg = 0."""
    g = torch.Generator().manual_seed(3)
    out_f, in_f, r, s = 12, 9, 3, 2.0
    a = torch.nn.Parameter(torch.randn(r, in_f, generator=g, dtype=torch.float64))
    b = torch.nn.Parameter(torch.randn(out_f, r, generator=g, dtype=torch.float64))
    big_g = torch.randn(out_f, in_f, generator=g, dtype=torch.float64)  # dL/dW, W = W0 + s B A
    (s * (b @ a) * big_g).sum().backward()  # g_A = s B^T G, g_B = s G A^T
    manifold = make("fixed_rank_quotient", out_f, in_f, r)
    x = manifold.pack(b.detach(), a.detach().T)
    rgrad_l, rgrad_r = manifold.unpack(manifold.egrad2rgrad(x, manifold.pack(b.grad, a.grad.T)))
    precondition_lora_grads([(a, b)], reg=0.0)
    torch.testing.assert_close(b.grad, rgrad_l, atol=1e-13, rtol=1e-12)
    torch.testing.assert_close(a.grad, rgrad_r.T, atol=1e-13, rtol=1e-12)
    # and it is not the Euclidean gradient (the check can fail)
    assert not torch.allclose(b.grad, s * big_g @ a.detach().T)


def test_the_base_is_part_of_the_method_name_and_the_run_id():
    adamw = compose(["optimizer=lora_preconditioned", *LORA])
    sgd = compose(["optimizer=lora_preconditioned", *LORA, "optimizer.base=sgd"])
    assert method_name(adamw) == "lora/lora_preconditioned"
    assert method_name(sgd) == "lora/lora_preconditioned+sgd"
    assert run_id(sgd).startswith("lora-lora_preconditioned_sgd-s0-")
    assert method_name(compose(["optimizer=loraplus", *LORA])) == "lora/loraplus"
    assert method_name(compose(["optimizer=muon"])) == "full/muon"
    # a baseline may name either
    validate(compose(["metrics.target_loss=from_baseline",
                      "metrics.baseline=lora/lora_preconditioned+sgd"]))


# ------------------------------------------------------------------------------- loraplus
def test_loraplus_groups_are_peft_s_with_weight_decay_passed_explicitly():
    from peft.optimizers import create_loraplus_optimizer

    ours = _lora_gpt()
    theirs, names = _peft_twin(ours)
    cfg = compose(["optimizer=loraplus", *LORA, "optimizer.lr=0.002", "optimizer.lr_ratio=8",
                   "optimizer.weight_decay=0.05"]).optimizer
    opt = build_optimizer(ours, cfg)
    peft_opt = create_loraplus_optimizer(theirs, torch.optim.AdamW, lr=0.002,
                                         loraplus_lr_ratio=8, loraplus_weight_decay=0.05)
    peft_groups = [
        (g["lr"], g["weight_decay"], [names[n] for n in _named(theirs, g["params"])])
        for g in peft_opt.param_groups if g["params"]
    ]
    our_groups = [(g["lr"], g["weight_decay"], _named(ours, g["params"]))
                  for g in opt.param_groups]
    assert our_groups == peft_groups
    assert [(lr, wd, len(n)) for lr, wd, n in our_groups] == [(0.002, 0.05, 8), (0.016, 0.05, 8)]
    for step in range(2):  # and the same steps (bitwise: the same AdamW on the same groups)
        for model, o in ((ours, opt), (theirs, peft_opt)):
            o.zero_grad()
            _loss(model, _batch(step)).backward()
            o.step()
    for a, b in zip([p for p in ours.parameters() if p.requires_grad],
                    [p for p in theirs.parameters() if p.requires_grad]):
        assert torch.equal(a, b)
    # PEFT drops a plain weight_decay (every group sets its own): why ours passes it explicitly
    dropped = create_loraplus_optimizer(theirs, torch.optim.AdamW, lr=0.002,
                                        loraplus_lr_ratio=8, weight_decay=0.05)
    assert {g["weight_decay"] for g in dropped.param_groups} == {0.0}


def test_loraplus_puts_1d_parameters_with_b_and_undecays_biases_and_norms():
    """PEFT's rule on a model where more than the factors train: 1-D parameters go with B (at
    lr x ratio), biases and LayerNorm weights without decay, other matrices with A."""
    model = _lora_gpt()
    model.blocks[0].norm1.weight.requires_grad_(True)
    model.pos_emb.weight.requires_grad_(True)
    cfg = compose(["optimizer=loraplus", *LORA, "optimizer.weight_decay=0.1"]).optimizer
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [(g["lr"], g["weight_decay"], _named(model, g["params"]))
              for g in loraplus_groups(model, params, cfg)]
    lr = cfg.lr
    assert groups[0][:2] == (lr, 0.1) and groups[0][2][0] == "pos_emb.weight"
    assert groups[1][:2] == (lr * 16, 0.1) and all(n.endswith("lora_B") for n in groups[1][2])
    assert groups[2] == (lr * 16, 0.0, ["blocks.0.norm1.weight"])


# ------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("name", ["lora_preconditioned", "loraplus"])
@pytest.mark.parametrize("adapter", [["adapter=full"], ["adapter=lora_riemannian"]])
def test_lora_optimizers_refuse_a_run_without_lora_factors(name, adapter):
    with pytest.raises(ConfigError) as err:
        validate(compose([f"optimizer={name}", *adapter]))
    got = compose(adapter).adapter
    assert str(err.value) == (
        f"optimizer.name={name!r} needs a LoRA adapter with factors lora_A, lora_B: "
        f"adapter.name={' or '.join(LORA_ADAPTERS)} with adapter.geometry=euclidean (got "
        f"adapter.name={got.name!r}, adapter.geometry={got.geometry!r})")
    assert {"lora", "balora", "dora"} <= set(LORA_ADAPTERS)  # the registered LoRA subclasses
    validate(compose([f"optimizer={name}", "adapter=balora"]))  # BaLoRA has the factors


@pytest.mark.parametrize(("owner", "key", "value", "allowed"), [
    (["optimizer=muon"], "optimizer.adjust_lr", "moonshot", "original, match_rms_adamw"),
    (["optimizer=lora_preconditioned", "adapter=lora"], "optimizer.base", "lion", "adamw, sgd"),
])
def test_unknown_choices_are_refused(owner, key, value, allowed):
    with pytest.raises(ConfigError) as err:
        validate(compose([*owner, f"{key}={value}"]))
    assert str(err.value) == f"{key}={value!r} is not allowed; allowed values: {allowed}"


@pytest.mark.parametrize(("owner", "key", "value", "message"), [
    (["optimizer=lora_preconditioned", "adapter=lora"], "optimizer.reg", "-1e-3",
     "optimizer.reg=-0.001 must be >= 0"),
    (["optimizer=loraplus", "adapter=lora"], "optimizer.lr_ratio", "0",
     "optimizer.lr_ratio=0.0 must be > 0"),
    (["optimizer=muon"], "optimizer.adamw_lr", "0", "optimizer.adamw_lr=0.0 must be > 0"),
])
def test_bad_numbers_are_refused(owner, key, value, message):
    with pytest.raises(ConfigError) as err:
        validate(compose([*owner, key + "=" + value]))
    assert str(err.value) == message


def test_a_key_of_another_optimizer_is_refused_not_ignored():
    """optimizer=adamw optimizer.lr_ratio=4 would otherwise run AdamW and record a LoRA+ key."""
    with pytest.raises(ConfigError) as err:
        validate(compose(["optimizer=adamw", "optimizer.lr_ratio=4"]))
    assert str(err.value) == ("optimizer.lr_ratio=4.0 is a key of optimizer=loraplus, not of "
                              "optimizer=adamw: with optimizer=adamw, allowed values: 16.0 (its "
                              "default)")
    validate(compose(["optimizer=adamw", "optimizer.lr_ratio=16"]))  # at its default: fine


def test_muon_without_a_block_matrix_stops_before_any_run_folder(tmp_path, tiny):
    # only the head trains (tied to the token embedding): nothing for Muon
    cfg = compose([*tiny, "optimizer=muon", "adapter=full", "adapter.target_modules=[lm_head]"])
    with pytest.raises(ConfigError, match=r"^optimizer.name='muon' found no trainable 2-D matrix"):
        run(cfg)
    assert not (tmp_path / "runs").exists() or run_dirs(tmp_path / "runs") == []
    manifold = compose([*tiny, "optimizer=muon", "adapter=full_riemannian"])
    with pytest.raises(ConfigError, match="must be euclidean"):
        run(manifold)
    assert not (tmp_path / "runs").exists() or run_dirs(tmp_path / "runs") == []


# ------------------------------------------------------------------------- runs and resume
@pytest.mark.parametrize(("extra", "method"), [
    (["optimizer=muon", "adapter=full", "adapter.target_modules=[all]"], "full/muon"),
    (["optimizer=lora_preconditioned", "adapter=lora", "optimizer.lr=0.01"],
     "lora/lora_preconditioned"),
    (["optimizer=lora_preconditioned", "adapter=lora", "optimizer.lr=0.01",
      "optimizer.base=sgd"], "lora/lora_preconditioned+sgd"),
    (["optimizer=loraplus", "adapter=lora"], "lora/loraplus"),
])
def test_each_trains_gpt_tiny_from_scratch_and_is_its_own_method(tmp_path, tiny, extra, method):
    summary = run(compose([*tiny, "trainer.max_steps=24", "trainer.eval_every=12", *extra]))
    assert summary["status"] == "completed"
    (d,) = run_dirs(tmp_path / "runs")
    assert yaml.safe_load((d / "config.yaml").read_text())["meta"]["method"] == method
    evals = [r["eval/loss"] for r in read_jsonl(d / "metrics.jsonl") if "eval/loss" in r]
    assert evals[-1] < evals[0] - 0.03  # from ln 256 = 5.55


def interrupt_and_resume(args: list[str], step: int, out: Path, monkeypatch) -> Path:
    """Run `args`, interrupted when it asks for the batch of `step` (after a checkpoint: the
    record stays `running`, as after kill -9), then relaunch it; its record folder in `out`."""
    real = bench.train.get_batch

    def interrupt(data, batch_size, seq_len, seed, at):
        if at == step:
            raise KeyboardInterrupt
        return real(data, batch_size, seq_len, seed, at)

    monkeypatch.setattr(bench.train, "get_batch", interrupt)
    with pytest.raises(KeyboardInterrupt):
        run(compose(args))
    (d,) = run_dirs(out)
    assert json.loads((d / "summary.json").read_text())["status"] == "running"
    monkeypatch.setattr(bench.train, "get_batch", real)
    assert run(compose(args))["status"] == "completed"
    return d


@pytest.mark.parametrize("extra", [
    ["optimizer=muon", "adapter=full", "adapter.target_modules=[all]"],
    ["optimizer=lora_preconditioned", "adapter=lora", "optimizer.base=sgd"],
    ["optimizer=loraplus", "adapter=lora"],
])
def test_an_interrupted_run_resumes_to_the_bitwise_same_curve(tmp_path, tiny, extra,
                                                              monkeypatch):
    """Interrupted after its checkpoint at step 12 (the record stays `running`, as after kill -9)
    and relaunched: the curve is the uninterrupted run's, float for float."""
    args = [*tiny, "trainer.max_steps=24", "trainer.checkpoint_every=12", *extra]
    run(compose([*args, f"out_dir={tmp_path / 'clean'}"]))
    d = interrupt_and_resume(args, 15, tmp_path / "runs", monkeypatch)
    (c,) = run_dirs(tmp_path / "clean")
    assert json.loads((d / "summary.json").read_text())["final_eval_loss"] == json.loads(
        (c / "summary.json").read_text())["final_eval_loss"]
    assert [r.get("train/loss") for r in read_jsonl(c / "metrics.jsonl")] == [
        r.get("train/loss") for r in read_jsonl(d / "metrics.jsonl")]




def test_optimizer_state_round_trips_through_a_weights_only_checkpoint(tmp_path):
    """state_dict -> torch.save -> torch.load(weights_only=True) -> load_state_dict: the two
    optimizers then take the same steps (for each new optimizer)."""
    for extra in (["optimizer=muon"], ["optimizer=lora_preconditioned"],
                  ["optimizer=loraplus"]):
        cfg = compose([*extra, *LORA]).optimizer
        a = _lora_gpt()
        opt_a = build_optimizer(a, cfg)
        for step in range(2):
            opt_a.zero_grad()
            _loss(a, _batch(step)).backward()
            opt_a.step()
        torch.save({"model": a.state_dict(), "opt": opt_a.state_dict()}, tmp_path / "c.pt")
        state = torch.load(tmp_path / "c.pt", weights_only=True)
        b = _lora_gpt(seed=5)
        b.load_state_dict(state["model"])
        opt_b = build_optimizer(b, cfg)
        opt_b.load_state_dict(state["opt"])
        for step in range(2, 4):
            for model, o in ((a, opt_a), (b, opt_b)):
                o.zero_grad()
                _loss(model, _batch(step)).backward()
                o.step()
        for p, q in zip(a.parameters(), b.parameters()):
            assert torch.equal(p, q), extra


def test_peft_twin_is_the_same_function():
    """The PEFT comparisons above compare like with like: same loss on the same batch."""
    ours = _lora_gpt(dtype=torch.float64)
    theirs, _ = _peft_twin(copy.deepcopy(ours))
    x = _batch()
    torch.testing.assert_close(_loss(ours, x), _loss(theirs, x), atol=1e-12, rtol=0)
