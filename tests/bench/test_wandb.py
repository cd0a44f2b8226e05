"""The W&B mirror (bench/tracking/wandb.py): what an offline run writes, and that W&B can fail.

The offline run's `.wandb` transaction log is read back with W&B's own reader,
`wandb leet inspect --json` (the wandb-core binary prints one JSON object per record), so the
test checks what `wandb sync` would upload, not what our code meant to write.
"""

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from bench.tracking.wandb import WandbLogger

REPO = Path(__file__).resolve().parents[2]
FAST = [
    "model.init=scratch", "model.d_model=32", "model.n_layer=1", "model.n_head=2",
    "model.seq_len=32", "trainer.max_steps=12", "trainer.batch_size=4", "trainer.eval_every=6",
    "trainer.log_every=3", "trainer.progress=false",
]


def wandb_env(tmp_path: Path, **extra: str) -> dict:
    """The environment minus every WANDB_* variable (`make test` sets WANDB_MODE=disabled for
    the whole suite, which would hide the offline run), with W&B's home kept in tmp_path."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    home = tmp_path / "wandb_home"
    env.update(
        WANDB_SILENT="true",
        WANDB_CONFIG_DIR=str(home / "config"),
        WANDB_CACHE_DIR=str(home / "cache"),
        WANDB_DATA_DIR=str(home / "data"),
        **extra,
    )
    return env


def bench_run(tmp_path: Path, logger: str) -> Path:
    """One small run in a subprocess; returns its run directory."""
    out_dir = tmp_path / "runs"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.run", *FAST, f"logger={logger}", f"out_dir={out_dir}"],
        cwd=REPO, env=wandb_env(tmp_path), capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run_dirs = [p.parent for p in out_dir.glob("*/*/summary.json")]
    assert len(run_dirs) == 1, run_dirs
    summary = json.loads((run_dirs[0] / "summary.json").read_text())
    assert summary["status"] == "completed", summary
    return run_dirs[0]


def read_wandb_log(path: Path, tmp_path: Path) -> list[dict]:
    """Every record of a .wandb file, decoded by W&B itself (`wandb leet inspect --json`)."""
    proc = subprocess.run(
        [sys.executable, "-m", "wandb", "leet", "inspect", "--json", str(path)],
        # offline: wandb-core is started with --no-observability and reports to no server
        cwd=tmp_path, env=wandb_env(tmp_path, WANDB_MODE="offline"), stdin=subprocess.DEVNULL,
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]






def logger_kwargs(tmp_path: Path) -> dict:
    return dict(
        mode="offline", project="lowrank-bench", entity=None, run_dir=tmp_path, name="x s0",
        group="g", tags=["lora", "adamw"], config={"seed": 0}, run_id="x-s0-0",
    )


def test_wandb_failure_does_not_stop_training(tmp_path, monkeypatch):
    import wandb

    monkeypatch.setenv("WANDB_SILENT", "true")  # WandbLogger sets it; restored afterwards
    monkeypatch.delenv("WANDB_MODE", raising=False)  # make test's "disabled" would skip init

    def broken_init(*args, **kwargs):
        raise RuntimeError("no W&B today")

    monkeypatch.setattr(wandb, "init", broken_init)
    with pytest.warns(UserWarning, match=r"W&B could not start \(RuntimeError: no W&B today\)"):
        logger = WandbLogger(**logger_kwargs(tmp_path))
    assert logger.run is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second warning, no exception
        logger.log({"step": 1, "train/loss": 1.0})
        logger.finish({"status": "completed"})
    assert not (tmp_path / "wandb").exists()


def test_wandb_failing_mid_run_warns_once(tmp_path, monkeypatch):
    import wandb

    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_MODE", raising=False)
    calls = []

    class BrokenRun:
        summary: dict = {}

        def define_metric(self, *args, **kwargs):
            pass

        def log(self, row):
            calls.append(row)
            raise OSError("disk full")

        def finish(self, exit_code=0):
            calls.append("finish")

    monkeypatch.setattr(wandb, "init", lambda *a, **k: BrokenRun())
    logger = WandbLogger(**logger_kwargs(tmp_path))
    with pytest.warns(UserWarning, match=r"W&B could not log \(OSError: disk full\)") as caught:
        logger.log({"step": 1, "train/loss": 1.0, "eval/loss": None})
        logger.log({"step": 2, "train/loss": 0.9})  # W&B is off now: a no-op
        logger.finish({"status": "completed"})
    assert len(caught) == 1
    assert calls == [{"step": 1, "train/loss": 1.0}]


def test_wandb_mode_environment_variable_wins(tmp_path, monkeypatch):
    """WANDB_MODE=disabled (as `make test` sets) turns W&B off whatever the config says."""
    import wandb

    from bench.tracking.wandb import WandbLogger

    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setattr(wandb, "init", lambda **kw: pytest.fail("wandb.init was called"))
    logger = WandbLogger(mode="offline", project="p", entity=None, run_dir=tmp_path, name="n",
                         group="g", tags=[], config={}, run_id="x")
    assert logger.run is None


def wandb_history(folder: Path, tmp_path: Path) -> tuple[list[dict], dict]:
    """The history rows and the final summary of one offline-run folder, as W&B decodes them."""
    (log,) = folder.glob("run-*.wandb")
    history, summary = [], {}
    for rec in read_wandb_log(log, tmp_path):
        if rec["type"] == "history":
            history.append(rec["history"]["item"])
        elif rec["type"] == "summary":
            summary.update(rec["summary"].get("update", {}))
    return history, summary




class FakeRun:
    """What WandbLogger uses of a wandb run; its folder is made as wandb.init makes one."""

    def __init__(self, root: Path, number: int, run_id: str):
        folder = root / "wandb" / f"offline-run-2026010{number}_000000-{run_id}"
        (folder / "files").mkdir(parents=True)
        self.dir, self.rows, self.summary, self.exit_code = str(folder / "files"), [], {}, None

    def define_metric(self, *args, **kwargs):
        pass

    def log(self, row):
        self.rows.append(row)

    def finish(self, exit_code=0):
        self.exit_code = exit_code


def fake_wandb(tmp_path, monkeypatch, mode: str = "offline") -> list[FakeRun]:
    import wandb

    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_MODE", mode)
    runs: list[FakeRun] = []

    def init(**kwargs):
        runs.append(FakeRun(tmp_path, len(runs), kwargs["id"]))
        return runs[-1]

    monkeypatch.setattr(wandb, "init", init)
    return runs


def write_rows(run_dir: Path, steps: list[int]) -> list[dict]:
    rows = [{"step": s, "train/loss": 1.0 / (s + 1), "eval/loss": None} for s in steps]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return [{k: v for k, v in r.items() if v is not None} for r in rows]


def test_rows_after_the_last_logged_are_appended_to_the_same_run(tmp_path, monkeypatch):
    runs = fake_wandb(tmp_path, monkeypatch)
    rows = write_rows(tmp_path, [0, 3, 6, 7])  # 7: the row of a diverged step (record only)
    logger = WandbLogger(**logger_kwargs(tmp_path))
    for row in rows[:3]:
        logger.log(row)
    logger.finish({"status": "diverged"})
    assert len(runs) == 1 and runs[0].rows == rows and runs[0].exit_code == 1
    assert not (tmp_path / "wandb" / "partial").exists()


def test_resumed_offline_run_is_replayed_and_its_segments_set_apart(tmp_path, monkeypatch):
    runs = fake_wandb(tmp_path, monkeypatch)
    rows = write_rows(tmp_path, [0, 3, 6, 9, 12])
    killed = FakeRun(tmp_path, 9, "x-s0-0")  # an earlier process's folder of the same id
    logger = WandbLogger(**logger_kwargs(tmp_path))
    for row in rows[2:]:  # resumed from the checkpoint at step 6
        logger.log(row)
    logger.finish({"status": "completed", "steps": 12})
    assert len(runs) == 2 and runs[0].rows == rows[2:] and runs[1].rows == rows
    assert runs[1].summary == {"status": "completed", "steps": 12} and runs[1].exit_code == 0
    assert [p.name for p in (tmp_path / "wandb").glob("offline-run-*")] == \
        [Path(runs[1].dir).parent.name]
    assert sorted(p.name for p in (tmp_path / "wandb" / "partial").iterdir()) == sorted(
        [Path(runs[0].dir).parent.name, Path(killed.dir).parent.name])


def test_resumed_online_run_is_not_replayed(tmp_path, monkeypatch):
    runs = fake_wandb(tmp_path, monkeypatch, mode="online")
    rows = write_rows(tmp_path, [0, 3, 6, 9, 12])
    logger = WandbLogger(**logger_kwargs(tmp_path))
    for row in rows[2:]:
        logger.log(row)
    logger.finish({"status": "completed"})
    assert len(runs) == 1 and runs[0].rows == rows[2:]  # nothing appended twice


def test_the_dashboard_config_is_flat_and_holds_only_what_applies(tiny):
    """AdamW's run shows no LoRA+ ratio nor preconditioner damping, no toy keys, of its study
    only what analysis reads back; every key flat and dotted; the swept keys named."""
    from omegaconf import OmegaConf

    from bench.tracking.wandb import dashboard_config
    from tests.conftest import compose

    cfg = compose([*tiny, "adapter=lora", "optimizer=adamw"])
    resolved = {**OmegaConf.to_container(cfg, resolve=True), "meta": {"method": "lora/adamw"}}
    owned = {"adapter": {"name", "target_modules", "r", "alpha", "scale", "dropout", "init",
                         "rslora", "geometry", "init_scale"},
             "optimizer": {"name", "lr", "weight_decay", "betas", "eps"}}
    shown = dashboard_config(resolved, owned, ["adapter.r", "optimizer.lr"])
    assert all(not isinstance(v, dict) for v in shown.values())  # flat
    assert shown["optimizer.lr"] == cfg.optimizer.lr and shown["adapter.r"] == cfg.adapter.r
    assert shown["swept"] == "adapter.r,optimizer.lr" and shown["meta.method"] == "lora/adamw"
    for absent in ("optimizer.lr_ratio", "optimizer.reg", "optimizer.momentum",
                   "adapter.project_every", "toy.n", "study.stages", "study.smoke"):
        assert absent not in shown, absent
    assert "study.baseline" in shown and "study.tuning_seeds" in shown


def test_a_run_name_says_what_its_sweep_varies(tiny):
    from omegaconf import OmegaConf

    from bench.run import run_name
    from tests.conftest import compose

    cfg = compose([*tiny, "adapter=lora", "adapter.r=16", "optimizer.lr=0.003", "seed=2"])
    resolved = OmegaConf.to_container(cfg, resolve=True)
    assert run_name(cfg, resolved, ["adapter", "adapter.r", "optimizer.lr", "seed"]) == (
        "lora/adamw r=16 lr=0.003 s2")
    assert run_name(cfg, resolved, []) == "lora/adamw s2"
    # two swept keys that end alike are named whole
    assert "model.pretrain.lr=" in run_name(cfg, resolved, ["optimizer.lr", "model.pretrain.lr"])


def test_peak_memory_is_each_run_s_own(tmp_path, tiny):
    """Two runs in one worker process: the second's peak does not include a big allocation the
    process made before it started (the lifetime peak, ru_maxrss, would). In a fresh process,
    so that what earlier tests left in this one (a test worker's retained memory) cannot make
    the runs' own peaks the lifetime one."""
    script = f"""
import json, resource, torch
from bench.run import run
from tests.conftest import compose
tiny = {tiny!r}
first = run(compose(tiny))["peak_mem_mb"]
big = torch.ones(64 * 2**20)  # 256 MiB, touched
big.add_(1)
del big
lifetime = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
second = run(compose([*tiny, "seed=1"]))["peak_mem_mb"]
print(json.dumps([first, lifetime, second]))
"""
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "WANDB_MODE": "disabled"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    first, lifetime, second = json.loads(proc.stdout.strip().splitlines()[-1])
    assert second < lifetime - 200 and abs(second - first) < 100
