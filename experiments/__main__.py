"""`make studies`: run every study at its documented size, resumably.

    python -m experiments                 # plan, then run every study
    python -m experiments --plan          # only print the plan
    python -m experiments balora_toy      # one study

A study is declared in one YAML, conf/experiment/<name>.yaml, by its `study:` block (schema:
bench.config.StudyConfig) whose `name` is the file's stem; its README is
experiments/<name>/README.md. Its `stages` run in order:

- `grid:<experiment>`: one Hydra multirun, `python -m bench.run -m +experiment=<experiment>`
  (the learning-rate grid on seed 0), with the keys `study.from_baseline` lists for it set to
  the baseline method's tuned values.
- `long:<experiment>`: for every method of that grid, its best configuration and the learning
  rates either side of it in the grid, again on seed 0, at the study's reporting budget (the
  `study.long` overrides): the short grid finds the neighbourhood, the long budget the rate.
  While a method's best at the long budget is an end of the rates run there and the grid has
  a rate beyond it, that rate runs at the long budget too (the stage walks until its best is
  between two rates it beat, or at the grid's end). A variant's long stage
  (`long:<experiment>@<variant>`, `study.variants`) adds the variant's overrides, and sets the
  `study.from_baseline` keys to the baseline's tuned values under the same variant (a cosine
  schedule moves the best rate of the weights it shares with the baseline).
- `seeds:<experiment>`: the second half of the tuning protocol (DESIGN.md §8): for every method,
  the configuration with the lowest final validation loss (of the long stage when the study has
  one) runs on the reporting seeds, with the `study.reporting` overrides (measurements such as
  Hessian condition numbers).

An experiment that is a stage of another study states that study's `name` (and baseline) in its
own `study:` block, or inherits it from the experiment it extends. A study without stages, a
stage that names no experiment, a long stage without `study.long`, or an experiment claiming a
study that does not list it, is an error, never a silent skip. Completed runs are skipped by the
entry point, so an interrupted `make studies` resumes where it stopped. The plan counts the runs
of each stage (a grid's from its `hydra.sweeper.params`) and estimates the time from the per-run
seconds of the study's completed runs (or the study's `seconds_per_run`).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import subprocess
import sys
from pathlib import Path

import yaml
from omegaconf import DictConfig, OmegaConf

from bench.config import ConfigError, StudyConfig

ROOT = Path(__file__).resolve().parents[1]
TUNING_SEEDS = (0,)  # the seed every grid and long stage runs (the YAMLs' `seed: "0"`)
CONF = ROOT / "conf" / "experiment"

STAGE_KINDS = ("grid", "long", "seeds")
# The learning-rate keys a `long` stage varies, the first one the grid sweeps over
LR_KEYS = ("optimizer.manifold_lr", "optimizer.lr")


@dataclasses.dataclass
class Study:
    """A study as its YAML declares it: stages are (kind, experiment) pairs, in order."""

    name: str
    baseline: str | None
    stages: list[tuple[str, str]]
    seconds_per_run: float
    smoke: list[str]
    reporting_seeds: list[int]
    long: list[str] = dataclasses.field(default_factory=list)
    reporting: list[str] = dataclasses.field(default_factory=list)
    rows: list[str] = dataclasses.field(default_factory=list)
    from_baseline: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    variants: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    variant_methods: dict[str, list[str]] = dataclasses.field(default_factory=dict)

    def variant_runs(self, exclude: str | None = None) -> list[list[str]]:
        """The overrides that mark the long runs of each variant (but `exclude`): runs holding
        one of these belong to that variant, not to the plain long stage."""
        return [[*self.long, *o] for v, o in self.variants.items() if v != exclude]

    @property
    def seeds(self) -> str:
        """The reporting seeds as a Hydra sweep value: "1,2,3,4,5"."""
        return ",".join(map(str, self.reporting_seeds))


def load_experiment(name: str) -> DictConfig:
    """conf/experiment/<name>.yaml merged over the experiment files its defaults list includes
    (another experiment it extends, a shared protocol), in the defaults list's order; Hydra's own
    group overrides (`override /adapter: ...`) are left out. Hydra composes the same way; this
    reads the files only, for the study blocks, sweeps and grids."""
    path = CONF / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"experiment {name!r}: no file {path.relative_to(ROOT)}")
    own = OmegaConf.load(path)
    defaults = list(own.pop("defaults", None) or [])
    if "_self_" not in defaults:
        defaults.append("_self_")
    merged = OmegaConf.create()
    for entry in defaults:
        if entry == "_self_":
            merged = OmegaConf.merge(merged, own)
        elif isinstance(entry, str) and (CONF / f"{entry}.yaml").is_file():
            merged = OmegaConf.merge(merged, load_experiment(entry))
    return merged


def _study_block(name: str) -> dict | None:
    block = OmegaConf.select(load_experiment(name), "study")
    if block is None:
        return None
    block = OmegaConf.to_container(block)
    allowed = [f.name for f in dataclasses.fields(StudyConfig)]
    unknown = sorted(set(block) - set(allowed))
    if unknown:
        raise ConfigError(f"conf/experiment/{name}.yaml: unknown key study.{unknown[0]}; "
                          f"allowed keys of study: {', '.join(allowed)}")
    return block


def split_variant(experiment: str) -> tuple[str, str | None]:
    """"riemannian_attention@cosine" -> ("riemannian_attention", "cosine")."""
    name, _, variant = experiment.partition("@")
    return name, variant or None


def _stages(name: str, stages: list, variants: dict | None = None) -> list[tuple[str, str]]:
    if not stages:
        raise ConfigError(f"conf/experiment/{name}.yaml: study.stages is empty; list its stages, "
                          f"each one of {', '.join(k + ':<experiment>' for k in STAGE_KINDS)}")
    out = []
    for stage in stages:
        kind, _, experiment = str(stage).partition(":")
        if kind not in STAGE_KINDS or not experiment:
            raise ConfigError(f"conf/experiment/{name}.yaml: study.stages entry {stage!r}; "
                              f"allowed: {', '.join(k + ':<experiment>' for k in STAGE_KINDS)}")
        plain, variant = split_variant(experiment)
        if variant is not None and (kind == "grid" or variant not in (variants or {})):
            raise ConfigError(f"conf/experiment/{name}.yaml: study.stages entry {stage!r}: a "
                              "variant (@name) needs a long or seeds stage and an entry in "
                              f"study.variants (declared: {', '.join(variants or {}) or 'none'})")
        if not (CONF / f"{plain}.yaml").is_file():
            raise ConfigError(f"conf/experiment/{name}.yaml: study.stages entry {stage!r} names "
                              f"no experiment (no conf/experiment/{plain}.yaml)")
        out.append((kind, experiment))
    return out


def discover() -> tuple[dict[str, Study], list[str]]:
    """The studies declared in conf/experiment/*.yaml, by name, and the experiments that belong
    to no study (plain experiments, not run by `make studies`). Raises ConfigError for a study
    without stages, a stage naming no experiment, and an experiment that claims a study which
    does not exist, does not list it among its stages, or declares another baseline."""
    blocks = {path.stem: _study_block(path.stem) for path in sorted(CONF.glob("*.yaml"))}
    studies = {}
    default = StudyConfig()
    for stem, block in blocks.items():
        if block and block.get("name") == stem:
            variants = {str(v): [str(o) for o in overrides]
                        for v, overrides in (block.get("variants") or {}).items()}
            studies[stem] = Study(
                stem, block.get("baseline"), _stages(stem, block.get("stages"), variants),
                float(block.get("seconds_per_run", default.seconds_per_run)),
                [str(o) for o in block.get("smoke") or []],
                [int(s) for s in block.get("reporting_seeds", default.reporting_seeds)],
                [str(o) for o in block.get("long") or []],
                [str(o) for o in block.get("reporting") or []],
                [str(k) for k in block.get("rows") or []],
                {str(e): [str(k) for k in keys]
                 for e, keys in (block.get("from_baseline") or {}).items()},
                variants,
                {str(v): [str(m) for m in methods]
                 for v, methods in (block.get("variant_methods") or {}).items()})
            if any(kind == "long" for kind, _ in studies[stem].stages) and not studies[stem].long:
                raise ConfigError(f"conf/experiment/{stem}.yaml: a long stage needs study.long, "
                                  "the overrides of the reporting budget (trainer.max_steps=...)")
    loose = []
    for stem, block in blocks.items():
        if not block or block.get("name") is None:
            loose.append(stem)
            continue
        study = studies.get(block["name"])
        if study is None:
            raise ConfigError(f"conf/experiment/{stem}.yaml: study.name={block['name']!r} is not "
                              f"a study; studies: {', '.join(studies)} (a study is "
                              "conf/experiment/<name>.yaml with study.name=<name>)")
        if stem not in {split_variant(exp)[0] for _, exp in study.stages}:
            raise ConfigError(f"conf/experiment/{stem}.yaml: study.name={study.name!r} but "
                              f"{study.name}.yaml's study.stages do not list it")
        if block.get("baseline") != study.baseline:
            raise ConfigError(f"conf/experiment/{stem}.yaml: study.baseline="
                              f"{block.get('baseline')!r} differs from its study's "
                              f"({study.baseline!r} in {study.name}.yaml)")
    for study in studies.values():
        for _, stage in study.stages:
            exp = split_variant(stage)[0]
            if (blocks.get(exp) or {}).get("name") != study.name:
                raise ConfigError(f"conf/experiment/{exp}.yaml is a stage of study {study.name} "
                                  f"but its study.name is not {study.name!r}")
    return studies, loose


def sweep_params(experiment: str) -> dict[str, list[str]]:
    """The experiment's sweep: key -> its values, as written."""
    params = OmegaConf.select(load_experiment(experiment), "hydra.sweeper.params") or {}
    return {str(k): [v.strip() for v in str(v).split(",")] for k, v in params.items()}


def count_runs(experiment: str) -> int:
    """The runs of the experiment's grid: the product of its sweep params' value counts."""
    return math.prod(len(values) for values in sweep_params(experiment).values())


def seconds_per_run(sweep: str, out_dir: Path, default: float) -> float:
    """Mean wall clock of the completed runs of the study's sweep, else the static estimate."""
    walls = []
    for summary in (out_dir / sweep).glob("*/summary.json"):
        wall = json.loads(summary.read_text()).get("wall_s")
        if wall:
            walls.append(wall)
    return sum(walls) / len(walls) if walls else default


