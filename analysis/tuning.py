"""The tuning protocol of DESIGN.md §8 and the verdicts of its table.

Per method, the runs that differ only by seed form a *config*; a config's score is its mean
final eval loss over seeds, a diverged or failed seed counting as +inf, so a config where any seed
diverged loses to every config where none did. Each method's best config is then reported on the
seeds that did not tune (the test loss when the records have one) and compared with a baseline
method (default: AdamW on the same adapter) paired by seed, with Holm's correction over the
table's comparisons (analysis/verdict.py).
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.markdown import markdown_table
from analysis.records import BAD_STATUSES, SUMMARY_KEYS, ArgumentError, check_compatible, lm_runs
from analysis.verdict import ALPHA, CONFIDENCE, MIN_SEEDS, POWER, compare, verdicts

TUNED_KEYS = ("optimizer.lr", "optimizer.manifold_lr", "adapter.alpha", "adapter.scale")
# Keys that do not change what a run computes: a copy of bench.config.NON_SEMANTIC (analysis
# reads records only and never imports bench; tests/test_tuning.py checks that they agree).
NON_SEMANTIC = (
    "out_dir",
    "sweep",
    "study",
    "logger",
    "trainer.device",
    "trainer.threads",
    "trainer.progress",
    "trainer.checkpoint_every",
    "trainer.log_every",
    "model.pretrain.cache_dir",
)
# Settings that may differ between the runs of one config without making them different configs
# when the records do not state their config (`meta.config_id`): the non-semantic keys above,
# the record's own bookkeeping, and what is measured (metrics.*, how often eval runs).
_BOOKKEEPING = ("seed", "run_dir", "run_id", "method", "task", "trainer.eval_every")
_BOOKKEEPING_PREFIXES = ("meta.", "hydra.", "metrics.", "wandb.")
CONFIG_ID = "meta.config_id"
# The study protocol's tuning seed: in a table where some method tried more than one config, its
# rows report the other seeds (when a method has any).
TUNING_SEEDS = (0,)
# The reported loss, first present wins: the test split's, else the eval split's (which selects).
REPORTED_LOSSES = ("final_test_loss", "final_eval_loss")
# The last Hessian estimate of a run (None where the horizontal Hessian was not positive
# definite) and a key every estimate sets, to tell "not measured" from "not defined"
FINAL_KAPPA, FINAL_SHARPNESS = "final_cond/kappa", "final_sharpness/lambda_max"
FINAL_KAPPA_GN, FINAL_GN_MAX = "final_cond/gn/kappa", "final_cond/gn/lambda_max"


class GridEdgeWarning(UserWarning):
    """The best value of a tuned hyperparameter is the smallest or largest one tried."""


def run_score(status, final_loss) -> float:
    """A run's contribution to its config's mean: +inf if it diverged, NaN if it has no result."""
    if status in BAD_STATUSES:
        return math.inf
    if status != "completed" or final_loss is None or pd.isna(final_loss):
        return math.nan
    return float(final_loss) if math.isfinite(final_loss) else math.inf


def config_keys(runs: pd.DataFrame) -> list[str]:
    """The settings that vary between the runs of one method: the tuned ones first."""
    skip = set(SUMMARY_KEYS) | set(_BOOKKEEPING) | set(REPORTED_LOSSES)
    varying = [
        c for c in runs.columns
        if c not in skip and not c.startswith(_BOOKKEEPING_PREFIXES) and not c.endswith(".seed")
        and not any(c == k or c.startswith(k + ".") for k in NON_SEMANTIC)
        and runs[c].astype(str).nunique(dropna=False) > 1
    ]
    return [k for k in TUNED_KEYS if k in varying] + [k for k in varying if k not in TUNED_KEYS]


def config_label(keys, values) -> str:
    """"optimizer.lr=0.001, adapter.alpha=16" (unset values left out)."""
    return ", ".join(f"{k}={_fmt(v)}" for k, v in zip(keys, values)
                     if not (pd.api.types.is_scalar(v) and pd.isna(v)))


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def config_groups(runs: pd.DataFrame, keys: list[str]) -> list[pd.DataFrame]:
    """The runs of one method split into configs (runs that differ only by seed). Records that
    state their config (`meta.config_id`: the digest of the semantic config without the seed)
    are grouped by it; when some run of the method lacks it (records older than the key), by
    the settings that vary between the runs (`config_keys`), as before records stated it. The
    groups come in the order of their values of `keys`."""
    if CONFIG_ID in runs and runs[CONFIG_ID].notna().all():
        groups = [group for _, group in runs.groupby(CONFIG_ID, sort=True)]
        if not keys:
            return groups
        order = pd.DataFrame([group.iloc[0][keys] for group in groups]).reset_index(drop=True)
        order = order.sort_values(keys, na_position="last", kind="stable").index
        return [groups[i] for i in order]
    if not keys:
        return [runs]
    return [group for _, group in runs.groupby(keys, dropna=False, sort=True)]


def score_configs(runs: pd.DataFrame) -> tuple[list[str], pd.DataFrame]:
    """The configs of one method (`config_groups`) with their seeds' scores, best first."""
    keys = config_keys(runs)
    runs = runs.assign(_score=[run_score(s, f) for s, f in zip(runs["status"],
                                                                 runs["final_eval_loss"])])
    # With a single config, still name its learning rate in tables and legends.
    shown = keys or [k for k in TUNED_KEYS[:1] if k in runs and runs[k].notna().any()]
    rows = []
    tuning_runs = runs[runs["seed"].isin(declared_tuning_seeds(runs))]
    for group in config_groups(runs, keys):
        scores = group["_score"].dropna().to_numpy(dtype=float)
        first = group.iloc[0]
        tuning = _tuning_scores(tuning_runs, keys, first)
        rows.append({
            **{k: first[k] for k in shown},
            "scores": scores,
            "mean": scores.mean() if len(scores) else math.nan,
            "_tuning": tuning.mean() if len(tuning) else math.nan,
            "n_diverged": int(group["status"].isin(BAD_STATUSES).sum()),
            "run_ids": list(group["run_id"]),
            "n_runs": len(group),
        })
    table = pd.DataFrame(rows)
    # Two-stage protocol (grid on one seed, more seeds at the best): the configs that got the
    # most seeds are the ones the grid selected, so they come first; within them the lowest
    # tuning-seed loss (the protocol's selection: when a long stage walked on, the config it
    # chose over one that had already run its reporting seeds), then the lowest mean.
    # NaN (no finished seed) sorts after +inf: a config with no result is never chosen.
    table = table.assign(_tier=-table["n_runs"]).sort_values(
        ["_tier", "_tuning", "mean"], na_position="last", kind="stable").drop(
        columns=["_tier", "_tuning"])
    table = table.reset_index(drop=True)
    return shown, table


