"""Registries: every registered name has its YAML, every YAML builds a registered choice, the
schema allows exactly the registered names, and every manifold states a kind the code knows."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from bench.adapters import ADAPTERS, build_adapter
from bench.adapters.balancing import ALIGNMENTS
from bench.adapters.balora import MOMENTS
from bench.adapters.lora import INITS, ManifoldLoRALinear
from bench.config import ConfigError, validate
from bench.manifolds import (
    FIXED_RANK,
    GEOMETRIES,
    KINDS,
    MANIFOLDS,
    PARTIAL_ISOMETRY,
    FixedRankQuotient,
    make,
)
from bench.models.gpt import GPT, GPTConfig
from bench.models.lowrank_attention import to_manifold_attention
from bench.optim import OPTIMIZERS, build_optimizer
from bench.optim.riemannian import RIEMANNIAN_OPTIMIZERS
from tests.conftest import ROOT, compose

CONF = ROOT / "conf"
ADAPTER_YAMLS = sorted(p.stem for p in (CONF / "adapter").glob("*.yaml"))
OPTIMIZER_YAMLS = sorted(p.stem for p in (CONF / "optimizer").glob("*.yaml"))


def _tiny_gpt(geometry: str = "euclidean", block: bool = False) -> GPT:
    torch.manual_seed(0)
    model = GPT(GPTConfig(d_model=32, n_layer=1, n_head=2, seq_len=16))
    if geometry != "euclidean":
        model = to_manifold_attention(model, geometry, block)
    return model


def _step(model: GPT, optimizer) -> None:
    x = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(1))
    _, loss = model(x, x)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


@pytest.mark.parametrize(("group", "registry"), [("adapter", ADAPTERS), ("optimizer", OPTIMIZERS)])
def test_every_registered_name_has_its_yaml(group, registry):
    for name in registry:
        path = Path(CONF / group / f"{name}.yaml")
        assert path.is_file(), f"{name} is registered but conf/{group}/{name}.yaml is missing"
        assert yaml.safe_load(path.read_text())["name"] == name


@pytest.mark.parametrize("stem", ADAPTER_YAMLS)
def test_every_adapter_yaml_builds_a_registered_adapter(stem):
    cfg = compose([f"adapter={stem}"])
    if cfg.adapter.get("geometry", "euclidean") != "euclidean":  # a manifold needs its optimizer
        with pytest.raises(ConfigError, match="needs an optimizer that steps manifolds"):
            validate(cfg)
        cfg = compose([f"adapter={stem}", "optimizer=riemannian_adam"])
    validate(cfg)
    assert cfg.adapter.name in ADAPTERS
    adapter = build_adapter(cfg.adapter)
    assert type(adapter) is ADAPTERS[cfg.adapter.name]
    model = adapter.apply(_tiny_gpt(cfg.model.attention.geometry, cfg.model.attention.block))
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert trainable and len(trainable) < len(list(model.parameters()))


@pytest.mark.parametrize("stem", OPTIMIZER_YAMLS)
def test_every_optimizer_yaml_builds_a_registered_optimizer_that_steps(stem):
    cfg = compose([f"optimizer={stem}", "adapter=full"])
    assert cfg.optimizer.name in OPTIMIZERS
    geometry, adapter = "euclidean", "full"
    if OPTIMIZERS[cfg.optimizer.name].needs_lora:
        with pytest.raises(ConfigError, match="needs a LoRA adapter"):
            validate(cfg)
        adapter = "lora"
        cfg = compose([f"optimizer={stem}", f"adapter={adapter}"])
    if OPTIMIZERS[cfg.optimizer.name].needs_manifold:
        with pytest.raises(ConfigError, match="needs manifold parameters"):
            validate(cfg)
        geometry = "fixed_rank_embedded"
        cfg = compose([f"optimizer={stem}", "adapter=full",
                       f"model.attention.geometry={geometry}"])
    validate(cfg)
    model = build_adapter(cfg.adapter).apply(_tiny_gpt(geometry))
    optimizer = build_optimizer(model, cfg.optimizer)
    assert isinstance(optimizer, torch.optim.Optimizer)
    before = [p.detach().clone() for p in model.parameters() if p.requires_grad]
    _step(model, optimizer)
    # B = 0 at init gives g_A = 0: A moves from the second step on; SOAP's first step only
    # computes its eigenbases (the paper's code)
    if adapter == "lora" or cfg.optimizer.name == "soap":
        _step(model, optimizer)
    after = [p.detach() for p in model.parameters() if p.requires_grad]
    assert all(not torch.equal(b, a) for b, a in zip(before, after))


def test_riemannian_entries_are_the_riemannian_optimizers():
    needs = {name for name, spec in OPTIMIZERS.items() if spec.needs_manifold}
    assert needs == set(RIEMANNIAN_OPTIMIZERS)


@pytest.mark.parametrize(
    ("key", "registered", "companions"),
    [
        ("adapter.name", tuple(ADAPTERS), []),
        ("optimizer.name", tuple(OPTIMIZERS),
         ["model.attention.geometry=fixed_rank_embedded", "adapter=lora"]),
        ("model.attention.geometry", ("euclidean", *MANIFOLDS), []),
        ("adapter.alignment", ALIGNMENTS, ["adapter=balora"]),
        ("adapter.moments", MOMENTS, ["adapter=balora"]),
        ("adapter.init", INITS, ["adapter=lora"]),
    ],
)
def test_schema_allows_exactly_the_registered_names(key, registered, companions):
    for name in registered:
        validate(compose([f"{key}={name}", *companions]))
    with pytest.raises(ConfigError) as err:
        validate(compose([f"{key}=not_registered", *companions]))
    assert str(err.value) == (
        f"{key}='not_registered' is not allowed; allowed values: {', '.join(registered)}"
    )


@pytest.mark.parametrize("name", GEOMETRIES)
def test_every_manifold_states_a_known_kind_itself(name):
    cls = MANIFOLDS[name]
    assert cls.name == name
    assert "kind" in vars(cls), f"{cls.__name__} inherits its kind instead of stating it"
    assert cls.kind in KINDS
    assert (name in FIXED_RANK) == (cls.kind == "fixed_rank")
    assert (name in PARTIAL_ISOMETRY) == (cls.kind == "partial_isometry")


@pytest.mark.parametrize("name", GEOMETRIES)
def test_every_listed_retraction_builds_and_validates(name):
    for retraction in MANIFOLDS[name].retractions:
        assert make(name, 6, 5, 2, retraction=retraction).retraction == retraction
        validate(compose([f"model.attention.geometry={name}",
                          f"model.attention.retraction={retraction}"]))


def test_a_manifold_of_unknown_kind_is_refused(monkeypatch):
    from bench.manifolds import _registry

    class Sphere(FixedRankQuotient):
        name = "sphere"
        kind = "sphere"

    with pytest.raises(TypeError, match="kind='sphere'; known kinds: fixed_rank, partial_iso"):
        _registry(FixedRankQuotient, Sphere)
    # code that branches on the kind refuses one it does not know (no silent scale parameter)
    monkeypatch.setattr(FixedRankQuotient, "kind", "sphere")
    with pytest.raises(ValueError, match="kind 'sphere', unknown to attention"):
        _tiny_gpt("fixed_rank_quotient")
    linear = torch.nn.Linear(8, 6, bias=False)
    with pytest.raises(ConfigError, match="a LoRA update is a rank-r matrix"):
        ManifoldLoRALinear(linear, 2, 4.0, "fixed_rank_quotient", 1e-3)
