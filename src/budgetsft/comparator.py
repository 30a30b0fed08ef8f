"""The hindsight comparator of the Stackelberg regret, solved once per stream (SPEC §5).

min_{||θ||_∞ <= S} Σ_t ℓ_t(θ), ℓ_t(θ) = max_{a != y*_t} (1 - ⟨θ, φ(y*_t) - φ(a)⟩)_+,
depends on the rounds only (features and gold labels), never on the gate or
the learner. :func:`solve` therefore keys it by the content of the rounds and
caches it, in memory and on disk, so that every (gate, β) cell of a sweep that
plays the same stream reuses one solve.

Two methods, always named in the result:

* ``"exact"`` -- the linear program, solved by HiGHS
  (:func:`budgetsft.regret.comparator_loss`);
* ``"approx"`` -- a first-order bracket: accelerated projected gradient on
  the hinge smoothed by a log-sum-exp of temperature μ, with μ decreasing.
  ``loss`` is the exact hinge loss Σ_t ℓ_t(θ̂) of the best iterate θ̂, an upper
  bound on the optimum; ``lower`` is the LP dual value of the smoothed
  problem's soft-max weights, a certified lower bound (weak duality: for any
  α >= 0 with Σ_a α_{t,a} <= 1, Σ α - S ||Σ α z||_1 <= optimum). The
  Stackelberg regret computed with ``loss`` is therefore a lower bound on the
  exact one, off by at most ``loss - lower``.

Examples
--------
>>> from budgetsft.envs import LinearSoftmaxEnv
>>> rounds = list(LinearSoftmaxEnv(d=5, K=3, rounds=200, seed=0))
>>> exact = solve(rounds, cache=False)
>>> approx = solve(rounds, method="approx", cache=False)
>>> bool(approx.lower - 1e-6 <= exact.loss <= approx.loss + 1e-6)
True
"""

from __future__ import annotations

import hashlib
import math
import os
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import sparse

from budgetsft.base import Round
from budgetsft.exceptions import ConfigError

__all__ = ["Comparator", "METHODS", "solve", "content_key", "exact_is_slow", "SLOW_EXACT_NNZ"]

METHODS = ("exact", "approx", "none")
# Nonzeros of the pair matrix above which HiGHS takes minutes on one core (the 1,702-round
# bbc-news stream has 5.2 M and solves in about a minute): the CLI says so and offers "approx".
SLOW_EXACT_NNZ = 4_000_000
_VERSION = "comparator-v1"  # bump when a method's numbers change: old disk entries are then ignored
_MEMO: OrderedDict[str, Comparator] = OrderedDict()
_MEMO_SIZE = 8


@dataclass(frozen=True, eq=False)
class Comparator:
    """A solved comparator.

    Attributes
    ----------
    loss : float
        Σ_t ℓ_t(θ) at the returned θ (the optimum for ``"exact"``, an upper bound on it for ``"approx"``).
    lower : float
        A lower bound on the optimum (equal to ``loss`` for ``"exact"``).
    theta : ndarray of shape (d,)
    per_round : ndarray of shape (T,)
        ℓ_t(θ), so sums can be split by any subset of rounds.
    method : {"exact", "approx"}
    seconds : float
        Time of the solve that produced it (not of a cache read).
    cached : bool
        Whether this call read it from the memory or disk cache.
    """

    loss: float
    lower: float
    theta: np.ndarray
    per_round: np.ndarray
    method: str
    seconds: float
    cached: bool = False


def pair_matrix(rounds: Sequence[Round]) -> tuple[sparse.csr_matrix, np.ndarray]:
    """z_{t,a} = φ(y*_t) - φ(a) for every wrong a, as a sparse matrix (exact zeros dropped),
    with the round index of each row (rows of one round are contiguous)."""
    blocks, owner = [], []
    for t, r in enumerate(rounds):
        X = np.asarray(r.features, dtype=np.float64)
        wrong = [a for a in range(X.shape[0]) if a != r.gold]
        blocks.append(X[r.gold] - X[wrong])
        owner.extend([t] * len(wrong))
    return sparse.csr_matrix(np.vstack(blocks)), np.asarray(owner)


def hinge_per_round(Z: sparse.csr_matrix, owner: np.ndarray, theta: np.ndarray, T: int) -> np.ndarray:
    """ℓ_t(θ) for every round from the pair matrix, shape (T,)."""
    out = np.zeros(T)
    np.maximum.at(out, owner, np.maximum(0.0, 1.0 - Z @ theta))
    return out


def content_key(rounds: Sequence[Round], S: float, method: str) -> str:
    """SHA-256 of what the comparator depends on: every round's features and gold, S and the method."""
    h = hashlib.sha256(f"{_VERSION}|{method}|{float(S)!r}|{len(rounds)}".encode())
    for r in rounds:
        X = np.ascontiguousarray(r.features, dtype=np.float64)
        h.update(f"{X.shape}|{int(r.gold)};".encode())
        h.update(X.tobytes())
    return h.hexdigest()[:32]


