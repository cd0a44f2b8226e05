"""Time to target (AlgoPerf's time-to-result, DESIGN.md §7) and `target_loss=from_baseline`.

A run reaches the target at the first logged row whose `eval/loss` is <= the target; its
`steps_to_target`, `tokens_to_target` and `seconds_to_target` are that row's `step`, `tokens` and
`wall_s` (None, logged as null, if it never does). Eval loss is measured every
`trainer.eval_every` steps, so the answer is resolved to that grid, as in AlgoPerf.

`metrics.target_loss=from_baseline` takes the target from the sweep itself: the final eval loss
of the method named by `metrics.baseline` (e.g. `full/adamw`, the `meta.method` of its runs'
config.yaml). The baseline's completed runs are grouped by hyperparameter configuration (the
config without seed, run metadata, metrics settings and the keys that do not change a run);
the target is the best (lowest) mean final eval loss over seeds among those configurations. With
one configuration that is simply the mean over seeds. Since the baseline may finish after the
other runs, `fill_targets` recomputes every finished run's numbers from its metrics.jsonl and
rewrites its summary.json; calling it again after more baseline seeds finish is safe.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path

import yaml

from bench.config import NON_SEMANTIC, ConfigError
from bench.tracking.record import RunRecord

TARGET_KEYS = ("steps_to_target", "tokens_to_target", "seconds_to_target")
# Keys of config.yaml left out when grouping runs by configuration: the seed, the run metadata,
# the measurement settings, and the keys that do not change what a run computes.
_NOT_HYPERPARAMETERS = ("meta", "seed", "metrics", *NON_SEMANTIC)


class BaselineNotReady(ConfigError):
    """The baseline method is in the sweep but none of its runs has completed yet."""


def time_to_target(rows: list[dict], target: float | None) -> dict:
    """Steps, tokens and seconds of the first row with eval/loss <= target (None if never)."""
    if target is None:
        return dict.fromkeys(TARGET_KEYS)
    if (
        isinstance(target, bool)
        or not isinstance(target, (int, float))
        or not math.isfinite(target)
    ):
        raise ValueError(f"target loss must be a finite number, got {target!r}")
    for row in rows:
        loss = row.get("eval/loss")
        if isinstance(loss, (int, float)) and math.isfinite(loss) and loss <= target:
            return {
                "steps_to_target": row.get("step"),
                "tokens_to_target": row.get("tokens"),
                "seconds_to_target": row.get("wall_s"),
            }
    return dict.fromkeys(TARGET_KEYS)


# ------------------------------------------------------------------------------ a sweep
def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


def sweep_runs(sweep_dir: str | Path) -> list[tuple[RunRecord, dict]]:
    """The run records of a sweep folder (sub-folders with a config.yaml) and their configs."""
    sweep_dir = Path(sweep_dir)
    return [
        (RunRecord(path.parent), _read_yaml(path))
        for path in sorted(sweep_dir.glob("*/config.yaml"))
    ]


def _method(config: dict) -> str | None:
    return (config.get("meta") or {}).get("method")


def _hyperparameters(config: dict) -> str:
    """A key identifying a run's configuration up to its seed (see the module docstring)."""
    container = dict(config)
    for dotted in _NOT_HYPERPARAMETERS:
        node, *path = dotted.split(".")
        if not path:
            container.pop(node, None)
        elif isinstance(container.get(node), dict):
            container[node] = {k: v for k, v in container[node].items() if k != path[0]}
    return json.dumps(container, sort_keys=True, default=str)


def _final_loss(record: RunRecord) -> float | None:
    try:
        summary = record.read_summary()
    except (OSError, json.JSONDecodeError):
        return None
    if not summary or summary.get("status") != "completed":
        return None
    loss = summary.get("final_eval_loss")
    if isinstance(loss, (int, float)) and math.isfinite(loss):
        return float(loss)
    return None


