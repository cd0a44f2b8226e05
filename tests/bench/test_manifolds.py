"""Generic checks that every low-rank geometry must pass (geoopt style), in float64.

Each test runs on every geometry (and every non-default option of a geometry, conftest's
GEOMETRY_VARIANTS) and on two shapes: one attention head (n = m = 12, r = 3) and one
grouped-query KV group whose three query heads are stacked on the shared factor
(n = 3 * 12, m = 12, r = 3; docs/papers/knight.md §4).
"""

from __future__ import annotations

import geoopt
import pytest
import torch

from bench.manifolds import FIXED_RANK, GEOMETRIES, PARTIAL_ISOMETRY, make
from tests.conftest import GEOMETRY_VARIANTS, make_variant

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny matrices: one thread (conftest)


SHAPES = {"per_head": (12, 12, 3), "per_kv_group": (36, 12, 3)}
EMBEDDED = ("fixed_rank_embedded", "partial_isometry_embedded")


@pytest.fixture(params=GEOMETRIES)
def name(request):
    return request.param


@pytest.fixture(params=list(SHAPES), ids=list(SHAPES))
def shape(request):
    return SHAPES[request.param]


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(0)


@pytest.fixture(params=list(GEOMETRY_VARIANTS), ids=list(GEOMETRY_VARIANTS))
def manifold(request, shape):
    return make_variant(request.param, *shape)


@pytest.fixture
def x(manifold, gen):
    return manifold.random_point(dtype=torch.float64, generator=gen)


def randn_like(t, gen):
    return torch.randn(t.shape, dtype=t.dtype, generator=gen)


def assert_on_manifold(manifold, x):
    assert manifold.check_point(x)
    assert manifold.check_point_on_manifold(x, atol=1e-10, rtol=1e-10)


def assert_tangent(manifold, x, u):
    ok, reason = manifold.check_vector_on_tangent(
        x, u, ok_point=True, explain=True, atol=1e-10, rtol=1e-10
    )
    assert ok, reason


