"""LogisticLearner(loss="smooth-hinge"): the opt-in hinge-consistent Newton step (issue 21 item 5)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from budgetsft.config import DEFAULT_CONFIG, build, merge
from budgetsft.exceptions import ConfigError
from budgetsft.learners import LogisticLearner
from budgetsft.learners.logistic import sigmoid


def _separable_rounds(n: int, seed: int, d: int = 6, K: int = 4):
    """Rounds whose gold is the argmax of ⟨θ*, x⟩: a separable ranking problem."""
    rng = np.random.default_rng(seed)
    theta = rng.standard_normal(d)
    out = []
    for _ in range(n):
        X = rng.standard_normal((K, d))
        s = X @ theta
        gold = int(np.argmax(s))
        out.append((X, gold, s))
    return out


def _play(learner, rounds):
    """Full feedback, best-response alternative; returns the number of online mistakes per half."""
    mistakes = []
    for X, gold, _ in rounds:
        scores = learner.score_many(X)
        mistakes.append(int(np.argmax(scores)) != gold)
        masked = scores.copy()
        masked[gold] = -np.inf
        learner.learn_one(X, gold, int(np.argmax(masked)))
    return mistakes


def test_smooth_hinge_learns_a_separable_problem():
    rounds = _separable_rounds(1200, seed=0)
    learner = LogisticLearner(loss="smooth-hinge")
    mistakes = _play(learner, rounds)
    assert sum(mistakes[:200]) > sum(mistakes[-200:])
    acc = np.mean([int(np.argmax(learner.score_many(X))) == gold for X, gold, _ in rounds[-500:]])
    assert acc > 0.95
    assert learner.current_smoothing() == pytest.approx((1 + learner.n_updates_) ** -0.25)  # decayed with the updates
    assert learner.current_smoothing() < 0.2
    assert np.all(np.isfinite(learner.coef_)) and np.all(np.isfinite(learner.P_))


def test_smooth_hinge_held_out_accuracy():
    rng = np.random.default_rng(3)
    d, K = 6, 4
    theta = rng.standard_normal(d)

    def draw(n):
        out = []
        for _ in range(n):
            X = rng.standard_normal((K, d))
            out.append((X, int(np.argmax(X @ theta)), None))
        return out

    learner = LogisticLearner(loss="smooth-hinge")
    _play(learner, draw(1500))
    acc = np.mean([int(np.argmax(learner.score_many(X))) == gold for X, gold, _ in draw(500)])
    assert acc > 0.9


def test_smooth_hinge_update_matches_its_formula():
    """One pair: g = σ((1 - m)/s_n), w = max(g(1 - g), w_min·g), θ += η g P' z, P' = (V + w z zᵀ)⁻¹."""
    rng = np.random.default_rng(5)
    d, K = 5, 3
    learner = LogisticLearner(loss="smooth-hinge", update="hardest", smoothing=2.0, smoothing_decay=0.5, lam=0.5)
    V = 0.5 * np.eye(d)
    theta = np.zeros(d)
    for n in range(30):
        X = rng.standard_normal((K, d))
        z = X[0] - X[1]
        m = float(z @ theta)
        s = 2.0 * (1.0 + n) ** -0.5
        assert learner.current_smoothing() == pytest.approx(s)
        g = 1.0 / (1.0 + math.exp(-(1.0 - m) / s))
        w = max(g * (1 - g), learner.w_min * g)
        V = V + w * np.outer(z, z)
        theta = theta + learner.eta * g * np.linalg.solve(V, z)
        learner.learn_one(X, 0, 1)
        np.testing.assert_allclose(learner.coef_, theta, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(learner.P_, np.linalg.inv(V), rtol=1e-8, atol=1e-10)


def test_well_ranked_pairs_add_no_curvature():
    """A pair far past the unit margin (g → 0) leaves P as it was, unlike the first build's constant floor."""
    X = np.array([[30.0, 0.0], [0.0, 0.0]])
    sh, lg = LogisticLearner(loss="smooth-hinge"), LogisticLearner(floor="constant")
    for learner in (sh, lg):
        learner.score_many(X)
        learner.coef_ = np.array([1.0, 0.0])  # margin 30
        learner.learn_one(X, 0, 1)
    assert sh.P_[0, 0] == pytest.approx(1.0, abs=1e-9)
    assert lg.P_[0, 0] < 0.1


def test_default_is_the_logistic_loss_unchanged():
    rng = np.random.default_rng(7)
    a, b = LogisticLearner(), LogisticLearner(loss="logistic", smoothing=0.3, smoothing_decay=1.0)
    assert LogisticLearner().loss == "logistic"
    for _ in range(50):
        X = rng.standard_normal((5, 4))
        gold, alt = rng.choice(5, 2, replace=False)
        a.learn_one(X, int(gold), int(alt))
        b.learn_one(X, int(gold), int(alt))
    assert np.array_equal(a.coef_, b.coef_) and np.array_equal(a.P_, b.P_)


def test_same_seed_same_result():
    def fit():
        learner = LogisticLearner(loss="smooth-hinge", smoothing=0.5)
        _play(learner, _separable_rounds(300, seed=11))
        return learner.coef_.copy(), learner.P_.copy()

    (c1, p1), (c2, p2) = fit(), fit()
    assert np.array_equal(c1, c2) and np.array_equal(p1, p2)


@pytest.mark.parametrize(
    ("param", "value"),
    [("loss", "hinge"), ("loss", None), ("smoothing", 0.0), ("smoothing", -1.0), ("smoothing", math.inf),
     ("smoothing", "1"), ("smoothing_decay", -0.1), ("smoothing_decay", 1.5), ("smoothing_decay", math.nan)],
)
def test_invalid_parameters_raise_config_error_naming_them(param, value):
    learner = LogisticLearner(**{param: value})
    with pytest.raises(ConfigError, match=f"'{param}'"):
        learner.learn_one(np.eye(3), 0, 1)


def test_config_accepts_the_option():
    cfg = merge(DEFAULT_CONFIG, {"learner": {"name": "logistic", "loss": "smooth-hinge", "smoothing": 0.5}})
    learner = build(cfg)["learner"]
    assert isinstance(learner, LogisticLearner) and learner.loss == "smooth-hinge" and learner.smoothing == 0.5
    with pytest.raises(ConfigError, match="'loss'"):
        build(merge(DEFAULT_CONFIG, {"learner": {"name": "logistic", "loss": "hinge"}}))["learner"]._validate()


def test_sigmoid_of_extreme_rescaled_margins_is_finite():
    assert sigmoid(1e6) == 1.0 and sigmoid(-1e6) == 0.0
