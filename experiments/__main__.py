"""`make studies`: run every study at its documented size, resumably.

    python -m experiments                          # plan, then run every study
    python -m experiments --plan                   # only print the plan
    python -m experiments balora_toy               # one study
    python -m experiments balora_toy hydra/launcher=slurm hydra.launcher.partition=gpu
                                                   # Hydra overrides for every stage's runs
    python -m experiments riemannian_attention --stages ladder
                                                   # only its ladder stages (the others' records
                                                   # are read, not rerun)
    python -m experiments balora_toy --no-wait hydra/launcher=slurm ...
                                                   # start the next batch detached and exit;
                                                   # the same command again goes on (Flight)

A study is declared in one YAML, conf/experiment/<name>.yaml, by its `study:` block (schema:
bench.config.StudyConfig, composed by Hydra like any run's config) whose `name` is the file's
stem; its README is experiments/<name>/README.md. Its `stages` run in order:

- `grid:<experiment>`: one Hydra multirun, `python -m bench.run -m +experiment=<experiment>`
  (the learning-rate grid on the tuning seeds), with the keys `study.from_baseline` lists for it
  set to the baseline method's tuned values.
- `long:<experiment>`: for every method of that grid, its best configuration and the learning
  rates either side of it in the grid, again on the tuning seeds, at the study's reporting
  budget (the `study.long` overrides). While a method's best at the long budget is an end of the
  rates run there and the grid has a rate beyond it, that rate runs too (the stage walks until
  its best is between two rates it beat, or at the grid's end). A variant's long stage
  (`long:<experiment>@<variant>`, `study.variants`) adds the variant's overrides, and sets the
  `study.from_baseline` keys to the baseline's tuned values under the same variant.
- `seeds:<experiment>`: each method's chosen configuration (of the long stage when the study
  has one) on the reporting seeds, with the `study.reporting` overrides.
- `ladder:<experiment>`: verdicts across scale. At each model size (`study.sizes`) and budget
  (`study.budgets`, ascending), each carried method (`study.ladder_methods`) runs to the end of
  its own warmup + cosine schedule: its LR re-tuned around the previous budget's best on the
  tuning seeds (walking until interior), then the best on the reporting seeds; the keys
  `study.from_baseline` lists are the baseline's ladder bests at the same budget and size.

"Best" is analysis.selection's rule, the one the tables use, on the stage's runs of the tuning
seeds (`study.tuning_seeds`). Completed runs are skipped by the entry point, so an interrupted
`make studies` resumes where it stopped. Each stage command is one multirun whose launcher (the
command line's `hydra/launcher=...`) returns when every run of it has ended, the submitit
launchers included, so a stage starts once the records it reads are complete; `--no-wait`
hands that wait to a detached process (`Flight`). The plan counts the runs of each stage (a
grid's from its composed `hydra.sweeper.params`) and estimates the time from the per-run
seconds of the study's completed runs (or the study's `seconds_per_run`).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import os
import re
import shlex
import socket
import subprocess
import sys
import warnings
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig, OmegaConf

from analysis.records import NoRunsError, load_runs
from analysis.selection import select_sweep
from bench.config import ConfigError, StudyConfig
from bench.record import atomic_write
from bench.study import STAGE_KINDS, split_stage

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf" / "experiment"
# The learning-rate keys a `long` stage varies, the first one the grid sweeps over
LR_KEYS = ("optimizer.manifold_lr", "optimizer.lr")


# ------------------------------------------------------------------------- the study YAMLs
# The command line's `study.*` overrides (`main`): they reach the study block the runner reads
# as they reach every run's record, e.g. an earlier protocol's `study.tuning_seeds=[0]`.
STUDY_OVERRIDES: tuple[str, ...] = ()


def study_overrides(overrides: list[str]) -> tuple[str, ...]:
    """The overrides among `overrides` that set a key of the study block."""
    return tuple(o for o in overrides if o.lstrip("+~").startswith("study."))


def load_experiment(name: str) -> DictConfig:
    """The config `python -m bench.run +experiment=<name>` composes (Hydra's compose, with the
    hydra node: its `hydra.sweeper.params`), `study` included and checked by its schema, with
    the command line's `study.*` overrides (STUDY_OVERRIDES)."""
    path = CONF / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"experiment {name!r}: no file {path.relative_to(ROOT)}")
    return _compose(str(CONF.parent), name, path.stat().st_mtime_ns, STUDY_OVERRIDES)


@functools.lru_cache(maxsize=128)
def _compose(conf: str, name: str, _mtime: int, overrides: tuple[str, ...] = ()) -> DictConfig:
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException

    from bench.config import register_configs

    register_configs()
    try:
        with initialize_config_dir(config_dir=conf, version_base="1.3"):
            return compose("config", overrides=[f"+experiment={name}", *overrides],
                           return_hydra_config=True)
    except (HydraException, ValueError) as error:
        if overrides and "override" in str(error).lower():  # the command line's, not the file's
            raise ConfigError(f"{' '.join(str(error).split())} (command line: "
                              f"{' '.join(overrides)}); allowed keys of study: "
                              f"{', '.join(StudyConfig.__dataclass_fields__)}") from None
        raise ConfigError(_composition_error(name, error)) from None


def _composition_error(name: str, error: Exception) -> str:
    """Hydra's composition error as one line naming the file; an unknown study key lists the
    allowed ones (the schema's fields)."""
    text = " ".join(str(error).split())
    unknown = re.search(r"Key '(\w+)' not in 'StudyConfig'", text)
    if unknown:
        allowed = ", ".join(StudyConfig.__dataclass_fields__)
        return (f"conf/experiment/{name}.yaml: unknown key study.{unknown.group(1)}; allowed "
                f"keys of study: {allowed}")
    return f"conf/experiment/{name}.yaml: {text}"


def study_of(name: str) -> StudyConfig | None:
    """The experiment's study block (None when it declares no study)."""
    block = OmegaConf.to_object(load_experiment(name).study)
    return block if block.name is not None else None