def _tuning_scores(tuning_runs: pd.DataFrame, keys: list[str], config: pd.Series) -> pd.Series:
    """The scores of the tuning-seed runs of `config` (same values of `keys`): looked up in all
    of the method's tuning-seed runs, since a reporting stage's extra measurements (metrics.*)
    give its seeds another meta.config_id than the seed-0 run that selected them."""
    mask = pd.Series(True, index=tuning_runs.index)
    for key in keys:
        mask &= tuning_runs[key].astype(str) == str(config[key])
    return tuning_runs.loc[mask, "_score"].dropna()


def best_config(runs: pd.DataFrame) -> dict:
    """The chosen config of one method: its keys, values, seed scores and run ids."""
    keys, table = score_configs(runs)
    best = table.iloc[0]
    values = {k: best[k] for k in keys}
    return {
        "keys": keys,
        "values": values,
        "scores": best["scores"],
        "mean": best["mean"],
        "n_diverged": best["n_diverged"],
        "run_ids": best["run_ids"],
        "n_configs": len(table),
        "edge": grid_edges(runs, keys, values) + budget_edges(runs, keys, values),
    }


def grid_edges(runs: pd.DataFrame, keys: list[str], values: dict) -> list[str]:
    """Keys whose best value is the lowest or highest of >= 3 numeric values tried."""
    edges = []
    for key in keys:
        tried = pd.to_numeric(runs[key], errors="coerce").dropna().unique()
        value = pd.to_numeric(pd.Series([values[key]]), errors="coerce").iloc[0]
        if len(tried) >= 3 and not pd.isna(value) and value in (tried.min(), tried.max()):
            edges.append(key)
    return edges


