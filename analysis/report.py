"""figures/REPORT.md: per sweep, the question asked, what the runs show, every table and figure."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pandas as pd

from analysis.tables import PROTOCOL
from analysis.verdict import MIN_SEEDS


def question(sweep: str, experiments: str | Path = "experiments") -> str:
    """The study's question from ``experiments/<sweep>/README.md`` (or ``<sweep>.md``).

    A line "Question: ..." (any markdown emphasis) wins; a "## Question" heading gives the
    paragraph under it; otherwise the first paragraph that is not a heading.
    """
    experiments = Path(experiments)
    for path in (experiments / sweep / "README.md", experiments / f"{sweep}.md"):
        if path.is_file():
            return _question_from(path.read_text()) or f"Runs of the `{sweep}` study."
    return f"Runs of sweep `{sweep}` (no study README at {experiments / sweep / 'README.md'})."


def _question_from(text: str) -> str:
    paragraphs = [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()]
    for i, par in enumerate(paragraphs):
        first = par.splitlines()[0]
        match = re.match(r"^[#*_\s-]*question[*_\s]*[:.-]?[*_\s]*(.*)$", first, re.IGNORECASE)
        if match:
            rest = " ".join([match.group(1), *par.splitlines()[1:]]).strip()
            if rest:
                return _one_line(rest)
            if i + 1 < len(paragraphs):
                return _one_line(paragraphs[i + 1])
    prose = [p for p in paragraphs if not p.startswith("#")]
    return _one_line(prose[0]) if prose else ""


def _one_line(text: str) -> str:
    return " ".join(text.split())


def finding(table: pd.DataFrame) -> str:
    """What the runs show: the best method and whether it beats its baseline conclusively."""
    if table is None or table.empty:
        return ("No language-model runs in this sweep; a toy study's result is its table "
                "(`<sweep>_toy.md`) and figures below.")
    finite = table[table["mean"].apply(lambda v: isinstance(v, float) and math.isfinite(v))]
    if finite.empty:
        if (table["mean"] == math.inf).any():
            return "Every method diverged or failed at every setting tried."
        return "No run has a final eval loss yet (the runs are incomplete or still running)."
    best = finite.sort_values("mean").iloc[0]
    spread = "" if pd.isna(best["std"]) else f" ± {best['std']:.3g}"
    config = best["hyperparameters"] or "one config"
    kind = "test" if "test" in str(best.get("loss", "")) else "eval"
    text = (f"Lowest mean final {kind} loss: `{best['method']}` ({config}), "
            f"{best['mean']:.4g}{spread} over {best['n_seeds']} seed"
            f"{'' if best['n_seeds'] == 1 else 's'} ({best.get('seeds', '')}).")
    if best["conclusive"] == "baseline":
        others = table[(table["baseline"] == best["method"]) & (table["method"] != best["method"])]
        n_yes = int((others["conclusive"] == "yes").sum())
        n_na = int((others["conclusive"] == "n/a").sum())
        if len(others):
            text += (f" It is the baseline; {n_yes} of {len(others)} methods compared with it "
                     "differ conclusively after Holm's correction")
            verb = "has" if n_na == 1 else "have"
            text += (f" ({n_na} {verb} too few seeds for a verdict)." if n_na else ".")
        else:
            text += (" It is its own baseline and no other method is compared with it; pass "
                     "`baseline=<method>` to compare across adapters.")
    elif best["baseline"]:
        verdict = {"yes": "conclusive", "no": "not conclusive",
                   "n/a": f"no verdict (fewer than {MIN_SEEDS} seeds)"}[best["conclusive"]]
        text += (f" Against `{best['baseline']}` ({best['test']}, n = {best['n']}): difference "
                 f"{_num(best['delta'], '+.3g')}, 95% t interval [{_num(best['ci_low'], '+.3g')},"
                 f" {_num(best['ci_high'], '+.3g')}], Holm-adjusted p "
                 f"{_num(best['p_holm'], '.2g')}, {verdict}; detectable difference "
                 f"{_num(best['detectable'], '.2g')}.")
    else:
        text += " No baseline method in this sweep, so no conclusive comparison."
    if (table["n_configs"] == 1).all():  # e.g. the default sweep, a sweep without a study
        seeds = int(table["n_seeds"].max())
        text += (f" Nothing was tuned here (one configuration per row) and it has {seeds} "
                 f"seed{'s' * (seeds != 1)}"
                 + (": a smoke demonstration of the harness, not a verdict." if seeds < MIN_SEEDS
                    else "."))
    edges = table.loc[table["edge"] != "", "method"].tolist()
    if edges:
        text += (f" Grid edge (extend the grid, or for key@steps the long stage): "
                 f"{', '.join(f'`{m}`' for m in edges)}.")
    return text


DELTA_VS_STEP = (
    "Budget: each compared method's paired difference to its baseline (method - baseline eval "
    "loss, < 0: the method is lower) at every evaluated step, over the seeds its row of the tuned "
    "table reports, at its selected configuration; band: the 95% t interval of the paired "
    "differences (mean only where fewer than 2 seeds pair). A verdict that holds at the last "
    "step but not earlier (or the reverse) depends on the budget."
)


def _num(value, spec: str) -> str:
    """A number, or "-" where there is none (too few seeds for an interval)."""
    return "-" if pd.isna(value) else f"{value:{spec}}"


def _strip_heading(markdown: str) -> str:
    lines = markdown.splitlines()
    return "\n".join(lines[1:] if lines and lines[0].startswith("# ") else lines).strip()


# figures/sweeps.json: every sweep analysed so far, what REPORT.md and index.html show
MANIFEST = "sweeps.json"


def write_report(results: list[dict], figures: str | Path,
                 experiments: str | Path = "experiments") -> Path:
    """``figures/REPORT.md``: every sweep analysed so far into `figures`, not only these
    (``results``: per sweep {"sweep", "tuned" (DataFrame or None), "files" (paths written)}).
    Each analysed sweep's question, result and files replace its entry in
    ``figures/sweeps.json`` (`update_manifest`); the report is rendered from all entries, in
    the order of their names, reading each table from its file."""
    figures = Path(figures)
    figures.mkdir(parents=True, exist_ok=True)
    manifest = update_manifest(figures, {
        result["sweep"]: {"question": question(result["sweep"], experiments),
                          "finding": finding(result.get("tuned")),
                          "files": [Path(p).name for p in result["files"]]}
        for result in results})
    out = ["# Report", "",
           "Generated by `python -m analysis` (`make plots`) from the run records only. Browse "
           "every sweep's tables and figures in [index.html](index.html); every run is a row of "
           "`runs.parquet`, every logged step a row of `steps.parquet` "
           "(`pandas.read_parquet`).", "",
           PROTOCOL, ""]
    for sweep, entry in sorted(manifest.items()):
        files = [figures / name for name in entry["files"] if (figures / name).is_file()]
        out += [f"## {sweep}", "", f"**Question.** {entry['question']}", "",
                f"**Result.** {entry['finding']}", ""]
        for path in files:
            if path.suffix == ".md":
                body = _strip_heading(path.read_text()).replace(PROTOCOL, "").strip()
                out += [f"### [{path.name}]({path.name})", "", body, ""]
        for path in files:
            if path.suffix == ".png":
                pdf = path.with_suffix(".pdf")
                link = f" ([pdf]({pdf.name}))" if pdf.exists() else ""
                out += [f"### {path.stem}{link}", "", f"![{path.stem}]({path.name})", ""]
                if path.stem.endswith("_delta_vs_step"):
                    out += [DELTA_VS_STEP, ""]
        csvs = [p.name for p in files if p.suffix == ".csv"]
        if csvs:
            out += ["Data: " + ", ".join(f"[{c}]({c})" for c in csvs), ""]
    path = figures / "REPORT.md"
    path.write_text("\n".join(out))
    return path


def read_manifest(figures: str | Path) -> dict[str, dict]:
    """{sweep: {"question", "finding", "files"}} of every sweep analysed into `figures` so far
    ({} when none, or when the file is not one of ours: it is then rewritten)."""
    path = Path(figures) / MANIFEST
    try:
        manifest = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        return {}
    if not isinstance(manifest, dict):
        return {}
    return {sweep: entry for sweep, entry in manifest.items()
            if isinstance(entry, dict) and isinstance(entry.get("files"), list)
            and all(isinstance(entry.get(k), str) for k in ("question", "finding"))}


def update_manifest(figures: Path, entries: dict[str, dict]) -> dict[str, dict]:
    """The manifest with `entries` (by sweep) in place of the sweeps' earlier ones, written."""
    manifest = {**read_manifest(figures), **entries}
    (figures / MANIFEST).write_text(json.dumps(dict(sorted(manifest.items())), indent=1) + "\n")
    return manifest