def stages(study: StudyConfig) -> list[tuple[str, str]]:
    """(kind, experiment[@variant]) of each stage, in order."""
    return [(stage.partition(":")[0], stage.partition(":")[2]) for stage in study.stages]


def _check_stages(name: str, study: StudyConfig) -> None:
    allowed = ", ".join(k + ":<experiment>" for k in STAGE_KINDS)
    if not study.stages:
        raise ConfigError(f"conf/experiment/{name}.yaml: study.stages is empty; list its "
                          f"stages, each one of {allowed}")
    for stage in study.stages:
        kind, experiment, variant = split_stage(stage)
        if kind not in STAGE_KINDS or not experiment:
            raise ConfigError(f"conf/experiment/{name}.yaml: study.stages entry {stage!r}; "
                              f"allowed: {allowed}")
        if variant is not None and (kind == "grid" or variant not in study.variants):
            raise ConfigError(f"conf/experiment/{name}.yaml: study.stages entry {stage!r}: a "
                              "variant (@name) needs a long or seeds stage and an entry in "
                              f"study.variants (declared: {', '.join(study.variants) or 'none'})")
        if not (CONF / f"{experiment}.yaml").is_file():
            raise ConfigError(f"conf/experiment/{name}.yaml: study.stages entry {stage!r} names "
                              f"no experiment (no conf/experiment/{experiment}.yaml)")
    if any(split_stage(s)[0] == "long" for s in study.stages) and not study.long:
        raise ConfigError(f"conf/experiment/{name}.yaml: a long stage needs study.long, the "
                          "overrides of the reporting budget (trainer.max_steps=...)")
    if any(split_stage(s)[0] == "ladder" for s in study.stages) and not study.budgets:
        raise ConfigError(f"conf/experiment/{name}.yaml: a ladder stage needs study.budgets, "
                          "the trainer.max_steps of each budget")


def discover() -> tuple[dict[str, StudyConfig], list[str]]:
    """The studies declared in conf/experiment/*.yaml, by name, and the experiments that belong
    to no study (plain experiments, not run by `make studies`). Raises ConfigError for a study
    without stages, a stage naming no experiment, and an experiment that claims a study which
    does not exist, does not list it among its stages, or declares another baseline."""
    blocks = {path.stem: study_of(path.stem) for path in sorted(CONF.glob("*.yaml"))}
    studies = {stem: block for stem, block in blocks.items() if block and block.name == stem}
    for stem, study in studies.items():
        _check_stages(stem, study)
    loose = []
    for stem, block in blocks.items():
        if block is None:
            loose.append(stem)
            continue
        study = studies.get(block.name)
        if study is None:
            raise ConfigError(f"conf/experiment/{stem}.yaml: study.name={block.name!r} is not "
                              f"a study; studies: {', '.join(studies)} (a study is "
                              "conf/experiment/<name>.yaml with study.name=<name>)")
        if stem not in {split_stage(s)[1] for s in study.stages}:
            raise ConfigError(f"conf/experiment/{stem}.yaml: study.name={study.name!r} but "
                              f"{study.name}.yaml's study.stages do not list it")
        if block.baseline != study.baseline:
            raise ConfigError(f"conf/experiment/{stem}.yaml: study.baseline={block.baseline!r} "
                              f"differs from its study's ({study.baseline!r} in "
                              f"{study.name}.yaml)")
    for study in studies.values():
        for stage in study.stages:
            experiment = split_stage(stage)[1]
            if (blocks.get(experiment) or StudyConfig()).name != study.name:
                raise ConfigError(f"conf/experiment/{experiment}.yaml is a stage of study "
                                  f"{study.name} but its study.name is not {study.name!r}")
    return studies, loose


def sweep_params(experiment: str) -> dict[str, list[str]]:
    """The experiment's sweep as Hydra composes it: key -> its values, as written."""
    params = OmegaConf.select(load_experiment(experiment), "hydra.sweeper.params") or {}
    return {str(k): [v.strip() for v in str(v).split(",")] for k, v in params.items()}


def count_runs(experiment: str) -> int:
    """The runs of the experiment's grid: the product of its sweep params' value counts."""
    return math.prod(len(values) for values in sweep_params(experiment).values())


def sweep_of(experiment: str) -> str:
    """The experiment's `sweep` (its run records' folder)."""
    return str(load_experiment(experiment).sweep)


# ---------------------------------------------------------------------- the records so far
def sweep_runs(out_dir: Path, sweep: str) -> pd.DataFrame:
    """The run table of a sweep's records (analysis.records.load_runs), read once per state of
    its folder (a stage that adds runs changes the state)."""
    folder = Path(out_dir) / sweep
    state = tuple(sorted((str(p), p.stat().st_mtime_ns)
                         for p in folder.glob("*/summary.json"))) if folder.is_dir() else ()
    return _read_runs(str(folder), state)


@functools.lru_cache(maxsize=4)
def _read_runs(folder: str, _state: tuple) -> pd.DataFrame:
    path = Path(folder)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            runs = load_runs(path.parent, path.name)
        except NoRunsError:
            runs = pd.DataFrame()
    for warning in caught:
        print(f"note: {warning.message}", file=sys.stderr)
    return runs


def seconds_per_run(sweep: str, out_dir: Path, default: float) -> float:
    """Mean wall clock of the completed runs of the study's sweep, else the static estimate."""
    runs = sweep_runs(out_dir, sweep)
    walls = runs["wall_s"].dropna() if "wall_s" in runs else []
    return float(walls.mean()) if len(walls) else default