def budget_edges(runs: pd.DataFrame, keys: list[str], values: dict) -> list[str]:
    """"<key>@<steps>" for each key whose best value is the lowest or highest of the >= 2 values
    rerun at the chosen config's budget (trainer.max_steps, a study's long stage) while the
    shorter grid tried values beyond it: the long stage should have walked on."""
    budget = "trainer.max_steps"
    if budget not in keys:
        return []
    at = runs[runs[budget] == values[budget]]
    edges = []
    for key in keys:
        if key == budget:
            continue
        tried = pd.to_numeric(runs[key], errors="coerce").dropna().unique()
        rerun = pd.to_numeric(at[key], errors="coerce").dropna().unique()
        value = pd.to_numeric(pd.Series([values[key]]), errors="coerce").iloc[0]
        if len(rerun) < 2 or pd.isna(value):
            continue
        if ((value == rerun.min() and value > tried.min())
                or (value == rerun.max() and value < tried.max())):
            edges.append(f"{key}@{int(values[budget])}")
    return edges


def default_baseline(method: str, methods: pd.DataFrame) -> str | None:
    """AdamW on the same adapter (and the same table row key, `study.rows`): prefer
    "<adapter>/adamw", else any adamw method of it."""
    adapter, row = methods.loc[method, "adapter"], methods.loc[method].get("row", "")
    candidates = methods[(methods["adapter"] == adapter) & (methods["optimizer"] == "adamw")
                         & (methods.get("row", "") == row)]
    if candidates.empty:
        return None
    plain = f"{adapter}/adamw{row}"
    return plain if plain in candidates.index else sorted(candidates.index)[0]


def declared_rows(df: pd.DataFrame) -> list[str]:
    """The config keys the records' study block splits methods by (`study.rows`, flattened to
    "adapter.r"): each value of them is its own table row, tuned and reported on its own."""
    column = df.get("study.rows")
    stated = set() if column is None else {str(v) for v in column.dropna() if str(v) != ""}
    if len(stated) > 1:
        raise ArgumentError(f"the records of one sweep state different study.rows: "
                            f"{', '.join(sorted(stated))}")
    return stated.pop().split(",") if stated else []


def split_rows(df: pd.DataFrame) -> pd.DataFrame:
    """The runs with each method named by its table row when the records declare study.rows
    ("lora/adamw" + " r=4"; column `row` = " r=4", "" without study.rows). Runs already split
    (a `row` column) are returned as they are."""
    if "row" in df:
        return df
    keys = declared_rows(df)
    if not keys:
        return df.assign(row="")
    suffix = row_suffix(df, keys)
    return df.assign(row=suffix, method=df["method"] + suffix)


def row_suffix(df: pd.DataFrame, keys: list[str]) -> pd.Series:
    """" r=4" for keys ["adapter.r"]: what a row's method name gets for its values of keys."""
    return df.apply(lambda run: "".join(f" {k.rsplit('.', 1)[-1]}={_fmt(run.get(k))}"
                                        for k in keys), axis=1)


def _column(df: pd.DataFrame, key: str, default) -> pd.Series:
    return df[key].fillna(default) if key in df else pd.Series(default, index=df.index)


def reported_loss(df: pd.DataFrame) -> str:
    """The summary column a table reports: the test loss when the records have one."""
    for key in REPORTED_LOSSES:
        if key in df and df[key].notna().any():
            return key
    return REPORTED_LOSSES[-1]


def seed_losses(runs: pd.DataFrame, loss_key: str) -> pd.Series:
    """Per seed (index), the reported loss of these runs: +inf if diverged or failed, NaN if no
    result; the mean when one seed was recorded twice."""
    values = [run_score(s, f) for s, f in zip(runs["status"], runs[loss_key])]
    return pd.Series(values, index=_column(runs, "seed", 0).astype(int).to_numpy(),
                     dtype=float).groupby(level=0).mean()


def reporting_losses(per_seed: pd.Series, tuning_seeds) -> pd.Series:
    """The seeds a row reports: those that did not tune when any has a result, else all."""
    kept = per_seed[~per_seed.index.isin(list(tuning_seeds))].dropna()
    return kept if len(kept) else per_seed.dropna()


def declared_tuning_seeds(df: pd.DataFrame) -> tuple[int, ...]:
    """The tuning seeds the records' study block states (`study.tuning_seeds`, flattened to
    "0" or "0,1"), else the protocol's TUNING_SEEDS; records of one sweep that disagree are an
    error."""
    column = df.get("study.tuning_seeds")
    stated = set() if column is None else {str(v) for v in column.dropna() if str(v) != ""}
    if len(stated) > 1:
        raise ArgumentError(f"the records of one sweep state different study.tuning_seeds: "
                            f"{', '.join(sorted(stated))}")
    if not stated:
        return TUNING_SEEDS
    return tuple(int(seed) for seed in stated.pop().split(","))


