"""The round loop (SPEC §2): a generator of flat, frozen records.

Order of play in round t: the learner commits θ_t (scores, prediction,
widths); the gate decides q_t from a :class:`QueryInfo` that holds no gold
label; only then is the gold read, the follower best-responds, the round is
scored, and a bought label is paid for and learnt from.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator

import numpy as np

from budgetsft import _math
from budgetsft._validation import check_features
from budgetsft.base import QueryInfo, Record, Round
from budgetsft.budget import Budget
from budgetsft.exceptions import DataError
from budgetsft.followers import BestResponseFollower

__all__ = ["play", "commit", "check_round", "resolve", "UNLABELLED"]

# The gold of a record whose round was neither labelled in the data nor bought (an unlabelled pool).
UNLABELLED = -1


def commit(learner, X: np.ndarray, t: int, horizon: int | None, cost: float) -> QueryInfo:
    """The leader's move on features X: scores, prediction, widths, latency (no gold involved)."""
    scores = learner.score_many(X)
    pred = _math.argmax_lowest(scores)
    widths, nsq = learner.widths_many(X, pred)
    gaps = scores[pred] - scores
    lat = widths - gaps
    lat[pred] = -np.inf
    masked = np.where(np.arange(len(scores)) == pred, -np.inf, scores)
    runner = int(np.argmax(masked))
    return QueryInfo(
        t=t,
        horizon=horizon,
        features=X,
        scores=scores,
        prediction=pred,
        runner_up=runner,
        widths=widths,
        latency=float(np.max(lat)),
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
        if p.shape != (K,) or not np.all(np.isfinite(p)):
            raise DataError(
                f"round {t}: 'expected_rewards' must be {K} finite numbers; got shape {p.shape}."
            )
    return X, float(cost)


def play(
    stream: Iterable[Round],
    learner,
    gate,
    budget: Budget,
    *,
    follower=None,
    horizon: int | None = None,
) -> Iterator[Record]:
    """Play the budgeted Stackelberg game over ``stream``, yielding one :class:`Record` per round.

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
    follower = follower or BestResponseFollower()
    if horizon is None and hasattr(stream, "__len__"):
        horizon = len(stream)  # type: ignore[arg-type]
    if hasattr(stream, "bind"):
        stream.bind(learner)  # type: ignore[union-attr]
    window = int(getattr(gate, "window", 1) or 1)
    pending: list[tuple[Round, np.ndarray, QueryInfo]] = []
    for t, rnd in enumerate(stream, start=1):
        X, cost = check_round(rnd, t)
        try:
            info = commit(learner, X, t, horizon, cost)
        except DataError as exc:
            raise DataError(f"round {t}: {exc}") from exc
        if window == 1:
            yield resolve(rnd, X, info, bool(gate.ask(info, budget)), learner, follower, budget)
        else:
            pending.append((rnd, X, info))
            if len(pending) == window:
                yield from _close_window(pending, learner, gate, follower, budget)
                pending = []
    if pending:
        yield from _close_window(pending, learner, gate, follower, budget)


def _close_window(pending, learner, gate, follower, budget) -> Iterator[Record]:
    chosen = set(gate.select_many([info for _, _, info in pending], budget))
    for i, (rnd, X, info) in enumerate(pending):
        yield resolve(rnd, X, info, i in chosen, learner, follower, budget)


def resolve(rnd: Round, X: np.ndarray, info: QueryInfo, queried: bool, learner, follower, budget: Budget,
            price: float | None = None) -> Record:
    """Read the gold (after the decision), score the round, pay and learn if queried.

    ``price`` is what the label cost when it differs from the round's nominal
    cost (an annotator's own rate, in a session). A round without gold (an
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
        regret = float(np.max(p) - p[info.prediction])
    else:
        regret = math.nan
    if queried:
        budget.spend(price)  # raises before spending if a gate overreached
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
