"""`make studies`: run every study at its documented size, resumably.

    python -m experiments                 # plan, then run every study
    python -m experiments --plan          # only print the plan
    python -m experiments balora_toy      # one study

Each study is a list of stages. A `grid` stage is one Hydra multirun,
`python -m bench.run -m +experiment=<config>` (the learning-rate grid on seed 0). A `seeds` stage
is the second half of the tuning protocol (DESIGN.md §8): for every method of that grid, the
configuration with the lowest final eval loss is run again with more seeds. Completed runs are
skipped by the entry point, so an interrupted `make studies` resumes where it stopped. The plan
counts the runs of each grid (from its `hydra.sweeper.params`) and estimates the time from the
per-run seconds of the study's completed runs (or a static estimate).
"""

from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
from pathlib import Path

from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf" / "experiment"

SEEDS = "1,2"  # the extra seeds run at each method's best configuration
# study -> (stages in order, estimated seconds per run on 2 cores with 2 workers)
STUDIES = {
    "balora_toy": ([("grid", "balora_toy")], 15),
    "balora_finetune": ([("grid", "balora_finetune_full"), ("grid", "balora_finetune"),
                         ("seeds", "balora_finetune_full"), ("seeds", "balora_finetune")], 30),
    "riemannian_attention": ([("grid", "riemannian_attention_adamw"),
                              ("grid", "riemannian_attention"),
                              ("seeds", "riemannian_attention_adamw"),
                              ("seeds", "riemannian_attention")], 45),
    "adapters_x_optimizers": ([("grid", "adapters_x_optimizers"),
                               ("grid", "adapters_x_optimizers_riemannian"),
                               ("seeds", "adapters_x_optimizers"),
                               ("seeds", "adapters_x_optimizers_riemannian")], 30),
}


def count_runs(experiment: str) -> int:
    cfg = OmegaConf.load(CONF / f"{experiment}.yaml")
    params = OmegaConf.select(cfg, "hydra.sweeper.params") or {}
    sizes = [len(str(v).split(",")) for v in params.values()]
    return int(sum(1 for _ in itertools.product(*[range(s) for s in sizes]))) if sizes else 1


def seconds_per_run(study: str, out_dir: Path, default: float) -> float:
    """Mean wall clock of the study's completed runs, else the static estimate."""
    walls = []
    for summary in (out_dir / study).glob("*/summary.json"):
        wall = json.loads(summary.read_text()).get("wall_s")
        if wall:
            walls.append(wall)
    return sum(walls) / len(walls) if walls else default


def best_overrides(out_dir: Path, sweep: str, experiment: str) -> dict[str, list[str]]:
    """Per method, the overrides of the seed-0 run of `experiment` with the lowest final loss."""
    best: dict[str, tuple[float, list[str]]] = {}
    for summary_path in (out_dir / sweep).glob("*/summary.json"):
        summary = json.loads(summary_path.read_text())
        config = OmegaConf.load(summary_path.parent / "config.yaml")
        overrides = list(OmegaConf.select(config, "meta.overrides", default=[]) or [])
        loss = summary.get("final_eval_loss")
        if (f"+experiment={experiment}" not in overrides or config.seed != 0
                or summary.get("status") != "completed" or loss is None):
            continue
        method = config.meta.method
        if method not in best or loss < best[method][0]:
            best[method] = (loss, overrides)
    keep = lambda o: not o.startswith(("seed=", "out_dir="))  # noqa: E731
    return {m: [o for o in ov if keep(o)] for m, (_, ov) in sorted(best.items())}


def sweep_of(experiment: str) -> str:
    """The experiment's `sweep`, following its defaults list to the experiment it extends."""
    cfg = OmegaConf.load(CONF / f"{experiment}.yaml")
    if "sweep" in cfg:
        return str(cfg.sweep)
    for entry in cfg.get("defaults", []):
        if isinstance(entry, str) and entry != "_self_" and (CONF / f"{entry}.yaml").exists():
            return sweep_of(entry)
    return experiment


def plan(names: list[str], out_dir: Path, workers: int = 2) -> float:
    total = 0.0
    print(f"{'study':<24}{'stage':<42}{'runs':>6}{'est. minutes':>14}")
    for name in names:
        stages, default = STUDIES[name]
        per_run = seconds_per_run(name, out_dir, default)
        for kind, exp in stages:
            if not (CONF / f"{exp}.yaml").exists():
                print(f"{name:<24}{kind + ' ' + exp:<42}{'-':>6}{'(not available)':>14}")
                continue
            if kind == "grid":
                n = count_runs(exp)
            else:  # one extra run per seed for each method of the grid
                methods = best_overrides(out_dir, sweep_of(exp), exp)
                n = len(SEEDS.split(",")) * max(1, len(methods))
            minutes = n * per_run / workers / 60
            total += minutes
            label = f"{kind} {exp}" + (f" (seeds {SEEDS} at the best config)" if kind == "seeds"
                                       else "")
            print(f"{name:<24}{label:<42}{n:>6}{minutes:>14.1f}")
    print(f"estimated total: {total:.0f} minutes (completed runs are skipped)")
    return total


def commands(kind: str, exp: str, out_dir: Path) -> list[list[str]]:
    base = [sys.executable, "-m", "bench.run", "-m"]
    if kind == "grid":
        return [[*base, f"+experiment={exp}", f"out_dir={out_dir}"]]
    best = best_overrides(out_dir, sweep_of(exp), exp)
    if not best:
        print(f"note: no completed seed-0 run of {exp} yet; run its grid first", file=sys.stderr)
    return [[*base, *overrides, f"seed={SEEDS}", f"out_dir={out_dir}"]
            for overrides in best.values()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("studies", nargs="*", help=f"any of {', '.join(STUDIES)} (default: all)")
    parser.add_argument("--plan", action="store_true", help="print the plan and stop")
    parser.add_argument("--out-dir", default="runs")
    args = parser.parse_args(argv)
    unknown = [s for s in args.studies if s not in STUDIES]
    if unknown:
        parser.error(f"unknown study {unknown[0]!r}; allowed: {', '.join(STUDIES)}")
    names = args.studies or list(STUDIES)
    plan(names, Path(args.out_dir))
    if args.plan:
        return 0
    for name in names:
        for kind, exp in STUDIES[name][0]:
            if not (CONF / f"{exp}.yaml").exists():
                continue
            for cmd in commands(kind, exp, Path(args.out_dir)):
                print("$", " ".join(cmd[1:]), flush=True)
                if subprocess.run(cmd, cwd=ROOT).returncode != 0:
                    print(f"study {name}: {exp} failed; rerun to resume", file=sys.stderr)
                    return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
