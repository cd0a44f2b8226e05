"""The `data` config group: which corpus, how it is split, how much of it is evaluated."""

from __future__ import annotations

from dataclasses import dataclass, field

from bench.errors import ConfigError, at_least, choice, positive

SOURCES = ("builtin", "text")


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


def check_data(cfg) -> None:
    d = cfg.data
    choice("data.name", d.name, SOURCES)
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