def methods_in_sweep(sweep_dir: str | Path) -> list[str]:
    """The method names (config.yaml meta.method) of the runs in a sweep folder, sorted."""
    return sorted({m for _, config in sweep_runs(sweep_dir) if (m := _method(config))})


def check_baseline(sweep_dir: str | Path, baseline: str | None, method: str) -> None:
    """Before a run with target_loss=from_baseline: ConfigError unless `baseline` is named and is
    either this run's own method or a method with a run folder in the sweep already.

    Only meaningful when the baseline's runs are created before the others (a sweep listing the
    baseline first on the sequential launcher); with parallel launchers a baseline run may not
    exist yet, so check at the end instead (`fill_targets`).
    """
    if not baseline:
        raise ConfigError(
            "metrics.target_loss=from_baseline needs metrics.baseline, the method "
            "name of the baseline runs (e.g. full/adamw)"
        )
    present = methods_in_sweep(sweep_dir)
    if baseline != method and baseline not in present:
        raise ConfigError(
            f"metrics.baseline={baseline!r} (for metrics.target_loss=from_baseline) is not a "
            f"method of sweep {sweep_dir}; the methods there are: "
            f"{', '.join(sorted({*present, method}))}"
        )


def baseline_target(sweep_dir: str | Path, baseline: str | None) -> float:
    """The from_baseline target: the baseline method's final eval loss in this sweep (best mean
    over seeds among its configurations, completed runs only).

    Raises ConfigError naming the baseline and listing the sweep's methods when no run of that
    method is there; BaselineNotReady (a ConfigError) when it is there but none has completed.
    """
    runs = sweep_runs(sweep_dir)
    by_method: dict[str, list[tuple[RunRecord, dict]]] = defaultdict(list)
    for record, config in runs:
        method = _method(config)
        if method is not None:
            by_method[method].append((record, config))
    present = ", ".join(sorted(by_method)) or "none"
    if not baseline:
        raise ConfigError(
            "metrics.target_loss=from_baseline needs metrics.baseline, the method name of the "
            f"baseline runs; the methods in sweep {sweep_dir} are: {present}"
        )
    if baseline not in by_method:
        raise ConfigError(
            f"metrics.baseline={baseline!r} (for metrics.target_loss=from_baseline) is not a "
            f"method of sweep {sweep_dir}; the methods there are: {present}"
        )
    groups: dict[str, list[float]] = defaultdict(list)
    for record, config in by_method[baseline]:
        loss = _final_loss(record)
        if loss is not None:
            groups[_hyperparameters(config)].append(loss)
    if not groups:
        raise BaselineNotReady(
            f"metrics.baseline={baseline!r}: none of its {len(by_method[baseline])} run(s) in "
            f"sweep {sweep_dir} has completed with a final eval loss yet"
        )
    return min(sum(losses) / len(losses) for losses in groups.values())


def _numeric_target(config: dict) -> bool:
    target = (config.get("metrics") or {}).get("target_loss")
    return isinstance(target, (int, float)) and not isinstance(target, bool)


def fill_targets(sweep_dir: str | Path, baseline: str | None) -> float:
    """Resolve from_baseline for a whole sweep; returns the target.

    For every finished run (summary status other than `running`; runs still going are left to
    their own end) whose config does not set a numeric metrics.target_loss of its own, recompute
    steps/tokens/seconds_to_target from its metrics.jsonl against the baseline's final loss and
    rewrite its summary.json atomically, adding `target_loss` and `target_baseline`.
    Raises as `baseline_target` does (BaselineNotReady while no baseline run has completed).
    """
    target = baseline_target(sweep_dir, baseline)
    for record, config in sweep_runs(sweep_dir):
        if _numeric_target(config):
            continue
        try:
            summary = record.read_summary()
        except (OSError, json.JSONDecodeError):
            continue
        if not summary or summary.get("status") == "running":
            continue
        summary.update(time_to_target(record.read_metrics(), target))
        summary["target_loss"] = target
        summary["target_baseline"] = baseline
        record.write_summary(summary)  # atomic (bench.tracking.record.atomic_write)
    return target
