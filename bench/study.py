"""The `study` block of an experiment YAML (conf/experiment/<study>.yaml): the study's schema.

A study is its YAML(s) and its README (experiments/<study>/README.md). `python -m experiments`
runs its stages (experiments/__main__.py), the smoke test shrinks it (`smoke`), and analysis
reads the block back from the run records (never part of a run's identity: `study` is under
bench.record.NON_SEMANTIC).
"""

from __future__ import annotations

from dataclasses import dataclass, field

STAGE_KINDS = ("grid", "long", "seeds", "ladder")


@dataclass
class StudyConfig:
    """What `python -m experiments`, the smoke test and analysis read of a study (its one YAML in
    conf/experiment/); never part of a run's identity (NON_SEMANTIC)."""

    name: str | None = None  # the study; None for a plain run or sweep
    baseline: str | None = None  # the method every other method of the sweep is compared with
    # the study's stages in order, each "grid:<experiment>" (a Hydra multirun of that YAML on
    # the first tuning seed, grown past an edge its best sits on), "long:<experiment>" (each
    # method's grid best and every tuned knob's neighbours, on the tuning seeds, with the `long`
    # overrides, walking until the best is interior), "seeds:<experiment>" (each method's best
    # config, of the long stage when there is one, on the reporting seeds, with the `reporting`
    # overrides) or "ladder:<experiment>" (per budget of `budgets`: tune, then seeds)
    stages: list[str] = field(default_factory=list)
    long: list[str] = field(default_factory=list)  # the reporting budget: trainer.max_steps=...
    reporting: list[str] = field(default_factory=list)  # measurements of reporting runs only
    # experiment -> keys its grid stage takes from the baseline method's tuned config
    # (riemannian_attention: {riemannian_attention: [optimizer.lr]}, the AdamW part's LR);
    # "target=source" takes the baseline's `source` as `target` (optimizer.adamw_lr=optimizer.lr)
    from_baseline: dict[str, list[str]] = field(default_factory=dict)
    # named variants of long and seeds stages ("long:<experiment>@cosine"): overrides added to
    # their runs ({cosine: [trainer.lr_schedule=warmup_cosine]}); a variant's long stage starts
    # from the grid's best like the plain one, its from_baseline keys set to the baseline's
    # tuned values under the same variant
    variants: dict[str, list[str]] = field(default_factory=dict)
    # variant -> the methods it runs (a variant not listed runs every method)
    variant_methods: dict[str, list[str]] = field(default_factory=dict)
    seconds_per_run: float = 30.0  # estimate on 2 cores with 2 workers, until runs exist
    # the verdict protocol (docs/design.md §8): grids tune on the tuning seeds; each method's best
    # configuration then runs on the reporting seeds, which alone are reported
    tuning_seeds: list[int] = field(default_factory=lambda: [0])
    reporting_seeds: list[int] = field(default_factory=lambda: [1, 2, 3, 4, 5])
    smoke: list[str] = field(default_factory=list)  # overrides that shrink it for the smoke test
    # config keys that split each method into table rows, each tuned and reported on its own
    # (balora_rank: [adapter.r], one row per method and rank)
    rows: list[str] = field(default_factory=list)
    # the knobs a long stage re-chooses beyond the grid's swept ones, with their candidate
    # values ({optimizer.weight_decay: [0.0, 0.01, 0.1]}): every knob of every arm is tuned
    # (docs/design.md §8); a stage experiment's own block may add its own (the AdamW part's LR)
    tune: dict[str, list[float]] = field(default_factory=dict)
    # how many values a grid may grow by, per knob and side, while a best sits on its edge
    grid_extend: int = 2
    # the budget ladder (`ladder:<experiment>` stages): trainer.max_steps of each budget; each
    # runs to the end of its own warmup + cosine schedule, re-tunes the LR around the previous
    # budget's best on the tuning seeds, then runs the reporting seeds
    budgets: list[int] = field(default_factory=list)
    # the model-size ladder: size name -> the overrides of that size (every model key it
    # changes stated, the experiment's own width included: {d64: [model.d_model=64,
    # model.n_head=4, model.n_kv_head=2], ...}); a ladder runs every budget at every size
    sizes: dict[str, list[str]] = field(default_factory=dict)
    # the methods a ladder carries (empty: every method of its experiment), chosen by a rule
    # stated before it runs (the study's README)
    ladder_methods: list[str] = field(default_factory=list)
    # the stage a study's runner launched this run in ("grid", "long", "seeds", "long@cosine"):
    # W&B's job_type; set by `python -m experiments`, never by hand
    stage: str | None = None


def split_stage(stage: str) -> tuple[str, str, str | None]:
    """"long:riemannian_attention@cosine" -> ("long", "riemannian_attention", "cosine")."""
    kind, _, experiment = str(stage).partition(":")
    name, _, variant = experiment.partition("@")
    return kind, name, variant or None
