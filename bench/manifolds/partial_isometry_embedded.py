"""P1: rank-r partial isometries embedded in R^{n x m} (docs/papers/knight.md §3, P1)."""

from __future__ import annotations

import torch

from .base import PartialIsometryBase
from .linalg import (
    combine,
    eye_like,
    mT,
    skew,
    transport_embedded,
    transport_embedded_from,
    truncated_core,
    truncated_retraction,
)


class PartialIsometryEmbedded(PartialIsometryBase):
    r"""Partial isometries W = U V^T as a submanifold of R^{n x m} with the Frobenius metric.

    Layout, tangent vectors and checks: see `PartialIsometryBase` ([U; V], velocities
    (U_dot, V_dot) with U^T U_dot = -V^T V_dot = Omega / 2). The metric is the Frobenius
    product of the dense tangent matrices U Omega V^T + U_p V^T + U V_p^T (rotation_weight =
    4), so the Riemannian gradient is the orthogonal projection of G:
        Omega = skew(U^T G V),  U_p = (I - U U^T) G V,  V_p = (I - V V^T) G^T U.
    Retraction: the polar factor of the rank-r truncation of W + xi. As for R1 (Vandereycken
    2013), W + xi = [U, Q_u] K [V, Q_v]^T with U_p = Q_u R_u, V_p = Q_v R_v and the 2r x 2r
    core K = [[I + Omega, R_v^T], [R_u, 0]]; its top-r singular vectors give U', V' and the
    singular values are set to 1. Transport: orthogonal projection of the dense tangent vector
    onto the new tangent space, in factored form. Cost O((n + m) r^2 + r^3).
    """

    name = "partial_isometry_embedded"
    kind = "partial_isometry"
    rotation_weight = 4.0

    def retr(self, x, u):
        uu, vv, ud, vd, cu, cv, half_omega = self._proju_parts(x, u)
        # the projected vector's U_p = (I - U U^T) U_dot, V_p = (I - V V^T) V_dot, rotation
        # Omega = 2 H: U_p = U_dot - U (C_u' + H), V_p = V_dot - V (C_v' - H)
        up = combine(ud, uu, None, -(cu + half_omega))  # (..., n, r)
        vp = combine(vd, vv, None, half_omega - cv)  # (..., m, r)
        core = eye_like(half_omega) + 2 * half_omega  # I + Omega
        u_new, _, v_new = truncated_retraction(uu, vv, core, up, vp, unit_values=True)
        return self.pack(u_new, v_new)

    def retr_transp_along(self, x, v, t):
        """retr_transp(x, t v, v) for a tangent v = (U_dot, V_dot): its rotation H = U^T U_dot
        (V^T V_dot = -H), U_pv = U_dot - U H, V_pv = V_dot + V H and their Gram matrices serve
        the retraction (core I + 2 t H, `truncated_core`) and the transport of the dense
        Z = U (2H) V^T + U_pv V^T + U V_pv^T (`transport_embedded_from`): 13 products with
        n x r or m x r factors instead of 22."""
        uu, vv = self.unpack(x)
        ud, vd = self.unpack(v)
        h = mT(uu) @ ud  # (..., r, r)
        omega = h - mT(h)  # the dense vector's U^T Z V = 2 skew(H)
        upv, vpv = combine(ud, uu, None, -h), combine(vd, vv, None, h)  # (..., n|m, r)
        gram_u, gram_v = mT(upv) @ upv, mT(vpv) @ vpv  # (..., r, r)
        _, coefficients, _ = truncated_core(
            eye_like(h) + t * omega, upv, vpv, unit_values=True,
            grams=((t * t) * gram_u, (t * t) * gram_v), scale=t)
        alpha, beta, gamma, delta = coefficients
        y, moved = torch.empty_like(x), torch.empty_like(v)
        u2, v2 = self.unpack(y)
        combine(uu, upv, alpha, t * beta, out=u2)  # (..., n, r)
        combine(vv, vpv, gamma, t * delta, out=v2)  # (..., m, r)
        # as `transp`: U_p2 + U2 Omega/2 = Z V2 + U2 (Omega/2 - M2), V_p2 - V2 Omega/2 =
        # Z^T U2 - V2 (M2^T + Omega/2), Omega/2 = skew(M2) / 2, in U, U_pv (V, V_pv)
        (a_u, b_u, a_v, b_v), _ = transport_embedded_from(
            omega, coefficients, t * gram_u, t * gram_v, t,
            lambda m: skew(m) / 2 - m, lambda m: -(mT(m) + skew(m) / 2))
        up2, vp2 = self.unpack(moved)
        combine(uu, upv, a_u, b_u, out=up2)  # (..., n, r)
        combine(vv, vpv, a_v, b_v, out=vp2)  # (..., m, r)
        return y, moved

    def transp(self, x, y, v):
        uu, vv = self.unpack(x)
        ud, vd = self.unpack(v)
        u2, v2 = self.unpack(y)
        # dense Z = U_dot V^T + U V_dot^T, projected onto T_y
        up, vp, core = transport_embedded(uu, vv, ud, vd, u2, v2)
        half_omega = skew(core) / 2  # (..., r, r)
        return self.pack(up + u2 @ half_omega, vp - v2 @ half_omega)
