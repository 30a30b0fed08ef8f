"""The follower's best response: the hardest wrong candidate."""

from __future__ import annotations

import numpy as np

from budgetsft._math import best_alternative

__all__ = ["BestResponseFollower"]


class BestResponseFollower:
    """ã = argmax_{a != y*} s(a): the wrong answer the committed scores like most.

    Examples
    --------
    >>> import numpy as np
    >>> BestResponseFollower().respond(np.array([0.1, 0.9, 0.5]), gold=1)
    2
    """

    def respond(self, scores: np.ndarray, gold: int) -> int:
        return best_alternative(scores, gold)
