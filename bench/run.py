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

import dataclasses
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

from bench import distributed
from bench.adapters import ADAPTERS, build_adapter, count_trainable
from bench.config import ConfigError, check_override_keys, register_configs, validate
from bench.data.corpus import check_context, eval_batches
from bench.data.tokenized import load_data
from bench.metrics.cost import free_cpus
from bench.metrics.monitor import HessianMonitor
from bench.models import build_model
from bench.models.convert_gguf import ensure_converted
from bench.models.hf import check_vocab, context_length
from bench.optim import OPTIMIZERS, build_optimizer
from bench.pretrain import load_pretrained
from bench.record import RECORD_FORMAT, RunRecord, dotted
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
from bench.tracking.wandb import WandbLogger, dashboard_config
from bench.train import Trainer


def _setup_threads(cfg) -> None:
    """torch's intra-op threads (the training step and the Hessian estimate alike):
    trainer.threads when set, else the machine's free cores (`free_cpus`) divided among the
    launch's parallel workers (joblib's n_jobs; torchrun: the machine's ranks), or a SLURM
    task's cpus_per_task. The count is recorded (meta.host.threads): a run reproduces bitwise
    with the same count."""
    threads = cfg.trainer.threads
    if not threads:
        workers, cpus = distributed.local_world_size(), None
        try:
            from hydra.core.hydra_config import HydraConfig

            hc = HydraConfig.get()
            if hc.mode.name == "MULTIRUN":
                workers *= int(hc.launcher.get("n_jobs", 1) or 1)
                cpus = hc.launcher.get("cpus_per_task")
        except (ValueError, AttributeError):
            pass
        threads = cpus or max(1, free_cpus() // workers)
    torch.set_num_threads(threads)


def cli_overrides() -> list[str]:
    """The command-line (or sweep) overrides of this run, as Hydra passed them."""
    try:
        from hydra.core.hydra_config import HydraConfig

        return list(HydraConfig.get().overrides.task)
    except (ValueError, AttributeError):
        return []


def _launched_in_process() -> bool:
    """Whether this run executes in the process Hydra started: a single run, or a multirun cell
    of the basic launcher (hydra/launcher=serial), not a joblib or submitit worker."""
    try:
        from hydra.core.hydra_config import HydraConfig

        hc = HydraConfig.get()
        return hc.mode.name != "MULTIRUN" or hc.launcher._target_.endswith(".BasicLauncher")
    except (ValueError, AttributeError):
        return True


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


@dataclass
class Inputs:
    """What a run computes from besides its config, found before anything is written: the
    `content` hashes (its data's, its pretrained base's) are part of its identity (the run id),
    so changed data is a new run; `parts`: what was loaded, for `prepare`."""

    content: dict = field(default_factory=dict)
    parts: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Task:
    """One kind of run (`task=`): its inputs (`identify`), how it is prepared (raises
    ConfigError, writes nothing), how it executes into its created record (returns the
    summary), and its final line's detail."""

    identify: Callable[[DictConfig], Inputs]
    prepare: Callable[[DictConfig, Inputs], Prepared]
    execute: Callable[[DictConfig, RunRecord, dict, WandbLogger], dict]
    describe: Callable[[dict], str]


def identify(cfg) -> Inputs:
    """The language-model task's inputs: the data (tokenized once, cached), and the pretrained
    base (pretrained once, cached, checked against its record) or a converted GGUF model."""
    converted = ensure_converted(cfg.model)
    corpus = load_data(cfg.data, cfg.model, context_length(cfg.model))
    check_context(corpus, cfg.model.seq_len)
    base = None
    if cfg.model.kind == "gpt" and cfg.model.init == "pretrained":
        base = load_pretrained(cfg)  # (state, source corpus, sha256); torch's RNG left alone
    content = {"data": corpus.content_hash, "base": base[2] if base else
               (converted["sha256"] if converted else None)}
    return Inputs(content, {"corpus": corpus, "base": base, "converted": converted})


def prepare(cfg, inputs: Inputs | None = None) -> Prepared:
    """The language-model task: build and check everything a validated config needs from its
    inputs (`identify`'s, found first when not given); raises ConfigError. Writes no run
    record."""
    inputs = inputs if inputs is not None else identify(cfg)
    device = distributed.current().device(resolve_device(cfg.trainer.device))
    corpus, converted = inputs.parts["corpus"], inputs.parts["converted"]
    model_cfg = cfg.model
    if cfg.model.kind == "gpt" and corpus.vocab_size > cfg.model.vocab_size:
        # the built-in model's vocabulary is the tokenizer's (model.vocab_size: a floor)
        model_cfg = OmegaConf.merge(cfg.model, {"vocab_size": corpus.vocab_size})
    state, source, base_sha = inputs.parts["base"] or (None, None, None)
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
            "device": str(device), "world_size": distributed.current().world_size,
            **corpus.meta}  # + tokenizer, loss_tokens (issue 27)
    if converted is not None:
        meta["converted_from"] = {k: converted[k] for k in ("gguf", "sha256", "versions")}
    if base_sha is not None:  # the pretrained base this run starts from (checked before use)
        meta["base_sha256"] = base_sha
    if getattr(optimizer, "evaluates_at", None):  # e.g. averaged (Schedule-Free, bench.train)
        meta["evaluates_at"] = optimizer.evaluates_at
    if hasattr(optimizer, "ns_dtype"):  # Muon's Newton-Schulz dtype (bench/optim/muon.py)
        meta["ns_dtype"] = str(optimizer.ns_dtype)
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
        dist=distributed.current(),
    ).run()


