"""Shared types and one small Protocol per role (SPEC §2, STYLE.md habit 1).

Roles
-----
Learner   the leader's scoring policy: scores, confidence widths, updates.
Gate      the leader's label-querying strategy: buy this round's label or not.
Follower  the environment's answer: the alternative the learner must beat.
Stream    any iterable of :class:`Round` (synthetic environments, data sets).
Featurizer  text -> candidate features (``budgetsft.features``, needs torch).

Records
-------
:class:`Round` is what the environment reveals (features; the gold index is
only read by the game after the gate has decided). :class:`QueryInfo` is what a
gate may look at: it holds no gold label by construction. :class:`Record` is
the flat, frozen result of one round; a DataFrame of records is the analysis
API (``budgetsft.regret``).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:
    from budgetsft.budget import Budget

__all__ = [
    "Round",
    "QueryInfo",
    "Record",
    "Learner",
    "Gate",
    "Follower",
    "RECORD_FIELDS",
]


@dataclass(frozen=True, eq=False)
class Round:
    """One context of the stream.

    Parameters
    ----------
    features : ndarray of shape (K, d)
        φ(x, a) for every candidate a (K >= 2; K may vary between rounds).
    gold : int or None
        Index of the gold candidate y*. Read by the game only after the gate
        has decided; gates never see it. None for an unlabelled example (a
        pool a person labels): only a session with a person as its oracle
        plays such rounds, and learns the label only if it buys it.
    expected_rewards : ndarray of shape (K,), optional
        p(a), the expected reward of each candidate when the environment knows
        it (simulations); enables pseudo-regret.
    cost : float, default=1.0
        Price of this round's label (used by budgets in cost units).
    id : str, optional
        Identifier of the underlying example.
    """

    features: np.ndarray
    gold: int | None
    expected_rewards: np.ndarray | None = None
    cost: float = 1.0
    id: str | None = None

    @property
    def n_candidates(self) -> int:
        return int(self.features.shape[0])


@dataclass(frozen=True, eq=False)
class QueryInfo:
    """Everything a gate may use to decide q_t (never the gold label).

    Attributes
    ----------
    t : int
        Round index, starting at 1.
    horizon : int or None
        T when known.
    features : ndarray of shape (K, d)
    scores : ndarray of shape (K,)
        s_t(a) = <θ_t, φ(x_t, a)>.
    prediction : int
        ŷ_t = argmax s_t (lowest index on ties).
    runner_up : int
        argmax_{a != ŷ_t} s_t(a).
    widths : ndarray of shape (K,)
        w(ŷ_t, a) = ρ_t ||φ(ŷ_t) - φ(a)||_P, zero at a = ŷ_t.
    latency : float
        max_{a != ŷ_t} (w(ŷ_t, a) - (s_t(ŷ_t) - s_t(a))) (SPEC §4).
    gap : float
        s_t(ŷ_t) - s_t(runner_up) >= 0.
    uncertainty : float
        ||φ(ŷ_t) - φ(runner_up)||²_P, the squared width without the radius.
    cost : float
        Price of this round's label.
    """

    t: int
    horizon: int | None
    features: np.ndarray
    scores: np.ndarray
    prediction: int
    runner_up: int
    widths: np.ndarray
    latency: float
    gap: float
    uncertainty: float
    cost: float = 1.0


@dataclass(frozen=True, slots=True)
class Record:
    """The flat result of one round (SPEC §5).

    ``regret`` is the pseudo-regret increment max_a p(a) - p(ŷ) (NaN when the
    environment does not know p). ``hinge_loss`` is the Stackelberg hinge
    max_{a != y*} (1 - <θ_t, φ(y*) - φ(a)>)_+; ``margin`` is <θ_t, z_t> for the
    follower's alternative.
    """

    round: int
    prediction: int
    gold: int
    alternative: int
    queried: bool
    cost: float
    budget_left: float
    latency: float
    margin: float
    hinge_loss: float
    mistake: bool
    regret: float
    n_candidates: int
    id: str | None = None


RECORD_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(Record))


@runtime_checkable
class Learner(Protocol):
    """The leader's linear scoring policy over candidate features."""

    def score_many(self, X: np.ndarray) -> np.ndarray:
        """Scores of every candidate, ndarray of shape (K,)."""

    def widths_many(self, X: np.ndarray, ref: int) -> tuple[np.ndarray, np.ndarray]:
        """Confidence widths w(ref, a) and squared P-norms ||φ(ref) - φ(a)||²_P, each (K,)."""

    def learn_one(self, X: np.ndarray, gold: int, alternative: int) -> None:
        """Update on a bought label: gold must beat ``alternative`` (or every wrong one)."""


@runtime_checkable
class Gate(Protocol):
    """The leader's label-querying strategy. It never sees the gold label."""

    def ask(self, info: QueryInfo, budget: Budget) -> bool:
        """Decide whether to buy this round's label (must be affordable)."""


@runtime_checkable
class Follower(Protocol):
    """The environment's second move: which wrong candidate to oppose."""

    def respond(self, scores: np.ndarray, gold: int) -> int:
        """Index of the alternative ã != gold."""
