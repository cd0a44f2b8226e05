"""Structured config schemas (registered in Hydra's ConfigStore) and semantic validation.

The dataclasses are the schema: Hydra merges every YAML of a group into its dataclass, so an
unknown key or a value of the wrong type is rejected while the config is composed. `validate`
then checks what a type cannot express (positive learning rates, allowed names, existing files)
and raises `ConfigError` naming the key and the allowed values, before any run directory exists.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING
from omegaconf.errors import OmegaConfBaseException

from bench.adapters import ADAPTERS as ADAPTER_CLASSES
from bench.adapters.balancing import ALIGNMENTS
from bench.adapters.balora import MOMENTS
from bench.adapters.lora import INITS as LORA_INITS
from bench.adapters.lora import LoRA
from bench.data.tokenizers import BPE_MIN_VOCAB, TOKENIZERS, has_own_tokenizer
from bench.errors import ConfigError
from bench.manifolds import MANIFOLDS
from bench.models.gpt import GPTConfig
from bench.optim import OPTIMIZERS as OPTIMIZER_SPECS
from bench.optim.lora_preconditioned import BASES as PRECONDITIONED_BASES
from bench.optim.muon import ADJUST_LR

# The allowed names of every choice a package offers come from that package's registry.
ADAPTERS = tuple(ADAPTER_CLASSES)
OPTIMIZERS = tuple(OPTIMIZER_SPECS)
# The adapters with LoRA factors lora_A, lora_B (what optimizers with needs_lora step).
LORA_ADAPTERS = tuple(name for name, cls in ADAPTER_CLASSES.items() if issubclass(cls, LoRA))
GEOMETRIES = ("euclidean", *MANIFOLDS)  # euclidean: plain weights, no manifold
# model.attention.retraction: "svd" (the schema default) is every geometry's own retraction (the
# first of its choices, or its only one); a geometry that offers a choice lists it itself.
DEFAULT_RETRACTION = "svd"
RETRACTIONS = tuple(
    dict.fromkeys([DEFAULT_RETRACTION, *(r for c in MANIFOLDS.values() for r in c.retractions)])
)
LR_SCHEDULES = ("constant", "warmup_constant", "warmup_cosine")
DEVICES = ("auto", "cpu", "cuda")
LOGGERS = ("wandb_offline", "wandb_online", "none")
INITS = ("scratch", "pretrained")
GROUPS = ("model", "data", "adapter", "optimizer", "trainer", "logger", "experiment")


# Keys that do not change what a run computes: left out of the run id (bench.run.run_id) and
# of the configuration a run is grouped by (bench.metrics.targets).
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
    "model.pretrain.cache_dir",  # where the base is cached, not what it is (its key is)
)


# Keys added after run records existed whose default does not do what the code did before the
# key existed, each with the key that makes it matter: a record without the first while the
# second is set is never taken for a run of today's code (bench.run.find_record). Before
# metrics.hessian.batch_size, the Hessian was taken on the whole training batch.
ABSENT_IS_NOT_DEFAULT = {"metrics.hessian.batch_size": "metrics.hessian.every"}


@dataclass
class AttentionConfig:
    geometry: str = "euclidean"  # euclidean | one of bench.manifolds.GEOMETRIES
    block: bool = False  # one manifold point per KV group (knight.md §4)
    # fixed_rank_embedded only: svd (best rank-r approximation) | orthographic (no SVD, ~4x
    # cheaper, needs steps small against S's smallest singular value)
    retraction: str = "svd"


@dataclass
class PretrainConfig:
    domain: str = "stdlib_core"  # corpus domain the base model is pretrained on
    max_steps: int = 300
    batch_size: int = 8
    lr: float = 3e-3
    cache_dir: str = ".cache/pretrained"


@dataclass
class ModelConfig(GPTConfig):
    """The model group: the GPT architecture (bench.models.gpt.GPTConfig's fields: vocab_size,
    seq_len, d_model, n_layer, n_head, n_kv_head, d_mlp, norm, mlp, pos_emb, tie_embeddings,
    bias, dropout) plus how the model is made."""

    name: str = "gpt_tiny"
    kind: str = "gpt"  # gpt | hf
    init: str = "scratch"  # scratch | pretrained
    path: str | None = None  # local Hugging Face model directory (kind: hf)
    # a GGUF file model.path is converted from once (bench/models/convert_gguf.py): a path, or
    # <package>:<file name> (model=smollm2)
    gguf: str | None = None
    attention: AttentionConfig = field(default_factory=AttentionConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)


@dataclass
class DataConfig:
    name: str = "builtin"  # builtin | text
    domain: str = "stdlib_docs"  # builtin corpus domain to train on (fine-tuning target)
    paths: list[str] = field(default_factory=list)  # data=text: the user's files
    eval_fraction: float = 0.1  # validation: selects, and is every run's curve
    eval_batches: int = 4
    max_bytes: int = 4_000_000  # cap on corpus size (bytes) per domain
    # test: reported once, at a run's end (final_test_loss); 0 = no test split. The studies set
    # 0.1 and 16 batches (>= 128 windows; DESIGN.md §8)
    test_fraction: float = 0.0
    test_batches: int = 16
    # Tokenizers and datasets (issue 27; bench/data/tokenized.py). tokenizer: bytes | bpe | model;
    # None: model for a model=hf folder with its own tokenizer, bytes otherwise
    tokenizer: str | None = None
    vocab_size: int = 4096  # data.tokenizer=bpe: the vocabulary it trains (GPT-2: 50257)
    path: str | None = None  # data=hf: a file, a folder, or a dataset of the local HF cache
    text_field: str = "text"  # data=hf: plain text
    prompt_field: str | None = None  # data=hf instruction data: the prompt, not scored
    response_field: str | None = None  # ... and the response, scored
    allow_download: bool = False  # data=hf: may a dataset name be downloaded
    cache_dir: str = ".cache/data"  # trained tokenizers and token ids, keyed by content


@dataclass
class AdapterConfig:
    name: str = "full"
    r: int = 8
    alpha: float = 16.0
    # alpha / r itself: when set, alpha is scale * r (a rank sweep at a fixed scale s = alpha /
    # r; with rslora s = scale * sqrt(r)); adapter.alpha must then stay at its default
    scale: float | None = None
    target_modules: list[str] = field(default_factory=lambda: ["q", "k", "v", "o"])
    dropout: float = 0.0
    # BaLoRA (papers/balora.md §3)
    project_every: int = 1
    start_step: int = 1
    alignment: str = "procrustes"
    moments: str = "keep"
    # LoRA-type adapters (lora, balora, dora): PEFT's init_lora_weights and use_rslora
    init: str = "default"  # default | pissa | olora (bench.adapters.lora)
    rslora: bool = False  # scale alpha / sqrt(r) instead of alpha / r
    # Riemannian LoRA: the update B A on a fixed-rank manifold (issue: riemannian optimizers)
    geometry: str = "euclidean"
    init_scale: float = 1e-3


@dataclass
class OptimizerConfig:
    name: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    momentum: float = 0.9
    # Riemannian optimizers: manifold parameters get their own LR, the rest AdamW at `lr`
    manifold_lr: float | None = None
    trust_floor: float = 1e-3  # c in T = -lr M / max(||M||, c) (knight.md §1)
    repair_every: int = 100
    # muon: AdamW's LR on embeddings, head, norms, biases (None: lr); torch's LR adjustment
    adamw_lr: float | None = None
    adjust_lr: str = "original"  # original | match_rms_adamw
    # muon: the modules whose matrices Muon steps, by their last name ([q, k, v, o]: attention
    # only, the MLP to AdamW); empty: every block matrix
    muon_modules: list[str] = field(default_factory=list)
    # lora_preconditioned: the damping of (B^T B + reg I)^-1 and the optimizer that steps
    reg: float = 1e-6
    base: str = "adamw"  # adamw | sgd (ScaledGD)
    lr_ratio: float = 16.0  # loraplus: B's LR / A's LR


@dataclass
class TrainerConfig:
    max_steps: int = 200
    batch_size: int = 8
    eval_every: int = 50
    log_every: int = 10
    checkpoint_every: int = 100
    device: str = "auto"
    dtype: str = "float32"  # float32 | bfloat16 (CUDA autocast)
    tf32: bool = False
    lr_schedule: str = "constant"
    warmup_steps: int = 0
    grad_clip: float = 1.0
    divergence_factor: float = 10.0  # loss > factor * initial loss counts as diverged
    threads: int | None = None  # torch threads; default cores // parallel workers
    progress: bool = True
    inject_nan_at: int | None = None  # testing aid: make the loss NaN at this step


@dataclass
class LoggerConfig:
    name: str = "wandb_offline"
    project: str = "lowrank-bench"
    entity: str | None = None
    mode: str = "offline"  # offline | online | disabled


@dataclass
class HessianConfig:
    every: int = 0  # 0: off
    at_start: bool = False  # also at step 0 (the initial weights), when every > 0
    iters: int = 20
    layers: list[str] = field(default_factory=list)  # name patterns; empty = all adapted
    # The fixed batch the Hessian is taken on; None: half the training batch (an HVP costs about
    # two LoRA steps, so 30 iterations on half a batch cost ~26 steps: make perf).
    batch_size: int | None = None
    # also the Gauss-Newton matrix J^T H_z J (cond/gn/*): positive semidefinite, so its kappa
    # exists where the indefinite Hessian's does not (bench/metrics/monitor.py)
    gauss_newton: bool = False


@dataclass
class MetricsConfig:
    hessian: HessianConfig = field(default_factory=HessianConfig)
    target_loss: Any = None  # float, or "from_baseline"
    baseline: str | None = None  # method name of the baseline for from_baseline


@dataclass
class ToyConfig:
    n: int = 20
    m: int = 20
    r: int = 4
    steps: int = 100
    inits: int = 8
    draws: int = 1  # problems (T, W0) per run: draw d is the one seed + d draws on its own
    lr_grid: int = 50
    lr_min: float = 1e-5
    lr_max: float = 0.3
    drop_above: float = 1e5
    method: str = "gd"  # the update rule: bench.toy.UPDATE_RULES (checked by bench.toy.check_toy)


@dataclass
class StudyConfig:
    """What `python -m experiments`, the smoke test and analysis read of a study (its one YAML in
    conf/experiment/); never part of a run's identity (NON_SEMANTIC)."""

    name: str | None = None  # the study; None for a plain run or sweep
    baseline: str | None = None  # the method every other method of the sweep is compared with
    # the study's stages in order, each "grid:<experiment>" (a Hydra multirun of that YAML, the
    # tuning seed), "long:<experiment>" (each method's best config of that grid and its two
    # learning-rate neighbours, again on the tuning seeds, with the `long` overrides) or
    # "seeds:<experiment>" (each method's best config, of the long stage when there is one, on
    # the reporting seeds, with the `reporting` overrides)
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
    # the verdict protocol (DESIGN.md §8): grids tune on the tuning seeds; each method's best
    # configuration then runs on the reporting seeds, which alone are reported
    tuning_seeds: list[int] = field(default_factory=lambda: [0])
    reporting_seeds: list[int] = field(default_factory=lambda: [1, 2, 3, 4, 5])
    smoke: list[str] = field(default_factory=list)  # overrides that shrink it for the smoke test
    # config keys that split each method into table rows, each tuned and reported on its own
    # (balora_rank: [adapter.r], one row per method and rank)
    rows: list[str] = field(default_factory=list)


