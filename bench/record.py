"""The run record: the one contract between training (bench) and analysis (docs/design.md §3).

A run writes one folder `<out_dir>/<sweep>/<run_id>/`:

    config.yaml    the resolved config and `meta`: run_id, method, config_id, record_format,
                   data hash, overrides, versions, host (bench/run.py)
    metrics.jsonl  one JSON object per logged row: `step`, `tokens`, `wall_s`, then metrics
                   (`train/loss`, `eval/loss`, `eval/loss_<domain>`, `test/loss`, `lr`, ...);
                   appended and flushed, a row per line
    summary.json   `status` (STATUSES) and the results (SUMMARY_KEYS), atomically replaced
    checkpoint.pt  the training state (bench/tracking/checkpoint.py; analysis never reads it)
    toy.json       per-init arrays of a toy run (bench/toy.py)

This module imports neither torch nor Hydra: analysis imports it and nothing else of bench.
Records written before RECORD_FORMAT 2 are brought to it once by `python -m
bench.tracking.migrate <runs>`; readers assume the current format.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import sys
import tempfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

RECORD_FORMAT = 2  # meta.record_format of every record bench writes now

CONFIG_FILE, METRICS_FILE, SUMMARY_FILE = "config.yaml", "metrics.jsonl", "summary.json"
CHECKPOINT_FILE, TOY_FILE = "checkpoint.pt", "toy.json"
REJECTED_FILE = "metrics.rejected.jsonl"  # rows a relaunch could not read, moved aside
RECORD_FILES = (CONFIG_FILE, METRICS_FILE, SUMMARY_FILE, CHECKPOINT_FILE)

STATUSES = ("running", "completed", "diverged", "failed")
ENDED = ("completed", "diverged")  # a relaunch skips these
BAD_STATUSES = ("diverged", "failed")  # a seed with one of these scores +inf

SUMMARY_KEYS = (
    "status",
    "final_eval_loss",
    "final_test_loss",  # with a test split (data.test_fraction > 0): what tables report
    "best_eval_loss",
    "steps",
    "steps_to_target",
    "tokens_to_target",
    "seconds_to_target",
    "target_loss",  # the target those were measured against (analysis/targets.py resolves it)
    "tokens_per_s",
    "peak_mem_mb",
    "error",
    "diverged_step",
    "trainable_params",
    "wall_s",  # the run's wall clock, curvature estimates left out, final evaluations counted
    # the last Hessian estimate of a run that measured one (bench.train.FINAL_MEASUREMENTS)
    "final_cond/kappa",
    "final_cond/lambda_min_h",
    "final_sharpness/lambda_max",
    "final_cond/gn/kappa",
    "final_cond/gn/lambda_min_h",
    "final_cond/gn/lambda_max",
)
CURVE_INDEX = ("step", "tokens", "wall_s")  # every metrics row's x axes

# Keys that do not change what a run computes: left out of the run id and of the configuration
# seeds are grouped by (bench.tracking.identity, analysis.selection).
NON_SEMANTIC = (
    "out_dir",
    "force",
    "sweep",
    "study",
    "logger",
    "trainer.device",
    "trainer.threads",
    "trainer.progress",
    "trainer.checkpoint_every",
    "trainer.log_every",
    "model.pretrain.cache_dir",  # where the base is cached, not what it is (its key is)
    "data.cache_dir",  # where tokenizers and token ids are cached (keyed by their content)
    "data.allow_download",  # whether a dataset may be fetched, not which (data.path is)
)
UNKNOWN_METHOD = "unknown"  # the method of a record whose config.yaml cannot be read


class RecordError(ValueError):
    """A record file that cannot be read: the message names the file and why."""


# ----------------------------------------------------------------------------- identity
def dotted(tree: Mapping | None, key: str, default: Any = None) -> Any:
    """tree["a"]["b"] for key "a.b" (`default` where a part is missing); dicts and DictConfigs."""
    for part in key.split("."):
        if not isinstance(tree, Mapping) or part not in tree:
            return default
        tree = tree[part]
    return tree


def semantic(key: str) -> bool:
    """Whether a dotted config key can change what a run computes (not under NON_SEMANTIC)."""
    return not any(key == k or key.startswith(k + ".") for k in NON_SEMANTIC)


def method_name(config: Mapping, optimizer_suffix: str = "") -> str:
    """The method a run belongs to, from its resolved config.

    LM: adapter[+init][+rslora]/optimizer[+suffix][/<attention geometry>[+block][+retraction]]
    [/lora:<adapter geometry>] (init and rslora only off their defaults; `optimizer_suffix` is the
    optimizer's own, e.g. "+sgd" for lora_preconditioned with base sgd); toy:
    adapter[:alignment]/<toy.method> (alignment when not procrustes)."""
    adapter = dotted(config, "adapter.name", "full")
    if dotted(config, "task", "lm") == "toy":
        alignment = dotted(config, "adapter.alignment", "procrustes")
        if adapter == "balora" and alignment != "procrustes":
            adapter += ":" + alignment
        return f"{adapter}/{dotted(config, 'toy.method')}"
    if dotted(config, "adapter.init", "default") != "default":
        adapter += "+" + dotted(config, "adapter.init")
    if dotted(config, "adapter.rslora", False):
        adapter += "+rslora"
    parts = [adapter, dotted(config, "optimizer.name", "adamw") + optimizer_suffix]
    geometry = dotted(config, "model.attention.geometry", "euclidean")
    if geometry != "euclidean":
        retraction = dotted(config, "model.attention.retraction", "svd")
        parts.append(geometry + ("+block" if dotted(config, "model.attention.block") else "")
                     + ("+" + retraction if retraction != "svd" else ""))
    if dotted(config, "adapter.geometry", "euclidean") != "euclidean":
        parts.append("lora:" + dotted(config, "adapter.geometry"))
    return "/".join(parts)


def leaves(tree: Mapping, prefix: str = "") -> dict:
    """{"a.b.c": value} for every leaf of a nested mapping (lists are leaves)."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            out.update(leaves(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def config_digest(config: Mapping, defaults: Mapping, leave_out: Iterable[str] = ()) -> str:
    """8 hex digits of the sha256 of the semantic keys of a resolved (plain) config whose values
    differ from `defaults` (the schema's, nested like the config): adding a key with a default
    to the schema, or writing a default out in a YAML file, changes no digest. Keys under
    `leave_out` are left out too (the seed, for the configuration id)."""
    flat_defaults = leaves(defaults)
    skip = tuple(leave_out)
    kept = {key: value for key, value in leaves(config).items()
            if semantic(key) and not any(key == k or key.startswith(k + ".") for k in skip)
            and (key not in flat_defaults or flat_defaults[key] != value)}
    return hashlib.sha256(json.dumps(kept, sort_keys=True).encode()).hexdigest()[:8]


# ------------------------------------------------------------------------- time to target
TARGET_KEYS = ("steps_to_target", "tokens_to_target", "seconds_to_target")


def finite(value: Any) -> bool:
    """A real number that is not nan or inf (bools are not numbers here)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def time_to_target(rows: Iterable[Mapping], target: float | None) -> dict:
    """AlgoPerf's time to result (docs/design.md §7): `step`, `tokens` and `wall_s` of the first
    row whose `eval/loss` is <= target, as steps/tokens/seconds_to_target (None if never).
    Resolved to the eval grid (trainer.eval_every), as in AlgoPerf."""
    if target is None:
        return dict.fromkeys(TARGET_KEYS)
    if not finite(target):
        raise ValueError(f"target loss must be a finite number, got {target!r}")
    for row in rows:
        loss = row.get("eval/loss")
        if finite(loss) and loss <= target:
            return {"steps_to_target": row.get("step"), "tokens_to_target": row.get("tokens"),
                    "seconds_to_target": row.get("wall_s")}
    return dict.fromkeys(TARGET_KEYS)


# ------------------------------------------------------------------------------- reading
MAX_CONFIG_BYTES = 1 << 20  # a resolved config is a few KiB; more is not a record of ours
MAX_YAML_DEPTH = 32


class _LimitedLoader(yaml.SafeLoader):
    """PyYAML's safe loader without aliases (an alias bomb expands to gigabytes) and with a
    bounded nesting depth (a deep nest overflows the recursion of every reader)."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            raise yaml.YAMLError("aliases (*name) are not allowed in a record")
        self._depth = getattr(self, "_depth", 0) + 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                raise yaml.YAMLError(f"nested deeper than {MAX_YAML_DEPTH} levels")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def load_yaml(path: Path, max_bytes: int = MAX_CONFIG_BYTES) -> dict:
    """A YAML mapping from `path`, read safely; RecordError naming the file otherwise."""
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise RecordError(f"{path}: {size} bytes, above the {max_bytes} a record may hold")
        tree = yaml.load(path.read_text(encoding="utf-8"), Loader=_LimitedLoader)  # noqa: S506
    except RecordError:
        raise
    except FileNotFoundError:
        raise RecordError(f"{path}: missing") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError, RecursionError) as e:
        first = " ".join(str(e).split())[:160]
        raise RecordError(f"{path}: does not parse ({type(e).__name__}: {first})") from None
    if not isinstance(tree, dict):
        raise RecordError(f"{path}: is empty or not a mapping")
    return tree


