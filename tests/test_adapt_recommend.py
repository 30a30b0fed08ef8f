"""The recommendation of `budgetsft adapt`: held-out NLL on an audit share or by cross-validation (issue 20, item 4).

Real parts: the refit head, real rounds; the LoRA recipes are covered end to end in test_adapt_distill.py.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from budgetsft.adapt.recommend import (
    candidate_nll,
    cross_validate,
    held_out_table,
    recommend,
    recommend_over_seeds,
)
from budgetsft.base import Round
from budgetsft.exceptions import ConfigError


def _rounds(n: int, *, noise: bool, seed: int = 0, d: int = 5, K: int = 3) -> list[Round]:
    """Rounds whose gold is the argmax of a fixed θ (``noise``: a uniformly random gold instead)."""
    rng = np.random.default_rng(seed)
    theta = rng.normal(size=d)
    out = []
    for i in range(n):
        X = rng.normal(size=(K, d))
        gold = int(rng.integers(K)) if noise else int(np.argmax(X @ theta))
        out.append(Round(features=X, gold=gold, id=f"r{i}"))
    return out


def test_candidate_nll_is_minus_log_softmax_of_the_gold():
    s = [math.log(0.2), math.log(0.5), math.log(0.3)]
    assert candidate_nll(s, 1) == pytest.approx(-math.log(0.5))
    assert candidate_nll([1000.0, 0.0], 0) == pytest.approx(0.0, abs=1e-12)  # no overflow
    assert candidate_nll([0.0, 0.0, 0.0, 0.0], 2) == pytest.approx(math.log(4))


def test_recommend_takes_nll_then_accuracy_then_the_llm():
    assert recommend({"a/plain": {"accuracy": 0.9, "nll": 0.6}, "a/head": {"accuracy": 0.8, "nll": 0.3}}) == "a/head"
    assert recommend({"a/plain": {"accuracy": 0.9, "nll": 0.4}, "a/head": {"accuracy": 0.8, "nll": 0.4}}) == "a/plain"
    tie = {"a/head": {"accuracy": 0.9, "nll": 0.4}, "a/distill": {"accuracy": 0.9, "nll": 0.4},
           "a/plain": {"accuracy": 0.9, "nll": 0.4}}
    assert recommend(tie) == "a/plain"
    del tie["a/plain"]
    assert recommend(tie) == "a/distill"
    with pytest.raises(ConfigError):
        recommend({})


def test_recommend_over_seeds_averages_each_model_over_the_seeds():
    per_seed = [{"x/head": {"accuracy": 0.9, "nll": 0.3}, "x/plain": {"accuracy": 0.7, "nll": 0.6}},
                {"x/head": {"accuracy": 0.6, "nll": 0.9}, "x/plain": {"accuracy": 0.85, "nll": 0.4}}]
    method, table = recommend_over_seeds(per_seed)
    assert table["x/head"]["mean"] == pytest.approx(0.75) and table["x/plain"]["mean"] == pytest.approx(0.775)
    assert table["x/head"]["nll_mean"] == pytest.approx(0.6) and table["x/plain"]["nll_mean"] == pytest.approx(0.5)
    assert method == "x/plain"  # one seed each, but plain's mean NLL is lower
    assert table["x/head"]["accuracy"] == [0.9, 0.6]


def test_held_out_table_scores_each_model_on_the_held_out_items():
    gold = [0, 1, 2, 1]
    sure = [np.eye(3)[g] * 5.0 for g in gold]  # right and confident
    wrong = [np.eye(3)[(g + 1) % 3] * 5.0 for g in gold]  # wrong and confident
    t = held_out_table({"s/head": sure, "s/plain": wrong}, gold)
    assert t["s/head"]["accuracy"] == 1.0 and t["s/plain"]["accuracy"] == 0.0 and t["s/head"]["n"] == 4
    assert t["s/head"]["nll"] == pytest.approx(candidate_nll(sure[0], 0))
    assert t["s/plain"]["nll"] > 4.0
    assert recommend(t) == "s/head"
    with pytest.raises(ConfigError, match="3 score vectors for 4 items"):
        held_out_table({"s/head": sure[:3]}, gold)
    with pytest.raises(ConfigError):
        held_out_table({"s/head": []}, [])


def test_cross_validated_head_accuracy_tells_signal_from_noise():
    learnable = cross_validate("llf", _rounds(90, noise=False), recipes=["head"], folds=3, seed=0)
    noise = cross_validate("llf", _rounds(90, noise=True), recipes=["head"], folds=3, seed=0)
    assert learnable["llf/head"]["accuracy"] > 0.75 and learnable["llf/head"]["n"] == 90
    assert noise["llf/head"]["accuracy"] < 0.55  # three candidates: chance is 1/3
    assert learnable["llf/head"]["nll"] < noise["llf/head"]["nll"]
    again = cross_validate("llf", _rounds(90, noise=False), recipes=["head"], folds=3, seed=0)
    assert again == learnable  # seeded folds: the same numbers


def test_cross_validation_trains_each_fold_without_its_held_out_items():
    rounds = _rounds(30, noise=False)
    seen = []

    def make_set(recipe, train_ids, held_out):
        assert not set(train_ids) & set(held_out) and len(train_ids) + len(held_out) == 30
        seen.append((recipe, sorted(held_out)))
        return {"ids": train_ids}

    def score(model, keys):  # a "model" that answers candidate 0 for every item
        return [np.array([1.0, 0.0, 0.0]) for _ in keys]

    cv = cross_validate("llf", rounds, recipes=["plain"], folds=3, seed=1, make_set=make_set,
                        train=lambda s: s, score=score)
    held = [k for _, keys in seen for k in keys]
    assert sorted(held) == sorted(r.id for r in rounds)  # every bought item held out exactly once
    assert cv["llf/plain"]["accuracy"] == pytest.approx(np.mean([r.gold == 0 for r in rounds]))


def test_cross_validation_refuses_too_few_labels_and_unknown_recipes():
    with pytest.raises(ConfigError, match="2 \\* folds"):
        cross_validate("llf", _rounds(5, noise=False), recipes=["head"], folds=3, seed=0)
    with pytest.raises(ConfigError, match="unknown recipe"):
        cross_validate("llf", _rounds(30, noise=False), recipes=["soft"], folds=3, seed=0)
    with pytest.raises(ConfigError, match="needs make_set"):
        cross_validate("llf", _rounds(30, noise=False), recipes=["plain"], folds=3, seed=0)
