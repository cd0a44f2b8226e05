"""`make studies`: run every study at its documented size, resumably.

    python -m experiments                 # plan, then run every study
    python -m experiments --plan          # only print the plan
    python -m experiments balora_toy      # one study

Each study is one or more Hydra multiruns of `python -m bench.run -m +experiment=<config>`.
Completed runs are skipped by the entry point, so an interrupted `make studies` resumes where it
stopped. The plan counts the runs of each sweep (from its `hydra.sweeper.params`) and estimates
the time from the per-run seconds of the study's completed runs (or the README's estimate).
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

# study -> (experiment configs run in order, estimated seconds per run on 2 cores, 2 workers)
STUDIES = {
    "balora_toy": (["balora_toy"], 5),
    "balora_finetune": (["balora_finetune_full", "balora_finetune"], 25),
    "riemannian_attention": (["riemannian_attention_tune", "riemannian_attention"], 60),
    "adapters_x_optimizers": (["adapters_x_optimizers"], 30),
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


def plan(names: list[str], out_dir: Path, workers: int = 2) -> float:
    total = 0.0
    print(f"{'study':<24}{'experiment config':<30}{'runs':>6}{'est. minutes':>14}")
    for name in names:
        experiments, default = STUDIES[name]
        per_run = seconds_per_run(name, out_dir, default)
        for exp in experiments:
            if not (CONF / f"{exp}.yaml").exists():
                print(f"{name:<24}{exp:<30}{'-':>6}{'(not available)':>14}")
                continue
            n = count_runs(exp)
            minutes = n * per_run / workers / 60
            total += minutes
            print(f"{name:<24}{exp:<30}{n:>6}{minutes:>14.1f}")
    print(f"estimated total: {total:.0f} minutes (completed runs are skipped)")
    return total


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
        for exp in STUDIES[name][0]:
            if not (CONF / f"{exp}.yaml").exists():
                continue
            cmd = [sys.executable, "-m", "bench.run", "-m", f"+experiment={exp}",
                   f"out_dir={args.out_dir}"]
            print("$", " ".join(cmd[1:]), flush=True)
            if subprocess.run(cmd, cwd=ROOT).returncode != 0:
                print(f"study {name}: {exp} failed; rerun to resume", file=sys.stderr)
                return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
