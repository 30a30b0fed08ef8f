"""The Frequent Directions learner (issue 11): exact before it shrinks, conservative after, O(m d) memory;
and the float32 path of the exact learners."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from _streams import random_stream

from budgetsft.budget import Budget
from budgetsft.config import DEFAULT_CONFIG, build, load_config, merge, validate_config
from budgetsft.exceptions import ConfigError, DataError
from budgetsft.experiment import run
from budgetsft.game import play
from budgetsft.gates import LLFGate
from budgetsft.learners import AROWLearner, LogisticLearner, RidgeLearner, SketchLearner
from budgetsft.learners import sketch as sketch_module
from budgetsft.regret import to_frame
from budgetsft.sessions.session import decode_state, encode_state


def _feed(learners, n: int, d: int, K: int = 5, seed: int = 0):
    """Play both learners on the same rounds and labels; yield each round's X (before learning it)."""
    rng = np.random.default_rng(seed)
    for _ in range(n):
        X = rng.standard_normal((K, d))
        gold = int(rng.integers(K))
        yield X
        for learner in learners:
            learner.learn_one(X, gold, (gold + 1) % K)


def _same_rows(**kw) -> dict:
    # update="hardest" and w_min = 0.25 ≥ p(1 - p): both learners learn the rows √0.25 (x_gold - x_alt)
    # whatever their θ, so their covariances differ by the sketch alone.
    return {"update": "hardest", "w_min": 0.25, **kw}


# ------------------------------------------------------------------ exact before the first shrink
@pytest.mark.parametrize("radius", ["auto", "theory", 0.7])
def test_rank_at_least_d_is_the_exact_logistic_learner(radius):
    d = 12
    exact, sketch = LogisticLearner(radius=radius), SketchLearner(rank=d, radius=radius)
    for X in _feed([exact, sketch], 150, d):
        np.testing.assert_allclose(sketch.score_many(X), exact.score_many(X), rtol=1e-8, atol=1e-10)
        ref = int(np.argmax(exact.score_many(X)))
        (w1, n1), (w2, n2) = exact.widths_many(X, ref), sketch.widths_many(X, ref)
        np.testing.assert_allclose(n2, n1, rtol=1e-8, atol=1e-12)
        np.testing.assert_allclose(w2, w1, rtol=1e-8, atol=1e-12)
    assert sketch.n_shrinks_ == 0 and sketch.alpha_ == 0.0 and sketch.n_directions_ == d
    assert sketch.n_updates_ == exact.n_updates_ > 150  # "violated": several pairs per label
    np.testing.assert_allclose(sketch.apply_P(np.eye(d)), exact.P_, rtol=1e-8, atol=1e-12)
    assert sketch.current_radius() == pytest.approx(exact.current_radius(), rel=1e-9)


