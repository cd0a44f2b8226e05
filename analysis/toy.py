"""Figures and table of the `balora_toy` study (experiments/balora_toy/README.md).

Reads the toy runs' records only (``config.yaml`` and ``toy.json``, written by bench/toy.py):

- ``<sweep>_excess_loss.png/.pdf`` (the BaLoRA paper's Fig. 3): one panel per optimizer, median
  and interquartile band over inits of the excess loss over the optimal rank-r loss vs step, log
  y, one line per variant (LoRA, BaLoRA with procrustes / sign / none alignment);
- ``<sweep>_kappa_hist.png/.pdf`` (the paper's Fig. 6): histograms over inits of the exact
  Hessian condition number at the end points, log x, per optimizer;
- ``<sweep>_gap_per_problem.png/.pdf``: per problem (T, W0), LoRA's median final excess loss
  over each BaLoRA variant's (the paper's GD claim is about this ratio for its one problem);
- ``<sweep>_toy.md``: median final excess loss and median kappa per (variant, optimizer), and
  LoRA's median final excess loss over each variant's (the "GD gap"): pooled, with a bootstrap
  interval over problems, and per problem, its distribution (median with a bootstrap interval,
  quartiles, the share of problems >= 10x with a bootstrap interval).

A problem is one draw of (T, W0), named by the seed that drew it (bench/toy.py). The curves,
histograms and pooled medians pool the inits of every problem of a (variant, optimizer).
Entry point: ``toy_figures``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from analysis.markdown import markdown_table  # noqa: E402
from analysis.plots import save  # noqa: E402
from bench.record import TOY_FILE, RecordError, read_record, read_toy  # noqa: E402

OPTIMIZERS = {"gd": "GD", "sign_gd": "sign-GD (the paper's \"Adam\")", "adam": "Adam"}
VARIANTS = {  # (adapter, alignment) -> label, colour, line style; the order of legends and rows
    ("lora", None): ("LoRA", "tab:red", "-"),
    ("balora", "procrustes"): ("BaLoRA", "tab:blue", "-"),
    ("balora", "sign"): ("BaLoRA (sign)", "tab:green", "--"),
    ("balora", "none"): ("BaLoRA (none)", "tab:purple", ":"),
}
# GD is equivariant under B -> B O, A -> O^T A (O orthogonal) and sign-GD under signed
# permutations, so some alignments give identical curves there: the styles keep both visible.
TINY = 1e-16  # excess losses are clipped here for the log axis (rounding can make them <= 0)


def _variant(adapter: str, alignment: str | None) -> str:
    key = (adapter, alignment if adapter == "balora" else None)
    return VARIANTS[key][0] if key in VARIANTS else f"{adapter}:{alignment}"


def is_toy_run(run_dir: Path) -> bool:
    """A run record of the toy task that has finished writing its toy.json."""
    record = read_record(run_dir)
    return record.config.get("task") == "toy" and (Path(run_dir) / TOY_FILE).is_file()


def load_toy(run_dirs: Iterable[Path]) -> pd.DataFrame:
    """One row per (run, init): variant, optimizer, seed, problem (the seed that drew its (T, W0)),
    lr, the excess-loss curve (an array of steps + 1 values), kappa, lambda_max, gap. Inits
    without a kept LR have a NaN curve. A toy.json that cannot be read is skipped, warned."""
    rows = []
    for run_dir in map(Path, run_dirs):
        config = read_record(run_dir).config
        try:
            toy = read_toy(run_dir)
        except RecordError as e:
            warnings.warn(f"skipped {run_dir}: {e}", stacklevel=2)
            continue
        label = _variant(toy["adapter"], toy.get("alignment"))
        # a record of one problem (no `problem` list) is the problem its seed draws
        problems = toy.get("problem") or [config.get("seed")] * len(toy["excess"])
        for i, curve in enumerate(toy["excess"]):
            rows.append({
                "run_dir": str(run_dir),
                "variant": label,
                "optimizer": toy["optimizer"],
                "method": toy["method"],
                "seed": config.get("seed"),
                "problem": problems[i],
                "init": i,
                "lr": toy["lr"][i],
                "curve": np.array([np.nan if v is None else v for v in curve], dtype=float),
                "kappa": toy["kappa"][i],
                "lambda_max": toy["lambda_max"][i],
                "gap": toy["gap"][i],
            })
    df = pd.DataFrame(rows)
    for col in ("lr", "kappa", "lambda_max", "gap"):
        if col in df:
            df[col] = pd.to_numeric(df[col], errors="coerce")
    return df


def _order(df: pd.DataFrame) -> tuple[list[str], list[str]]:
    """Optimizers and variants present, in the canonical order (unknown ones last)."""
    opts = [o for o in OPTIMIZERS if o in set(df["optimizer"])]
    opts += sorted(set(df["optimizer"]) - set(opts))
    known = [label for label, _, _ in VARIANTS.values()]
    variants = [v for v in known if v in set(df["variant"])]
    variants += sorted(set(df["variant"]) - set(variants))
    return opts, variants


def _style(variant: str) -> tuple[str, str]:
    """(colour, line style) of a variant."""
    return next(((c, ls) for label, c, ls in VARIANTS.values() if label == variant),
                ("tab:gray", "-."))


def draw_excess_loss(df: pd.DataFrame, figures: Path, sweep: str) -> list[Path]:
    """Paper Fig. 3: median and interquartile band of the excess loss vs step, per optimizer."""
    opts, variants = _order(df)
    fig, axes = plt.subplots(1, len(opts), figsize=(4.2 * len(opts), 3.4), squeeze=False)
    for ax, opt in zip(axes[0], opts):
        for variant in variants:
            sel = df[(df["optimizer"] == opt) & (df["variant"] == variant)]
            if sel.empty:
                continue
            curves = np.maximum(np.stack(sel["curve"].to_list()), TINY)  # (inits, steps + 1)
            curves = curves[~np.isnan(curves).all(axis=1)]
            if not len(curves):
                continue
            q25, med, q75 = np.nanquantile(curves, [0.25, 0.5, 0.75], axis=0)
            steps = np.arange(curves.shape[1])
            color, ls = _style(variant)
            ax.plot(steps, med, color=color, ls=ls, lw=1.6, label=f"{variant} (n={len(curves)})")
            ax.fill_between(steps, q25, q75, color=color, alpha=0.2, lw=0)
        ax.set_yscale("log")
        ax.set_title(OPTIMIZERS.get(opt, opt))
        ax.set_xlabel("step")
        ax.grid(True, which="major", alpha=0.3)
    axes[0][0].set_ylabel("excess loss over the best rank-r loss")
    axes[0][0].legend(fontsize=8)
    problems = df["problem"].nunique()
    fig.suptitle(f"{sweep}: median and interquartile range over the inits of {problems} "
                 f"problem{'s' if problems > 1 else ''}, LR tuned per init")
    fig.tight_layout()
    return save(fig, figures, f"{sweep}_excess_loss")


def draw_kappa_hist(df: pd.DataFrame, figures: Path, sweep: str) -> list[Path]:
    """Paper Fig. 6: histograms of the end points' exact condition numbers, per optimizer."""
    opts, variants = _order(df)
    fig, axes = plt.subplots(1, len(opts), figsize=(4.2 * len(opts), 3.2), squeeze=False)
    for ax, opt in zip(axes[0], opts):
        sel = df[df["optimizer"] == opt]
        finite = sel["kappa"][np.isfinite(sel["kappa"]) & (sel["kappa"] > 0)]
        if finite.empty:
            ax.set_title(OPTIMIZERS.get(opt, opt) + " (no finite kappa)")
            continue
        lo, hi = np.log10(finite.min()), np.log10(finite.max())
        bins = np.logspace(lo - 0.05, hi + 0.05, 25)
        for variant in variants:
            kappa = sel.loc[sel["variant"] == variant, "kappa"]
            ok = kappa[np.isfinite(kappa) & (kappa > 0)]
            missing = len(kappa) - len(ok)
            if kappa.empty:
                continue
            label = variant + (f" ({missing} not finite)" if missing else "")
            color, ls = _style(variant)
            if ls == "-":  # LoRA and BaLoRA filled, the other alignments as outlines
                ax.hist(ok, bins=bins, color=color, alpha=0.45, label=label)
            else:
                ax.hist(ok, bins=bins, color=color, ls=ls, lw=1.6, histtype="step", label=label)
        ax.set_xscale("log")
        ax.set_title(OPTIMIZERS.get(opt, opt))
        ax.set_xlabel(r"$\kappa = \lambda_{max} / \lambda_{r^2+1}$ at the end point")
    axes[0][0].set_ylabel("inits")
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"{sweep}: exact Hessian condition number after the last step")
    fig.tight_layout()
    return save(fig, figures, f"{sweep}_kappa_hist")


