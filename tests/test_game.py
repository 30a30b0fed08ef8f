"""The round loop: determinism, record contents, and clear errors on bad input."""

from __future__ import annotations

import numpy as np
import pytest
from _streams import random_stream

from budgetsft.base import RECORD_FIELDS, Round
from budgetsft.budget import Budget
from budgetsft.config import GATES, LEARNERS
from budgetsft.envs import AdversarialContextEnv, DriftingEnv, LinearSoftmaxEnv
from budgetsft.exceptions import ConfigError, DataError
from budgetsft.experiment import run
from budgetsft.followers import RandomFollower
from budgetsft.game import play
from budgetsft.gates import LLFGate
from budgetsft.learners import RidgeLearner
from budgetsft.regret import to_frame


@pytest.mark.parametrize("gate", sorted(GATES))
@pytest.mark.parametrize("learner", sorted(LEARNERS))
def test_same_seed_same_records_bit_for_bit(gate, learner):
    cfg = {"env": {"rounds": 300, "d": 6}, "gate": {"name": gate, "beta": 0.2}, "learner": {"name": learner},
           "seed": 4, "test_rounds": 50}
    a, b = run(cfg), run(cfg)
    fa, fb = to_frame(a.records), to_frame(b.records)
    assert fa.equals(fb)
    assert a.summary["stackelberg_regret"] == b.summary["stackelberg_regret"]
    c = run({**cfg, "seed": 5})
    assert not to_frame(c.records).equals(fa)


@pytest.mark.parametrize("env_name", ["synthetic", "drifting", "adversarial"])
def test_every_env_is_deterministic_and_gives_exact_rewards(env_name):
    cfg = {"env": {"name": env_name, "rounds": 120, "d": 5, "K": 3}, "gate": {"name": "llf", "beta": 0.3}, "seed": 1}
    a, b = run(cfg), run(cfg)
    assert to_frame(a.records).equals(to_frame(b.records))
    for r in a.rounds:
        assert r.expected_rewards.sum() == pytest.approx(1.0)
    assert all(np.isfinite(x.regret) and x.regret >= 0 for x in a.records)


def test_record_fields_and_consistency(small_stream):
    recs = list(play(small_stream, RidgeLearner(), LLFGate(), Budget(30.0)))
    assert len(recs) == len(small_stream)
    assert tuple(to_frame(recs).columns) == RECORD_FIELDS
    for t, (r, rnd) in enumerate(zip(recs, small_stream, strict=True), start=1):
        assert r.round == t and r.gold == rnd.gold and r.id == rnd.id
        assert r.alternative != r.gold
        assert r.mistake == (r.prediction != r.gold)
        assert r.hinge_loss >= max(0.0, 1 - r.margin) - 1e-12  # best response: equality
        assert r.hinge_loss == pytest.approx(max(0.0, 1 - r.margin))
        p = rnd.expected_rewards
        assert r.regret == pytest.approx(p.max() - p[r.prediction])
    assert sum(r.queried for r in recs) == 30
    assert recs[-1].budget_left == 0.0


def test_learner_does_not_mutate_inputs(small_stream):
    copies = [r.features.copy() for r in small_stream]
    list(play(small_stream, RidgeLearner(update="all"), LLFGate(), Budget(100.0)))
    for X, r in zip(copies, small_stream, strict=True):
        np.testing.assert_array_equal(X, r.features)


def test_random_follower_changes_alternatives_but_not_hinge(small_stream):
    recs = list(play(small_stream, RidgeLearner(), LLFGate(), Budget(0.0), follower=RandomFollower(seed=1)))
    best = list(play(small_stream, RidgeLearner(), LLFGate(), Budget(0.0)))
    assert [r.hinge_loss for r in recs] == [r.hinge_loss for r in best]
    assert any(a.alternative != b.alternative for a, b in zip(recs, best, strict=True))


