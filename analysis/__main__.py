"""``python -m analysis`` (= ``make plots``): every figure and table, from the run records.

    python -m analysis [runs=runs] [figures=figures] [sweep=<name>] [baseline=<method>]
                       [source=local|wandb|wandb_offline] [project=<entity/project>|<folder>]
                       [logy=false]
                       [experiments=experiments] [timeout=10] [wandb_tables=offline|online]

`python -m analysis --help` lists every key. `source=wandb_offline` (or `source=wandb` with
`project=` a local folder) reads the offline W&B runs under runs= (or project=) with W&B's own
reader, without an API key or a network (analysis/wandb_offline.py).

`wandb_tables=offline` (or `online`) also logs every tuned table as a W&B table in a run of
job type "analysis" (project `project=`, default lowrank-bench), next to the training runs.
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

from omegaconf import OmegaConf

DEFAULTS = {
    "runs": "runs",
    "figures": "figures",
    "sweep": None,
    "baseline": None,
    "source": "local",
    "project": None,
    "logy": False,
    "experiments": "experiments",
    "timeout": 10,
    "wandb_tables": None,
}


KEYS = {  # key -> what it does (`python -m analysis --help` prints these)
    "runs": "the run records' folder, <runs>/<sweep>/<run-id>/ (default runs)",
    "figures": "where tables, figures, REPORT.md, index.html and the parquet tables go "
               "(default figures)",
    "sweep": "analyse this sweep only; the other sweeps stay in REPORT.md, index.html and the "
             "parquet tables (default: every sweep)",
    "baseline": "compare every method with this one, e.g. full/adamw (default: the study's "
                "declared baseline, else AdamW on the same adapter; in a sweep without a "
                "study, the first adapter's AdamW at the same swept values)",
    "source": "local (the run records), wandb (a W&B project through its API, project=<entity/"
              "project>) or wandb_offline (the offline runs under runs/*/*/wandb/ or "
              "project=<folder>, no key, no network) (default local)",
    "project": "the W&B project (source=wandb) or a folder of offline runs (source=wandb or "
               "wandb_offline)",
    "logy": "log-scale the loss axes (default false)",
    "experiments": "the folder of the studies' READMEs, for each sweep's question (default "
                   "experiments)",
    "timeout": "seconds before a W&B API request gives up (default 10)",
    "wandb_tables": "also log each tuned table as a W&B table: offline or online (default: no)",
}
assert set(KEYS) == set(DEFAULTS)


def usage() -> str:
    """What `python -m analysis --help` prints: the command, its outputs and every key."""
    import textwrap

    width = max(map(len, KEYS)) + 4
    lines = ["usage: python -m analysis [key=value ...]   (= make plots)", "",
             *textwrap.wrap("Run records -> per sweep, tables (<sweep>_tuned.md and .csv, "
                            "_summary.md, _budget.md, ...) and figures (PNG and PDF); then "
                            "figures/REPORT.md, figures/index.html, figures/runs.parquet (a row "
                            "per run) and figures/steps.parquet (a row per logged step).", 88),
             "", "keys:"]
    for key, text in KEYS.items():
        lines += textwrap.wrap(text, 88, initial_indent=f"  {key + '=':<{width - 2}}",
                               subsequent_indent=" " * width)
    return "\n".join(lines)


def parse(argv: list[str]) -> dict:
    """key=value arguments over DEFAULTS; an unknown key or a bad value is an ArgumentError."""
    from analysis.records import ArgumentError

    try:
        given = OmegaConf.to_container(OmegaConf.from_cli(argv))
    except Exception as error:  # noqa: BLE001 - OmegaConf's grammar errors have many types
        raise ArgumentError(f"cannot parse arguments {argv}: {error}") from error
    unknown = sorted(set(given) - set(DEFAULTS))
    if unknown:
        raise ArgumentError(f"unknown argument(s) {', '.join(unknown)}; "
                         f"allowed: {', '.join(f'{k}=' for k in DEFAULTS)}")
    merged = {**DEFAULTS, **given}
    args = {k: (v if v not in (None, "") else DEFAULTS[k]) for k, v in merged.items()}
    if args["source"] not in ("local", "wandb", "wandb_offline"):
        raise ArgumentError(f"source={args['source']}: allowed values are local, wandb, "
                            "wandb_offline")
    if args["wandb_tables"] not in (None, "offline", "online"):
        raise ArgumentError(f"wandb_tables={args['wandb_tables']}: allowed values are offline, "
                            "online")
    if args["source"] == "wandb" and not args["project"]:
        raise ArgumentError("source=wandb needs project=<entity/project> (or a folder of offline "
                            "runs; source=wandb_offline reads runs= without one)")
    return args


def offline_folder(args: dict) -> str | None:
    """The folder whose offline W&B runs to read (analysis.wandb_offline): `project=` with
    source=wandb_offline or where it is a local folder, else runs= with source=wandb_offline;
    None: not an offline read."""
    project = args["project"]
    if args["source"] == "wandb_offline":
        return str(project or args["runs"])
    if args["source"] == "wandb" and project and Path(str(project)).is_dir():
        return str(project)
    return None


def run(args: dict) -> list[str]:
    """Load, check, tabulate, draw and report; the paths written."""
    from analysis.records import ArgumentError, check_compatible, lm_runs, load_curves, load_runs

    if offline_folder(args):
        from analysis.wandb_offline import load_offline

        runs, curves = load_offline(offline_folder(args), args["sweep"], float(args["timeout"]))
    elif args["source"] == "wandb":
        from analysis.wandb_source import load_wandb

        runs, curves = load_wandb(str(args["project"]), args["sweep"], float(args["timeout"]))
    else:
        runs = load_runs(args["runs"], args["sweep"])
        curves = None
    check_compatible(lm_runs(runs))  # every sweep checked before anything is written
    if curves is None:
        curves = load_curves(runs)

    from analysis.targets import with_targets

    runs = with_targets(runs, curves)  # time to a from_baseline target, from the records

    from analysis.pareto import write_pareto
    from analysis.plots import delta_vs_step, draw_sweep, loss_vs_rows
    from analysis.profiles import write_profiles
    from analysis.report import write_report
    from analysis.scale import write_scale
    from analysis.selection import ladder_split, select_sweep
    from analysis.tables import curvature_cost, tuned_table, write_summary, write_tuned
    from analysis.toy import toy_figures
    from analysis.trend import write_trend

    baseline = args["baseline"]
    if baseline and baseline not in set(runs["method"]):
        raise ArgumentError(f"baseline {baseline!r} is not a method of these runs; "
                         f"methods: {', '.join(sorted(runs['method'].unique()))}")
    written, results, selections = [], [], {}
    for sweep, every_run in runs.groupby("sweep", sort=True):
        sweep_curves = curves[curves["sweep"] == sweep]
        sweep_runs, ladder = ladder_split(every_run)  # a ladder's runs: the scale table's
        files, table, selection = [], None, None
        if not lm_runs(sweep_runs).empty:
            selection = select_sweep(sweep_runs)  # each method's choice, for every output
            selections[sweep] = selection
            own = baseline if baseline in set(sweep_runs["method"]) else None
            if not baseline:  # the study's baseline, as its records state it
                declared = declared_baseline(sweep_runs)
                own = declared if declared in set(sweep_runs["method"]) else None
                if declared and own is None:
                    print(f"note: {sweep}: declared baseline {declared} has no runs here, "
                          "using the default", file=sys.stderr)
            if baseline and own is None:
                print(f"note: {sweep}: baseline {baseline} not in this sweep, using the default",
                      file=sys.stderr)
            table = tuned_table(sweep_runs, baseline=own, selection=selection)
            files += write_tuned(table, args["figures"], sweep,
                                 curvature_cost(sweep_runs, sweep_curves), selection.tuned)
            files += write_summary(sweep_runs, args["figures"], sweep, selection)
            # [] at one budget
            files += write_scale(ladder if not ladder.empty else sweep_runs, args["figures"],
                                 sweep, own)
        files += draw_sweep(sweep_runs, sweep_curves, args["figures"], sweep, selection,
                            logy=args["logy"])
        files += delta_vs_step(sweep_runs, sweep_curves, args["figures"], sweep, table, selection)
        files += loss_vs_rows(table, args["figures"], sweep, selection)
        files += write_trend(table, selection, args["figures"], sweep)
        files += write_profiles(selection, table, sweep_curves, args["figures"], sweep)
        files += write_pareto(selection, table, sweep_curves, args["figures"], sweep)
        if args["source"] == "local":  # the toy's per-init arrays live in toy.json files
            files += toy_figures(Path(args["runs"]) / str(sweep), Path(args["figures"]))
        results.append({"sweep": sweep, "tuned": table, "files": files})
        written += files
    written.append(write_report(results, args["figures"], args["experiments"]))

    from analysis.exports import write_exports
    from analysis.html import write_html

    written += write_exports(runs, curves, selections, args["figures"])
    written += write_html(args["figures"])
    if args["wandb_tables"]:
        log_tables(results, args["wandb_tables"], args["project"] or "lowrank-bench",
                   args["figures"])
    return [str(p) for p in written]


def log_tables(results: list[dict], mode: str, project: str, figures: str) -> None:
    """Each sweep's tuned table as a W&B table (one analysis run per sweep, grouped by sweep)."""
    import wandb

    for result in results:
        if result["tuned"] is None:
            continue
        run = wandb.init(project=project, mode=mode, job_type="analysis", group=result["sweep"],
                         name=f"{result['sweep']} tuned", dir=figures, reinit="finish_previous")
        run.log({"tuned": wandb.Table(dataframe=result["tuned"].astype(str))})
        run.finish()