def _in_stage(overrides, experiment: str, long: list[str] | None, study_long: list[str],
              exclude: list[list[str]]) -> bool:
    """Whether a run's command-line overrides make it a run of `experiment`'s grid (`long`
    None: it does not hold all of the study's long overrides, nor a ladder's stage mark) or of
    its long stage or a ladder budget (it holds every override of `long`), and not of an
    `exclude`d variant."""
    overrides = set(overrides if isinstance(overrides, list) else [])
    marks = long or study_long
    in_long = bool(marks) and set(marks) <= overrides
    ladder = lambda ov: any(o.startswith("study.stage=ladder") for o in ov)  # noqa: E731
    if ladder(overrides) != ladder(long or []):
        return False  # a ladder's run counts in its ladder only
    return (f"+experiment={experiment}" in overrides and in_long == bool(long)
            and not any(set(e) <= overrides for e in exclude))


def best_runs(out_dir: Path, study: StudyConfig, experiment: str, long: list[str] | None = None,
              exclude: list[list[str]] = ()) -> dict[str, pd.Series]:
    """Per method (and table row, `study.rows`: "lora/adamw r=4"), the first run of its chosen
    configuration (analysis.selection on the stage's runs of the tuning seeds; a config with
    no finite score is never chosen): among the runs of `experiment`'s long stage when `long`
    is given, else among those of its grid."""
    runs = sweep_runs(out_dir, sweep_of(experiment))
    if runs.empty:
        return {}
    mine = runs["meta.overrides"].map(
        lambda o: _in_stage(o, experiment, long, study.long, list(exclude)))
    runs = runs[mine & runs["seed"].isin(study.tuning_seeds)]
    if runs.empty:
        return {}
    selection = select_sweep(runs, study.tuning_seeds, rows=study.rows)
    return {method: selection.chosen(method).sort_values("run_id").iloc[0]
            for method, choice in sorted(selection.choices.items())
            if math.isfinite(choice.mean)}


def best_overrides(out_dir: Path, study: StudyConfig, experiment: str,
                   long: list[str] | None = None,
                   exclude: list[list[str]] = ()) -> dict[str, list[str]]:
    """Per method (and row), the command-line overrides of its chosen run (`best_runs`),
    without its seed, output folder and stage."""
    keep = lambda o: not o.startswith(("seed=", "out_dir=", "study.stage="))  # noqa: E731
    return {m: [o for o in run["meta.overrides"] if keep(o)]
            for m, run in best_runs(out_dir, study, experiment, long, exclude).items()}


def tuned_values(experiment: str, study: StudyConfig, out_dir: Path) -> dict[str, list[str]]:
    """Every knob a long stage re-chooses, with its candidate values in ascending order: the
    grid's swept numeric keys of more than one value (with the values its extensions ran:
    `grid_extensions`), then the study's `tune` knobs the grid does not sweep (the stage
    experiment's own block added)."""
    values: dict[str, set[str]] = {}
    for key, swept in sweep_params(experiment).items():
        if (len(swept) > 1 and key not in study.rows
                and all(_number(v) is not None for v in swept)):
            values[key] = set(swept)
    runs = sweep_runs(out_dir, sweep_of(experiment))
    for overrides in (runs["meta.overrides"] if "meta.overrides" in runs else []):
        if f"+experiment={experiment}" in (overrides or []):
            for o in overrides:
                key, _, value = o.partition("=")
                if key in values and _number(value) is not None:
                    values[key].add(value)
    own = study_of(experiment) or study
    for key, candidates in {**study.tune, **own.tune}.items():
        # a key the grid sweeps is tuned on the grid's values; no candidates: not tuned
        if key not in values and candidates:
            values[key] = {_fmt(v) for v in candidates}
    ordered = {k: _dedupe(sorted(v, key=float)) for k, v in values.items()}
    return {**{k: ordered[k] for k in LR_KEYS if k in ordered},
            **{k: v for k, v in ordered.items() if k not in LR_KEYS}}


def _number(value) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _fmt(value) -> str:
    return f"{float(value):g}"


def _dedupe(values: list[str]) -> list[str]:
    """Sorted values without numeric repeats ("1e-3" and "0.001" are one value)."""
    out: list[str] = []
    for v in values:
        if not out or float(out[-1]) != float(v):
            out.append(v)
    return out


def owned_knobs(method: str, keys) -> list[str]:
    """The keys of `keys` a method has: an adapter's or optimizer's own knobs (its `knobs`
    dataclass), any other group's key ("lora/adamw r=4" -> lora's and adamw's)."""
    from bench.adapters import ADAPTERS
    from bench.optim import OPTIMIZERS

    adapter, optimizer = (part.split("+")[0] for part in method.split(" ")[0].split("/")[:2])
    own = {"adapter": ADAPTERS[adapter].knobs if adapter in ADAPTERS else None,
           "optimizer": OPTIMIZERS[optimizer].knobs if optimizer in OPTIMIZERS else None}

    def has(key: str) -> bool:
        group, _, name = key.partition(".")
        knobs = own.get(group)
        return group not in own or (knobs is not None and name.split(".")[0] in {
            f.name for f in dataclasses.fields(knobs)})

    return [k for k in keys if has(k)]


def star(overrides: list[str], values: dict[str, list[str]], default: DictConfig,
         keys: list[str] | None = None) -> list[list[str]]:
    """The best configuration's neighbourhood, one command per tuned knob: the knob swept over
    its value and the candidate values either side of it ("optimizer.lr=3e-4,1e-3,3e-3"), every
    other knob at the best's value. `keys`: the knobs (default every one of `values`); a knob
    the overrides do not set is at its value in `default` (the composed experiment)."""
    current = dict(o.split("=", 1) for o in overrides if "=" in o)
    arms = []
    for key in keys if keys is not None else list(values):
        value = current.get(key, OmegaConf.select(default, key))
        candidates = values[key]
        here = [i for i, v in enumerate(candidates) if _number(value) is not None
                and float(v) == float(value)]
        if not here:  # a value outside the candidates: the nearest one is its place
            target = _number(value) or 0.0
            here = [min(range(len(candidates)), key=lambda i: abs(float(candidates[i]) - target))]
        around = ",".join(candidates[max(0, here[0] - 1): here[0] + 2])
        if key in current:  # replaced where it stands, so commands read alike
            arm = [f"{key}={around}" if o.partition("=")[0] == key else o for o in overrides]
        else:
            arm = [*overrides, f"{key}={around}"]
        arms.append(arm)
    return arms or [overrides]


