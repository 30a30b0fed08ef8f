"""Everything computed from records (SPEC §5).

* :func:`to_frame` — records as a DataFrame (the analysis API);
* :func:`comparator_loss` — min_{||θ||_∞ <= S} Σ_t ℓ_t(θ), the best fixed θ in
  hindsight for the Stackelberg hinge, solved exactly as a linear program
  (:mod:`budgetsft.comparator` caches it per stream);
* :func:`summarize` — cumulative hinge loss, mistakes, pseudo-regret, labels,
  Stackelberg regret, each split into queried and unqueried rounds;
* :func:`loglog_slope` — fitted exponent of regret vs T (or vs B).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict

import numpy as np
import pandas as pd

from budgetsft.base import RECORD_FIELDS, Record, Round
from budgetsft.comparator import hinge_per_round, pair_matrix, solve
from budgetsft.exceptions import DataError

__all__ = ["to_frame", "comparator_loss", "summarize", "loglog_slope", "hinge_losses", "cumulative"]


def to_frame(records: Sequence[Record]) -> pd.DataFrame:
    """One row per round, columns as :class:`Record` fields."""
    if not records:
        return pd.DataFrame(columns=list(RECORD_FIELDS))
    return pd.DataFrame([asdict(r) for r in records], columns=list(RECORD_FIELDS))


def hinge_losses(theta: np.ndarray, rounds: Sequence[Round]) -> np.ndarray:
    """ℓ_t(θ) = max_{a != y*} (1 - ⟨θ, φ(y*) - φ(a)⟩)_+ for every round, shape (T,)."""
    if not rounds:
        return np.zeros(0)
    Z, owner = pair_matrix(rounds)
    return hinge_per_round(Z, owner, np.asarray(theta, dtype=np.float64), len(rounds))


def comparator_loss(rounds: Sequence[Round], S: float = 10.0) -> tuple[float, np.ndarray, np.ndarray]:
    """Exact min_{||θ||_∞ <= S} Σ_t ℓ_t(θ) by linear programming (HiGHS), uncached.

    LP: minimise Σ ξ_t over (θ, ξ) subject to ξ_t >= 1 - ⟨θ, z_{t,a}⟩ for all
    t and a != y*_t, ξ >= 0, -S <= θ_j <= S. The L∞ ball keeps the problem a
    linear program (an L2 ball would make it a cone program); it contains the
    L2 ball of radius S, so the comparator is at least as strong as the L2 one.
    :func:`budgetsft.comparator.solve` is the cached version (and offers a
    first-order approximation for large streams).

    Returns
    -------
    loss : float
        Σ_t ℓ_t(θ*) at the optimum (recomputed from θ*, not read off the solver).
    theta : ndarray of shape (d,)
    per_round : ndarray of shape (T,)
        ℓ_t(θ*), so sums can be split by any subset of rounds.
    """
    c = solve(rounds, S=S, method="exact", cache=False)
    return c.loss, c.theta, c.per_round


def summarize(
    records: Sequence[Record],
    rounds: Sequence[Round] | None = None,
    *,
    S: float = 10.0,
    comparator: str = "exact",
    cache: bool = True,
    progress: bool = False,
) -> dict:
    """Summary of one run (SPEC §5), with every sum split into queried and unqueried rounds.

    Keys: ``rounds``, ``labels_bought``, ``spent``, ``mistakes``, ``hinge_loss``,
    ``pseudo_regret`` (NaN when unknown), ``stackelberg_regret`` (needs
    ``rounds``), ``comparator_loss``, ``regret_queried`` / ``regret_unqueried``
    (the Stackelberg regret split; they add up to ``stackelberg_regret``), and
    ``*_queried`` / ``*_unqueried`` splits of hinge loss, mistakes and
    pseudo-regret. With ``rounds``, also ``comparator`` (the method) and
    ``comparator_lower``: for ``comparator="approx"`` the comparator loss is an
    upper bound and ``comparator_lower`` a lower bound on the exact one, so the
    Stackelberg regret is a lower bound, off by at most their difference
    (:mod:`budgetsft.comparator`). ``cache`` and ``progress`` are passed to
    :func:`budgetsft.comparator.solve`.
    """
    if rounds is not None and len(rounds) != len(records):
        raise DataError(f"summarize needs one round per record; got {len(rounds)} rounds and {len(records)} records.")
    q = np.array([r.queried for r in records], dtype=bool)
    hinge = np.array([r.hinge_loss for r in records], dtype=np.float64)
    mistakes = np.array([r.mistake for r in records], dtype=np.float64)
    regret = np.array([r.regret for r in records], dtype=np.float64)
    out: dict = {
        "rounds": len(records),
        "labels_bought": int(q.sum()),
        "spent": float(math.fsum(r.cost for r in records)),
        "mistakes": int(mistakes.sum()),
        "hinge_loss": float(hinge.sum()),
        "pseudo_regret": float(regret.sum()) if len(regret) else 0.0,
    }
    for name, arr in (("hinge_loss", hinge), ("mistakes", mistakes), ("pseudo_regret", regret)):
        out[f"{name}_queried"] = float(arr[q].sum())
        out[f"{name}_unqueried"] = float(arr[~q].sum())
    if rounds is not None:
        c = solve(rounds, S=S, method=comparator, cache=cache, progress=progress)
        per_round = c.per_round
        out["comparator"] = c.method
        out["comparator_loss"] = c.loss
        out["comparator_lower"] = c.lower
        out["stackelberg_regret"] = float(hinge.sum() - c.loss)
        out["regret_queried"] = float(hinge[q].sum() - per_round[q].sum())
        out["regret_unqueried"] = float(hinge[~q].sum() - per_round[~q].sum())
    return out


def loglog_slope(x: Sequence[float], y: Sequence[float]) -> float:
    """Least-squares slope of log y against log x (y ~ x^slope); needs >= 2 positive points."""
    xa = np.asarray(x, dtype=np.float64)
    ya = np.asarray(y, dtype=np.float64)
    keep = (xa > 0) & (ya > 0)
    if keep.sum() < 2:
        raise DataError("loglog_slope needs at least two points with x > 0 and y > 0.")
    return float(np.polyfit(np.log(xa[keep]), np.log(ya[keep]), 1)[0])


def cumulative(frame: pd.DataFrame) -> pd.DataFrame:
    """Per-round cumulative curves of a records frame: regret (pseudo when known, else hinge),
    hinge loss, mistakes and labels bought, indexed by round."""
    regret = frame["regret"].astype(float)
    use_pseudo = bool(len(regret)) and not regret.isna().all()
    return pd.DataFrame(
        {
            "round": frame["round"].to_numpy(),
            "regret": (regret.fillna(0.0) if use_pseudo else frame["hinge_loss"].astype(float)).cumsum().to_numpy(),
            "hinge_loss": frame["hinge_loss"].astype(float).cumsum().to_numpy(),
            "mistakes": frame["mistake"].astype(float).cumsum().to_numpy(),
            "labels": frame["queried"].astype(float).cumsum().to_numpy(),
        }
    ).assign(regret_kind="pseudo-regret" if use_pseudo else "hinge loss")