def _eval_line(summary: dict) -> str:
    loss = summary.get("final_eval_loss")
    return f", eval loss {loss:.4f}" if loss else ""


def _toy_line(summary: dict) -> str:
    final = summary.get("final_excess_median")
    return f", median excess loss {final:.3g}" if final is not None else ""


def _identify_toy(cfg) -> Inputs:
    check_toy(cfg)
    return Inputs()  # its problems are drawn from its seed: no input but the config


def _prepare_toy(cfg, inputs: Inputs) -> Prepared:
    return Prepared(meta={"device": "cpu"}, summary={"steps": cfg.toy.steps})


TASKS: dict[str, Task] = {
    "lm": Task(identify, prepare, train, _eval_line),
    "toy": Task(_identify_toy, _prepare_toy,
                lambda cfg, record, parts, logger: run_toy(cfg, record), _toy_line),
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


def supersede(run_dir: Path, rid: str) -> Path:
    """force=true: a completed record moves to <sweep>/.superseded/<its name>-<n> (nothing
    written is lost; no reader visits it) and the run starts over in <sweep>/<rid>."""
    aside = run_dir.parent / ".superseded"
    aside.mkdir(exist_ok=True)
    n = 1
    while (aside / f"{run_dir.name}-{n}").exists():
        n += 1
    run_dir.rename(aside / f"{run_dir.name}-{n}")
    print(f"[bench] {run_dir.name}: force=true, the completed record moved to "
          f"{aside / f'{run_dir.name}-{n}'}; running it again")
    return run_dir.parent / rid


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
    `failed` with its reason and the sweep goes on.

    Under torchrun (bench/distributed.py) every rank runs this skeleton; rank 0 alone reads the
    folder's state for all of them (`decide`), holds its lock and writes the record."""
    validate(cfg)
    if distributed.requested() and not _launched_in_process():
        raise ConfigError("under torchrun the ranks run a sweep's cells in their own processes; "
                          "allowed: a single run or hydra/launcher=serial")
    group = distributed.init()
    group.check(cfg)
    _setup_threads(cfg)
    torch.manual_seed(cfg.seed)
    task = TASKS[cfg.task]
    inputs = task.identify(cfg)
    rid = run_id(cfg, inputs.content)
    record = find_record(cfg, rid, output_folder(cfg), inputs.content)
    if cfg.force and group.decide(record.is_complete):
        record = RunRecord(group.decide(lambda: supersede(record.dir, rid)))
    if group.decide(record.is_complete):
        print(f"[bench] {record.dir.name}: already {record.read_summary()['status']}, skipped "
              "(force=true reruns it)")
        return record.read_summary()
    prepared = task.prepare(cfg, inputs)
    # One process per run: a second launch of the same run (two sweeps, a resubmitted array task)
    # leaves it to the first instead of writing the same files.
    record.dir.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(record.dir / ".lock"))
    claim = group.decide(lambda: _claim(lock, record))
    if claim == "busy":
        print(f"[bench] {rid}: running in another process, skipped")
        return None
    if claim == "done":  # the other process finished it between our check and the lock
        print(f"[bench] {rid}: already {record.read_summary()['status']}, skipped")
        return record.read_summary()
    try:
        if group.is_main:
            _remove_stale_temp_files(record.dir)
        return _run_locked(cfg, task, rid, group.writer(record), prepared)
    finally:
        if group.is_main:
            lock.release()