def loss_of_dense(w: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """A smooth, non-quadratic loss of W (what a model computes through the factors)."""
    return torch.sin(w).sum() + 0.5 * ((w - target) ** 2).sum()


def loss_and_egrad(manifold, x, target):
    """f(x) and autograd's gradient of the packed tensor, f computed from factors(x)."""
    x = x.detach().requires_grad_(True)
    left, right = manifold.factors(x)
    f = loss_of_dense(left @ right.T, target)
    (g,) = torch.autograd.grad(f, x)
    return f.detach(), g


# ---------------------------------------------------------------------- points and layout
def test_random_point_is_on_manifold(manifold, x):
    assert x.shape == manifold.point_shape
    assert x.dtype == torch.float64
    assert_on_manifold(manifold, x)
    batch = manifold.random_point(4, 2, dtype=torch.float32)
    assert batch.shape == (4, 2, *manifold.point_shape) and batch.dtype == torch.float32
    assert isinstance(manifold.random(), geoopt.ManifoldTensor)


def test_pack_unpack_round_trip_and_factors(manifold, x):
    n, m, r = manifold.n, manifold.m, manifold.r
    blocks = manifold.unpack(x)
    assert torch.equal(manifold.pack(*blocks), x)
    left, right = manifold.factors(x)
    assert left.shape == (n, r) and right.shape == (m, r)
    w = manifold.to_dense(x)
    assert w.shape == (n, m)
    torch.testing.assert_close(w, left @ right.T)
    if manifold.name == "fixed_rank_embedded":
        u, v, s = blocks
        torch.testing.assert_close(left, u @ s)
        torch.testing.assert_close(right, v)


def test_projx_lands_on_manifold(manifold, x, gen):
    y = manifold.projx(x + 0.1 * randn_like(x, gen))
    assert_on_manifold(manifold, y)
    # a point already on the manifold keeps its matrix
    torch.testing.assert_close(manifold.to_dense(manifold.projx(x)), manifold.to_dense(x))


def test_repair_keeps_the_matrix_and_fixes_drift(manifold, x, gen):
    torch.testing.assert_close(manifold.to_dense(manifold.repair(x)), manifold.to_dense(x))
    drifted = x + 1e-6 * randn_like(x, gen)
    repaired = manifold.repair(drifted)
    assert_on_manifold(manifold, repaired)
    torch.testing.assert_close(manifold.to_dense(repaired), manifold.to_dense(x), atol=1e-4, rtol=0)


def test_repair_floors_small_singular_values():
    manifold = make("fixed_rank_embedded", 12, 12, 3)
    x = manifold.random_point(generator=torch.Generator().manual_seed(1))
    u, v, _ = manifold.unpack(x)
    s = torch.diag(torch.tensor([2.0, 1.0, 1e-12], dtype=torch.float64))
    sigma = torch.linalg.svdvals(manifold.unpack(manifold.repair(manifold.pack(u, v, s)))[2])
    assert sigma[-1] >= 2.0 * torch.finfo(torch.float64).eps ** 0.5 * 0.999


# ------------------------------------------------------------------ tangent spaces
def test_proju_is_idempotent_and_tangent(manifold, x, gen):
    u = manifold.proju(x, randn_like(x, gen))
    assert_tangent(manifold, x, u)
    torch.testing.assert_close(manifold.proju(x, u), u)


def test_egrad2rgrad_is_tangent(manifold, x, gen):
    _, egrad = loss_and_egrad(manifold, x, randn_like(manifold.to_dense(x), gen))
    assert_tangent(manifold, x, manifold.egrad2rgrad(x, egrad))


def test_inner_is_symmetric_and_positive(manifold, x, gen):
    u = manifold.random_tangent(x, generator=gen)
    v = manifold.random_tangent(x, generator=gen)
    torch.testing.assert_close(manifold.inner(x, u, v), manifold.inner(x, v, u))
    assert manifold.inner(x, u) > 0
    torch.testing.assert_close(manifold.inner(x, u), manifold.inner(x, u, u))
    torch.testing.assert_close(manifold.norm(x, u) ** 2, manifold.inner(x, u))
    assert manifold.inner(x, u, keepdim=True).shape == (1, 1)
    assert manifold.component_inner(x, u).shape == x.shape


@pytest.mark.parametrize("name", EMBEDDED)
def test_embedded_metric_is_frobenius_of_dense_tangents(name, shape, gen):
    manifold = make(name, *shape)
    x = manifold.random_point(generator=gen)
    u = manifold.random_tangent(x, generator=gen)
    v = manifold.random_tangent(x, generator=gen)
    du, dv = manifold.tangent_to_dense(x, u), manifold.tangent_to_dense(x, v)
    torch.testing.assert_close(manifold.inner(x, u, v), (du * dv).sum())


@pytest.mark.parametrize(
    "name, stiefel",
    [
        ("partial_isometry_quotient", geoopt.EuclideanStiefel()),
        ("partial_isometry_canonical", geoopt.CanonicalStiefel()),
    ],
)
def test_quotient_geometry_is_geoopts_stiefel_per_factor(name, stiefel, shape, gen):
    """P2/P3: metric and gradient of geoopt's (Euclidean / canonical) Stiefel on each factor."""
    manifold = make(name, *shape)
    x = manifold.random_point(generator=gen)
    u = manifold.random_tangent(x, generator=gen)
    v = manifold.random_tangent(x, generator=gen)
    factors, us, vs = manifold.unpack(x), manifold.unpack(u), manifold.unpack(v)
    expected = sum(stiefel.inner(f, a, b) for f, a, b in zip(factors, us, vs))
    torch.testing.assert_close(manifold.inner(x, u, v), expected)
    # for a loss of W alone the Stiefel gradients of the two factors are already horizontal
    _, egrad = loss_and_egrad(manifold, x, randn_like(manifold.to_dense(x), gen))
    expected = [stiefel.egrad2rgrad(f, g) for f, g in zip(factors, manifold.unpack(egrad))]
    torch.testing.assert_close(manifold.egrad2rgrad(x, egrad), manifold.pack(*expected))


# ------------------------------------------------------------------------ retraction
def test_retraction_stays_on_manifold(manifold, x, gen):
    u = manifold.random_tangent(x, generator=gen)
    u = 0.3 * u / manifold.norm(x, u)
    assert_on_manifold(manifold, manifold.retr(x, u))
    # an arbitrary (non-tangent) direction, like RiemannianAdam's, is projected first
    assert_on_manifold(manifold, manifold.retr(x, 0.05 * randn_like(x, gen)))
    torch.testing.assert_close(
        manifold.to_dense(manifold.retr(x, torch.zeros_like(x))), manifold.to_dense(x)
    )


def test_retraction_is_first_order(manifold, x, gen):
    v = manifold.random_tangent(x, generator=gen)
    t = 1e-5
    fd = manifold.to_dense(manifold.retr(x, t * v)) - manifold.to_dense(manifold.retr(x, -t * v))
    torch.testing.assert_close(fd / (2 * t), manifold.tangent_to_dense(x, v), atol=1e-8, rtol=1e-6)


@pytest.mark.parametrize("name", EMBEDDED)
def test_embedded_retraction_is_the_truncated_svd(name, shape, gen):
    manifold = make(name, *shape)
    x = manifold.random_point(generator=gen)
    u = manifold.random_tangent(x, generator=gen)
    target = manifold.to_dense(x) + manifold.tangent_to_dense(x, u)
    a, sigma, bh = torch.linalg.svd(target)
    r = manifold.r
    kept = sigma[:r] if name == "fixed_rank_embedded" else torch.ones_like(sigma[:r])
    expected = (a[:, :r] * kept) @ bh[:r]
    torch.testing.assert_close(manifold.to_dense(manifold.retr(x, u)), expected)


def test_orthographic_retraction_is_the_dense_formula(shape, gen):
    """R1, retraction="orthographic": the dense formula of Absil & Malick 2012 (Prop. 24),
    Y = (X + xi) V (U^T (X + xi) V)^{-1} U^T (X + xi), whose offset Y - (X + xi) is normal
    (U^T D = 0, D V = 0), and ||Y - (X + t xi)|| = O(t^2) (second order)."""
    manifold = make("fixed_rank_embedded", *shape, retraction="orthographic")
    x = manifold.random_point(generator=gen)
    u = manifold.random_tangent(x, generator=gen)
    u = 0.3 * u / manifold.norm(x, u)
    uu, vv, _ = manifold.unpack(x)
    step = manifold.to_dense(x) + manifold.tangent_to_dense(x, u)
    expected = step @ vv @ torch.linalg.solve(uu.T @ step @ vv, uu.T @ step)
    y = manifold.to_dense(manifold.retr(x, u))
    torch.testing.assert_close(y, expected)
    torch.testing.assert_close(uu.T @ (y - step), torch.zeros_like(uu.T @ y), atol=1e-12, rtol=0)
    torch.testing.assert_close((y - step) @ vv, torch.zeros_like(y @ vv), atol=1e-12, rtol=0)
    errors = []
    for t in (1e-1, 1e-2, 1e-3):
        moved = manifold.to_dense(x) + t * manifold.tangent_to_dense(x, u)
        errors.append(torch.linalg.norm(manifold.to_dense(manifold.retr(x, t * u)) - moved))
    for coarse, fine in zip(errors, errors[1:]):
        assert 50 < coarse / fine < 200  # t / 10 -> error / 100: error / t^2 about constant


def test_unknown_retraction_lists_the_allowed_ones():
    with pytest.raises(ValueError, match="'polar'.*allowed: svd, orthographic"):
        make("fixed_rank_embedded", 12, 12, 3, retraction="polar")


# ------------------------------------------------------------------------- transport
def test_transport_lands_in_new_tangent_space(manifold, x, gen):
    u = manifold.random_tangent(x, generator=gen)
    v = manifold.random_tangent(x, generator=gen)
    y = manifold.retr(x, 0.3 * u / manifold.norm(x, u))
    w = manifold.transp(x, y, v)
    assert_tangent(manifold, y, w)
    y2, w2 = manifold.retr_transp(x, 0.3 * u / manifold.norm(x, u), v)
    torch.testing.assert_close(y2, y)
    torch.testing.assert_close(w2, w)


def test_transport_to_the_same_point_is_identity(manifold, x, gen):
    v = manifold.random_tangent(x, generator=gen)
    torch.testing.assert_close(manifold.transp(x, x, v), v)


def test_transport_to_a_repaired_point_keeps_the_dense_vector(manifold, x, gen):
    v = manifold.random_tangent(x, generator=gen)
    y = manifold.repair(x)
    torch.testing.assert_close(
        manifold.tangent_to_dense(y, manifold.transp(x, y, v)), manifold.tangent_to_dense(x, v)
    )


# -------------------------------------------------------------------------- gradient
def test_rgrad_matches_directional_derivative(manifold, x, gen):
    """<grad f(x), v>_x = d/dt f(retr(x, t v)) at t = 0, central differences."""
    target = randn_like(manifold.to_dense(x), gen)
    _, egrad = loss_and_egrad(manifold, x, target)
    rgrad = manifold.egrad2rgrad(x, egrad)
    for _ in range(3):
        v = manifold.random_tangent(x, generator=gen)
        t = 1e-6
        f_plus = loss_of_dense(manifold.to_dense(manifold.retr(x, t * v)), target)
        f_minus = loss_of_dense(manifold.to_dense(manifold.retr(x, -t * v)), target)
        fd = (f_plus - f_minus) / (2 * t)
        torch.testing.assert_close(manifold.inner(x, rgrad, v), fd, atol=1e-6, rtol=1e-6)


def test_quotient_rgrad_is_gram_preconditioned_factor_gradient(shape, gen):
    """R2 (docs/papers/knight.md §3): grad = (G R (R^T R)^{-1}, G^T L (L^T L)^{-1}), G = dL/dW."""
    manifold = make("fixed_rank_quotient", *shape)
    x = manifold.random_point(generator=gen)
    target = randn_like(manifold.to_dense(x), gen)
    w = manifold.to_dense(x).requires_grad_(True)
    (g,) = torch.autograd.grad(loss_of_dense(w, target), w)
    left, right = manifold.unpack(x)
    expected = manifold.pack(
        g @ right @ torch.linalg.inv(right.T @ right), g.T @ left @ torch.linalg.inv(left.T @ left)
    )
    _, egrad = loss_and_egrad(manifold, x, target)
    torch.testing.assert_close(manifold.egrad2rgrad(x, egrad), expected)


def test_rgrad_is_steepest_ascent(manifold, x, gen):
    """The Riemannian gradient's norm is the largest directional derivative per unit step."""
    target = randn_like(manifold.to_dense(x), gen)
    _, egrad = loss_and_egrad(manifold, x, target)
    rgrad = manifold.egrad2rgrad(x, egrad)
    best = manifold.norm(x, rgrad)
    for _ in range(5):
        v = manifold.random_tangent(x, generator=gen)
        assert manifold.inner(x, rgrad, v) / manifold.norm(x, v) <= best * (1 + 1e-12)


# ------------------------------------------------------------------- batched points
def test_batched_points_match_one_by_one(manifold, gen):
    xs = manifold.random_point(2, dtype=torch.float64, generator=gen)
    gs = randn_like(xs, gen)
    us = torch.stack([manifold.random_tangent(xs[i], generator=gen) for i in range(2)])
    ys = manifold.retr(xs, 0.1 * us)
    rg = manifold.egrad2rgrad(xs, gs)
    tr = manifold.transp(xs, ys, us)
    inner = manifold.inner(xs, us, keepdim=True)
    assert inner.shape == (2, 1, 1)
    for i in range(2):
        torch.testing.assert_close(ys[i], manifold.retr(xs[i], 0.1 * us[i]))
        torch.testing.assert_close(rg[i], manifold.egrad2rgrad(xs[i], gs[i]))
        torch.testing.assert_close(tr[i], manifold.transp(xs[i], ys[i], us[i]))
        torch.testing.assert_close(inner[i, 0, 0], manifold.inner(xs[i], us[i]))


# -------------------------------------------------------------------- from_factors
def test_from_factors(manifold, gen):
    n, m, r = manifold.n, manifold.m, manifold.r
    left = torch.randn(n, r, dtype=torch.float64, generator=gen)
    right = torch.randn(m, r, dtype=torch.float64, generator=gen)
    x, scale = manifold.from_factors(left, right)
    assert_on_manifold(manifold, x)
    w = left @ right.T
    if manifold.name in FIXED_RANK:
        assert scale is None
        torch.testing.assert_close(manifold.to_dense(x), w)
    else:
        a, sigma, bh = torch.linalg.svd(w)
        torch.testing.assert_close(manifold.to_dense(x), a[:, :r] @ bh[:r])
        torch.testing.assert_close(scale, sigma[:r].norm() / r**0.5)


# -------------------------------------------------------------------------- errors
def test_make_rejects_unknown_geometry():
    with pytest.raises(ValueError) as err:
        make("fixed_rank", 12, 12, 3)
    for allowed in GEOMETRIES:
        assert allowed in str(err.value)


@pytest.mark.parametrize("n, m, r", [(12, 12, 0), (12, 12, 13), (36, 12, 13), (4, 12, -1)])
def test_make_rejects_bad_rank(name, n, m, r):
    with pytest.raises(ValueError) as err:
        make(name, n, m, r)
    message = str(err.value)
    assert f"r={r}" in message and f"n={n}" in message and f"m={m}" in message


@pytest.mark.parametrize("name", PARTIAL_ISOMETRY)
def test_non_orthonormal_partial_isometry_is_rejected(name, gen):
    manifold = make(name, 12, 12, 3)
    u, v = manifold.unpack(manifold.random_point(generator=gen))
    bad = manifold.pack(2.0 * u, v)
    with pytest.raises(ValueError, match="not orthonormal"):
        manifold.check_point(bad)
    with pytest.raises(ValueError):
        geoopt.ManifoldParameter(bad, manifold=manifold).manifold.assert_check_point_on_manifold(
            bad
        )


def test_wrong_shape_is_rejected(manifold):
    with pytest.raises(ValueError, match="shape"):
        manifold.check_point(torch.zeros(5, manifold.r, dtype=torch.float64))


# -------------------------------------------------------------------------- memory
def _peak_rss_since_reset() -> int | None:
    """Linux: reset the peak-RSS counter (VmHWM) and return a reader of its growth."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        with open("/proc/self/status") as f:
            status = f.read()
    except OSError:
        return None
    return int(status.split("VmHWM:")[1].split()[0]) * 1024


def _peak_rss() -> int:
    with open("/proc/self/status") as f:
        return int(f.read().split("VmHWM:")[1].split()[0]) * 1024


def test_large_steps_never_allocate_an_n_by_m_matrix():
    """n = m = 20000, r = 8: one RiemannianAdam and one RiemannianNormalized step per variant.

    An n x m float32 matrix would take n * m * 4 = 1.6 GB; the peak resident memory may grow
    by less than half of that while the steps run (the whole point set is ~1.3 MB).
    """
    from bench.optim.riemannian import RiemannianNormalized

    n = m = 20000
    r = 8
    gen = torch.Generator().manual_seed(0)
    dense_bytes = n * m * 4
    baseline = _peak_rss_since_reset()
    if baseline is None:
        pytest.skip("peak RSS cannot be reset on this system")
    for variant in GEOMETRY_VARIANTS:
        manifold = make_variant(variant, n, m, r)
        t_left = torch.randn(n, r, generator=gen) / n**0.5
        t_right = torch.randn(m, r, generator=gen) / m**0.5
        for opt_cls in (geoopt.optim.RiemannianAdam, RiemannianNormalized):
            p = geoopt.ManifoldParameter(
                manifold.random_point(dtype=torch.float32, generator=gen), manifold=manifold
            )
            opt = opt_cls([p], lr=1e-2)
            left, right = manifold.factors(p)
            # 1/2 ||L R^T - T_L T_R^T||^2 in factored form (r x r Gram products only)
            loss = 0.5 * (
                ((left.T @ left) * (right.T @ right)).sum()
                - 2 * ((left.T @ t_left) * (right.T @ t_right)).sum()
            )
            loss.backward()
            opt.step()
            assert manifold.check_point(p.detach())
    growth = _peak_rss() - baseline
    assert growth < 0.5 * dense_bytes, f"peak RSS grew by {growth / 1e6:.0f} MB"


# ------------------------------------------------------------- fast exact forms (issue 32)
def test_retr_transp_along_is_retr_transp_of_the_scaled_step(manifold, gen):
    """retr_transp_along(x, v, t) = retr_transp(x, t v, v) for a tangent v and one t per point
    (RiemannianNormalized's step), as dense matrices (the factors' gauge may differ)."""
    xs = manifold.random_point(4, dtype=torch.float64, generator=gen)
    v = manifold.random_tangent(xs, generator=gen)
    t = torch.tensor([0.3, -0.1, 0.05, 0.0], dtype=torch.float64).view(4, 1, 1)
    y1, w1 = manifold.retr_transp_along(xs, v, t)
    y2, w2 = manifold.retr_transp(xs, t * v, v)
    assert_on_manifold(manifold, y1)
    torch.testing.assert_close(manifold.to_dense(y1), manifold.to_dense(y2))
    for i in range(4):
        assert_tangent(manifold, y1[i], w1[i])
    torch.testing.assert_close(manifold.tangent_to_dense(y1, w1), manifold.tangent_to_dense(y2, w2))


@pytest.mark.parametrize("cond", [1.0, 1e2, 4096.0])
@pytest.mark.parametrize("name", EMBEDDED)
def test_float32_truncated_retraction_is_exact_to_float32_rounding(name, cond, gen):
    """In float32 the retraction's matrix is the float64 truncated SVD's to float32 rounding,
    with S's condition number up to 4096 (repair's floor) for R1, whose 2r x 2r core goes to
    LAPACK's SVD, and for P1, whose core is factorised through K^T K (`top_singular`)."""
    manifold = make(name, 64, 48, 8)
    x = manifold.random_point(16, generator=gen)
    if name == "fixed_rank_embedded":
        u, v, _ = manifold.unpack(x)
        sigma = torch.logspace(0, -float(torch.log10(torch.tensor(cond))), 8, dtype=torch.float64)
        x = manifold.pack(u, v, torch.diag_embed(sigma.expand(16, 8)))
        size = sigma[-1]  # steps small against the smallest singular value
    else:
        size = 1.0
    xi = manifold.random_tangent(x, generator=gen)
    xi = 0.1 * size * xi / manifold.norm(x, xi, keepdim=True)
    for step in (manifold.retr, lambda p, u: manifold.retr_transp_along(p, u, 1.0)[0]):
        exact = manifold.to_dense(step(x, xi))
        y = step(x.float(), xi.float())
        manifold.check_point(y)
        error = (manifold.to_dense(y).double() - exact).norm(dim=(-2, -1))
        assert (error / exact.norm(dim=(-2, -1))).max() < 2e-6  # float32 rounding: ~1e-7


