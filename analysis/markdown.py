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


def markdown_table(df: pd.DataFrame, floatfmt: str = ".4g") -> str:
    """A GitHub-flavoured markdown table of ``df`` (index dropped)."""
    header = "| " + " | ".join(map(str, df.columns)) + " |"
    rule = "|" + "|".join("---" for _ in df.columns) + "|"
    body = ["| " + " | ".join(_cell(v, floatfmt) for v in row) + " |"
            for row in df.itertuples(index=False)]
    return "\n".join([header, rule, *body])
