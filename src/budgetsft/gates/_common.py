"""Helpers shared by the gates."""

from __future__ import annotations

import numpy as np

from budgetsft._validation import check_seed
from budgetsft.base import QueryInfo
from budgetsft.budget import Budget
from budgetsft.exceptions import ConfigError


def rng_of(gate: object, name: str) -> np.random.Generator:
    """The gate's own generator, created on first use from its ``seed`` (STYLE habit 5)."""
    rng = getattr(gate, "_rng", None)
    if rng is None:
        rng = np.random.default_rng(check_seed(name, getattr(gate, "seed", None)))
        gate._rng = rng  # type: ignore[attr-defined]
    return rng


def remaining_rate(info: QueryInfo, budget: Budget, owner: str) -> float:
    """Labels still affordable per remaining round, including this one (needs T)."""
    if info.horizon is None:
        raise ConfigError(f"The {owner} gate needs the horizon T (number of rounds) to pace its spending.")
    rounds_left = max(info.horizon - info.t + 1, 1)
    price = budget.price(info.cost)
    if price == 0.0:
        return 1.0
    return budget.remaining / (price * rounds_left)
