"""Pool sessions: which examples of an unlabelled pool should a person label next (``budgetsft select``).

A pool session holds a pool of examples (JSONL; ``answer`` may be missing on
every line), a budget, and a ledger. Each call of :func:`select_batch` picks
the next batch by LLF pool selection (SPEC §4, pool mode):

1. the learner is rebuilt from the session's config and updated on every label
   received so far, in the order the picks were made (so the state depends on
   which labels arrived, not on when: any subset, any order);
2. P is conditioned on the (ŷ, runner-up) pair of every pick still pending, as
   picks within a batch are: a pick whose label has not arrived is not picked
   again in another guise;
3. an *audit share* ε of the picks (config ``audit``) is drawn uniformly at
   random from the pool; the rest are the items of largest latency, each pick
   conditioning P for the next;
4. the picks are written to the ledger as pending queries in one transaction
   that refuses to hold more than the budget: what is spent plus what pending
   picks hold plus the new picks never exceeds the budget.

Answers come back through ``session import`` (JSONL or a Label Studio
export), the web page (``budgetsft annotate``, which selects the next batch
itself when the last pending item is answered), or ``budgetsft labelstudio
sync``. A skipped item releases what it held.

What needs gold is reported only where gold exists (:func:`pool_report`):
the audit items give an unbiased estimate of the refit head's accuracy
(leave-one-out), an evaluation file (config ``eval``) gives its held-out
accuracy, and the model's predictions on the gate's picks before their labels
arrived are shown for what they are: biased towards hard items.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np

from budgetsft.base import Round
from budgetsft.config import build
from budgetsft.exceptions import BudgetExhaustedError, ConfigError
from budgetsft.experiment import amount
from budgetsft.sessions.ledger import example_digest

__all__ = ["POOL_MODE", "Pick", "Selection", "is_pool", "pool_config", "select_batch",
           "play_pool", "pool_report", "wilson_interval", "DEFAULT_BATCH", "pending_picks"]

POOL_MODE = "pool"
DEFAULT_BATCH = 20


@dataclass(frozen=True)
class Pick:
    """One item handed to people: its query id in the ledger and what they need to label it."""

    query_id: int
    index: int  # 0-based position in the pool
    id: str
    prompt: str
    candidates: list[str]
    purpose: str  # "gate" or "audit"
    latency: float
    prediction: int
    cost: float

    def to_json(self) -> dict:
        latency = self.latency if self.purpose == "gate" and math.isfinite(self.latency) else None
        return {"query_id": self.query_id, "id": self.id, "prompt": self.prompt, "candidates": self.candidates,
                "purpose": self.purpose, "latency": latency,
                "prediction": self.prediction, "cost": self.cost}


@dataclass(frozen=True)
class Selection:
    """What one call of :func:`select_batch` did: its picks, or why it picked nothing, and the books."""

    picks: list[Pick]
    reason: str | None  # why fewer picks than asked (None when the batch is full)
    budget: float
    unit: str
    spent: float
    held: float  # held by pending picks, these included
    pending: int
    pool_size: int
    unlabelled_left: int
    books: dict = field(default_factory=dict)


def is_pool(cfg: dict) -> bool:
    return cfg.get("mode") == POOL_MODE


def pool_config(cfg: dict, *, batch: int | None = None) -> dict:
    """A session config made a pool session's: the whole data set is the pool, answers optional."""
    cfg = dict(cfg)
    data = cfg.get("data")
    if not data:
        raise ConfigError("a pool session needs '--data POOL.jsonl' (or a built-in data set): the pool to "
                          "choose from.")
    data = {"name": data} if isinstance(data, str) else dict(data)
    data["test_fraction"] = 0.0
    data["allow_unlabelled"] = True
    cfg["data"] = data
    cfg["mode"] = POOL_MODE
    if batch is not None:
        cfg["batch"] = batch
    cfg.setdefault("batch", DEFAULT_BATCH)
    cfg.setdefault("audit", 0.0)
    return cfg


def _replay(session, rounds: Sequence[Round], answers) -> tuple[object, object]:
    objs = build(session.config)
    learner, follower = objs["learner"], objs["follower"]
    learner.score_many(np.asarray(rounds[0].features, dtype=np.float64))  # lazily initialises P_
    for ans in answers:
        X = np.asarray(rounds[ans.round - 1].features, dtype=np.float64)
        scores = learner.score_many(X)
        learner.learn_one(X, int(ans.label), follower.respond(scores, int(ans.label)))
    return learner, follower


