"""data=hf: records of a dataset, from a local file or folder or the local Hugging Face cache.

`data.path` is a file or a folder (read recursively) of .jsonl, .json, .parquet, .csv or .txt
files, chosen by extension; or, when no such path exists, a dataset name ("owner/name") found in
the local Hugging Face cache (HF_HUB_CACHE; the raw files `huggingface_hub` or `datasets`
downloaded there). Nothing is downloaded unless `data.allow_download=true`, and never while
HF_HUB_OFFLINE=1.

A record is plain text (`data.text_field`, default "text"; a .txt file is one document) or an
instruction: `data.prompt_field` and `data.response_field`, both or neither, whose prompt is not
scored by the loss (bench/data/tokenized.py). A field a record lacks, or whose value is not a
string, is an error naming the file and the record, never a silent skip.

A dataset's own splits come from its file and folder names, as the Hugging Face Hub lays them
out: a name whose first word (split at - _ .) is train/training, validation/valid/val/dev/eval
or test/testing marks the records below it; unmarked files are training data.
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass
from pathlib import Path

from bench.errors import ConfigError

EXTENSIONS = (".jsonl", ".json", ".parquet", ".csv", ".txt")
SPLIT_WORDS = {"train": "train", "training": "train", "validation": "eval", "valid": "eval",
               "val": "eval", "dev": "eval", "eval": "eval", "test": "test", "testing": "test"}
HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


@dataclass(frozen=True)
class Record:
    text: str  # the document, or an instruction's response
    prompt: str | None  # an instruction's prompt (not scored); None for plain text
    split: str | None  # the dataset's own split of this record: train, eval, test; None unmarked


def split_of_path(relative: Path) -> str | None:
    """The split a file's path inside the dataset names (see the module doc), or None."""
    for part in (*relative.parent.parts, relative.stem):
        word = re.split(r"[-_.]", part.lower(), maxsplit=1)[0]
        if word in SPLIT_WORDS:
            return SPLIT_WORDS[word]
    return None


def resolve(path: str, allow_download: bool) -> Path:
    """The local file or folder of data.path: itself, or the cached snapshot of a dataset."""
    local = Path(path).expanduser()
    if local.exists():
        return local
    if not HUB_NAME.match(path):
        raise ConfigError(f"data.path={path!r} does not exist (and is not a dataset name "
                          "owner/name of the Hugging Face cache)")
    try:
        from huggingface_hub import constants, snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError
    except ImportError as e:
        raise ConfigError(f"data.path={path!r}: a dataset name needs huggingface_hub (the `hf` "
                          "extra: pip install -e '.[hf]')") from e
    offline = constants.HF_HUB_OFFLINE
    try:
        return Path(snapshot_download(repo_id=path, repo_type="dataset",
                                      local_files_only=not allow_download or offline))
    except LocalEntryNotFoundError:
        why = ("downloads are off (data.allow_download=false)" if not allow_download
               else "offline mode is on (HF_HUB_OFFLINE=1)")
        raise ConfigError(
            f"data.path={path!r} is neither a local file or folder nor a dataset in the local "
            f"Hugging Face cache ({constants.HF_HUB_CACHE}) and {why}: download it first, or "
            "allow it with data.allow_download=true") from None
    except Exception as e:  # noqa: BLE001 - the hub's many errors (no such repo, network)
        raise ConfigError(f"data.path={path!r}: the dataset could not be fetched "
                          f"({type(e).__name__}: {' '.join(str(e).split())[:160]})") from None


def _rows_json(file: Path) -> list:
    text = file.read_text(encoding="utf-8")
    if file.suffix == ".json":
        try:
            rows = json.loads(text)
        except json.JSONDecodeError:
            rows = None  # JSON lines under a .json name
        if isinstance(rows, list):
            return rows
        if rows is not None:
            raise ConfigError(f"data.path: {file} holds a JSON {type(rows).__name__}, not a "
                              "list of records (or JSON lines)")
    rows = []
    for i, line in enumerate(text.splitlines()):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ConfigError(f"data.path: {file} line {i + 1} is not JSON ({e.msg})") from None
    return rows


