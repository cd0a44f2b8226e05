"""What every adapter is: it picks the trainable parameters of a model and may act after a step.

`find_targets` is PEFT's find-and-wrap rule: a module is targeted when its name equals an entry of
`target_modules` or ends with `.<entry>` (`q` targets `blocks.0.attn.q`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch.nn as nn

from bench.errors import ConfigError


@dataclass
class AdapterKnobs:
    """The keys every adapter has (`adapter.<key>`); an adapter with more subclasses this and
    names it as its `knobs` (bench.config builds the group's schema from every adapter's)."""

    name: str = "full"
    target_modules: list[str] = field(default_factory=lambda: ["q", "k", "v", "o"])


def find_targets(model: nn.Module, target_modules: list[str]) -> list[tuple[str, nn.Linear]]:
    """The Linear modules named by `target_modules`; an error lists the model's Linear names."""
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    found = [
        (name, mod)
        for name, mod in linears
        if any(name == t or name.endswith("." + t) for t in target_modules)
    ]
    if not found:
        short = sorted({n.split(".")[-1] for n, _ in linears})
        raise ConfigError(
            f"adapter.target_modules={list(target_modules)} matches no Linear module; the model's "
            f"Linear modules are named (last part): {', '.join(short)}"
        )
    return found


class Adapter:
    """Base class. Subclasses set up the model in `apply` and may act in `after_step`; each
    states its `name`, its config keys (`knobs`, a dataclass) and checks their values (`check`)."""

    name = "base"
    knobs: type = AdapterKnobs

    @classmethod
    def check(cls, cfg) -> None:
        """Value checks of this adapter's keys (and of what it needs of the rest of `cfg`, the
        whole config); raises ConfigError. Keys of other adapters are checked by bench.config."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.targets: list[tuple[str, nn.Module]] = []

    def apply(self, model: nn.Module) -> nn.Module:
        raise NotImplementedError

    def after_step(self, step: int, optimizer) -> None:
        """Called after every optimizer step (step counts from 1)."""

    def metrics(self) -> dict:
        """Metrics logged at every log step."""
        return {}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def freeze_all(model: nn.Module) -> None:
    for p in model.parameters():
        p.requires_grad_(False)


def count_trainable(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
