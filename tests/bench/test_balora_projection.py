"""Balanced projection of LoRA factors (docs/papers/balora.md §2-§3), checked against dense
numpy."""

import numpy as np
import pytest
import torch

from bench.adapters.balancing import (
    ALIGNMENTS,
    balancing_gap,
    project_balanced,
    project_balanced_with_rotation,
    rotate_moments,
    rotate_second_moments,
)


def factors(r=4, n_in=30, n_out=20, seed=0, dtype=torch.float64, scale_B=3.0):
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(r, n_in, generator=g, dtype=torch.float64)  # (r, in)
    B = scale_B * torch.randn(n_out, r, generator=g, dtype=torch.float64)  # (out, r)
    return A.to(dtype), B.to(dtype)


def random_orthogonal(r, rng):
    Q, R = np.linalg.qr(rng.standard_normal((r, r)))
    return Q * np.sign(np.diag(R))  # Haar distributed


def dist(A1, B1, A2, B2):
    """Frobenius distance of the stacked factors [A; B^T]."""
    return np.sqrt(np.sum((A1 - A2) ** 2) + np.sum((B1 - B2) ** 2))


@pytest.mark.parametrize("alignment", ALIGNMENTS)
def test_projection_keeps_product(alignment):
    A, B = factors()
    A_new, B_new = project_balanced(A, B, alignment)
    dense = B.numpy() @ A.numpy()  # (out, in), computed only here
    np.testing.assert_allclose(B_new.numpy() @ A_new.numpy(), dense, rtol=0, atol=1e-10)


@pytest.mark.parametrize("alignment", ALIGNMENTS)
def test_projection_balances(alignment):
    A, B = factors()
    assert balancing_gap(A, B) > 1.0
    A_new, B_new = project_balanced(A, B, alignment)
    a, b = A_new.numpy(), B_new.numpy()
    np.testing.assert_allclose(a @ a.T, b.T @ b, rtol=0, atol=1e-10)
    assert balancing_gap(A_new, B_new) < 1e-10


@pytest.mark.parametrize("alignment", ALIGNMENTS)
def test_balanced_grams_are_singular_values(alignment):
    A, B = factors()
    S = np.linalg.svd(B.numpy() @ A.numpy(), compute_uv=False)[:4]  # top r of the dense product
    A_new, B_new = project_balanced(A, B, alignment)
    gram = B_new.numpy().T @ B_new.numpy()
    np.testing.assert_allclose(np.linalg.eigvalsh(gram)[::-1], S, rtol=1e-10)
    if alignment == "none":  # the raw SVD representative: Grams are exactly diag(S)
        np.testing.assert_allclose(gram, np.diag(S), rtol=0, atol=1e-10)


def test_procrustes_is_closest_balanced_factorisation():
    A, B = factors()
    a, b = A.numpy(), B.numpy()
    A_p, B_p = (t.numpy() for t in project_balanced(A, B, "procrustes"))
    A_s, B_s = (t.numpy() for t in project_balanced(A, B, "none"))
    d_p = dist(A_p, B_p, a, b)
    rng = np.random.default_rng(0)
    for _ in range(500):  # every balanced factorisation of B A is (Q^T A*, B* Q)
        Q = random_orthogonal(4, rng)
        assert d_p <= dist(Q.T @ A_s, B_s @ Q, a, b) + 1e-9
    for alignment in ("none", "sign"):
        A_o, B_o = (t.numpy() for t in project_balanced(A, B, alignment))
        assert d_p <= dist(A_o, B_o, a, b) + 1e-9


def test_procrustes_is_continuous():
    A, B = factors()
    A_new, B_new = project_balanced(A, B)
    g = torch.Generator().manual_seed(1)
    eps = 1e-7
    dA = eps * torch.randn(A.shape, generator=g, dtype=A.dtype)
    dB = eps * torch.randn(B.shape, generator=g, dtype=B.dtype)
    A2, B2 = project_balanced(A + dA, B + dB)
    change = torch.sqrt(torch.sum((A2 - A_new) ** 2) + torch.sum((B2 - B_new) ** 2)).item()
    assert change < 1e3 * eps


def test_already_balanced_input_is_a_fixed_point():
    A, B = factors()
    A_bal, B_bal = project_balanced(A, B)
    A2, B2 = project_balanced(A_bal, B_bal)
    torch.testing.assert_close(A2, A_bal, rtol=0, atol=1e-10)
    torch.testing.assert_close(B2, B_bal, rtol=0, atol=1e-10)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_low_precision_keeps_dtype_and_product(dtype):
    A, B = factors(dtype=dtype)
    A_new, B_new = project_balanced(A, B)
    assert A_new.dtype == dtype and B_new.dtype == dtype
    ref = B.double() @ A.double()  # the product of the (rounded) inputs
    rel = torch.linalg.norm(B_new.double() @ A_new.double() - ref) / torch.linalg.norm(ref)
    assert rel.item() < 4 * torch.finfo(dtype).eps


