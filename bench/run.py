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

import json
import os
import sys
import tempfile
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import hydra
import torch
from filelock import FileLock, Timeout
from omegaconf import DictConfig, OmegaConf

from bench.adapters import build_adapter, count_trainable
from bench.config import ConfigError, check_override_keys, register_configs, validate
from bench.data.corpus import check_context, eval_batches
from bench.data.tokenized import load_data
from bench.metrics.cost import usable_cpus
from bench.metrics.monitor import HessianMonitor
from bench.models import build_model
from bench.models.convert_gguf import ensure_converted
from bench.models.hf import check_vocab, context_length
from bench.optim import build_optimizer
from bench.pretrain import load_pretrained
from bench.record import RECORD_FORMAT, RunRecord
from bench.toy import check_toy, run_toy
from bench.tracking.checkpoint import CheckpointError, load_checkpoint
from bench.tracking.identity import (
    config_id,
    find_record,
    host,
    method_name,
    provenance,
    run_id,
)
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
    # issue 27: a GGUF model converted once; the data tokenized (cached) with data.tokenizer
    converted = ensure_converted(cfg.model)
    corpus = load_data(cfg.data, cfg.model, context_length(cfg.model))
    check_context(corpus, cfg.model.seq_len)
    model_cfg = cfg.model
    if cfg.model.kind == "gpt" and corpus.vocab_size > cfg.model.vocab_size:
        # the built-in model's vocabulary is the tokenizer's (model.vocab_size: a floor)
        model_cfg = OmegaConf.merge(cfg.model, {"vocab_size": corpus.vocab_size})
    state, source, base_sha = None, None, None
    if cfg.model.kind == "gpt" and cfg.model.init == "pretrained":
        state, source, base_sha = load_pretrained(cfg)  # leaves torch's RNG as it was
    torch.manual_seed(cfg.seed)
    model = build_model(model_cfg, state)
    if cfg.model.kind == "hf":
        check_vocab(model, corpus.vocab_size, corpus.meta["tokenizer"]["kind"])
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
            "device": str(device), **corpus.meta}  # + tokenizer, loss_tokens (issue 27)
    if converted is not None:
        meta["converted_from"] = {k: converted[k] for k in ("gguf", "sha256", "versions")}
    if base_sha is not None:  # the pretrained base this run starts from (checked before use)
        meta["base_sha256"] = base_sha
    if getattr(optimizer, "evaluates_at", None):  # e.g. averaged (Schedule-Free, bench.train)
        meta["evaluates_at"] = optimizer.evaluates_at
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
def output_folder(cfg) -> Path:
    """`<out_dir>/<sweep>`, out_dir resolved once and created if absent; ConfigError when it
    cannot be a writable folder (a file, a read-only place, a path too long)."""
    out = Path(str(cfg.out_dir)).expanduser()
    try:
        out = out.resolve()
        if out.exists() and not out.is_dir():
            raise ConfigError(f"out_dir={cfg.out_dir!r} is a file; allowed values: a folder "
                              "(created if absent)")
        out.mkdir(parents=True, exist_ok=True)
        if not os.access(out, os.W_OK | os.X_OK):
            raise PermissionError(f"no write permission on {out}")
    except OSError as e:
        raise ConfigError(f"out_dir={cfg.out_dir!r} cannot be used ({type(e).__name__}: "
                          f"{e.strerror or e}); allowed values: a folder you can write") from None
    return out / str(cfg.sweep)


def _remove_stale_temp_files(run_dir: Path) -> None:
    """Temp files of an atomic write that a kill interrupted (`.<name>.<random>.tmp`): never
    read, so removed at the next start of the run."""
    for stale in run_dir.glob(".*.tmp"):
        stale.unlink(missing_ok=True)


def run(cfg: DictConfig) -> dict | None:
    """One run of any task: returns its summary (or None when another process is running it).

    validate -> run id -> skip a completed record -> prepare (nothing written yet) -> lock the
    run folder -> config.yaml with meta -> execute -> mirrors finished -> summary.json. A fault
    in this run's own files (a torn or crafted checkpoint) or in its execution is recorded as
    `failed` with its reason and the sweep goes on."""
    validate(cfg)
    _setup_threads(cfg)
    torch.manual_seed(cfg.seed)
    task = TASKS[cfg.task]
    rid = run_id(cfg)
    record = find_record(cfg, rid, output_folder(cfg))
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
        _remove_stale_temp_files(record.dir)
        return _run_locked(cfg, task, rid, record, prepared)
    finally:
        lock.release()


