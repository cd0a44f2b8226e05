"""Shared test helpers: a tiny, fast configuration and ways to run the entry point."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench.manifolds import GEOMETRIES, make

ROOT = Path(__file__).resolve().parents[1]

# A model and budget small enough for a run in about a second on one core.
TINY = [
    "model.init=scratch",
    "model.d_model=32",
    "model.n_layer=1",
    "model.n_head=2",
    "model.seq_len=32",
    "trainer.max_steps=12",
    "trainer.batch_size=4",
    "trainer.eval_every=6",
    "trainer.log_every=3",
    "trainer.checkpoint_every=6",
    "trainer.progress=false",
    "data.eval_batches=2",
    "logger=none",
    "metrics.hessian.every=0",  # the default sweep's end-of-run estimate: only where a test asks
]


# Every geometry with its defaults, plus its non-default constructor options (tests of the
# manifolds and of the optimizers run on all of them): id -> (geometry, options for `make`).
GEOMETRY_VARIANTS = {
    **{name: (name, {}) for name in GEOMETRIES},
    "fixed_rank_embedded-orthographic": ("fixed_rank_embedded", {"retraction": "orthographic"}),
}


def pytest_configure(config):
    """`make test` runs the suite on parallel workers (pytest-xdist, one per core): each worker
    is pinned to its share of the cores, so its in-process tests and the `python -m bench.run`
    subprocesses it starts (which inherit the affinity; bench.metrics.cost.usable_cpus) never
    oversubscribe the machine."""
    worker = os.environ.get("PYTEST_XDIST_WORKER")  # gw0, gw1, ...
    if not worker or not hasattr(os, "sched_setaffinity"):
        return
    cpus = sorted(os.sched_getaffinity(0))
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    share = cpus[int(worker.removeprefix("gw")) % len(cpus)::max(1, min(count, len(cpus)))]
    os.sched_setaffinity(0, share)
    torch.set_num_threads(len(share))


def fixture_config_id(row: dict) -> str:
    """The `meta.config_id` bench records, for a flat fixture row of a run table: the digest
    (bench.record.config_digest) of its dotted config keys, without the seed."""
    from bench.record import config_digest

    nested: dict = {}
    for key, value in row.items():
        if "." not in key or key.startswith("meta."):
            continue
        *parents, last = key.split(".")
        node = nested
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return config_digest(nested, {}, leave_out=("seed",))


def make_variant(variant: str, n: int, m: int, r: int):
    """The manifold of a GEOMETRY_VARIANTS id for n x m matrices of rank r."""
    name, options = GEOMETRY_VARIANTS[variant]
    return make(name, n, m, r, **options)


def compose(overrides: list[str]):
    """The config `python -m bench.run <overrides>` would get, composed in-process."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from bench.config import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return hydra_compose("config", overrides=overrides)


def config_error(overrides: list[str]) -> str:
    """The line `python -m bench.run OVERRIDES` prints for a bad config, found in process by the
    checks the entry point makes before any run folder exists: unknown keys on the command
    line, Hydra's composition against the schema, `validate`, then building everything
    (`prepare`). Fails the test when the config is accepted."""
    from bench.config import ConfigError, check_override_keys, validate
    from bench.run import prepare

    try:
        check_override_keys(overrides)
        cfg = compose(overrides)
        validate(cfg)
        prepare(cfg)
    except ConfigError as e:
        return f"error: {e}"  # as bench.run's main prints it to stderr before exiting with 2
    raise AssertionError(f"{overrides} was accepted")


# Sweeps whose launcher is not the point run one after another in one process (conf/hydra/
# launcher/serial.yaml): joblib's worker processes each import torch again (~5 s a process).
# The default launcher (joblib) keeps its own end-to-end tests.
SERIAL = "hydra/launcher=serial"


def run_analysis(runs: Path, figures: Path) -> str:
    """`python -m analysis runs=RUNS figures=FIGURES`, in process (analysis imports nothing
    from bench/); fails the test on a non-zero exit. Returns what it printed."""
    import contextlib
    import io

    from analysis.__main__ import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        code = main([f"runs={runs}", f"figures={figures}"])
    assert code == 0, out.getvalue()[-3000:]
    return out.getvalue()


