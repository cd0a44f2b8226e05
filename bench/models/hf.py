"""Local Hugging Face causal LMs (extra `hf`): `model=hf model.path=/path/to/model`.

`load_hf(model_cfg)` loads any causal LM that `transformers.AutoModelForCausalLM` loads from a
local directory (a `save_pretrained` folder: `config.json` plus weights); nothing is downloaded
(`local_files_only=True`) and no code shipped with the model runs (`trust_remote_code=False`: a
folder whose config asks for its own modelling code is refused). The weights are loaded in
float32; `trainer.dtype=bfloat16` still autocasts on CUDA. The model is wrapped so that it speaks
the harness's contract:

    logits, loss = model(x, y)   # x, y: (B, T) byte tokens, y = x shifted by one (data loader)
    model.cfg.seq_len            # min(config.max_position_embeddings, model.seq_len)

The loss is the plain cross-entropy of the logits against y (the data loader already shifted the
targets; the model's own shifted loss is not used; targets IGNORE_INDEX, an instruction's
prompt, are skipped). The token ids are the model's own tokenizer's when its folder ships one
(`data.tokenizer=model`, the default there; bench/data/tokenizers.py): a pretrained model is
never fed byte ids its embeddings do not mean. A folder without a tokenizer (a model built from
a config) gets bytes or a trained BPE, and its embedding must have a row for every id
(`check_vocab`). `model.gguf` names a GGUF file the folder is converted from once
(bench/models/convert_gguf.py; model=smollm2).

Which modules an adapter wraps (`adapter.target_modules`): our `lora`/`balora` adapters wrap
`nn.Linear` modules whose name equals an entry or ends with `.<entry>` (bench/adapters/base.py;
an unmatched list is an error that prints the model's Linear names).
  - Llama, Mistral, Qwen2, Gemma, OLMo, ... (separate `nn.Linear` projections):
      attention  `adapter.target_modules=[q_proj,k_proj,v_proj,o_proj]`
      MLP        `adapter.target_modules=[gate_proj,up_proj,down_proj]` (the BaLoRA paper's choice)
  - GPT-2 (and GPT-2-like models built from `transformers.Conv1D`): the attention is one fused
    q/k/v `c_attn` plus the output `c_proj`, and the MLP is `c_fc` plus another `c_proj`. These
    are `Conv1D` modules (a Linear with a transposed weight), not `nn.Linear`, so our adapters do
    not wrap them; use a Llama-like model here, or PEFT on GPT-2 with
    `LoraConfig(target_modules=["c_attn", "c_proj"], fan_in_fan_out=True)` and
    `bench.adapters.peft_interop.BalancedLoRACallback` for BaLoRA.
`attention_modules(model)` lists the attention projections found by these name patterns.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from bench.errors import ConfigError

BYTE_VOCAB = 256  # byte-level data: token ids 0..255

# Attention projections by module-name suffix: separate q/k/v/o (Llama-like) or fused (GPT-2).
ATTENTION_PATTERNS = {
    "q": ("q_proj", "query"),
    "k": ("k_proj", "key"),
    "v": ("v_proj", "value"),
    "o": ("o_proj", "out_proj", "dense"),
    "qkv": ("c_attn", "qkv_proj", "query_key_value", "Wqkv"),
}


@dataclass
class HFModelInfo:
    """What the harness reads from a model (`model.cfg`): the context length and vocabulary."""

    name: str
    path: str
    seq_len: int
    vocab_size: int


class HFCausalLM(nn.Module):
    """A `transformers` causal LM with the harness's interface: `model(x, y) -> (logits, loss)`."""

    def __init__(self, model: nn.Module, info: HFModelInfo):
        super().__init__()
        self.model = model
        self.cfg = info

    @property
    def config(self):
        """The wrapped model's `transformers` config."""
        return self.model.config

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None):
        logits = self.model(input_ids=x, use_cache=False).logits  # (B, T, V)
        loss = None
        if y is not None:
            loss = F.cross_entropy(logits.flatten(0, 1).float(), y.flatten())
        return logits, loss


def _vocab_size(model: nn.Module) -> int:
    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if emb is not None and hasattr(emb, "num_embeddings"):
        return int(emb.num_embeddings)
    return int(getattr(model.config, "vocab_size", 0) or 0)


