"""The Hessian monitor against independent numbers (issue 6, docs/design.md §7 (b)).

Reference values never go through the monitor's machinery (double backward + Lanczos + Sylvester
projector): exact Hessians come from torch.func.hessian of closed-form losses or of the model,
the horizontal space from an explicit basis of the invariance directions, and the spectra from
eigvalsh.
"""

import math

import numpy as np
import pytest
import torch
import torch.nn as nn
from omegaconf import OmegaConf

from bench.adapters import build_adapter
from bench.config import AdapterConfig, ConfigError
from bench.metrics.hessian import condition_number, exact_eigenvalues, hvp_fn, power_iteration
from bench.metrics.monitor import HessianMonitor, check_layers
from bench.models.gpt import GPT, GPTConfig
from tests.bench.test_hessian import vertical_basis

F64 = torch.float64


@pytest.fixture(autouse=True)
def one_thread():
    """These problems are tiny: a second intra-op thread only adds contention on shared cores."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def adapter(name="lora", **kw):
    return build_adapter(OmegaConf.structured(AdapterConfig(name=name, **kw)))


def math_sdpa():
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.MATH])


# ------------------------------------------------------------------ the balora toy, exactly
class ToyModel(nn.Module):
    """With x = I, lin(x) = W^T, so model(I, T^T) has loss 1/2 ||W - T||^2
    (docs/papers/balora.md §4)."""

    def __init__(self, n):
        super().__init__()
        self.lin = nn.Linear(n, n, bias=False)

    def forward(self, x, y):
        out = self.lin(x)
        return out, 0.5 * torch.sum((out - y) ** 2)


def toy_at_minimiser(exact_fit, n=20, r=4, alpha=8.0, seed=0):
    """LoRA on the toy at an unbalanced minimiser (B* R, R^-1 A*) of 1/2||W0 + s B A - T||^2."""
    g = torch.Generator().manual_seed(seed)
    W0 = torch.randn(n, n, generator=g, dtype=F64)
    if exact_fit:  # T - W0 of rank r
        T = W0 + torch.randn(n, r, generator=g, dtype=F64) @ torch.randn(
            r, n, generator=g, dtype=F64
        )
    else:  # full rank: the minimiser is the truncated SVD
        T = torch.randn(n, n, generator=g, dtype=F64)
    U, S, Vh = torch.linalg.svd(T - W0)
    R = torch.randn(r, r, generator=g, dtype=F64)
    s = alpha / r
    B = U[:, :r] * S[:r].sqrt() @ R / math.sqrt(s)
    A = torch.linalg.solve(R, S[:r].sqrt()[:, None] * Vh[:r]) / math.sqrt(s)
    ad = adapter(r=r, alpha=alpha, target_modules=["lin"])
    model = ad.apply(ToyModel(n)).double()
    layer = ad.targets[0][1]
    with torch.no_grad():
        layer.base.weight.copy_(W0)
        layer.lora_A.copy_(A)
        layer.lora_B.copy_(B)

    def loss(A, B):  # the same loss as a formula, for the exact Hessian
        return 0.5 * torch.sum((W0 + s * B @ A - T) ** 2)

    return model, ad, (torch.eye(n, dtype=F64), T.T.contiguous()), loss, A, B


@pytest.mark.parametrize("exact_fit, iters", [(True, 40), (False, 80)])
def test_monitor_kappa_matches_exact_on_the_toy(exact_fit, iters):
    r = 4
    model, ad, batch, loss, A, B = toy_at_minimiser(exact_fit, r=r)
    ev = exact_eigenvalues(loss, [A, B])
    exact = condition_number(ev, n_zero=r * r)
    out = HessianMonitor(every=1, iters=iters, layers=[], adapter=ad, batch=batch)(1, model)
    assert out["cond/kappa"] == pytest.approx(exact, rel=0.05)
    assert out["cond/lambda_max"] == pytest.approx(ev[-1].item(), rel=1e-6)
    assert out["sharpness/lambda_max"] == out["cond/lambda_max"]
    assert out["cond/lambda_min_h"] == pytest.approx(ev[r * r].item(), rel=0.05)
    assert out["cost/hessian_s"] > 0


# -------------------------------------------------------- a tiny GPT, against dense spectra
def tiny_gpt(seed=0, **kw):
    torch.manual_seed(seed)
    kw = {"n_layer": 1, **kw}
    cfg = GPTConfig(vocab_size=16, seq_len=8, d_model=16, n_head=2, **kw)
    model = GPT(cfg).double()
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randint(0, 16, (4, 8), generator=g)
    y = torch.randint(0, 16, (4, 8), generator=g)
    return model, (x, y)


def lora_gpt(targets=("q", "v"), r=2, seed=0, lora_dropout=0.0, **kw):
    model, batch = tiny_gpt(seed, **kw)
    ad = adapter(r=r, alpha=2.0 * r, target_modules=list(targets), dropout=lora_dropout)
    model = ad.apply(model).double()
    g = torch.Generator().manual_seed(seed + 2)
    with torch.no_grad():
        for _, layer in ad.targets:  # off the B = 0 init, so both factors matter
            layer.lora_B.copy_(0.5 * torch.randn(layer.lora_B.shape, generator=g, dtype=F64))
    return model, ad, batch


def exact_hessian(model, names, batch):
    """torch.func.hessian of the model loss in the named parameters (flat, in that order)."""
    params = [model.get_parameter(n).detach() for n in names]
    sizes = [p.numel() for p in params]

    def f(z):
        parts = [t.view(p.shape) for t, p in zip(torch.split(z, sizes), params)]
        return torch.func.functional_call(model, dict(zip(names, parts)), batch)[1]

    model.eval()
    with math_sdpa():
        H = torch.func.hessian(f)(torch.cat([p.reshape(-1) for p in params]))
    return 0.5 * (H + H.T)


def horizontal_basis(pairs):
    """Orthonormal basis (columns) of the complement of span{(-E_ij A, B E_ij)} per layer,
    block diagonal over the layers, from an explicit spanning set (not the Sylvester solve)."""
    blocks = []
    for A, B in pairs:
        V = vertical_basis(A.to(F64), B.to(F64))
        U, s, _ = np.linalg.svd(V, full_matrices=True)
        rank = int((s > 1e-10 * s[0]).sum())
        blocks.append(U[:, rank:])  # orthonormal complement of range(V)
    n = sum(b.shape[0] for b in blocks)
    Q = np.zeros((n, sum(b.shape[1] for b in blocks)))
    i = j = 0
    for b in blocks:
        Q[i : i + b.shape[0], j : j + b.shape[1]] = b
        i, j = i + b.shape[0], j + b.shape[1]
    return Q


def test_monitor_matches_dense_projected_hessian_per_layer_and_overall():
    model, ad, batch = lora_gpt()
    names = [f"{n}.{k}" for n, _ in ad.targets for k in ("lora_A", "lora_B")]
    H = exact_hessian(model, names, batch).numpy()
    model.train()
    pairs = [(layer.lora_A.detach(), layer.lora_B.detach()) for _, layer in ad.targets]
    Q = horizontal_basis(pairs)  # (128, 120)
    ev = np.linalg.eigvalsh(Q.T @ H @ Q)
    mon = HessianMonitor(
        every=1, iters=Q.shape[1], layers=[], adapter=ad, batch=batch, per_layer=True
    )
    out = mon(1, model)
    assert out["cond/lambda_max"] == pytest.approx(ev[-1], rel=1e-6)
    assert out["cond/lambda_min_h"] == pytest.approx(ev[0], rel=1e-6, abs=1e-9)
    if ev[0] > 0:
        assert out["cond/kappa"] == pytest.approx(ev[-1] / ev[0], rel=0.05)
    else:
        assert out["cond/kappa"] is None
    off = 0
    for k, (name, _) in enumerate(ad.targets):  # diagonal blocks H_ll on each layer's space
        n = sum(t.numel() for t in pairs[k])
        Ql = horizontal_basis([pairs[k]])
        evl = np.linalg.eigvalsh(Ql.T @ H[off : off + n, off : off + n] @ Ql)
        off += n
        assert out[f"cond/{name}/lambda_max"] == pytest.approx(evl[-1], rel=1e-6)
        kappa = out[f"cond/{name}/kappa"]
        assert (
            (kappa is None) if evl[0] <= 0 else kappa == pytest.approx(evl[-1] / evl[0], rel=0.05)
        )


def test_dense_lambda_max_matches_exact_and_power_iteration():
    model, batch = tiny_gpt(seed=3)
    ad = adapter(name="full", target_modules=["q"])
    model = ad.apply(model)  # only blocks.0.attn.q.weight (256 entries) trains
    names = ["blocks.0.attn.q.weight"]
    ev = np.linalg.eigvalsh(exact_hessian(model, names, batch).numpy())
    model.train()
    out = HessianMonitor(every=1, iters=30, layers=[], adapter=ad, batch=batch)(1, model)
    assert set(out) == {"sharpness/lambda_max", "cond/lanczos_min", "cost/hessian_s"}
    assert out["sharpness/lambda_max"] == pytest.approx(ev[-1], rel=1e-6)
    assert out["cond/lanczos_min"] == pytest.approx(ev[0], rel=1e-6)
    # power iteration (not Lanczos) on hvp_fn: the dominant eigenvalue is lambda_max
    assert ev[-1] > 1.2 * abs(ev[0])
    p = model.get_parameter(names[0])
    model.eval()
    with math_sdpa():
        hvp = hvp_fn(lambda w: torch.func.functional_call(model, {names[0]: w}, batch)[1], [p])
    lam = power_iteration(hvp, p.detach().reshape(-1), iters=2000, tol=1e-12)
    assert out["sharpness/lambda_max"] == pytest.approx(lam, rel=1e-4)


def test_full_all_covers_every_trainable_parameter_once():
    model, batch = tiny_gpt(seed=4)
    ad = adapter(name="full", target_modules=["all"])
    model = ad.apply(model)  # tied tok_emb / lm_head: one tensor
    mon = HessianMonitor(every=1, iters=3, layers=[], adapter=ad, batch=batch)
    out = mon(1, model)
    assert out["sharpness/lambda_max"] is not None
    n_cov = sum(p.numel() for ts in mon._tensors() for p in ts)
    assert n_cov == sum(p.numel() for p in model.parameters())  # deduplicated already


# --------------------------------------------------------------- training is left alone
def sgd_run(with_monitor, steps=5):
    model, ad, batch = lora_gpt(dropout=0.2, lora_dropout=0.3, seed=5)
    model.blocks[0].mlp.eval()  # a submodule in its own mode, to be restored as is
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.1)
    mon = HessianMonitor(every=1, iters=4, layers=["q"], adapter=ad, batch=batch, per_layer=True)
    torch.manual_seed(123)  # dropout masks come from the global RNG
    for step in range(1, steps + 1):
        opt.zero_grad()
        model(*batch)[1].backward()
        opt.step()
        if with_monitor:
            grads = [(p.grad, p.grad.clone()) for p in params]
            flags = [p.requires_grad for p in model.parameters()]
            modes = [m.training for m in model.modules()]
            out = mon(step, model)
            assert out["cond/lambda_max"] is not None
            assert all(p.grad is g and torch.equal(g, c) for p, (g, c) in zip(params, grads))
            assert flags == [p.requires_grad for p in model.parameters()]
            assert modes == [m.training for m in model.modules()]
    return [p.detach().clone() for p in model.parameters()], torch.get_rng_state()


def test_monitor_does_not_change_training():
    (ref, rng_ref), (got, rng_got) = sgd_run(False), sgd_run(True)
    assert all(torch.equal(a, b) for a, b in zip(ref, got))  # bitwise
    assert torch.equal(rng_ref, rng_got)


# --------------------------------------------------------------------- failures and input
@pytest.mark.parametrize("where", ["base", "factor", "dense"])
def test_non_finite_weights_give_none_and_a_warning(where):
    if where == "dense":
        model, batch = tiny_gpt()
        ad = adapter(name="full", target_modules=["q"])
        model = ad.apply(model)
        target = model.blocks[0].mlp.up.weight  # a frozen weight: the loss is NaN
    else:
        model, ad, batch = lora_gpt()
        layer = ad.targets[0][1]
        target = layer.base.weight if where == "base" else layer.lora_A
    with torch.no_grad():
        target[0, 0] = math.nan
    mon = HessianMonitor(every=1, iters=5, layers=[], adapter=ad, batch=batch, per_layer=True)
    with pytest.warns(UserWarning, match="non-finite"):
        out = mon(7, model)
    values = {k: v for k, v in out.items() if k != "cost/hessian_s"}
    assert values and all(v is None for v in values.values())
    assert out["cost/hessian_s"] >= 0


def test_check_layers_matches_by_suffix_and_glob_and_lists_names_on_error():
    model, ad, batch = lora_gpt(targets=("q", "k", "v", "o"))
    assert [n for n, _ in check_layers(ad, [])] == [n for n, _ in ad.targets]
    assert [n for n, _ in check_layers(ad, ["q"])] == ["blocks.0.attn.q"]
    assert [n for n, _ in check_layers(ad, ["*.attn.[qk]"])] == [
        "blocks.0.attn.q",
        "blocks.0.attn.k",
    ]
    assert len(check_layers(ad, ["blocks.0.*"])) == 4
    with pytest.raises(ConfigError, match="blocks.0.attn.q, blocks.0.attn.k") as err:
        check_layers(ad, ["q", "mlp"])
    assert "'mlp'" in str(err.value)
    with pytest.raises(ConfigError, match="metrics.hessian.layers"):
        HessianMonitor(every=10, iters=5, layers=["nope"], adapter=ad, batch=batch)


def test_check_layers_for_full_all_uses_the_model():
    model, _ = tiny_gpt()
    ad = adapter(name="full", target_modules=["all"])
    model = ad.apply(model)
    names = [n for n, _ in check_layers(ad, ["q", "tok_emb"], model=model)]
    assert names == ["tok_emb", "blocks.0.attn.q"]
    with pytest.raises(ConfigError, match="blocks.0.mlp.up"):
        check_layers(ad, ["nothing"], model=model)


def test_iters_below_two_is_a_config_error():
    model, ad, batch = lora_gpt()
    with pytest.raises(ConfigError, match="iters"):
        HessianMonitor(every=10, iters=1, layers=[], adapter=ad, batch=batch)


def test_schedule_fires_at_multiples_or_the_first_log_step_past_them():
    model, ad, batch = lora_gpt()

    def fired(every, calls, at_start=False):
        mon = HessianMonitor(every=every, iters=2, layers=[], adapter=ad, batch=batch,
                             at_start=at_start)
        return [s for s in calls if mon.due(s)]

    assert fired(50, range(10, 201, 10)) == [50, 100, 150, 200]
    assert fired(50, range(3, 160, 3)) == [51, 102, 150]
    assert fired(0, range(1, 100)) == []
    assert fired(1, [0, 1, 2]) == [1, 2]
    # start, middle and end of a 200-step run; step 0 only when asked, never with every = 0
    assert fired(100, [0, *range(10, 201, 10)], at_start=True) == [0, 100, 200]
    assert fired(0, [0, 10], at_start=True) == []
    assert fired(50, range(310, 400, 10)) == [350]  # resumed at 300: no catch-up estimate
    mon = HessianMonitor(every=5, iters=2, layers=[], adapter=ad, batch=batch)
    assert mon(3, model) == {}
    assert "cond/kappa" in mon(5, model)


# ------------------------------------------------------ the Gauss-Newton matrix J^T H_z J
def exact_gauss_newton(model, names, batch):
    """G = J^T H_z J from the dense Jacobian of the logits (torch.func.jacrev) and the
    closed-form Hessian of the mean cross-entropy in the logits, (diag(p) - p p^T) / N per
    token: no double backward, no Lanczos."""
    params = [model.get_parameter(n).detach() for n in names]
    sizes = [p.numel() for p in params]
    x, y = batch

    def logits(z):
        parts = [t.view(p.shape) for t, p in zip(torch.split(z, sizes), params)]
        return torch.func.functional_call(model, dict(zip(names, parts)), batch)[0]

    model.eval()
    flat = torch.cat([p.reshape(-1) for p in params])
    with math_sdpa():
        z = logits(flat).detach()
        J = torch.func.jacrev(logits)(flat)  # (B, T, V, P)
    n_tok, vocab = z.shape[0] * z.shape[1], z.shape[-1]
    J = J.reshape(n_tok, vocab, -1).numpy()
    p = torch.softmax(z.reshape(n_tok, vocab), -1).numpy()
    H_z = (np.einsum("nv,vw->nvw", p, np.eye(vocab)) - np.einsum("nv,nw->nvw", p, p)) / n_tok
    return np.einsum("nvp,nvw,nwq->pq", J, H_z, J)


def test_gauss_newton_matches_the_dense_projected_matrix():
    # RMSNorm: LayerNorm at its init (gain 1, no bias) outputs vectors of mean 0, so the
    # directions dA = w 1^T are exactly flat and the horizontal G singular (kappa infinite)
    model, ad, batch = lora_gpt(seed=6, norm="rmsnorm")
    names = [f"{n}.{k}" for n, _ in ad.targets for k in ("lora_A", "lora_B")]
    G = exact_gauss_newton(model, names, batch)
    model.train()
    assert np.linalg.eigvalsh(G)[0] > -1e-12 * np.abs(G).max()  # positive semidefinite
    pairs = [(layer.lora_A.detach(), layer.lora_B.detach()) for _, layer in ad.targets]
    # the logits do not move along the invariance (at any point, not only a critical one)
    V = np.concatenate([vertical_basis(A, B) for A, B in pairs[:1]], axis=0)
    n0 = V.shape[0]
    np.testing.assert_allclose(G[:n0, :n0] @ V, 0, atol=1e-10 * np.abs(G).max())
    Q = horizontal_basis(pairs)
    ev = np.linalg.eigvalsh(Q.T @ G @ Q)
    assert ev[0] > 0  # off B = 0 the horizontal G is definite on this batch
    mon = HessianMonitor(every=1, iters=Q.shape[1], layers=[], adapter=ad, batch=batch,
                         gauss_newton=True)
    out = mon(1, model)
    assert out["cond/gn/lambda_max"] == pytest.approx(ev[-1], rel=1e-6)
    # lambda_min is ~1e-9 lambda_max here: agreement to round-off at lambda_max's scale
    assert out["cond/gn/lambda_min_h"] == pytest.approx(ev[0], abs=1e-11 * ev[-1])
    assert out["cond/gn/kappa"] == pytest.approx(ev[-1] / ev[0], rel=1e-2)
    # the Hessian's own estimate is the same as without the Gauss-Newton one
    plain = HessianMonitor(every=1, iters=Q.shape[1], layers=[], adapter=ad, batch=batch)(1, model)
    for key in ("cond/lambda_max", "cond/lambda_min_h", "cond/kappa"):
        assert out[key] == plain[key]
    assert not any(k.startswith("cond/gn/") for k in plain)


def test_gauss_newton_is_singular_at_the_lora_init_and_few_steps_bound_kappa_below():
    model, ad, batch = lora_gpt(seed=7, norm="rmsnorm")
    for _, layer in ad.targets:  # B = 0: the logits do not depend on A
        with torch.no_grad():
            layer.lora_B.zero_()
    out = HessianMonitor(every=1, iters=20, layers=[], adapter=ad, batch=batch,
                         gauss_newton=True)(1, model)
    assert out["cond/gn/lambda_max"] > 0
    # 20 steps see no zero (the smallest Ritz value is a lower bound's denominator, > 0), but
    # rank(B) < r makes G singular on the horizontal space: kappa is reported undefined
    assert out["cond/gn/lambda_min_h"] > 1e-12 * out["cond/gn/lambda_max"]
    assert out["cond/gn/kappa"] is None
    model, ad, batch = lora_gpt(seed=6, norm="rmsnorm")
    names = [f"{n}.{k}" for n, _ in ad.targets for k in ("lora_A", "lora_B")]
    pairs = [(layer.lora_A.detach(), layer.lora_B.detach()) for _, layer in ad.targets]
    Q = horizontal_basis(pairs)
    ev = np.linalg.eigvalsh(Q.T @ exact_gauss_newton(model, names, batch) @ Q)
    model.train()
    few = HessianMonitor(every=1, iters=6, layers=[], adapter=ad, batch=batch,
                         gauss_newton=True)(1, model)
    # Ritz values interlace: ev[0] <= theta_min, theta_max <= ev[-1], so kappa is bounded below
    assert ev[0] - 1e-9 * ev[-1] <= few["cond/gn/lambda_min_h"]
    assert few["cond/gn/lambda_max"] <= ev[-1] * (1 + 1e-6)  # round-off of the two routes
    assert few["cond/gn/kappa"] < ev[-1] / ev[0]


def low_rank(shape, rank, g):
    return torch.randn(shape[0], rank, generator=g, dtype=F64) @ torch.randn(
        rank, shape[1], generator=g, dtype=F64)


@pytest.mark.parametrize("r, n_in, n_out, p, q", [
    (2, 5, 4, 2, 2), (2, 5, 4, 1, 2), (2, 5, 4, 2, 1), (3, 5, 4, 1, 2), (2, 5, 4, 0, 2),
    (2, 2, 4, 1, 2),  # r = in: rank B < r, yet A w = 0 has no solution w != 0
    (2, 4, 2, 2, 1),  # r = out, rank A < r
])
def test_flat_horizontal_directions_counts_the_dense_kernel(r, n_in, n_out, p, q):
    """(r - p)(in - q) + (r - q)(out - p) against a dense count: dim ker((dA, dB) ->
    B dA + dB A) minus the dimension of the vertical space it contains."""
    from bench.metrics.monitor import _flat_horizontal_directions

    g = torch.Generator().manual_seed(r * 100 + p * 10 + q)
    B, A = low_rank((n_out, r), p, g), low_rank((r, n_in), q, g)
    rows = []
    for k in range(r * n_in + n_out * r):  # the map's matrix, column by column
        e = torch.zeros(r * n_in + n_out * r, dtype=F64)
        e[k] = 1.0
        dA, dB = e[: r * n_in].view(r, n_in), e[r * n_in :].view(n_out, r)
        rows.append((B @ dA + dB @ A).reshape(-1))
    M = torch.stack(rows, dim=1).numpy()
    kernel = M.shape[1] - np.linalg.matrix_rank(M, tol=1e-9)
    vertical = np.linalg.matrix_rank(vertical_basis(A, B), tol=1e-9)
    assert _flat_horizontal_directions([A, B]) == kernel - vertical


def test_gauss_newton_kappa_is_undefined_when_any_layer_loses_rank():
    model, ad, batch = lora_gpt(seed=8, norm="rmsnorm", n_layer=2)
    mon = HessianMonitor(every=1, iters=12, layers=[], adapter=ad, batch=batch,
                         gauss_newton=True)
    assert mon(1, model)["cond/gn/kappa"] > 0
    with torch.no_grad():  # one row of A in the last layer: rank A = r - 1 < r
        ad.targets[-1][1].lora_A[0].zero_()
    out = mon(2, model)
    assert out["cond/gn/lambda_min_h"] > 0 and out["cond/gn/kappa"] is None


def test_gauss_newton_on_dense_weights_logs_its_extremes_and_no_kappa():
    model, batch = tiny_gpt(seed=3)
    ad = adapter(name="full", target_modules=["q"])
    model = ad.apply(model)
    names = ["blocks.0.attn.q.weight"]
    ev = np.linalg.eigvalsh(exact_gauss_newton(model, names, batch))
    model.train()
    out = HessianMonitor(every=1, iters=ev.size, layers=[], adapter=ad, batch=batch,
                         gauss_newton=True)(1, model)
    assert "cond/gn/kappa" not in out
    assert out["cond/gn/lambda_max"] == pytest.approx(ev[-1], rel=1e-6)
    assert out["cond/gn/lanczos_min"] == pytest.approx(ev[0], abs=1e-8 * ev[-1])
