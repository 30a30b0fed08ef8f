"""Regret from records: the LP comparator against brute force, splits, slopes."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from _streams import random_stream

from budgetsft.budget import Budget
from budgetsft.exceptions import DataError
from budgetsft.game import play
from budgetsft.gates import LLFGate
from budgetsft.learners import RidgeLearner
from budgetsft.regret import comparator_loss, cumulative, hinge_losses, loglog_slope, summarize, to_frame


def _lines(rounds, S):
    """Every kink of the loss, as hyperplanes (normal, offset): θᵀz = 1 per wrong candidate,
    θᵀ(z_a - z_b) = 0 where two wrong candidates of a round tie, and the box edges θ_j = ±S."""
    out = []
    for r in rounds:
        zs = [r.features[r.gold] - r.features[a] for a in range(r.features.shape[0]) if a != r.gold]
        out += [(z, 1.0) for z in zs if np.linalg.norm(z) > 1e-12]
        out += [(za - zb, 0.0) for za, zb in itertools.combinations(zs, 2) if np.linalg.norm(za - zb) > 1e-12]
    d = rounds[0].features.shape[1]
    for j in range(d):
        e = np.zeros(d)
        e[j] = 1.0
        out += [(e, S), (e, -S)]
    return out


def brute_force(rounds, S):
    """Exact minimum of a convex piecewise-linear function on a box: try every arrangement vertex."""
    d = rounds[0].features.shape[1]
    best = np.inf
    for combo in itertools.combinations(_lines(rounds, S), d):
        A = np.array([c[0] for c in combo])
        if abs(np.linalg.det(A)) < 1e-10:
            continue
        theta = np.linalg.solve(A, np.array([c[1] for c in combo]))
        if np.all(np.abs(theta) <= S + 1e-9):
            best = min(best, hinge_losses(np.clip(theta, -S, S), rounds).sum())
    return best


@pytest.mark.parametrize("d", [1, 2])
@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("S", [0.3, 2.0])
def test_lp_comparator_equals_brute_force(d, seed, S):
    rounds = random_stream(7, d, (2, 4), seed)
    loss, theta, per_round = comparator_loss(rounds, S=S)
    assert np.all(np.abs(theta) <= S)
    assert loss == pytest.approx(brute_force(rounds, S), abs=1e-6)
    assert per_round.sum() == pytest.approx(loss)


def test_lp_comparator_beats_random_thetas():
    rounds = random_stream(50, 4, 4, 3)
    loss, _, _ = comparator_loss(rounds, S=1.0)
    rng = np.random.default_rng(0)
    for _ in range(200):
        theta = rng.uniform(-1, 1, 4)
        assert hinge_losses(theta, rounds).sum() >= loss - 1e-7


def test_summary_splits_add_up():
    rounds = random_stream(200, 5, 4, 2)
    recs = list(play(rounds, RidgeLearner(), LLFGate(), Budget(40.0)))
    s = summarize(recs, rounds, S=3.0)
    assert s["labels_bought"] == 40 == sum(r.queried for r in recs)
    for key in ("hinge_loss", "mistakes", "pseudo_regret"):
        assert s[f"{key}_queried"] + s[f"{key}_unqueried"] == pytest.approx(s[key])
    assert s["regret_queried"] + s["regret_unqueried"] == pytest.approx(s["stackelberg_regret"])
    assert s["stackelberg_regret"] == pytest.approx(s["hinge_loss"] - s["comparator_loss"])
    assert s["mistakes"] == sum(r.mistake for r in recs)


def test_summary_needs_matching_rounds():
    rounds = random_stream(5, 2, 2, 0)
    recs = list(play(rounds, RidgeLearner(), LLFGate(), Budget(1.0)))
    with pytest.raises(DataError, match="one round per record"):
        summarize(recs, rounds[:4])


def test_loglog_slope_recovers_exponents():
    T = np.array([1e3, 2e3, 4e3, 8e3, 16e3])
    assert loglog_slope(T, 3 * T**0.5) == pytest.approx(0.5)
    assert loglog_slope(T, T) == pytest.approx(1.0)
    with pytest.raises(DataError):
        loglog_slope([1.0], [1.0])


def test_cumulative_curves():
    rounds = random_stream(30, 3, 3, 1)
    frame = to_frame(list(play(rounds, RidgeLearner(), LLFGate(), Budget(5.0))))
    cum = cumulative(frame)
    assert cum["labels"].iloc[-1] == 5
    assert cum["regret"].iloc[-1] == pytest.approx(frame["regret"].sum())
    assert np.all(np.diff(cum["mistakes"]) >= 0)
