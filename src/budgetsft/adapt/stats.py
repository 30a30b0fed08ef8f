"""Paired bootstrap confidence intervals over seeds and test items (the report's noise model).

Each method m has, for every seed s, a 0/1 correctness vector ``c[m][s]`` over
that seed's test items (n_s of them; the test split depends on the seed). A
statistic is an average over seeds of a per-seed mean:

* accuracy of m: ``mean_s mean_i c[m][s][i]``;
* paired difference m − m': ``mean_s mean_i (c[m][s][i] − c[m'][s][i])``.

Its 95 % interval is a two-level percentile bootstrap over seeds and test
items. Replicate r draws, for each seed in order, n_s item indices with
replacement (``rng.integers(0, n_s, size=(R, n_s))`` from one
``numpy.random.default_rng(seed)``, seeds in the order given); then, with more
than one seed, S seed slots with replacement (``rng.integers(0, S, size=(R,
S))``, drawn after the items). The replicate's statistic is the mean over the
drawn seeds of each one's mean on its resampled items; the interval is the
2.5th and 97.5th percentiles (``numpy.percentile``, linear interpolation) of
the R values. The same indices serve every method and every pair in a
replicate, so a difference is paired: both methods are read on the same
resampled items of the same resampled seeds.

Why seeds too: a seed draws its own split, its own bought sets and its own
LoRA initialisation, and two sets drawn the same way (``random`` and
``first`` on a shuffled stream are both uniform samples) can differ by more
than test items alone explain. Resampling seeds puts that variation in the
interval; with few seeds it is coarse (3 seeds give 10 distinct multisets), so
a difference it calls real is one that held on every resampled mix of
seeds. ``resample_seeds=False`` gives the items-only interval.

Everything is deterministic: same inputs, same ``n_resamples`` and ``seed``,
same intervals, bit for bit. This module imports neither torch nor peft.

Examples
--------
>>> import numpy as np
>>> c = {"a": [np.array([1, 1, 0, 1])], "b": [np.array([1, 0, 0, 1])]}
>>> boot = PairedBootstrap([4], n_resamples=1000, seed=0)
>>> boot.mean(c["a"])
0.75
>>> boot.paired(c["a"], c["a"])["ci95"]
[0.0, 0.0]
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from budgetsft._validation import check_int
from budgetsft.exceptions import ConfigError

__all__ = ["PairedBootstrap", "N_RESAMPLES", "BOOTSTRAP_SEED"]

#: Bootstrap replicates of every interval in the report.
N_RESAMPLES = 10_000
#: Seed of the bootstrap's random generator.
BOOTSTRAP_SEED = 0


class PairedBootstrap:
    """Percentile-bootstrap intervals of seed-averaged means, with one resample shared by every method.

    Parameters
    ----------
    sizes : sequence of int
        Number of test items of each seed, in seed order.
    n_resamples : int, default=N_RESAMPLES
    seed : int, default=BOOTSTRAP_SEED
    level : float, default=0.95
    resample_seeds : bool, default=True
        Also resample the seeds (with more than one): the two-level bootstrap.

    Attributes
    ----------
    indices_ : list of ndarray of shape (n_resamples, n_s)
        The resampled item indices of each seed.
    seed_indices_ : ndarray of shape (n_resamples, S), or None
        The resampled seed slots of each replicate (None: one seed, or
        ``resample_seeds=False``).
    """

    def __init__(self, sizes: Sequence[int], *, n_resamples: int = N_RESAMPLES, seed: int = BOOTSTRAP_SEED,
                 level: float = 0.95, resample_seeds: bool = True) -> None:
        self.sizes = [check_int("PairedBootstrap", "sizes", n, low=1) for n in sizes]
        if not self.sizes:
            raise ConfigError("The 'sizes' parameter of PairedBootstrap must list at least one seed's test size.")
        self.n_resamples = check_int("PairedBootstrap", "n_resamples", n_resamples, low=1)
        self.seed = seed
        self.level = level
        rng = np.random.default_rng(seed)
        self.indices_ = [rng.integers(0, n, size=(self.n_resamples, n)) for n in self.sizes]
        S = len(self.sizes)
        self.seed_indices_ = rng.integers(0, S, size=(self.n_resamples, S)) if resample_seeds and S > 1 else None

    def _vectors(self, per_seed: Sequence[Sequence[float]], what: str) -> list[np.ndarray]:
        if len(per_seed) != len(self.sizes):
            raise ConfigError(f"PairedBootstrap: {what} has {len(per_seed)} seed(s), expected {len(self.sizes)}.")
        out = []
        for s, (v, n) in enumerate(zip(per_seed, self.sizes, strict=True)):
            arr = np.asarray(v, dtype=np.float64)
            if arr.shape != (n,):
                raise ConfigError(f"PairedBootstrap: {what} at seed {s} has shape {arr.shape}, expected ({n},).")
            out.append(arr)
        return out

    def mean(self, per_seed: Sequence[Sequence[float]]) -> float:
        """Point estimate: the mean over seeds of the per-seed mean."""
        return float(np.mean([v.mean() for v in self._vectors(per_seed, "the values")]))

    def replicates(self, per_seed: Sequence[Sequence[float]]) -> np.ndarray:
        """The statistic on each resample: ndarray of shape (n_resamples,)."""
        vs = self._vectors(per_seed, "the values")
        per = np.stack([v[idx].mean(axis=1) for v, idx in zip(vs, self.indices_, strict=True)])  # (S, R)
        if self.seed_indices_ is None:
            return per.mean(axis=0)
        return per[self.seed_indices_, np.arange(self.n_resamples)[:, None]].mean(axis=1)

    def interval(self, per_seed: Sequence[Sequence[float]]) -> list[float]:
        """[low, high] percentile interval at ``level``."""
        tail = 100 * (1 - self.level) / 2
        lo, hi = np.percentile(self.replicates(per_seed), [tail, 100 - tail])
        return [float(lo), float(hi)]

    def summary(self, per_seed: Sequence[Sequence[float]]) -> dict:
        """``{"mean", "ci95", "per_seed"}`` of one method's correctness vectors."""
        vs = self._vectors(per_seed, "the values")
        return {"mean": self.mean(vs), "ci95": self.interval(vs), "per_seed": [float(v.mean()) for v in vs]}

    def paired(self, a: Sequence[Sequence[float]], b: Sequence[Sequence[float]]) -> dict:
        """``{"mean", "ci95", "per_seed", "within_noise"}`` of a − b on the same resampled items.

        ``within_noise`` is True when the interval contains 0.
        """
        va, vb = self._vectors(a, "the first method"), self._vectors(b, "the second method")
        diff = [x - y for x, y in zip(va, vb, strict=True)]
        out = self.summary(diff)
        lo, hi = out["ci95"]
        out["within_noise"] = bool(lo <= 0.0 <= hi)
        return out
