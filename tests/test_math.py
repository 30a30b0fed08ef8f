"""Math kernels against naive versions (STYLE habit 7)."""

from __future__ import annotations

import numpy as np
import pytest

from budgetsft import _math
from budgetsft.learners import AROWLearner, LogisticLearner, RidgeLearner


@pytest.mark.parametrize("d", [1, 3, 17])
@pytest.mark.parametrize("weight", [1.0, 0.2])
def test_sherman_morrison_matches_naive_inverse(d, weight):
    rng = np.random.default_rng(d)
    A = rng.standard_normal((d, d))
    V = A @ A.T + np.eye(d)
    P = np.linalg.inv(V)
    z = rng.standard_normal(d)
    P_new, inc = _math.sherman_morrison_update(P, z, weight)
    V_new = V + weight * np.outer(z, z)
    np.testing.assert_allclose(P_new, np.linalg.inv(V_new), rtol=1e-10, atol=1e-12)
    assert inc == pytest.approx(np.linalg.slogdet(V_new)[1] - np.linalg.slogdet(V)[1], rel=1e-10)
    P_in = P.copy()
    inc2 = _math.sherman_morrison_inplace(P_in, z, weight=weight)
    np.testing.assert_allclose(P_in, P_new, rtol=1e-12, atol=1e-14)
    assert inc2 == pytest.approx(inc)


def test_inplace_update_writes_into_the_same_buffer():
    P = np.eye(5)
    before = P.ctypes.data
    _math.sherman_morrison_inplace(P, np.ones(5))
    assert P.ctypes.data == before
    assert P[0, 1] != 0.0


@pytest.mark.parametrize("cls", [RidgeLearner, LogisticLearner, AROWLearner])
def test_learner_state_matches_naive_after_many_updates(cls):
    """P, log det and widths of the learner equal the naive λI + Σ w z zᵀ recomputed from scratch."""
    rng = np.random.default_rng(0)
    d, K, lam = 8, 4, 0.7
    learner = cls(lam=lam, radius=1.3, update="hardest")
    V = lam * np.eye(d)
    for _ in range(60):
        X = rng.standard_normal((K, d))
        gold, alt = rng.choice(K, 2, replace=False)
        z = X[gold] - X[alt]
        if cls is LogisticLearner:
            m = float(z @ learner.coef_) if hasattr(learner, "coef_") else 0.0
            p = 1 / (1 + np.exp(-m))
            w = max(p * (1 - p), learner.w_min * (1 - p))  # the scaled floor (floor="scaled", the default)
        elif cls is AROWLearner:  # weight 1/r, only on hinge violations
            m = float(z @ learner.coef_) if hasattr(learner, "coef_") else 0.0
            w = 1.0 / learner.r if m < 1.0 else 0.0
        else:
            w = 1.0
        learner.learn_one(X, int(gold), int(alt))
        V += w * np.outer(z, z)
    np.testing.assert_allclose(learner.P_, np.linalg.inv(V), rtol=1e-8, atol=1e-10)
    assert learner.logdet_ratio_ == pytest.approx(np.linalg.slogdet(V)[1] - d * np.log(lam), rel=1e-9)
    X = rng.standard_normal((K, d))
    widths, nsq = learner.widths_many(X, 1)
    naive = np.array([(X[1] - X[a]) @ np.linalg.solve(V, X[1] - X[a]) for a in range(K)])
    np.testing.assert_allclose(nsq, naive, rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(widths, 1.3 * np.sqrt(naive), rtol=1e-8, atol=1e-12)
    assert widths[1] == 0.0


def test_ridge_coefficients_equal_the_normal_equations():
    rng = np.random.default_rng(3)
    d, lam = 5, 2.0
    learner = RidgeLearner(lam=lam)
    Zs = []
    for _ in range(40):
        X = rng.standard_normal((3, d))
        learner.learn_one(X, 0, 2)
        Zs.append(X[0] - X[2])
    Z = np.array(Zs)
    theta = np.linalg.solve(lam * np.eye(d) + Z.T @ Z, Z.T @ np.ones(len(Z)))
    np.testing.assert_allclose(learner.coef_, theta, rtol=1e-9, atol=1e-12)


def test_update_all_uses_every_wrong_candidate():
    rng = np.random.default_rng(4)
    d, lam = 4, 1.0
    learner = RidgeLearner(lam=lam, update="all")
    X = rng.standard_normal((4, d))
    learner.learn_one(X, 2, 0)
    V = lam * np.eye(d) + sum(np.outer(X[2] - X[a], X[2] - X[a]) for a in (0, 1, 3))
    np.testing.assert_allclose(learner.P_, np.linalg.inv(V), rtol=1e-10)
    assert learner.n_updates_ == 3


def test_theory_radius_formula():
    rho = _math.confidence_radius(2.0, sigma=0.5, delta=0.1, lam=4.0, S=1.5)
    assert rho == pytest.approx(0.5 * np.sqrt(2.0 + 2 * np.log(10.0)) + 2.0 * 1.5)
    learner = RidgeLearner(radius="theory", lam=1.0, S=1.0, sigma=0.5, delta=0.1)
    X = np.eye(3)
    r0 = learner.widths_many(X, 0)[0]
    learner.learn_one(X, 0, 1)
    assert learner.current_radius() > _math.confidence_radius(0.0, sigma=0.5, delta=0.1, lam=1.0, S=1.0)
    assert np.all(np.isfinite(r0))


def test_best_alternative_breaks_ties_by_lowest_index():
    assert _math.best_alternative(np.array([1.0, 1.0, 1.0]), 0) == 1
    assert _math.best_alternative(np.array([3.0, 1.0, 3.0]), 0) == 2
    assert _math.argmax_lowest(np.array([0.0, 2.0, 2.0])) == 1
