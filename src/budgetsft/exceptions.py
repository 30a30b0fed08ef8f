"""Exceptions raised by budgetsft.

Every error that user input can trigger is one of these, with a message that
names the parameter (or file and line) and the offending value.
"""

from __future__ import annotations

__all__ = [
    "BudgetsftError",
    "BudgetsftWarning",
    "BudgetExhaustedError",
    "ConfigError",
    "DataError",
    "DataWarning",
]


class BudgetsftError(Exception):
    """Base class of every error raised on purpose by budgetsft."""


class ConfigError(BudgetsftError, ValueError):
    """A hyper-parameter, option or configuration entry is invalid."""


class DataError(BudgetsftError, ValueError):
    """Input data (features, labels, costs, files) is malformed."""


class BudgetExhaustedError(BudgetsftError, RuntimeError):
    """A label was about to be bought beyond the budget.

    Gates check affordability before asking, so this error means a bug in a
    gate or a caller bypassing :class:`budgetsft.budget.Budget`; it is raised
    before anything is spent, so nothing already paid for is lost.
    """


class BudgetsftWarning(UserWarning):
    """Base class of every warning issued on purpose by budgetsft (the CLI prints each as one line)."""


class DataWarning(BudgetsftWarning):
    """Part of the input data was left out, as asked (``skip_invalid``): the message counts it and names some."""
