"""R2: rank-r matrices as the quotient of factor pairs by GL(r) (docs/papers/knight.md §3, R2)."""

from __future__ import annotations

import torch

from .base import LowRankManifold
from .linalg import combine, factored_svd, frob, mT, spd_inverse


class FixedRankQuotient(LowRankManifold):
    r"""Fixed-rank matrices W = L R^T as (L, R) full rank modulo (L, R) ~ (L A, R A^{-T}).

    Mishra, Meyer, Bonnabel & Sepulchre 2014. Point: [L; R] of shape (..., n + m, r),
    factors(x) = (L, R). Metric on the factor pair, scaled by the other factor's Gram:
        g((xi_L, xi_R), (eta_L, eta_R)) = tr((R^T R) xi_L^T eta_L) + tr((L^T L) xi_R^T eta_R).
    Vertical vectors (moving along the GL(r) orbit) are (L A, -R A^T); tangent vectors of the
    quotient are stored as horizontal lifts, g-orthogonal to them:
        (L^T L)^{-1} L^T xi_L = xi_R^T R (R^T R)^{-1}.
    The horizontal projection subtracts (L A, -R A^T) with
        A = 1/2 [(L^T L)^{-1} L^T xi_L - xi_R^T R (R^T R)^{-1}]   (closed form, no Sylvester).
    Riemannian gradient: the factor gradients preconditioned by the other factor's Gram
    inverse, (G_L (R^T R)^{-1}, G_R (L^T L)^{-1}) = (G R (R^T R)^{-1}, G^T L (L^T L)^{-1});
    it is horizontal already when the loss depends on W only (it is projected anyway, so that
    e.g. an L2 penalty on the factors is handled). Retraction: (L + xi_L, R + xi_R).

    Transport to y = (L2, R2): the dense vector Z = xi_L R^T + L xi_R^T is projected onto the
    tangent space of the rank-r matrices at W2 = L2 R2^T and lifted horizontally at y:
        C = (L2^T L2)^{-1} L2^T Z R2 (R2^T R2)^{-1},
        eta_L = Z R2 (R2^T R2)^{-1} - L2 C / 2,   eta_R = Z^T L2 (L2^T L2)^{-1} - R2 C^T / 2.
    This is the identity for y = x and equivariant under the GL(r) action, so `repair` may move
    to the balanced representative (L^T L = R^T R, same W) without spoiling momenta.
    Cost O((n + m) r^2 + r^3).
    """

    name = "fixed_rank_quotient"
    kind = "fixed_rank"

    def tangent_to_dense(self, x, u):
        left, right = self.unpack(x)
        ul, ur = self.unpack(u)
        return ul @ mT(right) + left @ mT(ur)

    @staticmethod
    def _gram_inverses(left, right):
        gl_inv = spd_inverse(mT(left) @ left)  # (L^T L)^{-1}: (..., r, r)
        gr_inv = spd_inverse(mT(right) @ right)  # (R^T R)^{-1}: (..., r, r)
        return gl_inv, gr_inv

    @staticmethod
    def _horizontal(left, right, gl_inv, gr_inv, xl, xr, out=(None, None)):
        a = 0.5 * (gl_inv @ (mT(left) @ xl) - (mT(xr) @ right) @ gr_inv)  # (..., r, r)
        return combine(xl, left, None, -a, out=out[0]), combine(xr, right, None, mT(a), out=out[1])

    # ----------------------------------------------------------------- points
    def from_factors(self, left, right):
        """The balanced representative of W = L R^T: L' = U sigma^1/2, R' = V sigma^1/2."""
        u, sigma, v = factored_svd(left, right)
        root = sigma.sqrt().unsqueeze(-2)  # (..., 1, r)
        return self.pack(u * root, v * root), None

    def random_point(self, *batch, dtype=torch.float64, device=None, generator=None):
        """Gaussian factors, deliberately not balanced (any full-rank pair is a point)."""
        return self.pack(*self._gaussian_factors(batch, dtype, device, generator))

    def projx(self, x):
        """Full-rank pairs are an open set: every full-rank pair already is a point."""
        return x.clone()

    def repair(self, x):
        """Move to the balanced representative (same W, L^T L = R^T R, best conditioned)."""
        return self.from_factors(*self.unpack(x))[0]

    # --------------------------------------------------------------- geometry
    def proju(self, x, u):
        left, right = self.unpack(x)
        gl_inv, gr_inv = self._gram_inverses(left, right)
        out = torch.empty_like(u)
        self._horizontal(left, right, gl_inv, gr_inv, *self.unpack(u), out=self.unpack(out))
        return out

    def egrad2rgrad(self, x, u):
        left, right = self.unpack(x)
        gl, gr = self.unpack(u)
        gl_inv, gr_inv = self._gram_inverses(left, right)
        xl = gl @ gr_inv  # G_L (R^T R)^{-1}: (..., n, r)
        xr = gr @ gl_inv  # G_R (L^T L)^{-1}: (..., m, r)
        out = torch.empty_like(u)
        self._horizontal(left, right, gl_inv, gr_inv, xl, xr, out=self.unpack(out))
        return out

    def inner(self, x, u, v=None, *, keepdim=False):
        left, right = self.unpack(x)
        ul, ur = self.unpack(u)
        vl, vr = (ul, ur) if v is None else self.unpack(v)
        gl = mT(left) @ left  # (..., r, r)
        gr = mT(right) @ right  # (..., r, r)
        return frob(ul @ gr, vl, keepdim=keepdim) + frob(ur @ gl, vr, keepdim=keepdim)

    def retr(self, x, u):
        return x + self.proju(x, u)

    def retr_transp_along(self, x, v, t):
        """retr_transp(x, t v, v) for a horizontal v: the step x + t v needs no projection."""
        y = torch.addcmul(x, t, v)
        return y, self.transp(x, y, v)

    def transp(self, x, y, v):
        left, right = self.unpack(x)
        vl, vr = self.unpack(v)
        l2, r2 = self.unpack(y)
        gl2_inv, gr2_inv = self._gram_inverses(l2, r2)
        zr = combine(vl, left, mT(right) @ r2, mT(vr) @ r2)  # Z R2: (..., n, r)
        ztl = combine(right, vr, mT(vl) @ l2, mT(left) @ l2)  # Z^T L2: (..., m, r)
        c = gl2_inv @ (mT(l2) @ zr) @ gr2_inv  # (..., r, r)
        out = torch.empty_like(v)
        ol, orr = self.unpack(out)
        combine(zr, l2, gr2_inv, -0.5 * c, out=ol)
        combine(ztl, r2, gl2_inv, -0.5 * mT(c), out=orr)
        return out

    # ----------------------------------------------------------------- checks
    def _check_point_on_manifold(self, x, *, atol=1e-5, rtol=1e-5):
        for label, f in zip(("L", "R"), self.unpack(x)):
            sv = torch.linalg.svdvals(f)  # (..., r)
            if not bool(torch.isfinite(sv).all()):
                return False, f"{label} is not finite"
            if not bool((sv[..., -1] > atol * sv[..., 0]).all()):
                return False, f"{label} does not have full column rank r={self.r}"
        return True, None

    def _check_vector_on_tangent(self, x, u, *, atol=1e-5, rtol=1e-5):
        left, right = self.unpack(x)
        ul, ur = self.unpack(u)
        # horizontal: L^T xi_L (R^T R) = (L^T L) xi_R^T R
        lhs = mT(left) @ ul @ (mT(right) @ right)
        rhs = (mT(left) @ left) @ mT(ur) @ right
        if not self._small(lhs - rhs, atol, rtol, lhs.abs().amax() + rhs.abs().amax()):
            return False, "not horizontal: L^T xi_L R^T R != L^T L xi_R^T R"
        return True, None