def _columns(file: Path, fields: list[str]) -> dict[str, list]:
    """{field: its values} of every record of a .jsonl, .json, .parquet or .csv file."""
    if file.suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError as e:
            raise ConfigError("data.path: .parquet files need pyarrow (the `hf` extra: pip "
                              "install -e '.[hf]')") from e
        table = pq.read_table(file)
        _check_fields(file, fields, table.column_names)
        return {f: table.column(f).to_pylist() for f in fields}
    if file.suffix == ".csv":
        with file.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
            _check_fields(file, fields, reader.fieldnames or [])
    else:
        rows = _rows_json(file)
        if not rows:  # an empty file adds no records (a dataset of none is refused later)
            return {f: [] for f in fields}
        for i, row in enumerate(rows):
            if not isinstance(row, dict):
                raise ConfigError(f"data.path: record {i} of {file} is a "
                                  f"{type(row).__name__}, not an object with fields")
        names = list(dict.fromkeys(k for row in rows[:1000] for k in row))
        _check_fields(file, fields, names, rows)
    return {f: [row.get(f) for row in rows] for f in fields}


def _check_fields(file: Path, fields: list[str], names: list[str], rows=None) -> None:
    """Each field is a column of the file; with `rows` (JSON), a key of every record."""
    for field, key in zip(fields, _KEYS[len(fields)]):
        if field not in names:
            raise ConfigError(f"{key}={field!r} is not a field of {file}; its fields: "
                              f"{', '.join(names) or 'none'}")
        lacking = next((i for i, row in enumerate(rows or []) if field not in row), None)
        if lacking is not None:
            raise ConfigError(f"{key}={field!r}: record {lacking} of {file} has no such field; "
                              f"its fields: {', '.join(rows[lacking]) or 'none'}")


# the config keys of the fields read, in the order read_records asks for them
_KEYS = {1: ("data.text_field",), 2: ("data.prompt_field", "data.response_field")}


def read_records(data_cfg) -> tuple[list[Record], str]:
    """Every record of data.path, in a fixed order (files sorted by path), and a label for it."""
    root = resolve(str(data_cfg.path), bool(data_cfg.allow_download))
    instruction = data_cfg.prompt_field is not None
    fields = ([data_cfg.prompt_field, data_cfg.response_field] if instruction
              else [data_cfg.text_field])
    files = [root] if root.is_file() else sorted(
        f for f in root.rglob("*") if f.is_file() and f.suffix in EXTENSIONS
        and not any(p.startswith(".") for p in f.relative_to(root).parts))
    if root.is_file() and root.suffix not in EXTENSIONS:
        raise ConfigError(f"data.path={str(data_cfg.path)!r}: {root.suffix or 'no'} extension; "
                          f"allowed: {', '.join(EXTENSIONS)}")
    records: list[Record] = []
    for file in files:
        split = split_of_path(file.relative_to(root) if root.is_dir() else Path(file.name))
        if file.suffix == ".txt":
            if instruction:
                raise ConfigError(f"data.prompt_field={data_cfg.prompt_field!r}: {file} is plain "
                                  "text; instruction data needs .jsonl, .json, .parquet or .csv")
            records.append(Record(file.read_text(encoding="utf-8"), None, split))
            continue
        columns = _columns(file, fields)
        for key, field in zip(_KEYS[len(fields)], fields):
            for i, value in enumerate(columns[field]):
                if not isinstance(value, str):
                    raise ConfigError(f"{key}={field!r}: record {i} of {file} holds "
                                      f"{type(value).__name__} {str(value)[:40]!r}, not text")
        if instruction:
            records += [Record(r, p, split) for p, r in zip(*columns.values())]
        else:
            records += [Record(t, None, split) for t in columns[data_cfg.text_field]]
    if not any(r.text or r.prompt for r in records):
        raise ConfigError(f"data.path={str(data_cfg.path)!r} holds no text: {len(files)} "
                          f"{'file' if len(files) == 1 else 'files'} of "
                          f"{', '.join(EXTENSIONS)}, {len(records)} records")
    return records, f"hf:{root.name}"
