"""Block features held compactly (e(x) per example, expanded when read) give the same numbers, bit for bit.

``featurize`` returns block features as :class:`BlockFeatures`, ``load_streams`` wraps them in
:class:`CompactRounds`, and LLF pool selection reads them chunk by chunk: every path must give
exactly the arrays, picks, latencies and session picks that the expanded float64 lists gave, while
holding e(x) (h float32 numbers per example) instead of K·L·(h+1) float64 numbers.

No model is loaded: the encoder is replaced by deterministic unit float32 vectors (the packaged
all-MiniLM-L6-v2 config gives h = 384).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import tracemalloc

import numpy as np
import pytest
from test_feature_cache_compact import unit_vectors

from budgetsft.base import Round
from budgetsft.budget import Budget
from budgetsft.data.schema import Example
from budgetsft.exceptions import DataError
from budgetsft.features import featurize
from budgetsft.features.base import example_key
from budgetsft.features.block import BlockFeatures, BlockFeaturizer, _expand
from budgetsft.features.cache import MAGIC_V1, open_cache
from budgetsft.features.encoder import SentenceEncoder
from budgetsft.gates import select_pool
from budgetsft.gates.llf import pick_pool_batch
from budgetsft.learners import LogisticLearner, RidgeLearner
from budgetsft.realdata import CompactRounds, load_streams, to_rounds

LABELS = ("business", "entertainment", "politics", "sport", "tech")




@pytest.fixture
def fixed_encoder(monkeypatch):
    """Every SentenceEncoder embeds with unit_vectors (load_streams builds its own featuriser)."""
    monkeypatch.setattr(SentenceEncoder, "embed_many", lambda self, texts, progress=False: unit_vectors(texts))


def _featurizer() -> BlockFeaturizer:
    f = BlockFeaturizer(labels=LABELS, progress=False)
    f.encoder.embed_many = unit_vectors
    return f


def _examples(n: int, *, ragged: bool = False) -> list[Example]:
    out = []
    for i in range(n):
        cands = LABELS if not ragged or i % 3 else tuple(LABELS[j] for j in (i % 5, (i + 2) % 5))
        out.append(Example(f"t{i}", f"synthetic headline {i} about {LABELS[i % 5]}", cands, 0))
    return out


def _random_block(n: int, h: int, n_labels: int, seed: int, k: tuple[int, int] = (2, 4)):
    """Packed entries (e(x) then the blocks, float32), their row counts and the expanded arrays."""
    rng = np.random.default_rng(seed)
    packed, sizes, expanded = [], [], []
    for _ in range(n):
        kk = int(rng.integers(k[0], k[1] + 1))
        e = (rng.standard_normal(h) / math.sqrt(h)).astype(np.float32)
        b = rng.permutation(n_labels)[:kk]
        packed.append(np.concatenate([e, b]).astype(np.float32))
        sizes.append(kk)
        expanded.append(_expand(e, b, n_labels))
    return packed, sizes, expanded


def _same(a, b) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


# ---------------------------------------------------------------- BlockFeatures


def test_block_features_expand_as_unpack_does_and_slice_as_a_list():
    packed, sizes, expanded = _random_block(40, 7, 4, seed=0)
    feats = BlockFeatures.from_packed(packed, sizes, 4)
    f = BlockFeaturizer(labels=("a", "b", "c", "d"), progress=False)
    assert len(feats) == 40 and feats.dim == 4 * 8
    for i in range(40):
        assert _same(feats[i], expanded[i]) and _same(feats[i], f.unpack(packed[i], sizes[i]))
    assert _same(feats[-1], expanded[-1])
    part = feats[5:17]
    assert isinstance(part, BlockFeatures) and len(part) == 12
    assert all(_same(a, b) for a, b in zip(part, expanded[5:17], strict=True))
    assert len(feats[30:10]) == 0
    assert all(_same(a, b) for a, b in zip(feats[::7], expanded[::7], strict=True))
    with pytest.raises(IndexError):
        feats[40]
    with pytest.raises(TypeError):
        feats[1.5]


def test_block_rows_are_the_stacked_expansion():
    packed, sizes, expanded = _random_block(30, 5, 3, seed=1, k=(2, 3))
    X, starts = BlockFeatures.from_packed(packed, sizes, 3).stack_rows()
    full = np.concatenate(expanded)
    assert X.shape == full.shape and list(starts) == [0, *np.cumsum(sizes)]
    assert _same(X[4:50], full[4:50]) and _same(X[7], full[7]) and _same(X[np.int64(-1)], full[-1])
    idx = np.array([3, 3, 0, len(full) - 1])
    assert _same(X[idx], full[idx])


def test_from_packed_refuses_entries_that_do_not_hold_their_blocks():
    packed, sizes, _ = _random_block(5, 4, 3, seed=2, k=(2, 3))
    bad = [p.copy() for p in packed]
    bad[3][-1] = 7  # no 8th label
    with pytest.raises(ValueError, match="entry 3"):
        BlockFeatures.from_packed(bad, sizes, 3)
    with pytest.raises(ValueError, match="entry 2"):
        BlockFeatures.from_packed(packed, [*sizes[:2], sizes[2] - 1, *sizes[3:]], 3)


# ---------------------------------------------------------------- featurize


@pytest.mark.parametrize("ragged", [False, True])
def test_featurize_compact_equals_the_expanded_list_cold_cached_and_uncached(tmp_path, ragged):
    examples = _examples(30, ragged=ragged)
    examples.append(examples[4])  # a duplicate shares its entry
    want = featurize(examples, _featurizer(), use_cache=False, progress=False, compact=False).features
    assert isinstance(want, list)
    cold = featurize(examples, _featurizer(), cache_dir=tmp_path, progress=False)
    warm = featurize(examples, _featurizer(), cache_dir=tmp_path, progress=False)
    off = featurize(examples, _featurizer(), use_cache=False, progress=False)
    assert warm.n_cached == len(examples) and cold.n_computed == len(examples)
    for res in (cold, warm, off):
        assert isinstance(res.features, BlockFeatures) and res.dim == 5 * 385
        assert res.features.emb.dtype == np.float32 and res.features.emb.shape == (len(examples), 384)
        assert all(_same(a, b) for a, b in zip(res.features, want, strict=True))


def test_old_expanded_entries_are_packed_when_read(tmp_path):
    f = _featurizer()
    examples = _examples(6)
    want = featurize(examples, f, use_cache=False, progress=False, compact=False).features
    cache = open_cache(f, tmp_path)
    for ex, arr in zip(examples, want, strict=True):  # written as version 1 did: float64, expanded
        buf = io.BytesIO()
        np.save(buf, arr, allow_pickle=False)
        body = buf.getvalue()
        cache.path(example_key(ex)).parent.mkdir(parents=True, exist_ok=True)
        cache.path(example_key(ex)).write_bytes(MAGIC_V1 + hashlib.sha256(body).digest() + body)
    res = featurize(examples, f, cache_dir=tmp_path, progress=False)
    assert res.n_cached == 6 and isinstance(res.features, BlockFeatures)
    assert all(_same(a, b) for a, b in zip(res.features, want, strict=True))


def test_an_entry_that_does_not_pack_gives_the_expanded_list(tmp_path):
    """Not the featuriser's layout (a row in two blocks): stored whole, and the result is the plain list."""
    f = _featurizer()
    examples = _examples(3)
    featurize(examples, f, cache_dir=tmp_path, progress=False)
    odd = featurize(examples, f, use_cache=False, progress=False, compact=False).features[1].copy()
    odd[0, :385] = odd[0, 385:770] = 0.5
    open_cache(f, tmp_path).write(example_key(examples[1]), odd)
    res = featurize(examples, f, cache_dir=tmp_path, progress=False)
    assert isinstance(res.features, list) and res.n_cached == 3
    assert _same(res.features[1], odd)