def tuned_table(df: pd.DataFrame, baseline: str | None = None,
                tuning_seeds=None) -> pd.DataFrame:
    """One row per method at its best hyperparameters, compared with the baseline method.

    ``baseline``: a method name used for every row; default AdamW on the same adapter.
    ``tuning_seeds``: left out of every row when the table tuned anything (some method tried
    more than one config) and the row has other seeds; default: what the records' study block
    states (`declared_tuning_seeds`).
    Columns: method, hyperparameters, <tuned keys>, n_configs, seeds (reported, "(diverged)"
    marks a diverged one), n_seeds, n_diverged (diverged runs of the chosen config, any seed),
    mean, std (over the reported seeds), then the comparison with the baseline (verdict.py):
    test ("paired" | "welch"), n, delta (method - baseline; negative = lower loss than the
    baseline), ci_low, ci_high, p, p_holm, conclusive ("yes" | "no" | "n/a" | "baseline"),
    detectable; baseline, edge, loss (the summary column reported), tuning_seeds (left out).
    """
    df = lm_runs(df)
    check_compatible(df)
    if df.empty:
        return pd.DataFrame()
    if "sweep" in df and df["sweep"].nunique() > 1:
        parts = [tuned_table(runs, baseline, tuning_seeds) for _, runs in df.groupby("sweep")]
        return pd.concat(parts, ignore_index=True)
    if tuning_seeds is None:
        tuning_seeds = declared_tuning_seeds(df)
    df = df.assign(adapter=_column(df, "adapter.name", "full"),
                   optimizer=_column(df, "optimizer.name", "adamw"))
    df = split_rows(df)  # balora_rank: "lora/adamw r=4", "lora/adamw r=8", ... each tuned alone
    best = {method: best_config(runs) for method, runs in df.groupby("method", sort=True)}
    methods = df.groupby("method")[["adapter", "optimizer", "row"]].first()
    names = {baseline + row for row in methods["row"].unique()} if baseline else set()
    if baseline is not None and not names & set(best):
        raise ArgumentError(f"baseline {baseline!r} is not a method of these runs; "
                         f"methods: {', '.join(best)}")
    loss_key = reported_loss(df)
    left_out = left_out_seeds(best, tuning_seeds)
    losses = chosen_losses(df, best, left_out)
    rows = []
    for method, chosen in best.items():
        base = (baseline + methods.loc[method, "row"] if baseline
                else default_baseline(method, methods))
        row = _table_row(method, chosen, losses[method], base, methods)
        if base in best and base != method:
            row.update(compare(losses[method], losses[base]))
        chosen_runs = df[df["run_id"].isin(chosen["run_ids"])]
        row.update(final_kappa(chosen_runs, losses[method].index))
        row.update(reporting_hosts(chosen_runs, losses[method].index))
        rows.append(row)
    table = pd.DataFrame(rows)
    compared = table["test"].ne("")
    if compared.any():
        judged = verdicts(table[compared])
        table.loc[compared, "p_holm"] = judged["p_holm"]
        table.loc[compared, "conclusive"] = judged["conclusive"]
    table = table.drop(columns="consistent").astype({"n": "Int64"})  # blank: not compared
    table["loss"] = loss_key
    table["tuning_seeds"] = ",".join(map(str, left_out))
    if "sweep" in df:
        table.insert(0, "sweep", df["sweep"].iloc[0])
    return table


def chosen_losses(df: pd.DataFrame, best: dict[str, dict], left_out) -> dict[str, pd.Series]:
    """Per method of `best` (`best_config`), the reported loss of each seed its row reports: the
    chosen config's runs (`seed_losses`), the tuning seeds `left_out`."""
    loss_key = reported_loss(df)
    return {method: reporting_losses(seed_losses(df[df["run_id"].isin(chosen["run_ids"])],
                                                 loss_key), left_out)
            for method, chosen in best.items()}