def _costs(rounds) -> list[float]:
    """Each pool item's label price (1 when absent); a compact pool knows them without building any features."""
    raw = rounds.cost if isinstance(getattr(rounds, "cost", None), Sequence) else (r.cost for r in rounds)
    return [1.0 if c is None else float(c) for c in raw]


def _reserve_price(ledger, cost: float) -> float:
    """What a pick holds of the budget until it is answered: 1 label, or its cost (cost budget)."""
    return 1.0 if ledger.budget_unit == "labels" else float(cost)


def select_batch(session, n: int | None = None, *, progress: Callable[[str], None] | None = None) -> Selection:
    """Pick the next ``n`` items of a pool session to label (see the module docstring).

    Never picks past the budget, counting pending picks; picks nothing (saying why) when the budget is
    held or spent, or the pool is exhausted.
    """
    from budgetsft.gates.llf import pick_pool_batch

    cfg = session.config
    if not is_pool(cfg):
        raise ConfigError(f"{session.ledger.path}: not a pool session (it plays a stream); `budgetsft select` "
                          f"needs a session it created.")
    n = int(cfg.get("batch", DEFAULT_BATCH)) if n is None else n
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"The 'batch' parameter of select must be an int >= 1. Got {n!r}.")
    ledger = session.ledger
    rounds = session.stream()
    examples = session.examples()
    N = len(rounds)
    queries = ledger.queries()
    taken = np.zeros(N, dtype=bool)
    for q in queries:
        taken[q.round - 1] = True
    pending = [q for q in queries if q.status == "pending"]
    total, unit = ledger.budget_total, ledger.budget_unit
    spent, held = ledger.spent(), ledger.pending_reserve()
    costs = _costs(rounds)

    def result(picks: list[Pick], reason: str | None) -> Selection:
        return Selection(picks, reason, total, unit, ledger.spent(), ledger.pending_reserve(),
                         len(ledger.pending()), N, int((~taken).sum()))

    left = Fraction(total).limit_denominator(10**12) - Fraction(spent).limit_denominator(10**12) \
        - Fraction(held).limit_denominator(10**12)
    available = ~taken
    if not available.any():
        return result([], f"every item of the pool ({N}) has been picked; nothing is left to select.")
    affordable = available & np.array([_reserve_price(ledger, c) <= float(left) + 1e-12 for c in costs])
    if not affordable.any():
        if held > 0:
            return result([], f"the budget is spent or held: {spent:g} of {total:g} {unit} spent and {held:g} "
                              f"held by {len(pending)} pending pick(s). Answer (or skip) them, then select again.")
        return result([], f"the budget is spent: {spent:g} of {total:g} {unit}. Nothing more will be picked.")
    answers = sorted(ledger.answers(), key=lambda a: a.query_id)
    if progress is not None:
        progress(f"fitting the model on {len(answers)} label(s)")
    learner, _ = _replay(session, rounds, answers)
    # How many picks fit: under a budget of labels, whole labels; under a cost budget the greedy stops itself.
    n_fit = n if unit == "cost" else min(n, int(math.floor(float(left) + 1e-9)))
    n_fit = min(n_fit, int(affordable.sum()))
    # The audit share: uniformly random items, so that accuracy can be estimated without bias.
    eps = float(cfg.get("audit", 0.0) or 0.0)
    live = [q for q in queries if q.status != "skipped"]
    audits_so_far = sum(q.purpose == "audit" for q in live)
    n_audit = 0
    if eps > 0:
        target = int(math.floor(eps * (len(live) + n_fit) + 0.5))
        n_audit = max(0, min(n_fit, target - audits_so_far))
    rng = np.random.default_rng([int(cfg.get("seed", 0)), len(queries), 0xA0D17])
    audit: list[int] = []
    room = Fraction(left)
    for i in rng.permutation(np.flatnonzero(affordable)) if n_audit else ():  # uniform, while they fit
        price = Fraction(_reserve_price(ledger, costs[int(i)]))
        if price <= room:
            audit.append(int(i))
            room -= price
            if len(audit) == n_audit:
                break
    audit.sort()
    if progress is not None:
        progress(f"scoring {int(available.sum())} unlabelled item(s)")
    # Rounds over compact block features hand the pass their pool as it is (expanded chunk by chunk, never whole).
    pool = getattr(rounds, "features", None)
    if not callable(getattr(pool, "stack_rows", None)):
        pool = [np.asarray(r.features) for r in rounds]
    avail = affordable.copy()
    avail[audit] = False
    budget_left = _left_budget(ledger, float(left), [costs[i] for i in audit])
    gate_picks, lat = pick_pool_batch(learner, pool, n_fit - len(audit), available=avail, budget=budget_left,
                                      costs=costs, condition_on=[q.round - 1 for q in pending] + audit)
    chosen = [(i, "audit") for i in audit] + [(i, "gate") for i in gate_picks]
    if not chosen:
        return result([], "no item of the pool fits what is left of the budget.")
    items = []
    for i, purpose in chosen:
        X = np.asarray(rounds[i].features, dtype=np.float64)
        pred = int(np.argmax(learner.score_many(X)))
        latency = float(lat.get(i, math.nan)) if purpose == "gate" else math.nan
        items.append((i + 1, examples[i].id, latency if math.isfinite(latency) else 0.0, costs[i],
                      example_digest(examples[i]), purpose, pred))
    try:
        stored = ledger.add_queries(items, budget_check=True)
    except BudgetExhaustedError as exc:  # another process picked meanwhile: nothing was written
        raise BudgetExhaustedError(f"{exc} Select again.") from None
    picks = []
    for (rnd, ex_id, latency, cost, _, purpose, pred) in items:
        q = stored[rnd]
        ex = examples[rnd - 1]
        picks.append(Pick(q.id, rnd - 1, ex_id, ex.prompt, list(ex.candidates), purpose, latency, pred, cost))
    ledger.log("select", {"picks": [p.query_id for p in picks], "asked": n, "audit": len(audit)})
    reason = None if len(picks) == n else (
        f"{len(picks)} of the {n} asked fit the budget: {total:g} {unit}, of which "
        f"{ledger.spent():g} spent and {ledger.pending_reserve():g} held by pending picks."
        if int(affordable.sum()) > len(picks) else f"only {len(picks)} unlabelled item(s) were left.")
    taken[[p.index for p in picks]] = True
    return result(picks, reason)


