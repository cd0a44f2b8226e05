"""The optimizer libraries bench wraps, imported when an optimizer that needs one is checked or
built: a missing library is one ConfigError line saying how to install it, raised by `validate`
before anything is written, and `import bench` never needs it."""

from __future__ import annotations

import importlib
from types import ModuleType

from bench.errors import ConfigError

# module -> the pinned requirement that provides it (pyproject.toml, constraints.txt)
PINS = {"pytorch_optimizer": "pytorch-optimizer==4.1.0"}


def require(module: str, optimizer: str) -> ModuleType:
    """The imported `module`, or ConfigError naming `optimizer` and the install command."""
    try:
        return importlib.import_module(module)
    except ImportError:
        pin = PINS[module]
        raise ConfigError(
            f"optimizer.name={optimizer!r} needs the library {pin}, which is not installed: "
            f"pip install {pin} (or make setup)") from None