def _claim(lock: FileLock, record: RunRecord) -> str:
    """"run" with the run folder's lock held; "busy" when another process holds it; "done"
    (the lock released) when the run ended before this process got the lock."""
    try:
        lock.acquire(timeout=0)
    except Timeout:
        return "busy"
    if record.is_complete():
        lock.release()
        return "done"
    return "run"


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
    group = distributed.current()
    swept = swept_keys()
    knobs = {"adapter": ADAPTERS[cfg.adapter.name].knobs,
             "optimizer": OPTIMIZERS[cfg.optimizer.name].knobs}
    owned = {name: {f.name for f in dataclasses.fields(k)} for name, k in knobs.items()}
    logger = WandbLogger(
        mode=cfg.logger.mode if group.is_main else "disabled",  # one W&B run: rank 0's
        project=cfg.logger.project,
        entity=cfg.logger.entity,
        run_dir=record.dir,
        name=run_name(cfg, resolved, swept),
        group=cfg.sweep,
        tags=[cfg.adapter.name, cfg.optimizer.name],
        config=dashboard_config(resolved, owned, swept),
        run_id=rid,
        job_type=cfg.study.stage or ("sweep" if _in_multirun() else "run"),
    )
    crash = None
    try:
        load_checkpoint(record.checkpoint_path)  # this run's own file: a fault fails this run
        summary = task.execute(cfg, record, prepared.parts, logger)
    except CheckpointError as e:  # torn, crafted or another version's: one line, no traceback
        summary = {"status": "failed", "error": str(e)}
    except Exception as e:  # noqa: BLE001 - a failed run is recorded and the sweep goes on
        traceback.print_exc()
        summary = {"status": "failed", "error": f"{type(e).__name__}: {e}"}
        crash = e
    summary = {**prepared.summary, **summary}
    # The mirrors first, the summary last: a kill between them leaves the run unfinished, and
    # its relaunch (from the last checkpoint, nothing to retrain) repairs the W&B copy.
    record.close()
    logger.finish(summary)
    # Only this run writes its record: a from_baseline target is resolved by analysis, from the
    # records of the whole sweep (analysis/targets.py).
    record.write_summary(summary)
    if crash is not None and group.world_size > 1:
        # one rank's fault leaves the others waiting in a collective: this process exits with
        # an error, and torchrun stops every rank
        raise crash
    if group.is_main:
        print(f"[bench] {rid}: {summary['status']}" + task.describe(summary)
              + (f" ({summary['error']})" if summary["status"] == "failed" else ""))
        _note_launch(rid, summary["status"])
    return summary


# The keys a launch's command line sweeps (set by __main__ for its workers, which are other
# processes); an experiment's own sweep is in each job's Hydra config.
SWEPT = "BENCH_SWEPT_KEYS"
# Keys whose swept value the method name already says (bench.record.method_name)
IN_METHOD = ("adapter", "optimizer", "adapter.name", "optimizer.name", "adapter.init",
             "adapter.rslora", "adapter.geometry", "optimizer.base", "model.attention.geometry",
             "model.attention.block", "model.attention.retraction", "seed")


def swept_keys() -> list[str]:
    """The config keys this run's launch swept (its command line's and its experiment's)."""
    keys = [k for k in os.environ.get(SWEPT, "").split(",") if k]
    try:
        from hydra.core.hydra_config import HydraConfig

        keys += [str(k) for k in (HydraConfig.get().sweeper.get("params") or {})]
    except ValueError:
        pass
    return sorted(set(keys))


def run_name(cfg, resolved: dict, swept: list[str]) -> str:
    """What a dashboard calls the run: its method, the values of the swept keys the method
    does not say ("lora/adamw r=16 lr=0.001 s0"), its seed."""
    shown = [k for k in swept if k not in IN_METHOD and dotted(resolved, k) is not None]
    short = {k: k.rsplit(".", 1)[-1] for k in shown}
    if len(set(short.values())) < len(shown):  # two keys end alike: say them whole
        short = {k: k for k in shown}
    values = " ".join(f"{short[k]}={_fmt(dotted(resolved, k))}" for k in shown)
    return " ".join(filter(None, [method_name(cfg), values, f"s{cfg.seed}"]))


def _fmt(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


# The launch log: each run of one `python -m bench.run` launch appends its outcome here (its
# workers are other processes, a SLURM array's on other machines), and the launch's last line
# and exit status count them. It lives under the launch's working folder (`launch_scratch`),
# which a cluster's nodes share with the submitting machine, unlike its /tmp.
LAUNCH_LOG = "BENCH_LAUNCH_LOG"


def _note_launch(rid: str, status: str, error: str | None = None) -> None:
    path = os.environ.get(LAUNCH_LOG)
    if not path:
        return
    try:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"run": rid, "status": status, "error": error}) + "\n")
    except OSError as e:  # a node that does not see the launch's folder: the record holds all
        print(f"[bench] warning: launch log {path} not writable here ({e.strerror}); "
              "the launch's count leaves this run out", file=sys.stderr)


def launch_scratch() -> tempfile.TemporaryDirectory:
    """The folder of this launch's log: under .cache/launch/ in the working folder (shared with a
    cluster's nodes; .cache is the project's ignored cache) when it can be made, else in the
    system's temp folder."""
    try:
        folder = Path(".cache", "launch").resolve()
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        folder = None
    return tempfile.TemporaryDirectory(dir=folder)


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


def command_line_sweeps(argv: list[str]) -> list[str]:
    """The keys a command line sweeps (`adapter.r=4,16` -> adapter.r)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        parsed = OverridesParser.create().parse_overrides([a for a in argv
                                                           if not a.startswith("-")])
    except Exception:  # noqa: BLE001 - Hydra itself reports a malformed override
        return []
    return [o.key_or_group for o in parsed if o.is_sweep_override()]


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
    os.environ[SWEPT] = ",".join(command_line_sweeps(sys.argv[1:]))
    with launch_scratch() as scratch:
        log = Path(scratch) / "launch.jsonl"
        log.touch()
        os.environ[LAUNCH_LOG] = str(log)
        main()
        last, status = launch_outcome(log)
    if last:
        print(last, flush=True)
    sys.exit(status)