def load_hf(model_cfg) -> HFCausalLM:
    """Load the causal LM in the local directory `model_cfg.path`; raises ConfigError."""
    path = model_cfg.path
    if path is None or str(path).strip() == "":
        raise ConfigError(
            "model.path is not set: model=hf needs model.path=/path/to/a/local/model/directory "
            "(a transformers `save_pretrained` folder; nothing is downloaded)"
        )
    directory = Path(str(path)).expanduser()
    if not directory.is_dir():
        raise ConfigError(f"model.path={str(path)!r} is not a directory")
    try:
        from transformers import AutoModelForCausalLM
    except ImportError as e:
        raise ConfigError(
            "model.kind=hf needs the `hf` extra (transformers): pip install -e '.[hf]'"
        ) from e
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a bar per load of hundreds of tensors: noise in run logs
    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(directory), local_files_only=True, trust_remote_code=False, dtype=torch.float32
        )
    except pickle.UnpicklingError:  # torch's message advises weights_only=False: never here
        raise ConfigError(
            f"model.path={str(path)!r}: its weights file holds objects other than tensors "
            "(a pickle that would run code), refused; allowed: safetensors or a weights-only "
            "torch file") from None
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        first = " ".join(str(e).split())[:200]
        raise ConfigError(
            f"model.path={str(path)!r}: transformers cannot load a causal LM from this local "
            f"directory ({type(e).__name__}: {first})"
        ) from None
    vocab = _vocab_size(model)
    if vocab < BYTE_VOCAB:
        raise ConfigError(
            f"model.path={str(path)!r}: the model's vocabulary has {vocab} entries, but the data "
            f"is byte-level and needs at least {BYTE_VOCAB}"
        )
    seq_len = _seq_len(model.config, model_cfg)
    info = HFModelInfo(
        name=str(model_cfg.name), path=str(directory), seq_len=seq_len, vocab_size=vocab
    )
    return HFCausalLM(model, info)


def _seq_len(config, model_cfg) -> int:
    max_pos = getattr(config, "max_position_embeddings", None)
    return int(model_cfg.seq_len) if max_pos is None else min(int(max_pos), model_cfg.seq_len)


def context_length(model_cfg) -> int:
    """The window a model of this config trains on (its model_seq_len), before loading it:
    model.seq_len, capped for model=hf by the folder's max_position_embeddings."""
    if model_cfg.kind != "hf" or not model_cfg.path:
        return int(model_cfg.seq_len)
    try:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(str(Path(str(model_cfg.path)).expanduser()),
                                            local_files_only=True, trust_remote_code=False)
    except (ImportError, OSError, ValueError, KeyError):
        return int(model_cfg.seq_len)  # load_hf says what is wrong with the folder
    return _seq_len(config, model_cfg)


def check_vocab(model: HFCausalLM, vocab_size: int, tokenizer: str) -> None:
    """The model's embedding has a row for every id of the data's tokenizer."""
    rows = model.cfg.vocab_size
    if vocab_size > rows:
        raise ConfigError(
            f"data.tokenizer={tokenizer}: its vocabulary has {vocab_size} tokens but the "
            f"embedding of model.path={model.cfg.path!r} has {rows} rows; allowed: a tokenizer "
            f"of at most {rows} tokens (data.vocab_size for bpe)"
        )


def attention_modules(model: nn.Module) -> dict[str, list[str]]:
    """Names of the attention projections found by `ATTENTION_PATTERNS` (module-name suffix).

    Returns {"q": [...], "k": [...], "v": [...], "o": [...], "qkv": [...]} (empty lists for the
    kinds the model does not have). `dense` and `c_proj` are ambiguous (GPT-2's `c_proj` is the
    attention output inside `attn` and the MLP output inside `mlp`), so output projections are
    only taken inside a module whose name contains `attn` or `attention`.
    """
    found: dict[str, list[str]] = {kind: [] for kind in ATTENTION_PATTERNS}
    for name, _ in model.named_modules():
        last = name.rsplit(".", 1)[-1]
        parent = name.rsplit(".", 1)[0].lower() if "." in name else ""
        in_attention = "attn" in parent or "attention" in parent
        for kind, suffixes in ATTENTION_PATTERNS.items():
            if last in suffixes and (kind != "o" or in_attention):
                found[kind].append(name)
        if last == "c_proj" and in_attention:
            found["o"].append(name)
    return found
