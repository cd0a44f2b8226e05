"""A GitHub-flavoured markdown table writer (pandas' own needs tabulate)."""

from __future__ import annotations

import math

import pandas as pd


def _cell(value, floatfmt: str) -> str:
    if value is None or (not isinstance(value, str) and pd.api.types.is_scalar(value)
                         and pd.isna(value)):
        return ""
    if isinstance(value, float):
        return f"{value:{floatfmt}}" if math.isfinite(value) else ("inf" if value > 0 else "-inf")
    return str(value).replace("|", "\\|").replace("\n", " ")


def interval(mean: float, low: float, high: float) -> str:
    """"+0.012 [+0.001, +0.024]": a difference and its interval, signed, to 3 decimals (rounded
    first, so a small negative reads +0.000, never -0.000)."""
    mean, low, high = (round(float(v), 3) + 0.0 for v in (mean, low, high))
    return f"{mean:+.3f} [{low:+.3f}, {high:+.3f}]"


def markdown_table(df: pd.DataFrame, floatfmt: str = ".4g") -> str:
    """A GitHub-flavoured markdown table of ``df`` (index dropped)."""
    header = "| " + " | ".join(map(str, df.columns)) + " |"
    rule = "|" + "|".join("---" for _ in df.columns) + "|"
    body = ["| " + " | ".join(_cell(v, floatfmt) for v in row) + " |"
            for row in df.itertuples(index=False)]
    return "\n".join([header, rule, *body])
