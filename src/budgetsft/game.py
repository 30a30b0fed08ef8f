"""The round loop (SPEC §2): a generator of flat, frozen records.

Order of play in round t: the learner commits θ_t (scores, prediction,
widths); the gate decides q_t from a :class:`QueryInfo` that holds no gold
label; only then is the gold read, the follower best-responds, the round is
scored, and a bought label is paid for and learnt from.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from budgetsft import _math
from budgetsft._validation import check_features
from budgetsft.base import QueryInfo, Record, Round
from budgetsft.budget import Budget
from budgetsft.exceptions import DataError
from budgetsft.followers import BestResponseFollower

__all__ = ["play", "commit", "check_round", "resolve", "UNLABELLED", "Game", "Labels", "GoldLabels", "Awaited",
           "SKIPPED", "audit_rounds"]

# The gold of a record whose round was neither labelled in the data nor bought (an unlabelled pool).
UNLABELLED = -1


def commit(learner, X: np.ndarray, t: int, horizon: int | None, cost: float, *, widths: bool = True) -> QueryInfo:
    """The leader's move on features X: scores, prediction, widths, latency (no gold involved).

    ``widths=False``: for a gate that reads none of them (``reads_widths = False``: first, random, margin,
    full), the widths, latency and uncertainty are NaN and no X P product is made (at d = 1925 it is most of
    a round's time); scores, prediction and runner-up are the same.
    """
    scores = learner.score_many(X)
    pred = _math.argmax_lowest(scores)
    if widths:
        widths, nsq = learner.widths_many(X, pred)
    else:
        widths = nsq = np.full(len(scores), np.nan)
    gaps = scores[pred] - scores
    lat = widths - gaps
    lat[pred] = -np.inf
    runner = _math.best_alternative(scores, pred)
    return QueryInfo(
        t=t,
        horizon=horizon,
        features=X,
        scores=scores,
        prediction=pred,
        runner_up=runner,
        widths=widths,
        latency=float(lat.max()),
        gap=float(gaps[runner]),
        uncertainty=float(nsq[runner]),
        cost=cost,
    )


def check_round(rnd: Round, t: int, *, unlabelled_ok: bool = False) -> tuple[np.ndarray, float]:
    """Check one round before play: finite (K, d) features, a gold index in range, a finite cost >= 0.

    ``unlabelled_ok``: a round may have no gold (``None``), where a person answers the queries (a session).
    """
    X = check_features(rnd.features, where=f"round {t}")
    K = X.shape[0]
    gold = rnd.gold
    if gold is None:
        if not unlabelled_ok:
            raise DataError(f"round {t}{f' (example {rnd.id!r})' if rnd.id else ''} has no gold label: a "
                            f"simulation reads the gold of every round. Label the data, or play a session whose "
                            f"labels come from a person (--session with --oracle web, file or terminal; or "
                            f"`budgetsft select`).")
    elif isinstance(gold, bool) or not isinstance(gold, int | np.integer) or not 0 <= gold < K:
        raise DataError(f"round {t}: 'gold' must be an int in [0, {K - 1}]. Got {gold!r}.")
    cost = rnd.cost
    if isinstance(cost, bool) or not isinstance(cost, int | float | np.number) or not math.isfinite(cost) or cost < 0:
        raise DataError(f"round {t}: 'cost' must be a finite number >= 0. Got {cost!r}.")
    if rnd.expected_rewards is not None:
        p = np.asarray(rnd.expected_rewards, dtype=np.float64)
        if p.shape != (K,) or not np.isfinite(p).all():
            raise DataError(
                f"round {t}: 'expected_rewards' must be {K} finite numbers; got shape {p.shape}."
            )
    return X, float(cost)


class Labels(Protocol):
    """Where the labels of bought rounds come from: now, later, or never (the game's label hook).

    The game calls :meth:`request` with the rounds the gate just chose, then asks :meth:`arrival` for
    each round whose label it holds a place for: at once, and again before every later round until
    the label comes or is withdrawn.
    """

    def request(self, asked: list[tuple[Round, QueryInfo]], audit: frozenset[int] = frozenset()) -> None:
        """The gate chose these rounds (in round order): ask for their labels. ``audit``: the rounds (``t``)
        among them drawn uniformly at random (:func:`audit_rounds`), not chosen by the gate."""

    def arrival(self, rnd: Round, info: QueryInfo, now: int) -> tuple[int, float | None] | str | None:
        """The label of the round of ``info`` if it has come, as ``(label, price)`` (price None: the round's
        own cost); :data:`SKIPPED` if it never will; None while it is awaited. ``now`` is the round about to
        be played (``info.t`` when asked at once)."""


SKIPPED = "skipped"


class GoldLabels:
    """The simulation's label source: every bought label is the round's gold, at once, at its own cost."""

    def request(self, asked, audit=frozenset()) -> None:
        pass

    def arrival(self, rnd: Round, info: QueryInfo, now: int):
        return int(rnd.gold), None


@dataclass
class Awaited:
    """A bought round whose label has not arrived: its price is held, its record waits for the label."""

    round: Round
    info: QueryInfo
    price: float


def audit_rounds(share: float, budget: float, horizon: int, seed: int) -> Callable[[int], bool]:
    """Round t is an audit round with probability share · B / T, independently of everything else.

    An audit round is bought whatever the gate says (while the budget affords it): the audit rounds are a
    uniform sample of the stream, so the share of them the model predicted right before their labels
    arrived is an unbiased estimate of its (prequential) accuracy. The draw of round t depends on
    (seed, t) only, so a replay draws the same rounds without any state.
    """
    q = min(1.0, share * budget / max(horizon, 1))

    def audit(t: int) -> bool:
        return q > 0 and float(np.random.default_rng([seed, t, 0xA0D17]).random()) < q

    audit.rate = q  # rounds per round drawn for the audit: a gate that paces itself sets that much aside
    return audit


class Game:
    """The round loop (SPEC §2) with delayed feedback: one loop for simulations and for sessions.

    Each round the learner commits, the gate decides (a window at a time when ``window > 1``), the
    label source is asked for the bought rounds' labels. A label that is there at once is learnt from
    at once (the simulation, and every oracle that answers on the spot: records are those of
    :func:`play`). A label that is not is *awaited*: its price is held in the budget (so the gate can
    never spend past it), the stream plays on, and the learner updates when the label arrives, before
    the next round (delayed feedback); its record is yielded then. A withdrawn (skipped) label gives
    its price back and the round is recorded as unqueried. At most ``max_pending`` labels are awaited
    at once: past that the game stops (:attr:`status` ``waiting``) at a round boundary, with
    :attr:`position` rounds decided, and :meth:`rounds` goes on from there when called again.

    Parameters
    ----------
    learner, gate, budget, follower
        As :func:`play`.
    horizon : int or None
        T, for gates that pace themselves.
    labels : Labels, default=GoldLabels()
    max_pending : int or None, default=None
        Labels awaited at once before the game waits; None: no limit; 0: wait for every label of a
        decision before playing on (records then equal the simulation's when the answers are the gold).
    position : int, default=0
        Rounds already decided (a resumed game).
    awaited : list of Awaited, optional
        Labels still awaited at ``position`` (a resumed game).
    unlabelled_ok : bool, default=False
        Rounds may have no gold (a person answers the bought ones).
    audit : callable, optional
        ``audit(t)``: whether round t is an audit round (:func:`audit_rounds`), bought whatever the gate
        says while the budget affords it; :attr:`audited` collects them.
    """

    def __init__(self, learner, gate, budget: Budget, follower=None, *, horizon: int | None = None,
                 labels: Labels | None = None, max_pending: int | None = None, position: int = 0,
                 awaited: list[Awaited] | None = None, unlabelled_ok: bool = False,
                 audit: Callable[[int], bool] | None = None, widths: bool = True) -> None:
        self.learner = learner
        self.widths = widths
        self.gate = gate
        self.budget = budget
        self.follower = follower or BestResponseFollower()
        self.horizon = horizon
        self.labels = labels or GoldLabels()
        self.max_pending = max_pending
        self.position = position
        self.awaited = list(awaited or [])
        self.unlabelled_ok = unlabelled_ok
        self.audit = audit
        self.audited: set[int] = set()
        reserve = getattr(gate, "reserve", None)
        if audit is not None and callable(reserve):  # the audit's share of each round, which the gate does not pick
            reserve(float(getattr(audit, "rate", 0.0)))
        self.status = "playing"
        # Called with the position at each round boundary (the game's state is whole there: a session
        # checkpoints it); it may raise to leave the game.
        self.on_boundary = None

    def _deliver(self, now: int) -> Iterator[Record]:
        """Learn from the awaited labels that have arrived (in the order they were bought)."""
        still = []
        for k, aw in enumerate(self.awaited):
            got = self.labels.arrival(aw.round, aw.info, now)
            if got is None:
                still.append(aw)
                continue
            self.budget.release(aw.price)
            X = np.asarray(aw.round.features, dtype=np.float64)
            # The record's budget left is as of its round: what later purchases hold is not yet spent then.
            later = math.fsum(self.budget.price(a.price) for a in self.awaited[k + 1:])
            if got == SKIPPED:
                rec = resolve(aw.round, X, aw.info, False, self.learner, self.follower, self.budget)
            else:
                label, price = got
                self._heard(aw.info, label)
                rec = resolve(dataclasses.replace(aw.round, gold=int(label)), X, aw.info, True, self.learner,
                              self.follower, self.budget, price=price, settle=True)
            yield dataclasses.replace(rec, budget_left=self.budget.remaining + later) if later else rec
        self.awaited = still

    def _close(self, group: list[tuple[Round, np.ndarray, QueryInfo]], chosen: set[int], now: int
               ) -> Iterator[Record]:
        asked = [(rnd, info) for i, (rnd, _, info) in enumerate(group) if i in chosen]
        if asked:
            self.labels.request(asked, audit=frozenset(info.t for _, info in asked if info.t in self.audited))
        for i, (rnd, X, info) in enumerate(group):
            if i not in chosen:
                yield resolve(rnd, X, info, False, self.learner, self.follower, self.budget)
                continue
            got = self.labels.arrival(rnd, info, now)
            if got is None:
                self.budget.hold(info.cost)
                self.awaited.append(Awaited(rnd, info, info.cost))
            elif got == SKIPPED:
                yield resolve(rnd, X, info, False, self.learner, self.follower, self.budget)
            else:
                label, price = got
                if rnd.gold is None or int(rnd.gold) != int(label):  # the simulation's label is the round's gold
                    rnd = dataclasses.replace(rnd, gold=int(label))
                self._heard(info, label)
                yield resolve(rnd, X, info, True, self.learner, self.follower, self.budget, price=price)

    def _heard(self, info: QueryInfo, label: int) -> None:
        """A bought label arrived: tell a gate that listens (``feedback``) whether the prediction committed in
        that round was wrong, before the learner learns from it."""
        feedback = getattr(self.gate, "feedback", None)
        if feedback is not None:
            feedback(int(info.prediction) != int(label))

    def _audits(self, group, chosen: set[int]) -> set[int]:
        """The audit rounds of a decided group that the budget affords after the gate's picks."""
        probe = copy.deepcopy(self.budget)
        for i in sorted(chosen):
            probe.hold(group[i][2].cost)
        out = set()
        for i, (_, _, info) in enumerate(group):
            if not self.audit(info.t):
                continue
            if i in chosen:  # drawn for the audit and chosen by the gate too: an audit round all the same
                self.audited.add(info.t)
            elif probe.can_afford(info.cost):
                probe.hold(info.cost)
                self.audited.add(info.t)
                out.add(i)
        return out

    def _must_wait(self) -> bool:
        """Whether the next decision must wait for labels: K = max_pending awaited (K = 0: any)."""
        if self.max_pending is None:
            return False
        return len(self.awaited) >= max(self.max_pending, 1)

    def rounds(self, stream: Iterable[Round]) -> Iterator[Record]:
        """Play the rounds of ``stream`` after :attr:`position` (the stream from its start)."""
        window = int(getattr(self.gate, "window", 1) or 1)
        self.status = "playing"
        group: list[tuple[Round, np.ndarray, QueryInfo]] = []
        it = iter(stream)
        for _ in range(self.position):
            next(it)
        t = self.position
        for t, rnd in enumerate(it, start=self.position + 1):
            if not group:
                yield from self._deliver(t)
                if self.on_boundary is not None:
                    self.on_boundary(self.position)
                if self._must_wait():
                    self.status = "waiting"
                    return
            X, cost = check_round(rnd, t, unlabelled_ok=self.unlabelled_ok)
            try:
                info = commit(self.learner, X, t, self.horizon, cost, widths=self.widths)
            except DataError as exc:
                raise DataError(f"round {t}: {exc}") from exc
            group.append((rnd, X, info))
            if window == 1:
                chosen = {0} if self.gate.ask(info, self.budget) else set()
            elif len(group) == window or t == self.horizon:
                chosen = set(self.gate.select_many([g[2] for g in group], self.budget))
            else:
                continue
            if self.audit is not None:
                chosen |= self._audits(group, chosen)
            yield from self._close(group, chosen, t)
            group = []
            self.position = t
        if group:
            chosen = set(self.gate.select_many([g[2] for g in group], self.budget))
            if self.audit is not None:
                chosen |= self._audits(group, chosen)
            yield from self._close(group, chosen, t)
            self.position = t
        yield from self._deliver(t + 1)
        if self.on_boundary is not None and not self.awaited:
            self.on_boundary(self.position)
        self.status = "waiting" if self.awaited else "finished"


def play(
    stream: Iterable[Round],
    learner,
    gate,
    budget: Budget,
    *,
    follower=None,
    horizon: int | None = None,
    audit: Callable[[int], bool] | None = None,
    widths: bool = True,
) -> Iterator[Record]:
    """Play the budgeted Stackelberg game over ``stream``, yielding one :class:`Record` per round.

    The simulation: every bought label is the round's gold, at once (:class:`Game` with
    :class:`GoldLabels`; sessions play the same loop with their ledger as the label source).

    Parameters
    ----------
    stream : iterable of Round
        If it has ``bind(learner)`` (adversarial contexts), it is bound first.
    learner : Learner
    gate : Gate
        A gate with ``window > 1`` decides at the end of each window via
        ``select_many``; records of a window are yielded when it closes.
    budget : Budget
        Charged for every bought label; never exceeded.
    follower : Follower, default=BestResponseFollower()
    horizon : int, optional
        T, for gates that pace themselves; defaults to ``len(stream)``.
    audit : callable, optional
        ``audit(t)`` (:func:`audit_rounds`): round t is bought whatever the gate says while the budget
        affords it. The audit rounds of the game are the queried rounds t with ``audit(t)`` true.
    widths : bool, default=True
        False: NaN widths and latency in every record, no X P product per round (:func:`commit`); only for a
        gate that reads neither (``reads_widths = False``).

    Yields
    ------
    Record

    Notes
    -----
    A round costs O(K d²) in a few small matrix products; for d in the
    hundreds, run the loop under ``threadpoolctl.threadpool_limits(1, "blas")``
    (as :func:`budgetsft.experiment.run` does): multi-threaded BLAS on such
    small products is slower, not faster.
    """
    if horizon is None and hasattr(stream, "__len__"):
        horizon = len(stream)  # type: ignore[arg-type]
    if hasattr(stream, "bind"):
        stream.bind(learner)  # type: ignore[union-attr]
    yield from Game(learner, gate, budget, follower, horizon=horizon, audit=audit, widths=widths).rounds(stream)


def resolve(rnd: Round, X: np.ndarray, info: QueryInfo, queried: bool, learner, follower, budget: Budget,
            price: float | None = None, settle: bool = False) -> Record:
    """Read the gold (after the decision), score the round, pay and learn if queried.

    ``price`` is what the label cost when it differs from the round's nominal
    cost (an annotator's own rate, in a session); ``settle``: the label was
    held in the budget and is paid already (:meth:`Budget.spend`). A round without gold (an
    unlabelled example that was not bought) is recorded with gold and
    alternative :data:`UNLABELLED`, NaN margin and hinge loss, and no mistake:
    what it would have scored cannot be known.
    """
    price = info.cost if price is None else float(price)
    if rnd.gold is None:
        if queried:
            raise DataError(f"round {info.t}: a bought label is missing (the session must supply it).")
        return Record(round=info.t, prediction=info.prediction, gold=UNLABELLED, alternative=UNLABELLED,
                      queried=False, cost=0.0, budget_left=budget.remaining, latency=info.latency,
                      margin=math.nan, hinge_loss=math.nan, mistake=False, regret=math.nan,
                      n_candidates=int(X.shape[0]), id=rnd.id)
    gold = int(rnd.gold)
    scores = info.scores
    alt = int(follower.respond(scores, gold))
    margin = float(scores[gold] - scores[alt])
    hardest = _math.best_alternative(scores, gold)
    hinge = max(0.0, 1.0 - float(scores[gold] - scores[hardest]))
    if rnd.expected_rewards is not None:
        p = np.asarray(rnd.expected_rewards, dtype=np.float64)
        regret = float(p.max() - p[info.prediction])
    else:
        regret = math.nan
    if queried:
        budget.spend(price, settle=settle)  # raises before spending if a gate overreached
        learner.learn_one(X, gold, alt)
    return Record(
        round=info.t,
        prediction=info.prediction,
        gold=gold,
        alternative=alt,
        queried=queried,
        cost=price if queried else 0.0,
        budget_left=budget.remaining,
        latency=info.latency,
        margin=margin,
        hinge_loss=hinge,
        mistake=info.prediction != gold,
        regret=regret,
        n_candidates=int(X.shape[0]),
        id=rnd.id,
    )