def pending_picks(session) -> Selection:
    """The picks still awaiting an answer, as :func:`select_batch` returned them (nothing is picked)."""
    ledger = session.ledger
    examples = session.examples()
    picks = []
    for q in sorted(ledger.pending(), key=lambda q: q.id):
        ex = examples[q.round - 1]
        picks.append(Pick(q.id, q.round - 1, ex.id, ex.prompt, list(ex.candidates), q.purpose, q.latency,
                          -1 if q.prediction is None else q.prediction, q.cost))
    n = len(session.stream())
    return Selection(picks, None if picks else "no pick is awaiting an answer.", ledger.budget_total,
                     ledger.budget_unit, ledger.spent(), ledger.pending_reserve(), len(picks), n,
                     n - len(ledger.queries()))


def _left_budget(ledger, left: float, audit_costs: Sequence[float]):
    from budgetsft.budget import Budget

    b = Budget(max(0.0, left), ledger.budget_unit)
    for c in audit_costs:
        b.spend(c)
    return b


def play_pool(session, oracle, *, progress: Callable[[int], None] | None = None, stop_at: int | None = None):
    """Play a pool session against an oracle: select a batch, ask, and again, until the budget is spent.

    An oracle that answers at once (the dataset oracle: a simulation on labelled data) runs the whole
    loop; one that makes people answer later returns ``waiting`` while picks are pending (the web page's
    driver calls again when they are answered). Returns ``(status, labels bought, pending)``.
    """
    ledger = session.ledger
    while True:
        pending = ledger.pending()
        if pending:
            rounds = session.stream()
            context = {q.round: (rounds[q.round - 1], rounds[q.round - 1].features, None) for q in pending}
            oracle.request(session, pending, context)
            pending = ledger.pending()
            if pending:
                ledger.set_meta("status", "waiting")
                return "waiting", len(ledger.answers()), len(pending)
        if stop_at is not None and len(ledger.answers()) >= stop_at:
            ledger.set_meta("status", "stopped")
            return "stopped", len(ledger.answers()), 0
        sel = select_batch(session)
        if progress is not None:
            progress(len(ledger.answers()))
        if not sel.picks:
            ledger.set_meta("status", "finished")
            return "finished", len(ledger.answers()), 0