def final_kappa(runs: pd.DataFrame, seeds) -> dict:
    """kappa: the median over the reported `seeds` of these runs' last condition number of the
    horizontal Hessian, and kappa_seeds "k/n": of the n seeds whose Hessian was measured, the k
    where kappa is defined (the Hessian positive definite); kappa_gn and kappa_gn_seeds the same
    for the Gauss-Newton matrix (metrics.hessian.gauss_newton; defined where it is not singular).
    Blank where nothing was measured."""
    out = {}
    chosen = runs[_column(runs, "seed", 0).astype(int).isin(list(seeds))]
    for col, kappa_key, measured_key in (("kappa", FINAL_KAPPA, FINAL_SHARPNESS),
                                         ("kappa_gn", FINAL_KAPPA_GN, FINAL_GN_MAX)):
        out[col], out[f"{col}_seeds"] = math.nan, ""
        if measured_key not in chosen:
            continue
        measured = chosen[chosen[measured_key].notna()]
        if measured.empty:
            continue
        kappas = _column(measured, kappa_key, math.nan).dropna()
        out[col] = float(kappas.median()) if len(kappas) else math.nan
        out[f"{col}_seeds"] = f"{len(kappas)}/{len(measured)}"
    return out


HOST_KEYS = ("meta.host.cpu", "meta.host.cpu_capability")


def reporting_hosts(runs: pd.DataFrame, seeds) -> dict:
    """hosts: the processors ("<cpu> <kernel path>", `meta.host`) the reported `seeds` of these
    runs executed on, "; "-joined; hosts_unstated: how many of them predate `meta.host`. A run
    re-executed on another processor drifts (bench/tracking/identity.py host), so a reader
    of a paired comparison should know whether its arms ran on one machine."""
    chosen = runs[_column(runs, "seed", 0).astype(int).isin(list(seeds))]
    if chosen.empty:
        return {"hosts": "", "hosts_unstated": 0}
    stated = chosen[HOST_KEYS[0]].notna() if HOST_KEYS[0] in chosen else pd.Series(
        False, index=chosen.index)
    labels = {" ".join(str(r[k]) for k in HOST_KEYS if k in r and pd.notna(r[k]))
              for _, r in chosen[stated].iterrows()}
    return {"hosts": "; ".join(sorted(labels)), "hosts_unstated": int((~stated).sum())}


def measured_kappa(table: pd.DataFrame, col: str = "kappa") -> bool:
    """Whether any row of the table measured that matrix (a `<col>_seeds` cell is not blank)."""
    return bool(table.get(f"{col}_seeds", pd.Series(dtype=str)).fillna("").ne("").any())


def _seeds_label(losses: pd.Series) -> str:
    """"1, 2, 3 (diverged)": the reported seeds, a diverged one marked."""
    return ", ".join(f"{seed}" + (" (diverged)" if np.isinf(v) else "")
                     for seed, v in losses.items())


def _table_row(method, chosen, losses: pd.Series, base, methods) -> dict:
    finite = losses[np.isfinite(losses)]
    row = {
        "method": method,
        "adapter": methods.loc[method, "adapter"],
        "optimizer": methods.loc[method, "optimizer"],
        **({"row": methods.loc[method, "row"].strip()} if methods.loc[method, "row"] else {}),
        "hyperparameters": config_label(chosen["keys"], chosen["values"].values()),
        **chosen["values"],
        "n_configs": chosen["n_configs"],
        "seeds": _seeds_label(losses),
        "n_seeds": len(losses),
        "n_diverged": chosen["n_diverged"],
        "mean": float(losses.mean()) if len(losses) else math.nan,
        "std": float(finite.std(ddof=1)) if len(finite) > 1 else math.nan,
        "test": "", "n": None, "delta": math.nan, "ci_low": math.nan, "ci_high": math.nan,
        "p": math.nan, "p_holm": math.nan,
        "conclusive": "baseline" if method == base else "n/a",
        "detectable": math.nan, "consistent": True,
        "baseline": base or "",
        "edge": ",".join(chosen["edge"]),
    }
    if chosen["edge"]:
        where = ", ".join(f"{k}={_fmt(chosen['values'][k.partition('@')[0]])}"
                          for k in chosen["edge"])
        warnings.warn(f"{method}: best {where} is on the edge of the grid tried (key@steps: of "
                      "the values rerun at that budget); extend the grid or the long stage",
                      GridEdgeWarning, stacklevel=3)
    return row


