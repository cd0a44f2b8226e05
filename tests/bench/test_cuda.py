"""The CUDA paths (marker `cuda`; skipped where torch.cuda.is_available() is false).

Run with `pytest -m cuda tests/bench/test_cuda.py`; `make gpu-check` runs them first. Training goes
through the CLI (`python -m bench.run ... trainer.device=cuda`), the geometries and optimizers
in process. Tolerance of the geometry checks: ||out_cuda_f32 - ref_cpu_f64|| / ||ref|| <= 1e-4
(float32 arithmetic lands near 1e-6 on these ops; the SVD/QR-based ones lose up to two digits to
the conditioning of the random points; TF32 is switched off, since it alone gives ~3e-4).
"""

from __future__ import annotations

import json

import geoopt
import pytest
import torch
import yaml

from bench.optim.riemannian import RIEMANNIAN_OPTIMIZERS
from tests.bench.test_riemannian_optim import approximation_problem, solve
from tests.conftest import (
    GEOMETRY_VARIANTS,
    kill_at_first_checkpoint,
    make_variant,
    read_jsonl,
    run_cli,
    run_dirs,
)

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"),
]

TOL = 1e-4  # relative Frobenius error of float32 on CUDA against float64 on the CPU
# one head, one GQA group of 3 heads (tests/bench/test_manifolds.py), and one KV group of
# model=knight
# with 2 KV groups (4 query heads of width 64 stacked on a 512-wide factor)
SHAPES = {"per_head": (12, 12, 3), "per_kv_group": (36, 12, 3), "knight_kv_group": (2048, 512, 64)}

TINY_CUDA = [
    "model.init=scratch", "model.d_model=32", "model.n_layer=1", "model.n_head=2",
    "model.seq_len=32", "trainer.batch_size=4", "trainer.progress=false", "data.eval_batches=2",
    "logger=none", "trainer.device=cuda",
]


@pytest.fixture(autouse=True)
def no_tf32():
    """Plain float32 matmuls for the geometry checks (the training runs are subprocesses)."""
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32 = previous


# -------------------------------------------------------------------------- runs on CUDA
def test_a_run_completes_on_cuda_and_resumes_from_its_checkpoint(tmp_path):
    args = [*TINY_CUDA, "trainer.max_steps=2000", "trainer.eval_every=500",
            "trainer.log_every=10", "trainer.checkpoint_every=50"]
    checkpoint = kill_at_first_checkpoint(args, tmp_path, timeout=180)
    (run_dir,) = run_dirs(tmp_path)
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "running"
    saved = torch.load(checkpoint, map_location="cpu", weights_only=False)["step"]
    assert 0 < saved < 2000
    text = (run_dir / "metrics.jsonl").read_text()  # a line torn by the kill is not kept
    kept = [json.loads(line) for line in text[: text.rfind("\n") + 1].splitlines()]
    kept = [r for r in kept if r["step"] <= saved]

    resumed = run_cli([*args, f"out_dir={tmp_path}"])
    assert resumed.returncode == 0, resumed.stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == 2000
    rows = read_jsonl(run_dir / "metrics.jsonl")
    steps = [r["step"] for r in rows]
    assert steps == sorted(set(steps)) and steps[-1] == 2000
    # the rows up to the checkpoint were kept as written (wall_s too): it resumed, not restarted
    assert [r for r in rows if r["step"] <= saved] == kept
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["meta"]["device"].startswith("cuda"), config["meta"]["device"]
    assert summary["final_eval_loss"] < rows[0]["eval/loss"]


