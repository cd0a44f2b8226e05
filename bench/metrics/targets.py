"""Time to target (AlgoPerf's time-to-result, DESIGN.md §7).

A run reaches the target at the first logged row whose `eval/loss` is <= the target; its
`steps_to_target`, `tokens_to_target` and `seconds_to_target` are that row's `step`, `tokens` and
`wall_s` (None, logged as null, if it never does). Eval loss is measured every
`trainer.eval_every` steps, so the answer is resolved to that grid, as in AlgoPerf.

A run with a numeric `metrics.target_loss` writes these into its own summary.json. With
`metrics.target_loss=from_baseline` (and `metrics.baseline`, a method name) the target is the
final loss of another method of the sweep, known only once that method's runs have ended: the
run records the setting in its config.yaml and nothing else, and analysis computes the time to
the baseline's loss from the records (analysis/targets.py). Only a run writes its own record.
"""

from __future__ import annotations

import math

TARGET_KEYS = ("steps_to_target", "tokens_to_target", "seconds_to_target")


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
