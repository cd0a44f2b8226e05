"""Byte-level corpora: the built-in one from the Python standard library, or the user's files.

Nothing is downloaded: the built-in corpus is the source of the standard library that ships with
the pinned Python, in disjoint *domains* so that a fine-tuning study can pretrain on one and
adapt to another. Files are split into train/eval deterministically by a hash of their name, and
the content hash of the token streams goes into the run record.
"""

from __future__ import annotations

import hashlib
import sysconfig
from dataclasses import dataclass
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
DOMAINS = ("stdlib_core", "stdlib_pkgs", "stdlib_docs")
SEPARATOR = 0  # byte between documents


@dataclass
class Corpus:
    train: torch.Tensor  # (N_train,) uint8 byte tokens
    eval: torch.Tensor  # (N_eval,) uint8
    content_hash: str  # sha256 of train + eval bytes
    name: str

    def __repr__(self) -> str:
        return f"Corpus({self.name}: {self.train.numel()} train, {self.eval.numel()} eval bytes)"


def _stdlib_documents(domain: str) -> list[tuple[str, bytes]]:
    """(name, bytes) of each document of a built-in domain, in a fixed order."""
    root = Path(sysconfig.get_paths()["stdlib"])
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


def _is_eval(name: str, fraction: float) -> bool:
    digest = hashlib.sha256(name.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


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
) -> Corpus:
    """Load a corpus and split it into train/eval by document (hash of its name)."""
    docs = _text_documents(list(paths or [])) if name == "text" else _stdlib_documents(domain)
    # Cap the size in a fixed document order, so every machine sees the same bytes.
    kept, total = [], 0
    for doc_name, data in docs:
        if total >= max_bytes:
            break
        kept.append((doc_name, data[: max_bytes - total]))
        total += len(kept[-1][1])
    if len(kept) == 1:  # a single file: the last eval_fraction of it is the eval split
        doc_name, data = kept[0]
        cut = int(len(data) * (1 - eval_fraction))
        train, evals = [data[:cut]], [data[cut:]]
    else:
        train = [d for n, d in kept if not _is_eval(n, eval_fraction)]
        evals = [d for n, d in kept if _is_eval(n, eval_fraction)]
        if not evals or not train:  # tiny corpora: fall back to an order-based split
            k = max(1, int(len(kept) * eval_fraction))
            train, evals = [d for _, d in kept[:-k]], [d for _, d in kept[-k:]]
    train_t, eval_t = _join(train), _join(evals)
    h = hashlib.sha256(train_t.numpy().tobytes())
    h.update(eval_t.numpy().tobytes())
    label = f"text:{len(kept)} files" if name == "text" else domain
    return Corpus(train_t, eval_t, h.hexdigest(), label)


def check_context(corpus: Corpus, seq_len: int) -> None:
    """The corpus must hold at least one full window (seq_len + 1 tokens) in each split."""
    shortest = min(corpus.train.numel(), corpus.eval.numel())
    if shortest < seq_len + 1:
        raise ConfigError(
            f"model.seq_len={seq_len} is larger than the corpus ({corpus.name}: "
            f"{corpus.train.numel()} train / {corpus.eval.numel()} eval tokens)"
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
    return chunk[:, :-1], chunk[:, 1:]