def seed0_runs(out_dir: Path, sweep: str) -> tuple[tuple[list[str], dict, float], ...]:
    """(overrides, config, final validation loss) of every completed seed-0 run of the sweep.
    Read once per state of the sweep's records (a stage that adds runs changes the state), not
    once per stage that asks."""
    paths = sorted((out_dir / sweep).glob("*/summary.json"))
    return _read_seed0_runs(tuple((path, path.stat().st_mtime_ns) for path in paths))


@functools.lru_cache(maxsize=4)
def _read_seed0_runs(state: tuple) -> tuple[tuple[list[str], dict, float], ...]:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    runs = []
    for summary_path, _ in state:
        summary = json.loads(summary_path.read_text())
        loss = summary.get("final_eval_loss")
        if summary.get("status") != "completed" or loss is None:
            continue
        config = yaml.load((summary_path.parent / "config.yaml").read_text(), Loader=loader)
        if config.get("seed") == 0:
            overrides = list((config.get("meta") or {}).get("overrides") or [])
            runs.append((overrides, config, loss))
    return tuple(runs)


def _dotted(tree: dict, key: str):
    """tree["adapter"]["r"] for key "adapter.r" (None where a part is missing)."""
    for part in key.split("."):
        tree = tree.get(part) if isinstance(tree, dict) else None
    return tree


