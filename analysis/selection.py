"""The one selection rule: which configuration of each method a study reports (docs/design.md §8).

Per method (per table row, with `study.rows`), the runs that differ only by seed form a
*configuration* (grouped by `meta.config_id`, the digest of the semantic config without the
seed). A configuration's score on a set of seeds is the mean of their final validation losses, a
diverged or failed seed counting as +inf, so a configuration where any seed diverged loses to
every one where none did. The chosen configuration is, among those run on the most seeds (the
two-stage protocol: a grid on the tuning seeds, then the reporting seeds at its best), the one
with the lowest score on the tuning seeds, then on all its seeds. The tuned tables, every
figure, the study runner's stages and gpu_check all choose through `select` (figures and tables
receive the `Selection` as data).

A sweep whose records declare no study (`declares_study`: `study.name` null and no stages, rows
or tuning seeds of a study: a plain `python -m bench.run -m ...`) tuned nothing: every key that
varies between the runs of one method (`adapter.r=4,16`, `optimizer.lr=...`) is an axis, so each
swept configuration is its own table row ("lora/adamw r=4"), reported over all its seeds (no
tuning seed left out), and compared with the first adapter's AdamW at the same values of the
swept keys (`default_baseline`). Records with no `study` block at all (tables built by hand,
sources that leave it out) keep the tuning rule.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from analysis.records import STATED_KEYS, ArgumentError, lm_runs
from bench.record import BAD_STATUSES, SUMMARY_KEYS, semantic

TUNED_KEYS = ("optimizer.lr", "optimizer.manifold_lr", "adapter.alpha", "adapter.scale")
# Settings that may differ between the runs of one config: the record's own bookkeeping, and
# what is measured (metrics.*, how often eval runs).
_BOOKKEEPING = ("seed", "run_dir", "run_id", "method", "task", "trainer.eval_every", "row",
                "adapter", "optimizer", "base")
_BOOKKEEPING_PREFIXES = ("meta.", "hydra.", "metrics.", "wandb.")
CONFIG_ID = "meta.config_id"
TUNING_SEEDS = (0,)  # the protocol's tuning seeds where the records declare none
STUDY_NAME = "study.name"  # null in the records of a plain run or sweep
# "The first adapter" of a sweep without a study, whose AdamW is every row's default baseline:
# full fine-tuning, then LoRA, then the others by name (a record does not state the order in
# which a command line listed its adapters).
FIRST_ADAPTERS = ("full", "lora")
# The reported loss, first present wins: the test split's, else the eval split's (which selects).
REPORTED_LOSSES = ("final_test_loss", "final_eval_loss")


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
    stated = runs[STATED_KEYS].map(set) if STATED_KEYS in runs else None

    def varies(c: str) -> bool:  # among the runs whose record states the key
        values = runs[c] if stated is None else runs[c][stated.map(lambda keys: c in keys)]
        return values.astype(str).nunique(dropna=False) > 1

    varying = [
        c for c in runs.columns
        if c not in skip and not c.startswith(_BOOKKEEPING_PREFIXES) and not c.endswith(".seed")
        and semantic(c) and runs[c].astype(str).nunique(dropna=False) > 1 and varies(c)
    ]
    return [k for k in TUNED_KEYS if k in varying] + [k for k in varying if k not in TUNED_KEYS]


def fmt(value) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def config_label(keys, values) -> str:
    """"optimizer.lr=0.001, adapter.alpha=16" (unset values left out)."""
    return ", ".join(f"{k}={fmt(v)}" for k, v in zip(keys, values)
                     if not (pd.api.types.is_scalar(v) and pd.isna(v)))


def config_groups(runs: pd.DataFrame, keys: list[str]) -> list[pd.DataFrame]:
    """The runs of one method split into configs (by `meta.config_id`), in the order of their
    values of `keys`."""
    groups = [group for _, group in runs.groupby(CONFIG_ID, sort=True)]
    if not keys:
        return groups
    order = pd.DataFrame([group.iloc[0][keys] for group in groups]).reset_index(drop=True)
    order = order.sort_values(keys, na_position="last", kind="stable").index
    return [groups[i] for i in order]


@dataclass
class Choice:
    """One method's (one table row's) chosen configuration."""

    method: str  # with its row: "lora/adamw r=4"
    keys: list[str]  # the settings that vary between the method's runs (tuned ones first)
    values: dict  # their values at the chosen configuration
    scores: np.ndarray  # its runs' scores (`run_score`), every seed
    mean: float
    n_diverged: int  # diverged or failed runs of the chosen configuration, any seed
    run_ids: list[str]
    n_configs: int  # configurations tried
    edge: list[str] = field(default_factory=list)  # `grid_edges` + `budget_edges`
    # other configurations whose tuning-seed mean is within the chosen one's tuning-seed spread
    # (max - min) of its tuning-seed mean: "lr=0.003 (+0.0004)", closest first (`near_ties`)
    near_ties: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        return config_label(self.keys, self.values.values())


def score_configs(runs: pd.DataFrame, tuning_seeds) -> tuple[list[str], pd.DataFrame]:
    """The configs of one method (`config_groups`) with their seeds' scores, best first."""
    keys = config_keys(runs)
    runs = runs.assign(_score=[run_score(s, f) for s, f in zip(runs["status"],
                                                                 runs["final_eval_loss"])])
    # With a single config, still name its learning rate in tables and legends.
    shown = keys or [k for k in TUNED_KEYS[:1] if k in runs and runs[k].notna().any()]
    rows = []
    tuning_runs = runs[runs["seed"].isin(tuning_seeds)]
    for group in config_groups(runs, keys):
        scores = group["_score"].dropna().to_numpy(dtype=float)
        tuning = _tuning_scores(tuning_runs, keys, group.iloc[0])
        rows.append({
            **{k: group.iloc[0][k] for k in shown},
            "scores": scores,
            "mean": scores.mean() if len(scores) else math.nan,
            "_tuning": tuning.mean() if len(tuning) else math.nan,
            "_spread": (float(tuning.max() - tuning.min())
                        if len(tuning) and np.isfinite(tuning).all() else math.nan),
            "n_diverged": int(group["status"].isin(BAD_STATUSES).sum()),
            "run_ids": list(group["run_id"]),
            "n_runs": len(group),
        })
    table = pd.DataFrame(rows)
    # The configs that got the most seeds are the ones the grid selected, so they come first;
    # within them the lowest tuning-seed loss (the protocol's selection: when a long stage walked
    # on, the config it chose over one that had already run its reporting seeds), then the
    # lowest mean. NaN (no finished seed) sorts after +inf: a config with no result never wins.
    table = table.assign(_tier=-table["n_runs"]).sort_values(
        ["_tier", "_tuning", "mean"], na_position="last", kind="stable").drop(columns="_tier")
    return shown, table.reset_index(drop=True)


