"""Statistical claims over many rounds and several seeds, with margins (STYLE habit 9)."""

from __future__ import annotations

import numpy as np
import pytest

from budgetsft.budget import Budget
from budgetsft.envs import LinearSoftmaxEnv
from budgetsft.game import play
from budgetsft.gates import FirstGate, FullGate, LLFGate, RandomGate
from budgetsft.learners import RidgeLearner
from budgetsft.regret import loglog_slope

pytestmark = pytest.mark.slow


def pseudo_regret(gate_factory, beta, seed, T=5000):
    env = LinearSoftmaxEnv(d=20, K=5, rounds=T, temperature=0.05, seed=seed)
    recs = list(play(env, RidgeLearner(), gate_factory(seed), Budget.from_beta(beta, T)))
    return np.cumsum([r.regret for r in recs]), sum(r.queried for r in recs)


def test_full_feedback_regret_grows_sublinearly():
    checkpoints = np.array([500, 1000, 2000, 4000, 8000])
    curves = [pseudo_regret(lambda s: FullGate(), 1.0, seed, T=8000)[0] for seed in range(4)]
    mean = np.mean([c[checkpoints - 1] for c in curves], axis=0)
    slope = loglog_slope(checkpoints, mean)
    assert slope <= 0.65, f"full-feedback regret slope vs T is {slope:.3f}"
    for c in curves:  # each seed on its own, too
        assert loglog_slope(checkpoints, c[checkpoints - 1]) <= 0.8


def test_llf_beats_random_and_first_on_the_spec_setting():
    """SPEC §4: d = 20, K = 5, T = 5000, low-noise softmax gold, β = 0.1, 5 seeds."""
    seeds = range(5)
    res = {}
    for name, factory in {
        "llf": lambda s: LLFGate(),
        "random": lambda s: RandomGate(seed=1000 + s),
        "first": lambda s: FirstGate(),
    }.items():
        runs = [pseudo_regret(factory, 0.1, s) for s in seeds]
        res[name] = np.mean([r[0][-1] for r in runs])
        assert all(r[1] <= 500 for r in runs)
    assert res["llf"] < 0.8 * res["first"], res
    assert res["llf"] < 0.5 * res["random"], res
