"""The error every layer raises for bad input, and the checks that raise it: a module of its own
so that any package can check its own config keys without importing the schema (bench.config
imports the packages for their registries). Every message is one line naming the key and what
is allowed."""

from __future__ import annotations

import math
from typing import Any


class ConfigError(ValueError):
    """A configuration problem found before training; the message names the key."""


def choice(key: str, value: Any, allowed) -> None:
    if value not in tuple(allowed):
        raise ConfigError(f"{key}={value!r} is not allowed; allowed values: "
                          f"{', '.join(map(str, allowed))}")


def number(key: str, value: Any) -> float:
    """`value` as a real number (not a bool, not nan or inf), or ConfigError."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(f"{key}={value!r} is not allowed; allowed values: finite numbers")
    return value


def positive(key: str, value: Any) -> None:
    if value is None or number(key, value) <= 0:
        raise ConfigError(f"{key}={value!r} must be > 0")


def at_least(key: str, value: Any, low: float) -> None:
    if value is None or number(key, value) < low:
        raise ConfigError(f"{key}={value!r} must be >= {low:g}")


def in_unit(key: str, value: Any, closed_low: bool = True) -> None:
    """0 <= value < 1 (or 0 < value < 1): a momentum, a beta, a dropout rate, a fraction."""
    low_ok = number(key, value) >= 0 if closed_low else value > 0
    if not (low_ok and value < 1):
        raise ConfigError(f"{key}={value!r} must be in {'[' if closed_low else '('}0, 1)")
