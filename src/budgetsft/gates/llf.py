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

The calibrated gate (``threshold="calibrated"``, the default) spends the
budget on the rounds of largest latency over the horizon. How it paces the
spending is its ``schedule``; by default (``"auto"``) a stream-mode gate
plays the dual price, and a window (or a gate given ``pacing_power`` or
``memory``) plays the power schedule:

* dual price (``schedule="dual"``; Balseiro, Lu & Mirrokni 2020, "Dual
  mirror descent for online allocation problems"): buy iff latency_t / (mean
  positive latency so far) ≥ μ_t, with the price μ moved after each round by
  μ ← max(0, μ + s_t (bought − ρ_t)), ρ_t = remaining budget / remaining
  rounds. The price rises while the gate buys faster than the even rate and
  falls while it buys slower, so spending follows the latencies: high early
  latencies (a new learner) are bought early, and a drift, which raises the
  latencies again, pulls spending back up. The step s_t = max(η/√T, κ/B) ·
  min(1, (o_t/o_ref)^k) is slowed where the learner stays wrong on the labels
  it buys (o_t its odds of being right on them, from :meth:`feedback`): on
  noisy labels every label is worth about the same and the earlier the
  better, so the gate spends early there. Once as many labels remain as
  rounds, every round is bought. Constants :data:`DUAL_CONSTANTS`;
* power schedule (``schedule="power"``): a front-loaded spending schedule
  A(t) = B·(t/T)^p (p = ``pacing_power``, default 0.3) says how much should
  have been spent by round t: it spends 0.1^0.3 ≈ 50 % of B in the first
  tenth of the stream instead of all of it (``first`` at β = 0.1) or 10 % of
  it (an even rate, which lost to ``random`` in a prototype). The round is
  bought iff its latency is at least the (1 - q_t) quantile of the last m
  latencies (m = ``memory``, T/16 by default), with q_t = A(t) - A(t-1) +
  (A(t) - spent) / m (in labels per round): the schedule's rate plus a
  correction that repays a deficit, or works off a surplus, over the next m
  rounds (over the rounds left, when fewer remain, so the budget is spent by
  T).

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

