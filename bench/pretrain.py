"""Pretrain the built-in model once, cache it, and hand it to every fine-tuning run.

The cache key is a hash of everything that determines the pretrained weights (architecture,
pretraining domain and budget, corpus size): a changed config pretrains anew, an unchanged one
loads. Workers of a parallel sweep that start together wait on a file lock instead of pretraining
twice. The pretraining run keeps its own run record next to the weights.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import torch
from filelock import FileLock
from omegaconf import OmegaConf

from bench.adapters.full import Full
from bench.data.corpus import Corpus, load_corpus
from bench.errors import ConfigError
from bench.metrics.cost import usable_cpus
from bench.models import GPT_KEYS, gpt_config
from bench.models.gpt import GPT
from bench.record import RunRecord, atomic_write
from bench.train import Trainer

PRETRAIN_SEED = 0


def cache_key(cfg) -> str:
    spec = {
        "model": {k: cfg.model[k] for k in GPT_KEYS},
        "pretrain": {
            k: v for k, v in OmegaConf.to_container(cfg.model.pretrain).items() if k != "cache_dir"
        },
        "max_bytes": cfg.data.max_bytes,
        "eval_fraction": cfg.data.eval_fraction,
    }
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]


def load_pretrained(cfg) -> tuple[dict, Corpus, str]:
    """(state_dict of the pretrained GPT, the pretraining corpus, the weights' sha256); torch's
    RNG is left as it was. The weights are checked against their pretraining record before use
    (`checked_sha256`) and must be finite: ConfigError in one line otherwise."""
    p = cfg.model.pretrain
    source = load_corpus("builtin", p.domain, None, cfg.data.eval_fraction, cfg.data.max_bytes)
    folder = Path(p.cache_dir) / cache_key(cfg)
    weights = folder / "model.pt"
    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder) + ".lock"):
        if not weights.exists():
            _pretrain(cfg, gpt_config(cfg.model), source, folder, weights)
        sha = checked_sha256(folder, weights)
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - a torn or crafted file: one line, never executed
        raise ConfigError(f"{weights}: the pretrained base does not load ({type(e).__name__}); "
                          f"delete {folder} to pretrain it again") from None
    bad = [k for k, v in state.items() if not torch.is_tensor(v) or not torch.isfinite(v).all()]
    if bad:
        raise ConfigError(f"{weights}: the pretrained base holds non-finite or non-tensor "
                          f"weights ({', '.join(bad[:3])}); delete {folder} to pretrain it again")
    return state, source, sha


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def checked_sha256(folder: Path, weights: Path) -> str:
    """The weights' sha256, which their pretraining record (summary.json's weights_sha256)
    must state: a base changed after pretraining (scaled, torn, replaced) is refused. A record
    written before bench stated it gets it now, once (warned)."""
    sha, record = sha256_of(weights), RunRecord(folder)
    summary = record.read_summary() or {}
    stated = summary.get("weights_sha256")
    if stated is None:
        print(f"[bench] warning: {folder}'s record states no weights_sha256; it is recorded now "
              f"({sha[:12]})", file=sys.stderr)
        record.write_summary({**summary, "status": summary.get("status", "completed"),
                              "weights_sha256": sha})
    elif stated != sha:
        raise ConfigError(f"{weights}: its sha256 {sha[:12]} is not the {stated[:12]} its "
                          f"pretraining record states (the file changed after pretraining); "
                          f"delete {folder} to pretrain it again")
    return sha


def _pretrain(cfg, gpt_cfg, source: Corpus, folder: Path, weights: Path) -> None:
    p = cfg.model.pretrain
    print(f"[bench] pretraining {cfg.model.name} on {p.domain} ({p.max_steps} steps) -> {folder}")
    rng, threads = torch.get_rng_state(), torch.get_num_threads()
    # Other workers wait on the lock meanwhile, so pretraining may use every core.
    torch.set_num_threads(usable_cpus())
    torch.manual_seed(PRETRAIN_SEED)
    device = torch.device(
        "cuda" if torch.cuda.is_available() and cfg.trainer.device != "cpu" else "cpu"
    )
    model = GPT(gpt_cfg)
    adapter = Full(OmegaConf.create({"target_modules": ["all"]}))
    model = adapter.apply(model).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=p.lr, weight_decay=0.0)
    trainer_cfg = OmegaConf.merge(
        OmegaConf.to_container(cfg.trainer),
        {
            "max_steps": p.max_steps,
            "batch_size": p.batch_size,
            "eval_every": p.max_steps,
            "checkpoint_every": p.max_steps,
            "lr_schedule": "warmup_cosine",
            "warmup_steps": max(1, p.max_steps // 20),
        },
    )
    record = RunRecord(folder)
    record.create(
        {
            "pretrain": OmegaConf.to_container(p),
            "model": OmegaConf.to_container(cfg.model),
            "data_hash": source.content_hash,
        }
    )
    summary = Trainer(
        model=model,
        optimizer=optimizer,
        adapter=adapter,
        train_data=source.train,
        eval_sets={"": source.eval},
        cfg=trainer_cfg,
        record=record,
        seed=PRETRAIN_SEED,
        device=device,
        n_eval_batches=cfg.data.eval_batches,
    ).run()
    record.close()
    if summary["status"] != "completed":
        record.write_summary(summary)
        raise RuntimeError(f"pretraining {summary['status']}: {summary.get('error')}")
    state = {k: v.cpu() for k, v in model.state_dict().items()}
    atomic_write(weights, lambda f: torch.save(state, f))
    record.write_summary({**summary, "weights_sha256": sha256_of(weights)})
    torch.set_rng_state(rng)
    torch.set_num_threads(threads)
