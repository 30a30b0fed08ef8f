"""The hindsight comparator of the Stackelberg regret, solved once per stream (SPEC §5).

min_{||θ||_∞ <= S} Σ_t ℓ_t(θ), ℓ_t(θ) = max_{a != y*_t} (1 - ⟨θ, φ(y*_t) - φ(a)⟩)_+,
depends on the rounds only (features and gold labels), never on the gate or
the learner. :func:`solve` therefore keys it by the content of the rounds and
caches it, in memory and on disk, so that every (gate, β) cell of a sweep that
plays the same stream reuses one solve.

Methods, the one that produced a number always named in the result:

* ``"exact"`` -- the linear program, solved by HiGHS
  (:func:`budgetsft.regret.comparator_loss`); dual simplex on small LPs, the
  interior point method above :data:`IPM_NNZ` nonzeros;
* ``"approx"`` -- a first-order bracket: box-constrained L-BFGS-B on the
  hinge smoothed by a log-sum-exp of temperature μ, with μ decreasing.
  ``loss`` is the exact hinge loss Σ_t ℓ_t(θ̂) of the best iterate θ̂, an upper
  bound on the optimum; ``lower`` is the LP dual value of the smoothed
  problem's soft-max weights, a certified lower bound (weak duality: for any
  α >= 0 with Σ_a α_{t,a} <= 1, Σ α - S ||Σ α z||_1 <= optimum). The
  Stackelberg regret computed with ``loss`` is therefore a lower bound on the
  exact one, off by at most ``loss - lower``;
* ``"auto"`` (the config default) -- HiGHS on small LPs; on larger ones the
  bracket first, reported as ``"exact"`` when it closes (a duality
  certificate: bbc-news, 6 s against HiGHS's 71 s), else HiGHS up to
  :data:`SLOW_EXACT_NNZ` nonzeros, else the bracket as ``"approx"`` with a
  :class:`SlowComparatorWarning`.

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
import warnings
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import sparse

from budgetsft.base import Round
from budgetsft.exceptions import BudgetsftWarning, ConfigError

__all__ = ["Comparator", "SlowComparatorWarning", "ComparatorCacheWarning",
           "METHODS", "solve", "content_key", "stream_digest", "pair_matrix",
           "hinge_per_round", "IPM_NNZ", "SLOW_EXACT_NNZ", "CERTIFIED_RTOL"]

METHODS = ("auto", "exact", "approx", "none")
# Nonzeros of the pair matrix above which HiGHS takes many minutes on one core. Measured on the
# 2-core machine, shared: bbc-news (1,702 rounds, block features) has 5.2 M and solves in 71 s;
# sarcasm (22,798 rounds) has 17.6 M and takes 452 s, where "approx" takes 59 s with a bracket
# of 0.5 % around it. "auto" switches to "approx" above this size, and says so.
SLOW_EXACT_NNZ = 8_000_000
IPM_NNZ = 1_000_000
# A bracket this tight (relative to max(1, loss)) certifies the optimum as well as the LP solver's tolerance.
CERTIFIED_RTOL = 1e-6
_VERSION = "comparator-v1"  # bump when a method's numbers change: old disk entries are then ignored
_MEMO: OrderedDict[str, Comparator] = OrderedDict()
_MEMO_SIZE = 8


class SlowComparatorWarning(BudgetsftWarning):
    """The exact comparator LP is large enough to take minutes."""


class ComparatorCacheWarning(BudgetsftWarning):
    """A comparator disk entry was damaged or did not match its stream; it is recomputed."""


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


def stream_digest(rounds: Sequence[Round]) -> str:
    """SHA-256 of every round's features and gold: the part of the key that is the same for every method."""
    h = hashlib.sha256(f"{len(rounds)}".encode())
    for r in rounds:
        X = np.ascontiguousarray(r.features, dtype=np.float64)
        h.update(f"{X.shape}|{int(r.gold)};".encode())
        h.update(X.tobytes())
    return h.hexdigest()


