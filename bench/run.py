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

import hashlib
import json
import os
import platform
import subprocess
import sys
import traceback
import warnings
from pathlib import Path

import hydra
import torch
from filelock import FileLock, Timeout
from omegaconf import DictConfig, OmegaConf

from bench import __version__
from bench.config import (
    ABSENT_IS_NOT_DEFAULT,
    NON_SEMANTIC,
    ConfigError,
    check_override_keys,
    register_configs,
    schema_defaults,
    validate,
)
from bench.tracking.record import CheckpointError, RunRecord


def method_name(cfg) -> str:
    """The method a run belongs to: adapter/optimizer[/geometry[+block][+retraction]]."""
    parts = [cfg.adapter.name, cfg.optimizer.name]
    geometry = cfg.model.attention.geometry
    if geometry != "euclidean":
        parts.append(geometry + ("+block" if cfg.model.attention.block else "")
                     + ("+" + cfg.model.attention.retraction
                        if cfg.model.attention.retraction != "svd" else ""))
    if cfg.adapter.geometry != "euclidean":
        parts.append("lora:" + cfg.adapter.geometry)
    return "/".join(parts)


def _leaves(tree: dict, prefix: str = "") -> dict:
    """{"a.b.c": value} for every leaf of a nested dict (lists are leaves)."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_leaves(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def config_digest(cfg) -> str:
    """8 hex digits of the sha256 of the semantic keys whose values differ from the schema's
    defaults (bench.config.schema_defaults). Adding a key with a default to the schema, or
    writing a default value out in a YAML file, leaves every existing run id unchanged."""
    container = OmegaConf.to_container(cfg, resolve=True)
    defaults = _leaves(schema_defaults())
    semantic = {
        key: value
        for key, value in _leaves(container).items()
        if not any(key == k or key.startswith(k + ".") for k in NON_SEMANTIC)
        and (key not in defaults or defaults[key] != value)
    }
    return hashlib.sha256(json.dumps(semantic, sort_keys=True).encode()).hexdigest()[:8]


def run_id(cfg) -> str:
    """Readable and stable: method, seed and `config_digest` of the config."""
    name = method_name(cfg).replace("/", "-").replace(":", "_").replace("+", "_")
    return f"{name}-s{cfg.seed}-{config_digest(cfg)}"


_ABSENT = object()


def find_record(cfg, rid: str) -> RunRecord:
    """The record of this run: its own folder `<out_dir>/<sweep>/<rid>`, unless that does not
    exist and a completed record of the same method, seed and semantic config sits in the
    sweep folder under another id (one written before the id scheme last changed): a run is
    identified by what it computes, not by its folder's name. An own folder that exists is
    always used, so an interrupted run resumes there. A record lacking a key of
    `ABSENT_IS_NOT_DEFAULT` while its switch is on was computed differently: never taken."""
    sweep_dir = Path(cfg.out_dir) / cfg.sweep
    record = RunRecord(sweep_dir / rid)
    if record.dir.exists() or not sweep_dir.is_dir():
        return record
    digest = config_digest(cfg)
    for other in sorted(sweep_dir.glob(rid.rsplit("-", 1)[0] + "-*")):
        stored = RunRecord(other)
        if other.name == rid or not stored.is_complete():
            continue
        try:
            config = OmegaConf.load(other / "config.yaml")
        except (OSError, ValueError):
            continue
        config.pop("meta", None)
        if any(OmegaConf.select(config, key, default=_ABSENT) is _ABSENT
               and OmegaConf.select(config, switch, default=None)
               for key, switch in ABSENT_IS_NOT_DEFAULT.items()):
            continue
        if config_digest(config) == digest:
            return stored
    return record


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).resolve().parent,
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


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
        threads = cpus or max(1, (os.cpu_count() or 1) // workers)
    torch.set_num_threads(threads)


def task_overrides() -> list[str]:
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


def prepare(cfg) -> dict:
    """Build and check everything a validated config needs; raises ConfigError. Writes nothing."""
    from bench.adapters import build_adapter, count_trainable
    from bench.data.corpus import check_context, load_corpus
    from bench.models import build_model
    from bench.optim import build_optimizer

    device = resolve_device(cfg.trainer.device)
    d = cfg.data
    corpus = load_corpus(d.name, d.domain, list(d.paths), d.eval_fraction, d.max_bytes)
    check_context(corpus, cfg.model.seq_len)
    model, source = build_model(cfg)
    adapter = build_adapter(cfg.adapter)
    model = adapter.apply(model).to(device)
    optimizer = build_optimizer(model, cfg.optimizer)
    eval_sets = {"": corpus.eval}
    if source is not None:  # fine-tuning: also watch the pretraining domain
        eval_sets["source"] = source.eval
    hooks = []
    h = cfg.metrics.hessian
    if h.every:  # Hessian spectra on one fixed eval batch (bench/metrics/monitor.py)
        from bench.data.corpus import eval_batches
        from bench.metrics.monitor import HessianMonitor

        size = h.batch_size or max(1, cfg.trainer.batch_size // 2)
        x, y = eval_batches(corpus.eval, size, cfg.model.seq_len, 1)[0]
        batch = (x.to(device), y.to(device))
        hooks.append(HessianMonitor(h.every, h.iters, list(h.layers), adapter, batch,
                                    seed=cfg.seed, model=model))
    return {
        "device": device,
        "corpus": corpus,
        "model": model,
        "adapter": adapter,
        "optimizer": optimizer,
        "eval_sets": eval_sets,
        "trainable": count_trainable(model),
        "hooks": hooks,
    }


def run(cfg: DictConfig) -> dict | None:
    """One run: returns its summary (or None when another process is running it)."""
    validate(cfg)
    _setup_threads(cfg)
    torch.manual_seed(cfg.seed)
    if cfg.task == "toy":
        from bench.toy import run_toy

        return run_toy(cfg)
    rid = run_id(cfg)
    record = find_record(cfg, rid)
    if record.is_complete():
        print(f"[bench] {record.dir.name}: already {record.read_summary()['status']}, skipped")
        return record.read_summary()
    parts = prepare(cfg)
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
        record.load_checkpoint()  # one that cannot be resumed stops here, before any write
        return _run_locked(cfg, rid, record, parts)
    finally:
        lock.release()


def _run_locked(cfg, rid: str, record: RunRecord, parts: dict) -> dict:
    from bench.tracking.wandb import WandbLogger

    resolved = OmegaConf.to_container(cfg, resolve=True)
    resolved["meta"] = {
        "run_id": rid,
        "method": method_name(cfg),
        "data_hash": parts["corpus"].content_hash,
        "trainable_params": parts["trainable"],
        "overrides": task_overrides(),
        "device": str(parts["device"]),
        "versions": {
            "bench": __version__,
            "torch": str(torch.__version__),
            "python": platform.python_version(),
            "git_commit": _git_commit(),
        },
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
    from bench.train import Trainer

    trainer_cfg = OmegaConf.create(OmegaConf.to_container(cfg.trainer))
    trainer_cfg.eval_batches = cfg.data.eval_batches
    trainer_cfg.target_loss = cfg.metrics.target_loss
    try:
        trainer = Trainer(
            parts["model"],
            parts["optimizer"],
            parts["adapter"],
            parts["corpus"].train,
            parts["eval_sets"],
            trainer_cfg,
            record,
            cfg.seed,
            parts["device"],
            logger,
            hooks=parts["hooks"],
        )
        summary = trainer.run()
    except CheckpointError:  # another version's checkpoint: stop, leave the record as it is
        raise
    except Exception as e:  # noqa: BLE001 - a failed run is recorded and the sweep goes on
        traceback.print_exc()
        summary = {"status": "failed", "error": f"{type(e).__name__}: {e}"}
    summary["trainable_params"] = parts["trainable"]
    record.write_summary(summary)
    record.close()
    if cfg.metrics.target_loss == "from_baseline":
        summary = _fill_from_baseline(cfg, record) or summary
    logger.finish(summary)
    loss = summary.get("final_eval_loss")
    print(f"[bench] {rid}: {summary['status']}" + (f", eval loss {loss:.4f}" if loss else ""))
    return summary


def _fill_from_baseline(cfg, record: RunRecord) -> dict | None:
    """Time to the baseline's final loss for every finished run of the sweep (the last run to
    finish fills them all; bench/metrics/targets.py). None while the baseline has not finished."""
    from bench.metrics.targets import fill_targets

    try:
        target = fill_targets(record.dir.parent, cfg.metrics.baseline)
    except ConfigError as e:  # the baseline's runs have not (all) finished yet
        print(f"[bench] note: {e}; time to target is filled when it finishes")
        return None
    print(f"[bench] time to the baseline's loss {target:.4f} filled in for sweep {cfg.sweep}")
    return record.read_summary()


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