def test_bf16_autocast_and_tf32_runs_complete_and_bf16_changes_the_numbers(tmp_path):
    proc = run_cli(["-m", *TINY_CUDA, "trainer.max_steps=20", "trainer.eval_every=10",
                    "trainer.log_every=5", "trainer.checkpoint_every=10", f"out_dir={tmp_path}",
                    "hydra/launcher=serial", "hydra.sweeper.params=null",
                    "trainer.dtype=float32,bfloat16", "trainer.tf32=false,true"])
    assert proc.returncode == 0, proc.stderr
    loss = {}
    for run_dir in run_dirs(tmp_path):
        summary = json.loads((run_dir / "summary.json").read_text())
        config = yaml.safe_load((run_dir / "config.yaml").read_text())
        dtype, tf32 = config["trainer"]["dtype"], config["trainer"]["tf32"]
        assert config["meta"]["device"].startswith("cuda"), config["meta"]["device"]
        assert summary["status"] == "completed", (dtype, tf32, summary["error"])
        first = read_jsonl(run_dir / "metrics.jsonl")[0]["eval/loss"]
        assert summary["final_eval_loss"] < first, (dtype, tf32)
        loss[dtype, tf32] = summary["final_eval_loss"]
    assert len(loss) == 4
    fp32, bf16 = loss["float32", False], loss["bfloat16", False]
    assert bf16 != fp32, "bf16 autocast left every number as float32 computed it"
    assert abs(bf16 - fp32) < 0.05 * fp32  # the same training, rounded differently
    assert abs(loss["float32", True] - fp32) < 0.05 * fp32


# ------------------------------------------------------------- geometries: CUDA f32 vs CPU f64
def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.detach().double().cpu(), ref.detach().double().cpu()
    assert torch.isfinite(out).all()
    return float(torch.linalg.norm(out - ref) / torch.linalg.norm(ref))


def manifold_ops(manifold, x, e, u, v, device, dtype):
    """Every operation of a geometry on (x, egrad e, ambient u, v) moved to device/dtype; points
    and tangents compared as dense matrices (their factors are defined up to signs/GL(r))."""
    x, e, u, v = (t.to(device=device, dtype=dtype) for t in (x, e, u, v))
    ut = manifold.proju(x, u)
    vt = manifold.proju(x, v)
    step = 0.3 * ut / manifold.norm(x, ut)
    y = manifold.retr(x, step)
    return {
        "projx": manifold.to_dense(manifold.projx(x + 0.1 * u)),
        "proju": manifold.tangent_to_dense(x, ut),
        "egrad2rgrad": manifold.tangent_to_dense(x, manifold.egrad2rgrad(x, e)),
        "retr": manifold.to_dense(y),
        "transp": manifold.tangent_to_dense(y, manifold.transp(x, y, vt)),
        "inner": manifold.inner(x, ut, vt).reshape(1),
        "norm": manifold.norm(x, ut).reshape(1),
    }


def compare_geometry(variant: str, shape: tuple[int, int, int], device: str, dtype) -> dict:
    """op -> relative error of `device`/`dtype` against the CPU in float64."""
    manifold = make_variant(variant, *shape)
    g = torch.Generator().manual_seed(0)
    x = manifold.random_point(dtype=torch.float64, generator=g)
    e, u, v = (torch.randn(x.shape, dtype=torch.float64, generator=g) for _ in range(3))
    ref = manifold_ops(manifold, x, e, u, v, "cpu", torch.float64)
    out = manifold_ops(manifold, x, e, u, v, device, dtype)
    return {op: rel_err(out[op], ref[op]) for op in ref}


@pytest.mark.parametrize("shape", list(SHAPES), ids=list(SHAPES))
@pytest.mark.parametrize("variant", list(GEOMETRY_VARIANTS))
def test_manifold_operations_on_cuda_float32_match_cpu_float64(variant, shape):
    errors = compare_geometry(variant, SHAPES[shape], "cuda", torch.float32)
    assert max(errors.values()) <= TOL, errors


# ------------------------------------------------------------------- optimizers on CUDA
@pytest.mark.parametrize("opt_name", RIEMANNIAN_OPTIMIZERS)
@pytest.mark.parametrize("variant", list(GEOMETRY_VARIANTS))
def test_riemannian_optimizers_step_on_cuda(variant, opt_name):
    # tests/bench/test_riemannian_optim.py's rank-3 approximation, in float32 on the GPU
    manifold, target, x0, scale = approximation_problem(variant, dtype=torch.float32)
    target = target.cuda()
    p = geoopt.ManifoldParameter(x0.cuda(), manifold=manifold)
    opt, first, last = solve(opt_name, manifold, p, target, scale)
    assert p.device.type == "cuda" and p.dtype == torch.float32
    assert all(t.device.type == "cuda" for t in opt.state[p].values() if torch.is_tensor(t))
    assert last < 1e-3 * first, (first, last)
    assert manifold.check_point(p.detach())
