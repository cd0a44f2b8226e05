"""Small batched linear algebra shared by the low-rank geometries.

Every function works on stacks of matrices (leading batch dimensions allowed) and costs
O((n + m) r^2 + r^3): nothing here forms an n x m matrix.
"""

from __future__ import annotations

import torch


def mT(a: torch.Tensor) -> torch.Tensor:
    """Transpose of the last two dimensions."""
    return a.transpose(-1, -2)


def sym(a: torch.Tensor) -> torch.Tensor:
    return 0.5 * (a + mT(a))


def skew(a: torch.Tensor) -> torch.Tensor:
    return 0.5 * (a - mT(a))


def eye_like(a: torch.Tensor, k: int | None = None) -> torch.Tensor:
    """Identity of size k (default a's last dim), with a's dtype and device."""
    k = a.shape[-1] if k is None else k
    return torch.eye(k, dtype=a.dtype, device=a.device)


def qr_pos(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Thin QR with diag(R) >= 0, so that qr_pos(Q) = (Q, I) for orthonormal Q (idempotent)."""
    q, r = torch.linalg.qr(a)  # (..., n, k), (..., k, k)
    sign = torch.diagonal(r, dim1=-2, dim2=-1).sign()
    sign = torch.where(sign == 0, torch.ones_like(sign), sign)
    return q * sign.unsqueeze(-2), r * sign.unsqueeze(-1)


def cholesky_qr(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Thin QR of a (..., n, k) matrix close to orthonormal, from its k x k Gram matrix.

    a^T a = C C^T (Cholesky), a = Q R with R = C^T and Q = a C^{-T}: the same Q, R as `qr_pos`
    (diag(R) > 0), in one Gram product, a k x k Cholesky and a triangular solve: about half the
    cost of a batched Householder QR for n = 256, k = 32 on CPU. Q's loss of orthonormality is
    about eps * cond(a)^2 (CholeskyQR), so use it only where a^T a is well conditioned, e.g.
    a = orthonormal + orthogonal perturbation (a^T a >= I).
    """
    c = torch.linalg.cholesky(mT(a) @ a)  # (..., k, k), lower
    q = torch.linalg.solve_triangular(mT(c), a, upper=True, left=False)  # a C^{-T}: (..., n, k)
    return q, mT(c)


def polar(a: torch.Tensor) -> torch.Tensor:
    """Orthonormal polar factor a (a^T a)^(-1/2) of a full-column-rank (..., n, k) matrix.

    Via the eigendecomposition of the k x k Gram matrix: O(n k^2 + k^3). Used where a is
    close to orthonormal (a = X + tangent step, Gram = I + D^T D >= I), where squaring the
    condition number is harmless.
    """
    w, q = torch.linalg.eigh(mT(a) @ a)  # (..., k), (..., k, k)
    inv_sqrt = w.clamp_min(torch.finfo(a.dtype).tiny).rsqrt()
    return a @ ((q * inv_sqrt.unsqueeze(-2)) @ mT(q))


def polar_svd(a: torch.Tensor) -> torch.Tensor:
    """Polar factor by a thin SVD: robust for any full-rank input (used by projx)."""
    u, _, vh = torch.linalg.svd(a, full_matrices=False)
    return u @ vh


def factored_svd(
    left: torch.Tensor, right: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Thin SVD W = U diag(sigma) V^T of W = left @ right^T, without forming W.

    left = Q_L R_L, right = Q_R R_R (thin QR), R_L R_R^T = A diag(sigma) B^T (r x r SVD), so
    U = Q_L A, V = Q_R B. Returns (U (..., n, r), sigma (..., r), V (..., m, r)); cost
    O((n + m) r^2 + r^3).
    """
    ql, rl = qr_pos(left)  # (..., n, r), (..., r, r)
    qr_, rr = qr_pos(right)  # (..., m, r), (..., r, r)
    a, sigma, bh = torch.linalg.svd(rl @ mT(rr))  # (..., r, r), (..., r), (..., r, r)
    u = ql @ a
    v = qr_ @ mT(bh)
    return u, sigma, v


def embedded_tangent(
    u: torch.Tensor, v: torch.Tensor, zv: torch.Tensor, ztu: torch.Tensor, utzv: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Orthogonal projection of a (never formed) n x m matrix Z onto the tangent space at U V^T.

    The tangent space of the rank-r matrices at W = U S V^T is {U M V^T + U_p V^T + U V_p^T}
    with U^T U_p = 0, V^T V_p = 0 (Vandereycken 2013, Prop. 2.1); Z enters only through
    Z V (n x r), Z^T U (m x r) and U^T Z V (r x r):
        M = U^T Z V,  U_p = (I - U U^T) Z V,  V_p = (I - V V^T) Z^T U.
    Returns (U_p, V_p, M).
    """
    up = zv - u @ (mT(u) @ zv)  # (..., n, r)
    vp = ztu - v @ (mT(v) @ ztu)  # (..., m, r)
    return up, vp, utzv


def transport_embedded(
    u: torch.Tensor,
    v: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    u2: torch.Tensor,
    v2: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`embedded_tangent` at (U2, V2) of the dense tangent vector Z = A V^T + U B^T at (U, V).

    Vector transport by projection (Absil, Mahony & Sepulchre 2008, §8.1.3). Z enters through
    four r x r products only:
        Z V2 = A (V^T V2) + U (B^T V2),   Z^T U2 = V (A^T U2) + B (U^T U2),
        U2^T Z V2 = (A^T U2)^T (V^T V2) + (U^T U2)^T (B^T V2),
    so the projection costs 4 Gram products and 4 products with n x r or m x r factors.
    Returns (U_p, V_p, M) at (U2, V2).
    """
    vtv2 = mT(v) @ v2  # (..., r, r)
    btv2 = mT(b) @ v2
    atu2 = mT(a) @ u2
    utu2 = mT(u) @ u2
    zv = a @ vtv2 + u @ btv2  # (..., n, r)
    ztu = v @ atu2 + b @ utu2  # (..., m, r)
    core = mT(atu2) @ vtv2 + mT(utu2) @ btv2  # (..., r, r)
    return zv - u2 @ core, ztu - v2 @ mT(core), core


def truncated_retraction(
    u: torch.Tensor, v: torch.Tensor, core: torch.Tensor, up: torch.Tensor, vp: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Best rank-r approximation of U core V^T + U_p V^T + U V_p^T (U_p ⊥ U, V_p ⊥ V).

    Thin QR U_p = Q_u R_u, V_p = Q_v R_v; then the matrix equals
        [U, Q_u] K [V, Q_v]^T,   K = [[core, R_v^T], [R_u, 0]]   (2r x 2r),
    and [U, Q_u], [V, Q_v] have orthonormal columns, so its rank-r truncation comes from the
    SVD of the small core K (Vandereycken 2013, §3; Absil & Oseledets 2015).
    Returns (U', sigma', V') with U' (..., n, r), sigma' (..., r), V' (..., m, r).
    """
    r = u.shape[-1]
    qu, ru = torch.linalg.qr(up)  # (..., n, r), (..., r, r)
    qv, rv = torch.linalg.qr(vp)  # (..., m, r), (..., r, r)
    k = torch.cat(
        (torch.cat((core, mT(rv)), dim=-1), torch.cat((ru, torch.zeros_like(ru)), dim=-1)),
        dim=-2,
    )  # (..., 2r, 2r)
    a, sigma, bh = torch.linalg.svd(k)  # (..., 2r, 2r), (..., 2r), (..., 2r, 2r)
    a = a[..., :r]  # (..., 2r, r)
    b = mT(bh[..., :r, :])  # (..., 2r, r)
    u_new = u @ a[..., :r, :] + qu @ a[..., r:, :]  # (..., n, r)
    v_new = v @ b[..., :r, :] + qv @ b[..., r:, :]  # (..., m, r)
    return u_new, sigma[..., :r], v_new


def orthographic_retraction(
    u: torch.Tensor, v: torch.Tensor, core: torch.Tensor, up: torch.Tensor, vp: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Orthographic retraction of U core V^T + U_p V^T + U V_p^T (U_p ⊥ U, V_p ⊥ V).

    Go back to the rank-r matrices along the normal space {U_perp N V_perp^T} of the point
    X = U S V^T (Absil & Malick 2012, Prop. 24, eq. (37); Absil & Oseledets 2015): with
    xi = U M V^T + U_p V^T + U V_p^T and Z = core = S + M (r x r, invertible),
        Y = X + xi + U_p Z^{-1} V_p^T                 (the added term is normal: rank r again)
          = (U Z + U_p) Z^{-1} (Z V^T + V_p^T) = L Z R^T,
        L = U + U_p Z^{-1} (n x r),   R = V + V_p Z^{-T} (m x r).
    L^T L = I + Z^{-T} U_p^T U_p Z^{-1} >= I, so L = Q_L R_L by `cholesky_qr` is accurate
    (likewise R = Q_R R_R), and Y = Q_L (R_L Z R_R^T) Q_R^T: Cholesky QRs and one r x r
    inverse, no SVD. Second order like the truncated SVD (Absil & Malick 2012), but only
    defined while Z is invertible: the normal term U_p Z^{-1} V_p^T grows without bound as a
    step's M approaches -S, so keep steps small against S's smallest singular value.
    Returns (U', S', V') with U' (..., n, r), S' (..., r, r) (not diagonal), V' (..., m, r).
    """
    z_inv = torch.linalg.inv(core)  # (..., r, r)
    ql, rl = cholesky_qr(u + up @ z_inv)  # (..., n, r), (..., r, r)
    qr_, rr = cholesky_qr(v + vp @ mT(z_inv))  # (..., m, r), (..., r, r)
    return ql, rl @ core @ mT(rr), qr_


def frob(a: torch.Tensor, b: torch.Tensor, keepdim: bool = False) -> torch.Tensor:
    """Frobenius inner product over the last two dimensions."""
    return (a * b).sum(dim=(-2, -1), keepdim=keepdim)