# ---------------------------------------------------------------- pool selection


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("k", [(3, 3), (2, 4)])
def test_pick_pool_batch_on_compact_features_equals_the_expanded_pool(seed, k):
    packed, sizes, expanded = _random_block(300, 6, 4, seed=seed, k=k)
    feats = BlockFeatures.from_packed(packed, sizes, 4)
    pools = [expanded, [x.astype(np.float32) for x in expanded]]
    if k[0] == k[1]:
        pools.append(np.stack(expanded).astype(np.float32))
    rng = np.random.default_rng(seed)
    available = rng.random(300) > 0.2
    costs = list(rng.uniform(0.5, 2.0, 300))
    for budget, kw in ((Budget(12.0), {}), (Budget(9.0, "cost"), {"costs": costs})):
        learner = LogisticLearner()
        for i in range(5):  # a few labels, so that latencies differ
            s = learner.score_many(expanded[i])
            learner.learn_one(expanded[i], 0, int(np.argmax(s[1:]) + 1))
        got = pick_pool_batch(learner, feats, 10, available=available, budget=budget, condition_on=[7, 8], **kw)
        for pool in pools:
            want = pick_pool_batch(learner, pool, 10, available=available, budget=budget, condition_on=[7, 8], **kw)
            assert got[0] == want[0] and got[1] == want[1]  # same picks, same latencies (float ==)
        assert len(got[0]) >= 5


def test_select_pool_on_compact_features_buys_the_same_items():
    packed, sizes, expanded = _random_block(200, 6, 4, seed=3, k=(4, 4))
    feats = BlockFeatures.from_packed(packed, sizes, 4)
    theta = np.random.default_rng(3).standard_normal(feats.dim)
    gold = [int(np.argmax(x @ theta)) for x in expanded]
    runs = []
    for pool in (feats, expanded):
        learner = RidgeLearner()
        runs.append((select_pool(learner, pool, Budget(20.0), gold.__getitem__, batch_size=4), learner.P_.tobytes()))
    assert runs[0] == runs[1] and len(runs[0][0]) == 20


