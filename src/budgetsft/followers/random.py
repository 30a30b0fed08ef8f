"""A follower that opposes a uniformly random wrong candidate (an ablation)."""

from __future__ import annotations

import numpy as np

from budgetsft._validation import check_seed

__all__ = ["RandomFollower"]


class RandomFollower:
    """ã uniform over the wrong candidates, from its own seeded generator.

    Examples
    --------
    >>> import numpy as np
    >>> f = RandomFollower(seed=0)
    >>> f.respond(np.zeros(3), gold=0) in (1, 2)
    True
    """

    def __init__(self, seed: int | None = 0) -> None:
        self.seed = seed

    def respond(self, scores: np.ndarray, gold: int) -> int:
        if not hasattr(self, "_rng"):
            self._rng = np.random.default_rng(check_seed("RandomFollower", self.seed))
        K = len(scores)
        a = int(self._rng.integers(K - 1))
        return a if a < gold else a + 1
