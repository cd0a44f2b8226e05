"""``python -m analysis`` (= ``make plots``): every figure and table, from the run records.

    python -m analysis [runs=runs] [figures=figures] [sweep=<name>] [baseline=<method>]
                       [source=local|wandb] [project=<entity/project>] [logy=false]
                       [experiments=experiments] [timeout=10] [wandb_tables=offline|online]

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
    if args["source"] not in ("local", "wandb"):
        raise ArgumentError(f"source={args['source']}: allowed values are local, wandb")
    if args["wandb_tables"] not in (None, "offline", "online"):
        raise ArgumentError(f"wandb_tables={args['wandb_tables']}: allowed values are offline, "
                            "online")
    if args["source"] == "wandb" and not args["project"]:
        raise ArgumentError("source=wandb needs project=<entity/project>")
    return args


def run(args: dict) -> list[str]:
    """Load, check, tabulate, draw and report; the paths written."""
    from analysis.records import ArgumentError, check_compatible, lm_runs, load_curves, load_runs

    if args["source"] == "wandb":
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

    from analysis.plots import delta_vs_step, draw_sweep, loss_vs_rows
    from analysis.report import write_report
    from analysis.scale import write_scale
    from analysis.selection import select_sweep
    from analysis.tables import curvature_cost, tuned_table, write_summary, write_tuned
    from analysis.toy import toy_figures
    from analysis.trend import write_trend

    baseline = args["baseline"]
    if baseline and baseline not in set(runs["method"]):
        raise ArgumentError(f"baseline {baseline!r} is not a method of these runs; "
                         f"methods: {', '.join(sorted(runs['method'].unique()))}")
    written, results = [], []
    for sweep, sweep_runs in runs.groupby("sweep", sort=True):
        sweep_curves = curves[curves["sweep"] == sweep]
        files, table, selection = [], None, None
        if not lm_runs(sweep_runs).empty:
            selection = select_sweep(sweep_runs)  # each method's choice, for every output
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
                                 curvature_cost(sweep_runs, sweep_curves))
            files += write_summary(sweep_runs, args["figures"], sweep, selection)
            files += write_scale(sweep_runs, args["figures"], sweep, own)  # [] at one budget
        files += draw_sweep(sweep_runs, sweep_curves, args["figures"], sweep, selection,
                            logy=args["logy"])
        files += delta_vs_step(sweep_runs, sweep_curves, args["figures"], sweep, table, selection)
        files += loss_vs_rows(table, args["figures"], sweep, selection)
        files += write_trend(table, selection, args["figures"], sweep)
        if args["source"] == "local":  # the toy's per-init arrays live in toy.json files
            files += toy_figures(Path(args["runs"]) / str(sweep), Path(args["figures"]))
        results.append({"sweep": sweep, "tuned": table, "files": files})
        written += files
    written.append(write_report(results, args["figures"], args["experiments"]))
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
    compared with the default baseline, AdamW on the same adapter
    (analysis.tuning.default_baseline). A user's `baseline=` wins over what records declare."""
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
