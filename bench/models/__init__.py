"""Models: the built-in GPT (gpt.py) and local Hugging Face causal LMs (hf.py)."""

from __future__ import annotations

import torch

from bench.models.gpt import GPT, GPTConfig

GPT_KEYS = (
    "vocab_size",
    "seq_len",
    "d_model",
    "n_layer",
    "n_head",
    "n_kv_head",
    "d_mlp",
    "norm",
    "mlp",
    "pos_emb",
    "tie_embeddings",
    "bias",
    "dropout",
)


def gpt_config(model_cfg) -> GPTConfig:
    return GPTConfig(**{k: model_cfg[k] for k in GPT_KEYS})


def build_model(cfg):
    """(model, source corpus or None) for the run config `cfg`.

    `model.init=pretrained` loads (or first trains, once, and caches) a base model pretrained on
    `model.pretrain.domain`; the source corpus is returned so its eval loss can be watched.
    """
    m = cfg.model
    if m.kind == "hf":
        from bench.models.hf import load_hf

        return load_hf(m), None
    torch.manual_seed(cfg.seed)
    model = GPT(gpt_config(m))
    source = None
    if m.init == "pretrained":
        from bench.pretrain import load_pretrained

        state, source = load_pretrained(cfg)
        model.load_state_dict(state)
    if m.attention.geometry != "euclidean":
        from bench.models.lowrank_attention import to_manifold_attention

        options = {}
        if m.attention.retraction != "svd":  # only fixed_rank_embedded has a choice (validate)
            options["retraction"] = m.attention.retraction
        model = to_manifold_attention(model, m.attention.geometry, m.attention.block, **options)
    return model, source