Without a known horizon both rules assume T̂ = ``horizon`` when given.
Else they double (any horizon): epoch k covers rounds (T̂_0 (2^k − 1), T̂_0
(2^{k+1} − 1)] with T̂_0 = 10·B (a 10 % budget) and gets the share
(1 − r) r^k of the budget, r = 0.4. The power schedule spends it within the
epoch on its front-loaded curve ((t − start) / length)^p; the dual price
paces each epoch as a horizon of its own, to what the epochs have released
by its end, and never spends past what the power schedule has released so
far (so an epoch's labels are not all bought at its first rounds). By the end of epoch k
B (1 − r^{k+1}) is released: 60 % by T̂_0, 98.5 % by 20 T̂_0 (a 20,000-round
stream at B = 100), and labels keep coming however long the stream runs.

``threshold="fixed"`` is the plain gate of the first build: τ_t = ``tau``,
raised to +inf while spending is ahead of the schedule when ``pacing=True``.
On real streams nearly every early round is late under it, so it buys the
first B rounds (their bought sets overlapped `first`'s by 0.87–1.00 on four
real data sets).

The power schedule's p = 0.3 and memory T/16 were chosen on the low-noise
synthetic stream, bbc-news and sarcasm together; a drifting stream wants a
flatter schedule (p = 0.5), a noisy one a steeper one, and no fixed p serves
all three. The dual price needs neither knob; its five constants were chosen
on the same streams and checked on streams it was not chosen on
(``benchmarks/pacing_schedules.py``, ``benchmarks/pacing_heldout.py``,
docs/method.md).
"""

from __future__ import annotations

import copy
import math
import warnings
from collections import deque
from collections.abc import Callable, Sequence

import numpy as np

from budgetsft._validation import check_choice, check_float, check_int
from budgetsft.base import QueryInfo
from budgetsft.budget import Budget
from budgetsft.exceptions import BudgetsftWarning, ConfigError, DataError

__all__ = ["LLFGate", "select_pool", "pick_pool_batch", "latency_of", "DUAL_CONSTANTS", "PACING_POWER"]

#: p of the power schedule A(t) = B (t/T)^p when ``pacing_power`` is not set.
PACING_POWER = 0.3

#: The constants of ``LLFGate(schedule="dual")``: η of the η/√T step (Balseiro, Lu & Mirrokni), κ of its floor
#: κ/B, the reference mistake rate and the power k of the noise factor, the labels before the factor applies.
#: Chosen on the pacing benchmarks' streams (docs/method.md); not per-stream settings.
DUAL_CONSTANTS = {"eta": 0.6, "kappa": 4.0, "ref": 0.4, "power": 4.0, "warmup": 10}


def _doubling_epoch(t: int, budget: Budget) -> tuple[int, float]:
    """(k, T̂_0) of the doubling schedule at round t ≥ 1: epoch k covers rounds T̂_0 (2^k − 1) .. T̂_0 (2^(k+1) − 1),
    T̂_0 = 10 B."""
    T0 = max(10.0 * budget.total, 1.0)
    return int(math.floor(math.log2(max(t, 1) / T0 + 1.0))), T0


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
    pacing_power : float, optional
        Power schedule: p in (0, 1] of A(t) = B·(t/T)^p; smaller front-loads
        more, 1 is an even rate. Not set: :data:`PACING_POWER` (0.3, which
        spends half the budget in the first 10 % of the rounds). Setting it
        makes ``schedule="auto"`` play the power schedule.
    memory : int or "auto", default="auto"
        Power schedule: number of recent latencies the quantile is taken over,
        and the number of rounds over which a deviation from the schedule is
        repaid. ``"auto"``: T/16 (at least 50) when T is known, else 250. As a
        share of the horizon it keeps the gate unchanged when a stream is
        stretched in time, like the schedule A(t), which depends on t/T only.
        Setting it makes ``schedule="auto"`` play the power schedule.
    require_late : bool, default=False
        Calibrated mode: never buy a round whose latency is <= ``tau`` (a certain
        prediction), even if the budget then goes unspent. By default the
        schedule is filled with the largest latencies available, certain or not:
        a label left unbought at the horizon is worth nothing.
    horizon : int, optional
        T̂ for streams of unknown length (ignored when the game knows T).
    schedule : {"auto", "dual", "power"}, default="auto"
        Calibrated mode: how spending is paced (module docstring). ``"dual"``:
        the dual price, with no schedule and no knob; stream mode only.
        ``"power"``: the schedule A(t) = B·(t/T)^p with the quantile filter.
        ``"auto"``: ``"dual"`` for a stream-mode gate with neither
        ``pacing_power`` nor ``memory`` set, else ``"power"``
        (:attr:`schedule_used` says which). The dual price met every target of
        the pacing benchmarks where the power schedule missed two, and held on
        streams its constants were not chosen on (docs/method.md).

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
        pacing_power: float | None = None,
        memory: int | str = "auto",
        require_late: bool = False,
        horizon: int | None = None,
        schedule: str = "auto",
    ) -> None:
        self.threshold = threshold
        self.schedule_name = schedule
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
            if self.pacing_power is not None:
                check_float("LLFGate", "pacing_power", self.pacing_power, low=0.0, high=1.0, low_open=True)
            if self.memory != "auto":
                check_int("LLFGate", "memory", self.memory, low=1)
            for name in ("pacing", "require_late"):
                if not isinstance(getattr(self, name), bool):
                    raise ConfigError(f"The {name!r} parameter of LLFGate must be a bool. Got {getattr(self, name)!r}.")
            if self.horizon is not None:
                check_int("LLFGate", "horizon", self.horizon, low=1)
            check_choice("LLFGate", "schedule", self.schedule_name, ("auto", "power", "dual"))
            if self.schedule_name == "dual" and (not self.calibrated or self.window != 1):
                raise ConfigError("The 'schedule' parameter of LLFGate: 'dual' paces a calibrated gate deciding "
                                  "each round on arrival (threshold 'calibrated', window 1); got threshold "
                                  f"{self.threshold!r}, window {self.window}.")
            self._checked = True
            self._dual = {"n": 0, "mass": 0.0, "price": 0.0, "bought": 0, "wrong": 0}
            self._latencies: deque[float] | None = None  # sized on the first round, once T is known
            self._mean_price = 0.0
            self._n_seen = 0

    def _memory(self, horizon: int | None) -> int:
        if self.memory != "auto":
            return int(self.memory)
        T = horizon if horizon is not None else self.horizon
        return max(50, math.ceil(T / 16)) if T is not None else 250

    @property
    def schedule_used(self) -> str:
        """The spending rule this gate plays: ``"dual"`` or ``"power"`` (``schedule="auto"`` resolved).

        ``"auto"`` is the dual price for a calibrated gate deciding each round on arrival (window 1) with no
        hand-set ``pacing_power`` or ``memory``; the power schedule otherwise (a window, a fixed threshold's
        pacing, or a set p or memory, which only the power schedule reads). A gate restored from a
        checkpoint of a version before the schedule existed has no ``schedule_name`` and plays power.
        """
        name = getattr(self, "schedule_name", "power")
        if name != "auto":
            return name
        plain = getattr(self, "pacing_power", None) is None and self.memory == "auto"
        return "dual" if self.calibrated and self.window == 1 and plain else "power"

    @property
    def _is_dual(self) -> bool:
        return self.schedule_used == "dual"

    @property
    def _power(self) -> float:
        """p of the power schedule: ``pacing_power``, or :data:`PACING_POWER` when not set."""
        p = getattr(self, "pacing_power", None)
        return PACING_POWER if p is None else float(p)

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
        """A(t) = B·min(1, t/T)^p: what the calibrated gate aims to have spent by the end of round t.

        With no horizon at all (neither the game's nor ``self.horizon``), the doubling schedule of the
        module docstring.
        """
        if horizon is None and self.horizon is None:
            return self._doubling(t, budget)
        T = self._horizon(horizon, budget)
        return budget.total * min(1.0, t / T) ** self._power

    def _doubling(self, t: int, budget: Budget) -> float:
        """Any horizon: epoch k of length T̂_0 2^k releases (1 − r) r^k of B along (elapsed / length)^p."""
        if t <= 0:
            return 0.0
        k, T0 = _doubling_epoch(t, budget)
        start, length = T0 * (2.0 ** k - 1.0), T0 * 2.0 ** k
        released = 1.0 - DOUBLING_RATIO ** k
        within = min(1.0, max(0.0, (t - start) / length)) ** self._power
        return budget.total * (released + (1.0 - DOUBLING_RATIO) * DOUBLING_RATIO ** k * within)

    def allowance(self, t: int, horizon: int | None, budget: Budget) -> float:
        """Most that may have been spent by the end of round t (inf for an unpaced fixed gate)."""
        if not self.calibrated and (not self.pacing or horizon is None):
            return math.inf
        return self.schedule(t, horizon, budget)

    def query_rate(self, t: int, horizon: int | None, budget: Budget) -> float:
        """q_t: the share of rounds the calibrated gate should buy now, in [0, 1]."""
        A = self.schedule(t, horizon, budget)
        rate = A - self.schedule(t - 1, horizon, budget)
        if horizon is None and self.horizon is not None and t > self.horizon:  # past the stated T̂
            rate = budget.total / self.horizon
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
        if math.isfinite(info.latency):
            self._latencies.append(float(info.latency))
        else:  # a NaN or infinite latency would make the quantile NaN or inf: it is counted, never ranked
            self._note_nonfinite(info)
        self._n_seen += 1
        self._mean_price += (budget.price(info.cost) - self._mean_price) / self._n_seen
        q = self.query_rate(info.t, info.horizon, budget)
        if q <= 0.0:
            return math.inf
        floor = float(self.tau) if self.require_late else -math.inf
        if q >= 1.0:
            return floor
        if not self._latencies:
            return floor
        hist = np.fromiter(self._latencies, dtype=np.float64, count=len(self._latencies))
        return max(floor, float(np.quantile(hist, 1.0 - q)))

    def _note_nonfinite(self, info: QueryInfo) -> None:
        """Count a NaN or infinite latency (``nonfinite_``) and warn once per gate, naming the round."""
        self.nonfinite_ = getattr(self, "nonfinite_", 0) + 1
        if self.nonfinite_ == 1:
            rule = "buys it when the schedule allows" if info.latency == math.inf else "never buys it"
            warnings.warn(f"round {info.t}: the latency is {info.latency} (the learner's scores or widths "
                          f"overflowed or are undefined); LLF leaves such rounds out of its quantile and {rule} "
                          f"(counted in the gate's nonfinite_).", BudgetsftWarning, stacklevel=4)

    def feedback(self, mistake: bool) -> None:
        """A bought label arrived: whether the learner's prediction on that round, made before it, was wrong.

        The game calls it for every bought round (audit rounds too), before the learner learns. Only
        ``schedule="dual"`` uses it.
        """
        self._validate()
        if self._is_dual:
            self._dual["bought"] += 1
            self._dual["wrong"] += int(bool(mistake))

    def reserve(self, rate: float) -> None:
        """Rounds per round bought outside the gate (a game's audit draws, ``rate`` = share · B / T), which the
        dual price sets aside: it paces the gate's own purchases to the remaining budget less what the audit
        is expected to take over the remaining rounds. The power schedule ignores it."""
        self._reserve_rate = check_float("LLFGate.reserve", "rate", rate, low=0.0, high=1.0)

    def _noise_factor(self) -> float:
        """min(1, (o_t / o_ref)^k) of the dual step: 1 until DUAL_CONSTANTS['warmup'] labels have arrived."""
        c, d = DUAL_CONSTANTS, self._dual
        if d["bought"] < c["warmup"]:
            return 1.0
        m = d["wrong"] / d["bought"]
        return min(1.0, ((1.0 - m) / max(m, 1e-9) * c["ref"] / (1.0 - c["ref"])) ** c["power"])

    @staticmethod
    def _dual_epoch(t: int, budget: Budget) -> tuple[int, float]:
        """T unknown: the end of round t's doubling epoch (the horizon assumed now) and the budget released by
        then, B (1 − r^(k+1)) for epoch k (:meth:`_doubling`'s epochs and shares)."""
        k, T0 = _doubling_epoch(t, budget)
        end = math.ceil(T0 * (2.0 ** (k + 1) - 1.0))
        return end, budget.total * (1.0 - DOUBLING_RATIO ** (k + 1))

    def _ask_dual(self, info: QueryInfo, budget: Budget) -> bool:
        """``schedule="dual"``: the price rule of the class docstring. A NaN latency is left out (not bought, no
        price move); −inf is a certain round, never bought; +inf is bought when affordable and stays out of the
        mean positive latency."""
        T = info.horizon if info.horizon is not None else self.horizon
        c, d = DUAL_CONSTANTS, self._dual
        lat = info.latency
        if math.isnan(lat):  # undefined: left out, neither bought nor moving the price or the mean
            self._note_nonfinite(info)
            return False
        if lat == math.inf:
            self._note_nonfinite(info)
        else:  # −inf (nothing to doubt) counts as a certain round
            d["n"] += 1
            d["mass"] += max(lat, 0.0)
        scale = d["mass"] / d["n"] if d["n"] else 0.0
        if lat == -math.inf:
            v = -math.inf
        else:
            v = lat / scale if scale > 0 else (math.inf if lat > 0 else 0.0)
        buy = bool(v >= d["price"]) and budget.can_afford(info.cost)
        price = budget.price(info.cost)
        reserved = getattr(self, "_reserve_rate", 0.0) * price  # the audit's expected spend per round
        if T is not None:
            left = max(T - info.t + 1, 1)
            rho = min(1.0, max(0.0, budget.remaining - reserved * left) / left)
            # the audit's expected spend over the rounds after this one stays available to it
            buy = buy and budget.remaining - price >= reserved * (left - 1) - 1e-9
            if lat > -math.inf and budget.remaining >= left * price:
                buy = budget.can_afford(info.cost)  # as many labels left as rounds: each is bought, none wasted
        else:  # any horizon: each doubling epoch paced to what it releases, spending capped by the release so far
            T, released = self._dual_epoch(info.t, budget)
            used = budget.total - budget.remaining
            buy = buy and used + price <= self._doubling(info.t, budget) + 1e-9
            left = max(T - info.t + 1, 1)
            rho = min(1.0, max(0.0, released - used - reserved * left) / left)
        if self.require_late and not lat > self.tau:
            buy = False  # a certain prediction is never bought; the price still moves (the round passed)
        step = (price if buy else 0.0) - rho
        size = max(c["eta"] / math.sqrt(T), c["kappa"] / max(budget.total, 1.0)) * self._noise_factor()
        d["price"] = max(0.0, d["price"] + size * step)
        return buy

    def ask(self, info: QueryInfo, budget: Budget) -> bool:
        """Stream mode: buy iff the latency reaches τ_t and the budget affords the label.

        A NaN latency (undefined) is never bought and never enters the quantile; +inf (an unbounded
        width) is late whenever the schedule buys at all; both are counted in ``nonfinite_``.
        """
        self._validate()
        if self._is_dual:
            return self._ask_dual(info, budget)
        tau = self.threshold_at(info, budget)
        if math.isnan(info.latency):
            return False
        late = info.latency >= tau if self.calibrated else info.latency > tau
        if self.require_late:
            late = late and info.latency > self.tau
        return bool(late and info.latency > -math.inf and tau < math.inf) and budget.can_afford(info.cost)

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
        for info in infos:
            if not math.isfinite(info.latency):
                self._note_nonfinite(info)
        order = sorted(  # a NaN latency is never late (NaN > floor is False)
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


# Working memory of one chunk of items in the pool pass: their candidates as float64 (the pair
# block Y and Y P take about as much again). 8 MiB holds ~550 items at K = 5, d = 384: blocks
# that large keep the (pairs, d) x (d, d) products at full BLAS speed.
_POOL_CHUNK_BYTES = 1 << 23
# The doubling schedule's ratio r: epoch k (of length T̂_0 2^k) gets (1 − r) r^k of the budget.
DOUBLING_RATIO = 0.4
_REFRESH_BLOCK = 32  # items whose latency is brought up to date at once, doubled while needed


def _stack_pool(pool) -> tuple[np.ndarray, np.ndarray, int | None]:
    """The pool as one (N, d) array of candidates, N = Σ K_i, with item offsets.

    Returns ``(X, starts, K)``: item i's candidates are ``X[starts[i]:starts[i + 1]]``; ``K`` is
    the common number of candidates, or None when it varies. X keeps the pool's float32 or
    float64 dtype; an (n, K, d) array is used as it is (a view, no copy). A compact pool (one
    with ``stack_rows()``, such as block features held as e(x): ``BlockFeatures``) gives its own
    rows, an (N, d) matrix for reading that expands only the rows it is indexed with: the pass
    reads it chunk by chunk (``_POOL_CHUNK_BYTES``), so the pool is never expanded whole.
    """
    stack_rows = getattr(pool, "stack_rows", None)
    if callable(stack_rows):
        X, starts = stack_rows()
        starts = np.asarray(starts, dtype=np.int64)
        sizes = np.diff(starts)
        if len(sizes) == 0 or sizes.min() < 1 or len(X.shape) != 2 or X.shape[0] != starts[-1]:
            raise DataError(f"A compact pool must give every item at least one candidate row; got {len(sizes)} "
                            f"items over rows of shape {X.shape}.")
        return X, starts, int(sizes[0]) if (sizes == sizes[0]).all() else None
    if isinstance(pool, np.ndarray) and pool.ndim == 3:
        n, K, d = pool.shape
        if K < 1:
            raise DataError(f"Pool items must have at least one candidate; got a pool of shape {pool.shape}.")
        X = pool if pool.dtype in (np.float32, np.float64) else pool.astype(np.float64)
        return X.reshape(n * K, d), np.arange(n + 1, dtype=np.int64) * K, K
    items = [np.asarray(x) for x in pool]
    d = items[0].shape[-1] if items[0].ndim == 2 else -1
    for i, x in enumerate(items):
        if x.ndim != 2 or x.shape[0] < 1 or x.shape[1] != d or d < 1:
            raise DataError(
                f"Pool item {i} must be an array of shape (K_i, d) with K_i >= 1 and d = {max(d, 1)} "
                f"as item 0; got shape {x.shape}."
            )
    sizes = np.fromiter((x.shape[0] for x in items), dtype=np.int64, count=len(items))
    dtype = np.float32 if all(x.dtype == np.float32 for x in items) else np.float64
    starts = np.zeros(len(items) + 1, dtype=np.int64)
    np.cumsum(sizes, out=starts[1:])
    K = int(sizes[0]) if (sizes == sizes[0]).all() else None
    return np.concatenate(items, axis=0, dtype=dtype), starts, K


def _pool_metric(learner) -> Callable[[np.ndarray], np.ndarray]:
    """Y ↦ Y P for rows Y of shape (m, d), with the learner's current P."""
    if hasattr(learner, "P_"):
        P = learner.P_
        return lambda Y: Y @ P
    if hasattr(learner, "apply_P"):
        return learner.apply_P
    raise ConfigError(
        f"{type(learner).__name__} keeps no confidence ellipsoid: pool mode needs a covariance learner "
        "(one with P_ or apply_P, such as RidgeLearner or LogisticLearner) to measure and condition widths."
    )


def _item_max(values: np.ndarray, pair_start: np.ndarray, K: int | None) -> np.ndarray:
    """Per-item max of per-pair ``values`` (pairs of item i at pair_start[i]:pair_start[i + 1]); -inf
    for an item without pairs. Uniform K: one reshape, (items, K - 1).max(axis=1)."""
    n = len(pair_start) - 1
    if K is not None:
        return values.reshape(n, K - 1).max(axis=1) if K > 1 else np.full(n, -np.inf)
    out = np.full(n, -np.inf)
    has = pair_start[1:] > pair_start[:-1]
    if has.any():  # reduceat over the non-empty segments only: an empty one would read its neighbour
        out[has] = np.maximum.reduceat(values, pair_start[:-1][has] - pair_start[0])
    return out


class _PoolPairs:
    """One batch's pairs (ŷ_i, a), a != ŷ_i, of every pool item under the committed θ and P.

    Per pair (m = N - n of them, in item order, then candidate order): the candidate rows
    ``pred``/``cand`` of ŷ_i and a, the score gap s(ŷ_i) - s(a) and the squared width
    ||φ(ŷ_i) - φ(a)||²_P, conditioned on the picks of the batch so far up to the item's ``stamp``.
    """

    def __init__(self, learner, X: np.ndarray, starts: np.ndarray, K: int | None) -> None:
        n = len(starts) - 1
        sizes = np.diff(starts)
        self.K = K
        self.pair_start = starts - np.arange(n + 1)  # item i has K_i - 1 pairs
        m = int(self.pair_start[-1])
        self.pred = np.empty(m, dtype=np.int64)
        self.cand = np.empty(m, dtype=np.int64)
        self.gap = np.empty(m)
        self.nsq = np.empty(m)
        self.metric = metric = _pool_metric(learner)
        k_max = int(sizes.max())
        step = max(1, _POOL_CHUNK_BYTES // (k_max * X.shape[1] * 8))  # items per chunk
        self.block_cap = max(_REFRESH_BLOCK, step)
        for a in range(0, n, step):
            b = min(n, a + step)
            r0, r1 = int(starts[a]), int(starts[b])
            p0, p1 = int(self.pair_start[a]), int(self.pair_start[b])
            Xc = X[r0:r1].astype(np.float64, copy=False)
            s = learner.score_many(Xc)
            local = starts[a:b + 1] - r0
            if K is not None:
                best = s.reshape(b - a, K).argmax(axis=1)  # lowest index on ties, as _math.argmax_lowest
            else:
                padded = np.full((b - a, k_max), -np.inf)  # padding sorts after every real candidate
                owner = np.repeat(np.arange(b - a), sizes[a:b])
                padded[owner, np.arange(r1 - r0) - local[owner]] = s
                best = padded.argmax(axis=1)
            pred_row = local[:-1] + best
            is_pred = np.zeros(r1 - r0, dtype=bool)
            is_pred[pred_row] = True
            cand = np.flatnonzero(~is_pred)
            pred = np.repeat(pred_row, sizes[a:b] - 1)
            self.pred[p0:p1], self.cand[p0:p1] = pred + r0, cand + r0
            self.gap[p0:p1] = s[pred] - s[cand]
            if K is not None:  # y = φ(ŷ) - φ(a) by broadcasting, (items, K - 1, d)
                Y = (Xc[pred_row][:, None, :] - Xc[cand].reshape(b - a, K - 1, -1)).reshape(p1 - p0, -1)
            else:
                Y = Xc[pred] - Xc[cand]
            self.nsq[p0:p1] = np.einsum("md,md->m", metric(Y), Y)
        self.stamp = np.zeros(n, dtype=np.int64)

    def latency(self, rho: float, items: np.ndarray | None = None) -> np.ndarray:
        """max over the pairs of each item of ρ ||y||_P - gap at the item's stamp."""
        if items is None:
            lat = rho * np.sqrt(np.maximum(self.nsq, 0.0)) - self.gap
            return _item_max(lat, self.pair_start, self.K)
        rows, seg = self._rows(items)
        lat = rho * np.sqrt(np.maximum(self.nsq[rows], 0.0)) - self.gap[rows]
        return _item_max(lat, seg, self.K)

    def _rows(self, items: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Pair indices of ``items`` and their segment offsets."""
        lo, hi = self.pair_start[items], self.pair_start[items + 1]
        seg = np.zeros(len(items) + 1, dtype=np.int64)
        np.cumsum(hi - lo, out=seg[1:])
        return np.repeat(lo - seg[:-1], hi - lo) + np.arange(seg[-1]), seg

    def runner_up(self, X: np.ndarray, i: int) -> np.ndarray:
        """z = φ(ŷ_i) - φ(runner-up): the pair of item i with the smallest gap (first on ties)."""
        lo, hi = int(self.pair_start[i]), int(self.pair_start[i + 1])
        r = lo + int(np.argmin(self.gap[lo:hi]))
        return np.subtract(X[self.pred[r]], X[self.cand[r]], dtype=np.float64)

    def condition(self, X: np.ndarray, items: np.ndarray, U: np.ndarray, c: np.ndarray) -> None:
        """Bring the squared widths of ``items`` up to date with the picks so far.

        U (j, d) holds u_k = P_k z_k, c the scalars 1 + z_kᵀ u_k, with P_{k+1} = P_k - u_k u_kᵀ / c_k:
        ||y||²_{P_j} = ||y||²_P - Σ_k (yᵀu_k)² / c_k, taken over the picks k the item has not seen yet,
        in order (the same subtractions as conditioning every pair after every pick).
        """
        j = len(c)
        rows, seg = self._rows(items)
        seen = np.repeat(self.stamp[items], np.diff(seg))  # picks each pair has already seen
        k0 = int(seen.min())
        Y = np.subtract(X[self.pred[rows]], X[self.cand[rows]], dtype=np.float64)
        proj = Y @ U[k0:j].T
        nsq = self.nsq[rows]
        for k in range(k0, j):
            nsq = nsq - np.where(seen <= k, proj[:, k - k0] ** 2 / c[k], 0.0)
        self.nsq[rows] = nsq
        self.stamp[items] = j


_TIE_RTOL = 1e-6  # latencies this close (relative) are a tie, broken by the pool's geometry
_TIE_SAMPLE = 256  # items of the tie whose pairs stand for the pool in the tie-break


def _greedy_batch(pairs: _PoolPairs, X: np.ndarray, rho: float, available: np.ndarray, batch_size: int,
                  probe: Budget, costs: Sequence[float], prices: np.ndarray, *, require_late: bool = False,
                  tau: float = 0.0, condition_on: Sequence[int] = (),
                  latencies: dict[int, float] | None = None) -> list[int]:
    """Pick up to ``batch_size`` items of largest latency, conditioning on each pick (the inner loop of LLF
    pool mode; see :func:`select_pool`). ``probe`` is spent as items are picked.

    ``condition_on``: items whose (ŷ, runner-up) pairs condition P before the first pick, as earlier picks
    of the same batch do (a pool session's pending picks, whose labels have not arrived).

    Ties: when the items whose latency is within ``_TIE_RTOL`` of the largest are several (with no label
    and nothing pending, every item of a pool of normalised embeddings has the same latency), the pick is
    the one whose pair would most reduce the squared widths of the tied items (measured on an evenly
    spaced sample of ``_TIE_SAMPLE`` of them): the most representative item, not the lowest index. The
    picks after it are spread by the conditioning.
    """
    n = len(available)
    by_cost = probe.unit == "cost"
    key = np.where(available, pairs.latency(rho), -np.inf)  # a stale latency bounds the current one
    m = len(condition_on) + min(batch_size, n)
    U = np.empty((m, X.shape[1]))  # u_k = P_k z_k of the conditioning pairs so far
    c = np.empty(m)
    j = 0

    def add(i: int) -> None:  # condition on item i's (ŷ, runner-up) pair: no label needed
        nonlocal j
        z = pairs.runner_up(X, i)
        u = pairs.metric(z[None, :])[0]
        for k in range(j):
            u = u - (z @ U[k]) / c[k] * U[k]
        U[j], c[j] = u, 1.0 + float(z @ u)
        j += 1

    for i in condition_on:
        add(int(i))
    batch: list[int] = []
    while len(batch) < batch_size:
        block = _REFRESH_BLOCK
        if not by_cost and not probe.can_afford(1.0):
            break
        if by_cost:  # a superset of the affordable items: float(remaining) rounds at most one ulp up
            key[prices > probe.remaining] = -np.inf
        while True:
            top = int(np.argmax(key))  # lowest index on ties
            if not key[top] > -np.inf or pairs.stamp[top] == j:
                break
            stale = np.where(pairs.stamp < j, key, -np.inf)
            size = min(block, n)
            items = np.argpartition(stale, n - size)[n - size:]
            items = np.sort(items[stale[items] > -np.inf])
            pairs.condition(X, items, U[:j], c[:j])
            key[items] = pairs.latency(rho, items)
            block = min(2 * block, pairs.block_cap)
        if not key[top] > -np.inf:
            break
        top = _break_tie(pairs, X, key, top, j)
        if by_cost and not probe.can_afford(costs[top]):
            key[top] = -np.inf
            continue
        if require_late and key[top] <= tau:
            break
        probe.spend(costs[top])
        batch.append(top)
        if latencies is not None:
            latencies[top] = float(key[top])
        key[top] = -np.inf
        add(top)
    return batch


def _break_tie(pairs: _PoolPairs, X: np.ndarray, key: np.ndarray, top: int, j: int) -> int:
    """Among the up-to-date items tied with ``top`` (within ``_TIE_RTOL``), the most representative one."""
    best = key[top]
    tied = np.flatnonzero((pairs.stamp == j) & (key >= best - _TIE_RTOL * max(1.0, abs(best))))
    if len(tied) < 2:
        return top
    sample = tied[np.linspace(0, len(tied) - 1, min(_TIE_SAMPLE, len(tied))).round().astype(np.int64)]
    Zs = np.stack([pairs.runner_up(X, int(i)) for i in sample])
    M = pairs.metric(Zs).T  # (d, s): P z_s
    score = np.empty(len(tied))
    for a in range(0, len(tied), 4096):
        Z = np.stack([pairs.runner_up(X, int(i)) for i in tied[a:a + 4096]])
        PZ = pairs.metric(Z)
        score[a:a + 4096] = ((Z @ M) ** 2).sum(axis=1) / np.maximum(np.einsum("md,md->m", PZ, Z), 1e-300)
    return int(tied[int(np.argmax(score))])  # lowest index among equal scores


def select_pool(
    learner,
    pool: Sequence[np.ndarray] | np.ndarray,
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
    the batch's view of P on the pick's pair feature z = φ(ŷ) - φ(runner-up)
    (no label needed; the learner is not touched), so a batch does not spend
    labels on near duplicates; then buy the batch's labels through
    ``label_fn``, update the learner, and repeat until the budget is spent or
    the pool is empty.

    Conditioning on the picks z_0, ..., z_{j-1} of a batch is kept as vectors
    u_k = P_k z_k and scalars c_k = 1 + z_kᵀ u_k, P_{k+1} = P_k - u_k u_kᵀ / c_k
    (Gram–Schmidt in the P metric): ||y||²_{P_j} = ||y||²_P - Σ_k (yᵀ u_k)² / c_k.
    Widths, hence latencies, only fall as picks accumulate, so an item's
    latency from an earlier pick bounds its current one: a pick brings up to
    date only the items whose stale latency still tops every current one
    (lazy greedy). The pick is exact: the item of largest latency, lowest index
    on ties, as when every pair is conditioned after every pick.

    Cost and memory, for n items of K candidates (N = nK rows) in d dimensions
    and m = n(K - 1) pairs:

    * the pool is one (N, d) array in its own dtype (float32 halves it): an
      (n, K, d) array is used as it is, a list of (K_i, d) arrays (K_i may
      vary) is copied into one once; a compact pool (``stack_rows()``: block
      features held as e(x), ``BlockFeatures``) is expanded chunk by chunk as
      the pass reads it, never whole;
    * per batch, one pass over the pool in chunks of items of about 8 MiB of
      float64 (``_POOL_CHUNK_BYTES``; Y and Y P of a chunk take as much
      again): scores, predictions (argmax, lowest index on ties) and ||y||²_P
      of every pair, O(N d²) time. What is kept is four length-m vectors (two
      row indices, the gap, the squared width) and a few of length n, never
      an (m, d) matrix: at n = 100k, K = 5, d = 384 that is about 16 MB beside a
      730 MiB float32 pool, where the full pair matrix Y would be 1.2 GB of
      float64 and Y P as much again;
    * per pick, O(n) vectorised work (argmax, the affordability mask), O(d²)
      for P z, and O(K d j) per item brought up to date (32 per round);
    * B labels take about B / ``batch_size`` passes: a pass over 100k items
      takes about 3 s on one core, so a larger ``batch_size`` trades some
      selection quality for proportionally less time
      (``benchmarks/pool_scale.py`` prints time and peak memory).

    Parameters
    ----------
    learner : RidgeLearner or LogisticLearner
        A covariance learner: it must expose ``P_`` (created on first use) or
        ``apply_P(Y)`` (Y P for an (m, d) matrix) besides the Learner protocol.
    pool : sequence of ndarray of shape (K_i, d), ndarray of shape (n, K, d), or a compact pool
        A compact pool is a sequence of (K_i, d) arrays with ``stack_rows()``, e.g. ``BlockFeatures``.
    budget : Budget
    label_fn : callable
        ``label_fn(i) -> gold index`` buys the label of pool item i.
    batch_size : int, default=8
        Picks per pass over the pool (a pass re-scores it with the updated
        learner).
    costs : sequence of float, optional
        Label prices (default 1 each).
    follower : Follower, optional
        Chooses the alternative of each update (default: best response).
    require_late : bool, default=False
        Stop when no remaining example has latency > ``tau`` instead of
        spending the whole budget.
    progress : callable, optional
        Called with the number of labels bought after each purchase.

    Returns
    -------
    list of int
        Pool indices bought, in purchase order.

    Examples
    --------
    >>> import numpy as np
    >>> from budgetsft.learners import RidgeLearner
    >>> pool = np.random.default_rng(0).standard_normal((50, 4, 3))
    >>> bought = select_pool(RidgeLearner(), pool, Budget(5.0), lambda i: 0, batch_size=2)
    >>> len(bought), len(set(bought))
    (5, 5)
    """
    from budgetsft.followers import BestResponseFollower

    check_int("select_pool", "batch_size", batch_size, low=1)
    follower = follower or BestResponseFollower()
    n = len(pool)
    bought: list[int] = []
    if n == 0:
        return bought
    costs = [1.0] * n if costs is None else list(costs)
    if len(costs) != n:
        raise DataError(f"select_pool needs one label cost per pool item: {n} items, {len(costs)} costs.")
    by_cost = budget.unit == "cost"
    prices = np.array([budget.price(c) for c in costs]) if by_cost else np.ones(n)  # validates every cost
    X, starts, K = _stack_pool(pool)
    learner.score_many(X[: starts[1]].astype(np.float64))  # lazily initialises P_
    _pool_metric(learner)  # a learner without a covariance fails here, before any label is bought
    available = np.ones(n, dtype=bool)
    while available.any():
        pairs = _PoolPairs(learner, X, starts, K)
        rho = learner.current_radius() if hasattr(learner, "current_radius") else float(learner.radius)
        batch = _greedy_batch(pairs, X, rho, available, batch_size, copy.deepcopy(budget), costs, prices,
                              require_late=require_late, tau=tau)
        if not batch:
            break
        for i in batch:
            if not budget.can_afford(costs[i]):
                continue
            gold = int(label_fn(i))
            budget.spend(costs[i])
            bought.append(i)
            available[i] = False
            Xi = np.asarray(pool[i], dtype=np.float64)
            s = learner.score_many(Xi)
            learner.learn_one(Xi, gold, follower.respond(s, gold))
            if progress is not None:
                progress(len(bought))
    return bought


def pick_pool_batch(learner, pool: Sequence[np.ndarray] | np.ndarray, n: int, *, available: np.ndarray,
                    budget: Budget, costs: Sequence[float] | None = None,
                    condition_on: Sequence[int] = ()) -> tuple[list[int], dict[int, float]]:
    """One batch of LLF pool selection under the learner as it is, without buying anything.

    The items of ``condition_on`` (picks whose labels have not arrived) condition P first, as the
    earlier picks of a batch do; then up to ``n`` items of ``available`` are picked, largest latency
    first, each conditioning the next, within ``budget`` (which is not spent).

    Returns
    -------
    picks : list of int
        Pool indices, in pick order.
    latency : dict of int to float
        The latency of each pick when it was picked (conditioned on everything before it).
    """
    items = len(pool)
    if len(available) != items:
        raise DataError(f"pick_pool_batch: 'available' has {len(available)} entries for {items} pool items.")
    costs = [1.0] * items if costs is None else list(costs)
    by_cost = budget.unit == "cost"
    prices = np.array([budget.price(c) for c in costs]) if by_cost else np.ones(items)
    if n < 1 or not np.any(available):
        return [], {}
    X, starts, K = _stack_pool(pool)
    learner.score_many(X[: starts[1]].astype(np.float64))  # lazily initialises P_
    pairs = _PoolPairs(learner, X, starts, K)
    rho = learner.current_radius() if hasattr(learner, "current_radius") else float(learner.radius)
    lat: dict[int, float] = {}
    picks = _greedy_batch(pairs, X, rho, np.asarray(available, dtype=bool), n, copy.deepcopy(budget), costs,
                          prices, condition_on=condition_on, latencies=lat)
    return picks, lat