def content_key(rounds: Sequence[Round], S: float, method: str, digest: str | None = None) -> str:
    """SHA-256 of what the comparator depends on: every round's features and gold, S and the method.

    ``digest``: the rounds' :func:`stream_digest`, when already known (the features are then not read again).
    """
    digest = stream_digest(rounds) if digest is None else digest
    return hashlib.sha256(f"{_VERSION}|{method}|{float(S)!r}|{len(rounds)}|{digest}".encode()).hexdigest()[:32]


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
    digest: str | None = None,
) -> Comparator:
    """The comparator of ``rounds``, from the cache when the same rounds were solved before.

    Parameters
    ----------
    rounds : sequence of Round
    S : float, default=10.0
        Radius of the L∞ ball of comparators.
    method : {"auto", "exact", "approx"}, default="exact"
        ``"auto"``: HiGHS up to :data:`IPM_NNZ` nonzeros in the pair matrix;
        above, the first-order bracket, reported as ``"exact"`` when it closes
        to :data:`CERTIFIED_RTOL` (a duality certificate), else HiGHS up to
        :data:`SLOW_EXACT_NNZ` nonzeros and the bracket (``"approx"``, with a
        :class:`SlowComparatorWarning`) above. The result's ``method`` says
        which number it is.
    cache : bool, default=True
        Read and write ``<cache_dir>/comparator/<key>.npz`` and an in-process memo.
    cache_dir : path-like, optional
        Default ``$BUDGETSFT_CACHE`` or ``~/.cache/budgetsft``.
    progress : bool, default=False
        On a terminal, show a bar on stderr while a solve takes more than two
        seconds (elapsed time for ``"exact"``, whose solver reports no
        progress; iterations for ``"approx"``), and say when the exact LP is
        large enough to take minutes.
    digest : str, optional
        The rounds' :func:`stream_digest`, when the caller already has it
        (the cache key is then computed without reading the features again).

    Returns
    -------
    Comparator
    """
    if method not in ("auto", "exact", "approx"):
        raise ConfigError(f"The 'comparator' method must be 'auto', 'exact' or 'approx'. Got {method!r}.")
    T = len(rounds)
    if T == 0:
        return Comparator(0.0, 0.0, np.zeros(0), np.zeros(0), "exact", 0.0)
    if method == "auto":
        return _auto(rounds, S, cache=cache, cache_dir=cache_dir, progress=progress, digest=digest)
    key = content_key(rounds, S, method, digest) if cache else None
    if key is not None:
        hit = _MEMO.get(key) or _read(_path(cache_dir, key), rounds, S, method, key)
        if hit is not None:
            _remember(key, hit)
            return Comparator(hit.loss, hit.lower, hit.theta.copy(), hit.per_round.copy(), hit.method,
                              hit.seconds, cached=True)
    Z, owner = pair_matrix(rounds)
    start = time.perf_counter()
    if method == "exact":
        if Z.nnz > SLOW_EXACT_NNZ:
            warnings.warn(f"The exact comparator LP over {Z.shape[0]:,} pairs x {Z.shape[1]:,} features "
                          f"({Z.nnz:,} nonzeros) may take minutes with HiGHS (solved once per stream, then "
                          "cached); 'comparator: approx' (--comparator approx) gives a labelled first-order "
                          "bracket in seconds, 'comparator: none' (--no-comparator) skips it.",
                          SlowComparatorWarning, stacklevel=2)
        # HiGHS (through scipy) reports no progress, so no ETA: the bar shows the LP's size and the time elapsed.
        solver = "interior point" if Z.nnz > IPM_NNZ else "dual simplex"
        with _Elapsed(f"comparator LP (HiGHS {solver}, {Z.shape[0]:,} pairs x {Z.shape[1]:,} features, "
                      f"{Z.nnz / 1e6:.1f} M nonzeros)", enabled=progress):
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
        _write(_path(cache_dir, key), result, key)
    return result