def wilson_interval(k: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion k / n (95 % by default)."""
    if n == 0:
        return (math.nan, math.nan)
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # the interval holds k / n: at k = n the upper bound is 1 exactly, not a rounding below it
    return (max(0.0, min(p, centre - half)), min(1.0, max(p, centre + half)))


def _pool_status(ledger, session, pending) -> str:
    """waiting (picks await answers), finished (the budget or the pool is used up), or ready (select more)."""
    if pending:
        return "waiting"
    left = ledger.remaining()
    n_queries = len(ledger.queries())
    if n_queries >= len(session.stream()):
        return "finished"
    cheapest = 1.0 if ledger.budget_unit == "labels" else min(_costs(session.stream()))
    return "finished" if left + 1e-12 < cheapest else "ready"


def _labelled_rounds(rounds: Sequence[Round], answers) -> list[Round]:
    return [Round(features=rounds[a.round - 1].features, gold=int(a.label), id=rounds[a.round - 1].id)
            for a in answers]


def pool_report(session, *, seed: int | None = None) -> dict:
    """What is known of a pool session, each number named for how it was estimated (no gold invented).

    * ``audit``: the refit head's accuracy estimated on the audit items (uniform draws from the pool), each
      predicted by the head refit on every other bought label (leave-one-out), with a Wilson 95 % interval;
    * ``eval``: the refit head's accuracy on the labelled evaluation file (config ``eval``), when given;
    * ``gate_picks_before_label``: how often the model's prediction on the gate's picks, made before the
      label arrived, was right. Biased towards hard items (the gate picks where the model is unsure): not
      an accuracy of the model.
    """
    from budgetsft.refit import RefitHead, refit

    ledger = session.ledger
    cfg = session.config
    seed = int(cfg.get("seed", 0)) if seed is None else seed
    queries = ledger.queries()
    answers = ledger.answers()
    by_query = {a.query_id: a for a in answers}
    total, unit = ledger.budget_total, ledger.budget_unit
    pending = [q for q in queries if q.status == "pending"]
    report: dict = {
        "path": str(ledger.path),
        "mode": POOL_MODE,
        "status": _pool_status(ledger, session, pending),
        "pool_size": len(session.stream()),
        "budget": amount(total),
        "unit": unit,
        "spent": amount(ledger.spent()),
        "held_by_pending": amount(ledger.pending_reserve()),
        "remaining": amount(ledger.remaining() - ledger.pending_reserve()),
        "labels_bought": len(answers),
        "pending": len(pending),
        "skipped": sum(q.status == "skipped" for q in queries),
        "picks": len(queries),
        "audit_share": float(cfg.get("audit", 0.0) or 0.0),
        "batch": int(cfg.get("batch", DEFAULT_BATCH)),
        "by_annotator": ledger.labels_by_annotator(),
    }
    gate_done = [(q, by_query[q.id]) for q in queries if q.purpose == "gate" and q.id in by_query
                 and q.prediction is not None]
    if gate_done:
        k = sum(q.prediction == a.label for q, a in gate_done)
        report["gate_picks_before_label"] = {
            "n": len(gate_done), "correct": k, "rate": k / len(gate_done),
            "note": "the model's prediction on the gate's picks before their labels arrived; biased towards "
                    "hard items (the gate picks where the model is unsure): not an estimate of accuracy"}
    rounds = session.stream()
    bought = _labelled_rounds(rounds, answers)
    audit_done = [(q, by_query[q.id]) for q in queries if q.purpose == "audit" and q.id in by_query]
    head = refit(bought, seed=seed) if bought and (audit_done or cfg.get("eval")) else None  # fitted once
    if audit_done and len(bought) >= 2:
        order = {a.query_id: i for i, a in enumerate(answers)}
        hits = 0
        for _, a in audit_done:
            rest = [r for j, r in enumerate(bought) if j != order[a.query_id]]
            pred = RefitHead(head.C).fit(rest).predict(bought[order[a.query_id]])
            hits += int(pred == a.label)
        lo, hi = wilson_interval(hits, len(audit_done))
        report["audit"] = {
            "n": len(audit_done), "correct": hits, "accuracy": hits / len(audit_done), "ci95": [lo, hi],
            "estimator": "leave-one-out accuracy of the head refit on the bought labels, on the audit items "
                         "(drawn uniformly at random from the pool); Wilson 95 % interval"}
    elif float(cfg.get("audit", 0.0) or 0.0) > 0:
        report["audit"] = {"n": len(audit_done), "accuracy": None,
                           "estimator": "no answered audit item yet (or fewer than 2 labels): no estimate"}
    if cfg.get("eval"):
        test = session.eval_rounds()
        if head is not None and test:
            report["eval"] = {"file": cfg["eval"], "n": len(test), "accuracy": head.accuracy(test),
                              "estimator": "accuracy of the head refit on the bought labels, on the labelled "
                                           "evaluation file"}
    return report