def _sweep_choices(df: pd.DataFrame):
    """Per sweep: its LM runs, each method named per table row (`split_rows`), and each
    method's chosen config (`best_config`)."""
    for _, sweep in split_rows(lm_runs(df)).groupby("sweep", sort=True):
        yield sweep, {m: best_config(runs) for m, runs in sweep.groupby("method", sort=True)}


def left_out_seeds(best: dict[str, dict], tuning_seeds) -> list[int]:
    """The tuning seeds a table leaves out of its report, given each method's `best_config`:
    all of them where some method tried more than one config; none where nothing was tuned
    (one config per method, e.g. the default sweep)."""
    return sorted(tuning_seeds) if any(c["n_configs"] > 1 for c in best.values()) else []


def best_runs(df: pd.DataFrame) -> pd.DataFrame:
    """The runs (all seeds, any status) of each method's chosen config; with study.rows, of each
    table row's (`split_rows`: "lora/adamw r=4" and "lora/adamw r=8" are chosen apart)."""
    chosen = [run_id for _, best in _sweep_choices(df) for c in best.values()
              for run_id in c["run_ids"]]
    return df[df["run_id"].isin(chosen)]


def chosen_runs(df: pd.DataFrame) -> pd.DataFrame:
    """The runs of `best_runs`, methods named per table row, with what the figures need:
    `reported`, False on the seeds the tables leave out (`left_out_seeds` of
    `declared_tuning_seeds`) where the config has runs on other seeds, and `config`, the
    chosen config's label (`config_label`)."""
    parts = []
    for sweep, best in _sweep_choices(df):
        left_out = left_out_seeds(best, declared_tuning_seeds(sweep))
        for chosen in best.values():
            runs = sweep[sweep["run_id"].isin(chosen["run_ids"])]
            reported = ~runs["seed"].isin(left_out)
            parts.append(runs.assign(
                reported=reported if reported.any() else True,
                config=config_label(chosen["keys"], chosen["values"].values())))
    if not parts:
        return df.iloc[:0].assign(reported=pd.Series(dtype=bool), config=pd.Series(dtype=str))
    return pd.concat(parts)


def write_tuned(table: pd.DataFrame, figures: str | Path, sweep: str, note: str = ""
                ) -> list[Path]:
    """``figures/<sweep>_tuned.md`` and ``.csv``; `note` (e.g. the curvature estimates' cost,
    analysis.tables.curvature_cost) follows the reporting paragraph."""
    figures = Path(figures)
    figures.mkdir(parents=True, exist_ok=True)
    md, csv = figures / f"{sweep}_tuned.md", figures / f"{sweep}_tuned.csv"
    table.to_csv(csv, index=False)
    shown = ["method", "hyperparameters", "n_configs", "seeds", "n_diverged", "mean", "std",
             "test", "n", "delta", "ci_low", "ci_high", "p", "p_holm", "conclusive",
             "detectable", "kappa", "kappa_seeds", "kappa_gn", "kappa_gn_seeds", "baseline",
             "edge"]
    for col in ("kappa", "kappa_gn"):
        if not measured_kappa(table, col):
            shown = [c for c in shown if c not in (col, f"{col}_seeds")]
    md.write_text(
        f"# {sweep}: methods at their tuned hyperparameters\n\n"
        + markdown_table(table[[c for c in shown if c in table]])
        + "\n\n" + reporting(table) + (" " + note if note else "") + "\n\n" + PROTOCOL + "\n"
    )
    return [md, csv]


