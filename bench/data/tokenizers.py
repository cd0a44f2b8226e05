"""Tokenizers (`data.tokenizer`): what turns a document's text into token ids.

    bytes   the UTF-8 bytes, 256 ids (the built-in models' default; end of document: byte 0)
    bpe     a byte-level BPE of `data.vocab_size` tokens trained with the `tokenizers` library on
            the training split only (never on validation or test text), cached by a hash of that
            text and the vocabulary size: the same corpus gives the same tokenizer on any machine
    model   the Hugging Face model's own tokenizer (`AutoTokenizer` from `model.path`, local files
            only; the default for a model=hf folder that has one)

Each one encodes a batch of texts at once (bpe and model in the library's parallel Rust code)
into int32 arrays, has an end-of-document id the packer puts between documents, and a `hash` of
its definition that goes into the run record and into the key of the token cache, so a changed
tokenizer never reads another's tokens.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from bench.errors import ConfigError

TOKENIZERS = ("bytes", "bpe", "model")
BYTE_VOCAB = 256
BYTE_EOS = 0  # the byte between documents (bench.data.corpus.SEPARATOR)
BPE_EOS = "<|endoftext|>"  # GPT-2's name for it; the BPE's id 0
BPE_MIN_VOCAB = BYTE_VOCAB + 1  # the 256 byte symbols and the end-of-document token
# Files that make a Hugging Face model folder one with its own tokenizer.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


class Tokenizer:
    """The interface the packer needs: kind, vocab_size, eos_id, hash, encode_batch."""

    kind: str
    vocab_size: int
    eos_id: int
    hash: str

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        raise NotImplementedError

    def meta(self) -> dict:
        """What the run record states about the tokenizer (meta.tokenizer)."""
        return {"kind": self.kind, "vocab_size": self.vocab_size, "eos_id": self.eos_id,
                "hash": self.hash}


class ByteTokenizer(Tokenizer):
    kind, vocab_size, eos_id = "bytes", BYTE_VOCAB, BYTE_EOS
    hash = hashlib.sha256(b"bytes:utf-8").hexdigest()

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        return [np.frombuffer(t.encode("utf-8"), dtype=np.uint8).astype(np.int32) for t in texts]


class _RustTokenizer(Tokenizer):
    """A `tokenizers.Tokenizer` (our BPE, or the fast backend of a model's tokenizer)."""

    def __init__(self, kind: str, tokenizer, eos_id: int, vocab_size: int | None = None):
        self.kind, self.tokenizer, self.eos_id = kind, tokenizer, int(eos_id)
        self.vocab_size = int(vocab_size or tokenizer.get_vocab_size(with_added_tokens=True))
        self.hash = hashlib.sha256(tokenizer.to_str().encode()).hexdigest()

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        # no special tokens: the packer adds the end-of-document token itself
        encodings = self.tokenizer.encode_batch(texts, add_special_tokens=False)
        return [np.asarray(e.ids, dtype=np.int32) for e in encodings]


def train_bpe(texts: Iterable[str], vocab_size: int):
    """A byte-level BPE (GPT-2's scheme: every byte is a symbol, so nothing is out of
    vocabulary) of at most `vocab_size` tokens, the end-of-document token first (id 0). Training
    is deterministic: the same texts give the same merges."""
    from tokenizers import Tokenizer as RustTokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers

    tokenizer = RustTokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[BPE_EOS], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )  # fmt: skip
    tokenizer.train_from_iterator(texts, trainer)
    return tokenizer


def bpe_tokenizer(train_texts: list[str], vocab_size: int, cache_dir: str) -> Tokenizer:
    """The BPE of the training split `train_texts`: loaded from `cache_dir` when one was trained
    on the same text with the same vocabulary size, trained and cached otherwise (under a file
    lock, so parallel workers train it once)."""
    from filelock import FileLock
    from tokenizers import Tokenizer as RustTokenizer

    from bench.record import atomic_write

    h = hashlib.sha256(f"bpe:v1:{vocab_size}:{len(train_texts)}".encode())
    for text in train_texts:
        h.update(hashlib.sha256(text.encode("utf-8")).digest())
    path = Path(cache_dir) / "tokenizers" / f"bpe-{vocab_size}-{h.hexdigest()[:16]}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        if not path.exists():
            trained = train_bpe(train_texts, vocab_size)
            atomic_write(path, lambda f: f.write(trained.to_str().encode()))
    tokenizer = RustTokenizer.from_file(str(path))
    return _RustTokenizer("bpe", tokenizer, tokenizer.token_to_id(BPE_EOS))


def has_own_tokenizer(model_path: str | None) -> bool:
    """Whether a local model folder ships a tokenizer (then it is a pretrained model whose
    embeddings mean that tokenizer's ids)."""
    return bool(model_path) and any((Path(str(model_path)).expanduser() / f).is_file()
                                    for f in TOKENIZER_FILES)


def model_tokenizer(model_path: str) -> Tokenizer:
    """The tokenizer shipped in the local model folder `model_path` (nothing downloaded)."""
    try:
        from transformers import AutoTokenizer
    except ImportError as e:
        raise ConfigError(
            "data.tokenizer=model needs the `hf` extra (transformers): pip install -e '.[hf]'"
        ) from e
    try:
        hf = AutoTokenizer.from_pretrained(str(Path(str(model_path)).expanduser()),
                                           local_files_only=True, trust_remote_code=False)
    except (OSError, ValueError, KeyError) as e:
        raise ConfigError(
            f"data.tokenizer=model: model.path={str(model_path)!r} holds no tokenizer that "
            f"transformers can load ({type(e).__name__}: {' '.join(str(e).split())[:160]})"
        ) from e
    backend = getattr(hf, "backend_tokenizer", None)
    if backend is None:  # a slow (pure Python) tokenizer: transformers has no Rust backend
        raise ConfigError(
            f"data.tokenizer=model: model.path={str(model_path)!r} has only a slow tokenizer "
            f"({type(hf).__name__}); save it with a tokenizer.json (a fast tokenizer)"
        )
    if hf.eos_token_id is None:
        raise ConfigError(
            f"data.tokenizer=model: the tokenizer of model.path={str(model_path)!r} has no "
            "end-of-sequence token to put between documents (set eos_token in its config)"
        )
    return _RustTokenizer("model", backend, hf.eos_token_id, vocab_size=len(hf))


def resolve_kind(data_cfg, model_cfg) -> str:
    """data.tokenizer, or its default when unset: the model's own tokenizer for a model=hf
    folder that ships one, bytes otherwise (the built-in models, an HF model built from a
    config)."""
    if data_cfg.tokenizer is not None:
        return str(data_cfg.tokenizer)
    if model_cfg.kind == "hf" and (model_cfg.get("gguf") or has_own_tokenizer(model_cfg.path)):
        return "model"
    return "bytes"
