"""The top-level config schema (registered in Hydra's ConfigStore) and its composition checks.

Each group's schema and value checks live with the code that uses them: `model` in
bench/models/config.py, `data` in bench/data/config.py, `trainer` in bench/train.py, `logger` in
bench/tracking/wandb.py, `metrics` in bench/metrics/config.py, `toy` in bench/toy.py, `study` in
bench/study.py. The `adapter` and `optimizer` groups are the union of every registered choice's
keys (each adapter class's and optimizer spec's `knobs` dataclass), so Hydra still rejects an
unknown key or a wrong type while it composes; `validate` then runs the chosen adapter's and
optimizer's own `check`, refuses a key set off its default that belongs to another choice, and
runs every group's checks, raising ConfigError (one line naming the key and the allowed values)
before any run directory exists.
"""

from __future__ import annotations

import dataclasses
import math
import re
import typing
from collections.abc import Sequence
from dataclasses import field
from pathlib import Path
from typing import Any

from omegaconf import MISSING, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from bench.adapters import ADAPTERS, LORA_ADAPTERS
from bench.data.config import DataConfig, check_data
from bench.errors import ConfigError, choice
from bench.metrics.config import MetricsConfig, check_metrics
from bench.models.config import GEOMETRIES, ModelConfig, check_model
from bench.optim import OPTIMIZERS
from bench.optim.base import check_common
from bench.study import StudyConfig
from bench.toy import ToyConfig
from bench.tracking.wandb import LoggerConfig, check_logger
from bench.train import TrainerConfig, check_trainer

__all__ = ["Config", "ConfigError", "StudyConfig", "validate"]
GROUPS = ("model", "data", "adapter", "optimizer", "trainer", "logger", "experiment")
TASKS = ("lm", "toy")  # bench.run.TASKS runs each


