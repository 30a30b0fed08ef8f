"""Shared contract checks over every gate (STYLE habit 8): budgets and label blindness."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from _streams import random_stream
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from budgetsft.base import Round
from budgetsft.budget import Budget
from budgetsft.exceptions import BudgetExhaustedError, ConfigError
from budgetsft.game import play
from budgetsft.gates import (
    BBQGate,
    CGZGate,
    FirstGate,
    FullGate,
    LLFGate,
    MarginGate,
    RandomGate,
    select_pool,
)
from budgetsft.learners import AROWLearner, LogisticLearner, OGDLearner, RidgeLearner

GATE_FACTORIES = {
    "llf": lambda: LLFGate(),
    "llf-window": lambda: LLFGate(window=7),
    "llf-fixed": lambda: LLFGate(threshold="fixed"),
    "llf-paced": lambda: LLFGate(threshold="fixed", pacing=True),
    "llf-window-paced": lambda: LLFGate(threshold="fixed", window=5, pacing=True, tau=-0.5),
    "llf-late": lambda: LLFGate(require_late=True, memory=20),
    "llf-window-late": lambda: LLFGate(window=6, require_late=True),
    "full": FullGate,
    "random": lambda: RandomGate(seed=3),
    "first": FirstGate,
    "margin": MarginGate,
    "bbq": lambda: BBQGate(kappa=0.3),
    "cgz": lambda: CGZGate(b=2.0, seed=5),
}
LEARNERS = {"ridge": lambda: RidgeLearner(radius=1.0), "logistic": LogisticLearner, "ogd": OGDLearner,
            "arow": AROWLearner, "ridge-auto": lambda: RidgeLearner(radius="auto")}


class SpyBudget(Budget):
    """A real budget that also checks the exact sum of prices after every purchase."""

    def spend(self, cost: float = 1.0, *, settle: bool = False) -> None:
        super().spend(cost, settle=settle)
        assert self._spent <= self._total


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    gate_name=st.sampled_from(sorted(GATE_FACTORIES)),
    learner_name=st.sampled_from(sorted(LEARNERS)),
    n=st.integers(1, 80),
    d=st.integers(1, 6),
    K=st.tuples(st.integers(2, 3), st.integers(3, 6)),
    seed=st.integers(0, 10_000),
    unit=st.sampled_from(["labels", "cost"]),
    total=st.one_of(st.integers(0, 30).map(float), st.floats(0.0, 20.0, allow_nan=False)),
)
def test_every_gate_respects_every_budget(gate_name, learner_name, n, d, K, seed, unit, total):
    if unit == "labels":
        total = float(math.floor(total))
    stream = random_stream(n, d, K, seed, costs=(unit == "cost"))
    budget = SpyBudget(total, unit)
    records = list(play(stream, LEARNERS[learner_name](), GATE_FACTORIES[gate_name](), budget))
    assert len(records) == n
    bought = [r for r in records if r.queried]
    if unit == "labels":
        assert len(bought) <= total
    else:
        exact = sum((Fraction(r.cost) for r in bought), Fraction(0))
        assert exact <= Fraction(total)
        assert math.fsum(r.cost for r in bought) <= total
    assert budget.labels_bought == len(bought)
    assert all(r.budget_left >= 0 for r in records)


@settings(max_examples=30, deadline=None)
@given(
    gate_name=st.sampled_from(sorted(GATE_FACTORIES)),
    n=st.integers(2, 40),
    flip=st.integers(0, 39),
    seed=st.integers(0, 1000),
    beta=st.floats(0.05, 1.0),
)
def test_no_gate_reads_the_gold_before_deciding(gate_name, n, flip, seed, beta):
    """Changing round t's gold changes no query decision up to and including round t."""
    flip = flip % n
    stream = random_stream(n, 4, 4, seed)
    other = list(stream)
    r = other[flip]
    other[flip] = Round(r.features, (r.gold + 1) % 4, r.expected_rewards, r.cost, r.id)
    a = list(play(stream, RidgeLearner(), GATE_FACTORIES[gate_name](), Budget.from_beta(beta, n)))
    b = list(play(other, RidgeLearner(), GATE_FACTORIES[gate_name](), Budget.from_beta(beta, n)))
    window = getattr(GATE_FACTORIES[gate_name](), "window", 1)
    # in window mode, decisions of the whole window containing `flip` precede its gold
    last = (flip // window + 1) * window if window > 1 else flip + 1
    for x, y in zip(a[:last], b[:last], strict=True):
        assert x.queried == y.queried
        assert x.prediction == y.prediction


def test_gate_decisions_never_see_gold_fields():
    """QueryInfo has no gold attribute by construction."""
    from budgetsft.base import QueryInfo

    assert not any("gold" in f or "answer" in f for f in QueryInfo.__dataclass_fields__)


def test_budget_raises_before_spending_when_a_gate_overreaches():
    class Greedy:
        def ask(self, info, budget):
            return True

    stream = random_stream(5, 3, 3, 0)
    budget = Budget(2.0)
    it = play(stream, RidgeLearner(), Greedy(), budget)
    next(it), next(it)
    with pytest.raises(BudgetExhaustedError):
        next(it)
    assert budget.labels_bought == 2 and budget.remaining == 0.0


def test_llf_window_queries_the_largest_latencies_first():
    stream = random_stream(40, 5, 4, 11)
    recs = list(play(stream, RidgeLearner(radius=2.0), LLFGate(threshold="fixed", window=40), Budget(5.0)))
    lat = np.array([r.latency for r in recs])
    q = np.array([r.queried for r in recs])
    assert q.sum() == 5
    # one window, learner frozen: the 5 queried rounds are the 5 largest latencies
    assert set(np.flatnonzero(q)) == set(np.argsort(-lat, kind="stable")[:5])


def test_llf_stream_skips_certain_rounds():
    stream = random_stream(200, 3, 3, 1)
    recs = list(play(stream, RidgeLearner(radius=0.05), LLFGate(threshold="fixed"), Budget(200.0)))
    for r in recs:
        assert r.queried == (r.latency > 0)


def test_llf_pacing_keeps_spending_under_the_front_loaded_schedule():
    T, B = 400, 40
    stream = random_stream(T, 4, 4, 2)
    gate = LLFGate(threshold="fixed", pacing=True, pacing_power=0.5)
    recs = list(play(stream, RidgeLearner(radius=5.0), gate, Budget(float(B))))
    spent = np.cumsum([r.queried for r in recs])
    t = np.arange(1, T + 1)
    assert np.all(spent <= B * np.sqrt(t / T) + 1e-9)
    assert spent[-1] >= 0.9 * B  # still spends (nearly) all of it by the horizon
    unpaced = list(play(random_stream(T, 4, 4, 2), RidgeLearner(radius=5.0), LLFGate(threshold="fixed"),
                        Budget(float(B))))
    # without pacing a huge radius makes every round late: it degenerates into `first`
    assert [r.queried for r in unpaced][:B] == [True] * B


@pytest.mark.parametrize("bad", [dict(tau=float("nan")), dict(window=0), dict(pacing_power=0.0), dict(pacing="yes"),
                                 dict(threshold="quantile"), dict(memory=0), dict(require_late=1),
                                 dict(horizon=0)])
def test_llf_rejects_bad_parameters(bad):
    info_stream = random_stream(2, 2, 2, 0)
    with pytest.raises(ConfigError, match="LLFGate"):
        list(play(info_stream, RidgeLearner(), LLFGate(**bad), Budget(1.0)))


def test_random_gate_needs_a_horizon():
    stream = iter(random_stream(3, 2, 2, 0))  # an iterator has no len: no horizon
    with pytest.raises(ConfigError, match="horizon"):
        list(play(stream, RidgeLearner(), RandomGate(), Budget(1.0)))


@pytest.mark.parametrize("unit", ["labels", "cost"])
@pytest.mark.parametrize("batch_size", [1, 4])
def test_pool_mode_spends_exactly_the_budget_and_never_twice(unit, batch_size):
    pool_rounds = random_stream(60, 5, 4, 9, costs=(unit == "cost"))
    pool = [r.features for r in pool_rounds]
    costs = [r.cost for r in pool_rounds]
    budget = Budget(10.0, unit)
    asked: list[int] = []

    def label(i):
        asked.append(i)
        return pool_rounds[i].gold

    bought = select_pool(RidgeLearner(), pool, budget, label, batch_size=batch_size, costs=costs)
    assert bought == asked
    assert len(set(bought)) == len(bought)
    if unit == "labels":
        assert len(bought) == 10
    else:
        assert math.fsum(costs[i] for i in bought) <= 10.0
        assert budget.can_afford(min(costs[i] for i in range(60) if i not in bought)) is False or len(bought) == 60


def test_pool_mode_batch_avoids_near_duplicates():
    """Conditioning P on each pick's (ŷ, runner-up) pair spreads a batch over distinct directions."""
    rng = np.random.default_rng(0)
    base = rng.standard_normal((2, 6))  # K = 2: the (ŷ, runner-up) pair is the only pair
    dupes = [2.0 * base + 1e-6 * rng.standard_normal((2, 6)) for _ in range(5)]
    others = [rng.standard_normal((2, 6)) * 0.9 for _ in range(5)]
    pool = dupes + others
    bought = select_pool(RidgeLearner(radius=1.0), pool, Budget(5.0), lambda i: 0, batch_size=5)
    assert sum(i < 5 for i in bought) == 1
    # the duplicates are the five widest pairs: without conditioning they would fill the batch
    nsq = [float((p[0] - p[1]) @ (p[0] - p[1])) for p in pool]
    assert min(nsq[:5]) > max(nsq[5:])
