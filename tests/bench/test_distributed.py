"""One run on two CPU processes (gloo, DDP; bench/distributed.py) is the one-process run with the
same global batch: the same loss curve to float rounding, for AdamW, a Riemannian geometry,
BaLoRA and Muon; the two ranks hold bitwise-equal weights; one record, written by rank 0; a run
stopped under 2 processes resumes under 1, and one stopped under 1 resumes under 2.

The two ranks are started once, by torch.multiprocessing.spawn with torchrun's environment, and
run every job through bench.run.run (tests/e2e/test_torchrun.py starts torchrun itself)."""

from __future__ import annotations

import json
import os
import socket
from functools import partial
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from bench import distributed
from bench.distributed import SINGLE, Group
from tests.conftest import TINY, compose, read_jsonl, run_dirs

# optimizer (and what it needs) -> overrides on top of TINY; method name in the record
CASES = {
    "adamw": ([], "full/adamw"),
    "riemannian_adam": (["model.attention.geometry=fixed_rank_quotient",
                         "optimizer=riemannian_adam"],
                        "full/riemannian_adam/fixed_rank_quotient"),
    "balora": (["adapter=balora"], "balora/adamw"),
    "muon": (["optimizer=muon"], "full/muon"),
}
# Float rounding: the two processes sum the batch's gradient in two halves. Muon rounds its
# Newton-Schulz iteration to bfloat16 (3 digits), so a last-bit difference can move one rounding.
RTOL = {"muon": 1e-3}
DEFAULT_RTOL = 1e-5


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Stop(BaseException):
    """A run stopped between two steps, as a kill would leave it (a BaseException: the skeleton
    records no failure, the record stays `running` with its last checkpoint)."""


def run_jobs(jobs: dict, out: Path) -> None:
    """Run each job (name -> (overrides, a step to stop at or None)) through bench.run.run in
    this process; save the weights of each completed run, and the batch sizes its training
    forwards saw, to <out>/<name>-rank<r>.pt."""
    import bench.run as bench_run

    lm, built, stop, rows = bench_run.TASKS["lm"], [], [None], set()

    def prepare(cfg, inputs):  # the test's window on the model each rank trains (rank 1 writes
        built.append(lm.prepare(cfg, inputs))  # nothing)
        rows.clear()
        built[-1].parts["model"].register_forward_pre_hook(
            lambda module, args: rows.add(args[0].shape[0]) if module.training else None)
        if stop[0] is not None:
            built[-1].parts["hooks"].append(partial(_stop, stop[0]))
        return built[-1]

    bench_run.TASKS["lm"] = bench_run.Task(lm.identify, prepare, lm.execute, lm.describe)
    try:
        for name, (overrides, stop[0]) in jobs.items():
            if stop[0] is not None:
                with pytest.raises(Stop):
                    bench_run.run(compose(overrides))
                continue
            summary = bench_run.run(compose(overrides))
            assert summary["status"] == "completed", summary
            weights = {k: v.detach().cpu().clone()
                       for k, v in built[-1].parts["model"].state_dict().items()}
            torch.save({"weights": weights, "train_rows": sorted(rows)},
                       out / f"{name}-rank{distributed.current().rank}.pt")
    finally:
        bench_run.TASKS["lm"] = lm


def _stop(at: int, step: int, model) -> dict:
    """A measurement hook (called at each logged row) that stops the run at step `at`."""
    if step == at:
        raise Stop
    return {}


