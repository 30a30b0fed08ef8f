"""Run one configured game, or a sweep of them, and summarise (the library behind the CLI)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from threadpoolctl import threadpool_limits

from budgetsft.base import Record, Round
from budgetsft.budget import Budget
from budgetsft.config import DEFAULT_CONFIG, build, merge, validate_config
from budgetsft.game import audit_rounds, play
from budgetsft.refit import refit_accuracy
from budgetsft.regret import summarize

__all__ = ["RunResult", "Recorder", "run", "run_summary", "stream_of", "budget_for", "sweep", "sweep_cells",
           "held_out_accuracy", "SUMMARY_KEYS", "aggregate", "bought_refit_accuracy", "comparator_method", "amount",
           "real_streams"]

# Keys every run summary carries (the CLI's --json contract), in print order.
SUMMARY_KEYS = (
    "gate",
    "beta",
    "budget",
    "labels_bought",
    "rounds",
    "mistakes",
    "hinge_loss",
    "pseudo_regret",
    "stackelberg_regret",
    "regret_queried",
    "regret_unqueried",
    "comparator",
    "pseudo_regret_queried",
    "pseudo_regret_unqueried",
    "test_accuracy",
    "refit_accuracy",
    "seconds",
)


@dataclass
class RunResult:
    """Records, the rounds they were played on, and the summary of one run."""

    config: dict
    records: list[Record]
    rounds: list[Round]
    summary: dict
    learner: object = None
    extras: dict = field(default_factory=dict)


def held_out_accuracy(learner, rounds: Sequence[Round]) -> float:
    """Fraction of held-out rounds whose committed prediction (argmax score) is the gold."""
    if not rounds:
        return math.nan
    hits = sum(int(np.argmax(learner.score_many(np.asarray(r.features, dtype=np.float64))) == r.gold) for r in rounds)
    return hits / len(rounds)


def bought_refit_accuracy(cfg: dict, records: Sequence[Record], played: Sequence[Round],
                          test: Sequence[Round] | None) -> float:
    """Held-out accuracy of the head refit on exactly the bought rounds (``budgetsft.refit``; NaN if off)."""
    if not cfg.get("refit", True) or not test:
        return math.nan
    bought = [rnd for rec, rnd in zip(records, played, strict=True) if rec.queried]
    return refit_accuracy(bought, test, seed=int(cfg.get("seed", 0)))


def budget_for(cfg: dict, stream: Sequence[Round] | object) -> Budget:
    gate = cfg["gate"]
    unit = gate.get("unit", "labels")
    if "budget" in gate:
        return Budget(gate["budget"], unit)
    horizon = len(stream)  # type: ignore[arg-type]
    costs = None
    if unit == "cost":
        costs = [r.cost for r in stream]  # type: ignore[union-attr]
    return Budget.from_beta(gate.get("beta", 1.0), horizon, costs=costs, unit=unit)


def run(
    config: dict | None = None,
    *,
    stream: Sequence[Round] | None = None,
    test: Sequence[Round] | None = None,
    progress: Callable[[int], None] | None = None,
    widths: bool = True,
) -> RunResult:
    """Play one configured game and summarise it.

    Parameters
    ----------
    config : dict, optional
        Merged over :data:`budgetsft.config.DEFAULT_CONFIG`.
    stream, test : sequence of Round, optional
        Rounds to play (and held-out rounds to evaluate on) instead of the
        config's synthetic environment; used for real data.
    progress : callable, optional
        Called with the number of rounds played so far.
    widths : bool, default=True
        False: skip the widths where the gate reads none (``reads_widths = False``: first, random, margin,
        full); the records' widths and latency are then NaN, every decision the same. Ignored for other gates.
    """
    cfg = merge(DEFAULT_CONFIG, config or {})
    validate_config(cfg)
    objs = build(cfg)
    env = objs.get("env")
    if stream is None and cfg.get("data"):
        streams = real_streams(cfg)
        stream, test = streams.train, streams.test
    if stream is None:
        stream = env
        if test is None and hasattr(env, "test_rounds") and cfg.get("test_rounds", 0):
            test = env.test_rounds(int(cfg["test_rounds"]))
    budget = budget_for(cfg, stream)
    learner, gate, follower = objs["learner"], objs["gate"], objs["follower"]
    share = float(cfg.get("audit", 0.0) or 0.0)
    audit = audit_rounds(share, budget.total, len(stream), int(cfg.get("seed", 0))) if share else None
    start = time.perf_counter()
    records: list[Record] = []
    played: list[Round] = []
    source = Recorder(stream, played)
    # One round is a few (K, d) x (d, d) products: BLAS threads only add contention
    # (20x slower at d = 768 on a loaded 2-core machine; benchmarks/learner_throughput.py).
    with threadpool_limits(limits=1, user_api="blas"):
        for rec in play(source, learner, gate, budget, follower=follower, horizon=len(stream), audit=audit,
                        widths=widths or getattr(gate, "reads_widths", True)):
            records.append(rec)
            if progress is not None:
                progress(len(records))
    seconds = time.perf_counter() - start
    summary = run_summary(cfg, records, played, budget, learner, test, seconds)
    if audit is not None:  # the audit rounds: queried rounds drawn for the audit (bought whatever the gate said)
        summary["audit_rounds"] = [r.round for r in records if r.queried and audit(r.round)]
    return RunResult(config=cfg, records=records, rounds=played, summary=summary, learner=learner)


def run_summary(cfg: dict, records: Sequence[Record], played: Sequence[Round], budget: Budget, learner,
                test: Sequence[Round] | None, seconds: float) -> dict:
    """The summary of a played game (``run`` and resumed sessions print the same one)."""
    # The comparator depends on the played rounds only: solved once per stream (content-keyed cache).
    method = comparator_method(cfg)
    summary = summarize(records, played if method != "none" else None, S=float(cfg.get("comparator_S", 10.0)),
                        comparator=method if method != "none" else "auto", progress=bool(cfg.get("progress")))
    for key in ("stackelberg_regret", "regret_queried", "regret_unqueried", "comparator_loss", "comparator_lower"):
        summary.setdefault(key, math.nan)
    summary.setdefault("comparator", "none")
    summary.update(
        gate=cfg["gate"]["name"],
        beta=cfg["gate"].get("beta"),
        budget=amount(budget.total),
        budget_unit=budget.unit,
        learner=cfg["learner"]["name"],
        seed=cfg.get("seed", 0),
        test_accuracy=held_out_accuracy(learner, test) if test is not None else math.nan,
        refit_accuracy=bought_refit_accuracy(cfg, records, played, test),
        seconds=seconds,
    )
    if cfg.get("data"):  # what was played: the data set and its featuriser, or the environment
        from budgetsft.realdata import configured_features

        data = cfg["data"] if isinstance(cfg["data"], dict) else {"name": cfg["data"]}
        summary.update(data=data["name"], features=configured_features(cfg))
        feats = cfg.get("features")
        if isinstance(feats, dict) and feats.get("model"):
            summary["model"] = str(feats["model"])  # the featuriser's model, as given (--model)
    else:
        summary["env"] = cfg["env"]["name"]
    return summary


def amount(x: float) -> int | float:
    """A budget or spend as people state it: 30, not 30.0 (a whole number stays an int)."""
    return int(x) if float(x).is_integer() and abs(x) < 2**53 else float(x)


def comparator_method(cfg: dict) -> str:
    """The config's comparator: ``comparator`` (exact, approx, none); ``regret_lp: false`` (older configs) is none."""
    if cfg.get("regret_lp", True) is False:
        return "none"
    return str(cfg.get("comparator", "auto"))