def near_ties(keys: list[str], table: pd.DataFrame) -> list[str]:
    """The configurations of `score_configs`' table (the chosen one first) whose tuning-seed
    mean is at most the chosen one's plus its tuning seeds' spread (max - min; 0 with one
    tuning seed, so only an exact tie): those the tuning seeds cannot tell from the choice.
    Each as its label and its difference to the choice, closest first."""
    best = table.iloc[0]
    if not np.isfinite(best["_tuning"]) or len(keys) == 0:
        return []
    spread = best["_spread"] if np.isfinite(best["_spread"]) else 0.0
    # the chosen values' other groups (reporting seeds recorded under another config_id) are
    # the choice itself
    other = ~np.logical_and.reduce([table[k].astype(str) == str(best[k]) for k in keys])
    gaps = (table["_tuning"] - best["_tuning"])[other]
    close = gaps[np.isfinite(gaps) & (gaps <= spread)].sort_values(kind="stable")
    return [f"{config_label(keys, [table.loc[i, k] for k in keys])} ({gap:+.4f})"
            for i, gap in close.items()]


def _tuning_scores(tuning_runs: pd.DataFrame, keys: list[str], config: pd.Series) -> pd.Series:
    """The scores of the tuning-seed runs of `config` (same values of `keys`): looked up in all
    of the method's tuning-seed runs, since a reporting stage's extra measurements (metrics.*)
    give its seeds another meta.config_id than the tuning run that selected them."""
    mask = pd.Series(True, index=tuning_runs.index)
    for key in keys:
        mask &= tuning_runs[key].astype(str) == str(config[key])
    return tuning_runs.loc[mask, "_score"].dropna()


def choose(method: str, runs: pd.DataFrame, tuning_seeds=TUNING_SEEDS) -> Choice:
    """The chosen configuration of one method (one table row) among its runs."""
    keys, table = score_configs(runs, tuning_seeds)
    best = table.iloc[0]
    values = {k: best[k] for k in keys}
    return Choice(method, keys, values, best["scores"], best["mean"], best["n_diverged"],
                  best["run_ids"], len(table),
                  grid_edges(runs, keys, values) + budget_edges(runs, keys, values),
                  near_ties(keys, table))


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


