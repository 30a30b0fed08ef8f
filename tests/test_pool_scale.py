"""LLF pool mode at scale: the vectorised select_pool buys what the old one bought, in the same order.

The oracle is the old implementation itself (``tests/_pool_reference.py``), run on the same pools
with a fresh learner, not hard-coded indices: on small random pools (several K per item, label
prices, batch sizes, require_late, every covariance learner) both must buy the same items in the
same order, which also leaves the learners in the same state.
"""

from __future__ import annotations

import math
import tracemalloc

import numpy as np
import pytest
from _pool_reference import reference_select_pool

from budgetsft.budget import Budget
from budgetsft.exceptions import ConfigError, DataError
from budgetsft.gates import select_pool
from budgetsft.learners import AROWLearner, LogisticLearner, OGDLearner, RidgeLearner

LEARNERS = {
    "ridge-auto": lambda: RidgeLearner(),
    "ridge-rho1": lambda: RidgeLearner(radius=1.0),
    "logistic": lambda: LogisticLearner(),
    "logistic-all": lambda: LogisticLearner(update="all", radius=0.5),
    "arow": lambda: AROWLearner(),
}


def _pool(n: int, d: int, K: int | tuple[int, int], seed: int, dtype=np.float64):
    """Gaussian candidates (scaled by 1/sqrt(d)), gold from a hidden linear model."""
    rng = np.random.default_rng(seed)
    theta = rng.standard_normal(d)
    pool, gold = [], []
    for _ in range(n):
        k = K if isinstance(K, int) else int(rng.integers(K[0], K[1] + 1))
        X = (rng.standard_normal((k, d)) / math.sqrt(d)).astype(dtype)
        pool.append(X)
        gold.append(int(np.argmax(X.astype(np.float64) @ theta + 0.3 * rng.standard_normal(k))))
    return pool, gold


def _both(make_learner, pool, gold, total, *, unit="labels", costs=None, new_pool=None, **kw):
    """(reference picks, new picks, reference learner, new learner, progress calls of the new run)."""
    ref_learner, new_learner = make_learner(), make_learner()
    ref = reference_select_pool(ref_learner, pool, Budget(total, unit), gold.__getitem__, costs=costs, **kw)
    calls: list[int] = []
    asked: list[int] = []

    def label(i):
        asked.append(i)
        return gold[i]

    new = select_pool(new_learner, pool if new_pool is None else new_pool, Budget(total, unit), label,
                      costs=costs, progress=calls.append, **kw)
    assert new == asked  # labels are bought in purchase order, once each
    return ref, new, ref_learner, new_learner, calls


CASES = [
    # (n, d, K, budget, batch_size, learner)
    (40, 6, 4, 12, 1, "ridge-auto"),
    (40, 6, 4, 12, 8, "ridge-auto"),
    (60, 5, 2, 20, 5, "ridge-rho1"),
    (50, 8, 5, 17, 3, "logistic"),
    (70, 4, (1, 6), 25, 4, "logistic"),
    (45, 7, (2, 4), 30, 8, "logistic-all"),
    (30, 3, 3, 30, 7, "arow"),  # the whole pool
    (35, 6, (1, 3), 20, 6, "ridge-auto"),
]