def test_drifting_env_rotates_theta():
    env = DriftingEnv(d=4, rounds=100, drift=np.pi / 2, seed=0)
    a, b = env.theta_at(1), env.theta_at(100)
    assert a @ b == pytest.approx(0.0, abs=1e-12)
    assert np.linalg.norm(b) == pytest.approx(1.0)


def test_adversarial_env_picks_uncertain_contexts():
    """Against a learner that has learnt one direction, adversarial contexts have larger latency."""
    lat = {}
    for name, env in (("plain", LinearSoftmaxEnv(d=6, K=3, rounds=400, seed=2)),
                      ("adversarial", AdversarialContextEnv(d=6, K=3, rounds=400, seed=2, n_proposals=8))):
        recs = list(play(env, RidgeLearner(), LLFGate(), Budget(40.0)))
        lat[name] = np.mean([r.latency for r in recs[200:]])
    assert lat["adversarial"] > lat["plain"] + 0.1


# ---------------------------------------------------------------- bad input
def _one(X, gold=0, cost=1.0, p=None):
    return [Round(features=X, gold=gold, cost=cost, expected_rewards=p)]


@pytest.mark.parametrize(
    "stream, message",
    [
        (_one(np.zeros((1, 3))), "K >= 2"),
        (_one(np.zeros(3)), "shape"),
        (_one(np.array([[0.0, np.nan], [1.0, 2.0]])), "finite"),
        (_one(np.array([[0.0, np.inf], [1.0, 2.0]])), "finite"),
        (_one(np.zeros((2, 2)), gold=2), "'gold'"),
        (_one(np.zeros((2, 2)), gold=True), "'gold'"),
        (_one(np.zeros((2, 2)), cost=-1.0), "'cost'"),
        (_one(np.zeros((2, 2)), cost=float("nan")), "'cost'"),
        (_one(np.zeros((2, 2)), p=np.ones(3)), "expected_rewards"),
    ],
)
def test_bad_rounds_are_refused_before_they_are_played(stream, message):
    budget = Budget(1.0)
    with pytest.raises(DataError, match=message) as info:
        list(play(stream, RidgeLearner(), LLFGate(), budget))
    assert "round 1" in str(info.value)
    assert budget.labels_bought == 0


def test_bad_round_midway_keeps_what_was_bought():
    stream = random_stream(5, 3, 3, 0) + _one(np.ones((2, 2)))
    budget = Budget(10.0)
    seen = []
    with pytest.raises(DataError, match="round 6"):
        for rec in play(stream, RidgeLearner(), LLFGate(), budget):
            seen.append(rec)
    assert len(seen) == 5 and budget.labels_bought == sum(r.queried for r in seen)


def test_feature_dimension_change_is_an_error():
    stream = random_stream(2, 3, 3, 0) + random_stream(1, 4, 3, 1)
    with pytest.raises(DataError, match="d = 3"):
        list(play(stream, RidgeLearner(), LLFGate(), Budget(3.0)))


@pytest.mark.parametrize(
    "cfg, message",
    [
        ({"gate": {"name": "llf", "beta": 1.5}},
         "The 'beta' parameter of Budget must be a float in \\(0, 1\\]. Got 1.5."),
        ({"gate": {"name": "llf", "beta": 0.0}}, "'beta'"),
        ({"gate": {"name": "nope", "beta": 0.1}}, "unknown gate 'nope'"),
        ({"learner": {"name": "svm"}}, "unknown learner 'svm'"),
        ({"learner": {"name": "ridge", "lam": -1}}, "The 'lam' parameter of RidgeLearner"),
        ({"learner": {"name": "ridge", "radius": "big"}}, "'radius'"),
        ({"learner": {"name": "ridge", "alpha": 1}}, "no parameter 'alpha'"),
        ({"env": {"name": "synthetic", "K": 1}}, "The 'K' parameter of LinearSoftmaxEnv must be an int >= 2. Got 1."),
        ({"env": {"name": "synthetic", "cost_low": -1.0}}, "'cost_low'"),
        ({"gate": {"name": "bbq", "beta": 0.1, "kappa": 2.0}}, "'kappa'"),
        ({"gate": {"name": "llf", "beta": 0.1, "window": 0}}, "'window'"),
        ({"follower": {"name": "oracle"}}, "unknown follower"),
        ({"gate": {"name": "margin", "beta": 0.1, "memory": 0}}, "The 'memory' parameter of MarginGate"),
        ({"gate": {"name": "cgz", "beta": 0.1, "b": -1.0}}, "The 'b' parameter of CGZGate"),
    ],
)
def test_bad_config_is_refused_before_any_round(cfg, message):
    with pytest.raises(ConfigError, match=message):
        run(cfg)