def best_runs(out_dir: Path, sweep: str, experiment: str, long: list[str] | None = None,
              rows: list[str] | None = None, study_long: list[str] | None = None,
              exclude: list[list[str]] = ()) -> dict[str, tuple[list[str], DictConfig]]:
    """Per method (and value of each key of `rows`, study.rows: "lora/adamw r=4"), (overrides,
    config) of the seed-0 run of `experiment` with the lowest final validation loss: among the
    runs of its long stage when `long` is given (runs whose overrides hold every override of
    `long`), else among those of its grid (runs that do not hold all of `study_long`, the
    study's long overrides: a long stage's runs are seed-0 runs of the experiment too). A run
    holding every override of one of `exclude` (another variant's) is left out."""
    best: dict[str, tuple[float, list[str], dict]] = {}
    marks = long or study_long  # the overrides every run of the long stage holds
    for overrides, config, loss in seed0_runs(out_dir, sweep):
        in_long = bool(marks) and set(marks) <= set(overrides)
        if (f"+experiment={experiment}" not in overrides or in_long != bool(long)
                or any(set(e) <= set(overrides) for e in exclude)):
            continue
        method = config["meta"]["method"] + "".join(
            f" {k.rsplit('.', 1)[-1]}={_dotted(config, k)}" for k in rows or [])
        if method not in best or loss < best[method][0]:
            best[method] = (loss, overrides, config)
    keep = lambda o: not o.startswith(("seed=", "out_dir="))  # noqa: E731
    return {m: ([o for o in ov if keep(o)], OmegaConf.create(cfg))
            for m, (_, ov, cfg) in sorted(best.items())}


