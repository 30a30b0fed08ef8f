"""The model you hand back: a final head refit on exactly the bought labels (one downstream trainer).

Held-out accuracy of the online head mixes "which labels" with "which
learner". To compare label sets (ours, the baselines', the peers'), every
bought set is refit with the same trainer:

* a conditional (multinomial) logit over candidate features,
  P(a | x) = softmax_a ⟨θ, φ(x, a)⟩, L2-regularised with strength 1 / C,
  fitted by L-BFGS. On ``block`` features this is exactly multinomial logistic
  regression over e(x) with one weight vector and bias per label; on
  per-item candidates (``encoder``, ``causal``) it is the conditional logit
  of McFadden (1974);
* C chosen by stratified k-fold cross-validation on the bought set alone
  (log-likelihood of the held-out folds), from a fixed grid, then refit on the
  whole bought set. Nothing outside the bought set is looked at.

The trainer is deterministic: no randomness but a fold assignment seeded by
``seed``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import sparse
from scipy.optimize import minimize

from budgetsft._math import softmax
from budgetsft.base import Round
from budgetsft.exceptions import DataError

__all__ = ["RefitHead", "refit", "refit_accuracy", "stratified_folds", "C_GRID"]

C_GRID: tuple[float, ...] = (0.01, 0.1, 1.0, 10.0, 100.0)
# L-BFGS stopping rule: relative decrease of the objective below FTOL, or MAXITER iterations.
FTOL, MAXITER = 1e-7, 300


def _pack(rounds: Sequence[Round]):
    """Stack candidate rows: X (n_rows, d), owner (n_rows,), gold row index per round, round starts.

    X is a CSR matrix when at most a third of it is non-zero (``block`` features are
    1/L dense), which makes every product of the fit proportionally cheaper.
    """
    feats = [np.asarray(r.features, dtype=np.float64) for r in rounds]
    sizes = np.array([f.shape[0] for f in feats])
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    X = np.vstack(feats)
    if np.count_nonzero(X) <= X.size / 3:
        X = sparse.csr_matrix(X)
    owner = np.repeat(np.arange(len(rounds)), sizes)
    gold = starts + np.array([int(r.gold) for r in rounds])
    return X, owner, gold, starts


def _nll_grad(theta: np.ndarray, X: np.ndarray, owner: np.ndarray, gold: np.ndarray, n: int,
              l2: float) -> tuple[float, np.ndarray]:
    s = X @ theta
    smax = np.full(n, -np.inf)
    np.maximum.at(smax, owner, s)
    e = np.exp(s - smax[owner])
    den = np.bincount(owner, weights=e, minlength=n)
    logz = np.log(den) + smax
    nll = float(np.sum(logz) - np.sum(s[gold]))
    p = e / den[owner]
    p[gold] -= 1.0
    g = X.T @ p
    return nll + 0.5 * l2 * float(theta @ theta), g + l2 * theta


class RefitHead:
    """An L2-regularised conditional logit over candidate features.

    Parameters
    ----------
    C : float, default=1.0
        Inverse regularisation strength (scikit-learn's convention: the
        objective is C·Σ log-loss + ½‖θ‖²).

    Examples
    --------
    >>> import numpy as np
    >>> from budgetsft._math import softmax
