"""Bring run records written by earlier versions of bench to bench.record.RECORD_FORMAT.

    python -m bench.tracking.migrate runs              # every record under runs/, in place
    python -m bench.tracking.migrate results --dry     # say what would change, write nothing

Format 1 -> 2, per sweep folder (the records of one `<root>/.../<sweep>/`):
- A config key a record lacks (one added to the schema after it ran) is written into it with
  the schema's default: a key is added with the default that does what the code did before it
  existed (docs/design.md §2). The one key whose absence meant something else:
  `metrics.hessian.batch_size`, added when the Hessian stopped being taken on the whole
  training batch, becomes `trainer.batch_size` where a record measured the Hessian
  (metrics.hessian.every > 0).
- A key the schema no longer has (REMOVED) is deleted where it holds its only possible value.
- A run relaunched under a new run id (the same sweep and command-line overrides, seed
  included) leaves two records; all but the newest (the one with the most config keys: its id
  changed because the schema grew) move to `<sweep>/.superseded/`, which no reader visits
  (nothing is deleted).
- `meta.record_format` is set. Records already at the current format are left alone, so the
  migration can run again safely.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from bench.config import schema_defaults
from bench.record import (
    CONFIG_FILE,
    RECORD_FORMAT,
    RecordError,
    atomic_write,
    dotted,
    dump_yaml,
    is_record,
    leaves,
    load_yaml,
)

SUPERSEDED = ".superseded"
# Keys the schema no longer has, with the one value they could hold in a record: removed.
REMOVED = {"trainer.inject_nan_at": None}  # a testing aid, now the tests' own monkeypatch


def _set(tree: dict, key: str, value) -> None:
    *parents, last = key.split(".")
    for part in parents:
        tree = tree.setdefault(part, {})
    tree[last] = value


def sweep_folders(root: Path) -> list[Path]:
    """Every folder under `root` (itself included) that directly holds run records."""
    folders = [root, *sorted(p for p in root.rglob("*") if p.is_dir())]
    visible = [f for f in folders
               if not any(part.startswith(".") for part in f.relative_to(root).parts)]
    return [f for f in visible if any(is_record(child) for child in f.iterdir())]


def migrate_sweep(folder: Path, dry: bool = False) -> list[str]:
    """Migrate the records directly under `folder`; the lines that say what changed."""
    said = []
    configs: dict[Path, dict] = {}
    for run in sorted(p for p in folder.iterdir() if is_record(p)):
        try:
            configs[run] = load_yaml(run / CONFIG_FILE)
        except RecordError as e:
            said.append(f"skipped (unreadable): {e}")
    old = {run: c for run, c in configs.items()
           if (c.get("meta") or {}).get("record_format", 1) < RECORD_FORMAT}
    if not old:
        return said
    said += _supersede(folder, configs, old, dry)
    defaults = leaves(schema_defaults())
    present = {run: {k for k in leaves({k: v for k, v in c.items() if k != "meta"})}
               for run, c in configs.items()}
    for key in sorted(defaults):
        lacking = [run for run in old if key not in present[run]]
        if not lacking:
            continue
        if key == "metrics.hessian.batch_size":
            for run in lacking:
                measured = (dotted(configs[run], "metrics.hessian.every", 0) or 0) > 0
                _set(configs[run], key,
                     dotted(configs[run], "trainer.batch_size") if measured else defaults[key])
            said.append(f"{key}: set in {len(lacking)} records")
            continue
        for run in lacking:
            _set(configs[run], key, defaults[key])
        others = {repr(dotted(c, key)) for run, c in configs.items() if key in present[run]}
        note = f" (the sweep's other records: {', '.join(sorted(others))})" if (
            others - {repr(defaults[key])}) else ""
        said.append(f"{key}={defaults[key]!r}: set in {len(lacking)} records{note}")
    for key, value in REMOVED.items():
        holding = [run for run in old if dotted(configs[run], key, value) != value]
        if holding:
            said.append(f"{key}: not at {value!r} in {len(holding)} records, kept there")
        dropped = [run for run in old if key in present[run] and run not in holding]
        for run in dropped:
            *parents, last = key.split(".")
            node = configs[run]
            for part in parents:
                node = node[part]
            del node[last]
        if dropped:
            said.append(f"{key}: removed from {len(dropped)} records (no longer a key)")
    for run in old:
        configs[run].setdefault("meta", {})["record_format"] = RECORD_FORMAT
        if not dry:
            atomic_write(run / CONFIG_FILE, dump_yaml(configs[run]))
    said.append(f"{len(old)} records now at format {RECORD_FORMAT}")
    return said


def _supersede(folder: Path, configs: dict, old: dict, dry: bool) -> list[str]:
    """Relaunches of one command under changed run ids: all but the newest to .superseded/."""
    launches: dict[tuple, list[Path]] = {}
    for run, config in configs.items():
        overrides = (config.get("meta") or {}).get("overrides")
        if isinstance(overrides, list) and overrides:
            launches.setdefault(tuple(map(str, overrides)), []).append(run)
    moved = []
    for runs in launches.values():
        if len(runs) < 2:
            continue
        # newest last: a relaunch under a new id was written by code whose schema has more
        # keys (the reason its id changed); file times only break ties (a clone resets them)
        runs.sort(key=lambda r: (len(leaves(configs[r])), (r / CONFIG_FILE).stat().st_mtime))
        for run in runs[:-1]:
            moved.append(run)
            if not dry:
                (folder / SUPERSEDED).mkdir(exist_ok=True)
                shutil.move(str(run), str(folder / SUPERSEDED / run.name))
    for run in moved:
        configs.pop(run), old.pop(run, None)
    return [f"{len(moved)} relaunched records moved to {SUPERSEDED}/"] if moved else []


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path, help="a runs folder (runs, results, ...)")
    parser.add_argument("--dry", action="store_true", help="say what would change only")
    args = parser.parse_args(argv)
    if not args.root.is_dir():
        print(f"error: {args.root} is not a folder", file=sys.stderr)
        return 2
    for folder in sweep_folders(args.root):
        for line in migrate_sweep(folder, args.dry):
            print(f"{folder}: {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
