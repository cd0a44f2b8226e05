"""The `model` config group: the GPT architecture (GPTConfig's fields) plus how the model is
made (built-in or Hugging Face, from scratch or pretrained) and its attention geometry."""

from __future__ import annotations

from dataclasses import dataclass, field

from bench.errors import ConfigError, choice, in_unit, positive
from bench.manifolds import MANIFOLDS
from bench.models.gpt import GPTConfig

GEOMETRIES = ("euclidean", *MANIFOLDS)  # euclidean: plain weights, no manifold
# model.attention.retraction: "svd" (the schema default) is every geometry's own retraction (the
# first of its choices, or its only one); a geometry that offers a choice lists it itself.
DEFAULT_RETRACTION = "svd"
RETRACTIONS = tuple(
    dict.fromkeys([DEFAULT_RETRACTION, *(r for c in MANIFOLDS.values() for r in c.retractions)])
)
KINDS = ("gpt", "hf")
INITS = ("scratch", "pretrained")


@dataclass
class AttentionConfig:
    geometry: str = "euclidean"  # euclidean | one of bench.manifolds.MANIFOLDS
    block: bool = False  # one manifold point per KV group (docs/papers/knight.md §4)
    # fixed_rank_embedded only: svd (best rank-r approximation) | orthographic (no SVD, ~4x
    # cheaper, needs steps small against S's smallest singular value)
    retraction: str = DEFAULT_RETRACTION


@dataclass
class PretrainConfig:
    domain: str = "stdlib_core"  # corpus domain the base model is pretrained on
    max_steps: int = 300
    batch_size: int = 8
    lr: float = 3e-3
    cache_dir: str = ".cache/pretrained"


@dataclass
class ModelConfig(GPTConfig):
    """The model group: the GPT architecture (bench.models.gpt.GPTConfig's fields: vocab_size,
    seq_len, d_model, n_layer, n_head, n_kv_head, d_mlp, norm, mlp, pos_emb, tie_embeddings,
    bias, dropout) plus how the model is made."""

    name: str = "gpt_tiny"
    kind: str = "gpt"  # gpt | hf
    init: str = "scratch"  # scratch | pretrained
    path: str | None = None  # local Hugging Face model directory (kind: hf)
    # a GGUF file model.path is converted from once (bench/models/convert_gguf.py): a path, or
    # <package>:<file name> (model=smollm2)
    gguf: str | None = None
    attention: AttentionConfig = field(default_factory=AttentionConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)


def check_model(cfg) -> None:
    m = cfg.model
    choice("model.init", m.init, INITS)
    choice("model.kind", m.kind, KINDS)
    choice("model.norm", m.norm, ("layernorm", "rmsnorm"))
    choice("model.mlp", m.mlp, ("gelu", "relu2"))
    choice("model.attention.geometry", m.attention.geometry, GEOMETRIES)
    retraction, geometry = m.attention.retraction, m.attention.geometry
    choice("model.attention.retraction", retraction, RETRACTIONS)
    offering = [g for g, cls in MANIFOLDS.items() if retraction in cls.retractions]
    if retraction != DEFAULT_RETRACTION and geometry not in offering:
        raise ConfigError(
            f"model.attention.retraction={retraction!r} needs model.attention.geometry="
            f"{' or '.join(offering)} (got {geometry!r}); the other geometries have one retraction"
        )
    if m.kind == "hf" and geometry != "euclidean":
        raise ConfigError(f"model.attention.geometry={geometry!r} applies to the built-in model "
                          "only; for model=hf put the adapter's update on a manifold: "
                          "adapter.geometry")
    for key in ("d_model", "n_layer", "n_head", "seq_len", "vocab_size"):
        positive(f"model.{key}", m[key])
    in_unit("model.dropout", m.dropout)
    if m.d_model % m.n_head:
        raise ConfigError(f"model.d_model={m.d_model} must be divisible by "
                          f"model.n_head={m.n_head}")
    n_kv = m.n_kv_head or m.n_head
    if n_kv < 1 or m.n_head % n_kv:
        raise ConfigError(f"model.n_kv_head={m.n_kv_head} must divide model.n_head={m.n_head}")
    if m.d_mlp is not None:
        positive("model.d_mlp", m.d_mlp)
    p = m.pretrain
    for key in ("max_steps", "batch_size", "lr"):
        positive(f"model.pretrain.{key}", p[key])