def test_top_singular_takes_the_svd_where_the_values_spread(gen):
    """top_singular(unit_values=True) (P1's cores): K^T K's eigendecomposition for cores whose
    kept values spread at most SPREAD_FOR_EIGH, LAPACK's SVD (bitwise) for the others, in one
    stack; both give the top r triplets (K B = A diag(s), K^T A = B diag(s), s the float64
    singular values')."""
    from bench.manifolds.linalg import SPREAD_FOR_EIGH, top_singular

    r = 4
    a0 = torch.linalg.qr(torch.randn(6, 8, 8, generator=gen, dtype=torch.float64))[0]
    b0 = torch.linalg.qr(torch.randn(6, 8, 8, generator=gen, dtype=torch.float64))[0]
    kept = torch.tensor([[2.0, 1.5, 1.2, 1.0], [1000.0, 10.0, 2.0, 1.0]], dtype=torch.float64)
    tail = torch.tensor([1e-2, 5e-3, 1e-3, 0.0], dtype=torch.float64)
    values = torch.cat((kept.repeat(3, 1), tail.expand(6, 4)), dim=-1)  # rows alternate
    k = ((a0 * values.unsqueeze(-2)) @ b0.mT).float()  # (6, 8, 8)
    a, s, b = top_singular(k, r, unit_values=True)
    wide = (values[:, 0] / values[:, r - 1] > SPREAD_FOR_EIGH)
    assert wide.tolist() == [False, True] * 3
    u, sv, vh = torch.linalg.svd(k[wide])
    assert torch.equal(a[wide], u[..., :r]) and torch.equal(s[wide], sv[..., :r])
    assert torch.equal(b[wide], vh[..., :r, :].mT)
    scale = values[:, :1].unsqueeze(-1).float()  # (6, 1, 1): s_1 of each core
    torch.testing.assert_close(k @ b / scale, a * s.unsqueeze(-2) / scale, atol=1e-5, rtol=0)
    torch.testing.assert_close(k.mT @ a / scale, b * s.unsqueeze(-2) / scale, atol=1e-5, rtol=0)
    torch.testing.assert_close(s.double(), values[:, :r], rtol=1e-5, atol=0)