def grid_extensions(out_dir: Path, study: StudyConfig, experiment: str) -> list[list[str]]:
    """Per method whose grid best sits on an edge of a swept numeric knob (>= 3 values), the
    best with that knob one step beyond the edge (the ratio between the last two values tried,
    rounded to one significant digit), at most `study.grid_extend` steps past the swept range
    per side: a grid grows by itself until its bests are interior (each step printed)."""
    swept = {k: sorted(map(float, v)) for k, v in sweep_params(experiment).items()
             if len(v) >= 3 and all(_number(x) is not None for x in v)}
    tried = tuned_values(experiment, study, out_dir)
    out = []
    for method, overrides in best_overrides(out_dir, study, experiment).items():
        current = dict(o.split("=", 1) for o in overrides if "=" in o)
        for key, grid in swept.items():
            values = [float(v) for v in tried.get(key, [])]
            value = _number(current.get(key))
            if value is None or len(values) < 3:
                continue
            if value == values[-1] and value > 0:
                step, beyond = value * values[-1] / values[-2], [v for v in values
                                                                 if v > grid[-1]]
            elif value == values[0] and value > 0:
                step, beyond = value * values[0] / values[1], [v for v in values
                                                               if v < grid[0]]
            else:
                continue
            if len(beyond) >= study.grid_extend:
                print(f"note: {method}: best {key}={value:g} is still an edge after "
                      f"{len(beyond)} extensions (study.grid_extend)", file=sys.stderr)
                continue
            step = float(f"{step:.0e}")  # one significant digit: a 1-3 grid goes on 1-3
            print(f"note: {method}: best {key}={value:g} is the grid's edge: also {step:g}",
                  file=sys.stderr)
            out.append([f"{key}={step:g}" if o.partition("=")[0] == key else o
                        for o in overrides])
    return out


def variant_runs(study: StudyConfig, exclude: str | None = None) -> list[list[str]]:
    """The overrides that mark the long runs of each variant (but `exclude`): runs holding one
    of these belong to that variant, not to the plain long stage."""
    return [[*study.long, *o] for v, o in study.variants.items() if v != exclude]


def baseline_values(study: StudyConfig, keys: list[str], out_dir: Path,
                    variant: str | None = None) -> list[str]:
    """`key=value` for each of `keys`, from the baseline method's tuned config (its long
    stage's best when the study has one; with `variant`, its long stage under that variant:
    a schedule moves the best rate); [] while the baseline has no result. A key
    "target=source" takes the baseline's `source` as `target`."""
    for kind, exp in stages(study):
        if kind != "grid":
            continue
        if variant:
            found = best_runs(out_dir, study, exp, [*study.long, *study.variants[variant]])
        else:
            found = best_runs(out_dir, study, exp, study.long or None,
                              exclude=variant_runs(study))
            found = found or best_runs(out_dir, study, exp)
        values = _baseline_keys(study, keys, found)  # the variant picks the runs: one row
        if values:
            return values
    return []


def _baseline_keys(study: StudyConfig, keys: list[str], found: dict) -> list[str]:
    """`key=value` for each of `keys` from the baseline's run among `found` (best_runs: its
    method key carries its row where the study has rows, "full/adamw
    lr_schedule=warmup_constant"); a key "target=source" takes `source` as `target`."""
    for method, run in found.items():
        if method.split(" ")[0] == study.baseline:
            pairs = [key.partition("=") for key in keys]  # target=source, or key
            return [f"{target}={run[source or target]}" for target, _, source in pairs]
    return []


def _baseline_at(study: StudyConfig, keys: list[str], out_dir: Path,
                 marks: list[str]) -> list[str]:
    """`baseline_values` at a ladder's budget and size: `key=value` for each of `keys` from
    the baseline's chosen run among the runs holding `marks`; [] while it has none."""
    for kind, exp in stages(study):
        if kind != "ladder":
            continue
        values = _baseline_keys(study, keys, best_runs(out_dir, study, exp, marks))
        if values:
            return values
    return []


def _budget_ratio(study: StudyConfig, experiment: str, kind: str) -> float:
    """How much longer a run of this stage is than a grid run: the ratio of `study.long`'s
    trainer.max_steps to the experiment's, for long and seeds stages; of the ladder's mean
    budget, for a ladder (1 otherwise)."""
    steps = [o.partition("=")[2] for o in study.long if o.startswith("trainer.max_steps=")]
    grid = OmegaConf.select(load_experiment(experiment), "trainer.max_steps")
    if kind == "ladder" and study.budgets and grid:
        return sum(study.budgets) / len(study.budgets) / float(grid)
    if kind == "grid" or not steps or not grid:
        return 1.0
    return float(steps[-1]) / float(grid)


def _seconds_per_step(sweep: str, out_dir: Path, overrides: list[str]) -> float | None:
    """Mean wall clock per step of the sweep's completed runs holding every one of `overrides`
    (a ladder size's model keys); None without such runs."""
    runs = sweep_runs(out_dir, sweep)
    if runs.empty or "wall_s" not in runs or "trainer.max_steps" not in runs:
        return None
    mine = runs["meta.overrides"].map(lambda o: isinstance(o, list) and set(overrides) <= set(o))
    per_step = (runs["wall_s"] / pd.to_numeric(runs["trainer.max_steps"]))[mine].dropna()
    return float(per_step.mean()) if len(per_step) else None


