"""The environment's second move (SPEC §2 step 5)."""

from budgetsft.followers.best_response import BestResponseFollower
from budgetsft.followers.random import RandomFollower

__all__ = ["BestResponseFollower", "RandomFollower"]