def exact_is_slow(rounds: Sequence[Round]) -> bool:
    """Whether the exact LP of these rounds is above :data:`SLOW_EXACT_NNZ` nonzeros (minutes for HiGHS)."""
    return _nnz_estimate(rounds) > SLOW_EXACT_NNZ


def _nnz_estimate(rounds: Sequence[Round]) -> int:
    n = 0
    for r in rounds:
        X = np.asarray(r.features)
        n += int(np.count_nonzero(X[r.gold] != np.delete(X, r.gold, axis=0)))
    return n


def solve(
    rounds: Sequence[Round],
    S: float = 10.0,
    *,
    method: str = "exact",
    cache: bool = True,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = False,
) -> Comparator:
    """The comparator of ``rounds``, from the cache when the same rounds were solved before.

    Parameters
    ----------
    rounds : sequence of Round
    S : float, default=10.0
        Radius of the L∞ ball of comparators.
    method : {"exact", "approx"}, default="exact"
    cache : bool, default=True
        Read and write ``<cache_dir>/comparator/<key>.npz`` and an in-process memo.
    cache_dir : path-like, optional
        Default ``$BUDGETSFT_CACHE`` or ``~/.cache/budgetsft``.
    progress : bool, default=False
        On a terminal, show a bar on stderr while a solve takes more than two
        seconds (elapsed time for ``"exact"``, whose solver reports no
        progress; iterations for ``"approx"``), and say when the exact LP is
        large enough to take minutes.

    Returns
    -------
    Comparator
    """
    if method not in ("exact", "approx"):
        raise ConfigError(f"The 'comparator' method must be 'exact' or 'approx'. Got {method!r}.")
    T = len(rounds)
    if T == 0:
        return Comparator(0.0, 0.0, np.zeros(0), np.zeros(0), method, 0.0)
    key = content_key(rounds, S, method) if cache else None
    if key is not None:
        hit = _MEMO.get(key) or _read(_path(cache_dir, key), T)
        if hit is not None:
            _remember(key, hit)
            return Comparator(hit.loss, hit.lower, hit.theta.copy(), hit.per_round.copy(), hit.method,
                              hit.seconds, cached=True)
    Z, owner = pair_matrix(rounds)
    start = time.perf_counter()
    if method == "exact":
        if progress and Z.nnz > SLOW_EXACT_NNZ:
            print(f"comparator: exact LP over {Z.shape[0]:,} pairs x {Z.shape[1]:,} features ({Z.nnz:,} "
                  "nonzeros) may take minutes with HiGHS; '--comparator approx' gives a labelled first-order "
                  "bracket in seconds, '--no-comparator' skips it.", file=sys.stderr)
        with _Elapsed("comparator LP (HiGHS)", enabled=progress):
            theta = _exact(Z, owner, T, S)
        per_round = hinge_per_round(Z, owner, theta, T)
        loss = lower = float(per_round.sum())
    else:
        theta, lower = _approx(Z, owner, T, S, progress=progress)
        per_round = hinge_per_round(Z, owner, theta, T)
        loss = float(per_round.sum())
        lower = min(lower, loss)
    result = Comparator(loss, lower, theta, per_round, method, time.perf_counter() - start)
    if key is not None:
        _remember(key, result)
        _write(_path(cache_dir, key), result)
    return result


def _exact(Z: sparse.csr_matrix, owner: np.ndarray, T: int, S: float) -> np.ndarray:
    """θ* of the LP: minimise Σ ξ_t s.t. ξ_t >= 1 - ⟨θ, z_{t,a}⟩, ξ >= 0, -S <= θ_j <= S."""
    from scipy.optimize import linprog

    from budgetsft.exceptions import BudgetsftError

    m, d = Z.shape
    A = sparse.hstack([-Z, sparse.csr_matrix((-np.ones(m), (np.arange(m), owner)), shape=(m, T))])
    c = np.concatenate([np.zeros(d), np.ones(T)])
    bounds = [(-S, S)] * d + [(0, None)] * T
    res = linprog(c, A_ub=A.tocsr(), b_ub=-np.ones(m), bounds=bounds, method="highs-ipm")
    if res.status != 0:  # pragma: no cover - the LP is always feasible and bounded
        raise BudgetsftError(f"The comparator LP failed: {res.message}")
    return np.clip(res.x[:d], -S, S)