# ----------------------------------------------------------------------- rows and seeds
def _declared(df: pd.DataFrame, column: str) -> str | None:
    """The one value a sweep's records state in a study column ("" or absent: None)."""
    values = df.get(column)
    stated = set() if values is None else {str(v) for v in values.dropna() if str(v) != ""}
    if len(stated) > 1:
        raise ArgumentError(f"the records of one sweep state different {column}: "
                            f"{', '.join(sorted(stated))}")
    return stated.pop() if stated else None


def declared_rows(df: pd.DataFrame) -> list[str]:
    """The config keys the records' study block splits methods by (`study.rows`, flattened to
    "adapter.r"): each value of them is its own table row, tuned and reported on its own."""
    stated = _declared(df, "study.rows")
    return stated.split(",") if stated else []


def declared_tuning_seeds(df: pd.DataFrame) -> tuple[int, ...]:
    """The tuning seeds the records' study block states (`study.tuning_seeds`; of records that
    state different ones, all of them), else TUNING_SEEDS."""
    values = df.get("study.tuning_seeds")
    stated = set() if values is None else {str(v) for v in values.dropna() if str(v) != ""}
    # records run under successive protocols (tuning seed 0, then 0 and 6): a seed any of them
    # tuned on is never reported
    seeds = sorted({int(seed) for value in stated for seed in value.split(",")})
    return tuple(seeds) if seeds else TUNING_SEEDS


def declares_study(df: pd.DataFrame) -> bool:
    """Whether these records were run under a study's protocol (and so tuned): True where some
    record names a study (`study.name`) or states a protocol key the selection follows (study
    `stages`, `rows`, tuning seeds other than the default 0), and where no record carries the
    study block at all (tables built by hand, or runs read from a source that leaves it out:
    the tuning rule, as before); False for records whose block is a plain run's (a sweep
    without a study: `python -m bench.run -m ...`). A declared baseline alone (gpu_check's
    comparison) is no study: nothing was tuned there."""
    block = [c for c in df.columns if c.startswith("study.")]
    if not block or not df[block].notna().to_numpy().any():
        return True
    for key, default in ((STUDY_NAME, ""), ("study.stages", ""), ("study.rows", ""),
                         ("study.tuning_seeds", ",".join(map(str, TUNING_SEEDS)))):
        if key in df and not df[key].dropna().astype(str).isin(["", default]).all():
            return True
    return False


LADDER_STAGE = "ladder"  # study.stage of a ladder's runs: "ladder@<size>@<budget>"


