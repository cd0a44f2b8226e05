"""Corpora: the built-in domains, the user's files, split by document, and the batches.

Nothing is downloaded: the built-in domains are the source of the standard library that ships
with the pinned Python, and the King James Bible from an installed package (`kjv`,
bench/data/kjv.py), disjoint, so that a fine-tuning study can pretrain on one and adapt to
another. Files are split deterministically by a hash of their name into train,
validation ("eval": selects learning rates and is the curve of every run) and, with
`test_fraction` > 0, test (reported once, at the end of a run; docs/design.md §8): a document with
hash u in [0, 1) is validation for u < eval_fraction, test for u < eval_fraction + test_fraction,
train otherwise, so adding a test split leaves the validation set unchanged. The content hash of
the token streams goes into the run record.

`load_corpus` gives byte streams (uint8, vocabulary 256); other tokenizers and data=hf go
through bench/data/tokenized.py, whose streams are int32 and may mark tokens that are not scored
(an instruction's prompt): such a token is stored as ~id = -id - 1. The batches below decode it:
the input keeps the id, the target becomes IGNORE_INDEX, which `F.cross_entropy` skips, so the
loss counts the scored tokens only and neither the training loop nor the models need a mask.
"""

from __future__ import annotations

import hashlib
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path

import torch

from bench.errors import ConfigError

# Packages of the standard library that form the `stdlib_pkgs` domain; `stdlib_core` is every
# top-level module; `stdlib_docs` is the English reference text of pydoc_data (one doc per topic).
PACKAGES = (
    "asyncio", "concurrent", "ctypes", "curses", "dbm", "email", "html", "http", "importlib",
    "json", "logging", "multiprocessing", "sqlite3", "tomllib", "unittest", "urllib", "wsgiref",
    "xml", "xmlrpc", "zoneinfo",
)  # fmt: skip
DOMAINS = ("stdlib_core", "stdlib_pkgs", "stdlib_docs", "kjv")
SEPARATOR = 0  # byte between documents
IGNORE_INDEX = -100  # a target the loss skips (F.cross_entropy's default ignore_index)


@dataclass
class Corpus:
    train: torch.Tensor  # (N_train,) uint8 byte tokens, or int32 token ids (~id: not scored)
    eval: torch.Tensor  # (N_eval,): validation
    content_hash: str  # sha256 of train + eval (+ test, when there is one) streams
    name: str
    test: torch.Tensor | None = None  # (N_test,); None without a test split
    vocab_size: int = 256  # the tokenizer's vocabulary (bytes: 256)
    meta: dict = field(default_factory=dict)  # the tokenizer and the loss, for the run record

    def __repr__(self) -> str:
        test = f", {self.test.numel()} test" if self.test is not None else ""
        unit = "bytes" if self.train.dtype == torch.uint8 else "tokens"
        return (f"Corpus({self.name}: {self.train.numel()} train, {self.eval.numel()} eval"
                f"{test} {unit})")


def _stdlib_documents(domain: str) -> list[tuple[str, bytes]]:
    """(name, bytes) of each document of a built-in domain, in a fixed order."""
    root = Path(sysconfig.get_paths()["stdlib"])
    if domain == "kjv":
        from bench.data.kjv import kjv_documents

        return kjv_documents()
    if domain == "stdlib_core":
        files = sorted(root.glob("*.py"))
    elif domain == "stdlib_pkgs":
        files = sorted(
            f for pkg in PACKAGES for f in (root / pkg).rglob("*.py") if "test" not in f.parts
        )
    elif domain == "stdlib_docs":
        from pydoc_data.topics import topics

        return [(key, topics[key].encode("utf-8")) for key in sorted(topics)]
    else:
        raise ConfigError(
            f"data.domain={domain!r} is not allowed; allowed values: {', '.join(DOMAINS)}"
        )
    return [(str(f.relative_to(root)), f.read_bytes()) for f in files]


def _text_documents(paths: list[str]) -> list[tuple[str, bytes]]:
    docs = []
    for p in paths:
        path = Path(p).expanduser()
        if not path.is_file():
            raise ConfigError(f"data.paths: {p!r} does not exist or is not a file")
        data = path.read_bytes()
        if not data:
            raise ConfigError(f"data.paths: {p!r} is empty")
        docs.append((str(path), data))
    return docs


