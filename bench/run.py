"""The entry point: config -> objects -> train -> run record.

    python -m bench.run                                   # one run with the defaults
    python -m bench.run -m                                # the default sweep (conf/config.yaml)
    python -m bench.run -m adapter=lora,balora seed=0,1,2 # any sweep

Everything that can be wrong with a config is found before a run directory exists: the schema
(bench/config.py) rejects unknown keys and wrong types while Hydra composes, `validate` checks
values, and the model, data and adapter are built and checked next. Only then is the run record
created. A run that diverges or fails is recorded as such and the sweep goes on.
"""

from __future__ import annotations

import sys
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import hydra
import torch
from filelock import FileLock, Timeout
from omegaconf import DictConfig, OmegaConf

from bench.adapters import build_adapter, count_trainable
from bench.config import ConfigError, check_override_keys, register_configs, validate
from bench.data.corpus import check_context, eval_batches, load_corpus
from bench.metrics.cost import usable_cpus
from bench.metrics.monitor import HessianMonitor
from bench.models import build_model
from bench.optim import build_optimizer
from bench.pretrain import load_pretrained
from bench.toy import check_toy, run_toy
from bench.tracking.identity import (
    config_id,
    find_record,
    host,
    method_name,
    provenance,
    run_id,
)
from bench.tracking.record import CheckpointError, RunRecord
from bench.tracking.wandb import WandbLogger
from bench.train import Trainer


