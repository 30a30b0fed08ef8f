"""LLF, the Largest-Latency-First confidence gate (SPEC §4).

A round is *late* when some alternative's confidence interval reaches above
the predicted answer; its latency is by how much:

    latency_t = max_{a != ŷ_t} ( w(ŷ_t, a) - (s_t(ŷ_t) - s_t(a)) ).

LLF spends the budget on the rounds of largest latency first, as
Roughgarden's Largest-Latency-First spends a Stackelberg leader's controlled
share of traffic on the links of largest latency first. Three modes:

* stream (``window=1``): query iff latency_t reaches τ_t and the budget affords it;
* window (``window=W > 1``): predictions are committed on arrival; at the end
  of each window the rounds are queried largest latency first, as many as the
  schedule allows (ties: earlier round first);
* pool (:func:`select_pool`): data selection from an unlabelled pool, in
  batches, conditioning P on each pick before the next.

The threshold τ_t (``threshold="calibrated"``, the default) is set online so
that the budget goes to the rounds of largest latency over the horizon:

* a front-loaded spending schedule A(t) = B·(t/T)^p (p = ``pacing_power``,
  default 0.3) says how much should have been spent by round t: early labels
  are worth the most (the learner is worst early), so A spends 0.1^0.3 ≈ 50 %
  of B in the first tenth of the stream instead of all of it (``first`` at
  β = 0.1) or 10 % of it (an even rate, which lost to ``random`` in a
  prototype);
* the round is bought iff its latency is at least the (1 - q_t) quantile of
  the last m latencies (m = ``memory``, T/16 by default), with
  q_t = A(t) - A(t-1) + (A(t) - spent) / m (in labels per round): the
  schedule's rate plus a correction that repays a deficit, or works off a
  surplus, over the next m rounds (over the rounds left, when fewer remain,
  so the budget is spent by T).

This is the mechanics of the stream budget managers of scikit-activeml:
an incremental quantile filter over a sliding window of utilities (Kottke,
Krempl, Spiliopoulou 2015, "Probabilistic active learning in datastreams",
BIQF) with a balancing term that tracks the budget, instead of a fixed
utility threshold (Žliobaitė et al. 2014's variable threshold also moves its
threshold by the spend, but by a fixed step, and splits off a random share,
as in their Split strategy, which LLF does not need: the quantile already
adapts). What LLF keeps is its ordering: the utility is the latency, and the
largest latencies are filled first. A quantile is unchanged by any positive
rescaling of the latencies, so the decisions do not hinge on the scale of
the confidence radius ρ. The budget stays a hard cap.

Without a known horizon the schedule assumes T̂ = ``horizon`` when given,
else T̂ = 10·B (a 10 % budget); past T̂ the rest of the budget goes to the
rounds whose latency tops the window's quantile at the rate β̂ = B / T̂ plus the
same catch-up term.

``threshold="fixed"`` is the plain gate of the first build: τ_t = ``tau``,
raised to +inf while spending is ahead of the schedule when ``pacing=True``.
On real streams nearly every early round is late under it, so it buys the
first B rounds (their bought sets overlapped `first`'s by 0.87–1.00 on four
real data sets).

The schedule's default p = 0.3 and the memory T/16 were chosen on the
low-noise synthetic stream, bbc-news and sarcasm together, and hold across
radii (``benchmarks/radius_sensitivity.py``); a drifting stream wants a
flatter schedule (p = 0.5, ``configs/drifting_paced.yaml``).
"""

from __future__ import annotations

import copy
import math
from collections import deque
from collections.abc import Callable, Sequence

import numpy as np

