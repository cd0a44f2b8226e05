"""The `data` config group: which corpus, how it is split, how much of it is evaluated."""

from __future__ import annotations

from dataclasses import dataclass, field

from bench.data.tokenizers import BPE_MIN_VOCAB, TOKENIZERS, has_own_tokenizer
from bench.errors import ConfigError, at_least, choice, positive

SOURCES = ("builtin", "text", "hf")


@dataclass
class DataConfig:
    name: str = "builtin"  # builtin | text
    domain: str = "stdlib_docs"  # builtin corpus domain to train on (fine-tuning target)
    paths: list[str] = field(default_factory=list)  # data=text: the user's files
    eval_fraction: float = 0.1  # validation: selects, and is every run's curve
    eval_batches: int = 4
    max_bytes: int = 4_000_000  # cap on corpus size (bytes) per domain
    # test: reported once, at a run's end (final_test_loss); 0 = no test split. The studies set
    # 0.1 and 16 batches (>= 128 windows; docs/design.md §8)
    test_fraction: float = 0.0
    test_batches: int = 16
    # Tokens (bench/data/tokenized.py). tokenizer: bytes | bpe | model; None: model for a
    # model=hf folder with its own tokenizer, bytes otherwise
    tokenizer: str | None = None
    vocab_size: int = 4096  # data.tokenizer=bpe: the vocabulary it trains (GPT-2: 50257)
    path: str | None = None  # data=hf: a file, a folder, or a dataset of the local HF cache
    text_field: str = "text"  # data=hf: plain text
    prompt_field: str | None = None  # data=hf instruction data: the prompt, not scored
    response_field: str | None = None  # ... and the response, scored
    allow_download: bool = False  # data=hf: may a dataset name be downloaded
    cache_dir: str = ".cache/data"  # trained tokenizers and token ids, keyed by content


def check_data(cfg) -> None:
    """The data keys, and the tokenizer against the model it feeds."""
    d, m = cfg.data, cfg.model
    choice("data.name", d.name, SOURCES)
    if d.tokenizer is not None:
        choice("data.tokenizer", d.tokenizer, TOKENIZERS)
    if d.tokenizer == "bpe" and d.vocab_size < BPE_MIN_VOCAB:
        raise ConfigError(f"data.vocab_size={d.vocab_size} must be >= {BPE_MIN_VOCAB} (the 256 "
                          "byte symbols of a byte-level BPE and its end-of-document token)")
    if d.tokenizer == "model" and m.kind != "hf":
        raise ConfigError("data.tokenizer=model needs model=hf (a model folder with its own "
                          "tokenizer); allowed for the built-in models: bytes, bpe")
    if d.tokenizer in ("bytes", "bpe") and m.kind == "hf" and (m.gguf or has_own_tokenizer(m.path)):
        raise ConfigError(f"data.tokenizer={d.tokenizer} with model.path={m.path!r}: a pretrained "
                          "model with its own tokenizer, whose embeddings mean nothing for other "
                          "token ids; allowed: data.tokenizer=model")
    if d.tokenizer == "bpe" and m.kind == "gpt" and m.init == "pretrained":
        raise ConfigError("data.tokenizer=bpe with model.init=pretrained: the built-in base is "
                          "pretrained on bytes; allowed: data.tokenizer=bytes, or "
                          "model.init=scratch")
    if (d.prompt_field is None) != (d.response_field is None):
        raise ConfigError(f"data.prompt_field={d.prompt_field!r}, data.response_field="
                          f"{d.response_field!r}: set both (instruction data: the prompt is not "
                          "scored) or neither (plain text from data.text_field)")
    if d.name == "hf" and not d.path:
        raise ConfigError("data.path is not set: data=hf needs data.path=<a .jsonl, .json, "
                          ".parquet, .csv or .txt file, a folder of them, or a dataset name of "
                          "the local Hugging Face cache>")
    if d.name != "hf" and (d.path or d.prompt_field):
        key = "data.path" if d.path else "data.prompt_field"
        raise ConfigError(f"{key} applies to data=hf only (got data.name={d.name!r})")
    if d.name == "text" and not d.paths:
        raise ConfigError("data.paths is empty: data=text needs data.paths=[file, ...]")
    if d.name == "text" and len(set(d.paths)) < len(d.paths):
        twice = sorted({p for p in d.paths if list(d.paths).count(p) > 1})
        raise ConfigError(f"data.paths lists {', '.join(twice)} more than once: allowed values: "
                          "distinct files (a file twice would put copies in train and validation)")
    if not 0 < d.eval_fraction < 1:
        raise ConfigError(f"data.eval_fraction={d.eval_fraction} must be in (0, 1)")
    if not 0 <= d.test_fraction < 1 - d.eval_fraction:
        raise ConfigError(
            f"data.test_fraction={d.test_fraction} must be in [0, 1 - data.eval_fraction"
            f" = {1 - d.eval_fraction:g}): 0 (no test split) or the share of documents "
            "held out for the test loss")
    at_least("data.eval_batches", d.eval_batches, 1)
    at_least("data.test_batches", d.test_batches, 1)
    positive("data.max_bytes", d.max_bytes)
