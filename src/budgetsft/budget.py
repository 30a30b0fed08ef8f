"""The label budget: counted in labels or in cost units, never exceeded.

Spending is tracked with exact rational arithmetic (``fractions.Fraction`` of
each float cost), so a long run of fractional costs can never creep past the
total through rounding.
"""

from __future__ import annotations

import math
from fractions import Fraction

from budgetsft._validation import check_choice, check_float, check_int
from budgetsft.exceptions import BudgetExhaustedError, ConfigError, DataError

__all__ = ["Budget"]


class Budget:
    """A budget of labels (each costs 1) or of cost units (each costs its price).

    Parameters
    ----------
    total : float
        B, the most that may be spent. In ``"labels"`` mode it must be an integer.
    unit : {"labels", "cost"}, default="labels"

    Examples
    --------
    >>> b = Budget.from_beta(0.1, 50)
    >>> b.total, b.can_afford(1.0)
    (5.0, True)
    >>> for _ in range(5):
    ...     b.spend(1.0)
    >>> b.can_afford(1.0), b.labels_bought
    (False, 5)
    """

    _held: int | Fraction = 0  # labels bought but not yet delivered (delayed feedback); class default for old state

    def __init__(self, total: float, unit: str = "labels") -> None:
        self.total = total
        self.unit = unit
        self._validate()
        # Labels mode counts in ints (the hot path of every round); cost mode in exact rationals.
        self._spent: int | Fraction = 0 if self.unit == "labels" else Fraction(0)
        self._total: int | Fraction = int(self.total) if self.unit == "labels" else Fraction(float(self.total))
        self.labels_bought = 0

    def _validate(self) -> None:
        check_choice("Budget", "unit", self.unit, ("labels", "cost"))
        self.total = check_float("Budget", "total", self.total, low=0.0)
        if self.unit == "labels" and not float(self.total).is_integer():
            raise ConfigError(
                f"The 'total' parameter of Budget must be a whole number of labels. Got {self.total!r}."
            )

    @classmethod
    def from_beta(cls, beta: float, horizon: int, costs: list[float] | None = None, unit: str = "labels") -> Budget:
        """B = ⌊βT⌋ labels, or β·Σ cost in cost units (SPEC §1)."""
        beta = check_float("Budget", "beta", beta, low=0.0, high=1.0, low_open=True)
        horizon = check_int("Budget", "horizon", horizon, low=1)
        if unit == "labels":
            return cls(float(math.floor(beta * horizon + 1e-9)), "labels")
        check_choice("Budget", "unit", unit, ("labels", "cost"))
        if costs is None:
            costs = [1.0] * horizon
        return cls(beta * math.fsum(costs), "cost")

    def price(self, cost: float) -> float:
        """What buying a label of price ``cost`` charges this budget."""
        if self.unit == "labels":
            return 1.0
        if not (isinstance(cost, int | float) and math.isfinite(cost) and cost >= 0):
            raise DataError(f"A label cost must be a finite number >= 0. Got {cost!r}.")
        return float(cost)

    def _exact(self, cost: float) -> int | Fraction:
        return 1 if self.unit == "labels" else Fraction(self.price(cost))

    def can_afford(self, cost: float = 1.0) -> bool:
        return self._spent + self._held + self._exact(cost) <= self._total

    def spend(self, cost: float = 1.0, *, settle: bool = False) -> None:
        """Charge one label; raises BudgetExhaustedError (spending nothing) if it does not fit.

        ``settle``: the label was already paid for elsewhere (a session's ledger committed it) and was
        held here (:meth:`hold`): only what is spent, not what others hold, must leave room for it.
        """
        price = self._exact(cost)
        if self._spent + (0 if settle else self._held) + price > self._total:
            raise BudgetExhaustedError(
                f"Buying a label of cost {float(price)} would exceed the budget "
                f"({float(self._spent)} of {self.total} {self.unit} spent"
                + (f", {float(self._held)} held" if self._held else "") + ")."
            )
        self._spent += price
        self.labels_bought += 1

    def hold(self, cost: float = 1.0) -> None:
        """Hold a label's price until it is delivered (:meth:`release`, then :meth:`spend`) or dropped."""
        price = self._exact(cost)
        if self._spent + self._held + price > self._total:
            raise BudgetExhaustedError(
                f"Holding a label of cost {float(price)} would exceed the budget "
                f"({float(self._spent)} of {self.total} {self.unit} spent, {float(self._held)} held)."
            )
        self._held = self._held + price

    def release(self, cost: float = 1.0) -> None:
        """Give back what :meth:`hold` took for a label of price ``cost``."""
        self._held = max(self._held - self._exact(cost), 0)

    @property
    def held(self) -> float:
        return float(self._held)

    @property
    def spent(self) -> float:
        return float(self._spent)

    @property
    def remaining(self) -> float:
        """What may still be bought: the total less what is spent and what is held."""
        return float(self._total - self._spent - self._held)

    def state_dict(self) -> dict:
        return {"total": self.total, "unit": self.unit, "spent": str(self._spent), "labels_bought": self.labels_bought}

    def __repr__(self) -> str:
        return f"Budget(total={self.total}, unit={self.unit!r}, spent={self.spent}, labels_bought={self.labels_bought})"