def _setup_threads(cfg) -> None:
    """Parallel workers divide the machine's cores instead of oversubscribing them.

    joblib (hydra/launcher=local): cores // n_jobs; submitit (slurm): the task's cpus_per_task.
    """
    threads = cfg.trainer.threads
    if not threads:
        workers, cpus = 1, None
        try:
            from hydra.core.hydra_config import HydraConfig

            hc = HydraConfig.get()
            if hc.mode.name == "MULTIRUN":
                workers = int(hc.launcher.get("n_jobs", 1) or 1)
                cpus = hc.launcher.get("cpus_per_task")
        except (ValueError, AttributeError):
            pass
        threads = cpus or max(1, usable_cpus() // workers)
    torch.set_num_threads(threads)


def cli_overrides() -> list[str]:
    """The command-line (or sweep) overrides of this run, as Hydra passed them."""
    try:
        from hydra.core.hydra_config import HydraConfig

        return list(HydraConfig.get().overrides.task)
    except (ValueError, AttributeError):
        return []


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("trainer.device=cuda but no CUDA device is available; use auto or cpu")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


# ---------------------------------------------------------------------------- the tasks
@dataclass
class Prepared:
    """What a task built from a validated config before anything is written: `parts` for its
    execution, `meta` for the record's config.yaml, `summary` keys every summary carries."""

    parts: dict = field(default_factory=dict)
    meta: dict = field(default_factory=dict)
    summary: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Task:
    """One kind of run (`task=`): how it is prepared (raises ConfigError, writes nothing), how
    it executes into its created record (returns the summary), and its final line's detail."""

    prepare: Callable[[DictConfig], Prepared]
    execute: Callable[[DictConfig, RunRecord, dict, WandbLogger], dict]
    describe: Callable[[dict], str]


def prepare(cfg) -> Prepared:
    """The language-model task: build and check everything a validated config needs (the
    pretrained base is loaded, or pretrained once, first); raises ConfigError. Writes no run
    record."""
    device = resolve_device(cfg.trainer.device)
    d = cfg.data
    corpus = load_corpus(d.name, d.domain, list(d.paths), d.eval_fraction, d.max_bytes,
                         d.test_fraction)
    check_context(corpus, cfg.model.seq_len)
    state, source = None, None
    if cfg.model.kind == "gpt" and cfg.model.init == "pretrained":
        state, source = load_pretrained(cfg)  # leaves torch's RNG as it was
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, state)
    adapter = build_adapter(cfg.adapter)
    model = adapter.apply(model).to(device)
    optimizer = build_optimizer(model, cfg.optimizer)
    eval_sets = {"": corpus.eval}
    if source is not None:  # fine-tuning: also watch the pretraining domain
        eval_sets["source"] = source.eval
    hooks = []
    h = cfg.metrics.hessian
    if h.every:  # Hessian spectra on one fixed eval batch (bench/metrics/monitor.py)
        size = h.batch_size or max(1, cfg.trainer.batch_size // 2)
        x, y = eval_batches(corpus.eval, size, cfg.model.seq_len, 1)[0]
        batch = (x.to(device), y.to(device))
        hooks.append(HessianMonitor(h.every, h.iters, list(h.layers), adapter, batch,
                                    at_start=h.at_start, gauss_newton=h.gauss_newton,
                                    seed=cfg.seed, model=model))
    trainable = count_trainable(model)
    parts = {"device": device, "corpus": corpus, "model": model, "adapter": adapter,
             "optimizer": optimizer, "eval_sets": eval_sets, "hooks": hooks}
    meta = {"data_hash": corpus.content_hash, "trainable_params": trainable,
            "device": str(device)}
    meta |= {"ns_dtype": str(optimizer.ns_dtype)} if hasattr(optimizer, "ns_dtype") else {}
    return Prepared(parts, meta, {"trainable_params": trainable})


def train(cfg, record: RunRecord, parts: dict, logger: WandbLogger) -> dict:
    """The language-model task's execution: the training loop (bench/train.py)."""
    return Trainer(
        model=parts["model"],
        optimizer=parts["optimizer"],
        adapter=parts["adapter"],
        train_data=parts["corpus"].train,
        eval_sets=parts["eval_sets"],
        cfg=cfg.trainer,
        record=record,
        seed=cfg.seed,
        device=parts["device"],
        n_eval_batches=cfg.data.eval_batches,
        test_data=parts["corpus"].test,
        n_test_batches=cfg.data.test_batches,
        target_loss=cfg.metrics.target_loss,
        logger=logger,
        hooks=parts["hooks"],
    ).run()


def _eval_line(summary: dict) -> str:
    loss = summary.get("final_eval_loss")
    return f", eval loss {loss:.4f}" if loss else ""


def _toy_line(summary: dict) -> str:
    final = summary.get("final_excess_median")
    return f", median excess loss {final:.3g}" if final is not None else ""


def _prepare_toy(cfg) -> Prepared:
    check_toy(cfg)
    return Prepared(meta={"device": "cpu"}, summary={"steps": cfg.toy.steps})


TASKS: dict[str, Task] = {
    "lm": Task(prepare, train, _eval_line),
    "toy": Task(_prepare_toy, lambda cfg, record, parts, logger: run_toy(cfg, record),
                _toy_line),
}


# ----------------------------------------------------------------------------- the skeleton
def run(cfg: DictConfig) -> dict | None:
    """One run of any task: returns its summary (or None when another process is running it).

    validate -> run id -> skip a completed record -> prepare (nothing written yet) -> lock the
    run folder -> config.yaml with meta -> execute -> summary.json; a failed execution is
    recorded as such and the sweep goes on."""
    validate(cfg)
    if cfg.task not in TASKS:
        raise ConfigError(f"task={cfg.task!r} is not allowed; allowed values: {', '.join(TASKS)}")
    _setup_threads(cfg)
    torch.manual_seed(cfg.seed)
    task = TASKS[cfg.task]
    rid = run_id(cfg)
    record = find_record(cfg, rid)
    if record.is_complete():
        print(f"[bench] {record.dir.name}: already {record.read_summary()['status']}, skipped")
        return record.read_summary()
    prepared = task.prepare(cfg)
    # One process per run: a second launch of the same run (two sweeps, a resubmitted array task)
    # leaves it to the first instead of writing the same files.
    record.dir.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(record.dir / ".lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        print(f"[bench] {rid}: running in another process, skipped")
        return None
    try:
        if record.is_complete():  # the other process finished it between our check and the lock
            print(f"[bench] {rid}: already {record.read_summary()['status']}, skipped")
            return record.read_summary()
        record.load_checkpoint()  # one that cannot be resumed stops here, before any write
        return _run_locked(cfg, task, rid, record, prepared)
    finally:
        lock.release()


def _run_locked(cfg, task: Task, rid: str, record: RunRecord, prepared: Prepared) -> dict:
    resolved = OmegaConf.to_container(cfg, resolve=True)
    resolved["meta"] = {
        "run_id": rid,
        "method": method_name(cfg),
        "config_id": config_id(cfg),
        **prepared.meta,
        "overrides": cli_overrides(),
        "versions": provenance(),
        "host": host(),
    }
    record.create(resolved)
    logger = WandbLogger(
        mode=cfg.logger.mode,
        project=cfg.logger.project,
        entity=cfg.logger.entity,
        run_dir=record.dir,
        name=f"{method_name(cfg)} s{cfg.seed}",
        group=cfg.sweep,
        tags=[cfg.adapter.name, cfg.optimizer.name],
        config=resolved,
        run_id=rid,
    )
    try:
        summary = task.execute(cfg, record, prepared.parts, logger)
    except CheckpointError:  # another version's checkpoint: stop, leave the record as it is
        raise
    except Exception as e:  # noqa: BLE001 - a failed run is recorded and the sweep goes on
        traceback.print_exc()
        summary = {"status": "failed", "error": f"{type(e).__name__}: {e}"}
    summary = {**prepared.summary, **summary}
    # Only this run writes its record: a from_baseline target is resolved by analysis, from the
    # records of the whole sweep (analysis/targets.py).
    record.write_summary(summary)
    record.close()
    logger.finish(summary)
    print(f"[bench] {rid}: {summary['status']}" + task.describe(summary))
    return summary


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    try:
        run(cfg)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


register_configs()
warnings.filterwarnings("ignore", message=".*is not a valid Python identifier.*")

if __name__ == "__main__":
    try:
        check_override_keys([a for a in sys.argv[1:] if not a.startswith("-")])
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    main()