def best_overrides(out_dir: Path, sweep: str, experiment: str, long: list[str] | None = None,
                   rows: list[str] | None = None, study_long: list[str] | None = None,
                   exclude: list[list[str]] = ()) -> dict[str, list[str]]:
    """Per method (and row), the overrides of its best seed-0 run (`best_runs`)."""
    found = best_runs(out_dir, sweep, experiment, long, rows, study_long, exclude)
    return {m: ov for m, (ov, _) in found.items()}


def lr_neighbours(experiment: str, overrides: list[str]) -> list[str]:
    """The best run's overrides with its learning rate replaced by that value and the grid's
    values either side of it ("optimizer.lr=3e-4,1e-3,3e-3"): the key is the first of LR_KEYS
    that the grid sweeps over more than one value; none: the overrides as they are."""
    grid = sweep_params(experiment)
    key = next((k for k in LR_KEYS if len(grid.get(k, [])) > 1), None)
    if key is None:
        return overrides
    values = sorted(grid[key], key=float)
    out = []
    for override in overrides:
        name, _, value = override.partition("=")
        if name == key:
            i = next(j for j, v in enumerate(values) if float(v) == float(value))
            override = f"{key}={','.join(values[max(0, i - 1): i + 2])}"
        out.append(override)
    return out


def baseline_values(study: Study, keys: list[str], out_dir: Path,
                    variant: str | None = None) -> list[str]:
    """`key=value` for each of `keys`, from the baseline method's tuned config (its long
    stage's best when the study has one; with `variant`, its long stage under that variant:
    a schedule moves the best rate); [] while the baseline has no result."""
    for kind, exp in study.stages:
        if kind != "grid":
            continue
        if variant:
            found = best_runs(out_dir, sweep_of(exp), exp, [*study.long,
                                                            *study.variants[variant]])
        else:
            found = best_runs(out_dir, sweep_of(exp), exp, study.long or None,
                              exclude=study.variant_runs())
            found = found or best_runs(out_dir, sweep_of(exp), exp, study_long=study.long)
        if study.baseline in found:
            config = found[study.baseline][1]
            pairs = [key.partition("=") for key in keys]  # target=source, or key
            return [f"{target}={OmegaConf.select(config, source or target)}"
                    for target, _, source in pairs]
    return []


def sweep_of(experiment: str) -> str:
    """The experiment's `sweep`, following its defaults list to the experiment it extends."""
    return str(load_experiment(experiment).get("sweep", experiment))


