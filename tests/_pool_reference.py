"""The pool-mode selection of LLF as it was before it was vectorised, kept as the regression oracle.

A copy of ``budgetsft.gates.llf.select_pool`` at commit 277e4e7: it re-scores the pool with a
Python loop over items, builds every pair feature Y (n·(K-1), d) and Y P each batch, and
conditions Y P in place after each pick. ``tests/test_pool_scale.py`` checks that the scalable
implementation buys the same items, in the same order; ``benchmarks/pool_scale.py`` times it.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import numpy as np

from budgetsft import _math
from budgetsft._validation import check_int
from budgetsft.budget import Budget

__all__ = ["reference_select_pool"]


def reference_select_pool(
    learner,
    pool: Sequence[np.ndarray],
    budget: Budget,
    label_fn: Callable[[int], int],
    *,
    batch_size: int = 8,
    costs: Sequence[float] | None = None,
    follower=None,
    require_late: bool = False,
    tau: float = 0.0,
    progress: Callable[[int], None] | None = None,
) -> list[int]:
    """Today's select_pool, verbatim (the pool-mode algorithm before it was vectorised)."""
    from budgetsft.followers import BestResponseFollower

    check_int("reference_select_pool", "batch_size", batch_size, low=1)
    follower = follower or BestResponseFollower()
    n = len(pool)
    costs = [1.0] * n if costs is None else list(costs)
    available = np.ones(n, dtype=bool)
    bought: list[int] = []
    if n == 0:
        return bought
    learner.score_many(np.asarray(pool[0], dtype=np.float64))  # lazily initialises P_
    while available.any():
        # score the pool with the committed θ; pairs (ŷ_i, a) for a != ŷ_i
        pair_rows, pair_owner, pair_gap = [], [], []
        preds = np.empty(n, dtype=int)
        for i in np.flatnonzero(available):
            X = np.asarray(pool[i], dtype=np.float64)
            s = learner.score_many(X)
            p = _math.argmax_lowest(s)
            preds[i] = p
            others = [a for a in range(X.shape[0]) if a != p]
            pair_rows.append(X[p] - X[others])
            pair_owner.extend([i] * len(others))
            pair_gap.extend((s[p] - s[others]).tolist())
        Y = np.vstack(pair_rows)
        owner = np.asarray(pair_owner)
        gap = np.asarray(pair_gap)
        P = learner.P_
        PY = Y @ P  # (m, d): one pass to start the batch
        nsq = np.einsum("md,md->m", PY, Y)
        rho = learner.current_radius() if hasattr(learner, "current_radius") else float(learner.radius)
        batch: list[int] = []
        probe = copy.deepcopy(budget)
        alive = np.ones(len(owner), dtype=bool)
        while len(batch) < batch_size:
            lat_pairs = np.where(alive, rho * np.sqrt(np.maximum(nsq, 0.0)) - gap, -np.inf)
            lat = np.full(n, -np.inf)
            np.maximum.at(lat, owner, lat_pairs)
            affordable = np.array([available[i] and i not in batch and probe.can_afford(costs[i]) for i in range(n)])
            lat[~affordable] = -np.inf
            if not np.isfinite(lat).any():
                break
            pick = int(np.argmax(lat))  # lowest index on ties
            if require_late and lat[pick] <= tau:
                break
            probe.spend(costs[pick])
            batch.append(pick)
            alive &= owner != pick
            # condition on the pick's (ŷ, runner-up) pair: no label needed
            rows = np.flatnonzero(owner == pick)
            r = rows[int(np.argmin(gap[rows]))]
            z, u = Y[r], PY[r]
            c = 1.0 + float(z @ u)
            proj = PY @ z  # yᵀ P z for every pair
            nsq = nsq - proj**2 / c
            PY = PY - np.outer(proj, u) / c
        if not batch:
            break
        for i in batch:
            if not budget.can_afford(costs[i]):
                continue
            gold = int(label_fn(i))
            budget.spend(costs[i])
            bought.append(i)
            available[i] = False
            X = np.asarray(pool[i], dtype=np.float64)
            s = learner.score_many(X)
            learner.learn_one(X, gold, follower.respond(s, gold))
            if progress is not None:
                progress(len(bought))
    return bought
