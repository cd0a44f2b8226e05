"""Small batched linear algebra shared by the low-rank geometries.

Every function works on stacks of matrices (leading batch dimensions allowed) and costs
O((n + m) r^2 + r^3): nothing here forms an n x m matrix.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

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


_POOL: tuple[int, int, ThreadPoolExecutor] | None = None  # (pid, workers, pool)
MIN_CHUNK = 8  # matrices per thread below which splitting a stack costs more than it saves
SPREAD_FOR_EIGH = 4.0  # top_singular(unit_values): s_1 / s_r above which the SVD takes over


def _one_thread() -> None:
    """A pool thread's torch work runs on that thread alone (its OpenMP and MKL settings are
    per thread): a thread that factorises small matrices never starts a team of its own,
    whose waiting threads would take the cores from the main thread's parallel work."""
    torch.set_num_threads(1)


def _pool(workers: int) -> ThreadPoolExecutor:
    """A thread pool of `workers` threads, made again after a fork (threads do not survive it)."""
    global _POOL
    if _POOL is None or _POOL[0] != os.getpid() or _POOL[1] != workers:
        _POOL = (os.getpid(), workers, ThreadPoolExecutor(
            workers, thread_name_prefix="linalg", initializer=_one_thread))
    return _POOL[2]


def on_threads(fn, *stacks: torch.Tensor):
    """fn(*stacks) for stacks of small matrices (..., k, l): LAPACK single-threaded, the stacks
    split across threads.

    torch's CPU factorisations of a stack (svd, eigh, qr, inv, cholesky, ...) call LAPACK once
    per matrix, one after the other. Within one call LAPACK may use every intra-op thread,
    which for 32 x 32 or 64 x 64 matrices only costs synchronisation (2-4x slower on a loaded
    2-core machine, measured). Here each matrix is factorised on one thread (intra-op threads
    set to 1 while fn runs, restored after), and the stacks are split along their flattened
    leading dimension into chunks that torch.get_num_threads() threads take in turn (torch
    releases the GIL inside an op; four chunks a thread, so that a thread slowed by another
    process leaves its share to the others), the results concatenated: the same values as fn
    on the whole stack (each matrix is factorised by itself), in about 1 / threads of the time
    on idle cores. On CUDA: fn(*stacks) itself. `fn` returns a tensor or a tuple (or named
    tuple) of tensors with the same leading dims.
    """
    first = stacks[0]
    if first.device.type != "cpu":
        return fn(*stacks)
    lead = first.shape[:-2]
    count = first[..., 0, 0].numel()
    threads = torch.get_num_threads()
    workers = min(threads, count // MIN_CHUNK)
    torch.set_num_threads(1)
    try:
        if workers < 2:
            return fn(*stacks)
        flat = [s.reshape(count, *s.shape[-2:]) for s in stacks]
        chunks = min(4 * workers, count // MIN_CHUNK)
        grad = torch.is_grad_enabled()

        def run(args):
            with torch.set_grad_enabled(grad):  # grad mode is per thread
                return fn(*args)

        parts = list(_pool(workers).map(run, zip(*(s.tensor_split(chunks) for s in flat))))
    finally:
        torch.set_num_threads(threads)

    def join(pieces):
        out = torch.cat(pieces)
        return out.reshape(*lead, *out.shape[1:])

    if isinstance(parts[0], torch.Tensor):
        return join(parts)
    return tuple(join(pieces) for pieces in zip(*parts))


def qr_pos(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Thin QR with diag(R) >= 0, so that qr_pos(Q) = (Q, I) for orthonormal Q (idempotent)."""
    q, r = on_threads(torch.linalg.qr, a)  # (..., n, k), (..., k, k)
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


def inverse(a: torch.Tensor) -> torch.Tensor:
    """torch.linalg.inv of a stack of small matrices, `on_threads`."""
    return on_threads(torch.linalg.inv, a)


def spd_inverse(g: torch.Tensor) -> torch.Tensor:
    """Inverse of symmetric positive definite (..., k, k) matrices (Gram matrices of full-rank
    factors) from their Cholesky factors: about half the cost of an LU inverse for k = 32;
    matrices whose Cholesky factorisation fails (numerically singular) get the LU inverse."""
    c, info = on_threads(torch.linalg.cholesky_ex, g)
    out = on_threads(torch.cholesky_inverse, c)
    failed = info != 0
    if bool(failed.any()):
        out[failed] = torch.linalg.inv(g[failed])
    return out


def polar(a: torch.Tensor) -> torch.Tensor:
    """Orthonormal polar factor a (a^T a)^(-1/2) of a full-column-rank (..., n, k) matrix.

    Via the eigendecomposition of the k x k Gram matrix: O(n k^2 + k^3). Used where a is
    close to orthonormal (a = X + tangent step, Gram = I + D^T D >= I), where squaring the
    condition number is harmless. The k x k eigendecompositions run on all threads
    (`on_threads`); to take the polar factors of several stacks at once, concatenate them.
    """
    w, q = on_threads(torch.linalg.eigh, mT(a) @ a)  # (..., k), (..., k, k)
    inv_sqrt = w.clamp_min(torch.finfo(a.dtype).tiny).rsqrt()
    return a @ ((q * inv_sqrt.unsqueeze(-2)) @ mT(q))


def polar_pair(
    a: torch.Tensor, b: torch.Tensor, out: tuple[torch.Tensor, torch.Tensor] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(polar(a), polar(b)) for (..., n, k) and (..., m, k) stacks with one eigendecomposition
    call on their stacked k x k Gram matrices (the two factors of a point); into `out`."""
    grams = torch.stack((mT(a) @ a, mT(b) @ b))  # (2, ..., k, k)
    w, q = on_threads(torch.linalg.eigh, grams)  # (2, ..., k), (2, ..., k, k)
    inv_sqrt = w.clamp_min(torch.finfo(a.dtype).tiny).rsqrt()
    roots = (q * inv_sqrt.unsqueeze(-2)) @ mT(q)  # (a^T a)^{-1/2}, (b^T b)^{-1/2}
    if out is None:
        return a @ roots[0], b @ roots[1]
    return out[0].copy_(a @ roots[0]), out[1].copy_(b @ roots[1])  # blocks: see `combine`


def polar_svd(a: torch.Tensor) -> torch.Tensor:
    """Polar factor by a thin SVD: robust for any full-rank input (used by projx)."""
    u, _, vh = on_threads(lambda m: torch.linalg.svd(m, full_matrices=False), a)
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
    a, sigma, bh = on_threads(torch.linalg.svd, rl @ mT(rr))  # (..., r, r), (..., r), (..., r, r)
    u = ql @ a
    v = qr_ @ mT(bh)
    return u, sigma, v


def combine(
    x: torch.Tensor,
    xp: torch.Tensor,
    c: torch.Tensor | None,
    cp: torch.Tensor,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """x c + xp cp (x + xp cp for c None) for (..., n, r) factors and (..., r, r) coefficients,
    into `out` if given (e.g. a block of a packed tensor, so that no concatenation follows):
    batched products with the add fused (bmm, baddbmm) for stacks of points.

    An `out` that is not contiguous gets a copy of the fresh result: torch's CPU bmm and
    baddbmm into a strided stack (a block of a packed point, batch stride (n + m) r) run point
    by point on one thread, about twice the time of the fresh product and the copy together
    (96 points of 256 x 32, 2 threads)."""
    if out is not None and not out.is_contiguous():
        return out.copy_(combine(x, xp, c, cp))
    if x.dim() == xp.dim() == cp.dim() == 3 and (c is None or c.dim() == 3):
        if c is None:
            return torch.baddbmm(x, xp, cp) if out is None else torch.baddbmm(x, xp, cp, out=out)
        first = torch.bmm(x, c) if out is None else torch.bmm(x, c, out=out)
        return first.baddbmm_(xp, cp)
    result = (x if c is None else x @ c) + xp @ cp
    return result if out is None else out.copy_(result)


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
    up = combine(zv, u, None, -(mT(u) @ zv))  # (..., n, r)
    vp = combine(ztu, v, None, -(mT(v) @ ztu))  # (..., m, r)
    return up, vp, utzv


def transport_embedded(
    u: torch.Tensor,
    v: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    u2: torch.Tensor,
    v2: torch.Tensor,
    m: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`embedded_tangent` at (U2, V2) of the dense tangent vector Z = A V^T + U B^T at (U, V),
    where A = U M + a (or A = a when M is None).

    Vector transport by projection (Absil, Mahony & Sepulchre 2008, §8.1.3). Z enters through
    four r x r products only (with A^T U2 = M^T (U^T U2) + a^T U2, so A is never formed):
        Z V2 = A (V^T V2) + U (B^T V2),   Z^T U2 = V (A^T U2) + B (U^T U2),
        U2^T Z V2 = (A^T U2)^T (V^T V2) + (U^T U2)^T (B^T V2),
    so the projection costs 4 Gram products and 6 products with n x r or m x r factors.
    Returns (U_p, V_p, M) at (U2, V2).
    """
    vtv2 = mT(v) @ v2  # (..., r, r)
    btv2 = mT(b) @ v2
    utu2 = mT(u) @ u2
    atu2 = mT(a) @ u2  # a^T U2, then A^T U2
    if m is None:
        zv = combine(a, u, vtv2, btv2)  # A (V^T V2) + U (B^T V2): (..., n, r)
    else:
        zv = combine(u, a, m @ vtv2 + btv2, vtv2)  # U (M V^T V2 + B^T V2) + a V^T V2
        atu2 = atu2 + mT(m) @ utu2
    ztu = combine(v, b, atu2, utu2)  # (..., m, r)
    core = mT(atu2) @ vtv2 + mT(utu2) @ btv2  # (..., r, r)
    return zv - u2 @ core, ztu - v2 @ mT(core), core


def transport_embedded_from(
    m_v: torch.Tensor,
    coefficients: tuple[torch.Tensor, ...],
    c_u: torch.Tensor,
    c_v: torch.Tensor,
    scale: torch.Tensor | float,
    x_u: Callable[[torch.Tensor], torch.Tensor],
    x_v: Callable[[torch.Tensor], torch.Tensor],
) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
    """The coefficients of Z V2 + U2 X_u and Z^T U2 + V2 X_v in the old factors, for the dense
    tangent vector Z = U M_v V^T + U_pv V^T + U V_pv^T at (U, V) (U_pv ⊥ U, V_pv ⊥ V) and the
    point (U2, V2) of a retraction along the step (U_p, V_p) = scale (U_pv, V_pv), whose
    factors are U2 = U alpha + U_p beta, V2 = V gamma + V_p delta (`truncated_core`;
    `coefficients` = (alpha, beta, gamma, delta)), given C_u = U_pv^T U_p, C_v = V_pv^T V_p.

    Then U^T U2 = alpha, V^T V2 = gamma, U_pv^T U2 = C_u beta, V_pv^T V2 = C_v delta, and with
    A = U M_v + U_pv:
        Z V2 = U (M_v gamma + C_v delta) + U_pv gamma,   Z^T U2 = V (A^T U2) + V_pv alpha,
        A^T U2 = M_v^T alpha + C_u beta,   M2 = U2^T Z V2 = (A^T U2)^T gamma + alpha^T C_v delta.
    `x_u`, `x_v` (..., r, r) are functions of M2 (called with it): the projection onto
    T_(U2, V2) (Absil, Mahony & Sepulchre 2008, §8.1.3) is Z V2 - U2 M2, Z^T U2 - V2 M2^T (R1:
    X_u = -M2, X_v = -M2^T), plus a rotation for a partial isometry. Every term is a product
    of U, U_pv (or V, V_pv) with r x r matrices, so
        Z V2 + U2 X_u = U (M_v gamma + C_v delta + alpha X_u) + U_pv (gamma + scale beta X_u),
        Z^T U2 + V2 X_v = V (A^T U2 + gamma X_v) + V_pv (alpha + scale delta X_v):
    two products with n x r or m x r factors each (`combine`), instead of the ten of a
    transport to a point given by its factors (`transport_embedded`).
    Returns ((a_u, b_u, a_v, b_v), M2): the moved vector's factors are U a_u + U_pv b_u and
    V a_v + V_pv b_v.
    """
    alpha, beta, gamma, delta = coefficients
    vtv2 = c_v @ delta  # V_pv^T V2: (..., r, r)
    atu2 = mT(m_v) @ alpha + c_u @ beta  # A^T U2: (..., r, r)
    m2 = mT(atu2) @ gamma + mT(alpha) @ vtv2  # U2^T Z V2
    xu, xv = x_u(m2), x_v(m2)
    return (m_v @ gamma + vtv2 + alpha @ xu, gamma + scale * (beta @ xu),
            atu2 + gamma @ xv, alpha + scale * (delta @ xv)), m2


def gram_root(
    a: torch.Tensor, g: torch.Tensor | None = None, scale: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(R, G): G = b^T b (..., k, k) of b = scale * a (b = a without scale; or the given g,
    equal to it) and an upper-triangular R with R^T R = G.

    R is the transposed Cholesky factor of G (one Gram product and a k x k Cholesky, instead of
    a Householder QR of the n x k matrix a: about a fifth of its cost for n = 256, k = 32 on
    CPU). Where G is singular (a rank-deficient a, e.g. the zero step), the Cholesky factorisation
    fails and R comes from a QR of a instead, for those matrices only. Cholesky is backward
    stable: R^T R = G + E with ||E|| ~ eps ||G||, so R is as good as QR's for every use below,
    which needs only R^T R = a^T a, never Q = a R^{-1}.
    """
    g = mT(a) @ a if g is None else g  # (..., k, k)
    c, info = on_threads(torch.linalg.cholesky_ex, g)  # lower; info > 0: not pos. definite
    root = mT(c)
    failed = info != 0
    if bool(failed.any()):
        fallback = torch.linalg.qr(a.expand(*failed.shape, *a.shape[-2:])[failed], mode="r")[1]
        if scale is not None:  # R of scale * a is |scale| R of a
            scale = torch.as_tensor(scale, dtype=a.dtype, device=a.device).abs()
            fallback = fallback * scale.expand(*failed.shape, 1, 1)[failed]
        root[failed] = fallback
    return root, g


def top_singular(
    k: torch.Tensor, r: int, unit_values: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The top r singular triplets (A_r (..., p, r), s (..., r), B_r (..., q, r)) of small
    matrices K (..., p, q), descending, with K B_r = A_r diag(s) and K^T A_r = B_r diag(s).

    LAPACK's SVD (on all threads, `on_threads`), or, where `unit_values` says that the kept
    singular values are all about 1 and the rest small (the core of a partial isometry's
    step: s_1 / s_r = 1 + O(step)), the eigendecomposition K^T K = B diag(s^2) B^T with
    A_r = K B_r diag(s)^{-1}: half the SVD's time for 64 x 64 on CPU. Its subspace error,
    eps s_1^2 / (s_r^2 - s_(r+1)^2), is the SVD's eps s_1 / (s_r - s_(r+1)) times
    s_1 / (s_r + s_(r+1)) < s_1 / s_r, so it is as accurate where s_1 / s_r ~ 1; a matrix whose
    kept values spread more than SPREAD_FOR_EIGH (a step as long as the point) goes to the SVD.
    Not for R1's cores: a trained R1 point's S spreads 4-40x (median about 10 in the
    riemannian_attention records), where the eigendecomposition loses that factor in accuracy.
    """
    if not unit_values:
        a, s, bh = on_threads(torch.linalg.svd, k)  # (..., p, p), (..., min), (..., q, q)
        return a[..., :r], s[..., :r], mT(bh[..., :r, :])
    lam, vecs = on_threads(torch.linalg.eigh, mT(k) @ k)  # ascending: (..., q), (..., q, q)
    s = lam[..., -r:].flip(-1).clamp_min(0).sqrt()  # (..., r), descending
    b = vecs[..., -r:].flip(-1)  # (..., q, r)
    a = (k @ b) / s.clamp_min(torch.finfo(k.dtype).tiny).unsqueeze(-2)  # (..., p, r)
    wide = ~(s[..., 0] <= SPREAD_FOR_EIGH * s[..., -1])  # (...): to the SVD (NaN-safe)
    if bool(wide.any()):
        a_w, s_w, bh_w = on_threads(torch.linalg.svd, k[wide])  # (w, p, p), (w, min), (w, q, q)
        a[wide], s[wide], b[wide] = a_w[..., :r], s_w[..., :r], mT(bh_w[..., :r, :])
    return a, s, b


def truncated_core(
    core: torch.Tensor,
    up: torch.Tensor,
    vp: torch.Tensor,
    unit_values: bool = False,
    grams: tuple[torch.Tensor, torch.Tensor] | None = None,
    scale: torch.Tensor | None = None,
) -> tuple[torch.Tensor, tuple[torch.Tensor, ...], tuple[torch.Tensor, torch.Tensor]]:
    """The best rank-r approximation of U core V^T + U_p V^T + U V_p^T (U_p ⊥ U, V_p ⊥ V), as
    (sigma, (alpha, beta, gamma, delta), (G_u, G_v)) with its SVD U' diag(sigma) V'^T given by
        U' = U alpha + U_p beta,   V' = V gamma + V_p delta   (all four r x r),
    and the Gram matrices G_u = U_p^T U_p, G_v = V_p^T V_p (for a transport that follows;
    `grams` gives them when they are known already). With `scale` (e.g. (..., 1, 1)) the step's
    blocks are scale * up, scale * vp (never formed; `grams` are theirs).

    With G_u = R_u^T R_u and G_v = R_v^T R_v (`gram_root`), U_p = Q_u R_u and V_p = Q_v R_v
    for orthonormal Q_u ⊥ U, Q_v ⊥ V, and the matrix equals
        [U, Q_u] K [V, Q_v]^T,   K = [[core, R_v^T], [R_u, 0]]   (2r x 2r),
    so its rank-r truncation comes from the top r singular triplets of the small core K
    (Vandereycken 2013, §3; Absil & Oseledets 2015; docs/papers/knight.md §3, R1; `top_singular`,
    `unit_values` for partial isometries): with A_r = [A_1; A_2], B_r = [B_1; B_2] (r x r blocks)
    and Sigma = diag(s_1..s_r),
        U' = U A_1 + Q_u A_2,   V' = V B_1 + Q_v B_2.
    Q_u, Q_v are never formed: the block rows of K B_r = A_r Sigma and K^T A_r = B_r Sigma read
    R_u B_1 = A_2 Sigma and R_v A_1 = B_2 Sigma, so Q_u A_2 = U_p B_1 Sigma^{-1} and
    Q_v B_2 = V_p A_1 Sigma^{-1}:
        alpha = A_1,  beta = B_1 Sigma^{-1},  gamma = B_1,  delta = A_1 Sigma^{-1}.
    These depend on R_u, R_v only through G_u, G_v (another root rotates the bottom block rows
    of A, B only). Cost: two n x r Gram products, two r x r Cholesky factorisations and one
    2r x 2r factorisation per point (on all threads, `on_threads`), instead of two Householder
    QRs of n x r matrices, the 2r x 2r SVD and two more products; Sigma^{-1} loses accuracy only
    where s_r is tiny against ||U_p||, i.e. where the step nearly cancels rank.
    """
    r = core.shape[-1]
    g_u, g_v = (None, None) if grams is None else grams
    ru, g_u = gram_root(up, g_u, scale)  # (..., r, r)
    rv, g_v = gram_root(vp, g_v, scale)  # (..., r, r)
    k = torch.cat(
        (torch.cat((core, mT(rv)), dim=-1), torch.cat((ru, torch.zeros_like(ru)), dim=-1)),
        dim=-2,
    )  # (..., 2r, 2r)
    a, sigma, b = top_singular(k, r, unit_values)  # (..., 2r, r), (..., r), (..., 2r, r)
    a1, b1 = a[..., :r, :], b[..., :r, :]  # A_1, B_1: (..., r, r)
    inv = 1 / sigma.unsqueeze(-2)  # Sigma^{-1} on the columns: (..., 1, r)
    return sigma, (a1, b1 * inv, b1, a1 * inv), (g_u, g_v)


def truncated_retraction(
    u: torch.Tensor,
    v: torch.Tensor,
    core: torch.Tensor,
    up: torch.Tensor,
    vp: torch.Tensor,
    unit_values: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Best rank-r approximation of U core V^T + U_p V^T + U V_p^T (U_p ⊥ U, V_p ⊥ V) as
    (U' (..., n, r), sigma' (..., r), V' (..., m, r)), from `truncated_core`."""
    sigma, (alpha, beta, gamma, delta), _ = truncated_core(core, up, vp, unit_values)
    return combine(u, up, alpha, beta), sigma, combine(v, vp, gamma, delta)


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
    Returns (U', S', V') with U' (..., n, r), S' (..., r, r) (not diagonal), V' (..., m, r);
    `orthographic_svd` gives the same Y with S' diagonal.
    """
    z_inv = torch.linalg.inv(core)  # (..., r, r)
    ql, rl = cholesky_qr(u + up @ z_inv)  # (..., n, r), (..., r, r)
    qr_, rr = cholesky_qr(v + vp @ mT(z_inv))  # (..., m, r), (..., r, r)
    return ql, rl @ core @ mT(rr), qr_


def orthographic_svd(
    u: torch.Tensor, v: torch.Tensor, core: torch.Tensor, up: torch.Tensor, vp: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`orthographic_retraction`'s Y = L Z R^T in SVD form: (U' (..., n, r), sigma' (..., r),
    V' (..., m, r)) with Y = U' diag(sigma') V'^T.

    With L^T L = R_L^T R_L, R^T R = R_R^T R_R (Cholesky; both Gram matrices are >= I) and the
    r x r SVD R_L Z R_R^T = P diag(sigma') Q^T:
        U' = L (R_L^{-1} P),   V' = R (R_R^{-1} Q),
    i.e. Q_L P and Q_R Q without forming Q_L, Q_R: one product with each n x r factor instead of
    a triangular solve and a product. Cost: two Gram products, four other products with
    n x r or m x r factors, one r x r inverse, two r x r Cholesky factorisations and one r x r
    SVD per point (on all threads, `on_threads`).
    """
    z_inv = inverse(core)  # (..., r, r)
    left = combine(u, up, None, z_inv)  # L = U + U_p Z^{-1}: (..., n, r)
    right = combine(v, vp, None, mT(z_inv))  # R = V + V_p Z^{-T}: (..., m, r)
    sigma, (alpha, _, gamma, _) = orthographic_core(core, z_inv, mT(left) @ left,
                                                    mT(right) @ right)
    return left @ alpha, sigma, right @ gamma


def orthographic_core(
    core: torch.Tensor, z_inv: torch.Tensor, gram_l: torch.Tensor, gram_r: torch.Tensor
) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """`orthographic_svd` from Z = core, Z^{-1} and the Gram matrices of L = U + U_p Z^{-1},
    R = V + V_p Z^{-T}, as (sigma', (alpha, beta, gamma, delta)) with
        U' = L alpha = U alpha + U_p beta,   V' = R gamma = V gamma + V_p delta,
    alpha = R_L^{-1} P, beta = Z^{-1} alpha, gamma = R_R^{-1} Q, delta = Z^{-T} gamma (the form
    `transport_embedded_from` takes). For a step (U_p, V_p) ⊥ (U, V),
    L^T L = I + Z^{-T} (U_p^T U_p) Z^{-1} and R^T R = I + Z^{-1} (V_p^T V_p) Z^{-T}.
    """
    rl = mT(on_threads(torch.linalg.cholesky, gram_l))  # (..., r, r), upper
    rr = mT(on_threads(torch.linalg.cholesky, gram_r))
    p, sigma, qh = on_threads(torch.linalg.svd, rl @ core @ mT(rr))  # r x r SVD
    alpha = torch.linalg.solve_triangular(rl, p, upper=True)  # (..., r, r)
    gamma = torch.linalg.solve_triangular(rr, mT(qh), upper=True)
    return sigma, (alpha, z_inv @ alpha, gamma, mT(z_inv) @ gamma)


def frob(a: torch.Tensor, b: torch.Tensor, keepdim: bool = False) -> torch.Tensor:
    """Frobenius inner product over the last two dimensions."""
    return (a * b).sum(dim=(-2, -1), keepdim=keepdim)
