"""Baseline gates (SPEC §4): full, random, first, margin, bbq, cgz.

Each gate answers ``ask(info, budget) -> bool`` from a :class:`QueryInfo`,
which carries no gold label, and never answers True for a label the budget
cannot afford.
"""

from __future__ import annotations

from collections import deque

import numpy as np

from budgetsft._validation import check_float, check_int, check_seed
from budgetsft.base import QueryInfo
from budgetsft.budget import Budget
from budgetsft.gates._common import remaining_rate, rng_of

__all__ = ["FullGate", "RandomGate", "FirstGate", "MarginGate", "BBQGate", "CGZGate"]


class FullGate:
    """Query every round the budget affords (full feedback when β = 1).

    Examples
    --------
    >>> from budgetsft.budget import Budget
    >>> FullGate().ask(None, Budget(1.0))
    True
    """

    reads_widths = False  # a game may skip the widths for it (budgetsft.game.commit)

    def ask(self, info: QueryInfo | None, budget: Budget) -> bool:
        return budget.can_afford(1.0 if info is None else info.cost)


class FirstGate:
    """Buy the labels of the first rounds until the budget is spent (first-come labelling)."""

    reads_widths = False

    def ask(self, info: QueryInfo, budget: Budget) -> bool:
        return budget.can_afford(info.cost)


class RandomGate:
    """Query with probability (remaining budget) / (remaining rounds).

    Parameters
    ----------
    seed : int, optional
        Seed of the gate's own generator.
    """

    reads_widths = False

    def __init__(self, seed: int | None = 0) -> None:
        self.seed = seed

    def _validate(self) -> None:
        check_seed("RandomGate", self.seed)

    def ask(self, info: QueryInfo, budget: Budget) -> bool:
        rng = rng_of(self, "RandomGate")
        p = min(1.0, remaining_rate(info, budget, "random"))
        u = rng.random()  # drawn every round, so the trace does not depend on the budget path
        return bool(u < p) and budget.can_afford(info.cost)


class MarginGate:
    """Query the rounds with the smallest score gap between the top two candidates, rate-paced.

    The threshold is the q-quantile of the last ``memory`` gaps with
    q = remaining budget / remaining rounds, so it spends at the even rate
    that exhausts the budget at the horizon.

    Parameters
    ----------
    memory : int, default=200
        Number of recent gaps the quantile is taken over.
    """

    reads_widths = False

    def __init__(self, memory: int = 200) -> None:
        self.memory = memory

    def _validate(self) -> None:
        check_int("MarginGate", "memory", self.memory, low=1)

    def ask(self, info: QueryInfo, budget: Budget) -> bool:
        if not hasattr(self, "_gaps"):
            self._validate()
            self._gaps: deque[float] = deque(maxlen=self.memory)
        rate = min(1.0, remaining_rate(info, budget, "margin"))
        history = np.fromiter(self._gaps, dtype=np.float64) if self._gaps else None
        self._gaps.append(info.gap)
        if not budget.can_afford(info.cost) or rate <= 0.0:
            return False
        if history is None:
            return True
        return bool(info.gap <= np.quantile(history, rate))


class BBQGate:
    """Cesa-Bianchi, Gentile, Orabona (2009) BBQ: query when ||z||²_P > t^(-κ).

    z = φ(ŷ) - φ(runner-up); the squared width shrinks as labels accrue, the
    threshold t^(-κ) slowly, so queries thin out over time.

    Parameters
    ----------
    kappa : float, default=0.5
        Exponent in (0, 1]; larger κ queries more.
    """

    def __init__(self, kappa: float = 0.5) -> None:
        self.kappa = kappa

    def _validate(self) -> None:
        check_float("BBQGate", "kappa", self.kappa, low=0.0, high=1.0, low_open=True)

    def ask(self, info: QueryInfo, budget: Budget) -> bool:
        if not hasattr(self, "_checked"):
            self._validate()
            self._checked = True
        return bool(info.uncertainty > info.t ** (-self.kappa)) and budget.can_afford(info.cost)


class CGZGate:
    """Cesa-Bianchi, Gentile, Zaniboni (2006) selective sampling: query w.p. b / (b + |margin|).

    Parameters
    ----------
    b : float, default=1.0
        Larger b queries more.
    seed : int, optional
    """

    def __init__(self, b: float = 1.0, seed: int | None = 0) -> None:
        self.b = b
        self.seed = seed

    def _validate(self) -> None:
        check_float("CGZGate", "b", self.b, low=0.0, low_open=True)
        check_seed("CGZGate", self.seed)

    def ask(self, info: QueryInfo, budget: Budget) -> bool:
        rng = rng_of(self, "CGZGate")
        if not hasattr(self, "_checked"):
            self._validate()
            self._checked = True
        u = rng.random()
        return bool(u < self.b / (self.b + abs(info.gap))) and budget.can_afford(info.cost)