def ladder_split(df: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(the study's own runs, its ladder's runs: `study.stage` ladder@...). The tables and
    figures of a sweep read its own runs (a ladder's budgets and sizes mixed into one table
    would choose across them), the scale table its ladder's (analysis.scale). A sweep of a
    ladder alone reports its largest budget at its largest size in the tables."""
    stage = df["study.stage"] if "study.stage" in df else pd.Series(None, index=df.index)
    in_ladder = stage.astype(str).str.startswith(LADDER_STAGE)
    own, ladder = df[~in_ladder], df[in_ladder]
    if own.empty and not ladder.empty:
        steps = pd.to_numeric(ladder.get("trainer.max_steps"), errors="coerce")
        own = ladder[steps == steps.max()] if steps.notna().any() else ladder
        width = pd.to_numeric(own.get("model.d_model"), errors="coerce")
        own = own[width == width.max()] if width.notna().any() else own
    return own, ladder


def swept_keys(df: pd.DataFrame) -> list[str]:
    """The keys a sweep without a study varied: those that vary between the runs of one method
    (`config_keys`; a method's own name, `base`, where its runs are split already), in the order
    of the methods' names."""
    keys: list[str] = []
    names = column(df, "base", None).fillna(df["method"]) if "base" in df else df["method"]
    for _, runs in df.groupby(names, sort=True):
        keys += [k for k in config_keys(runs) if k not in keys]
    return keys


def row_keys(df: pd.DataFrame) -> list[str]:
    """The keys that split a sweep's methods into table rows: the study's `study.rows`, or for a
    sweep without a study every key it swept (`swept_keys`)."""
    return declared_rows(df) if declares_study(df) else swept_keys(df)


def row_suffix(df: pd.DataFrame, keys: list[str]) -> pd.Series:
    """" r=4" for keys ["adapter.r"]: what a row's method name gets for its values of keys (a
    key the run leaves unset, such as another optimizer's knob, adds nothing)."""
    return df.apply(lambda run: "".join(f" {k.rsplit('.', 1)[-1]}={fmt(run.get(k))}"
                                        for k in keys if not _unset(run.get(k))), axis=1)


def _unset(value) -> bool:
    return value is None or (pd.api.types.is_scalar(value) and pd.isna(value))


def row_order(row: str):
    """Sort key of a table row (" r=16"): by its number where it has one, else by name."""
    value = row.split("=", 1)[-1]
    try:
        return (0, float(value), row)
    except ValueError:
        return (1, 0.0, row)


def split_rows(df: pd.DataFrame, keys: list[str] | None = None) -> pd.DataFrame:
    """The runs with each method named by its table row ("lora/adamw" + " r=4"; column `row` =
    " r=4", "" without rows; `base` = the method without its row), and the `adapter` and
    `optimizer` of each; `keys`: the row keys, default `row_keys` (the records' study.rows, or
    the swept keys of a sweep without a study). Runs already split (a `row` column) are
    returned as they are."""
    if "row" in df:
        return df
    study = declares_study(df)
    keys = row_keys(df) if keys is None else keys
    df = df.assign(base=df["method"], adapter=column(df, "adapter.name", "full"),
                   optimizer=column(df, "optimizer.name", "adamw"))
    if not keys:
        return df.assign(row="")
    suffix = row_suffix(df, keys) if study else swept_suffix(df, keys)
    return df.assign(row=suffix, method=df["method"] + suffix)


def swept_suffix(df: pd.DataFrame, keys: list[str]) -> pd.Series:
    """`row_suffix` of a sweep without a study: each method's rows name only the keys swept
    within that method ("lora/adamw r=4" beside "full/adamw lr=0.001")."""
    suffix = pd.Series("", index=df.index, dtype=object)
    for _, runs in df.groupby("method", sort=False):
        own = set(config_keys(runs))
        mine = [k for k in keys if k in own]
        if mine:
            suffix[runs.index] = row_suffix(runs, mine)
    return suffix


def column(df: pd.DataFrame, key: str, default) -> pd.Series:
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
    return pd.Series(values, index=column(runs, "seed", 0).astype(int).to_numpy(),
                     dtype=float).groupby(level=0).mean()


# ---------------------------------------------------------------------------- the sweep
@dataclass
class Selection:
    """The choices of one sweep: its LM runs (methods named per table row, `split_rows`), each
    method's `Choice`, the tuning seeds its tables leave out and the loss they report."""

    runs: pd.DataFrame
    choices: dict[str, Choice]
    tuning_seeds: tuple[int, ...]
    left_out: list[int]
    loss_key: str
    row_keys: list[str] = field(default_factory=list)  # study.rows, or the swept keys
    tuned: bool = True  # False: records without a study (`declares_study`), nothing tuned

    def chosen(self, method: str) -> pd.DataFrame:
        """The runs (every seed, any status) of a method's chosen configuration."""
        return self.runs[self.runs["run_id"].isin(self.choices[method].run_ids)]

    def losses(self, method: str) -> pd.Series:
        """The reported loss of each seed the method's row reports: its chosen configuration's
        seeds without the left-out tuning seeds (all of them where it has no other)."""
        per_seed = seed_losses(self.chosen(method), self.loss_key)
        kept = per_seed[~per_seed.index.isin(self.left_out)].dropna()
        return kept if len(kept) else per_seed.dropna()

    def reported_seeds(self, method: str) -> list[int]:
        return [int(s) for s in self.losses(method).index]

    def row(self, method: str) -> dict:
        """{row key: value} of a method's table row ({} without rows)."""
        first = self.chosen(method).iloc[0]
        return {key: first[key] for key in self.row_keys}

    def default_baseline(self, method: str) -> str | None:
        """The method a table row is compared with when no baseline is given or declared: in a
        study, AdamW on the same adapter in the same table row; in a sweep without a study, the
        first adapter's AdamW (`FIRST_ADAPTERS`, then by name: the first that has an AdamW row)
        at the same values of the swept keys (those both rows set). None: no such row."""
        methods = self.runs.groupby("method")[["adapter", "optimizer", "row"]].first()
        if self.tuned:
            return same_adapter_adamw(method, methods)
        mine = self.row(method)
        adamw = [m for m in methods.index[methods["optimizer"] == "adamw"]
                 if all(_unset(v) or _unset(mine.get(k)) or str(v) == str(mine[k])
                        for k, v in self.row(m).items())]
        adapters = sorted({methods.loc[m, "adapter"] for m in adamw},
                          key=lambda a: (FIRST_ADAPTERS.index(a) if a in FIRST_ADAPTERS
                                         else len(FIRST_ADAPTERS), a))
        if not adapters:
            return None
        first = [m for m in adamw if methods.loc[m, "adapter"] == adapters[0]]
        plain = [m for m in first if self.base(m) == f"{adapters[0]}/adamw"]
        return sorted(plain or first)[0]

    def base(self, method: str) -> str:
        """The method without its table row ("lora/adamw r=4" -> "lora/adamw")."""
        return str(self.chosen(method)["base"].iloc[0])

    def row_axis(self) -> tuple[str, dict[str, float]] | None:
        """(the short name of the one numeric `study.rows` key, its value per method): the x
        axis of a table split by it (balora_rank: ("r", {"lora/adamw r=4": 4.0, ...})); None
        without rows, with several keys, or with a row that is not a number."""
        keys = self.row_keys
        if len(keys) != 1 or not self.choices:
            return None
        values = pd.to_numeric(pd.Series({m: self.row(m)[keys[0]] for m in self.choices}),
                               errors="coerce")
        return None if values.isna().any() else (keys[0].rsplit(".", 1)[-1], values.to_dict())

    def chosen_runs(self) -> pd.DataFrame:
        """The chosen configurations' runs, with what the figures need: `reported`, False on the
        left-out seeds where the config has runs on other seeds, and `config`, its label."""
        parts = []
        for method, choice in self.choices.items():
            runs = self.chosen(method)
            reported = ~runs["seed"].isin(self.left_out)
            parts.append(runs.assign(reported=reported if reported.any() else True,
                                     config=choice.label))
        return pd.concat(parts) if parts else self.runs.iloc[:0].assign(
            reported=pd.Series(dtype=bool), config=pd.Series(dtype=str))


def same_adapter_adamw(method: str, methods: pd.DataFrame) -> str | None:
    """AdamW on the same adapter (and the same table row key, `study.rows`): prefer
    "<adapter>/adamw", else any adamw method of it. `methods`: adapter, optimizer, row by
    method."""
    adapter, row = methods.loc[method, "adapter"], methods.loc[method].get("row", "")
    candidates = methods[(methods["adapter"] == adapter) & (methods["optimizer"] == "adamw")
                         & (methods.get("row", "") == row)]
    if candidates.empty:
        return None
    plain = f"{adapter}/adamw{row}"
    return plain if plain in candidates.index else sorted(candidates.index)[0]


def left_out_seeds(choices: dict[str, Choice], tuning_seeds) -> list[int]:
    """The tuning seeds a table leaves out of its report: all of them where some method tried
    more than one config; none where nothing was tuned (one config per method)."""
    return sorted(tuning_seeds) if any(c.n_configs > 1 for c in choices.values()) else []


def select_sweep(df: pd.DataFrame, tuning_seeds=None, rows: list[str] | None = None
                 ) -> Selection:
    """The `Selection` of one sweep's runs (`tuning_seeds`, `rows`: default the records' own
    study block's). Records without a study (`declares_study`; neither argument given) tuned
    nothing: their swept keys are the rows, each row reports every seed."""
    lm = lm_runs(df)
    tuned = tuning_seeds is not None or rows is not None or declares_study(lm)
    keys = list(rows) if rows is not None else declared_rows(lm) if tuned else swept_keys(lm)
    runs = split_rows(lm, keys)
    if tuning_seeds is None:
        tuning_seeds = declared_tuning_seeds(runs)
    choices = {method: choose(method, group, tuning_seeds)
               for method, group in runs.groupby("method", sort=True)}
    left_out = left_out_seeds(choices, tuning_seeds) if tuned else []
    return Selection(runs, choices, tuple(tuning_seeds), left_out, reported_loss(runs), keys,
                     tuned)


def select(df: pd.DataFrame) -> dict[str, Selection]:
    """Every sweep's `Selection`, by sweep."""
    return {sweep: select_sweep(runs)
            for sweep, runs in lm_runs(df).groupby("sweep", sort=True)}
