"""Hessian spectra and condition numbers against the closed forms of docs/papers/balora.md §4."""

import math
import warnings

import numpy as np
import pytest
import torch

from bench.metrics.hessian import (
    condition_number,
    exact_eigenvalues,
    flat_horizontal_projector,
    flatten,
    horizontal_projector,
    horizontal_spectrum,
    hvp_fn,
    lanczos,
    power_iteration,
)

F64 = torch.float64


def orthonormal(n, r, g):
    Q, _ = torch.linalg.qr(torch.randn(n, r, generator=g, dtype=F64))
    return Q


def factorisation_problem(n=6, m=6, sigma=(5.0, 2.0, 0.5), seed=0):
    """M = P diag(sigma) Q^T and its SVD-balanced exact fit U = P S^1/2, V = Q S^1/2."""
    g = torch.Generator().manual_seed(seed)
    P, Q = orthonormal(n, len(sigma), g), orthonormal(m, len(sigma), g)
    s = torch.tensor(sigma, dtype=F64)
    M = P @ torch.diag(s) @ Q.T

    def loss(U, V):  # 1/2 ||U V^T - M||^2, U: (n, r), V: (m, r)
        return 0.5 * torch.sum((U @ V.T - M) ** 2)

    return loss, P * s.sqrt(), Q * s.sqrt()


@pytest.mark.parametrize("c, expected", [(1.0, 20.0), (2.0, 170.0), (10.0, 100010.0)])
def test_exact_kappa_of_rescaled_balanced_fit(c, expected):
    """kappa = (c^4 + 1) sigma_1 / sigma_r at (c U, V / c); 2 sigma_1 / sigma_r when balanced."""
    loss, U, V = factorisation_problem()
    kappa = condition_number(exact_eigenvalues(loss, [c * U, V / c]), n_zero=9)
    assert kappa == pytest.approx(expected, rel=1e-6)


def test_exact_spectrum_matches_gram_formula():
    """At an exact fit (U R, V R^-T): nonzero eigenvalues {a_i + b_j}, {a_i} x (m - r),
    {b_j} x (n - r) with a = eig(U^T U), b = eig(V^T V); kappa = (a_1 + b_1)/min(a_r, b_r)."""
    n, m, r = 7, 6, 3
    loss, U, V = factorisation_problem(n=n, m=m, seed=1)
    R = torch.randn(r, r, generator=torch.Generator().manual_seed(2), dtype=F64) + 2 * torch.eye(r)
    U, V = U @ R, V @ torch.linalg.inv(R).T
    a = np.linalg.eigvalsh((U.T @ U).numpy())  # ascending
    b = np.linalg.eigvalsh((V.T @ V).numpy())
    expected = np.sort(np.concatenate([(a[:, None] + b[None, :]).ravel(),
                                       np.repeat(a, m - r), np.repeat(b, n - r)]))
    ev = exact_eigenvalues(loss, [U, V]).numpy()
    np.testing.assert_allclose(ev[r * r:], expected, rtol=1e-9)
    assert np.abs(ev[: r * r]).max() < 1e-9 * ev[-1]
    kappa = condition_number(torch.from_numpy(ev), r * r)
    assert kappa == pytest.approx((a[-1] + b[-1]) / min(a[0], b[0]), rel=1e-8)
    assert kappa > 2 * 5.0 / 0.5  # an unbalanced minimiser is worse conditioned


def lora_toy(exact_fit, seed=0, n=20, r=4):
    """1/2 ||W0 + B A - T||^2 at an unbalanced minimiser (B* R, R^-1 A*), docs/papers/balora.md
    §5."""
    g = torch.Generator().manual_seed(seed)
    W0 = torch.randn(n, n, generator=g, dtype=F64)
    if exact_fit:  # T - W0 of rank r: the minimum is 0
        T = W0 + torch.randn(n, r, generator=g, dtype=F64) @ torch.randn(r, n, generator=g,
                                                                          dtype=F64)
    else:  # full rank: the minimiser is the truncated SVD of T - W0 (the paper's toy)
        T = torch.randn(n, n, generator=g, dtype=F64)
    U, S, Vh = torch.linalg.svd(T - W0)
    R = torch.randn(r, r, generator=g, dtype=F64)
    B = U[:, :r] * S[:r].sqrt() @ R  # (out, r)
    A = torch.linalg.solve(R, S[:r].sqrt()[:, None] * Vh[:r])  # (r, in)

    def loss(A, B):
        return 0.5 * torch.sum((W0 + B @ A - T) ** 2)

    return loss, A, B


@pytest.mark.parametrize("exact_fit, iters", [(True, 40), (False, 80)])
def test_lanczos_horizontal_kappa_matches_exact(exact_fit, iters):
    r = 4
    loss, A, B = lora_toy(exact_fit)
    ev = exact_eigenvalues(loss, [A, B])
    exact = condition_number(ev, n_zero=r * r)
    est = horizontal_spectrum(loss, [(A, B)], iters=iters)  # iters < 144 = horizontal dim
    assert est["kappa"] == pytest.approx(exact, rel=0.05)
    assert est["lambda_max"] == pytest.approx(ev[-1].item(), rel=1e-6)
    assert est["lambda_min_h"] == pytest.approx(ev[r * r].item(), rel=0.05)


def tiny_mlp(seed=0):
    """A 8 -> 16 -> 4 tanh MLP (212 parameters) on random regression data."""
    g = torch.Generator().manual_seed(seed)
    X, Y = torch.randn(32, 8, generator=g, dtype=F64), torch.randn(32, 4, generator=g, dtype=F64)
    params = [torch.randn(16, 8, generator=g, dtype=F64) / 8**0.5, torch.zeros(16, dtype=F64),
              torch.randn(4, 16, generator=g, dtype=F64) / 4, torch.zeros(4, dtype=F64)]

    def loss(W1, b1, W2, b2):
        return 0.5 * torch.mean((torch.tanh(X @ W1.T + b1) @ W2.T + b2 - Y) ** 2)

    return loss, params