def _auto(rounds: Sequence[Round], S: float, **kw) -> Comparator:
    """Small LPs: HiGHS. Larger ones: the first-order bracket first; when it closes to :data:`CERTIFIED_RTOL`
    its value is the optimum (weak duality) and is reported as ``"exact"``. Otherwise HiGHS below
    :data:`SLOW_EXACT_NNZ` nonzeros, the bracket above (``"approx"``, with a warning)."""
    nnz = _nnz_estimate(rounds)
    if kw["cache"] and kw["digest"] is None:  # the features are hashed once, for the methods tried below
        kw["digest"] = stream_digest(rounds)
    if nnz <= IPM_NNZ:
        return solve(rounds, S, method="exact", **kw)
    approx = solve(rounds, S, method="approx", **kw)
    if approx.loss - approx.lower <= CERTIFIED_RTOL * max(1.0, approx.loss):
        return Comparator(approx.loss, approx.lower, approx.theta, approx.per_round, "exact", approx.seconds,
                          approx.cached)
    if nnz <= SLOW_EXACT_NNZ:
        return solve(rounds, S, method="exact", **kw)
    warnings.warn(f"comparator: the exact LP of this stream ({nnz:,} nonzeros) would take many minutes; "
                  "reporting the first-order bracket instead, labelled 'approx' (the Stackelberg regret is then "
                  f"a lower bound, off by at most {approx.loss - approx.lower:.4g}). 'comparator: exact' "
                  "(--comparator exact) solves the LP.", SlowComparatorWarning, stacklevel=3)
    return approx


def _exact(Z: sparse.csr_matrix, owner: np.ndarray, T: int, S: float) -> np.ndarray:
    """θ* of the LP: minimise Σ ξ_t s.t. ξ_t >= 1 - ⟨θ, z_{t,a}⟩, ξ >= 0, -S <= θ_j <= S."""
    from scipy.optimize import linprog

    from budgetsft.exceptions import BudgetsftError

    m, d = Z.shape
    A = sparse.hstack([-Z, sparse.csr_matrix((-np.ones(m), (np.arange(m), owner)), shape=(m, T))])
    c = np.concatenate([np.zeros(d), np.ones(T)])
    bounds = [(-S, S)] * d + [(0, None)] * T
    # Dual simplex wins on small LPs, the interior point method (with crossover) on large ones:
    # 21 s against 4 s on 400 bbc-news rounds (1.2 M nonzeros), and minutes against 71 s on all 1,702.
    res = linprog(c, A_ub=A.tocsr(), b_ub=-np.ones(m), bounds=bounds,
                  method="highs-ipm" if Z.nnz > IPM_NNZ else "highs")
    if res.status != 0:  # pragma: no cover - the LP is always feasible and bounded
        raise BudgetsftError(f"The comparator LP failed: {res.message}")
    return np.clip(res.x[:d], -S, S)