def test_cost_budget_counts_prices():
    cfg = {"env": {"rounds": 200, "d": 4, "cost_low": 0.5, "cost_high": 3.0},
           "gate": {"name": "first", "beta": 0.1, "unit": "cost"}, "seed": 0, "test_rounds": 0}
    res = run(cfg)
    total = 0.1 * sum(r.cost for r in res.rounds)
    assert res.summary["budget"] == pytest.approx(total)
    assert res.summary["spent"] <= total
    assert res.summary["spent"] > total - 3.0  # `first` fills it up to the last label that fits


def test_an_audit_share_buys_uniform_rounds_within_the_budget():
    """run() with ``audit``: the audit rounds are bought whatever the gate says, inside the budget, seeded."""
    from budgetsft.game import audit_rounds

    cfg = {"env": {"rounds": 600, "d": 5}, "gate": {"name": "llf", "beta": 0.1},
           "comparator": "none", "test_rounds": 0, "seed": 3, "audit": 0.4}
    res = run(cfg)
    queried = [r.round for r in res.records if r.queried]
    drawn = res.summary["audit_rounds"]
    assert len(queried) <= 60 and set(drawn) <= set(queried)
    assert 10 <= len(drawn) <= 40  # about 0.4 * 60 = 24
    assert all(audit_rounds(0.4, 60, 600, 3)(t) for t in drawn)  # drawn from (seed, t) alone
    assert run(cfg).summary["audit_rounds"] == drawn  # seeded: the same rounds
    plain = [r.round for r in run({**cfg, "audit": 0.0}).records if r.queried]
    assert "audit_rounds" not in run({**cfg, "audit": 0.0}).summary and plain != queried
    # `first` spends its budget on rounds 1..60: an audit round is one of them (none is bought after)
    first = run({**cfg, "gate": {"name": "first", "beta": 0.1}})
    assert [r.round for r in first.records if r.queried] == list(range(1, 61))
    assert set(first.summary["audit_rounds"]) <= set(range(1, 61))


@pytest.mark.parametrize("gate", ["first", "random", "margin", "full", "llf"])
def test_a_gate_that_reads_no_widths_decides_the_same_without_them(gate):
    cfg = {"env": {"rounds": 300, "d": 12}, "gate": {"name": gate, "beta": 0.2}, "learner": {"name": "logistic"},
           "seed": 3}
    kept, skipped = run(cfg), run(cfg, widths=False)
    reads = getattr(GATES[gate], "reads_widths", True)
    assert reads == (gate == "llf")
    assert [r.queried for r in skipped.records] == [r.queried for r in kept.records]
    assert [r.prediction for r in skipped.records] == [r.prediction for r in kept.records]
    np.testing.assert_array_equal(skipped.learner.coef_, kept.learner.coef_)  # the same updates, bit for bit
    assert sum(r.queried for r in kept.records) > 0
    latencies = np.array([r.latency for r in skipped.records])
    if reads:  # llf reads them: the flag is ignored
        assert np.isfinite(latencies).any() and [r.latency for r in kept.records] == list(latencies)
    else:
        assert np.isnan(latencies).all() and np.isfinite([r.latency for r in kept.records]).any()
