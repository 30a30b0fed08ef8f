"""Real data through the game: bbc-news with real MiniLM features, label selection, the CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from budgetsft.adapt.pipeline import select_labels
from budgetsft.experiment import run
from budgetsft.realdata import load_streams

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def bbc(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    first = load_streams("bbc-news", "encoder", seed=0, max_examples=150, cache_dir=str(cache), progress=False)
    return first, cache


def test_streams_have_features_and_gold(bbc):
    streams, _ = bbc
    assert len(streams.train) + len(streams.test) == 150
    assert streams.dim == 769
    for r in streams.train + streams.test:
        assert r.features.shape == (5, 769) and np.all(np.isfinite(r.features))
        assert 0 <= r.gold < 5
    assert streams.n_computed == 150 and streams.n_cached == 0


def test_second_load_recomputes_nothing(bbc):
    streams, cache = bbc
    again = load_streams("bbc-news", "encoder", seed=0, max_examples=150, cache_dir=str(cache), progress=False)
    assert again.n_computed == 0 and again.n_cached == 150
    for a, b in zip(streams.train, again.train, strict=True):
        np.testing.assert_array_equal(a.features, b.features)


def test_game_on_real_features_reports_test_accuracy(bbc):
    streams, _ = bbc
    res = run({"gate": {"name": "llf", "beta": 0.2}, "seed": 0}, stream=streams.train, test=streams.test)
    s = res.summary
    assert s["rounds"] == len(streams.train) and s["labels_bought"] <= int(0.2 * len(streams.train))
    # 5 topics (chance 0.2); measured 0.833 on these 30 held-out articles with 24 labels
    assert s["test_accuracy"] > 0.6
    assert np.isnan(s["pseudo_regret"])  # real data: no expected rewards


@pytest.mark.parametrize("mode", ["stream", "pool"])
def test_select_labels_spends_the_same_budget(bbc, mode):
    streams, _ = bbc
    sets = select_labels(streams, "llf", 0.1, seed=0, mode=mode)
    B = int(0.1 * len(streams.train))
    assert set(sets) == {"llf", "random", "first", "all"}
    assert len(sets["first"]["ids"]) == B
    assert [ex.id for ex in sets["first"]["examples"]] == [ex.id for ex in streams.dataset.train[:B]]
    assert len(sets["llf"]["ids"]) <= B and len(sets["random"]["ids"]) <= B
    assert len(set(sets["llf"]["ids"])) == len(sets["llf"]["ids"])
    assert len(sets["all"]["ids"]) == len(streams.train)
    if mode == "pool":
        assert len(sets["llf"]["ids"]) == B


def test_cli_run_on_real_data():
    proc = subprocess.run(
        [sys.executable, "-m", "budgetsft", "run", "--data", "bbc-news", "--features", "encoder", "--gate", "llf",
         "--beta", "0.1", "--seed", "0", "--max-examples", "120", "--json"],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    s = json.loads(proc.stdout.strip().splitlines()[-1])
    assert s["rounds"] == 96 and s["budget"] == 9
    assert s["test_accuracy"] > 0.4  # 5 topics (chance 0.2); measured 0.583 on 24 held-out articles, 9 labels
    assert s["data"] == "bbc-news" and s["features"] == "encoder"  # the summary names what was played
    for key in ("gate", "beta", "labels_bought", "mistakes", "hinge_loss", "stackelberg_regret", "regret_queried",
                "regret_unqueried", "seconds"):
        assert key in s


def test_cli_sweep_on_real_data_with_the_default_features():
    """The path `make demo` takes: a sweep table over a data set with no `features` given (auto -> block)."""
    proc = subprocess.run(
        [sys.executable, "-m", "budgetsft", "sweep", "--data", "bbc-news", "--gates", "llf,first", "--betas", "0.1",
         "--seeds", "0", "--max-examples", "200"],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    assert "bbc-news (block features)" in proc.stdout
    assert "refit acc" in proc.stdout