def _approx(Z: sparse.csr_matrix, owner: np.ndarray, T: int, S: float, *, progress: bool = False,
            mus: Sequence[float] = (1.0, 0.3, 0.1, 0.03, 0.01, 0.003), maxiter: int = 500,
            rtol: float | None = None) -> tuple[np.ndarray, float]:
    """Box-constrained L-BFGS-B on the smoothed hinge, with continuation in μ; returns (best θ, best lower bound).

    f_μ(θ) = Σ_t μ log(1 + Σ_a exp((1 - ⟨θ, z_{t,a}⟩)/μ)) >= Σ_t ℓ_t(θ); its gradient is
    -Zᵀp with p the soft-max weights, which are feasible LP duals, so every stage's
    p gives the lower bound Σ p - S ||Zᵀp||_1. Each stage starts where the last one
    stopped; it stops early when the bracket is within ``rtol`` (default :data:`CERTIFIED_RTOL`).
    """
    rtol = CERTIFIED_RTOL if rtol is None else rtol
    from scipy.optimize import minimize

    Zt = Z.T.tocsr()
    starts = np.flatnonzero(np.r_[True, owner[1:] != owner[:-1]])
    theta = np.zeros(Z.shape[1])
    best_theta, best_upper, best_lower = theta.copy(), float(T), -math.inf  # θ = 0 has loss T
    bounds = [(-S, S)] * Z.shape[1]
    bar = _bar(len(mus), "comparator (approx) stages", enabled=progress)
    try:
        for mu in mus:
            def objective(th: np.ndarray, mu: float = mu) -> tuple[float, np.ndarray]:
                value, p = _smoothed(1.0 - Z @ th, starts, mu)
                return value, -(Zt @ p)

            theta = minimize(objective, theta, jac=True, method="L-BFGS-B", bounds=bounds,
                             options={"maxiter": maxiter}).x
            _, p = _smoothed(1.0 - Z @ theta, starts, mu)
            best_lower = max(best_lower, float(p.sum() - S * np.abs(Zt @ p).sum()))
            upper = float(hinge_per_round(Z, owner, theta, T).sum())
            if upper < best_upper:
                best_upper, best_theta = upper, theta.copy()
            if bar is not None:
                bar.update(1)
            if best_upper - best_lower <= rtol * max(1.0, best_upper):
                break
    finally:
        if bar is not None:
            bar.close()
    return best_theta, best_lower


def _smoothed(v: np.ndarray, starts: np.ndarray, mu: float) -> tuple[float, np.ndarray]:
    """Σ_t μ log(1 + Σ_a exp(v_{t,a}/μ)) over each round's segment of v, and the soft-max weights
    p_{t,a} = exp(v_{t,a}/μ) / (1 + Σ_a' exp(v_{t,a'}/μ)), computed stably."""
    s = v / mu
    top = np.maximum(np.maximum.reduceat(s, starts), 0.0)
    seg = np.repeat(np.arange(len(starts)), np.diff(np.r_[starts, len(s)]))
    e = np.exp(s - top[seg])
    denom = np.exp(-top) + np.add.reduceat(e, starts)
    return mu * float(np.sum(top + np.log(denom))), e / denom[seg]


