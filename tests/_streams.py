"""Small random streams for the contract tests."""

from __future__ import annotations

import numpy as np

from budgetsft.base import Round


def random_stream(n: int, d: int, K: int | tuple[int, int], seed: int, costs: bool = False) -> list[Round]:
    """Rounds with Gaussian features, random gold and (optionally) random label prices."""
    rng = np.random.default_rng(seed)
    rounds = []
    for t in range(n):
        k = K if isinstance(K, int) else int(rng.integers(K[0], K[1] + 1))
        X = rng.standard_normal((k, d))
        p = rng.dirichlet(np.ones(k))
        cost = float(rng.choice([0.0, 0.5, 1.0, 2.5, 0.1])) if costs else 1.0
        rounds.append(Round(features=X, gold=int(rng.integers(k)), expected_rewards=p, cost=cost, id=f"r{t}"))
    return rounds