def _ladder_minutes(study: StudyConfig, experiment: str, out_dir: Path, n: int,
                    per_run: float) -> float:
    """A ladder's minutes of runs (one worker): its `n` runs spread evenly over sizes and
    budgets, each run's steps at the seconds per step measured at its size (the sweep's runs
    of that size), else the sweep's, else `per_run` over the grid's steps."""
    sweep = sweep_of(experiment)
    grid = OmegaConf.select(load_experiment(experiment), "trainer.max_steps") or 1
    fallback = _seconds_per_step(sweep, out_dir, []) or per_run / float(grid)
    sizes = list(study.sizes.values()) or [[]]
    per_cell = n / len(sizes) / len(study.budgets)
    return sum(per_cell * budget * (_seconds_per_step(sweep, out_dir, size) or fallback)
               for size in sizes for budget in study.budgets) / 60


def ladder_slice(name: str, study: StudyConfig, sizes: str | None,
                 methods: str | None) -> StudyConfig:
    """The study with its ladder narrowed to `sizes` and `methods` (comma-separated names; None:
    all), so a long ladder runs in slices (each slice's records are the ladder's own: the runs'
    configs still state the whole study block, and a later slice reads the earlier ones)."""
    def pick(option: str, given: str, declared: list[str], says: str) -> list[str]:
        """The declared names `given` lists, in the study's order; one line if any is not."""
        wanted = [x for x in given.split(",") if x]
        if not wanted or any(x not in declared for x in wanted):
            raise ConfigError(f"{option}={given!r}: {says}")
        return [x for x in declared if x in wanted]

    changes: dict = {}
    if sizes is not None:
        kept = pick("--sizes", sizes, list(study.sizes), f"study {name} has sizes "
                    f"{', '.join(study.sizes) or '(none: study.sizes is empty)'}")
        changes["sizes"] = {s: study.sizes[s] for s in kept}
    if methods is not None:
        changes["ladder_methods"] = pick(
            "--methods", methods, study.ladder_methods, f"study {name}'s ladder_methods are "
            f"{', '.join(study.ladder_methods) or '(none declared)'}")
    return dataclasses.replace(study, **changes) if changes else study


def plan(studies: dict[str, StudyConfig], out_dir: Path, workers: int = 2,
         kinds=STAGE_KINDS, only: set[str] | None = None) -> float:
    total = 0.0
    print(f"{'study':<24}{'stage':<60}{'runs':>6}{'est. minutes':>14}")
    for name, study in studies.items():
        per_run = seconds_per_run(sweep_of(name), out_dir, study.seconds_per_run)
        runs, study_minutes = 0, 0.0
        for kind, stage in stages(study):
            exp, variant = split_stage(f"{kind}:{stage}")[1:]
            if kind not in kinds or (only and exp not in only):
                continue
            found = best_overrides(out_dir, study, exp)
            if variant in study.variant_methods:  # its methods among this grid's
                found = {m: o for m, o in found.items()
                         if m.split(" ")[0] in study.variant_methods[variant]}
            methods = max(1, len(found))
            tuning = len(study.tuning_seeds)
            knobs = max(1, len(tuned_values(exp, study, out_dir)))
            if kind == "grid":
                n = count_runs(exp)
            elif kind == "long":  # the best and each tuned knob's two neighbours
                n = (1 + 2 * knobs) * tuning * methods
            elif kind == "ladder":  # per budget and size: the LR and its neighbours, the seeds
                carried = [m for m in found if not study.ladder_methods
                           or m.split(" ")[0] in study.ladder_methods]
                n = (len(study.budgets) * max(1, len(study.sizes))
                     * (3 * tuning + len(study.reporting_seeds))
                     * (len(carried) if found and study.ladder_methods else max(1, len(carried))))
            else:  # one extra run per seed for each method of the grid
                n = len(study.reporting_seeds) * methods
            if kind == "ladder":
                minutes = _ladder_minutes(study, exp, out_dir, n, per_run) / workers
            else:
                minutes = n * per_run * _budget_ratio(study, exp, kind) / workers / 60
            runs, study_minutes = runs + n, study_minutes + minutes
            label = f"{kind} {stage}" + (f" (seeds {_seeds(study.reporting_seeds)})"
                                         if kind == "seeds" else "")
            print(f"{name:<24}{label:<60}{n:>6}{minutes:>14.1f}")
        print(f"{name:<24}{'all stages':<60}{runs:>6}{study_minutes:>14.1f}")
        total += study_minutes
    print(f"estimated total: {total:.0f} minutes (completed runs are skipped)")
    return total


def _seeds(seeds) -> str:
    """Seeds as a Hydra sweep value: "1,2,3,4,5"."""
    return ",".join(map(str, seeds))


# ------------------------------------------------------------------------------ the stages
def _tuned(out_dir: Path, stage: str, study: StudyConfig,
           grid: bool = False) -> dict[str, list[str]]:
    """Per method (and row), the overrides of its chosen run: of the grid (`grid`), else of
    the long stage, a variant's (`stage` = "<experiment>@<variant>") or the plain one; for a
    variant, its methods only."""
    exp, _, variant = stage.partition("@")
    extra = study.variants.get(variant, []) if variant else []
    if grid:
        best = best_overrides(out_dir, study, exp)
    elif variant:  # the variant's long stage: long + variant overrides
        best = best_overrides(out_dir, study, exp, [*study.long, *extra])
    else:
        best = best_overrides(out_dir, study, exp, study.long or None,
                              exclude=variant_runs(study))
    if variant in study.variant_methods:
        keep = set(study.variant_methods[variant])
        best = {m: ov for m, ov in best.items() if m.split(" ")[0] in keep}
    return best