class _Elapsed:
    """A stderr bar that shows elapsed time while a call that reports no progress runs (after 2 s)."""

    def __init__(self, what: str, *, enabled: bool, delay: float = 2.0, file=None) -> None:
        self.file = file if file is not None else sys.stderr
        self.what, self.enabled, self.delay = what, enabled and self.file.isatty(), delay
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _tick(self) -> None:
        if self._stop.wait(self.delay):
            return
        from tqdm.auto import tqdm

        with tqdm(desc=self.what, total=None, file=self.file, bar_format="{desc}: {elapsed} elapsed",
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
    from budgetsft.data.builtin import default_cache_dir  # the same cache root as features/, one layer down

    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    return root / "comparator" / f"{key}.npz"


def _remember(key: str, value: Comparator) -> None:
    _MEMO[key] = value
    _MEMO.move_to_end(key)
    while len(_MEMO) > _MEMO_SIZE:
        _MEMO.popitem(last=False)


def _read(path: Path, rounds: Sequence[Round], S: float, method: str, key: str) -> Comparator | None:
    """A disk entry, or None when missing, unreadable or not consistent with its stream.

    A bad entry is recomputed, never trusted (a :class:`ComparatorCacheWarning`
    says so): it must load without pickles, name its key and method, and hold
    a θ in the box whose hinge losses on these rounds are the stored
    ``per_round``, which sum to ``loss``, with 0 <= lower <= loss <= T (T is
    the loss of θ = 0: every ℓ_t(0) = 1).
    """
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            entry = {name: np.asarray(z[name]) for name in ("loss", "lower", "theta", "per_round", "method",
                                                            "seconds")}
            stored_key = str(z["key"]) if "key" in z.files else None
        why = _invalid(entry, stored_key, rounds, S, method, key)
    except Exception as exc:  # noqa: BLE001 - a damaged file fails in zipfile, zlib, numpy, ...: all mean recompute
        why = f"unreadable: {type(exc).__name__}: {str(exc)[:100]}{'…' if len(str(exc)) > 100 else ''}"
    if why is not None:
        warnings.warn(f"comparator cache entry {path} is damaged or does not match its stream ({why}); "
                      "recomputing it.", ComparatorCacheWarning, stacklevel=3)
        return None
    return Comparator(float(entry["loss"]), float(entry["lower"]), entry["theta"].astype(np.float64),
                      entry["per_round"].astype(np.float64), str(entry["method"]), float(entry["seconds"]))


def _invalid(entry: dict, stored_key: str | None, rounds: Sequence[Round], S: float, method: str,
             key: str) -> str | None:
    """Why a loaded entry cannot be the comparator of ``rounds`` (None when it can)."""
    T = len(rounds)
    for name in ("loss", "lower", "seconds"):
        a = entry[name]
        if a.shape != () or a.dtype.kind not in "fiu" or not np.isfinite(a):
            return f"'{name}' is not a finite number"
    if entry["method"].shape != () or entry["method"].dtype.kind != "U":
        return "'method' is not a string"
    if stored_key is not None and stored_key != key:
        return "its key is another stream's"
    if str(entry["method"]) != method:
        return f"method {str(entry['method'])!r}, expected {method!r}"
    theta, per_round = entry["theta"], entry["per_round"]
    d = np.asarray(rounds[0].features).shape[1]
    if theta.shape != (d,) or theta.dtype.kind != "f" or not np.all(np.isfinite(theta)):
        return f"'theta' is not {d} finite numbers"
    if np.any(np.abs(theta) > S * (1 + 1e-9) + 1e-9):
        return f"'theta' leaves the box |θ_j| <= S = {S:g}"
    if per_round.shape != (T,) or per_round.dtype.kind != "f" or not np.all(np.isfinite(per_round)):
        return f"'per_round' is not {T} finite numbers"
    loss, lower = float(entry["loss"]), float(entry["lower"])
    tol = 1e-6 * max(1.0, abs(loss))
    if not (-tol <= loss <= T + tol):
        return f"loss {loss:g} is outside [0, T = {T}]"
    if lower > loss + tol or (method == "exact" and abs(lower - loss) > tol):
        return f"lower bound {lower:g} does not fit loss {loss:g}"
    if abs(float(per_round.sum()) - loss) > tol:
        return "'per_round' does not sum to 'loss'"
    if not np.allclose(per_round, _hinge_of(rounds, theta), rtol=1e-7, atol=1e-7):
        return "'per_round' is not the hinge loss of 'theta' on these rounds"
    return None


def _hinge_of(rounds: Sequence[Round], theta: np.ndarray) -> np.ndarray:
    """ℓ_t(θ) round by round, without the pair matrix (a check of a cached entry)."""
    out = np.zeros(len(rounds))
    for t, r in enumerate(rounds):
        X = np.asarray(r.features, dtype=np.float64)
        if X.shape[0] < 2:
            continue
        scores = X @ theta
        margins = 1.0 - (scores[r.gold] - np.delete(scores, r.gold))
        out[t] = max(0.0, float(margins.max()))
    return out


def _write(path: Path, value: Comparator, key: str) -> None:
    """Write atomically (temp file + rename); a read-only cache is not an error."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as fh:
            np.savez(fh, loss=value.loss, lower=value.lower, theta=value.theta, per_round=value.per_round,
                     method=value.method, seconds=value.seconds, key=key)
        os.replace(tmp, path)
    except OSError:
        pass
