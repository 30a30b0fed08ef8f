"""Shared machinery of the learners that keep a confidence ellipsoid.

State: P = V⁻¹ with V = λI + Σ w z zᵀ, updated by rank-one Sherman–Morrison
steps, and log det V - d log λ tracked by the matrix determinant lemma.

The width step computes W = X P once per round (one pass over P); the pair
update of the same round reuses it (P z = W[gold] - W[alt]), and the rank-one
update is one more in-place pass: two passes over P per round, O(K d²).

``dtype="float32"`` keeps P, b and θ in single precision: half the memory and
half the traffic of a pass over P, for a relative error near 1e-6 per step
(scores and widths are returned as float64 either way). The default float64
path is unchanged, bit for bit.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.linalg import blas

from budgetsft import _math
from budgetsft._validation import check_choice, check_float, check_int
from budgetsft.exceptions import ConfigError, DataError

RadiusSpec = float | str
DTYPES = ("float64", "float32")


class CovarianceMixin:
    """Confidence-width state shared by ridge and logistic learners (composition-light mixin)."""

    lam: float
    radius: RadiusSpec
    sigma: float
    delta: float
    S: float
    update: str
    dtype: str = "float64"

    # -- validation / lazy init -------------------------------------------------
    def _check_common(self, owner: str) -> None:
        check_float(owner, "lam", self.lam, low=0.0, low_open=True)
        check_float(owner, "sigma", self.sigma, low=0.0)
        check_float(owner, "delta", self.delta, low=0.0, high=1.0, low_open=True, high_open=True)
        check_float(owner, "S", self.S, low=0.0)
        check_choice(owner, "update", self.update, ("hardest", "violated", "all"))
        check_choice(owner, "dtype", self.dtype, DTYPES)
        if isinstance(self.radius, str):
            if self.radius not in ("auto", "theory"):
                raise ConfigError(
                    f"The 'radius' parameter of {owner} must be a float >= 0, 'auto' or 'theory'. "
                    f"Got {self.radius!r}."
                )
        else:
            check_float(owner, "radius", self.radius, low=0.0)
        if self.d is not None:
            check_int(owner, "d", self.d, low=1)

    def _init_state(self, d: int) -> None:
        self.d_ = d
        dtype = np.dtype(self.dtype)
        self.P_ = np.eye(d, dtype=dtype) / dtype.type(self.lam)
        self.b_ = np.zeros(d, dtype=dtype)
        self.coef_ = np.zeros(d, dtype=dtype)
        self.logdet_ratio_ = 0.0
        self.n_updates_ = 0
        self.residual_ss_ = 0.0  # Σ squared prequential residuals of bought pairs (radius="auto")
        self.n_residuals_ = 0
        self._version = 0
        self._cache_key: tuple[int, int] | None = None
        self._cache_W: np.ndarray | None = None
        self._cache_X: np.ndarray | None = None

    def _ensure(self, X: np.ndarray) -> np.ndarray:
        if not hasattr(self, "P_"):
            self._validate()
            self._init_state(self.d if self.d is not None else X.shape[1])
        if X.ndim != 2 or X.shape[1] != self.d_:
            raise DataError(
                f"{type(self).__name__} was built for d = {self.d_} features; got features of shape {X.shape}."
            )
        if X.dtype != self.P_.dtype:
            X = self._converted(X)
        return X

    def _converted(self, X: np.ndarray) -> np.ndarray:
        """X in the learner's dtype, converted once per input array: the width step and the update of
        one round then share one converted copy, and so the cached W = X P."""
        if getattr(self, "_cache_src", None) is X:
            return self._cache_conv
        self._cache_src, self._cache_conv = X, X.astype(self.coef_.dtype)
        return self._cache_conv

    def _validate(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def _scores(self, X: np.ndarray) -> np.ndarray:
        s = X @ self.coef_
        return s if s.dtype == np.float64 else s.astype(np.float64)

    # -- width machinery ------------------------------------------------------------
    def _XP(self, X: np.ndarray) -> np.ndarray:
        """W = X P of shape (K, d), cached for the update of the same round."""
        key = (id(X), self._version)
        if self._cache_key == key and self._cache_W is not None and self._cache_X is X:
            return self._cache_W
        W = X @ self.P_
        self._cache_key, self._cache_W, self._cache_X = key, W, X
        return W

    def noise_scale(self) -> float:
        """σ̂_t: root mean square of the prequential residuals of bought pairs, shrunk to ``sigma``.

        σ̂² = (σ² + Σ_i r_i²) / (1 + n): the prior ``sigma`` counts as one
        pseudo-observation, so the first rounds use it and the data take over.
        r_i is the learner's residual on its i-th bought pair *before* it
        learns from it (for the margin learners 1 - ⟨θ, z⟩).
        """
        ss = getattr(self, "residual_ss_", 0.0)
        n = getattr(self, "n_residuals_", 0)
        return float(np.sqrt((self.sigma**2 + ss) / (1.0 + n)))

    def current_radius(self) -> float:
        """ρ_t: the fixed radius, the OFUL radius from δ, σ, S, λ (SPEC §3), or the data-driven one.

        ``"auto"``: ρ_t = σ̂_t · sqrt(2 log(1/δ)). Under the linear model the
        margin ⟨θ, z⟩ of a pair has posterior spread σ ||z||_P (Bayesian
        ridge with noise σ, as in linear Thompson sampling), and
        sqrt(2 log(1/δ)) is the sub-Gaussian tail bound of one direction at
        confidence δ. The noise scale is estimated from the bought labels
        (:meth:`noise_scale`) instead of assumed. What it leaves out of the
        self-normalised bound of Abbasi-Yadkori, Pál, Szepesvári (2011,
        Thm. 2; ``"theory"``) is the union over all directions and times, the
        sqrt(log det V / det λI) term, and the √λ·S term: together they make
        nearly every round late (SPEC §4), so that ``"theory"`` stays a
        guarantee and ``"auto"`` a working default.
        """
        if self.radius == "auto":
            return self.noise_scale() * math.sqrt(2.0 * math.log(1.0 / self.delta))
        if self.radius == "theory":
            ld = self.logdet_ratio_ if hasattr(self, "logdet_ratio_") else 0.0
            return _math.confidence_radius(ld, sigma=self.sigma, delta=self.delta, lam=self.lam, S=self.S)
        return float(self.radius)

    def _observe_residual(self, residual: float) -> None:
        self.residual_ss_ += residual * residual
        self.n_residuals_ += 1

    def widths_many(self, X: np.ndarray, ref: int) -> tuple[np.ndarray, np.ndarray]:
        """Widths w(ref, a) = ρ ||φ(ref) - φ(a)||_P and the squared norms, each of shape (K,)."""
        X = self._ensure(np.asarray(X, dtype=np.float64))
        W = self._XP(X)
        # ||x_r - x_a||²_P = (W_r - W_a)·(x_r - x_a)
        nsq = np.einsum("kd,kd->k", W[ref] - W, X[ref] - X)
        np.maximum(nsq, 0.0, out=nsq)
        if nsq.dtype != np.float64:
            nsq = nsq.astype(np.float64)
        return self.current_radius() * np.sqrt(nsq), nsq

    def apply_P(self, Y: np.ndarray) -> np.ndarray:
        """Y P for rows y of shape (d,) or a matrix of shape (n, d), as float64 of the same shape.

        What pool mode needs from a learner besides scores: ||y||²_P = (Y P)·Y for every pool pair,
        and Y P itself to condition on a pick (``gates.llf.select_pool``). One (n, d) × (d, d) product.
        """
        if not hasattr(self, "P_"):
            raise DataError(f"{type(self).__name__} has no covariance yet: score or learn one round first.")
        Y = np.asarray(Y, dtype=np.float64)
        if Y.ndim not in (1, 2) or Y.shape[-1] != self.d_:
            raise DataError(f"apply_P needs rows of d = {self.d_} features; got shape {Y.shape}.")
        if self.P_.dtype == np.float64:
            return Y @ self.P_
        return (Y.astype(self.P_.dtype) @ self.P_).astype(np.float64)

    def _pairs(self, X: np.ndarray, gold: int, alternative: int) -> list[int]:
        """Wrong candidates to learn from: the follower's alternative first, then (``"violated"``)
        every other one whose hinge (1 - ⟨θ, φ(gold) - φ(a)⟩)_+ is active, or (``"all"``) every other one."""
        others = [a for a in range(X.shape[0]) if a not in (gold, alternative)]
        if self.update == "violated":
            margins = (X[gold] - X[others]) @ self.coef_ if others else np.zeros(0)
            others = [a for a, m in zip(others, margins, strict=True) if m < 1.0]
        elif self.update != "all":
            others = []
        return [alternative, *others]

    def _check_pair(self, X: np.ndarray, gold: int, alternative: int) -> None:
        K = X.shape[0]
        if not (0 <= gold < K) or not (0 <= alternative < K) or gold == alternative:
            raise DataError(
                f"learn_one needs 0 <= gold, alternative < K = {K} and gold != alternative; "
                f"got gold = {gold}, alternative = {alternative}."
            )

    def _rank_one_W(self, W: np.ndarray, z: np.ndarray, u: np.ndarray, weight: float = 1.0) -> np.ndarray:
        """X P' from W = X P after P' = P - w u uᵀ / (1 + w zᵀu), in O(K d) (no new pass over P)."""
        denom = 1.0 + weight * float(z @ u)
        W = W - np.outer(W @ z, u) * (weight / denom)
        self._cache_W = W
        self._cache_key = (id(self._cache_X), self._version)
        return W

    def _pair_step(self, W: np.ndarray, z: np.ndarray, u: np.ndarray, step: float, weight: float,
                   refresh: bool) -> np.ndarray:
        """θ += step·u, P ← (V + w z zᵀ)⁻¹, one more update counted; W = X P kept current when
        ``refresh`` (more pairs of the same round follow). The shared tail of every learner's pair update."""
        self.coef_ = self.coef_ + u * step
        self._rank_one(z, u, weight=weight)
        self.n_updates_ += 1
        return self._rank_one_W(W, z, u, weight=weight) if refresh else W

    def _rank_one(self, z: np.ndarray, Pz: np.ndarray | None, weight: float = 1.0) -> None:
        if self.P_.dtype == np.float64:
            self.logdet_ratio_ += _math.sherman_morrison_inplace(self.P_, z, Pz, weight)
        else:
            self.logdet_ratio_ += _sherman_morrison_inplace_f32(self.P_, z, Pz, weight)
        self._version += 1

    def state_dict(self) -> dict:
        """Learned state (copies), for checkpoints."""
        if not hasattr(self, "P_"):
            return {}
        return {
            "P": self.P_.copy(),
            "b": self.b_.copy(),
            "coef": self.coef_.copy(),
            "logdet_ratio": self.logdet_ratio_,
            "n_updates": self.n_updates_,
            "residual_ss": self.residual_ss_,
            "n_residuals": self.n_residuals_,
        }


def _sherman_morrison_inplace_f32(P: np.ndarray, z: np.ndarray, Pz: np.ndarray | None, weight: float) -> float:
    """Single-precision twin of :func:`budgetsft._math.sherman_morrison_inplace`: one BLAS ``sger``
    pass over the symmetric P, no (d, d) temporary; returns the log det increment."""
    u = P @ z if Pz is None else Pz
    denom = 1.0 + weight * float(z @ u)
    out = blas.sger(-weight / denom, u, u, a=P.T, overwrite_a=1)
    if not np.shares_memory(out, P):  # pragma: no cover - BLAS copied; keep exact semantics
        P[...] = out.T
    return math.log(denom)
