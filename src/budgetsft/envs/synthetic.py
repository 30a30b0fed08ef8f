"""Linear-softmax synthetic streams (SPEC §4's sanity setting and two harder variants).

Every candidate's features are i.i.d. N(0, I_d); the gold is drawn from
p(a) = softmax(⟨θ*, φ(a)⟩ / temperature), so expected rewards (and thus
pseudo-regret max_a p(a) - p(ŷ)) are exact. A low temperature gives a
low-noise gold (nearly always the θ*-best candidate).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from budgetsft._math import softmax
from budgetsft._validation import check_float, check_int, check_seed
from budgetsft.base import Round
from budgetsft.exceptions import ConfigError

__all__ = ["LinearSoftmaxEnv", "DriftingEnv", "AdversarialContextEnv", "softmax"]


class LinearSoftmaxEnv:
    """A stationary stream of T rounds with softmax gold over linear utilities.

    Parameters
    ----------
    d : int, default=20
    K : int, default=5
        Candidates per round (>= 2).
    rounds : int, default=5000
        Horizon T.
    temperature : float, default=0.05
        Softmax temperature; smaller is less noisy.
    theta_norm : float, default=1.0
        ||θ*||.
    cost_low, cost_high : float, default=1.0
        Label prices are uniform on [cost_low, cost_high] (all 1 by default).
    seed : int, default=0

    Examples
    --------
    >>> env = LinearSoftmaxEnv(d=3, K=2, rounds=4, seed=0)
    >>> [r.features.shape for r in env][:2]
    [(2, 3), (2, 3)]
    """

    name = "synthetic"

    def __init__(
        self,
        d: int = 20,
        K: int = 5,
        rounds: int = 5000,
        temperature: float = 0.05,
        theta_norm: float = 1.0,
        cost_low: float = 1.0,
        cost_high: float = 1.0,
        seed: int = 0,
    ) -> None:
        self.d = d
        self.K = K
        self.rounds = rounds
        self.temperature = temperature
        self.theta_norm = theta_norm
        self.cost_low = cost_low
        self.cost_high = cost_high
        self.seed = seed

    def _validate(self) -> None:
        owner = type(self).__name__
        check_int(owner, "d", self.d, low=1)
        check_int(owner, "K", self.K, low=2)
        check_int(owner, "rounds", self.rounds, low=1)
        check_float(owner, "temperature", self.temperature, low=0.0, low_open=True)
        check_float(owner, "theta_norm", self.theta_norm, low=0.0)
        check_float(owner, "cost_low", self.cost_low, low=0.0)
        check_float(owner, "cost_high", self.cost_high, low=0.0)
        if self.cost_high < self.cost_low:
            raise ConfigError(
                f"The 'cost_high' parameter of {owner} must be >= cost_low = {self.cost_low}. Got {self.cost_high!r}."
            )
        check_seed(owner, self.seed)

    def __len__(self) -> int:
        return int(self.rounds)

    @property
    def theta_star_(self) -> np.ndarray:
        """θ* of the first round (drifting streams rotate it)."""
        self._validate()
        return self._theta_pair()[0]

    def _theta_pair(self) -> tuple[np.ndarray, np.ndarray]:
        key = (self.seed, self.d, self.theta_norm)
        cached = getattr(self, "_theta_cache", None)
        if cached is not None and cached[0] == key:
            return cached[1]
        rng = np.random.default_rng([self.seed, 0])
        a = rng.standard_normal(self.d)
        b = rng.standard_normal(self.d)
        a /= np.linalg.norm(a)
        b -= (b @ a) * a
        nb = np.linalg.norm(b)
        b = b / nb if nb > 0 else b
        pair = (self.theta_norm * a, self.theta_norm * b)
        self._theta_cache = (key, pair)
        return pair

    def theta_at(self, t: int) -> np.ndarray:
        """θ* in round t (1-based); constant here."""
        return self._theta_pair()[0]

    def _make_round(self, X: np.ndarray, t: int, u: float, cost: float, tag: str) -> Round:
        p = softmax(X @ self.theta_at(t) / self.temperature)
        gold = int(min(np.searchsorted(np.cumsum(p), u, side="right"), self.K - 1))
        return Round(features=X, gold=gold, expected_rewards=p, cost=cost, id=f"{tag}{t}")

    def _draws(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        X = rng.standard_normal((n, self.K, self.d))
        u = rng.random(n)
        if self.cost_high > self.cost_low:
            c = rng.uniform(self.cost_low, self.cost_high, n)
        else:
            c = np.full(n, float(self.cost_low))
        return X, u, c

    def __iter__(self) -> Iterator[Round]:
        self._validate()
        rng = np.random.default_rng([self.seed, 1])
        chunk = 1024
        t = 0
        while t < self.rounds:
            n = min(chunk, self.rounds - t)
            X, u, c = self._draws(rng, n)
            for i in range(n):
                t += 1
                yield self._make_round(X[i], t, float(u[i]), float(c[i]), "r")

    def test_rounds(self, n: int = 2000) -> list[Round]:
        """Held-out rounds from an independent stream, under θ* at the horizon."""
        self._validate()
        rng = np.random.default_rng([self.seed, 2])
        X, u, c = self._draws(rng, n)
        return [self._make_round(X[i], self.rounds, float(u[i]), float(c[i]), "test") for i in range(n)]


class DriftingEnv(LinearSoftmaxEnv):
    """θ* rotates in a fixed 2-plane by ``drift`` radians over the horizon.

    Parameters
    ----------
    drift : float, default=π/2
        Total rotation angle from round 1 to round T.
    **kwargs
        As :class:`LinearSoftmaxEnv`.
    """

    name = "drifting"

    def __init__(self, d: int = 20, K: int = 5, rounds: int = 5000, temperature: float = 0.05,
                 theta_norm: float = 1.0, cost_low: float = 1.0, cost_high: float = 1.0,
                 seed: int = 0, drift: float = float(np.pi / 2)) -> None:
        super().__init__(d, K, rounds, temperature, theta_norm, cost_low, cost_high, seed)
        self.drift = drift

    def _validate(self) -> None:
        super()._validate()
        check_float(type(self).__name__, "drift", self.drift)

    def theta_at(self, t: int) -> np.ndarray:
        a, b = self._theta_pair()
        angle = self.drift * (t - 1) / max(self.rounds - 1, 1)
        return np.cos(angle) * a + np.sin(angle) * b


class AdversarialContextEnv(LinearSoftmaxEnv):
    """Each round, of ``n_proposals`` random contexts the one the learner is least sure of.

    Bound to the learner by the game (``bind``), it scores every proposal with
    the learner's current state and keeps the one of largest latency (largest
    confidence width minus score gap): contexts chosen where the current
    learner is least certain. Unbound, it plays the first proposal.

    Parameters
    ----------
    n_proposals : int, default=8
    **kwargs
        As :class:`LinearSoftmaxEnv`.
    """

    name = "adversarial"

    def __init__(self, d: int = 20, K: int = 5, rounds: int = 5000, temperature: float = 0.05,
                 theta_norm: float = 1.0, cost_low: float = 1.0, cost_high: float = 1.0,
                 seed: int = 0, n_proposals: int = 8) -> None:
        super().__init__(d, K, rounds, temperature, theta_norm, cost_low, cost_high, seed)
        self.n_proposals = n_proposals

    def _validate(self) -> None:
        super()._validate()
        check_int(type(self).__name__, "n_proposals", self.n_proposals, low=1)

    def bind(self, learner) -> None:
        self._learner = learner

    def __iter__(self) -> Iterator[Round]:
        from budgetsft.gates.llf import latency_of

        self._validate()
        rng = np.random.default_rng([self.seed, 1])
        learner = getattr(self, "_learner", None)
        for t in range(1, self.rounds + 1):
            X, u, c = self._draws(rng, self.n_proposals)
            best = 0
            if learner is not None and self.n_proposals > 1:
                lats = []
                for j in range(self.n_proposals):
                    s = learner.score_many(X[j])
                    pred = int(np.argmax(s))
                    w, _ = learner.widths_many(X[j], pred)
                    lats.append(latency_of(s, w, pred))
                best = int(np.argmax(lats))
            yield self._make_round(X[best], t, float(u[best]), float(c[best]), "r")