def test_apply_P_matches_the_dense_inverse_in_blocks(monkeypatch):
    d, m = 20, 3
    sketch, exact = SketchLearner(rank=m), RidgeLearner()
    for _ in _feed([sketch, exact], 40, d):
        pass
    assert sketch.n_shrinks_ > 0
    Q, c = sketch.Q_[: sketch.n_directions_], sketch._c()
    dense = np.linalg.inv(c * np.eye(d) + Q.T @ sketch.M_ @ Q)
    Y = np.random.default_rng(1).standard_normal((11, d))
    monkeypatch.setattr(sketch_module, "_CHUNK", 4)  # three blocks of rows
    np.testing.assert_allclose(sketch.apply_P(Y), Y @ dense, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(sketch.apply_P(Y[0]), Y[0] @ dense, rtol=1e-9, atol=1e-12)
    np.testing.assert_array_equal(exact.apply_P(Y), Y @ exact.P_)
    with pytest.raises(DataError, match="d = 20"):
        sketch.apply_P(np.ones((2, 3)))
    with pytest.raises(DataError, match="no covariance yet"):
        SketchLearner().apply_P(Y)


# ------------------------------------------------------------------ after shrinking
def test_frequent_directions_guarantee_and_orthonormal_basis():
    d, m = 50, 8
    sketch = SketchLearner(rank=m, **_same_rows())
    rows = []
    rng = np.random.default_rng(3)
    for _ in range(300):
        X = rng.standard_normal((5, d))
        gold = int(rng.integers(5))
        sketch.learn_one(X, gold, (gold + 1) % 5)
        rows.append(0.5 * (X[gold] - X[(gold + 1) % 5]))
    Y = np.asarray(rows)
    Q = sketch.Q_[: sketch.n_directions_]
    assert sketch.n_shrinks_ > 20 and m <= sketch.n_directions_ < 2 * m
    np.testing.assert_allclose(Q @ Q.T, np.eye(len(Q)), atol=1e-12)
    gap = np.linalg.eigvalsh(Y.T @ Y - Q.T @ sketch.M_ @ Q)  # G - SᵀS
    scale = np.linalg.norm(Y) ** 2
    assert gap.min() >= -1e-10 * scale  # SᵀS ⪯ G
    assert gap.max() <= sketch.alpha_ + 1e-10 * scale  # G - SᵀS ⪯ αI
    # Each shrink by δ removes at least (m + 1) δ of trace (the top m + 1 lose δ each) and at most 2m δ
    # (one row a round: it holds 2m directions, each losing ≤ δ): α is the shrinkage, counted right.
    removed = np.trace(Y.T @ Y) - np.trace(sketch.M_)
    assert (m + 1) * sketch.alpha_ <= removed * (1 + 1e-9)
    assert removed <= 2 * m * sketch.alpha_ * (1 + 1e-9)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sketch_widths_are_at_least_the_exact_widths_after_shrinking(seed):
    d, m = 50, 8
    exact, sketch = LogisticLearner(**_same_rows()), SketchLearner(rank=m, **_same_rows())
    low, high = np.inf, 0.0
    rng = np.random.default_rng(100 + seed)
    for _ in _feed([exact, sketch], 300, d, seed=seed):
        Xt = rng.standard_normal((5, d))
        _, n1 = exact.widths_many(Xt, 0)
        _, n2 = sketch.widths_many(Xt, 0)
        ratio = n2[1:] / n1[1:]
        low, high = min(low, ratio.min()), max(high, ratio.max())
        assert np.all(ratio <= 1.0 + sketch.alpha_ / sketch.lam + 1e-9)  # V ⪯ V̂ + αI
    assert sketch.n_shrinks_ > 20
    assert low >= 1.0 - 1e-9  # P̂ ⪰ P: never narrower than the exact ellipsoid
    assert high > 1.5  # and the shrunk directions really are wider (the assertion above can fail)


def test_added_shrinkage_is_optimistic_and_bounded():
    d, m = 50, 8
    exact, sketch = LogisticLearner(**_same_rows()), SketchLearner(rank=m, shrinkage="add", **_same_rows())
    for _ in _feed([exact, sketch], 300, d):
        pass
    Xt = np.random.default_rng(9).standard_normal((200, d))
    _, n1 = exact.widths_many(Xt, 0)
    _, n2 = sketch.widths_many(Xt, 0)
    ratio = n2[1:] / n1[1:]
    assert ratio.max() <= 1.0 + 1e-9  # V ⪯ V̂ = (λ + α)I + SᵀS
    assert ratio.min() >= 1.0 / (1.0 + sketch.alpha_ / sketch.lam) - 1e-9
    assert ratio.min() < 0.5


@pytest.mark.parametrize("shrinkage", ["drop", "add", "half"])
def test_theory_widths_cover_the_exact_theory_widths(shrinkage):
    d, m = 40, 6
    exact = LogisticLearner(radius="theory", **_same_rows())
    sketch = SketchLearner(rank=m, radius="theory", shrinkage=shrinkage, **_same_rows())
    for _ in _feed([exact, sketch], 200, d):
        pass
    assert sketch.n_shrinks_ > 10
    Xt = np.random.default_rng(5).standard_normal((100, d))
    w1, _ = exact.widths_many(Xt, 0)
    w2, _ = sketch.widths_many(Xt, 0)
    assert np.all(w2[1:] >= w1[1:] * (1 - 1e-9))


def test_sketch_memory_is_order_m_d():
    d, m = 2000, 8
    sketch = SketchLearner(rank=m)
    for _ in _feed([sketch], 30, d):
        pass
    assert sketch.n_shrinks_ > 0
    arrays = {k: v.nbytes for k, v in vars(sketch).items() if isinstance(v, np.ndarray)}
    assert arrays["Q_"] == (2 * m + 4) * d * 8
    assert sum(arrays.values()) < 2**20  # a dense P at d = 2000 holds 8 d² = 32 MB
    assert sum(arrays.values()) < 40 * m * d * 8


# ------------------------------------------------------------------ in the game
@pytest.mark.parametrize("gate", ["llf", "random", "first", "bbq"])
def test_plays_a_whole_game_within_budget(gate):
    cfg = {"env": {"rounds": 400, "d": 30}, "learner": {"name": "sketch", "rank": 8},
           "gate": {"name": gate, "beta": 0.1}, "seed": 0, "test_rounds": 100}
    res = run(cfg)
    assert isinstance(res.learner, SketchLearner) and res.learner.rank == 8
    assert len(res.records) == 400 and res.summary["learner"] == "sketch"
    assert res.summary["labels_bought"] <= 40 and res.summary["spent"] <= 40
    assert res.learner.n_shrinks_ > 0
    assert np.isfinite(res.summary["stackelberg_regret"])


def test_same_seed_same_records_bit_for_bit():
    cfg = {"env": {"rounds": 300, "d": 30}, "learner": {"name": "sketch", "rank": 4},
           "gate": {"name": "llf", "beta": 0.3}, "seed": 2, "test_rounds": 50}
    a, b = run(cfg), run(cfg)
    assert a.learner.n_shrinks_ > 0
    assert to_frame(a.records).equals(to_frame(b.records))
    assert a.learner.coef_.tobytes() == b.learner.coef_.tobytes()
    assert not to_frame(run({**cfg, "seed": 3}).records).equals(to_frame(a.records))


def test_checkpoint_round_trip_after_shrinks_goes_on_identically():
    stream = random_stream(120, 25, 5, seed=4)
    learner = SketchLearner(rank=4)
    list(play(stream, learner, LLFGate(), Budget(60.0)))
    assert learner.n_shrinks_ > 0
    restored = decode_state(encode_state(learner))
    X = np.random.default_rng(8).standard_normal((5, 25))
    for obj in (learner, restored):
        obj.learn_one(X, 1, 2)
    assert learner.score_many(X).tobytes() == restored.score_many(X).tobytes()
    assert learner.widths_many(X, 0)[0].tobytes() == restored.widths_many(X, 0)[0].tobytes()
    assert learner.state_dict()["Q"].tobytes() == restored.state_dict()["Q"].tobytes()


def test_learner_does_not_mutate_inputs():
    stream = random_stream(60, 20, 4, seed=1)
    copies = [r.features.copy() for r in stream]
    list(play(stream, SketchLearner(rank=3, update="all"), LLFGate(), Budget(60.0)))
    for X, r in zip(copies, stream, strict=True):
        np.testing.assert_array_equal(X, r.features)


# ------------------------------------------------------------------ configuration
@pytest.mark.parametrize("rank", [0, -3, 2.5, True, "8"])
def test_bad_rank_is_a_config_error_naming_rank(rank):
    with pytest.raises(ConfigError, match=r"'rank' parameter of SketchLearner must be an int >= 1"):
        SketchLearner(rank=rank).score_many(np.eye(3))
    with pytest.raises(ConfigError, match="'rank'"):
        validate_config(merge(DEFAULT_CONFIG, {"learner": {"name": "sketch", "rank": rank}}))


def test_bad_shrinkage_and_dtype_are_config_errors():
    with pytest.raises(ConfigError, match="'shrinkage'"):
        SketchLearner(shrinkage="half-ish").score_many(np.eye(3))
    for cls in (SketchLearner, LogisticLearner, RidgeLearner, AROWLearner):
        with pytest.raises(ConfigError, match=rf"'dtype' parameter of {cls.__name__}"):
            cls(dtype="float16").score_many(np.eye(3))


def test_config_file_and_cli(tmp_path):
    path = tmp_path / "sketch.yaml"
    path.write_text("env: {name: synthetic, d: 24, rounds: 150}\nlearner: {name: sketch, rank: 32}\n")
    learner = build(load_config(path))["learner"]
    assert isinstance(learner, SketchLearner) and learner.rank == 32
    proc = subprocess.run([sys.executable, "-m", "budgetsft", "run", "--config", str(path), "--learner", "sketch",
                           "--json", "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["learner"] == "sketch" and summary["rounds"] == 150
    assert summary["labels_bought"] <= summary["budget"]


# ------------------------------------------------------------------ float32 path of the exact learners
@pytest.mark.parametrize("cls", [LogisticLearner, RidgeLearner, AROWLearner, SketchLearner])
def test_float32_agrees_with_float64(cls):
    kw = {"rank": 6} if cls is SketchLearner else {}
    f64, f32 = cls(**kw), cls(dtype="float32", **kw)
    worst_s = worst_w = 0.0
    for X in _feed([f64, f32], 150, 16, seed=6):
        s64, s32 = f64.score_many(X), f32.score_many(X)
        assert s32.dtype == np.float64
        worst_s = max(worst_s, float(np.max(np.abs(s32 - s64)) / (1.0 + np.max(np.abs(s64)))))
        ref = int(np.argmax(s64))
        w64, w32 = f64.widths_many(X, ref)[0], f32.widths_many(X, ref)[0]
        assert w32.dtype == np.float64
        worst_w = max(worst_w, float(np.max(np.abs(w32 - w64)) / np.max(w64)))
    assert f32.coef_.dtype == np.float32 and f64.coef_.dtype == np.float64
    state = f32.state_dict()
    assert state["coef"].dtype == np.float32 and (state.get("P", state.get("Q")).dtype == np.float32)
    # The sketch's float32 rounding compounds over its shrinks (here ~25 at α ≈ 190 λ, rank 6 of d = 16).
    tol = 1e-3 if cls is SketchLearner else 1e-4
    assert worst_s < tol and worst_w < tol
    assert worst_s > 0.0  # really single precision


def test_float32_learner_plays_a_game():
    cfg = {"env": {"rounds": 300, "d": 12}, "learner": {"name": "ridge", "dtype": "float32"},
           "gate": {"name": "llf", "beta": 0.2}, "seed": 1, "test_rounds": 50}
    a = run(cfg)
    b = run({**cfg, "learner": {"name": "ridge"}})
    assert a.learner.P_.dtype == np.float32 and a.summary["labels_bought"] <= 60
    # the same labels bought on nearly every round: float32 moves a latency by ~1e-6
    agree = np.mean([x.queried == y.queried for x, y in zip(a.records, b.records, strict=True)])
    assert agree > 0.9


def test_docstring_example_runs():
    import doctest

    result = doctest.testmod(sketch_module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


def test_pool_mode_uses_apply_P():
    from budgetsft.gates.llf import select_pool

    rng = np.random.default_rng(0)
    pool = rng.standard_normal((200, 5, 30))
    gold = rng.integers(5, size=200)
    picks = {}
    for name, learner in (("exact", LogisticLearner()), ("sketch", SketchLearner(rank=30)),
                          ("small", SketchLearner(rank=3))):
        budget = Budget(40.0)
        picks[name] = select_pool(learner, pool, budget, lambda i: int(gold[i]), batch_size=8)
        assert len(picks[name]) == len(set(picks[name])) == 40 and budget.remaining == 0.0
    assert picks["sketch"] == picks["exact"]  # no shrink at 2m > d: the same widths, the same picks