def load_json(path: Path, max_bytes: int = MAX_CONFIG_BYTES) -> Any:
    """JSON from `path` (RecordError naming the file when missing, too large or torn)."""
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise RecordError(f"{path}: {size} bytes, above the {max_bytes} a record may hold")
        return json.loads(path.read_text(encoding="utf-8"))
    except RecordError:
        raise
    except FileNotFoundError:
        raise RecordError(f"{path}: missing") from None
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
        raise RecordError(f"{path}: does not parse ({type(e).__name__})") from None


def parse_rows(lines: Iterable[str]) -> tuple[list[dict], list[str]]:
    """metrics.jsonl lines -> (rows, rejected): a row is a JSON object with a finite `step`;
    any other non-blank line (torn, crafted, another format) is rejected, never a reason to
    drop the rows after it."""
    rows, rejected = [], []
    for line in lines:
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except (ValueError, RecursionError):
            row = None
        if isinstance(row, dict) and finite(row.get("step")):
            rows.append(row)
        else:
            rejected.append(line)
    return rows, rejected


def read_rows(path: Path) -> tuple[list[dict], list[str]]:
    """`parse_rows` of a metrics.jsonl file ([], [] when there is none)."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return [], []
    return parse_rows(text.splitlines())


@dataclass
class Record:
    """One run record as analysis and the study runner see it. `config` is {} and `problems`
    says why when config.yaml cannot be read; `summary` is None while the run has not written
    one (or it cannot be read: `problems` again)."""

    dir: Path
    config: dict = field(default_factory=dict)
    summary: dict | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def meta(self) -> dict:
        meta = self.config.get("meta")
        return meta if isinstance(meta, dict) else {}

    @property
    def method(self) -> str:
        return str(self.meta.get("method") or UNKNOWN_METHOD)

    @property
    def run_id(self) -> str:
        return str(self.meta.get("run_id") or self.dir.name)

    @property
    def sweep(self) -> str:
        """The sweep folder the record lies in (what its config says is not trusted: a sweep
        name becomes part of output paths)."""
        return self.dir.parent.name

    @property
    def status(self) -> str | None:
        return self.summary.get("status") if self.summary else None

    def metrics(self) -> list[dict]:
        return read_rows(self.dir / METRICS_FILE)[0]


def read_record(run_dir: str | Path) -> Record:
    """The record in `run_dir`, whatever state its files are in: what cannot be read is named
    in `problems` (a summary that does not say a known status counts as none)."""
    run_dir = Path(run_dir)
    record = Record(run_dir)
    try:
        record.config = load_yaml(run_dir / CONFIG_FILE)
    except RecordError as e:
        record.problems.append(str(e))
    if (run_dir / SUMMARY_FILE).exists():
        try:
            summary = load_json(run_dir / SUMMARY_FILE)
            if not isinstance(summary, dict) or summary.get("status") not in STATUSES:
                raise RecordError(f"{run_dir / SUMMARY_FILE}: not a summary (no known status)")
            record.summary = summary
        except RecordError as e:
            record.problems.append(str(e))
    return record


MAX_TOY_BYTES = 1 << 28  # a toy run's per-init arrays: ~10 MB for 100 problems x 8 inits
TOY_KEYS = ("adapter", "optimizer", "method", "excess", "lr", "kappa", "lambda_max", "gap")


def read_toy(run_dir: str | Path) -> dict:
    """A toy run's toy.json (bench/toy.py), checked to hold its per-init arrays; RecordError
    naming the file otherwise."""
    path = Path(run_dir) / TOY_FILE
    toy = load_json(path, MAX_TOY_BYTES)
    missing = [k for k in TOY_KEYS if not isinstance(toy, dict) or k not in toy]
    if missing:
        raise RecordError(f"{path}: lacks {', '.join(missing)}")
    n = len(toy["excess"]) if isinstance(toy["excess"], list) else -1
    if any(not isinstance(toy[k], list) or len(toy[k]) != n
           for k in ("excess", "lr", "kappa", "lambda_max", "gap")):
        raise RecordError(f"{path}: its per-init arrays differ in length or are not lists")
    return toy


def is_record(path: Path) -> bool:
    """A visible folder holding any record file (hidden folders are W&B's, submitit's, ...)."""
    return (path.is_dir() and not path.name.startswith(".")
            and any((path / name).exists() for name in RECORD_FILES))


# ------------------------------------------------------------------------------- writing
def atomic_write(path: Path, write: Callable[[Any], None] | bytes) -> None:
    """Write through a temp file in the same folder and rename: readers never see half a file.
    `write` is the bytes, or a function writing to the binary file it is given."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(write) if isinstance(write, bytes) else write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide records from the group that shares them
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def jsonable(value: Any) -> Any:
    """Floats JSON cannot hold (nan, inf) become null; 0-d tensors and numpy scalars numbers."""
    if hasattr(value, "item") and callable(value.item):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# OmegaConf's YAML loader reads more plain scalars as numbers than PyYAML writes quoted: "9651e709"
