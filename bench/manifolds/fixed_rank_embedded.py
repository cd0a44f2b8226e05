"""R1: rank-r matrices as an embedded submanifold of R^{n x m} (docs/papers/knight.md §3, R1)."""

from __future__ import annotations

import torch

from .base import LowRankManifold, euclidean_inner, orthonormality_error
from .linalg import (
    combine,
    eye_like,
    factored_svd,
    inverse,
    mT,
    on_threads,
    orthographic_core,
    orthographic_svd,
    qr_pos,
    transport_embedded,
    transport_embedded_from,
    truncated_core,
    truncated_retraction,
)


class FixedRankEmbedded(LowRankManifold):
    r"""Fixed-rank matrices W = U S V^T, embedded in R^{n x m} with the Frobenius metric.

    Point: U in St(n, r), V in St(m, r), S invertible r x r (not necessarily diagonal),
    packed as [U; V; S] of shape (..., n + m + r, r). factors(x) = (U S, V).

    Tangent vectors (Vandereycken 2013, Prop. 2.1; Absil & Oseledets 2015):
        xi = U M V^T + U_p V^T + U V_p^T,   U^T U_p = 0,  V^T V_p = 0,
    stored as [U_p; V_p; M]. The Frobenius metric of the dense matrices is then the plain
    Euclidean product of the packed blocks: <xi, eta> = <U_p, U_p'> + <V_p, V_p'> + <M, M'>.

    Riemannian gradient = orthogonal projection of G = dL/dW, which is never formed: from the
    factor gradients of W = U S V^T (G_U = G V S^T, G_V = G^T U S, G_S = U^T G V),
        G V = G_U S^{-T},   G^T U = G_V S^{-1},   U^T G V = G_S,
        M = G_S,   U_p = (I - U U^T) G V,   V_p = (I - V V^T) G^T U.
    Retraction (`retraction=`):
      "svd" (default): the best rank-r approximation of W + xi, from the Gram matrices of U_p,
        V_p and the SVD of a 2r x 2r core (`truncated_retraction`); defined for any step.
      "orthographic": W + xi + U_p (S + M)^{-1} V_p^T, back along the normal space (Absil &
        Malick 2012, Prop. 24; `orthographic_retraction`): Cholesky factorisations, an r x r
        inverse and an r x r SVD instead of the 2r x 2r one; also second order, but it needs
        S + M invertible, i.e. steps small against S's smallest singular value (a LoRA update
        that starts near 0 has tiny S: keep "svd" there). Its S' = R_L Z R_R^T is not
        diagonal; the r x r SVD S' = P diag(sigma) Q^T re-diagonalises it (U' P, V' Q,
        diag(sigma); W' unchanged, `orthographic_svd`), which keeps the factors in the svd
        retraction's gauge, so that Adam's per-entry moments follow the same factors from step
        to step.
    Transport: orthogonal projection of the dense tangent vector onto the new tangent space, in
    factored form. Every operation costs O((n + m) r^2 + r^3).

    `repair` re-orthonormalises U and V by QR (absorbing the triangular factors into S, so W is
    unchanged) and floors S's singular values at `sigma_floor * sigma_max`
    (default sqrt(machine epsilon)), which bounds the error of the products with S^{-1}.
    """

    name = "fixed_rank_embedded"
    kind = "fixed_rank"
    retractions = ("svd", "orthographic")

    def __init__(
        self, n: int, m: int, r: int, sigma_floor: float | None = None, retraction: str = "svd"
    ):
        super().__init__(n, m, r)
        if retraction not in self.retractions:
            raise ValueError(
                f"unknown retraction {retraction!r} for {self.name}; "
                f"allowed: {', '.join(self.retractions)}"
            )
        self.sigma_floor = sigma_floor
        self.retraction = retraction

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, retraction={self.retraction}"

    def batch_key(self) -> tuple:
        return (*super().batch_key(), self.retraction, self.sigma_floor)

    @property
    def block_rows(self):
        return (self.n, self.m, self.r)

    def factors(self, x):
        u, v, s = self.unpack(x)
        return u @ s, v

    def tangent_to_dense(self, x, u):
        uu, vv, _ = self.unpack(x)
        up, vp, mm = self.unpack(u)
        return (uu @ mm + up) @ mT(vv) + uu @ mT(vp)

    # ----------------------------------------------------------------- points
    def from_factors(self, left, right):
        """W = L R^T as U diag(sigma) V^T (thin QRs and an r x r SVD); returns (x, None)."""
        u, sigma, v = factored_svd(left, right)
        return self.pack(u, v, torch.diag_embed(sigma)), None

    def projx(self, x):
        """Re-orthonormalise U, V by QR and absorb the triangular factors into S (W kept)."""
        u, v, s = self.unpack(x)
        qu, ru = qr_pos(u)  # (..., n, r), (..., r, r)
        qv, rv = qr_pos(v)  # (..., m, r), (..., r, r)
        return self.pack(qu, qv, ru @ s @ mT(rv))

    def repair(self, x):
        u, v, s = self.unpack(self.projx(x))
        a, sigma, bh = on_threads(torch.linalg.svd, s)  # (..., r, r), (..., r), (..., r, r)
        floor = self.sigma_floor
        if floor is None:
            floor = torch.finfo(x.dtype).eps ** 0.5
        sigma = torch.maximum(sigma, floor * sigma[..., :1])
        return self.pack(u, v, a @ (sigma.unsqueeze(-1) * bh))

    # --------------------------------------------------------------- geometry
    def _proju_blocks(self, x, u):
        uu, vv, _ = self.unpack(x)
        up, vp, mm = self.unpack(u)
        return up - uu @ (mT(uu) @ up), vp - vv @ (mT(vv) @ vp), mm

    def proju(self, x, u):
        return self.pack(*self._proju_blocks(x, u))

    def egrad2rgrad(self, x, u):
        uu, vv, s = self.unpack(x)
        gu, gv, gs = self.unpack(u)
        out = torch.empty_like(u)  # the blocks are written in place: no concatenation
        up, vp, mm = self.unpack(out)
        sigma = torch.diagonal(s, dim1=-2, dim2=-1)  # (..., r)
        if bool((s == torch.diag_embed(sigma)).all()):
            # S = diag(sigma), as every retraction leaves it: S^{-1} scales columns
            inv = (1 / sigma).unsqueeze(-2)  # (..., 1, r)
            torch.mul(gu, inv, out=up)  # G V = G_U S^{-T}: (..., n, r)
            torch.mul(gv, inv, out=vp)  # G^T U = G_V S^{-1}: (..., m, r)
        else:  # one r x r inverse and products: cheaper than solves with n right-hand sides
            s_inv = inverse(s)  # (..., r, r)
            up.copy_(gu @ mT(s_inv))
            vp.copy_(gv @ s_inv)
        # embedded_tangent in place: U_p = (I - U U^T) G V, V_p = (I - V V^T) G^T U, M = G_S
        up.sub_(uu @ (mT(uu) @ up))
        vp.sub_(vv @ (mT(vv) @ vp))
        mm.copy_(gs)
        return out

    def inner(self, x, u, v=None, *, keepdim=False):
        return euclidean_inner(u, v, keepdim)

    def retr(self, x, u):
        uu, vv, s = self.unpack(x)
        up, vp, mm = self._proju_blocks(x, u)
        if self.retraction == "orthographic":
            # Re-diagonalised (the gauge): W' = U' diag(sigma) V'^T with orthonormal factors. A
            # non-diagonal S' lets U', V' drift by rotations P, Q from step to step; the point
            # is the same, but Adam's per-entry moments of the packed factors are not invariant
            # under those rotations (SGD's and the normalized step's are), so it diverged.
            u_new, sigma, v_new = orthographic_svd(uu, vv, s + mm, up, vp)
        else:
            u_new, sigma, v_new = truncated_retraction(uu, vv, s + mm, up, vp)
        return self.pack(u_new, v_new, torch.diag_embed(sigma))

    def retr_transp_along(self, x, v, t):
        """retr_transp(x, t v, v) for a tangent v = (U_pv, V_pv, M_v): the step's blocks are
        t (U_pv, V_pv, M_v) without a projection, its Gram matrices t^2 U_pv^T U_pv,
        t^2 V_pv^T V_pv serve the retraction (`truncated_core`; for the orthographic one
        L^T L = I + Z^{-T} G_u Z^{-1}, `orthographic_core`) and the transport
        (`transport_embedded_from`, C_u = t U_pv^T U_pv): 10 products with n x r or m x r
        factors instead of 20, and the new point and vector written in place."""
        uu, vv, s = self.unpack(x)
        upv, vpv, mv = self.unpack(v)
        gram_u, gram_v = mT(upv) @ upv, mT(vpv) @ vpv  # (..., r, r)
        core = s + t * mv  # Z = S + t M_v
        if self.retraction == "orthographic":
            z_inv = inverse(core)
            eye = eye_like(core)
            sigma, coefficients = orthographic_core(
                core, z_inv, eye + (t * t) * mT(z_inv) @ gram_u @ z_inv,
                eye + (t * t) * z_inv @ gram_v @ mT(z_inv))
        else:
            sigma, coefficients, _ = truncated_core(
                core, upv, vpv, grams=((t * t) * gram_u, (t * t) * gram_v), scale=t)
        alpha, beta, gamma, delta = coefficients
        y, moved = torch.empty_like(x), torch.empty_like(v)
        u2, v2, s2 = self.unpack(y)
        combine(uu, upv, alpha, t * beta, out=u2)  # U alpha + U_p beta: (..., n, r)
        combine(vv, vpv, gamma, t * delta, out=v2)  # (..., m, r)
        s2.copy_(torch.diag_embed(sigma))
        # Z V2 - U2 M2 and Z^T U2 - V2 M2^T in U, U_pv (V, V_pv): (a_u, b_u, a_v, b_v)
        (a_u, b_u, a_v, b_v), m2 = transport_embedded_from(
            mv, coefficients, t * gram_u, t * gram_v, t, lambda m: -m, lambda m: -mT(m))
        up2, vp2, mm2 = self.unpack(moved)
        combine(uu, upv, a_u, b_u, out=up2)  # (..., n, r)
        combine(vv, vpv, a_v, b_v, out=vp2)  # (..., m, r)
        mm2.copy_(m2)
        return y, moved

    def transp(self, x, y, v):
        uu, vv, _ = self.unpack(x)
        up, vp, mm = self.unpack(v)
        u2, v2, _ = self.unpack(y)
        # dense Z = (U M + U_p) V^T + U V_p^T, projected onto T_y
        return self.pack(*transport_embedded(uu, vv, up, vp, u2, v2, m=mm))

    # ----------------------------------------------------------------- checks
    def _check_point_on_manifold(self, x, *, atol=1e-5, rtol=1e-5):
        u, v, s = self.unpack(x)
        for label, f in (("U", u), ("V", v)):
            err = orthonormality_error(f)
            if not err <= atol:
                return False, f"{label} is not orthonormal: max|{label}^T {label} - I| = {err:.3g}"
        sigma = torch.linalg.svdvals(s)
        if not bool(torch.isfinite(sigma).all() and (sigma[..., -1] > 0).all()):
            return False, "S is singular or not finite (W must have rank r)"
        return True, None

    def _check_vector_on_tangent(self, x, u, *, atol=1e-5, rtol=1e-5):
        uu, vv, _ = self.unpack(x)
        up, vp, _ = self.unpack(u)
        scale = u.abs().amax()
        if not self._small(mT(uu) @ up, atol, rtol, scale):
            return False, "U^T U_p != 0"
        if not self._small(mT(vv) @ vp, atol, rtol, scale):
            return False, "V^T V_p != 0"
        return True, None