def _approx(Z: sparse.csr_matrix, owner: np.ndarray, T: int, S: float, *, progress: bool = False,
            mus: Sequence[float] = (1.0, 0.3, 0.1, 0.03, 0.01), iters: int = 300,
            rtol: float = 1e-3) -> tuple[np.ndarray, float]:
    """FISTA on the smoothed hinge with continuation in μ; returns (best θ, best dual lower bound).

    f_μ(θ) = Σ_t μ log(1 + Σ_a exp((1 - ⟨θ, z_{t,a}⟩)/μ)) >= Σ_t ℓ_t(θ); its gradient is
    -Zᵀp with p the soft-max weights, which are feasible LP duals. The step is 1/L with
    L = σ_max(Z)²/μ (power iteration). Stops when the bracket is within ``rtol``.
    """
    m, d = Z.shape
    Zt = Z.T.tocsr()
    starts = np.flatnonzero(np.r_[True, owner[1:] != owner[:-1]])
    sigma2 = _top_singular_sq(Z, Zt)
    theta = np.zeros(d)
    best_theta, best_upper, best_lower = theta.copy(), float(T), -math.inf  # θ = 0 has loss T
    bar = _bar(len(mus) * iters, "comparator (approx)", enabled=progress)
    try:
        for mu in mus:
            step = mu / max(sigma2, 1e-12)
            y, prev, t_k = theta.copy(), theta.copy(), 1.0
            for _ in range(iters):
                p = _softmax_weights(1.0 - Z @ y, starts, mu)
                theta = np.clip(y + step * (Zt @ p), -S, S)
                t_next = (1.0 + math.sqrt(1.0 + 4.0 * t_k * t_k)) / 2.0
                y = theta + ((t_k - 1.0) / t_next) * (theta - prev)
                prev, t_k = theta, t_next
                # the dual value of these weights bounds the optimum from below
                best_lower = max(best_lower, float(p.sum() - S * np.abs(Zt @ p).sum()))
                upper = float(hinge_per_round(Z, owner, theta, T).sum())
                if upper < best_upper:
                    best_upper, best_theta = upper, theta.copy()
                if bar is not None:
                    bar.update(1)
                if best_upper - best_lower <= rtol * max(1.0, best_upper):
                    return best_theta, best_lower
    finally:
        if bar is not None:
            bar.close()
    return best_theta, best_lower


def _softmax_weights(v: np.ndarray, starts: np.ndarray, mu: float) -> np.ndarray:
    """p_{t,a} = exp(v_{t,a}/μ) / (1 + Σ_a' exp(v_{t,a'}/μ)) within each round's segment, stably."""
    s = v / mu
    top = np.maximum(np.maximum.reduceat(s, starts), 0.0)
    seg = np.repeat(np.arange(len(starts)), np.diff(np.r_[starts, len(s)]))
    e = np.exp(s - top[seg])
    denom = np.exp(-top) + np.add.reduceat(e, starts)
    return e / denom[seg]


def _top_singular_sq(Z: sparse.csr_matrix, Zt: sparse.csr_matrix, n_iter: int = 30) -> float:
    """σ_max(Z)² by power iteration on ZᵀZ (seeded, so the result is deterministic), padded by 1 %."""
    v = np.random.default_rng(0).standard_normal(Z.shape[1])
    lam = 0.0
    for _ in range(n_iter):
        w = Zt @ (Z @ v)
        lam = float(np.linalg.norm(w))
        if lam == 0.0:
            return 0.0
        v = w / lam
    return 1.01 * lam


class _Elapsed:
    """A stderr bar that shows elapsed time while a call that reports no progress runs (after 2 s)."""

    def __init__(self, what: str, *, enabled: bool, delay: float = 2.0) -> None:
        self.what, self.enabled, self.delay = what, enabled and sys.stderr.isatty(), delay
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _tick(self) -> None:
        if self._stop.wait(self.delay):
            return
        from tqdm.auto import tqdm

        with tqdm(desc=self.what, total=None, file=sys.stderr, bar_format="{desc}: {elapsed} elapsed",
                  leave=False) as bar:
            while not self._stop.wait(1.0):
                bar.refresh()

    def __enter__(self) -> _Elapsed:
        if self.enabled:
            self._thread = threading.Thread(target=self._tick, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


def _bar(total: int, what: str, *, enabled: bool):
    if not (enabled and sys.stderr.isatty()):
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=what, file=sys.stderr, leave=False, delay=2.0)


def _path(cache_dir: str | os.PathLike | None, key: str) -> Path:
    from budgetsft.features.models import default_cache_dir

    return default_cache_dir(cache_dir) / "comparator" / f"{key}.npz"


def _remember(key: str, value: Comparator) -> None:
    _MEMO[key] = value
    _MEMO.move_to_end(key)
    while len(_MEMO) > _MEMO_SIZE:
        _MEMO.popitem(last=False)


def _read(path: Path, T: int) -> Comparator | None:
    """A disk entry, or None when missing or unreadable (a bad entry is recomputed, never trusted)."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            per_round = np.asarray(z["per_round"], dtype=np.float64)
            if per_round.shape != (T,):
                return None
            return Comparator(float(z["loss"]), float(z["lower"]), np.asarray(z["theta"], dtype=np.float64),
                              per_round, str(z["method"]), float(z["seconds"]))
    except (OSError, ValueError, KeyError, EOFError):
        return None


def _write(path: Path, value: Comparator) -> None:
    """Write atomically (temp file + rename); a read-only cache is not an error."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as fh:
            np.savez(fh, loss=value.loss, lower=value.lower, theta=value.theta, per_round=value.per_round,
                     method=value.method, seconds=value.seconds)
        os.replace(tmp, path)
    except OSError:
        pass