def test_batched_equals_per_item():
    g = torch.Generator().manual_seed(2)
    A = torch.randn(3, 2, 4, 12, generator=g, dtype=torch.float64)  # (..., r, in)
    B = torch.randn(3, 2, 9, 4, generator=g, dtype=torch.float64)  # (..., out, r)
    for alignment in ALIGNMENTS:
        A_new, B_new, R = project_balanced_with_rotation(A, B, alignment)
        for i in range(3):
            for j in range(2):
                a, b, rot = project_balanced_with_rotation(A[i, j], B[i, j], alignment)
                torch.testing.assert_close(A_new[i, j], a, rtol=0, atol=1e-12)
                torch.testing.assert_close(B_new[i, j], b, rtol=0, atol=1e-12)
                torch.testing.assert_close(R[i, j], rot, rtol=0, atol=1e-12)


@pytest.mark.parametrize("which", ["B", "A", "both"])
@pytest.mark.parametrize("alignment", ALIGNMENTS)
def test_zero_factor_gives_zeros(which, alignment):
    A, B = factors()
    if which in ("B", "both"):
        B = torch.zeros_like(B)  # LoRA's init: B A = 0
    if which in ("A", "both"):
        A = torch.zeros_like(A)
    A_new, B_new, R = project_balanced_with_rotation(A, B, alignment)
    assert torch.isfinite(R).all()
    assert torch.count_nonzero(A_new) == 0 and torch.count_nonzero(B_new) == 0


def test_rank_deficient_product_stays_finite():
    A, B = factors()
    B[:, 2:] = 0  # rank-2 product: two components die as (0, 0)
    A_new, B_new = project_balanced(A, B)
    assert torch.isfinite(A_new).all() and torch.isfinite(B_new).all()
    np.testing.assert_allclose(B_new.numpy() @ A_new.numpy(), B.numpy() @ A.numpy(), atol=1e-10)
    assert balancing_gap(A_new, B_new) < 1e-10
    assert torch.linalg.matrix_rank(B_new).item() == 2


def test_more_rank_than_columns_pads_dead_components():
    A, B = factors(r=6, n_in=4, n_out=20)  # r > in: at most 4 live components
    A_new, B_new = project_balanced(A, B)
    np.testing.assert_allclose(B_new.numpy() @ A_new.numpy(), B.numpy() @ A.numpy(), atol=1e-10)
    assert balancing_gap(A_new, B_new) < 1e-10


def test_rotation_maps_old_frame_to_new():
    A, B = factors()
    A_bal, B_bal = project_balanced(A, B)
    Q = torch.from_numpy(random_orthogonal(4, np.random.default_rng(3)))
    A_old, B_old = Q.T @ A_bal, B_bal @ Q  # balanced input in a rotated frame
    # "none" jumps to the raw SVD frame; R is the rotation that takes the old frame there.
    A_new, B_new, R = project_balanced_with_rotation(A_old, B_old, "none")
    torch.testing.assert_close(B_old @ R, B_new, rtol=0, atol=1e-10)
    torch.testing.assert_close(R.T @ A_old, A_new, rtol=0, atol=1e-10)
    # Procrustes keeps the frame: R = I.
    _, _, R_p = project_balanced_with_rotation(A, B, "procrustes")
    torch.testing.assert_close(R_p, torch.eye(4, dtype=R_p.dtype), rtol=0, atol=1e-12)