def _split_of(name: str, eval_fraction: float, test_fraction: float) -> str:
    """'eval', 'test' or 'train' from u = the document name's sha256 as a number in [0, 1)."""
    digest = hashlib.sha256(name.encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    return "eval" if u < eval_fraction else "test" if u < eval_fraction + test_fraction else "train"


def split_labels(names: list[str], eval_fraction: float, test_fraction: float) -> list[str]:
    """The split ('train', 'eval' or 'test') of each of several documents, by the hash of its
    name; a corpus too small for every split to get one falls back to an order-based split
    (test before eval, at the end)."""
    labels = [_split_of(n, eval_fraction, test_fraction) for n in names]
    if "eval" not in labels or "train" not in labels or (test_fraction > 0
                                                         and "test" not in labels):
        k = max(1, int(len(names) * eval_fraction))
        j = max(1, int(len(names) * test_fraction)) if test_fraction > 0 else 0
        labels = ["train"] * (len(names) - k - j) + ["test"] * j + ["eval"] * k
    return labels


def _join(docs: list[bytes]) -> torch.Tensor:
    data = bytes([SEPARATOR]).join(docs)
    return (
        torch.frombuffer(bytearray(data), dtype=torch.uint8)
        if data
        else torch.empty(0, dtype=torch.uint8)
    )


def load_corpus(
    name: str = "builtin",
    domain: str = "stdlib_core",
    paths: list[str] | None = None,
    eval_fraction: float = 0.1,
    max_bytes: int = 4_000_000,
    test_fraction: float = 0.0,
) -> Corpus:
    """Load a corpus and split it by document (hash of its name) into train, eval (validation)
    and, when test_fraction > 0, test."""
    docs = _text_documents(list(paths or [])) if name == "text" else _stdlib_documents(domain)
    # Cap the size in a fixed document order, so every machine sees the same bytes.
    kept, total = [], 0
    for doc_name, data in docs:
        if total >= max_bytes:
            break
        kept.append((doc_name, data[: max_bytes - total]))
        total += len(kept[-1][1])
    if len(kept) == 1:  # a single file: its last eval_fraction is eval, test_fraction before it
        doc_name, data = kept[0]
        cut = int(len(data) * (1 - eval_fraction))
        test_cut = int(len(data) * (1 - eval_fraction - test_fraction))
        train, evals, tests = [data[:test_cut]], [data[cut:]], [data[test_cut:cut]]
    else:
        splits = split_labels([n for n, _ in kept], eval_fraction, test_fraction)
        train, evals, tests = ([d for (_, d), s in zip(kept, splits, strict=True) if s == part]
                               for part in ("train", "eval", "test"))
    train_t, eval_t = _join(train), _join(evals)
    h = hashlib.sha256(train_t.numpy().tobytes())
    h.update(eval_t.numpy().tobytes())
    test_t = None
    if test_fraction > 0:
        test_t = _join(tests)
        h.update(test_t.numpy().tobytes())
    label = f"text:{len(kept)} files" if name == "text" else domain
    return Corpus(train_t, eval_t, h.hexdigest(), label, test_t)


def check_context(corpus: Corpus, seq_len: int) -> None:
    """The corpus must hold at least one full window (seq_len + 1 tokens) in each split."""
    splits = [corpus.train, corpus.eval] + ([corpus.test] if corpus.test is not None else [])
    if min(s.numel() for s in splits) < seq_len + 1:
        test = f" / {corpus.test.numel()} test" if corpus.test is not None else ""
        raise ConfigError(
            f"model.seq_len={seq_len} is larger than the corpus ({corpus.name}: "
            f"{corpus.train.numel()} train / {corpus.eval.numel()} eval{test} tokens)"
        )


def get_batch(data: torch.Tensor, batch_size: int, seq_len: int, seed: int, step: int):
    """Random windows (x, y) of shape (B, T), a pure function of (seed, step): resumable."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + step)
    starts = torch.randint(0, data.numel() - seq_len - 1, (batch_size,), generator=g)
    return _windows(data, starts, seq_len)


def eval_batches(data: torch.Tensor, batch_size: int, seq_len: int, n_batches: int):
    """A fixed eval set: n_batches of evenly spaced windows (the same for every run)."""
    n = batch_size * n_batches
    starts = torch.linspace(0, data.numel() - seq_len - 1, n).long()
    return [_windows(data, s, seq_len) for s in starts.split(batch_size)]


def _windows(data: torch.Tensor, starts: torch.Tensor, seq_len: int):
    idx = starts[:, None] + torch.arange(seq_len + 1)  # (B, T + 1)
    chunk = data[idx].long()
    x, y = chunk[:, :-1], chunk[:, 1:]
    if data.dtype != torch.uint8:  # a stream that may hold unscored tokens (~id)
        x = torch.where(x < 0, ~x, x)
        y = torch.where(y < 0, IGNORE_INDEX, y)
    return x, y