def _default(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def union_schema(name: str, knob_classes: Sequence[type]) -> type:
    """One dataclass holding every field of `knob_classes`, in their order: the schema of a group
    whose choices each declare their own keys. A key two choices share must agree in type and
    default (a TypeError names it): one key, one meaning."""
    fields: dict[str, tuple[Any, Any, dataclasses.Field]] = {}
    for cls in knob_classes:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            spec = (hints[f.name], _default(f))
            if f.name in fields and fields[f.name][:2] != spec:
                raise TypeError(f"{name}.{f.name} is declared twice with different types or "
                                f"defaults: {fields[f.name][:2]} and {spec} ({cls.__name__})")
            fields.setdefault(f.name, (*spec, f))
    schema = dataclasses.make_dataclass(name, [
        (key, kind, field(default_factory=f.default_factory)
         if f.default_factory is not dataclasses.MISSING else field(default=f.default))
        for key, (kind, _, f) in fields.items()])
    schema.__module__ = __name__  # pickled by reference (a submitit job imports this module)
    return schema


def _schema_of_registries() -> tuple[type, type, type]:
    """(AdapterConfig, OptimizerConfig, Config) from the registries as they are now."""
    adapter = union_schema("AdapterConfig", [cls.knobs for cls in ADAPTERS.values()])
    optimizer = union_schema("OptimizerConfig", [s.knobs for s in OPTIMIZERS.values()])
    groups = [("model", ModelConfig), ("data", DataConfig), ("adapter", adapter),
              ("optimizer", optimizer), ("trainer", TrainerConfig), ("logger", LoggerConfig)]
    fields = [(name, kind, field(default=MISSING)) for name, kind in groups] + [
        ("metrics", MetricsConfig, field(default_factory=MetricsConfig)),
        ("toy", ToyConfig, field(default_factory=ToyConfig)),
        ("study", StudyConfig, field(default_factory=StudyConfig)),
        ("task", str, field(default="lm")),  # the kind of run: a key of bench.run.TASKS
        ("seed", int, field(default=0)),
        ("sweep", str, field(default="default")),  # the sweep's name and folder under out_dir
        ("out_dir", str, field(default="runs")),
        ("force", bool, field(default=False)),  # rerun a completed run (its record moved aside)
    ]
    config = dataclasses.make_dataclass("Config", fields)
    config.__module__ = __name__
    return adapter, optimizer, config


# The schema: every group's dataclass; adapter and optimizer the unions of their choices' keys.
AdapterConfig, OptimizerConfig, Config = _schema_of_registries()


def register_configs() -> None:
    """(Re)build the schema from the registries as they are now (an adapter or optimizer
    registered at run time brings its keys) and register it, so that each YAML group file is
    validated against its dataclass."""
    from hydra.core.config_store import ConfigStore

    global AdapterConfig, OptimizerConfig, Config
    AdapterConfig, OptimizerConfig, Config = _schema_of_registries()
    # Each group's YAML is merged into the typed field of `Config`, so one schema covers all.
    ConfigStore.instance().store(name="base_config", node=Config)


def _schema(node: type) -> dict[str, tuple[dataclasses.Field, Any]]:
    """A dataclass's fields with their resolved types."""
    hints = typing.get_type_hints(node)
    return {f.name: (f, hints[f.name]) for f in dataclasses.fields(node)}


def schema_defaults(node: type | None = None) -> dict:
    """Every key of `Config` with its schema default, groups included (a group's default is its
    dataclass's defaults): what the run id compares a config against (bench.record)."""
    return {name: schema_defaults(kind) if dataclasses.is_dataclass(kind) else _default(f)
            for name, (f, kind) in _schema(node or Config).items()}


def _finite_floats(cfg: Any, node: type | None = None, prefix: str = "") -> None:
    """Every float of the config (a float-typed key, a float in a list such as optimizer.betas,
    or a float given to an untyped key such as metrics.target_loss) must be finite: nan and inf
    pass `> 0` checks silently (nan compares false)."""
    for name, (_, kind) in _schema(node or Config).items():
        try:
            value = cfg.get(name)
        except OmegaConfBaseException:  # a missing or broken key: not a float to check here
            continue
        if dataclasses.is_dataclass(kind):
            if value is not None:
                _finite_floats(value, kind, f"{prefix}{name}.")
            continue
        items = value if isinstance(value, Sequence) and not isinstance(value, str) else [value]
        if any(isinstance(item, float) and not math.isfinite(item) for item in items):
            raise ConfigError(f"{prefix}{name}={value!r} is not allowed; allowed values: finite "
                              "numbers (no nan, inf)")


def check_owned(group: str, cfg, owners: dict[str, type], union: type) -> None:
    """A key of the group set off its default must be a key of the chosen option (`owners`:
    option name -> its knobs dataclass): `optimizer=adamw optimizer.lr_ratio=4` is refused, not
    silently ignored."""
    chosen = cfg[group].name
    own = {f.name for f in dataclasses.fields(owners[chosen])}
    for f in dataclasses.fields(union):
        value = cfg[group][f.name]
        value = OmegaConf.to_container(value) if OmegaConf.is_config(value) else value
        if f.name not in own and value != _default(f):
            having = [n for n, knobs in owners.items()
                      if f.name in {x.name for x in dataclasses.fields(knobs)}]
            raise ConfigError(f"{group}.{f.name}={value!r} is a key of {group}="
                              f"{'|'.join(having)}, not of {group}={chosen}: with {group}="
                              f"{chosen}, allowed values: {_default(f)!r} (its default)")


# `sweep` is one folder name under out_dir, and part of every output file's name
SWEEP_NAME = re.compile(r"[A-Za-z0-9_.=+,-]{1,100}")
MAX_SEED = 2**32  # numpy's seeds: [0, 2^32)


def _check_run_keys(cfg: Any) -> None:
    """sweep, out_dir and seed: where the record goes and which batches it sees."""
    sweep = cfg.sweep
    if not isinstance(sweep, str) or not SWEEP_NAME.fullmatch(sweep) or sweep in (".", ".."):
        raise ConfigError(f"sweep={sweep!r} is not allowed; allowed values: one folder name of "
                          "1-100 letters, digits and - _ . = + , (not . or ..)")
    out = str(cfg.out_dir)
    if not out.strip() or len(out) > 1024 or any(len(part) > 255 for part in Path(out).parts):
        raise ConfigError(f"out_dir={out[:80]!r} is not allowed; allowed values: a folder path of "
                          "at most 1024 characters, 255 per name")
    seed = cfg.seed
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < MAX_SEED:
        raise ConfigError(f"seed={seed!r} is not allowed; allowed values: integers in "
                          f"[0, {MAX_SEED})")


def validate(cfg: Any) -> None:
    """Every check a config must pass before anything is written. Raises ConfigError."""
    _finite_floats(cfg)
    _check_run_keys(cfg)
    choice("task", cfg.task, TASKS)
    choice("adapter.name", cfg.adapter.name, ADAPTERS)
    choice("optimizer.name", cfg.optimizer.name, OPTIMIZERS)
    check_owned("adapter", cfg, {n: c.knobs for n, c in ADAPTERS.items()}, AdapterConfig)
    check_owned("optimizer", cfg, {n: s.knobs for n, s in OPTIMIZERS.items()}, OptimizerConfig)
    check_model(cfg)
    check_data(cfg)
    ADAPTERS[cfg.adapter.name].check(cfg)
    check_common(cfg)
    spec = OPTIMIZERS[cfg.optimizer.name]
    if spec.check is not None:
        spec.check(cfg)
    check_trainer(cfg)
    check_logger(cfg)
    check_metrics(cfg, tuple(ADAPTERS), tuple(OPTIMIZERS))
    if cfg.task == "lm":
        _check_pairing(cfg, spec)


def _check_pairing(cfg, spec) -> None:
    """What an optimizer needs of the adapter and the model: manifold points to step, LoRA
    factors to precondition, and a factored adapter's geometry a Riemannian optimizer."""
    attention, lora_geometry = cfg.model.attention.geometry, cfg.adapter.get("geometry")
    has_manifold = attention != "euclidean" or lora_geometry not in (None, "euclidean")
    if spec.needs_manifold and not has_manifold:
        raise ConfigError(f"optimizer.name={cfg.optimizer.name!r} needs manifold parameters: set "
                          "model.attention.geometry or adapter.geometry to one of "
                          f"{', '.join(GEOMETRIES[1:])}")
    if spec.needs_lora and (cfg.adapter.name not in LORA_ADAPTERS
                            or lora_geometry not in (None, "euclidean")):
        raise ConfigError(
            f"optimizer.name={cfg.optimizer.name!r} needs a LoRA adapter with factors lora_A, "
            f"lora_B: adapter.name={' or '.join(LORA_ADAPTERS)} with adapter.geometry=euclidean "
            f"(got adapter.name={cfg.adapter.name!r}, adapter.geometry={lora_geometry!r})")
    if lora_geometry not in (None, "euclidean") and not spec.needs_manifold:
        stepping = [n for n, s in OPTIMIZERS.items() if s.needs_manifold]
        raise ConfigError(f"adapter.geometry={lora_geometry!r} with optimizer.name="
                          f"{cfg.optimizer.name!r}: a point on a manifold needs an optimizer "
                          f"that steps manifolds: allowed optimizer.name: {', '.join(stepping)}")


def _schema_fields(node: type, path: list[str]) -> tuple[type | None, str | None]:
    """Walk `path` down the dataclass schema: (the type at its end, or None; the bad part)."""
    for i, part in enumerate(path):
        fields = _schema(node) if dataclasses.is_dataclass(node) else {}
        if part not in fields:
            return None, ".".join(path[: i + 1])
        node = fields[part][1]
    return node, None


def check_override_keys(overrides: list[str]) -> None:
    """Unknown keys on the command line -> ConfigError listing the allowed keys of that group.

    Hydra would refuse them too, but without saying what is allowed. Group choices
    (`adapter=lora`), additions (`+key=...`), deletions and `hydra.*` are left to Hydra.
    """
    for override in overrides:
        key = override.split("=", 1)[0].lstrip("+")
        if "=" not in override or key.startswith(("~", "hydra")) or key in GROUPS:
            continue
        _, bad = _schema_fields(Config, key.split("."))
        if bad is None:
            continue
        parent, _ = _schema_fields(Config, bad.split(".")[:-1])
        allowed = [f.name for f in dataclasses.fields(parent)] if parent else []
        where = bad.rsplit(".", 1)[0] if "." in bad else "the config"
        raise ConfigError(f"unknown key {key}; allowed keys of {where}: {', '.join(allowed)}")