def commands(kind: str, stage: str, out_dir: Path, study: StudyConfig,
             centres: set[frozenset[str]] | None = None,
             extra_overrides: list[str] = ()) -> list[list[str]]:
    """The `python -m bench.run -m` commands of one stage (computed when the stage starts: a
    long or seeds stage reads the records of the stages before it). A long stage's walk
    (`centres`: the overrides, without the long ones, whose neighbourhood it ran already;
    updated in place): for each method whose long-budget best is not a centre, one command per
    tuned knob (`star`). `extra_overrides` (the command line's) end every command."""
    base = [sys.executable, "-m", "bench.run", "-m"]
    # study.stage: the runs' W&B job_type (not part of their identity: study.* never is)
    tail = [f"study.stage={kind}{'@' + stage.partition('@')[2] if '@' in stage else ''}",
            f"out_dir={out_dir}", *extra_overrides]
    name, _, variant = stage.partition("@")
    extra = study.variants.get(variant, []) if variant else []
    if kind == "grid":
        keys = study.from_baseline.get(name, [])
        inherited = baseline_values(study, keys, out_dir) if keys else []
        if keys and not inherited:
            print(f"note: {name} takes {', '.join(keys)} from the baseline {study.baseline}, "
                  "which has no result yet; run its stages first", file=sys.stderr)
            return []
        return [[*base, f"+experiment={name}", *inherited, *tail]]
    walking = kind == "long" and centres is not None
    if kind == "long" and not walking:
        best = _long_start(out_dir, stage, study)
        if best is None:
            return []
    else:
        best = _tuned(out_dir, stage, study)
    if walking:
        marks = [*study.long, *extra]
        best = {m: [o for o in ov if o not in marks] for m, ov in best.items()}
        best = {m: ov for m, ov in best.items() if frozenset(ov) not in centres}
        centres.update(frozenset(ov) for ov in best.values())
    elif not best:
        print(f"note: no completed tuning-seed run of {stage} yet; run its "
              f"{'long stage' if kind == 'seeds' and study.long else 'grid'} first",
              file=sys.stderr)
    if kind == "long":  # every tuned knob's neighbours around the best (`star`)
        values, default = tuned_values(name, study, out_dir), load_experiment(name)
        return [[*base, *arm, *study.long, *extra, f"seed={_seeds(study.tuning_seeds)}", *tail]
                for method, overrides in best.items()
                for arm in star(overrides, values, default, owned_knobs(method, values))]
    # a variant's runs already hold its overrides
    return [[*base, *overrides, *study.reporting, f"seed={_seeds(study.reporting_seeds)}",
             *tail] for overrides in best.values()]


def _long_start(out_dir: Path, stage: str, study: StudyConfig) -> dict[str, list[str]] | None:
    """The grid bests a long stage starts from (`_tuned(grid=True)`). For a variant's, the keys
    `study.from_baseline` lists for the experiment are set to the baseline's tuned values under
    the same variant (the grid ran at the plain baseline's); None, with a note, while that
    variant's baseline has no result."""
    best = _tuned(out_dir, stage, study, grid=True)
    name, _, variant = stage.partition("@")
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


def stage_batches(kind: str, stage: str, out_dir: Path, study: StudyConfig,
                  extra_overrides: list[str] = ()):
    """Yield the commands of one stage batch by batch, as it runs: a batch is computed from the
    records of the batches before it, so it is asked for once they have run. A grid grows past
    an edge its bests sit on (`grid_extensions`, bounded). A long stage walks: the grid's best
    and every tuned knob's neighbours at the long budget; while a method's best there is not a
    configuration whose neighbourhood ran, that one's too (completed runs are skipped), so no
    method is reported at an edge of the values its knobs tried that the candidates could
    extend. A ladder runs its budgets (`ladder_batches`)."""
    if kind == "ladder":
        yield from ladder_batches(stage, out_dir, study, extra_overrides)
        return
    first = commands(kind, stage, out_dir, study, extra_overrides=extra_overrides)
    if first:
        yield first
    if kind == "grid" and first:
        tail = ["study.stage=grid", f"out_dir={out_dir}", *extra_overrides]
        while batch := grid_extensions(out_dir, study, stage):
            yield [[sys.executable, "-m", "bench.run", "-m", *cell, *tail] for cell in batch]
        return
    if kind != "long" or not first:  # nothing to walk from (its note is printed)
        return
    centres = {frozenset(ov) for ov in _long_start(out_dir, stage, study).values()}
    while batch := commands(kind, stage, out_dir, study, centres, extra_overrides):
        yield batch


def stage_commands(kind: str, stage: str, out_dir: Path, study: StudyConfig,
                   extra_overrides: list[str] = ()):
    """Yield the commands of one stage as it runs (`stage_batches`, one command at a time)."""
    for batch in stage_batches(kind, stage, out_dir, study, extra_overrides):
        yield from batch


def ladder_marks(budget: int, size: tuple[str, list[str]] | None = None) -> list[str]:
    """The overrides of a ladder's runs at `budget` steps (and model `size`: its name and
    overrides): the size's model keys, a schedule that ends at the budget (5% linear warmup,
    then cosine decay to 0: no verdict is read off the middle of a longer run), 20 evaluations,
    and the stage mark that tells its runs apart."""
    name, overrides = size or (None, [])
    return [*overrides, f"trainer.max_steps={budget}", "trainer.lr_schedule=warmup_cosine",
            f"trainer.warmup_steps={max(1, round(budget / 20))}",
            f"trainer.eval_every={max(1, budget // 20)}",
            f"study.stage=ladder@{name + '@' if name else ''}{budget}"]


def _marked(overrides: list[str], marks: list[str]) -> list[str]:
    """`overrides` with `marks` in force: a key the marks set is theirs alone."""
    keys = {m.partition("=")[0] for m in marks}
    return [*(o for o in overrides if o.partition("=")[0] not in keys), *marks]