def run_cli(args: list[str], env_extra: dict | None = None, timeout: int = 300):
    """Run `python -m bench.run ARGS` in a subprocess from the repo root."""
    env = {**os.environ, "WANDB_MODE": "disabled", "WANDB_SILENT": "true", **(env_extra or {})}
    return subprocess.run(
        [sys.executable, "-m", "bench.run", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def kill_at_first_checkpoint(args: list[str], out_dir: Path, timeout: float = 120,
                             env: dict | None = None) -> Path:
    """Start `python -m bench.run ARGS out_dir=OUT_DIR`, SIGKILL it as soon as its first
    checkpoint.pt exists (the run must still be going), and return that checkpoint's path.
    `env`: the subprocess's environment (default: this one with W&B disabled)."""
    import signal
    import time

    env = env if env is not None else {**os.environ, "WANDB_MODE": "disabled"}
    proc = subprocess.Popen([sys.executable, "-m", "bench.run", *args, f"out_dir={out_dir}"],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline, checkpoint = time.time() + timeout, None
    while time.time() < deadline and proc.poll() is None:
        found = list(Path(out_dir).glob("*/*/checkpoint.pt"))
        if found:
            checkpoint = found[0]
            break
        time.sleep(0.02)
    alive = proc.poll() is None
    if alive:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert checkpoint is not None and alive, "run ended before its first checkpoint"
    return checkpoint


def run_dirs(out_dir: Path) -> list[Path]:
    """Run directories under out_dir (those with a config.yaml; not Hydra's or submitit's)."""
    return sorted(p.parent for p in Path(out_dir).glob("*/*/config.yaml"))


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


@pytest.fixture
def tiny(tmp_path):
    """Overrides for a tiny run writing under tmp_path."""
    return [*TINY, f"out_dir={tmp_path / 'runs'}"]


@pytest.fixture
def finished(tiny, tmp_path):
    """A completed tiny run (12 steps: rows at 0, 3, ..., 12; checkpoints at 6 and 12): its
    folder."""
    from bench.run import run

    assert run(compose(tiny))["status"] == "completed"
    (run_dir,) = run_dirs(tmp_path / "runs")
    return run_dir


@pytest.fixture
def one_thread():
    """One intra-op thread, as a sweep worker has: tiny ops, shared cores, less timing noise."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


# ------------------------------------------------------------------- make perf: one table
# Every perf test adds its ratios here (`perf_table`); at the end of the session they are
# printed as one table and, when PERF_RESULTS names a folder (make perf), written to
# PERF_RESULTS/<date>.md with the machine and its load, so the trend across machines is kept.
PERF_ROWS: list[dict] = []
_PERF_LOAD: dict = {}


@pytest.fixture
def perf_table():
    """add(check, measured, goal, holds, bound="", asserted=True): one row of make perf's
    table. `goal` states the target ("<= 1.10"), `holds` whether the measured value meets it,
    `bound` what this run measured it against, `asserted` whether the test asserts it (False:
    a goal this machine cannot meet, printed only)."""
    _PERF_LOAD.setdefault("before", os.getloadavg())

    def add(check: str, measured: str, goal: str, holds: bool, bound: str = "",
            asserted: bool = True):
        PERF_ROWS.append(dict(check=check, measured=measured, goal=goal, bound=bound,
                              holds="yes" if holds else "**no**",
                              asserted="yes" if asserted else "no (printed only)"))
    return add


def _perf_markdown() -> str:
    import datetime
    import platform

    info = Path("/proc/cpuinfo").read_text() if os.path.exists("/proc/cpuinfo") else ""
    cpu = next((line.split(":", 1)[1].strip() for line in info.splitlines()
                if line.startswith("model name")), platform.processor())
    bf16 = next((flag for flag in ("amx_bf16", "avx512_bf16") if flag in info), "none")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True,
                            capture_output=True).stdout.strip()
    before, after = _PERF_LOAD.get("before", ("?",) * 3), os.getloadavg()
    head = [
        f"# make perf, {datetime.date.today().isoformat()}",
        "",
        f"- machine: {cpu}, {os.cpu_count()} cores, native bfloat16: {bf16}; torch "
        f"{torch.__version__}, {torch.get_num_threads()} intra-op threads; commit {commit}",
        f"- load average (1, 5, 15 min) at the first perf test: "
        f"{', '.join(f'{x:.2f}' for x in before)}; at the end: "
        f"{', '.join(f'{x:.2f}' for x in after)}",
        "- ratios are measured side by side in one process (interleaved, best of rounds); "
        "`bound` is what the same run measured the goal against",
        "",
        "| check | measured | goal | holds | bound (this run) | asserted |",
        "|---|---|---|---|---|---|",
    ]
    rows = [f"| {r['check']} | {r['measured']} | {r['goal']} | {r['holds']} | {r['bound']} | "
            f"{r['asserted']} |" for r in PERF_ROWS]
    return "\n".join(head + rows) + "\n"


def pytest_terminal_summary(terminalreporter):
    if not PERF_ROWS:
        return
    text = _perf_markdown()
    terminalreporter.write_sep("=", "make perf: every ratio")
    terminalreporter.write(text)
    folder = os.environ.get("PERF_RESULTS")
    if folder:
        import datetime

        path = Path(folder) if Path(folder).is_absolute() else ROOT / folder
        path.mkdir(parents=True, exist_ok=True)
        out = path / f"{datetime.date.today().isoformat()}.md"
        out.write_text(text)
        terminalreporter.write_line(f"written to {out.relative_to(ROOT)}")
