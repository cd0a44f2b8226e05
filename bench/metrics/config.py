"""The `metrics` config group: what is measured during a run besides the losses."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bench.errors import ConfigError, at_least, positive


@dataclass
class HessianConfig:
    every: int = 0  # 0: off
    at_start: bool = False  # also at step 0 (the initial weights), when every > 0
    iters: int = 20
    layers: list[str] = field(default_factory=list)  # name patterns; empty = all adapted
    # The fixed batch the Hessian is taken on; None: half the training batch (an HVP costs about
    # two LoRA steps, so 30 iterations on half a batch cost ~26 steps: make perf).
    batch_size: int | None = None
    # also the Gauss-Newton matrix J^T H_z J (cond/gn/*): positive semidefinite, so its kappa
    # exists where the indefinite Hessian's does not (bench/metrics/monitor.py)
    gauss_newton: bool = False


@dataclass
class MetricsConfig:
    hessian: HessianConfig = field(default_factory=HessianConfig)
    target_loss: Any = None  # float, or "from_baseline"
    baseline: str | None = None  # method name of the baseline for from_baseline


def check_metrics(cfg, adapters, optimizers) -> None:
    """`adapters`, `optimizers`: the registries' names (a baseline is a method name)."""
    h, target = cfg.metrics.hessian, cfg.metrics.target_loss
    at_least("metrics.hessian.every", h.every, 0)
    if h.every and h.iters < 2:
        raise ConfigError(f"metrics.hessian.iters={h.iters} must be >= 2")
    if h.batch_size is not None:
        positive("metrics.hessian.batch_size", h.batch_size)
    if target is not None and target != "from_baseline" and (
            not isinstance(target, int | float) or isinstance(target, bool)):
        raise ConfigError(f"metrics.target_loss={target!r}: allowed values are a number, null "
                          "or 'from_baseline'")
    if target != "from_baseline":
        return
    if not cfg.metrics.baseline:
        raise ConfigError("metrics.target_loss=from_baseline needs metrics.baseline (a method "
                          "name, e.g. full/adamw)")
    parts = str(cfg.metrics.baseline).split("/")  # adapter[+option]/optimizer[+variant]/...
    if (len(parts) < 2 or parts[0].split("+")[0] not in adapters
            or parts[1].split("+")[0] not in optimizers):
        raise ConfigError(
            f"metrics.baseline={cfg.metrics.baseline!r} is not a method name "
            f"<adapter>/<optimizer>[/...]: adapters {', '.join(adapters)}; optimizers "
            f"{', '.join(optimizers)}")
