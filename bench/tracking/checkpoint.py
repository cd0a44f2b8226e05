"""The training state of a run: `checkpoint.pt` in its record folder, written atomically.

It holds only tensors and plain containers (RNG states as tensors and ints) and is read with
`torch.load(weights_only=True)`: run folders are shared, and a crafted pickle must not run code.
A checkpoint that does not load, or lacks a key, raises `CheckpointError` (a `ConfigError`: the
CLI prints one line) before anything in the folder is written.
"""

from __future__ import annotations

import pickle
import random
from pathlib import Path

import numpy as np
import torch

from bench.errors import ConfigError
from bench.record import atomic_write

# What bench.train.Trainer needs to resume; rng_python/rng_numpy are restored when present.
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
    """Inverse of `rng_states`."""
    if state.get("rng_python") is not None:
        py = state["rng_python"]
        random.setstate((py["version"], tuple(py["state"].tolist()), py["gauss"]))
    if state.get("rng_numpy") is not None:
        npy = state["rng_numpy"]
        keys = npy["keys"].numpy().astype(np.uint32)
        np.random.set_state((npy["kind"], keys, npy["pos"], npy["has_gauss"], npy["gauss"]))


def save_checkpoint(path: Path, state: dict) -> None:
    atomic_write(Path(path), lambda f: torch.save(state, f))


def load_checkpoint(path: Path) -> dict | None:
    """The checkpoint (None when there is none), read with weights_only=True: a pickle that
    would build anything but tensors and plain containers is refused, not executed. Raises
    CheckpointError for a checkpoint that does not load or lacks a key."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # torch's own message advises weights_only=False: not us
        raise CheckpointError(path, "holds objects other than tensors and plain containers "
                                    "(crafted, or not written by bench); it was not run") from None
    except Exception as e:  # noqa: BLE001 - truncated, empty or not a torch file
        first = (str(e).split(". ")[0] or "empty file")[:160]
        raise CheckpointError(path, f"is truncated or not a checkpoint ({type(e).__name__}: "
                                    f"{first})") from None
    missing = [k for k in CHECKPOINT_KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        raise CheckpointError(path, f"lacks {', '.join(missing)} (written by another version of "
                                    "bench, or not a bench checkpoint)")
    return state