def _budget_ratio(study: Study, experiment: str, kind: str) -> float:
    """How much longer a run of this stage is than a grid run: the ratio of `study.long`'s
    trainer.max_steps to the experiment's, for long and seeds stages (1 otherwise)."""
    steps = [o.partition("=")[2] for o in study.long if o.startswith("trainer.max_steps=")]
    grid = OmegaConf.select(load_experiment(experiment), "trainer.max_steps")
    if kind == "grid" or not steps or not grid:
        return 1.0
    return float(steps[-1]) / float(grid)


def plan(studies: dict[str, Study], out_dir: Path, workers: int = 2) -> float:
    total = 0.0
    print(f"{'study':<24}{'stage':<60}{'runs':>6}{'est. minutes':>14}")
    for name, study in studies.items():
        per_run = seconds_per_run(sweep_of(name), out_dir, study.seconds_per_run)
        runs, study_minutes = 0, 0.0
        for kind, stage in study.stages:
            exp, variant = split_variant(stage)
            found = best_overrides(out_dir, sweep_of(exp), exp, rows=study.rows,
                                   study_long=study.long)
            if variant in study.variant_methods:  # its methods among this grid's
                found = {m: o for m, o in found.items()
                         if m.split(" ")[0] in study.variant_methods[variant]}
            methods = max(1, len(found))
            if kind == "grid":
                n = count_runs(exp)
            elif kind == "long":  # the best learning rate and its two neighbours
                n = 3 * methods
            else:  # one extra run per seed for each method of the grid
                n = len(study.reporting_seeds) * methods
            minutes = n * per_run * _budget_ratio(study, exp, kind) / workers / 60
            runs, study_minutes = runs + n, study_minutes + minutes
            label = f"{kind} {stage}" + (f" (seeds {study.seeds})" if kind == "seeds" else "")
            print(f"{name:<24}{label:<60}{n:>6}{minutes:>14.1f}")
        print(f"{name:<24}{'all stages':<60}{runs:>6}{study_minutes:>14.1f}")
        total += study_minutes
    print(f"estimated total: {total:.0f} minutes (completed runs are skipped)")
    return total


def _tuned(out_dir: Path, exp: str, study: Study, grid: bool = False) -> dict[str, list[str]]:
    """Per method (and row), the overrides of its best seed-0 run: of the grid (`grid`), else of
    the long stage, a variant's (`exp` = "<experiment>@<variant>") or the plain one; for a
    variant, its methods only."""
    exp, variant = split_variant(exp)
    sweep, extra = sweep_of(exp), study.variants.get(variant, []) if variant else []
    if grid:
        best = best_overrides(out_dir, sweep, exp, rows=study.rows, study_long=study.long)
    elif variant:  # the variant's long stage: long + variant overrides
        best = best_overrides(out_dir, sweep, exp, [*study.long, *extra], study.rows)
    else:
        best = best_overrides(out_dir, sweep, exp, study.long or None, study.rows,
                              exclude=study.variant_runs())
    if variant in study.variant_methods:
        keep = set(study.variant_methods[variant])
        best = {m: ov for m, ov in best.items() if m.split(" ")[0] in keep}
    return best


def commands(kind: str, exp: str, out_dir: Path, study: Study,
             centres: set[frozenset[str]] | None = None) -> list[list[str]]:
    """The `python -m bench.run -m` commands of one stage (computed when the stage starts: a
    long or seeds stage reads the records of the stages before it). A long stage's walk
    (`centres`: the overrides, without the long ones, whose rate and neighbours it ran already;
    updated in place): one command for each method whose long-budget best is not a centre, its
    best and the grid's rates either side of it."""
    base = [sys.executable, "-m", "bench.run", "-m"]
    name, variant = split_variant(exp)
    extra = study.variants.get(variant, []) if variant else []
    if kind == "grid":
        keys = study.from_baseline.get(name, [])
        inherited = baseline_values(study, keys, out_dir) if keys else []
        if keys and not inherited:
            print(f"note: {name} takes {', '.join(keys)} from the baseline {study.baseline}, "
                  "which has no result yet; run its stages first", file=sys.stderr)
            return []
        return [[*base, f"+experiment={name}", *inherited, f"out_dir={out_dir}"]]
    walking = kind == "long" and centres is not None
    if kind == "long" and not walking:
        best = _long_start(out_dir, exp, study)
        if best is None:
            return []
    else:
        best = _tuned(out_dir, exp, study)
    if walking:
        marks = [*study.long, *extra]
        best = {m: [o for o in ov if o not in marks] for m, ov in best.items()}
        best = {m: ov for m, ov in best.items() if frozenset(ov) not in centres}
        centres.update(frozenset(ov) for ov in best.values())
    elif not best:
        print(f"note: no completed seed-0 run of {exp} yet; run its "
              f"{'long stage' if kind == 'seeds' and study.long else 'grid'} first",
              file=sys.stderr)
    if kind == "long":
        return [[*base, *lr_neighbours(name, overrides), *study.long, *extra,
                 f"seed={','.join(map(str, TUNING_SEEDS))}", f"out_dir={out_dir}"]
                for overrides in best.values()]
    # a variant's runs already hold its overrides
    return [[*base, *overrides, *study.reporting, f"seed={study.seeds}", f"out_dir={out_dir}"]
            for overrides in best.values()]


