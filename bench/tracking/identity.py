"""Who a run is: its method name, config digest, run id, record lookup and provenance.

One place for everything that names a run, used by the run skeleton (bench/run.py) for the
language-model task and the toy alike:

    method_name(cfg)   "lora/adamw", "full/riemannian_normalized/fixed_rank_embedded+block",
                       "balora:sign/adam" (toy: adapter[:alignment]/update rule)
    config_digest(cfg) 8 hex digits of the semantic keys that differ from the schema defaults
    config_id(cfg)     the digest with the seed left out: the configuration seeds are grouped by
    run_id(cfg)        "<method slug>-s<seed>-<digest>", the run's folder name
    find_record(cfg)   the run's record: its own folder, or an older one computing the same thing
    provenance()       versions and git commit, for the record's `meta`
    host()             the processor and kernel path a run executed on (`meta.host`)
"""

from __future__ import annotations

import hashlib
import json
import platform
import subprocess
from pathlib import Path

import torch
from omegaconf import OmegaConf

from bench import __version__
from bench.config import ABSENT_IS_NOT_DEFAULT, NON_SEMANTIC, schema_defaults
from bench.optim import OPTIMIZERS
from bench.tracking.record import RunRecord


def method_name(cfg) -> str:
    """The method a run belongs to. LM: adapter[+init][+rslora]/optimizer[+variant]
    [/geometry[+block][+retraction]][/lora:<geometry>] (init, rslora only off their defaults;
    variant: the optimizer's method_suffix, e.g. +sgd); toy: adapter[:alignment]/<toy.method>
    (alignment when not procrustes)."""
    if cfg.task == "toy":
        adapter = cfg.adapter.name
        if adapter == "balora" and cfg.adapter.alignment != "procrustes":
            adapter += ":" + cfg.adapter.alignment
        return f"{adapter}/{cfg.toy.method}"
    adapter = cfg.adapter.name  # + LoRA options off their defaults: lora+pissa, lora+rslora
    if cfg.adapter.get("init", "default") != "default":
        adapter += "+" + cfg.adapter.init
    if cfg.adapter.get("rslora", False):
        adapter += "+rslora"
    spec = OPTIMIZERS.get(cfg.optimizer.name)
    suffix = spec.method_suffix(cfg.optimizer) if spec and spec.method_suffix else ""
    parts = [adapter, cfg.optimizer.name + suffix]  # e.g. lora_preconditioned+sgd
    attention = cfg.model.attention
    if attention.geometry != "euclidean":
        parts.append(attention.geometry + ("+block" if attention.block else "")
                     + ("+" + attention.retraction if attention.retraction != "svd" else ""))
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


def _digest(cfg, leave_out: tuple[str, ...]) -> str:
    container = OmegaConf.to_container(cfg, resolve=True)
    defaults = _leaves(schema_defaults())
    semantic = {
        key: value
        for key, value in _leaves(container).items()
        if not any(key == k or key.startswith(k + ".") for k in (*NON_SEMANTIC, *leave_out))
        and (key not in defaults or defaults[key] != value)
    }
    return hashlib.sha256(json.dumps(semantic, sort_keys=True).encode()).hexdigest()[:8]


def config_digest(cfg) -> str:
    """8 hex digits of the sha256 of the semantic keys whose values differ from the schema's
    defaults (bench.config.schema_defaults). Adding a key with a default to the schema, or
    writing a default value out in a YAML file, leaves every existing run id unchanged."""
    return _digest(cfg, ())


def config_id(cfg) -> str:
    """`config_digest` without the seed: every seed of one configuration shares it (for seed 0,
    the schema default, it equals the run id's digest)."""
    return _digest(cfg, ("seed",))


def run_id(cfg) -> str:
    """Readable and stable: method, seed and `config_digest` of the config."""
    name = method_name(cfg).replace("/", "-").replace(":", "_").replace("+", "_")
    return f"{name}-s{cfg.seed}-{config_digest(cfg)}"


_ABSENT = object()


def find_record(cfg, rid: str | None = None) -> RunRecord:
    """The record of this run: its own folder `<out_dir>/<sweep>/<rid>`, unless that does not
    exist and a completed record of the same method, seed and semantic config sits in the
    sweep folder under another id (one written before the id scheme last changed): a run is
    identified by what it computes, not by its folder's name. An own folder that exists is
    always used, so an interrupted run resumes there. A record lacking a key of
    `ABSENT_IS_NOT_DEFAULT` while its switch is on was computed differently: never taken."""
    rid = rid or run_id(cfg)
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


def git_commit() -> str | None:
    """The commit of the checkout this package runs from, or None outside git."""
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


def _cpuinfo() -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo ({} where there is none)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    fields: dict[str, str] = {}
    for line in text.split("\n\n", 1)[0].splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip(), value.strip())
    return fields


def host() -> dict:
    """Where a run executed (`meta.host`). The same code, seeds and batches give bitwise equal
    records on one processor but drift in the 8th digit on another (a different matmul kernel
    path), and training amplifies that: the record says which processor it came from, so a
    study can tell re-execution spread from seed spread. A virtual machine often hides the model
    name ("AMD EPYC"); vendor, family, model and stepping still tell generations apart."""
    info = _cpuinfo()
    cpu = " ".join(
        f"{label} {info[key]}"
        for key, label in (("cpu family", "family"), ("model", "model"), ("stepping", "stepping"))
        if key in info
    )
    return {
        "cpu": " ".join(filter(None, (info.get("vendor_id"), cpu))) or platform.processor() or None,
        "cpu_name": info.get("model name") or platform.processor() or None,
        "machine": platform.machine(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),  # the ATen kernel path
        "threads": torch.get_num_threads(),
    }


def provenance() -> dict:
    """The versions a record states (`meta.versions`)."""
    return {
        "bench": __version__,
        "torch": str(torch.__version__),
        "python": platform.python_version(),
        "git_commit": git_commit(),
    }
