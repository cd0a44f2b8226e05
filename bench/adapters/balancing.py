"""The balanced manifold A A^T = B^T B of LoRA factors (docs/papers/balora.md §2-§3): torch only.

PEFT notation: W = W0 + s * B @ A with A = `lora_A` (r x in) and B = `lora_B` (out x r).
Every function below also takes leading batch dimensions, A: (..., r, in), B: (..., out, r),
so a toy study can project many independent problems in one call.

The projection keeps the product B A exactly and costs O((in + out) r^2 + r^3): it works on
thin QR factors and r x r cores; the in x out product is never formed. Used by LoRA (its gap
metric), BaLoRA, the PEFT interop and the toy study.
"""

from __future__ import annotations

import torch
from torch import Tensor

ALIGNMENTS = ("procrustes", "sign", "none")


def _check_factors(A: Tensor, B: Tensor, alignment: str) -> None:
    if alignment not in ALIGNMENTS:
        raise ValueError(f"alignment must be one of {ALIGNMENTS}, got {alignment!r}")
    if A.dim() < 2 or B.dim() < 2:
        raise ValueError(f"A (..., r, in) and B (..., out, r) must be matrices, got "
                         f"A {tuple(A.shape)}, B {tuple(B.shape)}")
    if A.shape[-2] != B.shape[-1] or A.shape[:-2] != B.shape[:-2]:
        raise ValueError(f"shapes do not fit W = B @ A: A {tuple(A.shape)} is (..., r, in), "
                         f"B {tuple(B.shape)} must be (..., out, r) with the same r and batch")


def _polar(M: Tensor) -> Tensor:
    """Orthogonal polar factor U V^T of a square M = U S V^T (batched).

    Taken from the SVD so it is defined (not unique) for a singular M, and never NaN.
    """
    U, _, Vh = torch.linalg.svd(M)
    return U @ Vh


def _balanced_core(A: Tensor, B: Tensor):
    """Thin QR factors and r x r cores of the SVD-balanced factors (docs/papers/balora.md §3).

    B = Q_B R_B, A^T = Q_A R_A (thin QR); R_B R_A^T = U S V^T (r x r core), so that
    B* = Q_B (U S^1/2) and A* = (S^1/2 V^T) Q_A^T. Returns Q_A (..., in, kA), Q_B (..., out, kB),
    C_A = S^1/2 V^T (..., r, kA), C_B = U S^1/2 (..., kB, r), S (..., r) descending, and
    M = B*^T B + A* A^T = C_B^T R_B + C_A R_A (..., r, r), using Q_B^T B = R_B, Q_A^T A^T = R_A.
    When in or out < r, the k = min(kA, kB) < r live components are zero-padded to r.
    """
    r = A.shape[-2]
    Q_B, R_B = torch.linalg.qr(B)  # (..., out, kB), (..., kB, r)
    Q_A, R_A = torch.linalg.qr(A.mT)  # (..., in, kA), (..., kA, r)
    U, S, Vh = torch.linalg.svd(R_B @ R_A.mT, full_matrices=False)  # core (..., kB, kA)
    root = S.clamp_min(0).sqrt()  # (..., k)
    C_B = U * root[..., None, :]  # (..., kB, k)
    C_A = root[..., :, None] * Vh  # (..., k, kA)
    k = S.shape[-1]
    if k < r:  # the missing rank components are (0, 0)
        C_B = torch.nn.functional.pad(C_B, (0, r - k))
        C_A = torch.nn.functional.pad(C_A, (0, 0, 0, r - k))
        S = torch.nn.functional.pad(S, (0, r - k))
    M = C_B.mT @ R_B + C_A @ R_A  # (..., r, r)
    return Q_A, Q_B, C_A, C_B, S, M


