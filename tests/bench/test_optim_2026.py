"""The optimizers of issue 29 (SOAP, Shampoo, AdEMAMix, MARS, Schedule-Free AdamW, NorMuon,
AdamH, MuonH, LoRA-RITE): each builder's steps are the library class's own on identical weights
(AdamH and MuonH: the paper's update written out), each trains gpt_tiny as its own method and
resumes bitwise (Schedule-Free's averaged weights included), and bad input is one line with
nothing written."""

from __future__ import annotations

import json
import sys
from contextlib import nullcontext

import pytest
import torch
import yaml

import bench.train
from bench.config import ConfigError, validate
from bench.data.corpus import eval_batches
from bench.optim import OPTIMIZERS, build_optimizer
from bench.optim.base import lora_pairs
from bench.run import prepare, run
from bench.tracking.checkpoint import load_checkpoint
from bench.tracking.identity import method_name
from tests.bench.test_optim import (
    LORA,
    _batch,
    _gpt,
    _lora_gpt,
    _loss,
    _named,
    interrupt_and_resume,
)
from tests.conftest import compose, read_jsonl, run_dirs

pytest.importorskip("pytorch_optimizer")
import pytorch_optimizer as po  # noqa: E402

FULL = ["adapter=full", "adapter.target_modules=[all]"]  # every parameter trains


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Tiny ops on shared cores run fastest on one intra-op thread (as a `make test` worker)."""


@pytest.fixture
def tiny(tiny):
    return [*tiny, "trainer.threads=1"]  # the runs too (trainer.threads is not semantic)
LIBRARY = ("soap", "shampoo", "ademamix", "mars", "schedule_free_adamw", "normuon", "lora_rite")
MATRIX = ("soap", "shampoo", "normuon", "adamh", "muonh")
# name -> (the overrides of a tiny run, its method): knobs small enough that 12 steps reach
# every branch that a checkpoint must carry (SOAP's QR refresh, Shampoo's inverse roots,
# AdEMAMix's alpha and beta3 warm-up over the run, Schedule-Free's warm-up into lr_max)
RUNS = {
    "soap": (["optimizer.precondition_frequency=3"], "full/soap"),
    "shampoo": (["optimizer.start_preconditioning_step=2",
                 "optimizer.preconditioning_compute_steps=3"], "full/shampoo"),
    "ademamix": ([], "full/ademamix"),
    "mars": ([], "full/mars"),
    "schedule_free_adamw": ([], "full/schedule_free_adamw"),
    "normuon": ([], "full/normuon"),
    "adamh": ([], "full/adamh"),
    "muonh": ([], "full/muonh"),
    "lora_rite": (["optimizer.lr=1e-2"], "lora/lora_rite"),
}


def _steps(pairs, n: int, start: int = 0) -> None:
    """`n` steps of each (model, step function) on the same batches, each step from the same
    RNG state (Shampoo's Schur-Newton iteration starts a power iteration at torch.randn)."""
    for step in range(start, start + n):
        for model, step_fn in pairs:
            model.zero_grad()
            _loss(model, _batch(step)).backward()
            torch.manual_seed(step)
            step_fn()


def _blocks_and_rest(model) -> tuple[list, list]:
    """The block matrices and the rest, by name (independently of bench's split)."""
    blocks = [p for n, p in model.named_parameters() if n.startswith("blocks") and p.ndim == 2]
    rest = [p for n, p in model.named_parameters()
            if not (n.startswith("blocks") and p.ndim == 2)]
    return blocks, rest


def _decay_groups(params, wd):
    return [{"params": [p for p in params if p.ndim == 2], "weight_decay": wd},
            {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]


def _adamw(rest, lr, wd=0.0, betas=(0.9, 0.999), eps=1e-8):
    return torch.optim.AdamW(_decay_groups(rest, wd), lr=lr, betas=betas, eps=eps)


def _assert_same(ours, ref, what):
    for (name, a), b in zip(ours.named_parameters(), ref.parameters()):
        assert torch.equal(a, b), f"{what}: {name}"


# ------------------------------------------------------- each builder is the library's own step
def _references(name, ref):
    """The library's classes built by hand on `ref` with the values the overrides below set."""
    blocks, rest = _blocks_and_rest(ref)
    if name == "soap":
        return [po.SOAP(blocks, lr=0.004, betas=(0.9, 0.95), shampoo_beta=0.8, eps=1e-7,
                        weight_decay=0.02, precondition_frequency=2, max_precondition_dim=48),
                _adamw(rest, 0.002, 0.02, (0.8, 0.99), 1e-7)]  # adamw_betas, not SOAP's
    if name == "shampoo":
        from pytorch_optimizer.optimizer.utils.graft import LayerWiseGrafting

        return [po.ScalableShampoo(blocks, lr=0.004, betas=(0.8, 0.99), weight_decay=0.02,
                                   decoupled_weight_decay=True, start_preconditioning_step=2,
                                   preconditioning_compute_steps=2, block_size=16,
                                   graft_type=LayerWiseGrafting.ADAGRAD),
                _adamw(rest, 0.002, 0.02, (0.8, 0.99))]
    if name == "ademamix":
        return [po.AdEMAMix(_decay_groups(list(ref.parameters()), 0.02), lr=0.004,
                            betas=(0.8, 0.99, 0.999), alpha=3.0, t_alpha_beta3=3, eps=1e-7,
                            weight_decay=0.02, weight_decouple=True)]
    if name == "mars":
        return [po.MARS(list(ref.parameters()), lr=0.004, betas=(0.9, 0.95), gamma=0.05,
                        mars_type="adamw", optimize_1d=False, lr_1d=0.002, betas_1d=(0.8, 0.9),
                        weight_decay=0.02, weight_decay_1d=0.0, eps=1e-7)]
    if name == "schedule_free_adamw":
        return [po.ScheduleFreeAdamW(_decay_groups(list(ref.parameters()), 0.02), lr=0.004,
                                     betas=(0.8, 0.99), weight_decay=0.02, r=0.5,
                                     weight_lr_power=1.0, eps=1e-7)]
    if name == "normuon":
        group = {"params": blocks, "use_muon": True, "lr": 0.004, "momentum": 0.9, "beta2": 0.8,
                 "weight_decay": 0.02, "nesterov": True, "update_scale": "preserve_norm",
                 "use_adjusted_lr": True}
        return [po.NorMuon([group]), _adamw(rest, 0.002, 0.02)]
    raise KeyError(name)


OVERRIDES = {  # every knob off its default, so a knob passed wrongly changes the steps
    "soap": ["optimizer.lr=0.004", "optimizer.adamw_lr=0.002", "optimizer.betas=[0.9,0.95]",
             "optimizer.adamw_betas=[0.8,0.99]",
             "optimizer.shampoo_beta=0.8", "optimizer.eps=1e-7", "optimizer.weight_decay=0.02",
             "optimizer.precondition_frequency=2", "optimizer.max_precondition_dim=48"],
    "shampoo": ["optimizer.lr=0.004", "optimizer.adamw_lr=0.002", "optimizer.betas=[0.8,0.99]",
                "optimizer.weight_decay=0.02", "optimizer.start_preconditioning_step=2",
                "optimizer.preconditioning_compute_steps=2", "optimizer.block_size=16",
                "optimizer.graft_type=adagrad"],
    "ademamix": ["optimizer.lr=0.004", "optimizer.betas=[0.8,0.99]", "optimizer.beta3=0.999",
                 "optimizer.ademamix_alpha=3", "optimizer.t_alpha_beta3=3", "optimizer.eps=1e-7",
                 "optimizer.weight_decay=0.02"],
    "mars": ["optimizer.lr=0.004", "optimizer.adamw_lr=0.002", "optimizer.betas=[0.9,0.95]",
             "optimizer.mars_gamma=0.05", "optimizer.betas_1d=[0.8,0.9]", "optimizer.eps=1e-7",
             "optimizer.weight_decay=0.02"],
    "schedule_free_adamw": ["optimizer.lr=0.004", "optimizer.betas=[0.8,0.99]",
                            "optimizer.weight_decay=0.02", "optimizer.sf_r=0.5",
                            "optimizer.weight_lr_power=1", "optimizer.eps=1e-7"],
    "normuon": ["optimizer.lr=0.004", "optimizer.adamw_lr=0.002", "optimizer.momentum=0.9",
                "optimizer.normuon_beta2=0.8", "optimizer.weight_decay=0.02",
                "optimizer.update_scale=preserve_norm", "optimizer.adjust_lr=match_rms_adamw"],
}


@pytest.mark.parametrize("name", sorted(OVERRIDES))
def test_each_step_is_the_library_class_own_on_identical_weights(name):
    """Four steps of the built optimizer and of the library's class (matrix optimizers: on the
    block matrices, with torch's AdamW on the rest) built by hand: bitwise the same weights."""
    cfg = compose([f"optimizer={name}", *FULL, *OVERRIDES[name]])
    validate(cfg)
    ours, ref = _gpt(), _gpt()
    opt = build_optimizer(ours, cfg.optimizer)
    refs = _references(name, ref)
    _steps([(ours, opt.step), (ref, lambda: [o.step() for o in refs])], 4)
    _assert_same(ours, ref, name)
    assert not torch.equal(ours.blocks[0].attn.q.weight, _gpt().blocks[0].attn.q.weight)
    if name == "schedule_free_adamw":  # and the averaged point: the library's eval()
        with opt.eval_mode():
            refs[0].eval()
            _assert_same(ours, ref, "x")


def test_lora_rite_is_the_library_class_on_the_lora_pairs():
    cfg = compose(["optimizer=lora_rite", *LORA, "optimizer.lr=0.01", "optimizer.betas=[0.8,0.9]",
                   "optimizer.eps=1e-5", "optimizer.weight_decay=0.01",
                   "optimizer.clip_unmagnified_grad=0.5", "optimizer.update_skipping=0",
                   "optimizer.apply_escape=false"])
    validate(cfg)
    ours, ref = _lora_gpt(), _lora_gpt()
    opt = build_optimizer(ours, cfg.optimizer)
    assert set(opt.optimizers) == {"lora_rite"}  # a LoRA run trains only the factors
    factors = [p for pair in lora_pairs(ref) for p in pair]
    assert [n.rsplit(".", 1)[1] for n in _named(ref, factors)] == ["lora_A", "lora_B"] * 8
    lib = po.LoRARite(factors, lr=0.01, betas=(0.8, 0.9), eps=1e-5, weight_decay=0.01,
                      clip_unmagnified_grad=0.5, update_skipping=0.0, apply_escape=False)
    _steps([(ours, opt.step), (ref, lib.step)], 3)
    _assert_same(ours, ref, "lora_rite")
    assert not torch.equal(ours.blocks[0].attn.q.lora_A, _lora_gpt().blocks[0].attn.q.lora_A)


@pytest.mark.parametrize("name", ["ademamix", "schedule_free_adamw", "soap"])
def test_muon_modules_leaves_the_other_matrices_to_adamw(name):
    """optimizer.muon_modules=[q, k, v, o] (a row "on the attention weights"): the library class
    gets exactly the attention matrices, AdamW at adamw_lr everything else."""
    cfg = compose([f"optimizer={name}", *FULL, "optimizer.muon_modules=[q,k,v,o]",
                   "optimizer.adamw_lr=0.0007"])
    model = _gpt()
    opt = build_optimizer(model, cfg.optimizer)
    (lib_name,) = set(opt.optimizers) - {"adamw"}
    mine = [n for g in opt.optimizers[lib_name].param_groups for n in _named(model, g["params"])]
    assert sorted(mine) == sorted(f"blocks.{i}.attn.{m}.weight" for i in range(2) for m in "qkvo")
    adamw = opt.optimizers["adamw"]
    assert {g["lr"] for g in adamw.param_groups} == {0.0007}
    assert len(mine) + sum(len(g["params"]) for g in adamw.param_groups) == len(
        list(model.parameters()))


# ----------------------------------------------------------- AdamH and MuonH: the paper's update
def _hyperball_by_hand(w, u, lr, radius):
    """The paper: W <- R Normalize(W - lr R Normalize(u)), Normalize(X) = X / ||X||_F."""
    moved = w - lr * radius * u / u.norm()
    return radius * moved / moved.norm()


@pytest.mark.parametrize("name", ["adamh", "muonh"])
def test_hyperball_is_the_papers_update_on_a_block_matrix(name):
    """Three steps of the built optimizer on a float64 GPT; for one block matrix (32 x 32) the
    paper's update is written out with Adam's moments (AdamH) or Muon's Nesterov momentum and
    torch's Newton-Schulz (MuonH) kept by hand; the rest is torch's AdamW at adamw_lr."""
    from torch.optim._muon import _zeropower_via_newtonschulz

    cfg = compose([f"optimizer={name}", *FULL, "optimizer.lr=0.05", "optimizer.adamw_lr=0.002",
                   "optimizer.betas=[0.8,0.95]", "optimizer.eps=1e-6", "optimizer.momentum=0.9",
                   "optimizer.weight_decay=0.01"]).optimizer
    ours, ref = _gpt().double(), _gpt().double()
    opt = build_optimizer(ours, cfg)
    _, rest = _blocks_and_rest(ref)
    adamw = _adamw(rest, 0.002, 0.01, (0.8, 0.95), 1e-6)
    w = ours.blocks[0].attn.q.weight
    by_hand = w.detach().clone()
    radius = by_hand.norm()
    m, v = torch.zeros_like(by_hand), torch.zeros_like(by_hand)
    for t in range(1, 4):
        for model in (ours, ref):
            model.zero_grad()
            _loss(model, _batch(t)).backward()
        g = w.grad.detach().clone()
        if name == "adamh":  # Adam's update m_hat / (sqrt(v_hat) + eps)
            m = 0.8 * m + 0.2 * g
            v = 0.95 * v + 0.05 * g * g
            u = (m / (1 - 0.8**t)) / ((v / (1 - 0.95**t)).sqrt() + 1e-6)
        else:  # Muon's: Newton-Schulz of the Nesterov look-ahead (torch's, in bfloat16)
            m = m.lerp(g, 1 - 0.9)  # torch's buf.lerp_(grad, 1 - momentum)
            u = _zeropower_via_newtonschulz(g.lerp(m, 0.9), (3.4445, -4.775, 2.0315), 5, 1e-7)
            u = u.to(torch.float64)
        by_hand = _hyperball_by_hand(by_hand, u, 0.05, radius)
        opt.step()
        adamw.step()
        with torch.no_grad():  # ref's block matrices follow ours: the same gradients next step
            for a, b in zip(_blocks_and_rest(ours)[0], _blocks_and_rest(ref)[0]):
                b.copy_(a)
        torch.testing.assert_close(w.detach(), by_hand, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(w.detach().norm(), radius, rtol=1e-14, atol=0)  # on its sphere
    assert not torch.allclose(w.detach(), _gpt().double().blocks[0].attn.q.weight)
    for name_, p in ours.named_parameters():  # the rest: AdamW's, bitwise
        if not (name_.startswith("blocks") and p.ndim == 2):
            assert torch.equal(p, dict(ref.named_parameters())[name_]), name_


@pytest.mark.parametrize("name", ["adamh", "muonh"])
def test_hyperball_refuses_a_matrix_that_starts_at_zero(name):
    """LoRA's lora_B starts at 0: there is no sphere to keep it on."""
    from bench.adapters import build_adapter

    model = build_adapter(compose(LORA).adapter).apply(_gpt())
    with pytest.raises(ConfigError) as err:
        build_optimizer(model, compose([f"optimizer={name}", *LORA]).optimizer)
    assert str(err.value) == (
        f"optimizer.name={name!r} keeps each matrix on the sphere of its initial norm, and "
        "blocks.0.attn.q.lora_B starts at 0 (no sphere): use adapter=full, or another "
        "optimizer for LoRA (whose lora_B starts at 0)")


# --------------------------------------------------------------- Schedule-Free's averaged point
def test_schedule_free_eval_mode_holds_the_average_x():
    """Inside eval_mode the parameters are x = (y - (1 - b1) z) / b1 (y: the training weights,
    z: the library's state), and y again after."""
    cfg = compose(["optimizer=schedule_free_adamw", *FULL, "optimizer.betas=[0.8,0.99]"])
    model = _gpt().double()
    opt = build_optimizer(model, cfg.optimizer)
    _steps([(model, opt.step)], 3)
    sf = opt.optimizers["schedule_free"]
    y = {n: p.detach().clone() for n, p in model.named_parameters()}
    z = {n: sf.state[p]["z"].clone() for n, p in model.named_parameters()}
    with opt.eval_mode():
        for n, p in model.named_parameters():
            torch.testing.assert_close(p.detach(), (y[n] - 0.2 * z[n]) / 0.8, rtol=1e-12,
                                       atol=1e-12)
        assert not torch.allclose(model.tok_emb.weight, y["tok_emb.weight"])
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), y[n], rtol=1e-12, atol=1e-12)


def test_schedule_free_records_its_losses_at_the_averaged_weights(tmp_path, tiny):
    """The record's last eval/loss is the loss of the weights its last checkpoint holds, x (the
    groups marked as evaluating), not of the training weights y = (1 - b1) z + b1 x."""
    cfg = compose([*tiny, "optimizer=schedule_free_adamw", *FULL])
    assert run(cfg)["status"] == "completed"
    (d,) = run_dirs(tmp_path / "runs")
    assert yaml.safe_load((d / "config.yaml").read_text())["meta"]["evaluates_at"] == "averaged"
    state = load_checkpoint(d / "checkpoint.pt")  # the last step's
    parts = prepare(cfg).parts  # a fresh model and the run's corpus
    model = parts["model"]
    model.load_state_dict(state["model"])
    batches = eval_batches(parts["corpus"].eval, cfg.trainer.batch_size, cfg.model.seq_len,
                           cfg.data.eval_batches)
    final = [r for r in read_jsonl(d / "metrics.jsonl") if "eval/loss" in r][-1]["eval/loss"]
    assert bench.train.evaluate(model, batches, torch.device("cpu"), nullcontext) == final
    saved = state["optimizer"]["schedule_free"]
    assert {g["train_mode"] for g in saved["param_groups"]} == {False}
    params = list(model.parameters())  # the library's groups: matrices (decayed), then 1-D
    ordered = [p for p in params if p.ndim >= 2] + [p for p in params if p.ndim < 2]
    indices = [i for g in saved["param_groups"] for i in g["params"]]
    with torch.no_grad():  # y = x + (1 - b1) (z - x)
        for i, p in zip(indices, ordered, strict=True):
            p.lerp_(saved["state"][i]["z"], 1 - 0.9)
    assert bench.train.evaluate(model, batches, torch.device("cpu"), nullcontext) != final


# ---------------------------------------------------------------- runs, methods, resume
@pytest.mark.parametrize("name", sorted(RUNS))
def test_each_trains_gpt_tiny_as_its_own_method_and_resumes_bitwise(tmp_path, tiny, name,
                                                                    monkeypatch):
    """gpt_tiny from scratch, 12 steps under a warm-up (and a cosine decay, Schedule-Free
    aside); interrupted after its checkpoint at step 6 (the record stays `running`, as after
    kill -9) and relaunched: the curve, the final checkpoint's weights and optimizer state are
    the uninterrupted run's, bit for bit (Schedule-Free: its checkpoint holds x)."""
    extra, method = RUNS[name]
    adapter = ["adapter=lora"] if name == "lora_rite" else FULL
    schedule = "warmup_constant" if name == "schedule_free_adamw" else "warmup_cosine"
    args = [*tiny, f"optimizer={name}", *adapter, f"trainer.lr_schedule={schedule}",
            "trainer.warmup_steps=3", *extra]
    clean = run(compose([*args, f"out_dir={tmp_path / 'clean'}"]))
    assert clean["status"] == "completed", clean
    (c,) = run_dirs(tmp_path / "clean")
    meta = yaml.safe_load((c / "config.yaml").read_text())["meta"]
    assert meta["method"] == method
    assert ("evaluates_at" in meta) == (name == "schedule_free_adamw")
    evals = [r["eval/loss"] for r in read_jsonl(c / "metrics.jsonl") if "eval/loss" in r]
    assert evals[-1] < evals[0]  # it learns (from ln 256 = 5.55)
    d = interrupt_and_resume(args, 9, tmp_path / "runs", monkeypatch)
    assert json.loads((d / "summary.json").read_text())["final_eval_loss"] == (
        clean["final_eval_loss"])

    def rows(record):  # every logged value but the wall clock
        return [{k: v for k, v in r.items() if k != "wall_s"}
                for r in read_jsonl(record / "metrics.jsonl")]

    assert rows(d) == rows(c)
    _assert_equal_trees(load_checkpoint(c / "checkpoint.pt"), load_checkpoint(d / "checkpoint.pt"),
                        ("model", "optimizer"))


def _assert_equal_trees(a, b, keys):
    def same(x, y, where):
        if isinstance(x, torch.Tensor):
            assert isinstance(y, torch.Tensor) and torch.equal(x, y), where
        elif isinstance(x, dict):
            assert x.keys() == y.keys(), where
            for k in x:
                same(x[k], y[k], f"{where}.{k}")
        elif isinstance(x, list | tuple):
            assert len(x) == len(y), where
            for i, (p, q) in enumerate(zip(x, y)):
                same(p, q, f"{where}[{i}]")
        else:
            assert x == y, where

    for key in keys:
        same(a[key], b[key], key)


def test_the_nine_are_distinct_methods():
    names = {name: method_name(compose([f"optimizer={name}",
                                        *(LORA if name == "lora_rite" else FULL)]))
             for name in RUNS}
    assert names == {name: method for name, (_, method) in RUNS.items()}
    assert method_name(compose(["optimizer=mars", "optimizer.mars_type=lion"])) == "full/mars+lion"
    assert set(RUNS) <= set(OPTIMIZERS)


def test_a_combined_optimizer_s_groups_are_the_live_ones_after_loading():
    """torch's load_state_dict replaces an optimizer's group dicts: the combination must point at
    the new ones, or the trainer's LR schedule would stop reaching them after a resume."""
    opt = build_optimizer(_gpt(), compose(["optimizer=soap", *FULL]).optimizer)
    opt.load_state_dict(opt.state_dict())
    live = [g for o in opt.optimizers.values() for g in o.param_groups]
    assert len(opt.param_groups) == len(live)
    assert all(a is b for a, b in zip(opt.param_groups, live))


def test_shampoo_checkpoints_tensors_only(tmp_path):
    """The library's own state holds Python objects, which weights_only refuses; ours holds
    their tensors and rebuilds them: the next steps are the same."""
    cfg = compose(["optimizer=shampoo", *FULL, "optimizer.start_preconditioning_step=1",
                   "optimizer.preconditioning_compute_steps=2"]).optimizer
    a = _gpt()
    opt_a = build_optimizer(a, cfg)
    _steps([(a, opt_a.step)], 3)
    torch.save(opt_a.optimizers["shampoo"].state_dict(), tmp_path / "raw.pt")
    with pytest.raises(Exception, match="[Ww]eights only load failed"):
        torch.load(tmp_path / "raw.pt", weights_only=True)
    torch.save({"model": a.state_dict(), "opt": opt_a.state_dict()}, tmp_path / "c.pt")
    state = torch.load(tmp_path / "c.pt", weights_only=True)
    b = _gpt(seed=5)
    b.load_state_dict(state["model"])
    opt_b = build_optimizer(b, cfg)
    opt_b.load_state_dict(state["opt"])
    _steps([(a, opt_a.step), (b, opt_b.step)], 3, start=3)
    _assert_same(a, b, "shampoo")


# ------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("name", MATRIX)
def test_a_matrix_optimizer_with_nothing_2d_stops_before_any_run_folder(tmp_path, tiny, name):
    cfg = compose([*tiny, f"optimizer={name}", "adapter=full", "adapter.target_modules=[lm_head]"])
    with pytest.raises(ConfigError) as err:
        run(cfg)
    assert str(err.value) == (
        f"optimizer.name={name!r} found no trainable 2-D matrix inside the blocks (embeddings "
        "and the head go to AdamW): train some, e.g. adapter.target_modules=[q, k, v, o] or "
        "adapter=lora")
    with pytest.raises(ConfigError, match=f"^optimizer.name={name!r} steps plain matrices"):
        run(compose([*tiny, f"optimizer={name}", "adapter=full_riemannian"]))
    assert not (tmp_path / "runs").exists() or run_dirs(tmp_path / "runs") == []


def test_lora_rite_needs_a_lora_adapter():
    with pytest.raises(ConfigError) as err:
        validate(compose(["optimizer=lora_rite", "adapter=full"]))
    assert str(err.value).startswith("optimizer.name='lora_rite' needs a LoRA adapter with "
                                     "factors lora_A, lora_B: adapter.name=lora or ")
    validate(compose(["optimizer=lora_rite", "adapter=balora"]))


@pytest.mark.parametrize("name", LIBRARY)
def test_a_missing_library_is_one_line_saying_how_to_install_it(tmp_path, tiny, name,
                                                                 monkeypatch):
    monkeypatch.setitem(sys.modules, "pytorch_optimizer", None)  # import raises ImportError
    adapter = ["adapter=lora"] if name == "lora_rite" else FULL
    with pytest.raises(ConfigError) as err:
        run(compose([*tiny, f"optimizer={name}", *adapter]))
    assert str(err.value) == (
        f"optimizer.name={name!r} needs the library pytorch-optimizer==4.1.0, which is not "
        "installed: pip install pytorch-optimizer==4.1.0 (or make setup)")
    assert not (tmp_path / "runs").exists()
    validate(compose(["optimizer=adamh", *FULL]))  # written here: no library needed


@pytest.mark.parametrize(("owner", "key", "value", "message"), [
    (["optimizer=schedule_free_adamw", "trainer.lr_schedule=warmup_cosine"], None, None,
     "optimizer.name='schedule_free_adamw' replaces the LR decay: trainer.lr_schedule="
     "warmup_cosine is not allowed; allowed values: constant, warmup_constant"),
    (["optimizer=shampoo"], "optimizer.graft_type", "adam",
     "optimizer.graft_type='adam' is not allowed; allowed values: rmsprop, adagrad, sgd, sqrtn, "
     "none"),
    (["optimizer=mars"], "optimizer.mars_type", "sgd",
     "optimizer.mars_type='sgd' is not allowed; allowed values: adamw, lion, shampoo"),
    (["optimizer=normuon"], "optimizer.update_scale", "rms",
     "optimizer.update_scale='rms' is not allowed; allowed values: match_rms, preserve_norm"),
    (["optimizer=ademamix"], "optimizer.beta3", "1.0", "optimizer.beta3=1.0 must be in [0, 1)"),
    (["optimizer=soap"], "optimizer.precondition_frequency", "0",
     "optimizer.precondition_frequency=0 must be >= 1"),
    (["optimizer=muonh"], "optimizer.adamw_lr", "0", "optimizer.adamw_lr=0.0 must be > 0"),
    (["optimizer=soap"], "optimizer.adamw_betas", "[0.9,1.0]",
     "optimizer.adamw_betas[1]=1.0 must be in [0, 1)"),
])
def test_bad_values_are_one_line(owner, key, value, message):
    overrides = [*owner, *FULL] + ([f"{key}={value}"] if key else [])
    with pytest.raises(ConfigError) as err:
        validate(compose(overrides))
    assert str(err.value) == message


def test_a_new_key_with_another_optimizer_is_refused():
    with pytest.raises(ConfigError) as err:
        validate(compose(["optimizer=adamw", "optimizer.beta3=0.99"]))
    assert str(err.value).startswith("optimizer.beta3=0.99 is a key of optimizer=ademamix, not "
                                     "of optimizer=adamw")
    with pytest.raises(ConfigError, match="^optimizer.muon_modules=.* is a key of optimizer=muon"):
        validate(compose(["optimizer=mars", "optimizer.muon_modules=[q]"]))