from budgetsft.base import Round
    >>> X = np.array([[1.0, 0.0], [0.0, 1.0]])
    >>> head = RefitHead(C=10.0).fit([Round(X, 0), Round(X[::-1].copy(), 1)])
    >>> head.predict(Round(X, 0))
    0
    """

    def __init__(self, C: float = 1.0) -> None:
        self.C = C

    def fit(self, rounds: Sequence[Round], init: np.ndarray | None = None) -> RefitHead:
        """Fit on ``rounds``; ``init`` warm-starts L-BFGS (a neighbouring C's solution)."""
        if not rounds:
            raise DataError("RefitHead.fit needs at least one bought round.")
        return self._fit_packed(_pack(rounds), len(rounds), init)

    def _fit_packed(self, packed, n: int, init: np.ndarray | None = None) -> RefitHead:
        X, owner, gold, _ = packed
        l2 = 1.0 / float(self.C)
        x0 = np.zeros(X.shape[1]) if init is None else init
        res = minimize(_nll_grad, x0, args=(X, owner, gold, n, l2), jac=True, method="L-BFGS-B",
                       options={"maxiter": MAXITER, "ftol": FTOL})
        self.coef_ = res.x
        return self

    def predict(self, rnd: Round) -> int:
        return int(np.argmax(np.asarray(rnd.features, dtype=np.float64) @ self.coef_))

    def predict_proba(self, rnd: Round) -> np.ndarray:
        """P(a | x) = softmax_a ⟨θ, φ(x, a)⟩ over the round's candidates."""
        return softmax(np.asarray(rnd.features, dtype=np.float64) @ self.coef_)

    def predict_log_proba(self, rnd: Round) -> np.ndarray:
        """log P(a | x), floored at log(1e-300) (a probability that underflowed to 0 stays finite)."""
        return np.log(np.maximum(self.predict_proba(rnd), 1e-300))

    def accuracy(self, rounds: Sequence[Round]) -> float:
        if not rounds:
            return math.nan
        X, owner, gold, starts = _pack(rounds)
        s = X @ self.coef_
        n = len(rounds)
        best = np.full(n, -np.inf)
        np.maximum.at(best, owner, s)
        # prediction = lowest index attaining the max (the game's tie rule)
        is_max = s >= best[owner]
        rows = np.flatnonzero(is_max)
        first = np.full(n, -1)
        first[owner[rows[::-1]]] = rows[::-1]
        return float(np.mean(first == gold))

    def log_loss(self, rounds: Sequence[Round]) -> float:
        X, owner, gold, _ = _pack(rounds)
        nll, _ = _nll_grad(self.coef_, X, owner, gold, len(rounds), 0.0)
        return nll / len(rounds)


def stratified_folds(rounds: Sequence[Round], k: int, seed: int) -> np.ndarray:
    """Fold of each round, stratified by gold index (seeded round-robin within each gold index)."""
    rng = np.random.default_rng([seed, 11])
    fold = np.empty(len(rounds), dtype=int)
    golds = np.array([int(r.gold) for r in rounds])
    offset = 0
    for g in np.unique(golds):
        idx = np.flatnonzero(golds == g)
        idx = idx[rng.permutation(len(idx))]
        fold[idx] = (np.arange(len(idx)) + offset) % k
        offset += len(idx)
    return fold


def refit(bought: Sequence[Round], *, folds: int = 3, seed: int = 0,
          grid: Sequence[float] = C_GRID) -> RefitHead:
    """Fit the final head on the bought rounds, C by ``folds``-fold CV on them alone.

    With fewer than 2·``folds`` bought rounds the middle of the grid (C = 1)
    is used without cross-validation.
    """
    bought = list(bought)
    if not bought:
        raise DataError("refit needs at least one bought round; the gate bought none.")
    if len(bought) < 2 * folds:
        return RefitHead(C=1.0).fit(bought)
    fold = stratified_folds(bought, folds, seed)
    grid = sorted(float(c) for c in grid)
    scores = np.zeros(len(grid))
    for f in range(folds):
        tr = [r for r, k in zip(bought, fold, strict=True) if k != f]
        va = [r for r, k in zip(bought, fold, strict=True) if k == f]
        packed = _pack(tr)
        coef = None
        for j, C in enumerate(grid):  # the regularisation path, each fit warm-started from the last
            head = RefitHead(C=C)._fit_packed(packed, len(tr), coef)
            coef = head.coef_
            scores[j] += head.log_loss(va) * len(va)
    best = float(grid[int(np.argmin(scores))])  # lowest C on ties: the simpler model
    head = RefitHead(C=best).fit(bought)
    head.cv_losses_ = dict(zip(map(float, grid), (s / len(bought) for s in scores), strict=True))
    return head


def refit_accuracy(bought: Sequence[Round], test: Sequence[Round] | None, *, seed: int = 0) -> float:
    """Held-out accuracy of :func:`refit` on ``bought`` (NaN without test rounds or bought labels)."""
    if not test or not bought:
        return math.nan
    return refit(bought, seed=seed).accuracy(test)
