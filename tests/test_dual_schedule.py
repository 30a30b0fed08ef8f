"""LLF's dual-price schedule, the default (issue 21, item 1): the game's feedback channel, the hard cap, front-loading
where the learner stays wrong, and a session that stops and resumes on it."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from budgetsft.base import QueryInfo
from budgetsft.budget import Budget
from budgetsft.config import build
from budgetsft.exceptions import ConfigError
from budgetsft.experiment import run
from budgetsft.gates import LLFGate
from budgetsft.gates.llf import DUAL_CONSTANTS
from budgetsft.sessions.oracles import DatasetOracle
from budgetsft.sessions.session import Session

SMALL = {"env": {"name": "synthetic", "d": 8, "K": 4, "rounds": 600}, "test_rounds": 200, "seed": 5}


def _info(t: int, horizon: int | None, latency: float) -> QueryInfo:
    return QueryInfo(t=t, horizon=horizon, features=np.zeros((2, 1)), scores=np.zeros(2), prediction=0,
                     runner_up=1, widths=np.zeros(2), latency=latency, gap=0.0, uncertainty=0.0)


def _drive(gate: LLFGate, latencies, budget: Budget, mistakes: np.ndarray) -> np.ndarray:
    """The gate alone: each bought round's label arrives at once with the given mistake, as the game reports it."""
    bought = np.zeros(len(latencies), dtype=bool)
    for t, lat in enumerate(latencies, start=1):
        if gate.ask(_info(t, len(latencies), float(lat)), budget):
            budget.spend(1.0)
            gate.feedback(bool(mistakes[t - 1]))
            bought[t - 1] = True
    return bought


@pytest.mark.filterwarnings("ignore:round .* the latency is")
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(1, 400), total=st.integers(0, 80), seed=st.integers(0, 2**31 - 1),
       scale=st.floats(1e-6, 1e6), bad=st.sampled_from([None, math.nan, math.inf, -math.inf]),
       wrong=st.floats(0.0, 1.0))
def test_the_dual_schedule_never_exceeds_the_budget(n, total, seed, scale, bad, wrong):
    rng = np.random.default_rng(seed)
    lat = scale * (rng.standard_normal(n) + np.linspace(1.0, -1.0, n) * rng.random())
    if bad is not None:
        lat[rng.random(n) < 0.05] = bad
    budget = Budget(float(total))
    gate = LLFGate(schedule="dual")
    bought = _drive(gate, lat, budget, rng.random(n) < wrong)
    assert bought.sum() <= total and budget.labels_bought == bought.sum()
    assert not bought[np.isnan(lat)].any()  # a NaN latency is never bought
    assert np.isfinite(gate._dual["price"]) and gate._dual["price"] >= 0


@pytest.mark.filterwarnings("ignore:round .* the latency is")
def test_a_nan_latency_changes_nothing_the_dual_gate_buys_after_it():
    rng = np.random.default_rng(7)
    n = 2000
    lat = np.abs(rng.standard_normal(n)) * np.exp(-np.arange(n) / 600)
    mistakes = rng.random(n) < 0.3
    clean = _drive(LLFGate(schedule="dual"), lat, Budget(200.0), mistakes)
    spoilt = lat.copy()
    spoilt[500] = math.nan
    dirty = _drive(LLFGate(schedule="dual"), spoilt, Budget(200.0), mistakes)
    assert not dirty[500]
    # the 250 rounds after it buy as many labels (one more at most: round 500 may have been a purchase)
    assert abs(int(dirty[501:751].sum()) - int(clean[501:751].sum())) <= 1


