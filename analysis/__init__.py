"""Run records -> tables and figures. Reads run records (or W&B) only: of bench, only the record
contract `bench.record`.

    from analysis import load_runs, load_curves, tuned_table
    runs = load_runs("runs", sweep="default")
    table = tuned_table(runs)                     # one row per method at its tuned LR

`python -m analysis` draws every figure and table (see analysis/__main__.py).
"""

from analysis.records import (
    AnalysisError,
    IncompatibleRunsError,
    NoRunsError,
    check_compatible,
    load_curves,
    load_runs,
)
from analysis.selection import Selection, select, select_sweep
from analysis.tables import tuned_table

__all__ = [
    "AnalysisError",
    "IncompatibleRunsError",
    "NoRunsError",
    "Selection",
    "check_compatible",
    "load_curves",
    "load_runs",
    "select",
    "select_sweep",
    "tuned_table",
]