def test_truncated_retraction_of_a_rank_deficient_step(gen):
    """U_p of rank < r (here the zero step, and a step of rank 1) makes U_p^T U_p singular:
    its root comes from a QR then (`gram_root`), and the retraction is still the truncation."""
    from bench.manifolds.linalg import gram_root

    manifold = make("fixed_rank_embedded", 12, 10, 3)
    x = manifold.random_point(generator=gen)
    u, v, _ = manifold.unpack(x)
    a = randn_like(u[:, :1], gen)
    up = (a - u @ (u.T @ a)) @ torch.ones(1, 3, dtype=torch.float64)  # rank 1, ⊥ U
    for scale in (0.0, 0.1):
        xi = manifold.pack(scale * up, torch.zeros_like(v), torch.zeros(3, 3, dtype=torch.float64))
        root, gram = gram_root(scale * up)
        torch.testing.assert_close(root.T @ root, gram)
        target = manifold.to_dense(x) + manifold.tangent_to_dense(x, xi)
        a_, sigma, bh = torch.linalg.svd(target)
        torch.testing.assert_close(manifold.to_dense(manifold.retr(x, xi)),
                                   (a_[:, :3] * sigma[:3]) @ bh[:3])


@pytest.mark.parametrize("with_c", [True, False])
def test_combine_into_a_block_of_a_packed_stack_is_the_product(with_c, gen):
    """combine(x, xp, c, cp, out=block) for a block of a packed (P, n + m, r) stack (not
    contiguous: the fresh product is copied in) writes x c + xp cp (x + xp cp without c), the
    float64 einsum's, into that block only, and returns it."""
    from bench.manifolds.linalg import combine

    x, xp = (torch.randn(5, 7, 3, generator=gen, dtype=torch.float64) for _ in range(2))
    c, cp = (torch.randn(5, 3, 3, generator=gen, dtype=torch.float64) for _ in range(2))
    packed = torch.full((5, 11, 3), 7.0, dtype=torch.float64)
    block = packed[:, :7]
    assert not block.is_contiguous()
    written = combine(x, xp, c if with_c else None, cp, out=block)
    expected = torch.einsum("pnk,pkr->pnr", xp, cp)
    expected = expected + (torch.einsum("pnk,pkr->pnr", x, c) if with_c else x)
    assert written.data_ptr() == block.data_ptr()
    torch.testing.assert_close(packed[:, :7], expected)
    assert torch.equal(packed[:, 7:], torch.full((5, 4, 3), 7.0, dtype=torch.float64))


def test_factorisations_on_threads_are_the_one_call_results():
    """on_threads splits a stack of small factorisations across torch's threads: each matrix
    is factorised by itself, so the results are bitwise those of one call."""
    from bench.manifolds.linalg import on_threads

    gen = torch.Generator().manual_seed(0)
    k = torch.randn(40, 8, 8, generator=gen)
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        for fn, arg in ((torch.linalg.svd, k), (torch.linalg.eigh, k @ k.mT)):
            for mine, theirs in zip(on_threads(fn, arg), fn(arg)):
                assert torch.equal(mine, theirs)
        assert on_threads(torch.linalg.inv, k.view(5, 8, 8, 8)).shape == (5, 8, 8, 8)
    finally:
        torch.set_num_threads(previous)
