"""First-order online gradient descent on the Stackelberg hinge (a baseline, SPEC §3)."""

from __future__ import annotations

import math

import numpy as np

from budgetsft._validation import check_choice, check_float, check_int
from budgetsft.exceptions import DataError

__all__ = ["OGDLearner"]


class OGDLearner:
    """Projected online subgradient descent on (1 - ⟨θ, z⟩)_+ with step η/sqrt(n).

    It keeps no covariance: its confidence widths are isotropic,
    w(u, v) = ρ ||φ(u) - φ(v)|| / sqrt(λ + n) with n the number of updates,
    so gates still get a shrinking, if cruder, notion of uncertainty.

    Parameters
    ----------
    eta : float, default=0.5
        Base step size.
    S : float, default=10.0
        θ is projected on the ball ||θ|| <= S.
    lam : float, default=1.0
        Prior count of the isotropic width.
    radius : float, default=3.0
    update : {"hardest", "all"}, default="hardest"
    d : int, optional

    Examples
    --------
    >>> import numpy as np
    >>> learner = OGDLearner()
    >>> X = np.array([[1.0, 0.0], [0.0, 1.0]])
    >>> learner.learn_one(X, gold=1, alternative=0)
    >>> int(np.argmax(learner.score_many(X)))
    1
    """

    def __init__(
        self,
        eta: float = 0.5,
        S: float = 10.0,
        lam: float = 1.0,
        radius: float = 3.0,
        update: str = "hardest",
        d: int | None = None,
    ) -> None:
        self.eta = eta
        self.S = S
        self.lam = lam
        self.radius = radius
        self.update = update
        self.d = d

    def _validate(self) -> None:
        check_float("OGDLearner", "eta", self.eta, low=0.0, low_open=True)
        check_float("OGDLearner", "S", self.S, low=0.0, low_open=True)
        check_float("OGDLearner", "lam", self.lam, low=0.0, low_open=True)
        check_float("OGDLearner", "radius", self.radius, low=0.0)
        check_choice("OGDLearner", "update", self.update, ("hardest", "all"))
        if self.d is not None:
            check_int("OGDLearner", "d", self.d, low=1)

    def _ensure(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X, dtype=np.float64)
        if not hasattr(self, "coef_"):
            self._validate()
            self.d_ = self.d if self.d is not None else X.shape[1]
            self.coef_ = np.zeros(self.d_)
            self.n_updates_ = 0
        if X.ndim != 2 or X.shape[1] != self.d_:
            raise DataError(f"OGDLearner was built for d = {self.d_} features; got features of shape {X.shape}.")
        return X

    def score_many(self, X: np.ndarray) -> np.ndarray:
        X = self._ensure(X)
        return X @ self.coef_

    def widths_many(self, X: np.ndarray, ref: int) -> tuple[np.ndarray, np.ndarray]:
        X = self._ensure(X)
        diff = X[ref] - X
        nsq = np.einsum("kd,kd->k", diff, diff) / (self.lam + self.n_updates_)
        return float(self.radius) * np.sqrt(nsq), nsq

    def learn_one(self, X: np.ndarray, gold: int, alternative: int) -> None:
        X = self._ensure(X)
        K = X.shape[0]
        if not (0 <= gold < K) or not (0 <= alternative < K) or gold == alternative:
            raise DataError(
                f"learn_one needs 0 <= gold, alternative < K = {K} and gold != alternative; "
                f"got gold = {gold}, alternative = {alternative}."
            )
        alts = [a for a in range(K) if a != gold] if self.update == "all" else [alternative]
        step = self.eta / math.sqrt(self.n_updates_ + 1)
        grad = np.zeros(self.d_)
        for a in alts:
            z = X[gold] - X[a]
            if 1.0 - float(z @ self.coef_) > 0.0:
                grad -= z
        self.coef_ = self.coef_ - step * grad
        norm = float(np.linalg.norm(self.coef_))
        if norm > self.S:
            self.coef_ *= self.S / norm
        self.n_updates_ += 1

    def state_dict(self) -> dict:
        if not hasattr(self, "coef_"):
            return {}
        return {"coef": self.coef_.copy(), "n_updates": self.n_updates_}
