"""The corpus a run trains on: documents -> split -> tokenizer -> cached token ids -> streams.

`load_data(data_cfg, model_cfg, seq_len)` is what a run calls (bench/run.py `prepare`). Byte
tokens of the built-in domains and of data=text are today's byte streams (bench/data/corpus.py,
unchanged hashes); everything else comes through here:

1. Documents: a built-in domain's (stdlib_*, kjv), the user's files (data=text), or the records of
   data=hf (bench/data/hf.py), at most `data.max_bytes` of text in a fixed order.
2. Split: by a hash of each document's name (a record's name is a hash of its content, so
   duplicates share a split), as bench/data/corpus.py does; for data=hf, the dataset's own
   splits where its files name them, the missing ones carved from its training records by hash.
3. Tokenizer (bench/data/tokenizers.py): a BPE is trained on the training split only.
4. Token ids, encoded once in batches and cached under `data.cache_dir/tokens/` by a hash of the
   documents and the tokenizer: a run that finds them never tokenizes, so tokenizing is never on
   the training path.
5. Streams: each split's documents packed into one int32 stream with the tokenizer's
   end-of-document id between them. An instruction's prompt tokens are stored as ~id (not
   scored: bench/data/corpus.py decodes them into IGNORE_INDEX targets), its response and the
   end-of-document token after it are scored. A prompt longer than seq_len - 1 tokens keeps its
   last seq_len - 1 (the end nearest the response), so every window of seq_len targets holds a
   scored one and no batch has an undefined loss; the record counts the prompts cut.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from bench.data.corpus import (
    Corpus,
    _split_of,
    _stdlib_documents,
    _text_documents,
    load_corpus,
    split_labels,
)
from bench.data.tokenizers import (
    ByteTokenizer,
    Tokenizer,
    bpe_tokenizer,
    model_tokenizer,
    resolve_kind,
)
from bench.errors import ConfigError

SPLITS = ("train", "eval", "test")
ENCODE_CHUNK = 1024  # documents per encode_batch call: bounded memory on large datasets


@dataclass(frozen=True)
class Document:
    name: str  # what the split hashes
    text: str  # the document, or an instruction's response
    prompt: str | None = None  # an instruction's prompt: not scored
    split: str | None = None  # the dataset's own split (data=hf), else None


def documents(data_cfg) -> tuple[list[Document], str]:
    """The documents of the data source, capped at data.max_bytes of text, and its label."""
    if data_cfg.name == "hf":
        from bench.data.hf import read_records

        records, label = read_records(data_cfg)
        docs, total = [], 0
        for r in records:
            if total >= data_cfg.max_bytes:
                break
            key = f"{r.prompt}\x00{r.text}" if r.prompt is not None else r.text
            docs.append(Document(hashlib.sha256(key.encode()).hexdigest(), r.text, r.prompt,
                                 r.split))
            total += len(r.text.encode()) + len((r.prompt or "").encode())
        return docs, label
    raw = (_text_documents(list(data_cfg.paths)) if data_cfg.name == "text"
           else _stdlib_documents(data_cfg.domain))
    docs, total = [], 0
    for name, data in raw:  # the cap of load_corpus, in the same fixed order
        if total >= data_cfg.max_bytes:
            break
        data = data[: data_cfg.max_bytes - total]
        total += len(data)
        docs.append(Document(name, data.decode("utf-8", errors="replace")))
    label = f"text:{len(docs)} files" if data_cfg.name == "text" else data_cfg.domain
    return docs, label


def assign_splits(docs: list[Document], eval_fraction: float,
                  test_fraction: float) -> tuple[list[Document], list[str], str]:
    """(documents, the split of each, how they were split: 'hash', 'dataset' or 'position')."""
    if len(docs) == 1 and docs[0].prompt is None:  # one document: cut it by position
        (doc,) = docs
        cut = int(len(doc.text) * (1 - eval_fraction))
        test_cut = int(len(doc.text) * (1 - eval_fraction - test_fraction))
        parts = [doc.text[:test_cut], doc.text[test_cut:cut], doc.text[cut:]]
        docs = [Document(f"{doc.name}#{s}", t) for s, t in zip(("train", "test", "eval"), parts)]
        return docs, ["train", "test", "eval"], "position"
    own = {d.split for d in docs} - {None, "train"}
    if not own:
        return docs, split_labels([d.name for d in docs], eval_fraction, test_fraction), "hash"
    labels = []
    for d in docs:
        if d.split in own:
            labels.append(d.split)
            continue
        carved = _split_of(d.name, eval_fraction, test_fraction)  # the split the dataset lacks
        labels.append(carved if carved not in own else "train")
    return docs, labels, "dataset"


def build_tokenizer(kind: str, data_cfg, model_cfg, train_docs: list[Document]) -> Tokenizer:
    if kind == "bytes":
        return ByteTokenizer()
    if kind == "model":
        return model_tokenizer(model_cfg.path)
    texts = [t for d in train_docs for t in (d.prompt, d.text) if t]
    return bpe_tokenizer(texts, int(data_cfg.vocab_size), str(data_cfg.cache_dir))


def encode(tokenizer: Tokenizer, docs: list[Document],
           cache_dir: str) -> list[tuple[np.ndarray, np.ndarray]]:
    """(prompt ids, text ids) of every document; bpe and model tokens come from the cache when
    these documents were encoded by this tokenizer before (bytes need no cache)."""
    if tokenizer.kind == "bytes":
        return _encode(tokenizer, docs)
    h = hashlib.sha256(f"tokens:v1:{tokenizer.hash}:{len(docs)}".encode())
    for d in docs:
        for part in (d.name, d.prompt or "", d.text):
            h.update(hashlib.sha256(part.encode()).digest())
    path = Path(cache_dir) / "tokens" / f"{h.hexdigest()[:24]}.pt"
    if path.exists():
        try:
            cached = torch.load(path, weights_only=True)
            return _unflatten(cached["ids"].numpy(), cached["offsets"].numpy())
        except (OSError, RuntimeError, KeyError, EOFError):
            pass  # a torn file: encode again
    pieces = _encode(tokenizer, docs)
    flat = [a for pair in pieces for a in pair]
    offsets = np.cumsum([0] + [len(a) for a in flat])
    ids = np.concatenate(flat) if flat else np.zeros(0, np.int32)
    from bench.record import atomic_write

    atomic_write(path, lambda f: torch.save(
        {"ids": torch.from_numpy(ids.astype(np.int32)), "offsets": torch.from_numpy(offsets)}, f))
    return pieces


def _encode(tokenizer: Tokenizer, docs: list[Document]) -> list[tuple[np.ndarray, np.ndarray]]:
    out = []
    for i in range(0, len(docs), ENCODE_CHUNK):
        chunk = docs[i:i + ENCODE_CHUNK]
        texts = tokenizer.encode_batch([d.text for d in chunk])
        prompts = iter(tokenizer.encode_batch([d.prompt for d in chunk if d.prompt is not None]))
        empty = np.zeros(0, np.int32)
        out += [(next(prompts) if d.prompt is not None else empty, t)
                for d, t in zip(chunk, texts)]
    return out


def _unflatten(ids: np.ndarray, offsets: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    parts = [ids[offsets[i]:offsets[i + 1]] for i in range(len(offsets) - 1)]
    return list(zip(parts[0::2], parts[1::2]))


def pack(pieces: list[tuple[np.ndarray, np.ndarray]], labels: list[str], eos_id: int,
         max_prompt: int) -> tuple[dict[str, np.ndarray], int]:
    """Each split's stream (int32, end-of-document between documents, prompt ids as ~id) and
    the number of prompts cut to their last max_prompt tokens."""
    streams, cut = {}, 0
    eos = np.array([eos_id], dtype=np.int32)
    for split in SPLITS:
        parts = []
        for (prompt, text), label in zip(pieces, labels):
            if label != split:
                continue
            if parts:
                parts.append(eos)
            if len(prompt) > max_prompt:
                prompt, cut = prompt[len(prompt) - max_prompt:], cut + 1
            parts += [np.invert(prompt), text]  # ~id: the prompt is input, never a target
        streams[split] = np.concatenate(parts) if parts else np.zeros(0, np.int32)
    return streams, cut


def load_data(data_cfg, model_cfg, seq_len: int) -> Corpus:
    """The corpus of a run (see the module doc); raises ConfigError."""
    kind = resolve_kind(data_cfg, model_cfg)
    if kind == "bytes" and data_cfg.name != "hf":  # today's byte streams, their hashes unchanged
        corpus = load_corpus(data_cfg.name, data_cfg.domain, list(data_cfg.paths),
                             data_cfg.eval_fraction, data_cfg.max_bytes, data_cfg.test_fraction)
        corpus.meta = {"tokenizer": ByteTokenizer().meta(), "loss_tokens": "all"}
        return corpus
    docs, label = documents(data_cfg)
    docs, labels, how = assign_splits(docs, data_cfg.eval_fraction, data_cfg.test_fraction)
    train_docs = [d for d, s in zip(docs, labels) if s == "train"]
    tokenizer = build_tokenizer(kind, data_cfg, model_cfg, train_docs)
    pieces = encode(tokenizer, docs, str(data_cfg.cache_dir))
    streams, cut = pack(pieces, labels, tokenizer.eos_id, max(1, seq_len - 1))
    top = max((int(s.max()) for s in streams.values() if s.size), default=-1)
    if top >= tokenizer.vocab_size:  # a tokenizer whose ids exceed its stated vocabulary
        raise ConfigError(f"data.tokenizer={kind}: token id {top} >= its vocabulary size "
                          f"{tokenizer.vocab_size}")
    h = hashlib.sha256()
    tensors = {s: torch.from_numpy(streams[s].astype(np.int32)) for s in SPLITS}
    for s in ("train", "eval") + (("test",) if data_cfg.test_fraction > 0 else ()):
        h.update(tensors[s].numpy().tobytes())
    instruction = any(d.prompt is not None for d in docs)
    meta = {
        "tokenizer": tokenizer.meta(),
        # what every loss of the run (train, eval, test) counts
        "loss_tokens": "response" if instruction else "all",
        "documents": {s: labels.count(s) for s in SPLITS},
        "split_by": how,
    }
    if instruction:
        meta["prompts_cut"] = cut
    return Corpus(tensors["train"], tensors["eval"], h.hexdigest(), f"{label}+{kind}",
                  tensors["test"] if data_cfg.test_fraction > 0 else None,
                  vocab_size=tokenizer.vocab_size, meta=meta)
