"""Adapters: which parameters of a model train, and what happens after each optimizer step.

`ADAPTERS` is the one list of adapter names (`adapter.name`, conf/adapter/*.yaml): each class
states its own `name`, its keys (`knobs`, a dataclass) and their checks (`check`); adding an
adapter is its module, one entry below, its YAML and its test.
"""

from __future__ import annotations

from bench.adapters.balora import BaLoRA
from bench.adapters.base import Adapter, count_trainable, find_targets
from bench.adapters.dora import DoRA
from bench.adapters.full import Full
from bench.adapters.lora import LoRA
from bench.errors import ConfigError

ADAPTERS: dict[str, type[Adapter]] = {cls.name: cls for cls in (Full, LoRA, BaLoRA, DoRA)}
# the adapters with LoRA factors lora_A, lora_B (what an optimizer with needs_lora steps)
LORA_ADAPTERS = tuple(name for name, cls in ADAPTERS.items() if issubclass(cls, LoRA))


def build_adapter(cfg) -> Adapter:
    """The adapter named by `cfg.name` (adapter config group)."""
    if cfg.name not in ADAPTERS:
        raise ConfigError(
            f"adapter.name={cfg.name!r} is not allowed; allowed values: {', '.join(ADAPTERS)}"
        )
    return ADAPTERS[cfg.name](cfg)


__all__ = ["ADAPTERS", "LORA_ADAPTERS", "Adapter", "build_adapter", "count_trainable",
           "find_targets"]