def _rank(rank: int, world: int, port: int, jobs: dict, out: str) -> None:
    """One rank, started by torch.multiprocessing.spawn with torchrun's environment."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), WANDB_MODE="disabled")
    torch.set_num_threads(1)
    run_jobs(jobs, Path(out))


def _rows(run_dir: Path) -> list[dict]:
    return read_jsonl(run_dir / "metrics.jsonl")


def _record(out: Path, method: str) -> Path:
    (found,) = [d for d in run_dirs(out) if _meta(d)["method"] == method]
    return found


def _meta(run_dir: Path) -> dict:
    import yaml

    return yaml.safe_load((run_dir / "config.yaml").read_text())["meta"]


def _same_curve(a: Path, b: Path, rtol: float) -> None:
    """The same rows (no row twice: rank 1 appended none) with the same numbers to `rtol`."""
    rows_a, rows_b = _rows(a), _rows(b)
    assert [r["step"] for r in rows_a] == [r["step"] for r in rows_b]
    for ra, rb in zip(rows_a, rows_b):
        for key in ("train/loss", "eval/loss", "test/loss", "grad_norm"):
            if key in ra:
                assert rb[key] == pytest.approx(ra[key], rel=rtol), (b, ra["step"], key)
    assert rows_a[-1]["eval/loss"] < rows_a[0]["eval/loss"]  # it trained


def _two_ranks_match_one(tmp_path: Path, jobs: dict, one: Path, two: Path, extra: list[str],
                         rtol: dict, default_rtol: float) -> None:
    """Spawn the two ranks on `jobs` (CASES among them, into `two`), run each case in this
    process into `one`, and compare: one record per run, the same curve, bitwise-equal ranks
    that each trained on half of the batch."""
    from bench.run import run

    mp.spawn(_rank, args=(2, _free_port(), jobs, str(tmp_path)), nprocs=2)  # raises if one fails
    assert len(run_dirs(two)) == len(CASES)  # one record per run: rank 1 wrote none
    for name, (overrides, method) in CASES.items():
        assert run(compose([*TINY, *overrides, *extra, f"out_dir={one}"]))["status"] == "completed"
        a, b = _record(one, method), _record(two, method)
        assert (_meta(a)["world_size"], _meta(b)["world_size"]) == (1, 2)
        _same_curve(a, b, rtol.get(name, default_rtol))
        rank0, rank1 = (torch.load(tmp_path / f"{name}-rank{r}.pt") for r in (0, 1))
        assert rank0["train_rows"] == rank1["train_rows"] == [2]  # a half of the batch of 4
        rank0, rank1 = rank0["weights"], rank1["weights"]
        assert rank0.keys() == rank1.keys()
        for key in rank0:
            assert torch.equal(rank0[key], rank1[key]), (name, key)


def test_two_processes_train_the_one_process_run_and_resume_under_another_count(tmp_path):
    from bench.run import run

    out = {k: tmp_path / k for k in ("one", "two", "stopped_under_1", "stopped_under_2")}
    adamw = [*TINY, *CASES["adamw"][0]]
    # a run stopped at step 9 (its checkpoint: step 6) under 1 process, resumed under 2 below
    run_jobs({"stop": ([*adamw, f"out_dir={out['stopped_under_1']}"], 9)}, tmp_path)
    jobs = {name: ([*TINY, *extra, f"out_dir={out['two']}"], None)
            for name, (extra, _) in CASES.items()}
    jobs["resume"] = ([*adamw, f"out_dir={out['stopped_under_1']}"], None)
    jobs["stop"] = ([*adamw, f"out_dir={out['stopped_under_2']}"], 9)
    _two_ranks_match_one(tmp_path, jobs, out["one"], out["two"], [], RTOL, DEFAULT_RTOL)
    # resumed under another number of processes: the uninterrupted run's curve
    (stopped,) = run_dirs(out["stopped_under_2"])
    assert json.loads((stopped / "summary.json").read_text())["status"] == "running"
    assert torch.load(stopped / "checkpoint.pt", weights_only=True)["step"] == 6
    assert run(compose([*adamw, f"out_dir={out['stopped_under_2']}"]))["status"] == "completed"
    reference = _record(out["one"], "full/adamw")
    for folder, world_size in (("stopped_under_1", 2), ("stopped_under_2", 1)):
        (resumed,) = run_dirs(out[folder])
        assert _meta(resumed)["world_size"] == world_size  # the last launch's
        _same_curve(reference, resumed, DEFAULT_RTOL)


def test_a_rank_trains_on_its_shard_weighted_by_its_counted_tokens():
    """Rank r takes rows [r B/N, (r+1) B/N); its loss weight is its share of the counted
    targets times N, so the ranks' mean of weighted losses is the global mean loss."""
    x = torch.arange(8).reshape(4, 2)
    y = torch.tensor([[1, 1], [1, -100], [-100, -100], [-100, 1]])  # 3 + 1 counted of 4
    shards = [Group(rank, 2).shard(x, y) for rank in range(2)]
    assert torch.equal(shards[0][0], x[:2]) and torch.equal(shards[1][1], y[2:])
    assert [w for *_, w in shards] == [1.5, 0.5]
    losses = [torch.tensor(2.0), torch.tensor(6.0)]  # per-rank mean over its counted targets
    weighted = [Group.weighted(loss, w) for loss, (*_, w) in zip(losses, shards)]
    assert sum(weighted) / 2 == (3 * 2.0 + 1 * 6.0) / 4
    # a shard with no counted target: zero loss, zero gradient, not NaN
    nan = torch.tensor(float("nan"), requires_grad=True)
    zero = Group.weighted(nan, 0.0)
    zero.backward()
    assert zero.item() == 0.0 and nan.grad.item() == 0.0
    assert SINGLE.shard(x, y) == (x, y, 1.0)


