"""Pretrain the built-in model once, cache it, and hand it to every fine-tuning run.

The cache key is a hash of everything that determines the pretrained weights (architecture,
pretraining domain and budget, corpus size): a changed config pretrains anew, an unchanged one
loads. Workers of a parallel sweep that start together wait on a file lock instead of pretraining
twice. The pretraining run keeps its own run record next to the weights.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from filelock import FileLock
from omegaconf import OmegaConf

from bench.adapters.full import Full
from bench.data.corpus import Corpus, load_corpus
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


def load_pretrained(cfg) -> tuple[dict, Corpus]:
    """(state_dict of the pretrained GPT, the pretraining corpus); torch's RNG is left as it
    was."""
    p = cfg.model.pretrain
    source = load_corpus("builtin", p.domain, None, cfg.data.eval_fraction, cfg.data.max_bytes)
    folder = Path(p.cache_dir) / cache_key(cfg)
    weights = folder / "model.pt"
    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder) + ".lock"):
        if not weights.exists():
            _pretrain(cfg, gpt_config(cfg.model), source, folder, weights)
    return torch.load(weights, map_location="cpu", weights_only=True), source


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
    record.write_summary(summary)
    record.close()
    if summary["status"] != "completed":
        raise RuntimeError(f"pretraining {summary['status']}: {summary.get('error')}")
    state = {k: v.cpu() for k, v in model.state_dict().items()}
    atomic_write(weights, lambda f: torch.save(state, f))
    torch.set_rng_state(rng)
    torch.set_num_threads(threads)
