"""Regularised least squares over pair features with a confidence ellipsoid (SPEC §3)."""

from __future__ import annotations

import numpy as np

from budgetsft.learners._covariance import CovarianceMixin, RadiusSpec

__all__ = ["RidgeLearner"]


class RidgeLearner(CovarianceMixin):
    """Ridge regression of a unit margin on pair features (the OFUL / selective-sampling family).

    State: V = λI + Σ z zᵀ over queried pairs z = φ(y*) - φ(ã), kept as P = V⁻¹
    by rank-one Sherman–Morrison updates; b = Σ z (target: the gold beats the
    alternative by a unit margin); θ̂ = P b.

    Parameters
    ----------
    lam : float, default=1.0
        Ridge regulariser λ > 0.
    radius : float, "auto" or "theory", default="auto"
        Confidence radius ρ. ``"auto"`` estimates it from the bought labels:
        ρ_t = σ̂_t sqrt(2 log(1/δ)) with σ̂_t the RMS of the prequential residuals
        (:meth:`current_radius`). ``"theory"`` uses the OFUL radius
        σ sqrt(2 log(det(V)^{1/2} det(λI)^{-1/2} / δ)) + sqrt(λ) S, which is
        conservative: it makes nearly every round late. A float fixes ρ
        (``benchmarks/radius_sensitivity.py`` shows how LLF moves with it).
    sigma, delta, S : float
        Noise level, confidence and norm bound of the theory radius.
    update : {"hardest", "violated", "all"}, default="hardest"
        Which wrong candidates a bought label teaches (see
        :class:`~budgetsft.learners.LogisticLearner`). Ridge keeps "hardest": it
        regresses every taught margin onto 1, so more pairs only pull more safe
        margins back down.
    d : int, optional
        Feature dimension; inferred from the first round when omitted.
    dtype : {"float64", "float32"}, default="float64"
        Precision of P, b and θ. ``"float32"`` halves the memory and the
        traffic of the two passes over P per round; scores and widths agree
        with float64 to about 1e-5 relative (``tests/test_sketch.py``).

    Examples
    --------
    >>> import numpy as np
    >>> learner = RidgeLearner(lam=1.0)
    >>> X = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    >>> learner.learn_one(X, gold=0, alternative=1)
    >>> int(np.argmax(learner.score_many(X)))
    0
    """

    def __init__(
        self,
        lam: float = 1.0,
        radius: RadiusSpec = "auto",
        sigma: float = 0.5,
        delta: float = 0.1,
        S: float = 1.0,
        update: str = "hardest",
        d: int | None = None,
        dtype: str = "float64",
    ) -> None:
        self.lam = lam
        self.radius = radius
        self.sigma = sigma
        self.delta = delta
        self.S = S
        self.update = update
        self.d = d
        self.dtype = dtype

    def _validate(self) -> None:
        self._check_common("RidgeLearner")

    def score_many(self, X: np.ndarray) -> np.ndarray:
        """Scores ⟨θ̂, φ(x, a)⟩ of shape (K,)."""
        X = self._ensure(np.asarray(X, dtype=np.float64))
        return self._scores(X)

    def learn_one(self, X: np.ndarray, gold: int, alternative: int) -> None:
        """Rank-one update(s) with z = φ(gold) - φ(alt), target margin 1."""
        X = self._ensure(np.asarray(X, dtype=np.float64))
        self._check_pair(X, gold, alternative)
        W = self._XP(X)
        pairs = self._pairs(X, gold, alternative)
        for a in pairs:
            z = X[gold] - X[a]
            u = W[gold] - W[a]  # P z, reused from the width step
            c = 1.0 + float(z @ u)
            residual = 1.0 - float(z @ self.coef_)
            self._observe_residual(residual)
            # Recursive least squares: θ' = P'(b + z) = θ + P z (1 - zᵀθ) / (1 + zᵀ P z),
            # O(d) instead of a third pass over P.
            W = self._pair_step(W, z, u, residual / c, 1.0, len(pairs) > 1)
            self.b_ += z