def _long_start(out_dir: Path, exp: str, study: Study) -> dict[str, list[str]] | None:
    """The grid bests a long stage starts from (`_tuned(grid=True)`). For a variant's, the keys
    `study.from_baseline` lists for the experiment are set to the baseline's tuned values under
    the same variant (the grid ran at the plain baseline's); None, with a note, while that
    variant's baseline has no result."""
    best = _tuned(out_dir, exp, study, grid=True)
    name, variant = split_variant(exp)
    keys = study.from_baseline.get(name) if variant else None
    if not keys:
        return best
    inherited = baseline_values(study, keys, out_dir, variant)
    if not inherited:
        print(f"note: {name}@{variant} takes {', '.join(keys)} from the baseline "
              f"{study.baseline}@{variant}, which has no long run yet; run its stages first",
              file=sys.stderr)
        return None
    values = dict(o.split("=", 1) for o in inherited)

    def with_inherited(overrides: list[str]) -> list[str]:
        out = [o for o in overrides if o.split("=", 1)[0] not in values]
        return out + [f"{k}={v}" for k, v in values.items()]

    return {m: with_inherited(ov) for m, ov in best.items()}


def stage_commands(kind: str, exp: str, out_dir: Path, study: Study):
    """Yield the commands of one stage as it runs. A long stage walks: the grid's best rate and
    its two neighbours at the long budget; while a method's long-budget best is an end of the
    rates it ran there, the grid's next rate beyond it too (completed runs are skipped), so no
    method is reported at an edge of its long-budget rates that the grid could extend."""
    first = commands(kind, exp, out_dir, study)
    yield from first
    if kind != "long" or not first:  # nothing to walk from (its note is printed)
        return
    centres = {frozenset(ov) for ov in _long_start(out_dir, exp, study).values()}
    while batch := commands(kind, exp, out_dir, study, centres):
        yield from batch


def main(argv: list[str] | None = None) -> int:
    try:
        studies, loose = discover()
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("studies", nargs="*", help=f"any of {', '.join(studies)} (default: all)")
    parser.add_argument("--plan", action="store_true", help="print the plan and stop")
    parser.add_argument("--out-dir", default="runs")
    args = parser.parse_args(argv)
    unknown = [s for s in args.studies if s not in studies]
    if unknown:
        parser.error(f"unknown study {unknown[0]!r}; allowed: {', '.join(studies)}")
    chosen = {name: studies[name] for name in (args.studies or studies)}
    if loose:
        print(f"note: not part of a study (no study block): {', '.join(loose)}", file=sys.stderr)
    plan(chosen, Path(args.out_dir))
    if args.plan:
        return 0
    for name, study in chosen.items():
        for kind, exp in study.stages:
            for cmd in stage_commands(kind, exp, Path(args.out_dir), study):
                print("$", " ".join(cmd[1:]), flush=True)
                if subprocess.run(cmd, cwd=ROOT).returncode != 0:
                    print(f"study {name}: {exp} failed; rerun to resume", file=sys.stderr)
                    return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