from budgetsft import _math
from budgetsft._validation import check_choice, check_float, check_int
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
    threshold : {"calibrated", "fixed"}, default="calibrated"
        How τ_t is set: calibrated to the budget (module docstring) or fixed at ``tau``.
    tau : float, default=0.0
        Fixed mode: only rounds with latency > τ are late. Calibrated mode with
        ``require_late=True``: the floor below which no round is bought.
    window : int, default=1
        W = 1 decides each round on arrival; W > 1 decides at the end of each
        window of W rounds, largest latency first.
    pacing : bool, default=False
        Fixed mode only: cap cumulative spend at the schedule A(t) when T is known.
        (The calibrated mode always follows the schedule.)
    pacing_power : float, default=0.3
        p in (0, 1] of the schedule A(t) = B·(t/T)^p; smaller front-loads more,
        1 is an even rate. 0.3 spends half the budget in the first 10 % of the
        rounds (`first` spends all of it there at β = 0.1).
    memory : int or "auto", default="auto"
        Calibrated mode: number of recent latencies the quantile is taken over,
        and the number of rounds over which a deviation from the schedule is
        repaid. ``"auto"``: T/16 (at least 50) when T is known, else 250. As a
        share of the horizon it keeps the gate unchanged when a stream is
        stretched in time, like the schedule A(t), which depends on t/T only.
    require_late : bool, default=False
        Calibrated mode: never buy a round whose latency is <= ``tau`` (a certain
        prediction), even if the budget then goes unspent. By default the
        schedule is filled with the largest latencies available, certain or not:
        a label left unbought at the horizon is worth nothing.
    horizon : int, optional
        T̂ for streams of unknown length (ignored when the game knows T).

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
    >>> LLFGate(threshold="fixed", tau=0.5).ask(info, Budget(1.0))
    False
    """

    def __init__(
        self,
        threshold: str = "calibrated",
        tau: float = 0.0,
        window: int = 1,
        pacing: bool = False,
        pacing_power: float = 0.3,
        memory: int | str = "auto",
        require_late: bool = False,
        horizon: int | None = None,
    ) -> None:
        self.threshold = threshold
        self.tau = tau
        self.window = window
        self.pacing = pacing
        self.pacing_power = pacing_power
        self.memory = memory
        self.require_late = require_late
        self.horizon = horizon

    def _validate(self) -> None:
        if not hasattr(self, "_checked"):
            check_choice("LLFGate", "threshold", self.threshold, ("calibrated", "fixed"))
            check_float("LLFGate", "tau", self.tau)
            check_int("LLFGate", "window", self.window, low=1)
            check_float("LLFGate", "pacing_power", self.pacing_power, low=0.0, high=1.0, low_open=True)
            if self.memory != "auto":
                check_int("LLFGate", "memory", self.memory, low=1)
            for name in ("pacing", "require_late"):
                if not isinstance(getattr(self, name), bool):
                    raise ConfigError(f"The {name!r} parameter of LLFGate must be a bool. Got {getattr(self, name)!r}.")
            if self.horizon is not None:
                check_int("LLFGate", "horizon", self.horizon, low=1)
            self._checked = True
            self._latencies: deque[float] | None = None  # sized on the first round, once T is known
            self._mean_price = 0.0
            self._n_seen = 0

    def _memory(self, horizon: int | None) -> int:
        if self.memory != "auto":
            return int(self.memory)
        T = horizon if horizon is not None else self.horizon
        return max(50, math.ceil(T / 16)) if T is not None else 250

    @property
    def calibrated(self) -> bool:
        return self.threshold == "calibrated"

    # -- the schedule ----------------------------------------------------------------
    def _horizon(self, horizon: int | None, budget: Budget) -> float:
        if horizon is not None:
            return float(horizon)
        if self.horizon is not None:
            return float(self.horizon)
        return 10.0 * max(budget.total, 1.0)

    def schedule(self, t: int, horizon: int | None, budget: Budget) -> float:
        """A(t) = B·min(1, t/T)^p: what the calibrated gate aims to have spent by the end of round t."""
        T = self._horizon(horizon, budget)
        return budget.total * min(1.0, t / T) ** self.pacing_power

    def allowance(self, t: int, horizon: int | None, budget: Budget) -> float:
        """Most that may have been spent by the end of round t (inf for an unpaced fixed gate)."""
        if not self.calibrated and (not self.pacing or horizon is None):
            return math.inf
        return self.schedule(t, horizon, budget)

    def query_rate(self, t: int, horizon: int | None, budget: Budget) -> float:
        """q_t: the share of rounds the calibrated gate should buy now, in [0, 1]."""
        A = self.schedule(t, horizon, budget)
        rate = A - self.schedule(t - 1, horizon, budget)
        if t > self._horizon(horizon, budget):  # unknown T, past T̂: the 10 % rate on what is left
            rate = budget.total / self._horizon(horizon, budget)
        # A deviation from the schedule is repaid over the next `memory` rounds, or over the
        # rounds left when fewer remain, so that a known horizon ends with the budget spent.
        left = self._horizon(horizon, budget) - t + 1
        mem = float(self._memory(horizon))
        repay = min(mem, left) if horizon is not None and left >= 1 else mem
        price = self._mean_price if self._mean_price > 0 else 1.0
        return min(1.0, max(0.0, (rate + (A - budget.spent) / repay) / price))

    def threshold_at(self, info: QueryInfo, budget: Budget) -> float:
        """τ_t for this round (updates the latency window of the calibrated gate)."""
        self._validate()
        if not self.calibrated:
            if budget.spent + budget.price(info.cost) > self.allowance(info.t, info.horizon, budget):
                return math.inf
            return float(self.tau)
        if self._latencies is None:
            self._latencies = deque(maxlen=self._memory(info.horizon))
        self._latencies.append(float(info.latency))
        self._n_seen += 1
        self._mean_price += (budget.price(info.cost) - self._mean_price) / self._n_seen
        q = self.query_rate(info.t, info.horizon, budget)
        if q <= 0.0:
            return math.inf
        floor = float(self.tau) if self.require_late else -math.inf
        if q >= 1.0:
            return floor
        hist = np.fromiter(self._latencies, dtype=np.float64, count=len(self._latencies))
        return max(floor, float(np.quantile(hist, 1.0 - q)))

    def ask(self, info: QueryInfo, budget: Budget) -> bool:
        """Stream mode: buy iff the latency reaches τ_t and the budget affords the label."""
        tau = self.threshold_at(info, budget)
        late = info.latency >= tau if self.calibrated else info.latency > tau
        if self.require_late:
            late = late and info.latency > self.tau
        return bool(late and math.isfinite(info.latency)) and budget.can_afford(info.cost)

    def select_many(self, infos: Sequence[QueryInfo], budget: Budget) -> list[int]:
        """Window mode: indices into ``infos`` to query, chosen largest latency first.

        Candidates are the late rounds (latency > τ; every round in calibrated
        mode unless ``require_late``). They are taken in order of decreasing
        latency (earlier round first on ties) while the budget affords them and
        cumulative spend stays within the schedule A(t) at the end of the window
        (an unpaced fixed gate has no schedule). Returned in round order.
        """
        self._validate()
        if not infos:
            return []
        last = infos[-1]
        cap = self.allowance(last.t, last.horizon, budget)
        floor = -math.inf if (self.calibrated and not self.require_late) else self.tau
        order = sorted(
            (i for i, info in enumerate(infos) if info.latency > floor),
            key=lambda i: (-infos[i].latency, infos[i].t),
        )
        # Largest latency first, each pick checked with the budget's exact arithmetic on a
        # probe copy (nothing is spent here; the game pays when it resolves the window).
        probe = copy.deepcopy(budget)
        chosen: list[int] = []
        for i in order:
            cost = infos[i].cost
            if probe.can_afford(cost) and probe.spent + probe.price(cost) <= cap + 1e-9:
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
