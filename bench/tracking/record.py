"""The run record: the one contract between training and analysis (DESIGN.md §3).

`<out_dir>/<sweep>/<run-id>/` holds `config.yaml` (resolved config + versions + data hash),
`metrics.jsonl` (one JSON object per logged step, appended and flushed), `summary.json` (written
atomically; `status` is `running` while the run goes on) and `checkpoint.pt` (atomic).

`checkpoint.pt` holds only tensors and plain containers (RNG states as tensors and ints) and is
read with `torch.load(weights_only=True)`: run folders are shared, and a crafted pickle must not
run code. A checkpoint that does not load, or lacks a key, raises `CheckpointError` (a
`ConfigError`: the CLI prints one line and exits 2) before anything in the folder is written.
A `summary.json` that does not parse is a run that did not finish: it is resumed (one warning).
"""

from __future__ import annotations

import json
import math
import os
import pickle
import random
import re
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from bench.errors import ConfigError

STATUSES = ("running", "completed", "diverged", "failed")
# What bench.train.Trainer needs to resume; rng_python/rng_numpy are optional (older checkpoints).
CHECKPOINT_KEYS = ("step", "model", "optimizer", "adapter", "rng_cpu", "stats")


class CheckpointError(ConfigError):
    """A checkpoint.pt that cannot be resumed from; the message names the file and the fix."""

    def __init__(self, path: Path, reason: str):
        super().__init__(
            f"{path}: {reason}. Delete it to restart the run from step 0; the run folder was "
            "left as it was"
        )


def rng_states() -> dict:
    """Python's and NumPy's global RNG states as tensors and ints (torch.load weights_only can
    read them back; the tuples of random.getstate and np.random.get_state cannot be)."""
    version, mt, gauss = random.getstate()  # mt: 625 ints < 2**32 (624 words + position)
    kind, keys, pos, has_gauss, cached = np.random.get_state()  # keys: (624,) uint32
    return {
        "rng_python": {"version": version, "state": torch.tensor(mt, dtype=torch.int64),
                       "gauss": gauss},
        "rng_numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)),
                      "pos": int(pos), "has_gauss": int(has_gauss), "gauss": float(cached)},
    }


def set_rng_states(state: dict) -> None:
    """Inverse of `rng_states` (keys absent from an older checkpoint are left alone)."""
    if state.get("rng_python") is not None:
        py = state["rng_python"]
        random.setstate((py["version"], tuple(py["state"].tolist()), py["gauss"]))
    if state.get("rng_numpy") is not None:
        npy = state["rng_numpy"]
        keys = npy["keys"].numpy().astype(np.uint32)
        np.random.set_state((npy["kind"], keys, npy["pos"], npy["has_gauss"], npy["gauss"]))


def atomic_write(path: Path, write) -> None:
    """Write through a temp file in the same folder and rename: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _jsonable(value: Any) -> Any:
    """Floats that JSON cannot hold (nan, inf) become null; tensors become numbers."""
    if isinstance(value, torch.Tensor):
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


class RunRecord:
    def __init__(self, run_dir: str | Path):
        self.dir = Path(run_dir)
        self.config_path = self.dir / "config.yaml"
        self.metrics_path = self.dir / "metrics.jsonl"
        self.summary_path = self.dir / "summary.json"
        self.checkpoint_path = self.dir / "checkpoint.pt"
        self._metrics = None

    # -- files -----------------------------------------------------------------------------
    def create(self, config: dict) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        text = yaml.dump(config, Dumper=_ConfigDumper, sort_keys=False).encode()
        atomic_write(self.config_path, lambda f: f.write(text))

    def log(self, row: dict) -> None:
        if self._metrics is None:
            self._metrics = open(self.metrics_path, "a", encoding="utf-8")  # noqa: SIM115
        self._metrics.write(json.dumps({k: _jsonable(v) for k, v in row.items()}) + "\n")
        self._metrics.flush()

    def read_metrics(self) -> list[dict]:
        if not self.metrics_path.exists():
            return []
        rows = []
        for line in self.metrics_path.read_text(encoding="utf-8").splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:  # the half line of a killed run
                break
        return rows

    def truncate_metrics(self, step: int) -> None:
        """On resume, keep the lines up to the checkpoint's step (later ones are redone)."""
        keep = [r for r in self.read_metrics() if r.get("step", 0) <= step]
        text = "".join(json.dumps(r) + "\n" for r in keep).encode()
        atomic_write(self.metrics_path, lambda f: f.write(text))

    def write_summary(self, summary: dict) -> None:
        if summary.get("status") not in STATUSES:
            raise ValueError(f"summary status {summary.get('status')!r} not in {STATUSES}")
        text = json.dumps({k: _jsonable(v) for k, v in summary.items()}, indent=2).encode()
        atomic_write(self.summary_path, lambda f: f.write(text))

    def read_summary(self) -> dict | None:
        """The summary, or None when there is none or it does not parse (a torn file: the run
        did not finish as far as anyone can tell, so it is resumed; warned once on stderr)."""
        try:
            summary = json.loads(self.summary_path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            summary, reason = None, f"{type(e).__name__}: {e}"
        else:
            reason = None if isinstance(summary, dict) else "not a JSON object"
        if reason is None:
            return summary
        if not getattr(self, "_warned_summary", False):
            self._warned_summary = True
            print(f"[bench] warning: {self.summary_path} does not parse ({reason}); the run is "
                  "treated as unfinished and resumed", file=sys.stderr)
        return None

    def is_complete(self) -> bool:
        summary = self.read_summary()
        return bool(summary) and summary.get("status") in ("completed", "diverged")

    def save_checkpoint(self, state: dict) -> None:
        atomic_write(self.checkpoint_path, lambda f: torch.save(state, f))

    def load_checkpoint(self) -> dict | None:
        """The checkpoint (None when there is none), read with weights_only=True: a pickle that
        would build anything but tensors and plain containers is refused, not executed.
        Raises CheckpointError for a checkpoint that does not load or lacks a key."""
        path = self.checkpoint_path
        if not path.exists():
            return None
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:  # torch's own message advises weights_only=False: not us
            raise CheckpointError(path, "holds objects other than tensors and plain "
                                        "containers (crafted, or not written by bench); "
                                        "it was not run") from None
        except Exception as e:  # noqa: BLE001 - truncated, empty or not a torch file
            first = (str(e).split(". ")[0] or "empty file")[:160]
            raise CheckpointError(path, f"is truncated or not a checkpoint ({type(e).__name__}: "
                                        f"{first})") from None
        missing = [k for k in CHECKPOINT_KEYS if not isinstance(state, dict) or k not in state]
        if missing:
            raise CheckpointError(path, f"lacks {', '.join(missing)} (written by another "
                                        "version of bench, or not a bench checkpoint)")
        return state

    def close(self) -> None:
        if self._metrics is not None:
            self._metrics.close()
            self._metrics = None
