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

import platform
import subprocess
import sys
from pathlib import Path

import torch
from omegaconf import OmegaConf

from bench import __version__
from bench.config import schema_defaults
from bench.optim import OPTIMIZERS
from bench.record import RECORD_FORMAT, RunRecord, read_record
from bench.record import config_digest as digest_of
from bench.record import method_name as record_method_name


def method_name(cfg) -> str:
    """The method a run belongs to (bench.record.method_name), with its optimizer's suffix (an
    option that changes what the optimizer computes, e.g. lora_preconditioned+sgd)."""
    spec = OPTIMIZERS.get(cfg.optimizer.name) if cfg.get("task", "lm") == "lm" else None
    suffix = spec.method_suffix(cfg.optimizer) if spec and spec.method_suffix else ""
    return record_method_name(cfg, suffix)


def _plain(cfg) -> dict:
    return cfg if isinstance(cfg, dict) else OmegaConf.to_container(cfg, resolve=True)


def config_digest(cfg) -> str:
    """8 hex digits of the semantic keys whose values differ from the schema's defaults
    (bench.record.config_digest, bench.config.schema_defaults)."""
    return digest_of(_plain(cfg), schema_defaults())


def config_id(cfg) -> str:
    """`config_digest` without the seed: every seed of one configuration shares it (for seed 0,
    the schema default, it equals the run id's digest)."""
    return digest_of(_plain(cfg), schema_defaults(), leave_out=("seed",))


def run_id(cfg, content: dict | None = None) -> str:
    """Readable and stable: method, seed and a digest of the config and of the content hashes
    of the run's inputs (`content`: {"data": ..., "base": ...}, bench.run.identify): changed
    data or another pretrained base is another run."""
    name = method_name(cfg).replace("/", "-").replace(":", "_").replace("+", "_")
    known = {k: v for k, v in (content or {}).items() if v is not None}
    digest = (digest_of({**_plain(cfg), "inputs": known}, schema_defaults()) if known
              else config_digest(cfg))
    return f"{name}-s{cfg.seed}-{digest}"


def find_record(cfg, rid: str | None = None, sweep_dir: Path | None = None,
                content: dict | None = None) -> RunRecord:
    """The record of this run: its own folder `<out_dir>/<sweep>/<rid>`, unless that does not
    exist and a completed record of the same method, seed and semantic config sits in the
    sweep folder under another id (one written before the id scheme last changed): a run is
    identified by what it computes, not by its folder's name. An own folder that exists is
    always used, so an interrupted run resumes there. A sibling record that cannot be read is
    skipped with a warning: it is that run's fault, not this one's. `sweep_dir`: the sweep's
    folder when the caller resolved it (bench.run.output_folder). `content`: the inputs' hashes
    (bench.run.identify); a sibling record of other data (meta.data_hash) or another base
    (meta.base_sha256, where it states one) is never taken."""
    rid = rid or run_id(cfg)
    sweep_dir = sweep_dir if sweep_dir is not None else Path(cfg.out_dir) / cfg.sweep
    record = RunRecord(sweep_dir / rid)
    if record.dir.exists() or not sweep_dir.is_dir():
        return record
    digest = config_digest(cfg)
    for other in sorted(sweep_dir.glob(rid.rsplit("-", 1)[0] + "-*")):
        stored = RunRecord(other)
        if other.name == rid or other.is_symlink() or not stored.is_complete():
            continue
        found = read_record(other)
        config = {k: v for k, v in found.config.items() if k != "meta"}
        try:
            same = bool(config) and config_digest(config) == digest
        except (TypeError, ValueError, RecursionError) as e:
            same = False
            found.problems.append(f"{other / 'config.yaml'}: not a config ({type(e).__name__})")
        for problem in found.problems:
            print(f"[bench] warning: {problem}; that record is skipped", file=sys.stderr)
        # an older format may lack a key that meant something else (migrate it); other inputs
        # are another computation
        if (same and found.meta.get("record_format") == RECORD_FORMAT
                and _same_inputs(found.meta, content or {})):
            return stored
    return record


def _same_inputs(meta: dict, content: dict) -> bool:
    """Whether a record computed from the inputs `content` names: its data hash, and its base's
    where both state one."""
    if content.get("data") is not None and meta.get("data_hash") != content["data"]:
        return False
    stated = meta.get("base_sha256")
    return stated is None or content.get("base") is None or stated == content["base"]


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