def _unflat(z, like):
    return [p.view(t.shape) for p, t in zip(torch.split(z, [t.numel() for t in like]), like)]


def test_hvp_matches_exact_hessian():
    loss, params = tiny_mlp()
    x = flatten(params)
    H = torch.func.hessian(lambda z: loss(*_unflat(z, params)))(x)  # (212, 212)
    v = torch.randn(x.numel(), generator=torch.Generator().manual_seed(1), dtype=F64)
    torch.testing.assert_close(hvp_fn(loss, params)(v), H @ v, rtol=1e-10, atol=1e-12)


def test_lanczos_and_power_iteration_find_lambda_max():
    loss, params = tiny_mlp()
    ev = exact_eigenvalues(loss, params)
    assert ev[-1] > -ev[0]  # lambda_max dominates in magnitude, so power iteration finds it
    hvp, x = hvp_fn(loss, params), flatten(params)
    ritz = lanczos(hvp, x, iters=20)
    assert ritz[-1].item() == pytest.approx(ev[-1].item(), rel=1e-8)
    assert power_iteration(hvp, x, iters=500) == pytest.approx(ev[-1].item(), rel=1e-6)


def test_lanczos_full_krylov_space_gives_the_whole_spectrum():
    d = torch.linspace(-1.0, 3.0, 12, dtype=F64)
    ritz = lanczos(lambda v: d * v, 12, iters=30)  # iters clipped to the dimension
    torch.testing.assert_close(ritz, d, rtol=0, atol=1e-10)


def vertical_basis(A, B):
    """Columns (vec dA, vec dB) = (-E_ij A, B E_ij) spanning the invariance directions."""
    r = A.shape[0]
    cols = []
    for i in range(r):
        for j in range(r):
            E = torch.zeros(r, r, dtype=F64)
            E[i, j] = 1.0
            cols.append(flatten([-E @ A, B @ E]))
    return torch.stack(cols, dim=1).numpy()  # (r (in + out), r^2)


def test_horizontal_projector_is_the_orthogonal_complement_of_the_invariance():
    g = torch.Generator().manual_seed(3)
    A, B = torch.randn(3, 7, generator=g, dtype=F64), torch.randn(5, 3, generator=g, dtype=F64)
    V = vertical_basis(A, B)
    P_ref = np.eye(V.shape[0]) - V @ np.linalg.pinv(V)  # independent: I - V V^+
    project = flat_horizontal_projector([(A, B)])
    P = np.stack([project(torch.from_numpy(e)).numpy() for e in np.eye(V.shape[0])], axis=1)
    np.testing.assert_allclose(P, P_ref, atol=1e-10)
    assert np.trace(P) == pytest.approx(V.shape[0] - 9)  # rank = dim - r^2
    # the pair form agrees with the flat form
    dA, dB = torch.randn(3, 7, generator=g, dtype=F64), torch.randn(5, 3, generator=g, dtype=F64)
    hA, hB = horizontal_projector(A, B)(dA, dB)
    torch.testing.assert_close(flatten([hA, hB]), project(flatten([dA, dB])))


def test_flat_projector_treats_layers_independently():
    g = torch.Generator().manual_seed(4)
    pairs = [(torch.randn(2, 6, generator=g, dtype=F64), torch.randn(4, 2, generator=g,
                                                                      dtype=F64)),
             (torch.randn(3, 5, generator=g, dtype=F64), torch.zeros(8, 3, dtype=F64))]  # B = 0
    project = flat_horizontal_projector(pairs)
    sizes = [sum(t.numel() for t in p) for p in pairs]
    for k, (A, B) in enumerate(pairs):
        V = vertical_basis(A, B)
        for col in V.T:  # a vertical vector of layer k, zero elsewhere, projects to 0
            v = np.zeros(sum(sizes))
            v[sum(sizes[:k]): sum(sizes[: k + 1])] = col
            out = project(torch.from_numpy(v))
            assert torch.isfinite(out).all()
            assert out.norm().item() < 1e-10 * max(np.linalg.norm(v), 1.0)


def test_condition_number_without_positive_denominator_is_inf():
    assert condition_number(torch.tensor([-1.0, 0.0, 2.0]), 1) == math.inf
    assert condition_number(torch.tensor([0.0, 0.5, 2.0]), 1) == 4.0
    with pytest.raises(ValueError, match="n_zero"):
        condition_number(torch.tensor([1.0, 2.0]), 2)


def test_non_finite_spectrum_gives_none_and_warns():
    loss, A, B = lora_toy(exact_fit=True)
    with pytest.warns(UserWarning, match="non-finite"):
        est = horizontal_spectrum(lambda A, B: loss(A, B) * math.nan, [(A, B)], iters=5)
    assert est == {"lambda_max": None, "lambda_min_h": None, "kappa": None}


def test_measuring_leaves_the_global_rng_alone():
    loss, A, B = lora_toy(exact_fit=True)
    state = torch.get_rng_state()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        horizontal_spectrum(loss, [(A, B)], iters=5)
    assert torch.equal(torch.get_rng_state(), state)


def test_too_few_iterations_raise():
    loss, A, B = lora_toy(exact_fit=True)
    with pytest.raises(ValueError, match="iters"):
        horizontal_spectrum(loss, [(A, B)], iters=1)
    with pytest.raises(ValueError, match="iters"):
        lanczos(lambda v: v, 10, iters=1)
