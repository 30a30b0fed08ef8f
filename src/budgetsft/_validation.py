"""One message format for every hyper-parameter check (STYLE.md habit 4)."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np

from budgetsft.exceptions import ConfigError, DataError


def _fail(owner: str, name: str, expected: str, value: Any) -> ConfigError:
    return ConfigError(f"The '{name}' parameter of {owner} must be {expected}. Got {value!r}.")


def check_float(
    owner: str,
    name: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """Return ``value`` as a float after checking it lies in the given interval."""
    lo = "(" if low_open else "["
    hi = ")" if high_open else "]"
    interval = f"{lo}{'-inf' if low is None else _fmt(low)}, {'inf' if high is None else _fmt(high)}{hi}"
    expected = f"a float in {interval}"
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise _fail(owner, name, expected, value)
    x = float(value)
    if not math.isfinite(x):
        raise _fail(owner, name, expected, value)
    if low is not None and (x < low or (low_open and x == low)):
        raise _fail(owner, name, expected, value)
    if high is not None and (x > high or (high_open and x == high)):
        raise _fail(owner, name, expected, value)
    return x


def is_int(value: Any, low: int | None = None, high: int | None = None) -> bool:
    """Whether ``value`` is an int (not a bool) within [low, high] (either bound None: open).

    >>> is_int(3), is_int(True), is_int(3.0), is_int(-1, low=0), is_int(5, 0, 4)
    (True, False, False, False, False)
    """
    return (isinstance(value, int) and not isinstance(value, bool) and (low is None or value >= low)
            and (high is None or value <= high))


def check_int(owner: str, name: str, value: Any, *, low: int | None = None) -> int:
    """Return ``value`` as an int after checking it is an integer ``>= low``."""
    expected = "an int" if low is None else f"an int >= {low}"
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise _fail(owner, name, expected, value)
    if low is not None and value < low:
        raise _fail(owner, name, expected, value)
    return int(value)


def check_choice(owner: str, name: str, value: Any, choices: Iterable[Any]) -> Any:
    """Return ``value`` after checking it is one of ``choices``."""
    choices = list(choices)
    if value not in choices:
        raise _fail(owner, name, "one of " + ", ".join(repr(c) for c in choices), value)
    return value


def check_seed(owner: str, value: Any) -> int | None:
    if value is None:
        return None
    return check_int(owner, "seed", value, low=0)


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(x)


def check_features(X: Any, *, where: str = "features", d: int | None = None) -> np.ndarray:
    """Validate one round's candidate features: finite float array of shape (K, d), K >= 2."""
    try:
        arr = np.asarray(X, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{where}: features must be a numeric array of shape (K, d); {exc}") from exc
    if arr.ndim != 2:
        raise DataError(f"{where}: features must have shape (K, d); got shape {arr.shape}.")
    if arr.shape[0] < 2:
        raise DataError(f"{where}: a round needs K >= 2 candidates; got K = {arr.shape[0]}.")
    if d is not None and arr.shape[1] != d:
        raise DataError(f"{where}: features must have d = {d} columns; got shape {arr.shape}.")
    big = float(np.max(np.abs(arr))) if arr.size else 0.0  # one pass: NaN and inf show up in the max too
    if not math.isfinite(big):
        bad = np.argwhere(~np.isfinite(arr))[0]
        raise DataError(
            f"{where}: features must be finite; found {arr[tuple(bad)]} at candidate {bad[0]}, "
            f"column {bad[1]}."
        )
    if big > MAX_FEATURE:
        bad = np.unravel_index(int(np.argmax(np.abs(arr))), arr.shape)
        raise DataError(
            f"{where}: features must be at most {MAX_FEATURE:g} in magnitude (the learners square and sum them: "
            f"larger values overflow float64); found {arr[bad]:g} at candidate {bad[0]}, column {bad[1]}. "
            f"Rescale the features (normalise them, or divide them by a constant)."
        )
    return arr


# Largest feature magnitude a round may hold: squares and sums over d in the thousands stay far below float64's
# 1.8e308, and P's rank-one updates (products of four feature values) too.
MAX_FEATURE = 1e30