@pytest.mark.parametrize(("n", "d", "K", "total", "batch_size", "name"), CASES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_same_picks_as_the_reference(n, d, K, total, batch_size, name, seed):
    pool, gold = _pool(n, d, K, seed)
    ref, new, ref_learner, new_learner, calls = _both(LEARNERS[name], pool, gold, float(total),
                                                      batch_size=batch_size)
    assert new == ref
    assert calls == list(range(1, len(new) + 1))
    np.testing.assert_array_equal(new_learner.coef_, ref_learner.coef_)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("batch_size", [1, 4, 9])
def test_same_picks_with_label_prices(seed, batch_size):
    pool, gold = _pool(60, 5, (2, 5), seed)
    rng = np.random.default_rng(100 + seed)
    costs = rng.choice([0.0, 0.1, 0.5, 1.0, 2.5, 3.0], size=len(pool)).tolist()
    ref, new, *_ = _both(LEARNERS["logistic"], pool, gold, 9.7, unit="cost", costs=costs, batch_size=batch_size)
    assert new == ref
    assert math.fsum(costs[i] for i in new) <= 9.7


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("tau", [0.0, 0.05])
def test_same_picks_with_require_late(seed, tau):
    pool, gold = _pool(80, 6, 4, seed)
    ref, new, *_ = _both(lambda: RidgeLearner(radius=0.3), pool, gold, 60.0, batch_size=6,
                         require_late=True, tau=tau)
    assert new == ref
    assert len(new) < 60  # it stopped early: the case exercises the stop


def test_same_picks_on_float32_pools_and_stacked_arrays():
    pool, gold = _pool(50, 6, 4, 5, dtype=np.float32)
    stacked = np.stack(pool)  # (n, K, d) float32: used as it is, no copy
    for new_pool in (None, stacked):
        ref, new, *_ = _both(LEARNERS["ridge-auto"], pool, gold, 15.0, batch_size=4, new_pool=new_pool)
        assert new == ref


def test_ties_go_to_the_lowest_index_as_in_the_reference():
    """Exact copies of orthogonal items: every latency ties with its copies, and conditioning on one
    copy leaves the other directions' latencies exactly unchanged."""
    basis = np.eye(4)
    items = [np.stack([basis[j], -basis[j], np.zeros(4)]) for j in range(4)]
    pool = [items[i % 4].copy() for i in range(16)]
    gold = [0] * 16
    for batch_size in (1, 3, 8):
        ref, new, *_ = _both(lambda: RidgeLearner(radius=1.0), pool, gold, 10.0, batch_size=batch_size)
        assert new == ref


def test_items_without_an_alternative_are_never_bought():
    """K_i = 1: no pair, no latency. Once only such items are left the selection ends (the old
    implementation raised an IndexError there, on an empty pair list)."""
    pool, gold = _pool(30, 4, (1, 3), 0)
    with_pair = {i for i, X in enumerate(pool) if X.shape[0] > 1}
    assert 0 < len(with_pair) < 30
    bought = select_pool(RidgeLearner(), pool, Budget(30.0), gold.__getitem__, batch_size=4)
    assert set(bought) == with_pair


def test_small_chunks_change_nothing(monkeypatch):
    """The pool is processed in chunks of items; a chunk of one item buys the same labels."""
    from budgetsft.gates import llf

    pool, gold = _pool(40, 5, (2, 4), 3)
    ref, *_ = _both(LEARNERS["logistic"], pool, gold, 14.0, batch_size=4)
    monkeypatch.setattr(llf, "_POOL_CHUNK_BYTES", 1)
    new = select_pool(LogisticLearner(), pool, Budget(14.0), gold.__getitem__, batch_size=4)
    assert new == ref


class _ApplyOnly:
    """A covariance learner seen only through apply_P (as a sketched learner is): no P_ attribute."""

    def __init__(self) -> None:
        self._inner = RidgeLearner()

    def score_many(self, X):
        return self._inner.score_many(X)

    def learn_one(self, X, gold, alternative):
        self._inner.learn_one(X, gold, alternative)

    def current_radius(self):
        return self._inner.current_radius()

    def apply_P(self, Y):
        return np.asarray(Y, dtype=np.float64) @ self._inner.P_


def test_a_learner_with_apply_P_only_picks_the_same():
    pool, gold = _pool(40, 5, 3, 4)
    ref = reference_select_pool(RidgeLearner(), pool, Budget(15.0), gold.__getitem__, batch_size=4)
    learner = _ApplyOnly()
    assert not hasattr(learner, "P_")
    assert select_pool(learner, pool, Budget(15.0), gold.__getitem__, batch_size=4) == ref


def test_the_sketch_learner_picks_as_its_dense_covariance_would():
    """SketchLearner has no P_, only apply_P; the old implementation, given the dense P̂ it implies,
    buys the same items."""
    try:
        from budgetsft.learners import SketchLearner
    except ImportError:  # pragma: no cover - the sketch learner is optional here
        pytest.skip("no SketchLearner")

    class Dense:
        def __init__(self):
            self.inner = SketchLearner(rank=4)

        def __getattr__(self, name):
            return getattr(self.inner, name)

        @property
        def P_(self):
            return self.inner.apply_P(np.eye(self.inner.d_))

    pool, gold = _pool(40, 6, 4, 6)
    ref = reference_select_pool(Dense(), pool, Budget(16.0), gold.__getitem__, batch_size=4)
    sketch = SketchLearner(rank=4)
    assert not hasattr(sketch, "P_")
    bought = select_pool(sketch, pool, Budget(16.0), gold.__getitem__, batch_size=4)
    assert not hasattr(sketch, "P_") and bought == ref


def test_pool_mode_needs_a_covariance_learner():
    pool, gold = _pool(10, 3, 3, 0)
    with pytest.raises(ConfigError, match="OGDLearner.*covariance"):
        select_pool(OGDLearner(), pool, Budget(3.0), gold.__getitem__)


def test_pool_items_must_share_d():
    pool, gold = _pool(10, 3, 3, 0)
    pool[4] = np.zeros((3, 4))
    with pytest.raises(DataError, match="item 4"):
        select_pool(RidgeLearner(), pool, Budget(3.0), gold.__getitem__)


def test_peak_memory_stays_near_the_pool(monkeypatch):
    """No (n·K, d) float64 copy of the pool: the working set beyond a stacked float32 pool is a few
    per-pair vectors and blocks of one chunk of items (1 MiB of candidates here)."""
    from budgetsft.gates import llf

    monkeypatch.setattr(llf, "_POOL_CHUNK_BYTES", 1 << 20)
    n, K, d = 12000, 5, 96
    rng = np.random.default_rng(0)
    pool = (rng.standard_normal((n, K, d)) / math.sqrt(d)).astype(np.float32)
    theta = rng.standard_normal(d)
    gold = np.argmax(pool @ theta.astype(np.float32), axis=1)
    pair_f64 = n * (K - 1) * d * 8  # what one (n·(K-1), d) float64 pair matrix would take
    learner = RidgeLearner()
    learner.score_many(pool[0])  # P_ (d × d) is allocated before the measurement
    tracemalloc.start()
    try:
        bought = select_pool(learner, pool, Budget(24.0), lambda i: int(gold[i]), batch_size=8)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(bought) == 24
    assert peak < pair_f64 / 4, f"peak {peak / 2**20:.1f} MiB vs one pair matrix {pair_f64 / 2**20:.1f} MiB"


def test_adapt_pool_selection_shows_a_progress_bar(capsys):
    """select_labels(mode="pool", progress=True) draws a tqdm bar over the labels bought, on stderr."""
    from types import SimpleNamespace

    from _streams import random_stream

    from budgetsft.adapt.pipeline import select_labels
    from budgetsft.data import Example

    rounds = random_stream(100, 5, 4, 0)
    train, test = rounds[:80], rounds[80:]
    examples = [Example(id=r.id, prompt="q", candidates=("a", "b", "c", "d"), answer=r.gold) for r in train]
    streams = SimpleNamespace(train=train, test=test, dataset=SimpleNamespace(train=examples))
    sets = select_labels(streams, "llf", 0.1, mode="pool", baselines=(), progress=True)
    assert len(sets["llf"]["ids"]) == 8
    err = capsys.readouterr().err
    assert "llf pool selection" in err and "/8 " in err  # a bar over B = 8 labels
    select_labels(streams, "llf", 0.1, mode="pool", baselines=())
    assert capsys.readouterr().err == ""  # quiet by default


def test_adapt_pool_selection_with_an_audit_share_spends_the_same_budget():
    """mode="pool" with an audit: ⌊εB + ½⌋ uniform picks first, the gate picks the rest; B in all, seeded."""
    from types import SimpleNamespace

    from _streams import random_stream

    from budgetsft.adapt.pipeline import select_labels
    from budgetsft.data import Example

    rounds = random_stream(300, 5, 4, 0)
    train, test = rounds[:250], rounds[250:]
    examples = [Example(id=r.id, prompt="q", candidates=("a", "b", "c", "d"), answer=r.gold) for r in train]
    streams = SimpleNamespace(train=train, test=test, dataset=SimpleNamespace(train=examples))
    plain = select_labels(streams, "llf", 0.2, mode="pool", baselines=())["llf"]
    sets = select_labels(streams, "llf", 0.2, mode="pool", baselines=(), audit=0.25, seed=1)["llf"]
    assert len(plain["ids"]) == len(sets["ids"]) == 50 and plain["audit_ids"] == []
    assert len(sets["audit_ids"]) == 13 and set(sets["audit_ids"]) <= set(sets["ids"])  # ⌊0.25 · 50 + ½⌋
    assert len(set(sets["ids"])) == 50  # no item bought twice
    again = select_labels(streams, "llf", 0.2, mode="pool", baselines=(), audit=0.25, seed=1)["llf"]
    assert again["ids"] == sets["ids"] and again["audit_ids"] == sets["audit_ids"]
    other = select_labels(streams, "llf", 0.2, mode="pool", baselines=(), audit=0.25, seed=2)["llf"]
    assert other["audit_ids"] != sets["audit_ids"]