def stream_of(cfg: dict, env=None) -> tuple[Sequence[Round], Sequence[Round] | None, object]:
    """The rounds a config plays, its held-out rounds, and the real-data streams (or None)."""
    if cfg.get("data"):
        streams = real_streams(cfg)
        return streams.train, streams.test, streams
    env = env if env is not None else build(cfg)["env"]
    test = env.test_rounds(int(cfg["test_rounds"])) if hasattr(env, "test_rounds") and cfg.get("test_rounds", 0) \
        else None
    return env, test, None


def real_streams(cfg: dict):
    """Streams of a config with a ``data`` section (``features`` picks the featuriser)."""
    from budgetsft.realdata import load_streams

    data = dict(cfg["data"]) if isinstance(cfg["data"], dict) else {"name": cfg["data"]}
    feats = dict(cfg.get("features") or {"name": "auto"})
    if isinstance(cfg.get("features"), str):
        feats = {"name": cfg["features"]}
    name = data.pop("name")
    kind = feats.pop("name", "auto")
    device = feats.pop("device", "auto")
    return load_streams(name, kind, seed=int(cfg.get("seed", 0)), device=device, feature_options=feats,
                        progress=bool(cfg.get("progress", False)), **data)


class Recorder:
    """Wraps a stream, keeping each round it yields (for the hindsight comparator), with the stream's length
    (the horizon) and its ``bind`` (an env that picks its contexts with the learner)."""

    def __init__(self, stream, sink: list[Round]) -> None:
        self._stream = stream
        self._sink = sink

    def __len__(self) -> int:
        return len(self._stream)

    def bind(self, learner) -> None:
        if hasattr(self._stream, "bind"):
            self._stream.bind(learner)

    def __iter__(self):
        for r in self._stream:
            self._sink.append(r)
            yield r