def draw_problem_ratios(df: pd.DataFrame, figures: Path, sweep: str) -> list[Path]:
    """The paper's Fig. 3 summary statistic once per problem: LoRA's median final excess loss
    over each BaLoRA variant's, one dot per problem (T, W0), per optimizer, log y; the bar is
    the median over problems, the dashed line the paper's 10x (its GD claim)."""
    opts, variants = _order(df)
    variants = [v for v in variants if v != "LoRA"]
    fig, axes = plt.subplots(1, len(opts), figsize=(4.2 * len(opts), 3.4), squeeze=False)
    rng = np.random.default_rng(0)  # horizontal jitter only
    for ax, opt in zip(axes[0], opts):
        for x, variant in enumerate(variants):
            ratios = problem_ratios(df, opt, variant)
            if ratios.empty:
                continue
            color, _ = _style(variant)
            ax.scatter(x + rng.uniform(-0.18, 0.18, len(ratios)), ratios, s=14, color=color,
                       alpha=0.7, lw=0)
            ax.hlines(ratios.median(), x - 0.3, x + 0.3, color=color, lw=2.2)
        ax.axhline(10, color="k", ls="--", lw=1, label="10x (the paper's GD claim)")
        ax.axhline(1, color="tab:gray", ls=":", lw=1, label="1x (no difference)")
        ax.set_yscale("log")
        ax.set_xticks(range(len(variants)), variants, fontsize=8)
        ax.set_title(OPTIMIZERS.get(opt, opt))
        ax.grid(True, axis="y", which="major", alpha=0.3)
    axes[0][0].set_ylabel("LoRA / variant, median final excess")
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"{sweep}: one dot per problem (T, W0), bar = median over problems")
    fig.tight_layout()
    return save(fig, figures, f"{sweep}_gap_per_problem")


