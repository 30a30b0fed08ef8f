"""LLF, the Largest-Latency-First confidence gate (SPEC §4).

A round is *late* when some alternative's confidence interval reaches above
the predicted answer; its latency is by how much:

    latency_t = max_{a != ŷ_t} ( w(ŷ_t, a) - (s_t(ŷ_t) - s_t(a)) ).

LLF spends the budget on the rounds of largest latency first, as
Roughgarden's Largest-Latency-First spends a Stackelberg leader's controlled
share of traffic on the links of largest latency first. Three modes:

* stream (``window=1``): query iff latency_t > τ_t and the budget affords it;
* window (``window=W > 1``): predictions are committed on arrival; at the end
  of each window the late rounds are queried largest latency first, as many
  as the pacing allows (ties: earlier round first);
* pool (:func:`select_pool`): data selection from an unlabelled pool, in
  batches, conditioning P on each pick before the next.

Pacing (``pacing=True``, only when T is known) caps cumulative spend at the
front-loaded schedule B·(t/T)^p (p = ``pacing_power``, default 0.5): τ_t is
raised to +inf while the gate is ahead of that schedule. It only stops the
budget from running dry long before T on drifting streams; it never forces an
even rate (early labels are worth the most, SPEC §4).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence

import numpy as np

from budgetsft import _math
from budgetsft._validation import check_float, check_int
from budgetsft.base import QueryInfo
from budgetsft.budget import Budget
from budgetsft.exceptions import ConfigError

__all__ = ["LLFGate", "select_pool", "latency_of"]


def latency_of(scores: np.ndarray, widths: np.ndarray, prediction: int) -> float:
    """max_{a != ŷ} (w(ŷ, a) - (s(ŷ) - s(a))) for one round."""
    lat = widths - (scores[prediction] - scores)
    lat[prediction] = -np.inf
    return float(np.max(lat))


class LLFGate:
    """Largest-Latency-First label gate.

    Parameters
    ----------
    tau : float, default=0.0
        Latency threshold τ: only rounds with latency > τ are late.
    window : int, default=1
        W = 1 decides each round on arrival; W > 1 decides at the end of each
        window of W rounds, largest latency first.
    pacing : bool, default=False
        Cap cumulative spend at B·(t/T)^p when the horizon T is known.
    pacing_power : float, default=0.5
        p in (0, 1]; smaller front-loads more.

    Examples
    --------
    >>> import numpy as np
    >>> from budgetsft.base import QueryInfo
    >>> from budgetsft.budget import Budget
    >>> info = QueryInfo(t=1, horizon=10, features=np.zeros((2, 1)), scores=np.zeros(2),
    ...                  prediction=0, runner_up=1, widths=np.array([0.0, 0.3]),
    ...                  latency=0.3, gap=0.0, uncertainty=1.0)
    >>> LLFGate().ask(info, Budget(1.0))
    True
    """

    def __init__(self, tau: float = 0.0, window: int = 1, pacing: bool = False, pacing_power: float = 0.5) -> None:
        self.tau = tau
        self.window = window
        self.pacing = pacing
        self.pacing_power = pacing_power

    def _validate(self) -> None:
        if not hasattr(self, "_checked"):
            check_float("LLFGate", "tau", self.tau)
            check_int("LLFGate", "window", self.window, low=1)
            check_float("LLFGate", "pacing_power", self.pacing_power, low=0.0, high=1.0, low_open=True)
            if not isinstance(self.pacing, bool):
                raise ConfigError(f"The 'pacing' parameter of LLFGate must be a bool. Got {self.pacing!r}.")
            self._checked = True

    def allowance(self, t: int, horizon: int | None, budget: Budget) -> float:
        """Most that may have been spent by the end of round t (inf without pacing)."""
        if not self.pacing or horizon is None:
            return math.inf
        return budget.total * min(1.0, (t / horizon) ** self.pacing_power)

    def threshold(self, info: QueryInfo, budget: Budget) -> float:
        """τ_t: ``tau``, raised to +inf while spending is ahead of the pacing schedule."""
        if budget.spent + budget.price(info.cost) > self.allowance(info.t, info.horizon, budget):
            return math.inf
        return float(self.tau)

    def ask(self, info: QueryInfo, budget: Budget) -> bool:
        """Stream mode: latency_t > τ_t and the budget affords the label."""
        self._validate()
        return bool(info.latency > self.threshold(info, budget)) and budget.can_afford(info.cost)

    def select_many(self, infos: Sequence[QueryInfo], budget: Budget) -> list[int]:
        """Window mode: indices into ``infos`` to query, chosen largest latency first.

        Candidates are the late rounds (latency > τ). They are taken in order of
        decreasing latency (earlier round first on ties) while the budget affords
        them and cumulative spend stays within the pacing allowance at the end
        of the window. Returned in round order.
        """
        self._validate()
        if not infos:
            return []
        last = infos[-1]
        cap = self.allowance(last.t, last.horizon, budget)
        order = sorted(
            (i for i, info in enumerate(infos) if info.latency > self.tau),
            key=lambda i: (-infos[i].latency, infos[i].t),
        )
        # Largest latency first, each pick checked with the budget's exact arithmetic on a
        # probe copy (nothing is spent here; the game pays when it resolves the window).
        probe = copy.deepcopy(budget)
        chosen: list[int] = []
        for i in order:
            cost = infos[i].cost
            if probe.can_afford(cost) and probe.spent + probe.price(cost) <= cap:
                probe.spend(cost)
                chosen.append(i)
        return sorted(chosen)


def select_pool(
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
    """LLF pool mode: choose examples to label from an unlabelled pool (SPEC §4).

    Repeatedly: score the whole pool with the current learner; pick the
    ``batch_size`` latest examples one at a time, and after each pick condition
    a copy of P on the pick's pair feature z = φ(ŷ) - φ(runner-up) (no label
    needed), so a batch does not spend labels on near duplicates; then buy the
    batch's labels through ``label_fn``, update the learner, and repeat until
    the budget is spent or the pool is empty.

    Conditioning uses ||y||²_{P'} = ||y||²_P - (yᵀPz)² / (1 + zᵀPz) for every
    pool pair y, so a pick costs one (n·(K-1), d) product, not a re-scoring.

    Parameters
    ----------
    learner : RidgeLearner or LogisticLearner
        Must expose ``P_`` (created on first use) besides the Learner protocol.
    pool : sequence of ndarray of shape (K_i, d)
    budget : Budget
    label_fn : callable
        ``label_fn(i) -> gold index`` buys the label of pool item i.
    batch_size : int, default=8
    costs : sequence of float, optional
        Label prices (default 1 each).
    follower : Follower, optional
        Chooses the alternative of each update (default: best response).
    require_late : bool, default=False
        Stop when no remaining example has latency > ``tau`` instead of
        spending the whole budget.

    Returns
    -------
    list of int
        Pool indices bought, in purchase order.
    """
    from budgetsft.followers import BestResponseFollower

    check_int("select_pool", "batch_size", batch_size, low=1)
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