def _run_locked(cfg, task: Task, rid: str, record: RunRecord, prepared: Prepared) -> dict:
    resolved = OmegaConf.to_container(cfg, resolve=True)
    resolved["meta"] = {
        "run_id": rid,
        "method": method_name(cfg),
        "config_id": config_id(cfg),
        "record_format": RECORD_FORMAT,
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
        load_checkpoint(record.checkpoint_path)  # this run's own file: a fault fails this run
        summary = task.execute(cfg, record, prepared.parts, logger)
    except CheckpointError as e:  # torn, crafted or another version's: one line, no traceback
        summary = {"status": "failed", "error": str(e)}
    except Exception as e:  # noqa: BLE001 - a failed run is recorded and the sweep goes on
        traceback.print_exc()
        summary = {"status": "failed", "error": f"{type(e).__name__}: {e}"}
    summary = {**prepared.summary, **summary}
    # The mirrors first, the summary last: a kill between them leaves the run unfinished, and
    # its relaunch (from the last checkpoint, nothing to retrain) repairs the W&B copy.
    record.close()
    logger.finish(summary)
    # Only this run writes its record: a from_baseline target is resolved by analysis, from the
    # records of the whole sweep (analysis/targets.py).
    record.write_summary(summary)
    print(f"[bench] {rid}: {summary['status']}" + task.describe(summary)
          + (f" ({summary['error']})" if summary["status"] == "failed" else ""))
    _note_launch(rid, summary["status"])
    return summary


# The launch log: each run of one `python -m bench.run` launch appends its outcome here (its
# workers are other processes), and the launch's last line and exit status count them.
LAUNCH_LOG = "BENCH_LAUNCH_LOG"


def _note_launch(rid: str, status: str, error: str | None = None) -> None:
    path = os.environ.get(LAUNCH_LOG)
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"run": rid, "status": status, "error": error}) + "\n")


def launch_outcome(path: Path) -> tuple[str, int]:
    """(the launch's last line, its exit status) from its launch log: 0 when every run ended
    completed or diverged (a diverged run is a result), 1 when some run failed or some cell of
    the sweep was invalid (skipped), 2 when no cell was valid."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if not rows:
        return "", 0
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    invalid = counts.pop("invalid", 0)
    ran = sum(counts.values())
    parts = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
    line = f"[bench] {ran} run{'s' * (ran != 1)}" + (f": {parts}" if parts else "")
    if invalid:
        line += f"; {invalid} invalid cell{'s' * (invalid != 1)} skipped"
    code = 2 if invalid and not ran else 1 if invalid or counts.get("failed") else 0
    return line, code


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    """One run; in a multirun, one cell of the sweep: an invalid cell is one line and the
    sweep goes on (a single run exits 2)."""
    try:
        run(cfg)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        if not _in_multirun():
            sys.exit(2)
        _note_launch(_cell_name(), "invalid", str(e))


def _in_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig

    try:
        return HydraConfig.get().mode.name == "MULTIRUN"
    except ValueError:
        return False


def _cell_name() -> str:
    return " ".join(cli_overrides()) or "(defaults)"


DEFAULT_SWEEP = "+experiment=default"  # conf/experiment/default.yaml


def with_default_sweep(argv: list[str]) -> list[str]:
    """The command line Hydra gets: a multirun (`-m`) whose overrides sweep nothing and name no
    experiment runs the default sweep (DEFAULT_SWEEP appended); any other runs exactly the cross
    product its own overrides (and its experiment's sweep) name, nothing of the default's."""
    if not {"-m", "--multirun"} & set(argv):
        return argv
    from hydra.core.override_parser.overrides_parser import OverridesParser

    overrides = [a for a in argv if not a.startswith("-")]
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception:  # noqa: BLE001 - Hydra itself reports a malformed override
        return argv
    if any(o.is_sweep_override() or o.key_or_group in ("experiment", "hydra.sweeper.params")
           for o in parsed):
        return argv
    return [*argv, DEFAULT_SWEEP]


register_configs()
warnings.filterwarnings("ignore", message=".*is not a valid Python identifier.*")

if __name__ == "__main__":
    try:
        check_override_keys([a for a in sys.argv[1:] if not a.startswith("-")])
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    sys.argv = [sys.argv[0], *with_default_sweep(sys.argv[1:])]
    with tempfile.TemporaryDirectory() as scratch:
        log = Path(scratch) / "launch.jsonl"
        log.touch()
        os.environ[LAUNCH_LOG] = str(log)
        main()
        last, status = launch_outcome(log)
    if last:
        print(last, flush=True)
    sys.exit(status)
