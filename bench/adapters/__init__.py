"""Adapters: which parameters of a model train, and what happens after each optimizer step."""

from __future__ import annotations

from bench.adapters.base import Adapter, count_trainable, find_targets
from bench.config import ADAPTERS, ConfigError


def build_adapter(cfg) -> Adapter:
    """The adapter named by `cfg.name` (adapter config group)."""
    if cfg.name == "full":
        from bench.adapters.full import Full

        return Full(cfg)
    if cfg.name == "lora":
        from bench.adapters.lora import LoRA

        return LoRA(cfg)
    if cfg.name == "balora":
        from bench.adapters.balora import BaLoRA

        return BaLoRA(cfg)
    raise ConfigError(
        f"adapter.name={cfg.name!r} is not allowed; allowed values: {', '.join(ADAPTERS)}"
    )


__all__ = ["Adapter", "build_adapter", "count_trainable", "find_targets"]