def sweep_cells(base: dict | None, gates: Sequence[str], betas: Sequence[float], seeds: Sequence[int],
                gate_options: dict[str, dict] | None = None) -> list[dict]:
    """The run configs of a sweep in (gate, β, seed) order; ``full`` once per seed at β = 1.

    A β of None stands for the base config's budget given as an amount (``gate.budget``, ``--budget N``).
    """
    base = merge(DEFAULT_CONFIG, base or {})
    gate_options = gate_options or {}
    amount = {k: base["gate"][k] for k in ("budget", "unit") if k in base["gate"]}
    cells = []
    for g in gates:
        for b in ([1.0] if g == "full" else betas):
            for s in seeds:
                # β None: the base config's budget as an amount (--budget N), in its unit
                budget = {"beta": float(b)} if b is not None else amount
                gate = {"name": g, **budget, **gate_options.get(g, {})}
                cells.append(merge(base, {"gate": gate, "seed": int(s)}))
    return cells


def sweep(
    base: dict | None,
    gates: Sequence[str],
    betas: Sequence[float],
    seeds: Sequence[int],
    *,
    gate_options: dict[str, dict] | None = None,
    stream_factory: Callable[[int], tuple[Sequence[Round], Sequence[Round] | None]] | None = None,
    on_result: Callable[[dict], None] | None = None,
    on_run: Callable[[RunResult], None] | None = None,
) -> list[dict]:
    """Run every (gate, β, seed) cell; returns summaries in (gate, β, seed) order.

    ``full`` is run once per seed at β = 1 whatever ``betas`` says. Cells are
    validated before the first one is played. ``on_result`` gets each summary,
    ``on_run`` each full :class:`RunResult` (records included).
    """
    cells = sweep_cells(base, gates, betas, seeds, gate_options)
    for cfg in cells:
        validate_config(cfg)
    out = []
    real: dict[int, object] = {}  # real-data streams depend on the seed only: load and featurise once
    for cfg in cells:
        stream = test = None
        if stream_factory is not None:
            stream, test = stream_factory(cfg["seed"])
        elif cfg.get("data"):
            if cfg["seed"] not in real:
                real[cfg["seed"]] = real_streams(cfg)
            stream, test = real[cfg["seed"]].train, real[cfg["seed"]].test
        res = run(cfg, stream=stream, test=test)
        out.append(res.summary)
        if on_run is not None:
            on_run(res)
        if on_result is not None:
            on_result(res.summary)
    return out


def aggregate(summaries: Sequence[dict], keys: Sequence[str]) -> list[dict]:
    """Mean and sd over seeds for each (gate, β) cell, in first-seen order."""
    groups: dict[tuple, list[dict]] = {}
    for s in summaries:
        groups.setdefault((s["gate"], s["beta"]), []).append(s)
    rows = []
    for (g, b), items in groups.items():
        row = {"gate": g, "beta": b, "seeds": len(items), "budget": items[0]["budget"]}
        for k in keys:
            vals = np.array([float(it[k]) for it in items], dtype=np.float64)
            row[k] = float(vals.mean())
            row[f"{k}_sd"] = float(vals.std(ddof=1)) if len(vals) > 1 else 0.0
        rows.append(row)
    return rows
