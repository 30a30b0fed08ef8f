"""Pure numerical kernels of the learners (STYLE.md habit 7).

Each function is tested against a naive version (``np.linalg.inv``,
``np.linalg.slogdet``) in ``tests/test_math.py``.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.linalg import blas

__all__ = [
    "sherman_morrison_update",
    "sherman_morrison_inplace",
    "pnorm_sq_many",
    "confidence_radius",
    "argmax_lowest",
    "best_alternative",
    "softmax",
]


def sherman_morrison_update(P: np.ndarray, z: np.ndarray, weight: float = 1.0) -> tuple[np.ndarray, float]:
    """Return (P', log(1 + w zᵀPz)) with P' = (P⁻¹ + w z zᵀ)⁻¹, without touching ``P``.

    Parameters
    ----------
    P : ndarray of shape (d, d)
        Symmetric positive definite inverse of V.
    z : ndarray of shape (d,)
    weight : float, default=1.0
        w > 0 (Newton steps weight the outer product by the loss curvature).

    Returns
    -------
    P_new : ndarray of shape (d, d)
    logdet_increment : float
        log det(V + w z zᵀ) - log det V, by the matrix determinant lemma.
    """
    u = P @ z
    denom = 1.0 + weight * float(z @ u)
    return P - (weight / denom) * np.outer(u, u), math.log(denom)


def sherman_morrison_inplace(P: np.ndarray, z: np.ndarray, Pz: np.ndarray | None = None, weight: float = 1.0) -> float:
    """In-place twin of :func:`sherman_morrison_update`; returns the log det increment.

    One BLAS ``dger`` rank-one update: a single read-write pass over P and no
    (d, d) temporary, which is what keeps a round at O(d²) memory traffic.
    ``Pz`` may be passed when already known (it is, from the width step).
    """
    u = P @ z if Pz is None else Pz
    denom = 1.0 + weight * float(z @ u)
    alpha = -weight / denom
    if P.dtype == np.float64 and P.flags.c_contiguous:
        # P is symmetric: its C-order buffer is the Fortran-order buffer of Pᵀ = P.
        out = blas.dger(alpha, u, u, a=P.T, overwrite_a=1)
        if not np.shares_memory(out, P):  # pragma: no cover - BLAS copied; keep exact semantics
            P[...] = out.T
    else:  # pragma: no cover - fallback for exotic layouts
        P -= (-alpha) * np.outer(u, u)
    return math.log(denom)


def pnorm_sq_many(Z: np.ndarray, P: np.ndarray) -> np.ndarray:
    """Squared P-norms ||z_i||²_P = z_iᵀ P z_i of the rows of ``Z``, shape (n,)."""
    return np.einsum("ij,ij->i", Z @ P, Z)


def confidence_radius(logdet_ratio: float, *, sigma: float, delta: float, lam: float, S: float) -> float:
    """OFUL radius ρ = σ sqrt(2 log(det(V)^{1/2} det(λI)^{-1/2} / δ)) + sqrt(λ) S.

    ``logdet_ratio`` is log det V - d log λ (Abbasi-Yadkori, Pál, Szepesvári 2011, Thm. 2).
    """
    return sigma * math.sqrt(max(logdet_ratio, 0.0) + 2.0 * math.log(1.0 / delta)) + math.sqrt(lam) * S


def argmax_lowest(scores: np.ndarray) -> int:
    """argmax with ties broken by the lowest index (``np.argmax`` already does this)."""
    return int(np.argmax(scores))


def softmax(logits: np.ndarray) -> np.ndarray:
    """softmax over the last axis, shifted by the max (no overflow), in float64."""
    z = np.asarray(logits, dtype=np.float64)
    e = np.exp(z - np.max(z, axis=-1, keepdims=True))
    return e / np.sum(e, axis=-1, keepdims=True)


def best_alternative(scores: np.ndarray, exclude: int) -> int:
    """argmax_{a != exclude} scores[a], lowest index on ties."""
    masked = np.array(scores, dtype=np.float64, copy=True)
    masked[exclude] = -np.inf
    return int(np.argmax(masked))