def test_rotated_moments_are_the_new_gradients():
    """At a balanced point rotated by Q, gradients at the new point are the rotated old ones."""
    A, B = factors()
    A_bal, B_bal = project_balanced(A, B)
    Q = torch.from_numpy(random_orthogonal(4, np.random.default_rng(4)))
    A_old, B_old = Q.T @ A_bal, B_bal @ Q
    G = torch.randn(20, 30, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    A_new, B_new, R = project_balanced_with_rotation(A_old, B_old, "none")
    # loss <G, B A>: grad_A = B^T G, grad_B = G A^T
    m_A, m_B = rotate_moments(R, B_old.T @ G, G @ A_old.T)
    torch.testing.assert_close(m_A, B_new.T @ G, rtol=0, atol=1e-10)
    torch.testing.assert_close(m_B, G @ A_new.T, rtol=0, atol=1e-10)
    v_A, v_B = rotate_second_moments(R, (B_old.T @ G) ** 2, (G @ A_old.T) ** 2)
    assert (v_A >= 0).all() and (v_B >= 0).all()
    torch.testing.assert_close(v_A.sum(), ((B_old.T @ G) ** 2).sum())


def test_plain_lora_gradient_descent_conserves_gap():
    """B^T B - A A^T is conserved by gradient flow (docs/papers/balora.md §2); GD changes it by
    O(lr^2)."""
    g = torch.Generator().manual_seed(6)
    W0, T = (torch.randn(20, 30, generator=g, dtype=torch.float64) for _ in range(2))
    A0 = torch.randn(4, 30, generator=g, dtype=torch.float64)
    B0 = 0.1 * torch.randn(20, 4, generator=g, dtype=torch.float64)
    A, B, lr = A0.clone(), B0.clone(), 1e-4
    for _ in range(200):
        G = W0 + B @ A - T  # dL/dW for L = 1/2 ||W0 + B A - T||^2
        A, B = A - lr * B.T @ G, B - lr * G @ A.T
    gap_change = torch.linalg.norm((B.T @ B - A @ A.T) - (B0.T @ B0 - A0 @ A0.T))
    gram_change = torch.linalg.norm(B.T @ B - B0.T @ B0)
    assert gram_change > 0.1  # the factors moved ...
    assert gap_change < 1e-2 * gram_change  # ... but their imbalance did not


def test_unknown_alignment_raises():
    A, B = factors()
    with pytest.raises(ValueError, match="procrustes.*sign.*none"):
        project_balanced(A, B, "svd")


def test_mismatched_shapes_raise():
    A, B = factors()
    with pytest.raises(ValueError, match="shapes"):
        project_balanced(A, B[:, :3])


def test_moment_transport_rotates_riemannian_adam_moments_of_r2_layers():
    """adapter=balora_riemannian, moments=transport: the R2 layers' Riemannian Adam moments
    (packed like the point [L; R_f]) are rotated with the frame, exp_avg <- exp_avg R and
    exp_avg_sq <- exp_avg_sq (R∘R), so exp_avg is the same dense tangent vector at the new point.
    The point is first moved along its orbit by a random rotation Q (same W), so R ~ Q^T != I."""
    import geoopt
    from omegaconf import OmegaConf

    from bench.adapters import build_adapter
    from bench.adapters.lora import ManifoldLoRALinear
    from bench.config import AdapterConfig
    from bench.models.gpt import GPT, GPTConfig

    torch.manual_seed(0)
    model = GPT(GPTConfig(d_model=32, n_layer=1, n_head=2, seq_len=16))
    adapter = build_adapter(OmegaConf.structured(AdapterConfig(
        name="balora", r=4, geometry="fixed_rank_quotient", init_scale=0.1, alignment="none",
        moments="transport")))
    model = adapter.apply(model)
    opt = geoopt.optim.RiemannianAdam([p for p in model.parameters() if p.requires_grad], 1e-2)
    x = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(1))
    for _ in range(3):
        opt.zero_grad()
        model(x, x)[1].backward()
        opt.step()
    layer = next(m for m in model.modules() if isinstance(m, ManifoldLoRALinear))
    manifold, state = layer.manifold, opt.state[layer.point]
    q = torch.from_numpy(random_orthogonal(4, np.random.default_rng(7))).to(layer.point.dtype)
    with torch.no_grad():  # same W, same horizontal lift, in a rotated frame
        dense_before = manifold.tangent_to_dense(layer.point, state["exp_avg"]).clone()
        layer.point.copy_(layer.point @ q)
        state["exp_avg"].copy_(state["exp_avg"] @ q)
    x_old, m_old = layer.point.detach().clone(), state["exp_avg"].clone()
    v_old = state["exp_avg_sq"].clone()
    left, right = manifold.unpack(x_old)
    _, _, R = project_balanced_with_rotation(right.mT, left, "none")
    R = R.to(x_old.dtype)
    assert (R - torch.eye(4, dtype=R.dtype)).abs().max() > 0.1

    adapter.after_step(3, opt)
    torch.testing.assert_close(state["exp_avg"], m_old @ R, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(state["exp_avg_sq"], v_old @ (R * R), rtol=1e-4, atol=1e-9)
    x_new = layer.point.detach()
    err = (manifold.tangent_to_dense(x_new, state["exp_avg"]) - dense_before).norm()
    kept = (manifold.tangent_to_dense(x_new, m_old) - dense_before).norm()  # moments=keep
    assert err < 0.05 * dense_before.norm() and kept > 0.5 * dense_before.norm()


def test_moment_transport_is_accepted_with_riemannian_adam_and_refused_without_moments():
    """balora_riemannian's R2 layers take moments=transport with Riemannian Adam (AdamW cannot
    step them: a point on a manifold needs a Riemannian optimizer); an optimizer without moment
    estimates is refused with the line naming the keys."""
    from bench.config import ConfigError, validate
    from tests.conftest import compose

    base = ["adapter=balora_riemannian", "adapter.moments=transport"]
    validate(compose([*base, "optimizer=riemannian_adam"]))
    validate(compose(["adapter=balora", "adapter.moments=transport", "optimizer=adamw"]))
    with pytest.raises(ConfigError, match=r"^adapter.moments=transport needs an optimizer with "
                       r"moment estimates \(adamw or riemannian_adam\); "
                       r"optimizer.name='riemannian_sgd' has none$"):
        validate(compose([*base, "optimizer=riemannian_sgd"]))