@dataclass
class Config:
    model: ModelConfig = MISSING
    data: DataConfig = MISSING
    adapter: AdapterConfig = MISSING
    optimizer: OptimizerConfig = MISSING
    trainer: TrainerConfig = MISSING
    logger: LoggerConfig = MISSING
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    toy: ToyConfig = field(default_factory=ToyConfig)
    study: StudyConfig = field(default_factory=StudyConfig)
    task: str = "lm"  # the kind of run: a key of bench.run.TASKS (lm, toy)
    seed: int = 0
    sweep: str = "default"
    out_dir: str = "runs"


def register_configs() -> None:
    """Register the schemas so that each YAML group file is validated against its dataclass."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    # Each group's YAML is merged into the typed field of `Config`, so one schema covers all.
    cs.store(name="base_config", node=Config)


def _choice(key: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{key}={value!r} is not allowed; allowed values: {', '.join(allowed)}")


def _positive(key: str, value: Any) -> None:
    if value is None or value <= 0:
        raise ConfigError(f"{key}={value!r} must be > 0")


def _finite_floats(cfg: Any, node: type = None, prefix: str = "") -> None:
    """Every float of the config (a float-typed key, a float in a list such as optimizer.betas,
    or a float given to an untyped key such as metrics.target_loss) must be finite: nan and inf
    pass `> 0` checks silently (nan compares false) and would end in a traceback or a run
    recorded as diverged. Walks the dataclass schema from `Config`."""
    node = Config if node is None else node
    for f in dataclasses.fields(node):
        kind = globals().get(f.type, f.type) if isinstance(f.type, str) else f.type
        try:
            value = cfg.get(f.name) if hasattr(cfg, "get") else getattr(cfg, f.name, None)
        except OmegaConfBaseException:  # a missing or broken key: not a float to check here
            continue
        key = prefix + f.name
        if dataclasses.is_dataclass(kind):
            if value is not None:
                _finite_floats(value, kind, key + ".")
            continue
        items = value if isinstance(value, Sequence) and not isinstance(value, str) else [value]
        for item in items:
            if isinstance(item, float) and not math.isfinite(item):
                raise ConfigError(
                    f"{key}={value!r} is not allowed; allowed values: finite numbers (no nan, inf)"
                )


# BaLoRA's projection keys (papers/balora.md §3): adapter=dora refuses any of them off its default
BALANCING_KEYS = ("project_every", "start_step", "alignment", "moments")


def _check_lora_options(cfg: Any) -> None:
    """adapter.init and adapter.rslora need a LoRA-type adapter on plain weights (task=lm);
    adapter=dora has no balancing projection and no Riemannian geometry."""
    a = cfg.adapter
    _choice("adapter.init", a.init, LORA_INITS)
    lora_type = [name for name, cls in ADAPTER_CLASSES.items() if issubclass(cls, LoRA)]
    for key, value, default in (("init", a.init, "default"), ("rslora", a.rslora, False)):
        if value == default:
            continue
        if a.name not in lora_type:
            raise ConfigError(
                f"adapter.{key}={value!r} needs a LoRA adapter: allowed adapter.name: "
                f"{', '.join(lora_type)} (got {a.name!r})"
            )
        if cfg.task != "lm":
            raise ConfigError(f"adapter.{key}={value!r} applies to task=lm only (got {cfg.task!r})")
    if a.init != "default" and a.geometry != "euclidean":
        raise ConfigError(
            f"adapter.init={a.init!r} with adapter.geometry={a.geometry!r}: allowed "
            "adapter.init=default (a Riemannian LoRA starts at its own random point)"
        )
    if a.name == "dora":
        defaults = AdapterConfig()
        for key in BALANCING_KEYS:
            if a[key] != getattr(defaults, key):
                raise ConfigError(
                    f"adapter.{key}={a[key]!r} is BaLoRA's balancing projection, which "
                    f"adapter=dora does not support: allowed adapter.{key}="
                    f"{getattr(defaults, key)!r}, or adapter=balora"
                )
        if a.geometry != "euclidean":
            raise ConfigError(
                f"adapter.geometry={a.geometry!r} with adapter=dora: allowed values: euclidean "
                "(DoRA's magnitude and direction have no fixed-rank manifold here)"
            )


DATA_SOURCES = ("builtin", "text", "hf")


def _check_data(cfg: Any) -> None:
    """data.name, data.tokenizer against the model, the data=hf fields (issue 27)."""
    d, m = cfg.data, cfg.model
    _choice("data.name", d.name, DATA_SOURCES)
    if d.tokenizer is not None:
        _choice("data.tokenizer", d.tokenizer, TOKENIZERS)
    if d.tokenizer == "bpe" and d.vocab_size < BPE_MIN_VOCAB:
        raise ConfigError(f"data.vocab_size={d.vocab_size} must be >= {BPE_MIN_VOCAB} (the 256 "
                          "byte symbols of a byte-level BPE and its end-of-document token)")
    if d.tokenizer == "model" and m.kind != "hf":
        raise ConfigError("data.tokenizer=model needs model=hf (a model folder with its own "
                          "tokenizer); allowed for the built-in models: bytes, bpe")
    if d.tokenizer in ("bytes", "bpe") and m.kind == "hf" and (m.gguf or has_own_tokenizer(m.path)):
        raise ConfigError(f"data.tokenizer={d.tokenizer} with model.path={m.path!r}: a pretrained "
                          "model with its own tokenizer, whose embeddings mean nothing for other "
                          "token ids; allowed: data.tokenizer=model")
    if d.tokenizer == "bpe" and m.kind == "gpt" and m.init == "pretrained":
        raise ConfigError("data.tokenizer=bpe with model.init=pretrained: the built-in base is "
                          "pretrained on bytes; allowed: data.tokenizer=bytes, or "
                          "model.init=scratch")
    if (d.prompt_field is None) != (d.response_field is None):
        raise ConfigError(f"data.prompt_field={d.prompt_field!r}, data.response_field="
                          f"{d.response_field!r}: set both (instruction data: the prompt is not "
                          "scored) or neither (plain text from data.text_field)")
    if m.kind == "hf" and m.attention.geometry != "euclidean":
        raise ConfigError(f"model.attention.geometry={m.attention.geometry!r} applies to the "
                          "built-in model only; for model=hf put the adapter's update on a "
                          "manifold: adapter.geometry")
    if d.name == "hf" and not d.path:
        raise ConfigError("data.path is not set: data=hf needs data.path=<a .jsonl, .json, "
                          ".parquet, .csv or .txt file, a folder of them, or a dataset name of "
                          "the local Hugging Face cache>")
    if d.name != "hf" and (d.path or d.prompt_field):
        key = "data.path" if d.path else "data.prompt_field"
        raise ConfigError(f"{key} applies to data=hf only (got data.name={d.name!r})")


def _check_new_optimizers(cfg: Any) -> None:
    """muon, lora_preconditioned, loraplus: their keys, and the LoRA adapter two of them need."""
    o = cfg.optimizer
    if o.adamw_lr is not None:
        _positive("optimizer.adamw_lr", o.adamw_lr)
    _choice("optimizer.adjust_lr", o.adjust_lr, ADJUST_LR)
    _choice("optimizer.base", o.base, tuple(PRECONDITIONED_BASES))
    if o.reg < 0:
        raise ConfigError(f"optimizer.reg={o.reg} must be >= 0")
    _positive("optimizer.lr_ratio", o.lr_ratio)
    if OPTIMIZER_SPECS[o.name].needs_lora and (
        cfg.adapter.name not in LORA_ADAPTERS or cfg.adapter.geometry != "euclidean"
    ):
        raise ConfigError(
            f"optimizer.name={o.name!r} needs a LoRA adapter with factors lora_A, lora_B: "
            f"adapter.name={' or '.join(LORA_ADAPTERS)} with adapter.geometry=euclidean (got "
            f"adapter.name={cfg.adapter.name!r}, adapter.geometry={cfg.adapter.geometry!r})"
        )


def validate(cfg: Any) -> None:
    """Semantic checks that the schema types cannot express. Raises ConfigError."""
    _finite_floats(cfg)
    _choice("adapter.name", cfg.adapter.name, ADAPTERS)
    _choice("optimizer.name", cfg.optimizer.name, OPTIMIZERS)
    _choice("trainer.device", cfg.trainer.device, DEVICES)
    _choice("trainer.lr_schedule", cfg.trainer.lr_schedule, LR_SCHEDULES)
    _choice("trainer.dtype", cfg.trainer.dtype, ("float32", "bfloat16"))
    _choice("logger.name", cfg.logger.name, LOGGERS)
    _choice("logger.mode", cfg.logger.mode, ("offline", "online", "disabled"))
    _choice("model.init", cfg.model.init, INITS)
    _choice("model.kind", cfg.model.kind, ("gpt", "hf"))
    _choice("model.norm", cfg.model.norm, ("layernorm", "rmsnorm"))
    _choice("model.mlp", cfg.model.mlp, ("gelu", "relu2"))
    _choice("model.attention.geometry", cfg.model.attention.geometry, GEOMETRIES)
    _choice("adapter.geometry", cfg.adapter.geometry, GEOMETRIES)
    retraction, attention_geometry = cfg.model.attention.retraction, cfg.model.attention.geometry
    _choice("model.attention.retraction", retraction, RETRACTIONS)
    offering = [g for g, cls in MANIFOLDS.items() if retraction in cls.retractions]
    if retraction != DEFAULT_RETRACTION and attention_geometry not in offering:
        raise ConfigError(
            f"model.attention.retraction={retraction!r} needs "
            f"model.attention.geometry={' or '.join(offering)} (got "
            f"{attention_geometry!r}); the other geometries have one retraction"
        )
    _choice("adapter.alignment", cfg.adapter.alignment, ALIGNMENTS)
    _choice("adapter.moments", cfg.adapter.moments, MOMENTS)
    _check_lora_options(cfg)
    _check_data(cfg)
    _positive("optimizer.lr", cfg.optimizer.lr)
    if cfg.optimizer.manifold_lr is not None:
        _positive("optimizer.manifold_lr", cfg.optimizer.manifold_lr)
    if cfg.optimizer.weight_decay < 0:
        raise ConfigError(f"optimizer.weight_decay={cfg.optimizer.weight_decay} must be >= 0")
    _check_new_optimizers(cfg)
    for key in ("max_steps", "batch_size", "eval_every", "log_every", "checkpoint_every"):
        _positive(f"trainer.{key}", cfg.trainer[key])
    _positive("trainer.divergence_factor", cfg.trainer.divergence_factor)
    for key in ("d_model", "n_layer", "n_head", "seq_len", "vocab_size"):
        _positive(f"model.{key}", cfg.model[key])
    if cfg.model.d_model % cfg.model.n_head:
        raise ConfigError(
            f"model.d_model={cfg.model.d_model} must be divisible by "
            f"model.n_head={cfg.model.n_head}"
        )
    n_kv = cfg.model.n_kv_head or cfg.model.n_head
    if n_kv < 1 or cfg.model.n_head % n_kv:
        raise ConfigError(
            f"model.n_kv_head={cfg.model.n_kv_head} must divide model.n_head={cfg.model.n_head}"
        )
    _positive("adapter.r", cfg.adapter.r)
    _positive("adapter.alpha", cfg.adapter.alpha)
    if cfg.adapter.get("scale") is not None:
        _positive("adapter.scale", cfg.adapter.scale)
        if cfg.adapter.alpha != AdapterConfig.alpha:
            raise ConfigError(
                f"adapter.alpha={cfg.adapter.alpha:g} and adapter.scale={cfg.adapter.scale:g} "
                "are both set: set one (alpha = scale * r)")
    _positive("adapter.project_every", cfg.adapter.project_every)
    if cfg.adapter.start_step < 1:
        raise ConfigError(
            f"adapter.start_step={cfg.adapter.start_step} must be >= 1: projecting before the "
            "first optimizer step maps B A = 0 to the saddle (0, 0)"
        )
    if not 0 <= cfg.adapter.dropout < 1:
        raise ConfigError(f"adapter.dropout={cfg.adapter.dropout} must be in [0, 1)")
    # both rotate Adam's moments: AdamW's on lora_A/lora_B or on an R2 point, and Riemannian
    # Adam's on an R2 point (bench/adapters/balora.py)
    if cfg.adapter.moments == "transport" and cfg.optimizer.name not in ("adamw",
                                                                          "riemannian_adam"):
        raise ConfigError(
            f"adapter.moments=transport needs an optimizer with moment estimates (adamw or "
            f"riemannian_adam); optimizer.name={cfg.optimizer.name!r} has none"
        )
    if cfg.adapter.name == "balora" and cfg.adapter.geometry not in (
        "euclidean",
        "fixed_rank_quotient",
    ):
        raise ConfigError(
            f"adapter.geometry={cfg.adapter.geometry!r} with adapter=balora: allowed values: "
            "euclidean, fixed_rank_quotient (the balanced manifold is a section of its quotient)"
        )
    if cfg.adapter.geometry != "euclidean" and cfg.adapter.name == "full":
        raise ConfigError(
            f"adapter.geometry={cfg.adapter.geometry!r} needs adapter=lora or balora "
            f"(got {cfg.adapter.name!r})"
        )
    riemannian = OPTIMIZER_SPECS[cfg.optimizer.name].needs_manifold
    has_manifold = (
        cfg.model.attention.geometry != "euclidean" or cfg.adapter.geometry != "euclidean"
    )
    if riemannian and not has_manifold and cfg.task == "lm":
        raise ConfigError(
            f"optimizer.name={cfg.optimizer.name!r} needs manifold parameters: set "
            f"model.attention.geometry or adapter.geometry to one of {', '.join(GEOMETRIES[1:])}"
        )
    if cfg.metrics.hessian.every < 0:
        raise ConfigError(f"metrics.hessian.every={cfg.metrics.hessian.every} must be >= 0")
    if cfg.metrics.hessian.every and cfg.metrics.hessian.iters < 2:
        raise ConfigError(f"metrics.hessian.iters={cfg.metrics.hessian.iters} must be >= 2")
    target = cfg.metrics.target_loss
    if target is not None and target != "from_baseline":
        if not isinstance(target, (int, float)) or isinstance(target, bool):
            raise ConfigError(
                f"metrics.target_loss={target!r}: allowed values are a number, null or "
                "'from_baseline'"
            )
    if target == "from_baseline" and not cfg.metrics.baseline:
        raise ConfigError(
            "metrics.target_loss=from_baseline needs metrics.baseline (a method name, "
            "e.g. full/adamw)"
        )
    if target == "from_baseline":  # a method name: adapter/optimizer[/geometry...]
        parts = str(cfg.metrics.baseline).split("/")  # adapter[+option]/optimizer[+variant]
        if (len(parts) < 2 or parts[0].split("+")[0] not in ADAPTERS
                or parts[1].split("+")[0] not in OPTIMIZERS):
            raise ConfigError(
                f"metrics.baseline={cfg.metrics.baseline!r} is not a method name "
                f"<adapter>/<optimizer>[/...]: adapters {', '.join(ADAPTERS)}; optimizers "
                f"{', '.join(OPTIMIZERS)}"
            )
    if cfg.data.name == "text" and not cfg.data.paths:
        raise ConfigError("data.paths is empty: data=text needs data.paths=[file, ...]")
    if not 0 < cfg.data.eval_fraction < 1:
        raise ConfigError(f"data.eval_fraction={cfg.data.eval_fraction} must be in (0, 1)")
    if not 0 <= cfg.data.test_fraction < 1 - cfg.data.eval_fraction:
        raise ConfigError(
            f"data.test_fraction={cfg.data.test_fraction} must be in [0, 1 - data.eval_fraction"
            f" = {1 - cfg.data.eval_fraction:g}): 0 (no test split) or the share of documents "
            "held out for the test loss")
    if cfg.data.test_batches < 1:
        raise ConfigError(f"data.test_batches={cfg.data.test_batches} must be >= 1")


def _schema_fields(node: type, path: list[str]) -> tuple[type | None, str | None]:
    """Walk `path` down the dataclass schema: (the type at its end, or None; the bad part)."""
    for i, part in enumerate(path):
        fields = (
            {f.name: f for f in dataclasses.fields(node)} if dataclasses.is_dataclass(node) else {}
        )
        if part not in fields:
            return None, ".".join(path[: i + 1])
        node = fields[part].type
        node = globals().get(node, node) if isinstance(node, str) else node
    return node, None


def schema_defaults() -> dict:
    """Every key of `Config` with its schema default, groups included (a group's default is its
    dataclass's defaults): what the run id compares a config against (bench.run.config_digest)."""
    def defaults(node: type) -> dict:
        out = {}
        for f in dataclasses.fields(node):
            kind = globals().get(f.type, f.type) if isinstance(f.type, str) else f.type
            if dataclasses.is_dataclass(kind):
                out[f.name] = defaults(kind)
            elif f.default_factory is not dataclasses.MISSING:
                out[f.name] = f.default_factory()
            else:
                out[f.name] = f.default
        return out

    return defaults(Config)


def check_override_keys(overrides: list[str]) -> None:
    """Unknown keys on the command line -> ConfigError listing the allowed keys of that group.

    Hydra would refuse them too, but without saying what is allowed. Group choices
    (`adapter=lora`), additions (`+key=...`), deletions and `hydra.*` are left to Hydra.
    """
    for override in overrides:
        key = override.split("=", 1)[0].lstrip("+")
        if "=" not in override or key.startswith(("~", "hydra")) or key in GROUPS:
            continue
        path = key.split(".")
        _, bad = _schema_fields(Config, path)
        if bad is None:
            continue
        parent, _ = _schema_fields(Config, bad.split(".")[:-1])
        allowed = [f.name for f in dataclasses.fields(parent)] if parent else []
        where = bad.rsplit(".", 1)[0] if "." in bad else "the config"
        raise ConfigError(
            f"unknown key {key}; allowed keys of {where}: {', '.join(allowed)}"
        )