def declared_baseline(runs) -> str | None:
    """The baseline method a sweep's records declare (`study.baseline` in config.yaml, from the
    study's YAML), so the tables do not depend on the directory analysis runs from. Records
    without a `study` block (older records, plain sweeps) declare none: each method is then
    compared with the default baseline (analysis.selection.Selection.default_baseline). A
    user's `baseline=` wins over what records declare."""
    from analysis.records import AnalysisError

    if "study.baseline" not in runs:
        return None
    declared = sorted({b for b in runs["study.baseline"] if isinstance(b, str) and b})
    if len(declared) > 1:
        sweep = runs["sweep"].iloc[0]
        raise AnalysisError(f"sweep {sweep!r}: its records declare different baselines "
                            f"({', '.join(declared)}); pass baseline=<method>")
    return declared[0] if declared else None


def main(argv: list[str] | None = None) -> int:
    from analysis.records import AnalysisError

    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help", "help") for a in argv):
        print(usage())
        return 0
    try:
        args = parse(argv)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            paths = run(args)
    except AnalysisError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for warning in caught:
        if issubclass(warning.category, UserWarning):
            print(f"warning: {warning.message}", file=sys.stderr)
    for path in paths:
        print(path)
    return 0


if __name__ == "__main__":
    code = main()
    if code != 0 and "wandb" in sys.modules:
        # After a failed W&B request, wandb's atexit teardown can wait forever for its service
        # process; the error is already printed, so leave without running exit handlers.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)
