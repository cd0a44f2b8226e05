"""Models: the built-in GPT (gpt.py) and local Hugging Face causal LMs (hf.py).

Building a model never trains one: a fine-tuning run loads (or first pretrains) its base weights
through bench.pretrain and hands them here as `state`.
"""

from __future__ import annotations

import dataclasses

from bench.errors import ConfigError
from bench.models.gpt import GPT, GPTConfig

# The architecture keys of the model config group: the fields of GPTConfig, which the schema's
# ModelConfig (bench/config.py) extends, so the architecture is declared once.
GPT_KEYS = tuple(f.name for f in dataclasses.fields(GPTConfig))


def gpt_config(model_cfg) -> GPTConfig:
    """The GPT architecture of a model config group (any mapping with GPTConfig's keys)."""
    return GPTConfig(**{k: model_cfg[k] for k in GPT_KEYS})


def build_model(model_cfg, state: dict | None = None):
    """The model of the `model` config group: a local Hugging Face model (`kind: hf`) or the
    built-in GPT, loaded from `state` (a GPT state_dict, e.g. the pretrained base) when given,
    then its attention put on `attention.geometry` when that is not euclidean. Parameters are
    drawn from torch's global RNG: seed it first."""
    if model_cfg.kind == "hf":
        from bench.models.hf import load_hf

        return load_hf(model_cfg)
    model = GPT(gpt_config(model_cfg))
    if state is not None:
        try:
            model.load_state_dict(state)
        except RuntimeError as e:  # another architecture's weights
            first = " ".join(str(e).split())[:200]
            raise ConfigError(f"the pretrained base does not fit model={model_cfg.name} "
                              f"({first}); delete its cache folder to pretrain it again") from None
    attention = model_cfg.attention
    if attention.geometry != "euclidean":
        from bench.models.lowrank_attention import to_manifold_attention

        options = {}
        if attention.retraction != "svd":  # only fixed_rank_embedded has a choice (validate)
            options["retraction"] = attention.retraction
        model = to_manifold_attention(model, attention.geometry, attention.block, **options)
    return model