def ladder_batches(experiment: str, out_dir: Path, study: StudyConfig,
                   extra_overrides: list[str] = ()):
    """Yield a ladder's batches, size by size (`study.sizes`, or the experiment's own model),
    budget by budget (`study.budgets`, ascending), for its methods (`study.ladder_methods`, or
    every one): the LR (the experiment's first tuned rate) re-tuned around the previous budget's
    best (the long stage's, else the grid's, for the first) on the tuning seeds, walking until
    the best is interior, then the best on the reporting seeds."""
    base = [sys.executable, "-m", "bench.run", "-m"]
    tail = [f"out_dir={out_dir}", *extra_overrides]
    values, default = tuned_values(experiment, study, out_dir), load_experiment(experiment)
    rate = next((k for k in values if k in LR_KEYS), None)
    carried = lambda found: {m: ov for m, ov in found.items()  # noqa: E731
                             if not study.ladder_methods
                             or m.split(" ")[0] in study.ladder_methods}
    found = (best_overrides(out_dir, study, experiment, study.long or None,
                            exclude=variant_runs(study))
             or best_overrides(out_dir, study, experiment))
    start = carried(found)
    if found and not start:
        return  # none of this experiment's methods is carried (or in this slice)
    inherit = study.from_baseline.get(experiment, [])
    for size in list(study.sizes.items()) or [None]:
        previous, old_marks = start, set(study.long)
        for budget in sorted(study.budgets):
            marks = ladder_marks(budget, size)
            if inherit:  # the baseline's tuned values at this budget and size (its ladder first)
                inherited = _baseline_at(study, inherit, out_dir, marks)
                if not inherited:
                    print(f"note: {experiment} takes {', '.join(inherit)} from the baseline "
                          f"{study.baseline}, which has no ladder result at budget {budget}"
                          + (f", size {size[0]}" if size else "") + "; run its ladder first",
                          file=sys.stderr)
                    break
                marks = [*inherited, *marks]
            unmarked = lambda ov, m=old_marks: [o for o in ov if o not in m]  # noqa: E731
            centres: set[frozenset[str]] = set()
            while True:
                found = carried(best_overrides(out_dir, study, experiment, marks))
                around = {m: unmarked(ov) for m, ov in previous.items()}
                around.update({m: [o for o in ov if o not in marks] for m, ov in found.items()})
                key = lambda ov, k=marks: frozenset(_marked(ov, k))  # noqa: E731
                fresh = {m: ov for m, ov in around.items() if key(ov) not in centres}
                if not fresh:
                    break
                centres.update(key(ov) for ov in fresh.values())
                yield [[*base, *_marked(arm, marks), f"seed={_seeds(study.tuning_seeds)}", *tail]
                       for overrides in fresh.values()
                       for arm in star(overrides, values, default, [rate] if rate else [])]
            previous = carried(best_overrides(out_dir, study, experiment, marks))
            if not previous:
                print(f"note: {experiment}: no tuned run at budget {budget}"
                      + (f", size {size[0]}" if size else "") + "; the ladder stops there",
                      file=sys.stderr)
                break
            yield [[*base, *_marked([o for o in ov if o not in marks], marks),
                    f"seed={_seeds(study.reporting_seeds)}", *tail] for ov in previous.values()]
            old_marks = set(marks)


# ------------------------------------------------------------- --no-wait: a batch in flight
FLIGHTS = ".studies"  # <out_dir>/.studies/<study>.json, .log, .rc: what --no-wait handed over


