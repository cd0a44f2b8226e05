"""P1: rank-r partial isometries embedded in R^{n x m} (docs/papers/knight.md §3, P1)."""

from __future__ import annotations

from .base import PartialIsometryBase
from .linalg import eye_like, mT, skew, transport_embedded, truncated_retraction


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
        uu, vv = self.unpack(x)
        ud, vd = self._proju_blocks(x, u)
        cu = mT(uu) @ ud  # Omega / 2: (..., r, r)
        cv = mT(vv) @ vd  # -Omega / 2
        up = ud - uu @ cu  # (..., n, r)
        vp = vd - vv @ cv  # (..., m, r)
        u_new, _, v_new = truncated_retraction(uu, vv, eye_like(cu) + cu - cv, up, vp)
        return self.pack(u_new, v_new)

    def transp(self, x, y, v):
        uu, vv = self.unpack(x)
        ud, vd = self.unpack(v)
        u2, v2 = self.unpack(y)
        # dense Z = U_dot V^T + U V_dot^T, projected onto T_y
        up, vp, core = transport_embedded(uu, vv, ud, vd, u2, v2)
        half_omega = skew(core) / 2  # (..., r, r)
        return self.pack(up + u2 @ half_omega, vp - v2 @ half_omega)
