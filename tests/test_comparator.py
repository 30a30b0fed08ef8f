"""The hindsight comparator: solved once per stream, cached by content, exact or a labelled bracket."""

from __future__ import annotations

import io
import json
import math

import numpy as np
import pytest
from typer.testing import CliRunner

from budgetsft import comparator as comp
from budgetsft.base import Round
from budgetsft.cli import app
from budgetsft.envs import LinearSoftmaxEnv
from budgetsft.exceptions import ConfigError
from budgetsft.experiment import run, sweep
from budgetsft.regret import comparator_loss


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A private cache directory and an empty in-process memo."""
    monkeypatch.setenv("BUDGETSFT_CACHE", str(tmp_path))
    monkeypatch.setattr(comp, "_MEMO", type(comp._MEMO)())
    return tmp_path


@pytest.fixture
def solves(monkeypatch):
    """Count the real LP solves (the solver still runs)."""
    calls = []
    real = comp._exact

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(comp, "_exact", counted)
    return calls


@pytest.mark.parametrize(("d", "K", "T"), [(5, 3, 200), (20, 5, 1500)])
def test_approx_brackets_the_exact_optimum(d, K, T):
    rounds = list(LinearSoftmaxEnv(d=d, K=K, rounds=T, seed=3))
    exact = comp.solve(rounds, cache=False)
    approx = comp.solve(rounds, method="approx", cache=False)
    assert exact.method == "exact" and approx.method == "approx"
    assert exact.lower == exact.loss
    assert approx.lower - 1e-6 <= exact.loss <= approx.loss + 1e-6
    # a useful bracket, not just a valid one: within 2 % of the optimum
    assert approx.loss - approx.lower <= 0.02 * exact.loss + 1e-6
    # the reported loss is the hinge loss of the returned θ, recomputed
    Z, owner = comp.pair_matrix(rounds)
    assert approx.loss == pytest.approx(comp.hinge_per_round(Z, owner, approx.theta, T).sum(), rel=1e-12)
    assert np.all(np.abs(approx.theta) <= 10.0 + 1e-12)


def test_exact_matches_the_uncached_lp(cache):
    rounds = list(LinearSoftmaxEnv(d=6, K=4, rounds=300, seed=1))
    loss, theta, per_round = comparator_loss(rounds, S=2.0)
    c = comp.solve(rounds, S=2.0)
    assert c.loss == pytest.approx(loss, abs=1e-7)
    assert np.allclose(c.per_round, per_round, atol=1e-7)


def test_disk_cache_round_trip_and_content_key(cache, solves):
    rounds = list(LinearSoftmaxEnv(d=6, K=4, rounds=300, seed=1))
    first = comp.solve(rounds)
    assert not first.cached and len(solves) == 1
    files = list((cache / "comparator").glob("*.npz"))
    assert len(files) == 1
    comp._MEMO.clear()  # a new process: only the disk entry is left
    again = comp.solve(rounds)
    assert again.cached and len(solves) == 1
    assert again.loss == first.loss and np.array_equal(again.per_round, first.per_round)
    # any change to the content (one gold label, S or the method) is another key
    changed = [*rounds[:-1], Round(features=rounds[-1].features, gold=(rounds[-1].gold + 1) % 4)]
    assert comp.content_key(changed, 10.0, "exact") != comp.content_key(rounds, 10.0, "exact")
    assert comp.content_key(rounds, 2.0, "exact") != comp.content_key(rounds, 10.0, "exact")
    assert comp.content_key(rounds, 10.0, "approx") != comp.content_key(rounds, 10.0, "exact")
    comp.solve(changed)
    assert len(solves) == 2


def test_a_corrupt_cache_entry_is_recomputed(cache, solves):
    rounds = list(LinearSoftmaxEnv(d=4, K=3, rounds=100, seed=2))
    first = comp.solve(rounds)
    (path,) = (cache / "comparator").glob("*.npz")
    path.write_bytes(b"not an npz file")
    comp._MEMO.clear()
    again = comp.solve(rounds)
    assert not again.cached and len(solves) == 2
    assert again.loss == pytest.approx(first.loss, abs=1e-9)


def test_sweep_solves_the_lp_once_per_stream(cache, solves):
    base = {"env": {"rounds": 400, "d": 8}, "test_rounds": 0, "refit": False}
    summaries = sweep(base, ["llf", "random", "first"], [0.05, 0.1], [0, 1])
    assert len(summaries) == 12
    assert len(solves) == 2  # one stream per seed
    for seed in (0, 1):
        losses = {s["comparator_loss"] for s in summaries if s["seed"] == seed}
        assert len(losses) == 1
    one = run({**base, "gate": {"name": "llf", "beta": 0.1}, "seed": 0}).summary
    match = next(s for s in summaries if s["gate"] == "llf" and s["beta"] == 0.1 and s["seed"] == 0)
    assert one["stackelberg_regret"] == match["stackelberg_regret"]
    assert len(solves) == 2


def test_config_comparator_methods(cache):
    base = {"env": {"rounds": 300, "d": 6}, "test_rounds": 0, "refit": False}
    exact = run(base).summary
    approx = run({**base, "comparator": "approx"}).summary
    none = run({**base, "comparator": "none"}).summary
    legacy = run({**base, "regret_lp": False}).summary
    assert exact["comparator"] == "exact" and approx["comparator"] == "approx"
    assert none["comparator"] == legacy["comparator"] == "none"
    assert math.isnan(none["stackelberg_regret"]) and math.isnan(legacy["stackelberg_regret"])
    # the approximate regret is a lower bound on the exact one, by at most the bracket
    assert approx["stackelberg_regret"] <= exact["stackelberg_regret"] + 1e-6
    assert exact["stackelberg_regret"] - approx["stackelberg_regret"] <= (
        approx["comparator_loss"] - approx["comparator_lower"] + 1e-6)
    with pytest.raises(ConfigError, match="'comparator' must be auto, exact, approx or none"):
        run({**base, "comparator": "lp"})


def test_large_exact_lp_warns(cache, monkeypatch):
    monkeypatch.setattr(comp, "SLOW_EXACT_NNZ", 100)
    rounds = list(LinearSoftmaxEnv(d=6, K=4, rounds=50, seed=0))
    with pytest.warns(comp.SlowComparatorWarning, match="--comparator approx"):
        comp.solve(rounds)


def test_cli_no_comparator_and_approx(cache):
    runner = CliRunner()
    args = ["run", "--rounds", "300", "--json"]
    res = runner.invoke(app, [*args, "--no-comparator"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["comparator"] == "none" and summary["stackelberg_regret"] is None
    res = runner.invoke(app, [*args, "--comparator", "approx"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["comparator"] == "approx"
    res = runner.invoke(app, [*args, "--comparator", "approx", "--no-comparator"])
    assert res.exit_code != 0 and "contradict" in str(res.exception)
    res = runner.invoke(app, ["sweep", "--rounds", "200", "--gates", "llf", "--seeds", "0", "--comparator",
                              "approx", "--columns", "all"])
    assert res.exit_code == 0, res.output
    assert "Stackelberg ≥" in res.stdout


def test_auto_certifies_a_closed_bracket_and_labels_an_open_one(cache, solves, monkeypatch):
    monkeypatch.setattr(comp, "IPM_NNZ", 10)  # every stream is "large"
    # separable: the bracket closes at 0, so the LP is never solved and the number is exact
    rng = np.random.default_rng(0)
    separable = []
    for _ in range(60):  # φ(gold) - φ(a) = e_0 + noise: θ = 2 e_0 has zero hinge loss
        X = rng.normal(scale=0.05, size=(3, 6))
        gold = int(rng.integers(3))
        X[gold] += np.eye(6)[0]
        separable.append(Round(features=X, gold=gold))
    sep = comp.solve(separable, S=10.0, method="auto")
    assert sep.method == "exact" and len(solves) == 0
    assert sep.loss == pytest.approx(0.0, abs=1e-6) and sep.lower <= sep.loss
    noisy = list(LinearSoftmaxEnv(d=6, K=4, rounds=300, seed=1, temperature=1.0))
    exact = comp.solve(noisy, S=10.0, method="exact", cache=False)
    n_before = len(solves)
    hashed = []
    real_digest = comp.stream_digest
    monkeypatch.setattr(comp, "stream_digest", lambda rounds: hashed.append(len(rounds)) or real_digest(rounds))
    mid = comp.solve(noisy, S=10.0, method="auto")  # the bracket stays open: HiGHS below the slow size
    assert mid.method == "exact" and len(solves) == n_before + 1
    assert hashed == [300]  # the features are hashed once for both methods tried
    assert comp.solve(noisy, S=10.0, method="exact").cached  # and the key is the one a plain exact solve uses
    assert mid.loss == pytest.approx(exact.loss, abs=1e-7)
    monkeypatch.setattr(comp, "SLOW_EXACT_NNZ", 20)
    comp._MEMO.clear()
    with pytest.warns(comp.SlowComparatorWarning, match="labelled 'approx'"):
        big = comp.solve(noisy, S=10.0, method="auto", cache=False)
    assert big.method == "approx" and big.lower <= exact.loss + 1e-6 <= big.loss + 2e-6


class _Terminal(io.StringIO):
    """A text stream that says it is a terminal (what tqdm writes to under a real TTY)."""

    def isatty(self) -> bool:
        return True


def test_the_lp_shows_elapsed_time_on_a_terminal_only():
    import time

    term = _Terminal()
    with comp._Elapsed("comparator LP (HiGHS)", enabled=True, delay=0.1, file=term):
        time.sleep(1.5)
    assert "comparator LP (HiGHS): 00:01 elapsed" in term.getvalue()
    quiet = io.StringIO()  # not a terminal: nothing is drawn
    with comp._Elapsed("comparator LP (HiGHS)", enabled=True, delay=0.1, file=quiet):
        time.sleep(0.5)
    assert quiet.getvalue() == ""