def test_a_learner_that_stays_wrong_makes_the_gate_spend_earlier():
    """The same latencies; only the mistakes reported on bought labels differ (the noise factor, nothing else)."""
    rng = np.random.default_rng(3)
    n = 3000
    lat = np.abs(rng.standard_normal(n)) * np.exp(-np.arange(n) / 800)
    draws = rng.random(n)
    early = {}
    for rate in (0.1, 0.6):
        budget = Budget(300.0)
        bought = _drive(LLFGate(schedule="dual"), lat, budget, draws < rate)
        early[rate] = int(bought[: n // 10].sum())
        assert bought.sum() >= 0.95 * 300
    assert early[0.6] > early[0.1] + 10
    # below the reference mistake rate the factor is 1: the same gate as with no feedback at all
    quiet = _drive(LLFGate(schedule="dual"), lat, Budget(300.0), np.zeros(n, dtype=bool))
    calm = _drive(LLFGate(schedule="dual"), lat, Budget(300.0), draws < DUAL_CONSTANTS["ref"] / 4)
    assert np.array_equal(quiet, calm)


class _Listening(LLFGate):
    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.heard: list[bool] = []

    def feedback(self, mistake: bool) -> None:
        self.heard.append(bool(mistake))
        super().feedback(mistake)


def test_the_game_tells_the_gate_of_each_bought_mistake_before_learning():
    from budgetsft.config import DEFAULT_CONFIG, merge
    from budgetsft.game import play

    objs = build(merge(DEFAULT_CONFIG, {**SMALL, "gate": {"name": "llf"}}))
    gate = _Listening(schedule="dual")
    budget = Budget(60.0)
    recs = list(play(objs["env"], objs["learner"], gate, budget, horizon=600))
    bought = [r for r in recs if r.queried]
    assert gate.heard == [r.prediction != r.gold for r in bought]  # the prediction committed in that round
    assert gate._dual["bought"] == len(bought) and gate._dual["wrong"] == sum(gate.heard)
    assert len(bought) <= 60


def test_run_and_a_stopped_session_play_the_dual_schedule_alike(tmp_path):
    cfg = {**SMALL, "gate": {"name": "llf", "beta": 0.1, "schedule": "dual"}}
    ref = run(cfg)
    assert ref.records == run(cfg).records  # same seed, same records
    assert ref.summary["labels_bought"] <= 60
    path = tmp_path / "s.db"
    Session.create(path, cfg, checkpoint_every=50).close()
    sess = Session.open(path, checkpoint_every=50)
    assert sess.play(DatasetOracle(), stop_at=237).status == "stopped"  # the price and counts are checkpointed
    sess.close()
    sess = Session.open(path)
    assert sess.play(DatasetOracle()).status == "finished"
    assert sess.records() == ref.records
    sess.close()
    default = run({**SMALL, "gate": {"name": "llf", "beta": 0.1}})  # the default plays the dual schedule
    assert default.records == ref.records
    power = run({**SMALL, "gate": {"name": "llf", "beta": 0.1, "schedule": "power"}})
    assert [r.queried for r in power.records] != [r.queried for r in ref.records]


@pytest.mark.parametrize("kw, used", [
    ({}, "dual"),
    ({"schedule": "dual"}, "dual"),
    ({"schedule": "power"}, "power"),
    ({"pacing_power": 0.5}, "power"),  # a hand-set p or memory is read by the power schedule only
    ({"memory": 100}, "power"),
    ({"window": 5}, "power"),  # window mode paces on the power schedule
    ({"threshold": "fixed", "pacing": True}, "power"),
])
def test_auto_plays_the_dual_schedule_unless_a_power_knob_or_a_window_is_set(kw, used):
    gate = LLFGate(**kw)
    assert gate.schedule_used == used
    budget = Budget(30.0)
    _drive(gate, np.random.default_rng(0).standard_normal(300), budget, np.zeros(300, dtype=bool))
    assert (budget.labels_bought > 0) and (gate._dual["n"] > 0) == (used == "dual" and kw.get("window", 1) == 1)


def test_the_dual_schedule_spends_the_whole_budget_by_a_known_horizon():
    rng = np.random.default_rng(3)
    for T, B in ((200, 20), (1702, 170), (5000, 500)):
        lat = rng.standard_normal(T) - np.linspace(0.0, 3.0, T)  # certainty grows: late labels look worthless
        budget = Budget(float(B))
        _drive(LLFGate(), lat, budget, rng.random(T) < 0.2)
        assert budget.labels_bought == B


@pytest.mark.parametrize("kw, match", [
    ({"schedule": "quantile"}, "schedule"),
    ({"schedule": "dual", "window": 5}, "window 5"),
    ({"schedule": "dual", "threshold": "fixed"}, "threshold 'fixed'"),
])
def test_the_dual_schedule_refuses_what_it_cannot_do(kw, match):
    with pytest.raises(ConfigError, match=match):
        LLFGate(**kw).ask(_info(1, 10, 0.5), Budget(1.0))


def test_the_dual_schedule_keeps_buying_on_a_stream_of_unknown_length():
    """T unknown: each doubling epoch (T̂0 = 10 B, 2^k T̂0 rounds) is paced to the share it releases."""
    rng = np.random.default_rng(0)
    n, total = 6000, 40
    lat = np.abs(rng.standard_normal(n))
    budget = Budget(float(total))
    bought = np.zeros(n, dtype=bool)
    gate = LLFGate(schedule="dual")
    for t in range(1, n + 1):
        if gate.ask(_info(t, None, float(lat[t - 1])), budget):
            budget.spend(1.0)
            gate.feedback(False)
            bought[t - 1] = True
    edges = [0, 400, 1200, 2800, 6000]  # epochs 0-3; 1 - 0.4^4 = 97 % of B released by round 6,000
    per_epoch = [int(bought[a:b].sum()) for a, b in zip(edges, edges[1:], strict=False)]
    assert all(k > 0 for k in per_epoch) and bought.sum() <= total
    assert bought.sum() >= 0.95 * total * (1 - 0.4 ** 4)
    assert per_epoch[0] <= 0.6 * total + 1  # epoch 0 releases (1 - r) B = 60 %
    # spending never passes what the power schedule has released by then, so no epoch is spent at its start
    released = np.array([LLFGate()._doubling(t, Budget(float(total))) for t in range(1, n + 1)])
    assert (np.cumsum(bought) <= released + 1e-9).all()
    # the gate's stated horizon stands in for the game's
    assert LLFGate(schedule="dual", horizon=10).ask(_info(1, None, 0.5), Budget(1.0))


def test_the_cli_runs_the_dual_schedule_and_names_a_bad_one():
    import json
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "budgetsft", "run", "--rounds", "300", "--seed", "2", "--no-comparator"]
    out = subprocess.run([*cmd, "--schedule", "dual", "--json"], capture_output=True, text=True, check=True)
    got = json.loads(out.stdout)
    ref = run({"env": {"name": "synthetic", "rounds": 300}, "seed": 2, "comparator": "none",
               "gate": {"name": "llf", "beta": 0.1, "schedule": "dual"}})
    assert got["labels_bought"] == ref.summary["labels_bought"] <= 30
    assert got["mistakes"] == ref.summary["mistakes"]
    bad = subprocess.run([*cmd, "--schedule", "bogus"], capture_output=True, text=True)
    assert bad.returncode != 0 and "'schedule'" in bad.stderr and "'power', 'dual'" in bad.stderr


def test_the_dual_schedule_never_buys_a_certain_round_when_require_late():
    rng = np.random.default_rng(4)
    lat = rng.standard_normal(600) - 0.5
    budget = Budget(60.0)
    gate = LLFGate(require_late=True, tau=0.2)
    assert gate.schedule_used == "dual"
    bought = _drive(gate, lat, budget, np.zeros(600, dtype=bool))
    assert bought.any() and (lat[bought] > 0.2).all()
    assert bought.sum() <= 60