class Flight:
    """`--no-wait`'s memory of one study, `<out_dir>/.studies/<study>.json`: the stage commands
    that ran to their end (`done`) and the batch in the air (`flying`: its commands, the process
    running them and its host). That process (`fly`, in a session of its own, its output
    appended to <study>.log) runs the batch as the plain runner would, each command waiting for
    its runs, and writes its exit status to <study>.rc; the invocation that started it has
    exited. The next invocation lands it (`land`) and goes on from the records.

    Why a process still waits: Hydra's submitit launcher (hydra-submitit-launcher 1.2) has no
    option to return once an array is submitted; its launch() ends by collecting every job's
    result (`[j.results()[0] for j in jobs]`). So "submit and exit" is: the array is submitted by
    a detached process that waits for it, and `python -m experiments` exits. On SLURM the array
    does not depend on that process: if it is killed, the jobs run on, and the next invocation,
    finding no exit status and no process, submits the batch again (its completed and running
    runs skip; queued ones would run twice, the second skipping)."""

    def __init__(self, out_dir: Path, study: str):
        self.path = Path(out_dir) / FLIGHTS / f"{study}.json"
        self.log, self.rc = self.path.with_suffix(".log"), self.path.with_suffix(".rc")
        state = json.loads(self.path.read_text()) if self.path.is_file() else {}
        self.done: list[str] = state.get("done", [])
        self.flying: dict | None = state.get("flying")

    @staticmethod
    def key(cmd: list[str]) -> str:
        """A command as `done` holds it: without the Python executable."""
        return shlex.join(cmd[1:])

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(self.path, json.dumps({"done": self.done, "flying": self.flying},
                                           indent=1).encode())

    def launch(self, batch: list[list[str]]) -> int:
        """Start the detached process that runs `batch`; its pid."""
        self.rc.unlink(missing_ok=True)
        self.flying = {"commands": batch, "pid": None, "host": socket.gethostname()}
        self.save()  # the process reads its commands from here
        with self.log.open("a") as log:
            proc = subprocess.Popen([sys.executable, "-m", "experiments", "--flight",
                                     str(self.path)], cwd=ROOT, stdin=subprocess.DEVNULL,
                                    stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        self.flying["pid"] = proc.pid
        self.save()
        return proc.pid

    def land(self) -> int | str | None:
        """The batch in the air: "flying" while its process runs; once it ended, its exit status
        (its commands are done when every run ended, some failed included: 0 or 1); None when
        nothing flies or its process died without a status (killed: the batch runs again)."""
        if not self.flying:
            return None
        if self.rc.is_file():
            code = int(self.rc.read_text().strip() or 2)
            if code in (0, 1):
                self.done += [k for k in map(self.key, self.flying["commands"])
                              if k not in self.done]
            self.rc.unlink()
        elif self._alive():
            return "flying"
        else:
            code = None
        self.flying = None
        self.save()
        return code

    def _alive(self) -> bool:
        pid, host = self.flying.get("pid"), self.flying.get("host")
        if host != socket.gethostname():
            return True  # another machine's process: its exit status will tell
        if not pid:
            return False
        try:
            os.kill(pid, 0)
            cmdline = Path(f"/proc/{pid}/cmdline")  # a pid reused by another process is not it
            return not cmdline.exists() or str(self.path).encode() in cmdline.read_bytes()
        except OSError:
            return False


def fly(path: Path) -> int:
    """The detached process of `--no-wait`: run the batch in flight, write its exit status."""
    flight = Flight(path.parent.parent, path.stem)
    code = 0
    for cmd in flight.flying["commands"]:
        status = run_command(cmd)
        if status not in (0, 1):
            code = status
            break
        code = max(code, status)
    atomic_write(flight.rc, f"{code}\n".encode())
    return code


def run_command(cmd: list[str]) -> int:
    print("$", " ".join(cmd[1:]), flush=True)
    return subprocess.run(cmd, cwd=ROOT).returncode


def run_study(name: str, study: StudyConfig, out_dir: Path, overrides: list[str],
              flight: Flight | None, kinds=STAGE_KINDS, only: set[str] | None = None) -> int:
    """Run a study's stages of `kinds` (and of the experiments `only`, when given) in order
    (completed runs skip); with `flight` (--no-wait), start its first batch not done yet in a
    detached process and return. 1 when a stage failed."""
    for kind, stage in stages(study):
        if kind not in kinds or (only and split_stage(f"{kind}:{stage}")[1] not in only):
            continue
        for batch in stage_batches(kind, stage, out_dir, study, overrides):
            if flight is not None:
                todo = [cmd for cmd in batch if Flight.key(cmd) not in flight.done]
                if todo:
                    pid = flight.launch(todo)
                    print(f"study {name}: {kind} {stage}: {len(todo)} command(s) started in "
                          f"process {pid} (output: {flight.log}); run this again to go on "
                          "once they have run", flush=True)
                    return 0
                continue
            for cmd in batch:
                code = run_command(cmd)
                if code == 1:  # some runs failed (each recorded with its reason): they score +inf
                    print(f"note: study {name}: {stage}: some runs failed (their summary.json "
                          "says why); the study goes on", file=sys.stderr)
                elif code != 0:
                    print(f"study {name}: {stage} failed; rerun to resume", file=sys.stderr)
                    return 1
    if flight is not None:
        print(f"study {name}: every stage has run", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--flight"]:  # the detached process of --no-wait (Flight)
        return fly(Path(argv[1]))
    global STUDY_OVERRIDES
    STUDY_OVERRIDES = study_overrides([a for a in argv if "=" in a and not a.startswith("-")])
    try:
        studies, loose = discover()
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("studies", nargs="*",
                        help=f"any of {', '.join(studies)} (default: all), then Hydra overrides "
                             "(key=value) for every run of their stages")
    parser.add_argument("--plan", action="store_true", help="print the plan and stop")
    parser.add_argument("--out-dir", default="runs")
    parser.add_argument("--stages", default=",".join(STAGE_KINDS), metavar="KIND[,KIND]",
                        help="run (and plan) only the stages of these kinds, in the study's "
                             f"order (default: all of {', '.join(STAGE_KINDS)}); the others' "
                             "records are still read")
    parser.add_argument("--sizes", default=None, metavar="NAME[,NAME]",
                        help="a ladder's slice: only these of its model sizes (study.sizes)")
    parser.add_argument("--methods", default=None, metavar="METHOD[,METHOD]",
                        help="a ladder's slice: only these of its carried methods "
                             "(study.ladder_methods)")
    parser.add_argument("--experiments", default=None, metavar="NAME[,NAME]",
                        help="run (and plan) only the stages of these experiments (a new arm's "
                             "stages, say); the others' records are still read")
    parser.add_argument("--no-wait", action="store_true",
                        help="start each study's next batch of stage commands in a detached "
                             "process and exit; run the same command again to go on")
    args = parser.parse_intermixed_args(argv)  # overrides before or after the options
    names = [s for s in args.studies if "=" not in s]
    overrides = [s for s in args.studies if "=" in s]
    unknown = [s for s in names if s not in studies]
    if unknown:
        parser.error(f"unknown study {unknown[0]!r}; allowed: {', '.join(studies)}")
    chosen = {name: studies[name] for name in (names or studies)}
    if loose:
        print(f"note: not part of a study (no study block): {', '.join(loose)}", file=sys.stderr)
    kinds = [k for k in args.stages.split(",") if k]
    wrong = [k for k in kinds if k not in STAGE_KINDS]
    if wrong or not kinds:
        parser.error(f"--stages={args.stages!r}: allowed kinds: {', '.join(STAGE_KINDS)}")
    try:
        chosen = {name: ladder_slice(name, study, args.sizes, args.methods)
                  for name, study in chosen.items()}
    except ConfigError as error:
        parser.error(str(error))
    only = None
    if args.experiments is not None:
        only = {e for e in args.experiments.split(",") if e}
        known = {split_stage(s)[1] for study in chosen.values() for s in study.stages}
        if not only or only - known:
            parser.error(f"--experiments={args.experiments!r}: allowed: the stage experiments "
                         f"of {', '.join(chosen)}: {', '.join(sorted(known))}")
    out_dir = Path(args.out_dir)
    plan(chosen, out_dir, kinds=kinds, only=only)
    if args.plan:
        return 0
    for name, study in chosen.items():
        flight = Flight(out_dir, name)
        flying = flight.flying
        landed = flight.land()
        if landed == "flying":  # never two processes on one study's stages
            print(f"note: study {name}: {len(flying['commands'])} command(s) still running in "
                  f"process {flying['pid']} on {flying['host']} (output: {flight.log}); run "
                  "this again once they have run", file=sys.stderr)
            continue
        if landed not in (None, 0, 1):
            print(f"study {name}: its batch in flight failed (exit status {landed}; output: "
                  f"{flight.log}); rerun to resume", file=sys.stderr)
            return 1
        if run_study(name, study, out_dir, overrides, flight if args.no_wait else None, kinds,
                     only):
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