def test_a_global_batch_the_processes_do_not_divide_is_refused():
    from bench.config import ConfigError

    with pytest.raises(ConfigError, match="trainer.batch_size=6 .* multiple of the 4"):
        Group(0, 4).check(compose([*TINY, "trainer.batch_size=6"]))
    with pytest.raises(ConfigError, match="task=toy runs in one process"):
        Group(0, 2).check(compose(["+experiment=balora_toy"]))
    SINGLE.check(compose([*TINY, "trainer.batch_size=6"]))  # one process: any batch


@pytest.mark.parametrize(("launcher", "in_process"), [("serial", True), ("local", False),
                                                      ("submitit_local_test", False)])
def test_under_torchrun_a_sweep_runs_its_cells_in_the_ranks_processes(launcher, in_process,
                                                                      monkeypatch):
    """A launcher that starts other processes (joblib, submitit) would start them outside the
    ranks' group: under torchrun each such cell is refused in one line."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from bench.config import ConfigError, register_configs
    from bench.run import _launched_in_process, run
    from tests.conftest import ROOT

    register_configs()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = hydra_compose("config", overrides=[*TINY, f"hydra/launcher={launcher}"],
                            return_hydra_config=True)
    cfg.hydra.mode = RunMode.MULTIRUN
    monkeypatch.setattr(HydraConfig.instance(), "cfg", None)
    HydraConfig.instance().set_config(cfg)
    assert _launched_in_process() is in_process
    monkeypatch.setenv("WORLD_SIZE", "2")
    if not in_process:
        with pytest.raises(ConfigError, match="allowed: a single run or hydra/launcher=serial"):
            run(cfg)


@pytest.mark.cuda
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA devices")
def test_two_gpus_train_the_one_gpu_run_and_stay_bitwise_equal(tmp_path):
    """The same on two GPUs (nccl, cuda:0 and cuda:1) against one (make gpu-check runs it where
    the machine has two). cuBLAS may pick other kernels for half the batch: a looser rounding."""
    cuda = ["trainer.device=cuda"]
    one, two = tmp_path / "one", tmp_path / "two"
    jobs = {name: ([*TINY, *extra, *cuda, f"out_dir={two}"], None)
            for name, (extra, _) in CASES.items()}
    _two_ranks_match_one(tmp_path, jobs, one, two, cuda, {"muon": 1e-2}, 1e-4)