def _kept(sel: pd.DataFrame) -> pd.DataFrame:
    """The rows whose init has a kept LR (a finite final excess loss)."""
    return sel[[bool(np.isfinite(c[-1])) for c in sel["curve"]]]


def _final(sel: pd.DataFrame) -> np.ndarray:
    """The final excess losses of these rows' inits that have a kept LR."""
    return np.array([c[-1] for c in _kept(sel)["curve"]], dtype=float)


def problem_ratios(df: pd.DataFrame, optimizer: str, variant: str) -> pd.Series:
    """Per problem (T, W0): LoRA's median final excess loss over its inits divided by the
    variant's, the quantity the paper's Fig. 3 shows for its one problem; NaN-free, indexed by
    problem."""
    def medians(label):
        sel = df[(df["optimizer"] == optimizer) & (df["variant"] == label)]
        return pd.Series({p: np.median(f) if len(f := _final(g)) else np.nan
                          for p, g in sel.groupby("problem")}, dtype=float)

    ratios = medians("LoRA") / medians(variant)
    return ratios[np.isfinite(ratios)]


def bootstrap_median(values: np.ndarray, n: int = 10_000, seed: int = 0,
                     confidence: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the median of `values` (resampled with replacement)."""
    values = np.asarray(values, dtype=float)
    if not len(values):
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    medians = np.median(values[rng.integers(0, len(values), size=(n, len(values)))], axis=1)
    tail = (1 - confidence) / 2
    low, high = np.quantile(medians, [tail, 1 - tail])
    return float(low), float(high)


def bootstrap_share(values: np.ndarray, threshold: float = 10.0, n: int = 10_000, seed: int = 0,
                    confidence: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the share of `values` >= threshold (resampled with
    replacement, like bootstrap_median)."""
    values = np.asarray(values, dtype=float)
    if not len(values):
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    shares = (values[rng.integers(0, len(values), size=(n, len(values)))] >= threshold).mean(1)
    tail = (1 - confidence) / 2
    low, high = np.quantile(shares, [tail, 1 - tail])
    return float(low), float(high)


POOLED_RESAMPLES = 2_000  # of the pooled ratio's bootstrap (each resample pools every init)


def _finals_by_problem(sel: pd.DataFrame, problems) -> np.ndarray:
    """(problems, inits) final excess losses of these rows, NaN where an init has no kept LR
    (or the problem has fewer inits)."""
    groups = {p: [c[-1] for c in g["curve"]] for p, g in sel.groupby("problem")}
    width = max((len(v) for v in groups.values()), default=0)
    out = np.full((len(problems), width), np.nan)
    for i, p in enumerate(problems):
        values = groups.get(p, [])
        out[i, :len(values)] = values
    return out


def pooled_ratio_bootstrap(lora: pd.DataFrame, sel: pd.DataFrame, n: int = POOLED_RESAMPLES,
                           seed: int = 0, confidence: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval over problems of the pooled ratio median(LoRA's finals) /
    median(this variant's finals): each resample draws the variant's problems (those with a kept
    LR) with replacement and pools, for both arms, every init of the same drawn problems."""
    problems = sorted(set(_kept(sel)["problem"]))
    if not problems:
        return math.nan, math.nan
    a = _finals_by_problem(lora, problems)  # (P, inits) LoRA
    b = _finals_by_problem(sel, problems)  # (P, inits) this variant
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(problems), size=(n, len(problems)))  # (n, P) drawn problems
    with np.errstate(all="ignore"), warnings.catch_warnings():
        # a resample where an arm has no kept LR: "All-NaN slice", its ratio NaN and dropped
        warnings.simplefilter("ignore", RuntimeWarning)
        ratios = (np.nanmedian(a[draws].reshape(n, -1), axis=1)
                  / np.nanmedian(b[draws].reshape(n, -1), axis=1))  # (n,)
    ratios = ratios[np.isfinite(ratios)]
    if not len(ratios):
        return math.nan, math.nan
    tail = (1 - confidence) / 2
    low, high = np.quantile(ratios, [tail, 1 - tail])
    return float(low), float(high)


def _interval(low: float, high: float) -> str:
    return "" if math.isnan(low) else f"{low:.3g} - {high:.3g}"


def toy_table(df: pd.DataFrame) -> pd.DataFrame:
    """Per (variant, optimizer): inits, median final excess loss and IQR, median kappa, median
    chosen LR; LoRA's median final excess loss over this row's pooled over the inits of this
    row's problems ("LoRA / this") with a 95% bootstrap interval over problems ("pooled 95% CI":
    both arms on the same resampled problems); and the distribution over problems of the
    per-problem ratio (LoRA's median over a problem's inits / this row's): its median with a
    95% bootstrap interval ("95% CI"), quartiles, how many problems reach 10x (the paper's GD
    claim) and that share's 95% bootstrap interval. Bootstraps: percentile, resampling problems
    with replacement, seed 0."""
    opts, variants = _order(df)
    rows = []
    for opt in opts:
        lora_rows = df[(df["optimizer"] == opt) & (df["variant"] == "LoRA")]
        for variant in variants:
            sel = df[(df["optimizer"] == opt) & (df["variant"] == variant)]
            if sel.empty:
                continue
            final = _final(sel)
            med = float(np.median(final)) if len(final) else math.nan
            lora_final = _final(lora_rows[lora_rows["problem"].isin(set(_kept(sel)["problem"]))])
            lora = float(np.median(lora_final)) if len(lora_final) else None
            q25, q75 = (np.quantile(final, [0.25, 0.75]) if len(final) else (math.nan,) * 2)
            kappa = sel["kappa"][np.isfinite(sel["kappa"])]
            other = variant != "LoRA"
            ratios = problem_ratios(df, opt, variant) if other else pd.Series(dtype=float)
            r = ratios.to_numpy()
            low, high = bootstrap_median(r)
            quartiles = np.quantile(r, [0.25, 0.75]) if len(r) else (math.nan,) * 2
            pooled = (pooled_ratio_bootstrap(lora_rows, sel) if other and lora is not None
                      else (math.nan, math.nan))
            rows.append({
                "optimizer": opt,
                "variant": variant,
                "problems": sel["problem"].nunique(),
                "inits": len(final),
                "median final excess": med,
                "IQR": f"{q25:.3g} - {q75:.3g}",
                "median kappa": float(kappa.median()) if len(kappa) else math.nan,
                "median lr": float(sel["lr"].median()),
                "LoRA / this": (lora / med if lora is not None and med > 0 else math.nan),
                "pooled 95% CI": _interval(*pooled),
                "per problem: median": float(ratios.median()) if len(ratios) else math.nan,
                "95% CI": _interval(low, high) if len(ratios) else "",
                "per problem: quartiles": (f"{quartiles[0]:.3g} - {quartiles[1]:.3g}"
                                           if len(r) else ""),
                ">= 10x": f"{(ratios >= 10).sum()}/{len(ratios)}" if len(ratios) else "",
                "share >= 10x": float((r >= 10).mean()) if len(r) else math.nan,
                "share 95% CI": _interval(*bootstrap_share(r)) if len(r) else "",
            })
    return pd.DataFrame(rows)


def write_toy_table(df: pd.DataFrame, figures: Path, sweep: str) -> Path:
    table = toy_table(df)
    lines = [f"# {sweep}: final excess loss and condition number", "",
             "Median over inits (all problems pooled) at each init's tuned LR, after the last "
             "step; kappa is the exact Hessian condition number at the end point. \"LoRA / "
             "this\": LoRA's median final excess loss over this row's, pooled over the inits of "
             "this row's problems; \"pooled 95% CI\": its percentile bootstrap interval over "
             f"problems ({POOLED_RESAMPLES:,} resamples of the problems with replacement, both "
             "arms pooled over the same drawn problems). \"per problem\": LoRA's median over a "
             "problem's inits divided by this row's, one ratio per problem (T, W0); its median "
             "with a 95% percentile bootstrap interval over problems (10,000 resamples), its "
             "quartiles, and how many problems (the share, with its 95% bootstrap interval "
             "over problems) reach 10x.", "",
             markdown_table(table), ""]
    gd = table[(table["optimizer"] == "gd") & (table["variant"] == "BaLoRA")]
    if not gd.empty and math.isfinite(gd["LoRA / this"].iloc[0]):
        row = gd.iloc[0]
        ratio = row["per problem: median"]
        problems = row[">= 10x"].split("/")[1]  # the problems with a ratio on both sides
        lines.append(f"GD gap (the paper's claim: at least 10x): over {problems} "
                     f"problems, LoRA's median final excess loss is {ratio:.3g}x BaLoRA's "
                     f"(median of the per-problem ratios, 95% bootstrap CI {row['95% CI']}; "
                     f"quartiles {row['per problem: quartiles']}; at least 10x on "
                     f"{row['>= 10x']} problems, share {row['share >= 10x']:.3g}, 95% CI "
                     f"{row['share 95% CI']}); pooled over all inits, {row['LoRA / this']:.3g}x "
                     f"(95% bootstrap CI over problems {row['pooled 95% CI']}).")
        lines.append("")
    figures.mkdir(parents=True, exist_ok=True)
    path = figures / f"{sweep}_toy.md"
    path.write_text("\n".join(lines))
    return path


def draw_toy(run_dirs: Iterable[Path], figures: str | Path, sweep: str) -> list[Path]:
    """Both figures and the table of these toy run records; the paths written ([] if none)."""
    run_dirs = [Path(d) for d in run_dirs if is_toy_run(d)]
    if not run_dirs:
        return []
    figures = Path(figures)
    df = load_toy(run_dirs)
    return [*draw_excess_loss(df, figures, sweep), *draw_kappa_hist(df, figures, sweep),
            *draw_problem_ratios(df, figures, sweep), write_toy_table(df, figures, sweep)]


def toy_figures(sweep_dir: str | Path, figures: str | Path) -> list[Path]:
    """Every toy figure of the sweep folder ``<runs>/<sweep>`` (its runs with ``task: toy``);
    files are named after the folder. Returns the paths written, [] when it holds no toy run."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        return []
    return draw_toy(sorted(p for p in sweep_dir.iterdir() if p.is_dir()), figures,
                    sweep_dir.name)