def svd_balanced(A: Tensor, B: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The raw SVD-balanced factors of B A (the paper's representative, docs/papers/balora.md §3).

    B = Q_B R_B, A^T = Q_A R_A (thin QR); R_B R_A^T = U S V^T (r x r);
    B* = Q_B U S^1/2, A* = S^1/2 V^T Q_A^T, so B* A* = B A and A* A*^T = B*^T B* = diag(S).
    Returns (A*, B*, S) in the dtype of the inputs (no promotion, no alignment); S descending,
    zero-padded to length r when in or out < r.
    """
    Q_A, Q_B, C_A, C_B, S, _ = _balanced_core(A, B)
    return C_A @ Q_A.mT, Q_B @ C_B, S


@torch.no_grad()
def project_balanced_with_rotation(
    A: Tensor, B: Tensor, alignment: str = "procrustes", *,
    compute_dtype: torch.dtype = torch.float64,
) -> tuple[Tensor, Tensor, Tensor]:
    """Project (A, B) onto the balanced manifold keeping B A; also return the frame rotation.

    With (A*, B*) the SVD-balanced factors (`svd_balanced`), every balanced factorisation of
    B A is (O_al^T A*, B* O_al) for an orthogonal r x r O_al (when B A has rank r), and
    `alignment` picks O_al:
      - "none":       O_al = I, the raw SVD representative (the paper's projection);
      - "sign":       O_al = diag(s), s_i = sign(<B*_:i, B_:i> + <A*_i:, A_i:>), sign(0) = +1;
      - "procrustes": O_al = O = polar(B*^T B + A* A^T), the Frobenius-closest balanced
                      point: argmin_O ||B* O - B||^2 + ||O^T A* - A||^2 (default).
    Returns (A_new, B_new, R) with A_new = O_al^T A*, B_new = B* O_al, and R (..., r, r) the
    orthogonal matrix that best maps the *old* factors onto the new ones,
        R = argmin_{R orthogonal} ||B R - B_new||^2 + ||R^T A - A_new||^2
          = polar(B^T B_new + A A_new^T) = O^T O_al,
    so B_new ~ B R and A_new ~ R^T A. Moment transport (Adam) follows the gradients: at the same
    product, grad_B' = grad_B G^-T and grad_A' = G^T grad_A when B' = B G, A' = G^-1 A; keeping
    the orthogonal part G ~ R gives  m_B <- m_B R,  m_A <- R^T m_A  (`rotate_moments`).
    For "procrustes", R = I (up to rounding): the Procrustes point is by construction the
    balanced point with no rotation from the old frame, so transport is a no-op there; it
    matters for "none" (R = O^T undoes the SVD's sign and order jumps) and "sign".

    Computed in `compute_dtype` (float64 by default; keep at least float32,
    docs/papers/balora.md §6.4),
    results cast back to the dtypes of A and B; R stays in `compute_dtype` (cast it to the
    moments' dtype, as `rotate_moments` does). Runs without autograd.
    """
    _check_factors(A, B, alignment)
    Q_A, Q_B, C_A, C_B, _, M = _balanced_core(A.to(compute_dtype), B.to(compute_dtype))
    O = _polar(M)
    if alignment == "procrustes":
        O_al = O
    elif alignment == "sign":
        d = torch.diagonal(M, dim1=-2, dim2=-1)
        O_al = torch.diag_embed(torch.where(d >= 0, 1.0, -1.0).to(compute_dtype))
    else:
        O_al = torch.eye(M.shape[-1], dtype=compute_dtype, device=M.device).expand_as(M)
    B_new = Q_B @ (C_B @ O_al)  # B* O_al, (..., out, r): one tall product per factor
    A_new = (O_al.mT @ C_A) @ Q_A.mT  # O_al^T A*, (..., r, in)
    R = O.mT @ O_al
    return A_new.to(A.dtype), B_new.to(B.dtype), R


def project_balanced(
    A: Tensor, B: Tensor, alignment: str = "procrustes", *,
    compute_dtype: torch.dtype = torch.float64,
) -> tuple[Tensor, Tensor]:
    """(A_new, B_new) with B_new A_new = B A and A_new A_new^T = B_new^T B_new = O_al^T S O_al
    (S = diag of the singular values of B A). See `project_balanced_with_rotation`."""
    A_new, B_new, _ = project_balanced_with_rotation(A, B, alignment,
                                                     compute_dtype=compute_dtype)
    return A_new, B_new


def rotate_moments(R: Tensor, m_A: Tensor, m_B: Tensor) -> tuple[Tensor, Tensor]:
    """Transport first moments with the frame rotation R: (R^T m_A, m_B R)."""
    R = R.to(m_A.dtype)
    return R.mT @ m_A, m_B @ R


def rotate_second_moments(R: Tensor, v_A: Tensor, v_B: Tensor) -> tuple[Tensor, Tensor]:
    """Heuristic transport of elementwise second moments: ((R∘R)^T v_A, v_B (R∘R)).

    R∘R (entrywise square) is doubly stochastic for orthogonal R, so the result stays >= 0 and
    keeps the totals over the rank index; exact when R is a signed permutation.
    """
    P = (R * R).to(v_A.dtype)
    return P.mT @ v_A, v_B @ P


@torch.no_grad()
def balancing_gap(A: Tensor, B: Tensor) -> float:
    """||B^T B - A A^T||_F (float64); over a batch, the norm of all entries together."""
    A64, B64 = A.detach().double(), B.detach().double()
    return torch.linalg.vector_norm(B64.mT @ B64 - A64 @ A64.mT).item()