def test_a_compact_pool_is_never_expanded_whole(monkeypatch):
    """The pass reads the pool chunk by chunk (1 MiB of candidates here): its working set is far below
    the expanded float64 pool."""
    from budgetsft.gates import llf

    monkeypatch.setattr(llf, "_POOL_CHUNK_BYTES", 1 << 20)
    n_labels, h, n = 5, 32, 20000
    packed, sizes, _ = _random_block(n, h, n_labels, seed=4, k=(5, 5))
    feats = BlockFeatures.from_packed(packed, sizes, n_labels)
    expanded_bytes = n * 5 * feats.dim * 8  # 132 MB
    learner = LogisticLearner()
    learner.score_many(feats[0])  # P_ (d × d) is allocated before the measurement
    tracemalloc.start()
    try:
        picks, _ = pick_pool_batch(learner, feats, 20, available=np.ones(n, bool), budget=Budget(20.0))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(picks) == 20
    assert peak < expanded_bytes / 5, f"peak {peak / 2**20:.1f} MiB vs {expanded_bytes / 2**20:.1f} MiB expanded"


def test_a_compact_pool_without_rows_is_refused():
    class Broken(BlockFeatures):
        def stack_rows(self):
            X, starts = super().stack_rows()
            return X, starts[:-1]

    packed, sizes, _ = _random_block(5, 4, 3, seed=5, k=(2, 3))
    with pytest.raises(DataError, match="compact pool"):
        pick_pool_batch(RidgeLearner(), Broken.from_packed(packed, sizes, 3), 2, available=np.ones(5, bool),
                        budget=Budget(2.0))


# ---------------------------------------------------------------- rounds and sessions


def test_compact_rounds_read_as_the_list_of_rounds():
    examples = _examples(12, ragged=True)
    examples[3] = Example("t3", examples[3].prompt, examples[3].candidates, None, 2.5)
    res = featurize(examples, _featurizer(), use_cache=False, progress=False)
    rounds = to_rounds(examples, res.features, unlabelled_ok=True)
    want = to_rounds(examples, list(res.features), unlabelled_ok=True)
    assert isinstance(rounds, CompactRounds) and isinstance(want, list) and len(rounds) == 12
    for a, b in zip(rounds, want, strict=True):
        assert isinstance(a, Round) and _same(a.features, b.features)
        assert (a.gold, a.cost, a.id) == (b.gold, b.cost, b.id)
    assert rounds[3].gold is None and rounds[3].cost == 2.5 and rounds[-1].id == "t11"
    assert [r.id for r in rounds[2:5]] == ["t2", "t3", "t4"] and isinstance(rounds[2:5], CompactRounds)
    both = rounds + rounds[:2]
    assert isinstance(both, list) and len(both) == 14 and [r.id for r in [want[0]] + rounds[:1]] == ["t0", "t0"]
    with pytest.raises(DataError, match="no answer"):
        to_rounds(examples, res.features)


def test_load_streams_holds_block_features_compactly(tmp_path, fixed_encoder):
    pool = tmp_path / "pool.jsonl"
    pool.write_text("".join(json.dumps({"id": f"p{i}", "prompt": f"Report {i} on {LABELS[i % 5]}",
                                        "candidates": list(LABELS), "answer": i % 5}) + "\n" for i in range(50)))
    st = load_streams(str(pool), "block", seed=0, cache_dir=str(tmp_path / "cache"), progress=False)
    assert isinstance(st.train, CompactRounds) and isinstance(st.train.features, BlockFeatures)
    assert len(st.train) + len(st.test) == 50 and st.dim == 5 * 385
    examples = list(st.dataset.train) + list(st.dataset.test)
    want = featurize(examples, _featurizer(), use_cache=False, progress=False, compact=False).features
    for r, w in zip(st.train + st.test, want, strict=True):
        assert _same(r.features, w)


def test_select_batch_on_compact_rounds_picks_as_on_the_expanded_rounds(tmp_path, fixed_encoder):
    from budgetsft.sessions.pool import pool_config, select_batch
    from budgetsft.sessions.session import Session

    pool = tmp_path / "pool.jsonl"
    pool.write_text("".join(json.dumps({"id": f"p{i}", "prompt": f"Item {i}: {LABELS[i % 5]} news {i % 7}",
                                        "candidates": list(LABELS)}) + "\n" for i in range(120)))
    cfg = pool_config({"data": str(pool), "gate": {"name": "llf", "budget": 30}, "audit": 0.2})
    runs = []
    for name, expand in (("compact", False), ("expanded", True)):
        sess = Session.create(tmp_path / f"{name}.db", cfg)
        if expand:  # the same rounds as a plain list of expanded float64 arrays: the path before compaction
            rounds = list(sess.stream())
            sess.stream = lambda rounds=rounds: rounds
        else:
            assert isinstance(sess.stream(), CompactRounds)
        first = select_batch(sess, 8)
        sess.ledger.record_answers([(p.query_id, p.index % 5, "ana", 1.0, 5) for p in first.picks[:5]])
        second = select_batch(sess, 8)
        runs.append([(p.index, p.purpose, p.latency, p.prediction) for p in first.picks + second.picks])
        sess.close()
    assert runs[0] == runs[1] and len(runs[0]) == 16


@pytest.mark.parametrize("name", ["budgetsft.features.block", "budgetsft.realdata"])
def test_docstring_examples(name):
    import doctest
    import importlib

    assert doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS).failed == 0