# (a config digest) is a float (inf) to OmegaConf and a string to yaml.safe_load. Strings that
# OmegaConf would read as a number are written quoted, so both readers get the string back.
_OMEGACONF_NUMBER = re.compile(r"^[-+]?(\.[0-9]+|[0-9][0-9_]*(\.[0-9_]*)?)([eE][-+]?[0-9]+)?$")


class _ConfigDumper(yaml.SafeDumper):
    pass


def _represent_str(dumper: yaml.SafeDumper, value: str):
    style = "'" if _OMEGACONF_NUMBER.match(value) else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_ConfigDumper.add_representer(str, _represent_str)


def dump_yaml(tree: Mapping) -> bytes:
    return yaml.dump(dict(tree), Dumper=_ConfigDumper, sort_keys=False).encode()


class RunRecord:
    """The writer of one run folder's text files (and their reader for the run itself)."""

    def __init__(self, run_dir: str | Path):
        self.dir = Path(run_dir)
        self.config_path = self.dir / CONFIG_FILE
        self.metrics_path = self.dir / METRICS_FILE
        self.summary_path = self.dir / SUMMARY_FILE
        self.checkpoint_path = self.dir / CHECKPOINT_FILE
        self._metrics = None
        self._warned_summary = False

    def create(self, config: Mapping) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        atomic_write(self.config_path, dump_yaml(config))

    def log(self, row: Mapping) -> None:
        if self._metrics is None:
            self._metrics = open(self.metrics_path, "a", encoding="utf-8")  # noqa: SIM115
            os.chmod(self.metrics_path, 0o644)
        self._metrics.write(json.dumps({k: jsonable(v) for k, v in row.items()}) + "\n")
        self._metrics.flush()

    def read_metrics(self) -> list[dict]:
        return read_rows(self.metrics_path)[0]

    def keep_rows_until(self, step: int) -> list[dict]:
        """On resume from a checkpoint at `step`: rows after it are dropped (they are redone),
        every readable row up to it is kept, and unreadable lines are moved to
        metrics.rejected.jsonl with a warning, never deleted. Returns the rows kept."""
        rows, rejected = read_rows(self.metrics_path)
        keep = [r for r in rows if r["step"] <= step]
        if rejected:
            with open(self.dir / REJECTED_FILE, "a", encoding="utf-8") as f:
                f.writelines(line + "\n" for line in rejected)
            print(f"[bench] warning: {self.metrics_path}: {len(rejected)} line(s) that are not "
                  f"metric rows moved to {REJECTED_FILE}", file=sys.stderr)
        if len(keep) != len(rows) or rejected:
            atomic_write(self.metrics_path, "".join(json.dumps(r) + "\n" for r in keep).encode())
        return keep

    def write_summary(self, summary: Mapping) -> None:
        if summary.get("status") not in STATUSES:
            raise ValueError(f"summary status {summary.get('status')!r} not in {STATUSES}")
        text = json.dumps({k: jsonable(v) for k, v in summary.items()}, indent=2)
        atomic_write(self.summary_path, text.encode())

    def read_summary(self) -> dict | None:
        """The summary, or None when there is none or it cannot be read (a torn file: the run
        did not finish as far as anyone can tell, so it is resumed; warned once)."""
        if not self.summary_path.exists():
            return None
        try:
            summary = load_json(self.summary_path)
            if isinstance(summary, dict) and summary.get("status") in STATUSES:
                return summary
            reason = "not a summary (no known status)"
        except RecordError as e:
            reason = str(e).removeprefix(f"{self.summary_path}: ")
        if not self._warned_summary:
            self._warned_summary = True
            print(f"[bench] warning: {self.summary_path} {reason}; the run is treated as "
                  "unfinished and resumed", file=sys.stderr)
        return None

    def is_complete(self) -> bool:
        summary = self.read_summary()
        return bool(summary) and summary.get("status") in ENDED

    def close(self) -> None:
        if self._metrics is not None:
            self._metrics.close()
            self._metrics = None
