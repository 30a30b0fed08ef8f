"""Paired confidence intervals over seeds and test items (the report's noise model).

Each method m has, for every seed s, a 0/1 correctness vector ``c[m][s]`` over
that seed's test items (n_s of them; the test split depends on the seed). A
statistic is an average over seeds of a per-seed mean:

* accuracy of m: ``mean_s mean_i c[m][s][i]``;
* paired difference m − m': ``mean_s mean_i (c[m][s][i] − c[m'][s][i])``.

The 95 % interval (``interval="t"``, the default) depends on the number of
seeds S:

* **S ≥ 2: a seed-level Student t interval** (``interval_method_ ==
  "seed-t"``). With x_s the per-seed mean (for a paired difference, the
  per-seed mean of ``c[m][s] − c[m'][s]``, both methods read on the same
  test items of the same seed), the interval is ``mean_s x_s ± h`` with
  ``h = max(t_{0.975, S−1} · sd_s(x) / √S, z_{0.975} · √(Σ_s v_s / n_s) / S)``:
  ``sd_s(x)`` the sample standard deviation (ddof 1) of the S per-seed
  values, ``v_s`` the sample variance (ddof 1) of seed s's per-item values,
  z_{0.975} = 1.96. Each x_s varies both with its seed (split, bought labels,
  LoRA initialisation) and with the test items the seed drew, so the spread
  of the x_s counts both: ``E[sd_s(x)² / S]`` is exactly the variance of the
  mean over seeds, whatever the test sizes. The second term is the normal
  interval of the test-item noise alone: a floor that keeps the interval from
  being narrower than the test items allow when a few seeds happen to agree
  (it only ever widens, and rarely acts: with 3 seeds, only when the
  variance of the x_s is under a fifth of the test-item variance of one
  seed's mean). The interval is clipped to
  the range the statistic can take (``bounds``: [0, 1] for an accuracy,
  [−1, 1] for a difference).
* **S = 1: a percentile bootstrap over the test items** (``interval_method_
  == "items-bootstrap"``): a t interval needs two seeds. Replicate r draws
  n_1 item indices with replacement (``rng.integers(0, n_1, size=(R, n_1))``
  from ``numpy.random.default_rng(seed)``); the interval is the 2.5th and
  97.5th percentiles (``numpy.percentile``, linear interpolation) of the R
  replicate means, the same indices serving every method (paired). It counts
  the test-item noise only, not the variation between seeds.

What it guarantees. If the per-seed values x_s are independent draws from one
normal distribution (the seed effect plus the test-item noise, which at a
few hundred items is close to normal), the t interval covers the mean over
seeds (what infinitely many seeds would give, each with its own test split)
with probability exactly 0.95 for any S ≥ 2, and the floor can only raise
that; otherwise approximately. Simulated in
``tests/test_adapt_interval_coverage.py`` (seed-level sd 0.03, 400 test
items, an accuracy and a paired difference with correlated items, 2,000
repetitions): 0.949–0.965 at 5 seeds, 0.954–0.972 at 3, 0.955–0.976 at 2.
Few seeds make it wide, not wrong: the t quantile is 12.71 at 2 seeds, 4.30
at 3, 2.78 at 5, 2.26 at 10. The seeds
must be independent runs; the interval is for the mean over seeds, not for
one future seed's accuracy (a prediction interval is wider by √(S + 1)). With
one seed there is no spread to estimate: the items bootstrap covers that
seed's own accuracy (its split, its labels, its LoRA run) at about 0.95, and
says nothing about another seed's (in the same simulation it covered the mean
over seeds 0.65 of the time).

``resample_seeds=False`` gives the items-only bootstrap whatever the number
of seeds (it ignores the variation between seeds). ``interval="bootstrap"``
keeps the earlier two-level percentile bootstrap (``interval_method_ ==
"seeds-items-bootstrap"``; ``"items-bootstrap"`` with one seed): items
within each seed as above, for each seed in order, then S seed slots with
replacement (``rng.integers(0, S, size=(R, S))``, drawn after the items);
the replicate's statistic is the mean over the drawn seeds of each one's
mean on its resampled items. With few seeds it under-covers when the seeds
differ more than the test items explain: the spread of a resample of 3 or
5 values is too narrow, and percentiles are not t quantiles (in the
simulation above, where the seeds dominate: 0.92 for an accuracy and 0.87
for a difference at 3 seeds, 0.93 and 0.93 at 5). It is kept for comparison.

Everything is deterministic: same inputs, same ``n_resamples`` and ``seed``,
same intervals, bit for bit. This module imports neither torch nor peft.

Examples
--------
>>> import numpy as np
>>> c = {"a": [np.array([1, 1, 0, 1])], "b": [np.array([1, 0, 0, 1])]}
>>> boot = PairedBootstrap([4], n_resamples=1000, seed=0)
>>> boot.mean(c["a"]), boot.interval_method_
(0.75, 'items-bootstrap')
>>> boot.paired(c["a"], c["a"])["ci95"]
[0.0, 0.0]
>>> two = PairedBootstrap([4, 4])
>>> two.interval_method_, two.interval([[1, 1, 0, 1], [1, 0, 0, 1]])[1] <= 1.0
('seed-t', True)
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import stats as _scipy_stats

from budgetsft._validation import check_choice, check_float, check_int
from budgetsft.exceptions import ConfigError

__all__ = ["PairedBootstrap", "N_RESAMPLES", "BOOTSTRAP_SEED", "INTERVALS", "INTERVAL_METHODS", "t_quantile"]

#: Bootstrap replicates of every bootstrap interval in the report.
N_RESAMPLES = 10_000
#: Seed of the bootstrap's random generator.
BOOTSTRAP_SEED = 0
#: Values of ``interval``: the seed-level t interval (default) or the two-level percentile bootstrap.
INTERVALS = ("t", "bootstrap")
#: What ``interval_method_`` can be, and what each one is (the report quotes these).
INTERVAL_METHODS = {
    "seed-t": "Student t interval on the per-seed values (for a paired difference, the per-seed differences on "
              "the same test items): mean over seeds ± t(0.975, S − 1) × sd / sqrt(S), never narrower than the "
              "normal interval of the test-item noise alone, clipped to the statistic's range",
    "items-bootstrap": "percentile bootstrap over the test items within each seed (the same resample for every "
                       "method: paired); the seeds are not resampled",
    "seeds-items-bootstrap": "two-level percentile bootstrap: seeds resampled with replacement, and test items "
                             "with replacement within each seed (the same resample for every method: paired); "
                             "statistic averaged over the drawn seeds",
}


def t_quantile(n_seeds: int, level: float = 0.95) -> float:
    """``t_{(1 + level)/2, S − 1}``, the quantile of the seed-t interval over S = ``n_seeds`` (nan with one seed)."""
    return float(_scipy_stats.t.ppf(0.5 + level / 2, n_seeds - 1)) if n_seeds > 1 else math.nan


def t_half_width(per_seed: Sequence[float], level: float = 0.95) -> float:
    """Half-width of the plain seed-t interval of the mean of ``per_seed`` (one value a seed, e.g. paired
    differences): ``t_quantile(S) · sd / √S``, with no test-item floor (nan with one seed)."""
    v = np.asarray(per_seed, dtype=np.float64)
    if len(v) < 2:
        return math.nan
    return t_quantile(len(v), level) * float(np.std(v, ddof=1)) / math.sqrt(len(v))


class PairedBootstrap:
    """Paired intervals of seed-averaged means: a seed-level t interval, or a bootstrap shared by every method.

    Parameters
    ----------
    sizes : sequence of int
        Number of test items of each seed, in seed order.
    n_resamples : int, default=N_RESAMPLES
        Bootstrap replicates (used by a bootstrap interval and :meth:`replicates`).
    seed : int, default=BOOTSTRAP_SEED
    level : float, default=0.95
    resample_seeds : bool, default=True
        Count the variation between seeds (with more than one). False: the
        items-only bootstrap interval, whatever ``interval`` says.
    interval : {"t", "bootstrap"}, default="t"
        ``"t"``: the seed-level t interval with two seeds or more, the items
        bootstrap with one. ``"bootstrap"``: the percentile bootstrap.
    bounds : (float, float) or None, default=(0.0, 1.0)
        The range each per-item value lies in (0/1 correctness). A t interval
        of a mean is clipped to it, one of a difference to
        ``[lo − hi, hi − lo]``; values outside it are refused. None: no clipping.

    Attributes
    ----------
    interval_method_ : str
        Which interval :meth:`interval`, :meth:`summary` and :meth:`paired`
        give: ``"seed-t"``, ``"items-bootstrap"`` or ``"seeds-items-bootstrap"``
        (:data:`INTERVAL_METHODS`).
    indices_ : list of ndarray of shape (n_resamples, n_s)
        The resampled item indices of each seed (drawn on first use).
    seed_indices_ : ndarray of shape (n_resamples, S), or None
        The resampled seed slots of each replicate (None unless
        ``interval_method_`` is ``"seeds-items-bootstrap"``).
    """

    def __init__(self, sizes: Sequence[int], *, n_resamples: int = N_RESAMPLES, seed: int = BOOTSTRAP_SEED,
                 level: float = 0.95, resample_seeds: bool = True, interval: str = "t",
                 bounds: tuple[float, float] | None = (0.0, 1.0)) -> None:
        self.sizes = [check_int("PairedBootstrap", "sizes", n, low=1) for n in sizes]
        if not self.sizes:
            raise ConfigError("The 'sizes' parameter of PairedBootstrap must list at least one seed's test size.")
        self.n_resamples = check_int("PairedBootstrap", "n_resamples", n_resamples, low=1)
        self.seed = seed
        self.level = check_float("PairedBootstrap", "level", level, low=0.0, high=1.0, low_open=True, high_open=True)
        self.interval_kind = check_choice("PairedBootstrap", "interval", interval, INTERVALS)
        if bounds is not None:
            try:
                lo, hi = (float(b) for b in bounds)
            except (TypeError, ValueError):
                lo = hi = math.nan
            if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi):
                raise ConfigError(f"The 'bounds' parameter of PairedBootstrap must be (low, high) with low <= high. "
                                  f"Got {bounds!r}.")
            bounds = (lo, hi)
        self.bounds = bounds
        S = len(self.sizes)
        if S == 1 or not resample_seeds:
            self.interval_method_ = "items-bootstrap"
        elif self.interval_kind == "t":
            self.interval_method_ = "seed-t"
        else:
            self.interval_method_ = "seeds-items-bootstrap"
        self._resample_seeds = self.interval_method_ == "seeds-items-bootstrap"
        self._indices: list[np.ndarray] | None = None
        self._seed_indices: np.ndarray | None = None

    # ------------------------------------------------------------------ the bootstrap's draws

    def _draw(self) -> None:
        if self._indices is None:
            rng = np.random.default_rng(self.seed)
            self._indices = [rng.integers(0, n, size=(self.n_resamples, n)) for n in self.sizes]
            S = len(self.sizes)
            self._seed_indices = (rng.integers(0, S, size=(self.n_resamples, S)) if self._resample_seeds
                                  else None)

    @property
    def indices_(self) -> list[np.ndarray]:
        self._draw()
        return self._indices  # type: ignore[return-value]

    @property
    def seed_indices_(self) -> np.ndarray | None:
        self._draw()
        return self._seed_indices

    # ------------------------------------------------------------------ inputs

    def _vectors(self, per_seed: Sequence[Sequence[float]], what: str) -> list[np.ndarray]:
        if len(per_seed) != len(self.sizes):
            raise ConfigError(f"PairedBootstrap: {what} has {len(per_seed)} seed(s), expected {len(self.sizes)}.")
        out = []
        for s, (v, n) in enumerate(zip(per_seed, self.sizes, strict=True)):
            arr = np.asarray(v, dtype=np.float64)
            if arr.shape != (n,):
                raise ConfigError(f"PairedBootstrap: {what} at seed {s} has shape {arr.shape}, expected ({n},).")
            if not np.all(np.isfinite(arr)):
                raise ConfigError(f"PairedBootstrap: {what} at seed {s} holds a value that is not finite.")
            out.append(arr)
        return out

    def _checked(self, per_seed: Sequence[Sequence[float]], what: str) -> list[np.ndarray]:
        """The vectors of one method's values, which must lie in ``bounds``."""
        vs = self._vectors(per_seed, what)
        if self.bounds is not None:
            lo, hi = self.bounds
            for s, v in enumerate(vs):
                if v.size and (v.min() < lo or v.max() > hi):
                    raise ConfigError(f"PairedBootstrap: {what} at seed {s} holds values outside bounds "
                                      f"[{lo:g}, {hi:g}] (pass bounds=None for values of any range).")
        return vs

    # ------------------------------------------------------------------ statistics

    def mean(self, per_seed: Sequence[Sequence[float]]) -> float:
        """Point estimate: the mean over seeds of the per-seed mean."""
        return float(np.mean([v.mean() for v in self._vectors(per_seed, "the values")]))

    def replicates(self, per_seed: Sequence[Sequence[float]]) -> np.ndarray:
        """The bootstrap statistic on each resample: ndarray of shape (n_resamples,).

        These are the replicates of the bootstrap intervals
        (``interval_method_`` ``"items-bootstrap"`` or ``"seeds-items-bootstrap"``);
        a ``"seed-t"`` interval does not use them.
        """
        vs = self._vectors(per_seed, "the values")
        per = np.stack([v[idx].mean(axis=1) for v, idx in zip(vs, self.indices_, strict=True)])  # (S, R)
        if self.seed_indices_ is None:
            return per.mean(axis=0)
        return per[self.seed_indices_, np.arange(self.n_resamples)[:, None]].mean(axis=1)

    def t_quantile(self) -> float:
        """The t quantile of the seed-t interval, ``t_{(1 + level)/2, S − 1}`` (nan with one seed)."""
        return t_quantile(len(self.sizes), self.level)

    def standard_error(self, per_seed: Sequence[Sequence[float]]) -> float:
        """The seed-t interval's ``se = sd_s(x) / sqrt(S)``, the spread of the per-seed values (nan with one seed)."""
        return math.sqrt(self._variances(self._vectors(per_seed, "the values"))[0])

    def test_item_error(self, per_seed: Sequence[Sequence[float]]) -> float:
        """The test-item noise of the mean over seeds alone, ``sqrt(Σ_s v_s / n_s) / S`` (the floor's scale)."""
        return math.sqrt(self._variances(self._vectors(per_seed, "the values"))[1])

    @staticmethod
    def _variances(vs: list[np.ndarray]) -> tuple[float, float]:
        """(var_s(x) / S, Σ_s v_s / (n_s S²)): the mean over seeds' variance from the seeds, and from the items."""
        S = len(vs)
        x = np.array([v.mean() for v in vs])
        between = float(x.var(ddof=1)) / S if S > 1 else math.nan
        within = sum(float(v.var(ddof=1)) / v.size for v in vs if v.size > 1) / S ** 2
        return between, within

    def _interval(self, vs: list[np.ndarray], bounds: tuple[float, float] | None) -> list[float]:
        if self.interval_method_ == "seed-t":
            m = float(np.mean([v.mean() for v in vs]))
            between, within = self._variances(vs)
            z = float(_scipy_stats.norm.ppf(0.5 + self.level / 2))
            half = max(self.t_quantile() * math.sqrt(between), z * math.sqrt(within))
            lo, hi = m - half, m + half
            if bounds is not None:
                lo, hi = max(lo, bounds[0]), min(hi, bounds[1])
            return [float(lo), float(hi)]
        tail = 100 * (1 - self.level) / 2
        lo, hi = np.percentile(self.replicates(vs), [tail, 100 - tail])
        return [float(lo), float(hi)]

    def interval(self, per_seed: Sequence[Sequence[float]]) -> list[float]:
        """[low, high] interval at ``level`` of the mean over seeds (the method is ``interval_method_``)."""
        return self._interval(self._checked(per_seed, "the values"), self.bounds)

    def summary(self, per_seed: Sequence[Sequence[float]]) -> dict:
        """``{"mean", "ci95", "per_seed"}`` of one method's correctness vectors."""
        vs = self._checked(per_seed, "the values")
        return self._summary(vs, self.bounds)

    def _summary(self, vs: list[np.ndarray], bounds: tuple[float, float] | None) -> dict:
        return {"mean": self.mean(vs), "ci95": self._interval(vs, bounds), "per_seed": [float(v.mean()) for v in vs]}

    def paired(self, a: Sequence[Sequence[float]], b: Sequence[Sequence[float]]) -> dict:
        """``{"mean", "ci95", "per_seed", "within_noise"}`` of a − b, both read on the same test items.

        The seed-t interval is that of the per-seed differences; a bootstrap
        reads both methods on the same resampled items (and seeds).
        ``within_noise`` is True when the interval contains 0.
        """
        va, vb = self._checked(a, "the first method"), self._checked(b, "the second method")
        diff = [x - y for x, y in zip(va, vb, strict=True)]
        bounds = None if self.bounds is None else (self.bounds[0] - self.bounds[1], self.bounds[1] - self.bounds[0])
        out = self._summary(diff, bounds)
        lo, hi = out["ci95"]
        out["within_noise"] = bool(lo <= 0.0 <= hi)
        return out