def reporting(table: pd.DataFrame) -> str:
    """What this table reports: which loss, over which seeds, and its family of comparisons."""
    if table.empty:
        return "No runs."
    loss = str(table["loss"].iloc[0])
    kind = (f"test loss (`{loss}`)" if "test" in loss
            else f"eval loss (`{loss}`: these records have no test split, so the split that "
                 "selects also reports)")
    seeds = sorted({s.split(" ")[0] for cell in table["seeds"] for s in cell.split(", ") if s},
                   key=int)
    left_out = str(table["tuning_seeds"].iloc[0])
    why = (f"tuning seed {left_out} is left out wherever a method has other seeds"
           if left_out else "no configuration was tuned (one per method), so every seed reports")
    m = int(table["p"].notna().sum())
    few = int((table["test"].fillna("").ne("") & (table["n"] < MIN_SEEDS)).sum())
    text = (f"This table reports the final {kind} over seeds {', '.join(seeds)} "
            f"({why}); Holm's correction runs over its {m} comparison{'s' * (m != 1)} with a "
            "p-value.")
    if few > 0:
        verb = "have" if few != 1 else "has"
        text += (f" {few} of its comparisons {verb} fewer than {MIN_SEEDS} seeds, so no verdict "
                 "(n/a) whatever the p-value.")
    text += _hosts_sentence(table)
    if measured_kappa(table):
        text += (" kappa = the median over those seeds of the condition number of the adapted "
                 "layers' horizontal Hessian at the run's last estimate (Lanczos, "
                 "bench/metrics/monitor.py); kappa_seeds = k/n: of the n seeds measured, the k "
                 "where that Hessian was positive definite, so that kappa is defined.")
    if measured_kappa(table, "kappa_gn"):
        text += (" kappa_gn = the same median for the Gauss-Newton matrix J^T H_z J on the "
                 "horizontal space (positive semidefinite, so defined wherever it is not "
                 "singular; kappa_gn_seeds counts those seeds). Both are ratios of Lanczos Ritz "
                 "values after a fixed number of steps: lower bounds of the true ratios, "
                 "comparable between methods measured alike.")
    return text


def _hosts_sentence(table: pd.DataFrame) -> str:
    """Where the reported runs executed (`reporting_hosts`), in words."""
    if "hosts" not in table:
        return ""
    hosts = sorted({h for cell in table["hosts"].fillna("") for h in cell.split("; ") if h})
    unstated = int(pd.to_numeric(table["hosts_unstated"], errors="coerce").fillna(0).sum())
    if not hosts and not unstated:
        return ""
    text = ""
    if hosts:
        text = (f" Its reported runs executed on {len(hosts)} processor"
                f"{'s' * (len(hosts) != 1)} (`meta.host`: {'; '.join(hosts)})")
        text += f"; {unstated} more predate that record." if unstated else "."
    else:
        text = (f" Its {unstated} reported runs predate `meta.host`: where they executed is not "
                "recorded.")
    if len(hosts) > 1:
        text += (" The same run re-executed on another processor drifts in floating point, which "
                 "training amplifies: a paired comparison whose arms ran on different processors "
                 "carries that spread too.")
    return text


PROTOCOL = (
    "Protocol: per method, among the configurations run with the most seeds (with a grid on the "
    "tuning seed and more seeds at its best, that best), the one with the lowest final eval loss "
    "on the tuning seed, then over all its seeds; a diverged or failed seed counts as +inf, so a "
    "configuration where a seed diverged is never chosen over one where none did (n_diverged: "
    "diverged runs of the chosen configuration). Each row reports its loss at that configuration "
    "on the seeds listed (a diverged one is marked \"(diverged)\" and counts as +inf: the row's "
    "mean is then inf; std is over the seeds that finished). Comparisons with the baseline are "
    "paired by seed (seed s of every method sees the same batches, so the seed-to-seed variance "
    "cancels): "
    "delta = mean over seeds of (method - baseline), negative = the method has the lower loss; "
    f"[ci_low, ci_high] = the {CONFIDENCE:.0%} interval of delta from the t distribution of the "
    "paired differences (n - 1 degrees of freedom); p = the two-sided paired t-test; n = the "
    "paired seeds. When the two arms neither have the same seeds nor share at least "
    f"{MIN_SEEDS}, test = welch: Welch's unpaired t-test on each arm's seeds, n = the smaller "
    "arm. The interval and p use the seeds both arms finished; a seed where only one arm "
    "diverged makes delta +inf (the method diverged) or -inf (the baseline did). p_holm = "
    "Holm's step-down adjustment of p over all comparisons of this table (monotone, capped at "
    f"1); conclusive = yes when p_holm < {ALPHA} with n >= {MIN_SEEDS} and no diverged seed "
    f"points the other way, n/a when n < {MIN_SEEDS} (too few seeds for a verdict, whatever p "
    "says), else no; detectable = the smallest difference this design detects with "
    f"{POWER:.0%} power at two-sided alpha {ALPHA}, from n and the observed spread (noncentral "
    "t), so \"no\" reads as \"no difference larger than detectable\". edge = the best value is "
    "the lowest or highest of >= 3 values tried, or (key@steps) of those rerun at the reporting "
    "budget while the grid tried more beyond it."
)
