"""`budgetsft adapt`: buy labels with gates, fine-tune LoRA on each set, compare with noise bars (SPEC §7).

For every seed:

1. The train split is featurised (cached; ``features="auto"`` is what
   ``budgetsft run`` uses: ``block`` on a fixed label set) and played through
   the game by the gate and by each baseline at budget B = ⌊βn⌋, with
   ``budgetsft run``'s defaults (logistic learner, data-driven radius): the
   labels bought are exactly those ``budgetsft run --data D --gate G --beta β
   --seed s`` buys. ``all`` takes every train label.
2. One fresh LoRA per labelled set, the same recipe for every set
   (:func:`budgetsft.adapt.engine.train_lora`: ``epochs`` passes over the set),
   evaluated by candidate log-likelihood on the seed's test split, beside
   zero-shot (:func:`budgetsft.adapt.engine.score_packed`).

Then :func:`budgetsft.adapt.report.seed_report` puts every seed together: per
method accuracy with a bootstrap 95 % interval, and paired differences
(``llf-random``, ...) with theirs.

With ``labels_file`` (a ``budgetsft session export`` JSONL or a session ledger)
nothing is selected: that set is trained on (its own answers, e.g. a human
annotator's) and compared with zero-shot on the test split of ``data``; test
items that are in the file are left out of the test split. When the train split
of ``data`` has gold answers, each seed also draws a ``random`` set of the same
size from it (:func:`random_set`) and trains it with the same recipe, so the
report says what the given labels bought over random ones (``labels-random``).

The causal LM is ``model``: the packaged SmolLM2-135M-Instruct by default, or a
local directory or Hugging Face id (:func:`budgetsft.features.models.resolve_model`);
the adapters record it as their base (a directory as its absolute path, so that
:func:`budgetsft.adapt.lora.load_adapted` finds it from any folder).
"""

from __future__ import annotations

import copy
import gc
import json
import math
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from budgetsft._validation import check_choice, check_float, check_int
from budgetsft.budget import Budget
from budgetsft.config import DEFAULT_CONFIG, GATES, LEARNERS, SEEDED_OFFSET, merge
from budgetsft.data import Example
from budgetsft.exceptions import ConfigError, DataError

__all__ = ["select_labels", "run_adapt", "read_labels", "read_labelled", "random_set", "distill_set", "lopsided_note",
           "RECIPE"]

#: The LoRA recipe of every labelled set (docs/method.md, "Adaptation").
RECIPE: dict[str, Any] = {
    "epochs": 3,
    "lr": 3e-3,
    "lora_r": 16,
    "lora_alpha": 16,
    "lora_layers": 4,
    "batch_size": 8,
    "max_prompt_tokens": 64,
    "eval_batch_size": 32,
}
BASELINES = ("random", "first")
#: Training recipes: ``plain`` (LoRA on the bought gold labels) and ``distill`` (plus the refit head's labels for
#: the rest of the train split, :func:`distill_set`).
RECIPES = ("plain", "distill")
#: The weight of a pseudo-label relative to a gold one, times the head's probability of it (:func:`distill_set`).
DISTILL_WEIGHT = 1.0
#: Passes of ``distill`` over the head's labels when ``--epochs`` is 3 (fewer when it is below): each gold label is
#: listed twice, so it gets 4 passes (docs/method.md, "The distill recipe"; measured in benchmarks/RESULTS.md,
#: "Fewer passes over the head's labels").
DISTILL_PASSES = 2.0
#: Passes of ``all/plain`` (LoRA on every train label, the reference) when ``--epochs`` is 3: it trains on as many
#: examples as a distill set, so it makes as many passes (docs/method.md, "Adaptation"; measured in
#: benchmarks/RESULTS.md, "The headline inside 45 minutes"; benchmarks/all_passes.py).
ALL_PASSES = 2.0
#: Second entry of the seed sequence of the random set compared with ``--labels`` (its own stream, not the gate's).
RANDOM_SET_STREAM = 3
#: Second entry of the seed sequence of a pool-mode audit draw.
AUDIT_STREAM = 4
#: The default audit share of ``adapt``: about a tenth of the gate's budget is drawn uniformly at random and held
#: out of training, to choose the model handed back (docs/method.md, "The model handed back").
AUDIT_SHARE = 0.1


def _gate_config(name: str, beta: float, seed: int, learner: dict | None, schedule: str = "auto") -> dict:
    """The config ``budgetsft run --data D --gate name --beta beta --seed seed`` plays (selection only);
    ``schedule``: the llf gate's (``--schedule``), "auto" its default."""
    gate = {"name": name, "beta": beta, **({"schedule": schedule} if name == "llf" and schedule != "auto" else {})}
    cfg = merge(DEFAULT_CONFIG, {"gate": gate, "seed": seed, "test_rounds": 0, "comparator": "none",
                                 "refit": False})
    if learner is not None:
        cfg["learner"] = dict(learner)
    return cfg


def select_labels(
    streams,
    gate: str,
    beta: float,
    *,
    seed: int = 0,
    mode: str = "stream",
    learner: dict | None = None,
    baselines: tuple[str, ...] = ("random", "first"),
    batch_size: int = 8,
    all_head: bool = True,
    progress: bool = False,
    audit: float = 0.0,
    schedule: str = "auto",
) -> dict[str, dict[str, Any]]:
    """Labelled train sets bought by ``gate`` and by each baseline at the same budget, plus ``all``.

    In stream mode each set is what ``budgetsft run`` buys with that gate at that
    seed (``learner`` None: run's default learner). ``progress`` shows a tqdm bar
    on stderr over the labels bought in pool mode. ``all_head=False`` skips the
    full-information run that gives ``all`` its head accuracy (None then).

    ``audit`` (a share ε in [0, 1)): the gate's budget includes about εB rounds drawn uniformly at random and
    bought whatever the gate says (:func:`budgetsft.game.audit_rounds`, as a session's ``--audit`` draws
    them; in pool mode ⌊εB + ½⌋ items drawn uniformly from the pool before the gate picks the rest). Their ids
    are the gate set's ``"audit_ids"`` (also in ``"ids"``). The baselines draw none.

    ``schedule``: the llf gate's spending rule (:class:`budgetsft.gates.LLFGate`), ``"auto"`` by default.

    Returns
    -------
    dict
        name -> {"examples": list of Example, "ids": list of str,
        "head_accuracy": held-out accuracy of the scoring head trained on them, "audit_ids": list of str}.
    """
    from budgetsft.experiment import held_out_accuracy, run

    check_choice("select_labels", "mode", mode, ("stream", "pool"))
    for name in (gate, *baselines):
        if name not in GATES:
            raise ConfigError(f"unknown gate {name!r}; valid: {', '.join(sorted(GATES))}.")
    check_float("select_labels", "beta", beta, low=0.0, high=1.0, low_open=True)
    audit = check_float("select_labels", "audit", audit, low=0.0, high=1.0, high_open=True)
    train, test = streams.train, streams.test
    by_id = {ex.id: ex for ex in streams.dataset.train}
    out: dict[str, dict[str, Any]] = {}
    names = [gate] + [b for b in baselines if b != gate]
    for name in names:
        cfg = _gate_config(name, beta, seed, learner, schedule)
        share = audit if name == gate else 0.0
        audit_ids: list[str] = []
        if name == gate and mode == "pool":
            from tqdm.auto import tqdm

            from budgetsft.gates import select_pool

            spec = dict(cfg["learner"])
            head = LEARNERS[spec.pop("name")](**spec)
            total = int(Budget.from_beta(beta, len(train)).total)
            n_audit = min(total, math.floor(share * total + 0.5))
            drawn = set(np.random.default_rng([seed, AUDIT_STREAM]).choice(len(train), n_audit, replace=False)
                         .tolist()) if n_audit else set()
            rest = [i for i in range(len(train)) if i not in drawn]
            with tqdm(total=total - n_audit, desc=f"{name} pool selection", unit="label",
                      disable=not progress, file=sys.stderr, leave=False) as bar:
                picked = select_pool(head, [train[i].features for i in rest], Budget(float(total - n_audit)),
                                     lambda j, rest=rest: train[rest[j]].gold, batch_size=batch_size,
                                     costs=[train[i].cost for i in rest], progress=lambda k: bar.update(k - bar.n))
            audit_ids = [train[i].id for i in sorted(drawn)]
            ids = sorted([rest[j] for j in picked] + sorted(drawn))
            ids = [train[i].id for i in ids]
            acc = held_out_accuracy(head, test)
        else:
            res = run({**cfg, "audit": share}, stream=train, test=test, widths=False)  # ids only: none if unread
            ids = [r.id for r in res.records if r.queried]
            drawn_rounds = set(res.summary.get("audit_rounds", ()))
            audit_ids = [r.id for r in res.records if r.queried and r.round in drawn_rounds]
            acc = res.summary["test_accuracy"]
        out[name] = {"examples": [by_id[i] for i in ids], "ids": ids, "head_accuracy": acc, "audit_ids": audit_ids}
    head_all = None
    if all_head:
        head_all = run(_gate_config("full", 1.0, seed, learner), stream=train, test=test).summary["test_accuracy"]
    out["all"] = {"examples": list(streams.dataset.train), "ids": [ex.id for ex in streams.dataset.train],
                  "head_accuracy": head_all, "full": True}
    return out


def distill_set(train, test, by_id: dict[str, Example], bought_ids: Sequence[str], *, seed: int = 0,
                weight: float = DISTILL_WEIGHT, head=None) -> dict[str, Any]:
    """The ``distill`` training set of one selection: its gold labels, plus the refit head's labels for the rest.

    The head is :func:`budgetsft.refit.refit` on the bought rounds alone (C by cross-validation on them, as
    `budgetsft run` refits). Every unbought train round gets the head's answer, argmax_a q(a) with
    q = softmax(θᵀφ(x, a)) (temperature 1: the head's own calibrated probabilities), as a pseudo-label of
    weight ``weight`` · q(answer), so a pseudo-label pulls as hard as the head is sure of it, and never harder
    than a gold label (weight 1). The test split is never read except to report the head's accuracy.
    ``head``: that refit head when the caller has it already (the same fit).

    Returns ``{"examples", "ids", "weights", "pseudo": {id: [answer, weight]}, "head_accuracy", "shares"}``;
    ``shares``: ``{"gold": [...], "pseudo": [...]}``, the share of each answer index among the gold labels and
    among the head's labels (how lopsided the head is against the labels it learnt from:
    :func:`lopsided_note`).
    """
    from dataclasses import replace

    from budgetsft.refit import refit

    weight = check_float("distill_set", "weight", weight, low=0.0, high=1.0, low_open=True)
    bought = set(bought_ids)
    rounds = [r for r in train if r.id in bought]
    if not rounds:
        raise DataError("distill needs at least one bought label to refit the head on; the selection bought none.")
    head = refit(rounds, seed=seed) if head is None else head
    examples, weights, pseudo = [], [], {}
    for r in train:
        ex = by_id[r.id]
        if r.id in bought:
            examples.append(ex)
            weights.append(1.0)
            continue
        q = head.predict_proba(r)
        a = int(np.argmax(q))  # lowest index on ties, the game's rule
        examples.append(replace(ex, answer=a))
        weights.append(float(weight * q[a]))
        pseudo[r.id] = [a, weights[-1]]
    k = max(len(by_id[r.id].candidates) for r in train)
    gold = np.bincount([int(r.gold) for r in rounds], minlength=k)
    given = np.bincount([a for a, _ in pseudo.values()], minlength=k)
    shares = {"gold": (gold / max(gold.sum(), 1)).tolist(), "pseudo": (given / max(given.sum(), 1)).tolist()}
    return {"examples": examples, "ids": [ex.id for ex in examples], "weights": weights, "pseudo": pseudo,
            "head_accuracy": head.accuracy(test) if test else None, "shares": shares}


def lopsided_note(distill: Mapping[str, Any], labels: Sequence[str] | None) -> str | None:
    """What the head of a :func:`distill_set` does with the unbought items, in words: the label it gives most,
    to what share of them, beside that label's share of the gold labels it was fit on. A head refit on labels
    bought near its learner's boundary can give one label to most of the pool though its own labels are
    balanced (benchmarks/RESULTS.md, "Sarcasm with `llf-grad`"), and distill copies it; this says so before
    LoRA trains on it. None without a fixed label set (``labels`` None: answer indices name other candidates
    on every item) or without pseudo-labels."""
    shares = distill.get("shares")
    if labels is None or not shares or not distill.get("pseudo"):
        return None
    top = int(np.argmax(shares["pseudo"]))
    name = labels[top] if top < len(labels) else str(top)
    return (f"the head gives {name!r} to {shares['pseudo'][top]:.0%} of the items it labels "
            f"({shares['gold'][top]:.0%} of its own labels)")


def _training_list(s: dict[str, Any], epochs: float, passes: float | None, all_passes: float | None = None
                   ) -> tuple[list[str], list[int], list[float] | None, float]:
    """Keys, answers, weights and epochs LoRA trains a set on.

    A plain set: ``epochs`` passes over it; the ``all`` set (every train label, ``"full"`` in the set):
    ``min(all_passes, epochs)`` passes (None: ``epochs``). A distill set with ``passes`` (pseudo-label passes)
    below ``epochs``: each gold label listed ``round(epochs / passes)`` times beside every pseudo-label once,
    and ``passes`` passes over that list, so the gold labels get about the plain recipe's passes (4 for 3 at
    the default 2 of 3) and the head's labels fewer.
    """
    examples = s["examples"]
    keys, answers = [ex.id for ex in examples], [ex.answer for ex in examples]
    weights = s.get("weights")
    if s.get("full") and all_passes is not None:
        return keys, answers, weights, min(all_passes, epochs)
    repeat, passes = _gold_copies(epochs, passes) if "pseudo" in s else (1, epochs)
    if repeat == 1 and passes == epochs:
        return keys, answers, weights, epochs
    copies = [1 if k in s["pseudo"] else repeat for k in keys]
    idx = [i for i, c in enumerate(copies) for _ in range(c)]
    return ([keys[i] for i in idx], [answers[i] for i in idx],
            None if weights is None else [weights[i] for i in idx], passes)


def _gold_copies(epochs: float, passes: float | None) -> tuple[int, float]:
    """(copies of each gold label, passes) of a distill set's training list (:func:`_training_list`)."""
    if passes is None or passes >= epochs:
        return 1, epochs
    return max(1, round(epochs / passes)), passes


def _cross_validates(plan: dict[str, Any], selection: str, folds: int) -> bool:
    """Whether the recommendation cross-validates this seed's models of ``selection``: two models at least
    (the head needs the features adapt has only when it selects) and ``2 * folds`` bought labels."""
    return (folds >= 2 and f"{selection}/head" in plan["heads"]
            and len(plan["sets"][f"{selection}/plain"]["ids"]) >= 2 * folds)


def _train_work(n: int, epochs: float, batch_size: int) -> int:
    """Examples LoRA processes on a list of ``n`` over ``epochs`` passes (whole batches)."""
    b = min(batch_size, n)
    return math.ceil(epochs * n / b) * b


def _file_name(method: str) -> str:
    """A method's name as a file or folder name: ``llf/distill`` -> ``llf-distill``."""
    return method.replace("/", "-")


# --------------------------------------------------------------------------- --labels FILE


def _is_ledger(path) -> bool:
    """Whether the file is SQLite (a session ledger) rather than JSONL."""
    with Path(path).open("rb") as fh:
        return fh.read(16) == b"SQLite format 3\x00"


def read_labels(path: str | Path) -> list[Example]:
    """The labelled examples of a ``budgetsft session export`` JSONL file or of a session ledger (SQLite).

    Raises
    ------
    DataError
        A file that is neither, a JSONL file with invalid lines, or one with no labelled example.
    """
    return read_labelled(path)[0]


def read_labelled(path: str | Path) -> tuple[list[Example], list[str]]:
    """:func:`read_labels`, and the ids of a ledger's audit labels (drawn uniformly at random; [] for JSONL).

    A session's audit share (``--audit``) buys items drawn uniformly at random from the pool whatever the gate
    says; a model trained without them is scored on them without bias.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"--labels {path}: no such file.")
    if _is_ledger(path):
        from budgetsft.sessions.ledger import LedgerError
        from budgetsft.sessions.session import Session

        try:
            sess = Session.open(path)
        except LedgerError as exc:
            raise DataError(f"--labels {path}: an SQLite file that is not a budgetsft session ledger: {exc}") from exc
        try:
            rows = sess.export_labels()
            purpose = {q.round: q.purpose for q in sess.ledger.queries(("answered",))}
        finally:
            sess.close()
        audit = [str(r["id"]) for r in rows if purpose.get(r["round"]) == "audit"]
        for r in rows:  # the ledger is a file on disk: an answer edited out of range is refused, not trained on
            k, answer = len(r["candidates"]), r["answer"]
            if isinstance(answer, bool) or not isinstance(answer, int) or not 0 <= answer < k:
                raise DataError(f"--labels {path} (session ledger): the query of round {r.get('round')} "
                                f"(example {r['id']!r}) has the answer {answer!r}, not a candidate index in "
                                f"[0, {k}); the ledger was edited or is damaged.")
        examples = [Example(id=str(r["id"]), prompt=r["prompt"], candidates=tuple(r["candidates"]),
                            answer=int(r["answer"]), cost=r.get("cost")) for r in rows]
        source = "session ledger"
    else:
        from budgetsft.data import read_jsonl

        try:
            report = read_jsonl(path)
        except (DataError, UnicodeDecodeError) as exc:
            raise DataError(f"--labels {path}: neither a session ledger (SQLite) nor a JSONL file of labelled "
                            f"examples (`budgetsft session export`): {exc}") from exc
        if report.problems or not report.examples:
            first = report.problems[0] if report.problems else None
            why = f"line {first.line}: {first.reason}" if first else "it holds no example"
            raise DataError(f"--labels {path}: neither a session ledger (SQLite) nor a JSONL file of labelled "
                            f"examples (`budgetsft session export`): {why}.")
        examples = list(report.examples)
        source, audit = "JSONL", []
    for ex in examples:
        if ex.answer is not None and not 0 <= ex.answer < len(ex.candidates):
            raise DataError(f"--labels {path} ({source}): example {ex.id!r} has the answer {ex.answer!r}, not a "
                            f"candidate index in [0, {len(ex.candidates)}).")
    unlabelled = [ex.id for ex in examples if ex.answer is None]
    if unlabelled:
        raise DataError(f"--labels {path} ({source}): {len(unlabelled)} example(s) have no answer, first "
                        f"{unlabelled[0]!r}; a label file holds bought labels.")
    if not examples:
        raise DataError(f"--labels {path} ({source}): no labelled example (nothing was bought yet).")
    return examples, audit


def random_set(train: Sequence[Example], size: int, seed: int) -> list[Example] | None:
    """A uniform random set of ``size`` labelled train examples, seeded (the comparison of ``--labels``).

    Drawn without replacement from the examples of ``train`` that have a gold
    answer, with ``numpy.random.default_rng([seed, RANDOM_SET_STREAM])``, and kept
    in the order of ``train``. None when fewer than ``size`` have one.

    Examples
    --------
    >>> train = [Example(str(i), "p", ("a", "b"), answer=i % 2) for i in range(10)]
    >>> [ex.id for ex in random_set(train, 3, seed=0)] == [ex.id for ex in random_set(train, 3, seed=0)]
    True
    >>> random_set(train, 11, seed=0) is None
    True
    """
    pool = [ex for ex in train if ex.answer is not None]
    if size > len(pool):
        return None
    keep = np.sort(np.random.default_rng([seed, RANDOM_SET_STREAM]).choice(len(pool), size, replace=False))
    return [pool[i] for i in keep]


def _check_against(examples: Sequence[Example], dataset, path) -> None:
    """Every labelled example is in the data set with the same prompt and candidates."""
    known = {ex.id: ex for ex in [*dataset.train, *dataset.test]}
    missing = [ex.id for ex in examples if ex.id not in known]
    if missing:
        raise DataError(f"--labels {path}: {len(missing)} of {len(examples)} id(s) are not in the data set "
                        f"{dataset.name!r}, first {missing[:3]}; pass the --data the labels were bought on.")
    for ex in examples:
        ref = known[ex.id]
        if ex.prompt != ref.prompt or tuple(ex.candidates) != tuple(ref.candidates):
            raise DataError(f"--labels {path}: example {ex.id!r} differs from the data set {dataset.name!r} "
                            "(prompt or candidates); the labels were bought on other data.")


# --------------------------------------------------------------------------- the run


def _add_random_sets(plans: list[dict[str, Any]], size: int, data: str) -> str:
    """Add each seed's ``random`` set beside ``labels`` when every seed has one; say what was done."""
    drawn = [p.pop("random") for p in plans]
    short = [p["seed"] for p, chosen in zip(plans, drawn, strict=True) if chosen is None]
    if short:  # every seed has the same methods (seed_report), so none has a random set
        return (f"random: not compared; the train split of {data!r} at seed {short[0]} has fewer than {size} "
                "examples with a gold answer")
    for p, chosen in zip(plans, drawn, strict=True):
        p["sets"]["random/plain"] = {"examples": chosen, "ids": [ex.id for ex in chosen], "head_accuracy": None}
    return (f"random: {size} examples with their gold answers drawn uniformly from the train split of {data!r} "
            f"at each seed (numpy default_rng([seed, {RANDOM_SET_STREAM}])), trained with the same recipe")


def _accuracy(scores: Sequence[np.ndarray], gold: np.ndarray) -> float:
    """Share of items whose highest-scored candidate is the gold one."""
    return float(np.mean([np.argmax(v) == g for v, g in zip(scores, gold, strict=True)]))


def _method_order(names) -> list[str]:
    """zero-shot, then each selection's models in the order head, plain, distill (selections as first seen)."""
    names = list(names)
    sels = list(dict.fromkeys(n.split("/")[0] for n in names if "/" in n))
    rank = {"head": 0, "plain": 1, "distill": 2}
    rest = sorted((n for n in names if "/" in n),
                  key=lambda n: (sels.index(n.split("/")[0]), rank.get(n.split("/", 1)[1], 3)))
    return [n for n in names if "/" not in n] + rest


def _comparisons(gate: str, recipes: Sequence[str], selecting: bool,
                 others: Sequence[str] = ()) -> list[tuple[str, str]]:
    """The paired comparisons of the report: for every recipe R, ``gate/R`` against ``random/R`` and
    ``random/plain``; ``random/distill`` against ``random/plain``; ``gate/distill`` against ``gate/plain``;
    then, for each of ``others`` (the ``selections`` of :func:`run_adapt`) and every recipe R, ``gate/R``
    against ``other/R``."""
    if not selecting:
        return [(f"{gate}/plain", "random/plain")]
    pairs = []
    for r in ("plain", "distill", "head"):
        if r in recipes:
            pairs += [(f"{gate}/{r}", f"random/{r}"), (f"{gate}/{r}", "random/plain")]
    if "distill" in recipes:
        pairs += [("random/distill", "random/plain"), (f"{gate}/distill", f"{gate}/plain")]
    pairs += [(f"{gate}/{r}", f"{o}/{r}") for o in others for r in ("plain", "distill", "head") if r in recipes]
    return [p for p in dict.fromkeys(pairs) if p[0] != p[1]]


def _check_selections(owner: str, selections, *, gate: str, baselines: Sequence[str], features: str,
                      labels_file) -> dict[str, Callable]:
    """``run_adapt``'s ``selections``, checked: callables under new names that fit a method name."""
    if not selections:
        return {}
    if labels_file is not None:
        raise ConfigError(f"The 'selections' parameter of {owner} needs the labelled streams adapt selects on; "
                          f"it cannot be combined with labels_file.")
    taken = {gate, f"{gate}-grad" if features == "grad" else gate, *baselines, "all", "labels", "zero-shot"}
    out = {}
    for name, fn in dict(selections).items():
        if not isinstance(name, str) or not name or "/" in name or name.strip() != name:
            raise ConfigError(f"The 'selections' parameter of {owner}: {name!r} is not a usable name (a non-empty "
                              f"string without '/' or surrounding spaces).")
        if name in taken:
            raise ConfigError(f"The 'selections' parameter of {owner}: {name!r} is taken (by the gate, a baseline, "
                              f"'all', 'labels' or 'zero-shot'); give the selection another name.")
        if not callable(fn):
            raise ConfigError(f"The 'selections' parameter of {owner}: {name!r} must map to a function "
                              f"fn(streams, seed, budget) -> ids. Got {type(fn).__name__}.")
        out[name] = fn
    return out


def _other_selection(name: str, returned, seed: int, budget: int, *, by_id: Mapping[str, Example],
                     train_ids) -> dict[str, Any]:
    """The ids one of ``run_adapt``'s ``selections`` ``returned`` at one seed, checked against the train split
    (``train_ids``) and the budget; ``by_id``: the train examples by id."""
    ids = [str(i) for i in returned]
    where = f"selection {name!r} at seed {seed}"
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise ConfigError(f"{where} lists item {dup!r} twice; each train item can be bought once.")
    unknown = [i for i in ids if i not in train_ids]
    if unknown:
        raise ConfigError(f"{where} names {len(unknown)} item(s) that are not in the train split, first "
                          f"{unknown[0]!r}.")
    if len(ids) > budget:
        raise ConfigError(f"{where} bought {len(ids)} labels, over the budget B = {budget}; the budget is the same "
                          f"for every selection.")
    return {"examples": [by_id[i] for i in ids], "ids": ids, "head_accuracy": None, "audit_ids": []}


def _recommend_seed(plan, sel: str, recipes: Sequence[str], folds: int, seed: int, *, train_set, cache,
                    eval_batch_size: int, dtype: str, clock, distill_weight: float, say) -> tuple[dict, str]:
    """Cross-validate the seed's models of selection ``sel`` on its bought labels; the table and the pick."""
    from budgetsft.adapt.recommend import cross_validate, recommend

    by_id, rounds = plan["by_id"], plan["train_rounds"]
    bought = [rounds[i] for i in plan["sets"][f"{sel}/plain"]["ids"]]

    def make_set(recipe: str, train_ids: list[str], held_out: list[str]) -> dict[str, Any]:
        if recipe == "plain":
            return {"examples": [by_id[i] for i in train_ids], "ids": list(train_ids)}
        skip = set(held_out)  # the held-out fold gets no pseudo-label: it is the fold's test
        return distill_set([r for r in rounds.values() if r.id not in skip], None, by_id, train_ids, seed=seed,
                           weight=distill_weight)

    def score(model, keys: list[str]) -> list[np.ndarray]:
        return _score_keys(model, cache, keys, batch_size=eval_batch_size, dtype=dtype, clock=clock)

    lora = [r for r in ("plain", "distill") if r in recipes]
    cv = cross_validate(sel, bought, recipes=[*lora, "head"], folds=folds, seed=seed, make_set=make_set,
                        train=lambda s: train_set(s, seed, f"seed {seed} cross-validation")[0], score=score, say=say)
    return cv, recommend(cv)


def _recommendation(results: Sequence[dict[str, Any]], folds: int, sel: str) -> dict[str, Any]:
    """report.json's ``recommendation``: the method handed back, the rule, the cross-validated table."""
    from budgetsft.adapt.recommend import AUDIT_RULE, RULE, recommend_over_seeds

    cvs = [r.get("cv") for r in results]
    if all(cvs):
        method, table = recommend_over_seeds(cvs)
        audit = [int(r.get("audit") or 0) for r in results]
        how = ({"validation": "audit", "audit": audit, "folds": None, "rule": AUDIT_RULE} if all(audit) else
               {"validation": "cv", "folds": folds, "rule": RULE.format(folds=folds)})
        return {"method": method, "selection": sel, **how, "cv": table,
                "per_seed": [r.get("recommended") for r in results]}
    if sel == "labels":
        return {"method": "labels/plain", "selection": sel, "folds": None, "cv": None,
                "rule": "LoRA on the given labels: the only model trained on them (labelled data has no features of "
                        "a label file for a head), or on a pool with no audit labels and too few labels to "
                        "cross-validate",
                "per_seed": ["labels/plain"] * len(results)}
    why = ("--audit 0 and --cv-folds 0: no recommendation asked for" if folds < 2 else
           f"fewer than {2 * folds} bought labels at some seed, too few for {folds}-fold cross-validation")
    return {"method": None, "selection": sel, "folds": folds, "cv": None, "rule": why,
            "per_seed": [None] * len(results)}


def _seeded_test(test: list[Example], max_test: int | None, seed: int) -> list[Example]:
    if max_test is None or len(test) <= max_test:
        return test
    keep = np.sort(np.random.default_rng([seed, SEEDED_OFFSET["gate"]]).choice(len(test), max_test, replace=False))
    return [test[i] for i in keep]


def _write_jsonl(path: Path, examples: Sequence[Example]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for ex in examples:
            f.write(json.dumps(ex.to_json(), ensure_ascii=False) + "\n")


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


class _Clock:
    """Measured rates (examples per second) and the projection of the remaining work."""

    def __init__(self) -> None:
        self.rate = {"prefix": math.nan, "train": math.nan, "score": math.nan}
        self.work = {"prefix": 0.0, "train": 0.0, "score": 0.0}
        self.start = time.perf_counter()

    def seconds(self, kind: str, n: float) -> float:
        return 0.0 if n <= 0 else n / self.rate[kind]

    def remaining(self) -> float:
        return sum(self.seconds(k, n) for k, n in self.work.items())

    def done(self, kind: str, n: float, seconds: float) -> None:
        self.work[kind] = max(0.0, self.work[kind] - n)
        if n > 0 and seconds > 0:  # an exponential average: the machine is shared and its speed moves
            r = n / seconds
            self.rate[kind] = r if math.isnan(self.rate[kind]) else 0.5 * self.rate[kind] + 0.5 * r

    def elapsed(self) -> float:
        return time.perf_counter() - self.start


def _training_rate(base, cache, keys, answers, *, steps: int = 6, **kw) -> tuple[float, Any]:
    """Examples per second of LoRA training on a throw-away copy (median of steps 3.., the first ones allocate)."""
    from budgetsft.adapt.engine import quiet_hf, train_lora

    stamps: list[float] = []
    with quiet_hf():
        trial, _ = train_lora(copy.deepcopy(base), cache, list(keys) * steps, list(answers) * steps, epochs=1,
                              batch_size=len(keys), progress=False,
                              on_step=lambda i, loss: stamps.append(time.perf_counter()), **kw)
    return len(keys) / float(np.median(np.diff(stamps)[1:])), trial


def _evaluate(model, name: str, *, cache, keys, batch_size, dtype, progress, clock, scores, timing, seed) -> None:
    """Score the test keys with ``model``, store the scores and the time."""
    from budgetsft.adapt.engine import score_packed

    t = time.perf_counter()
    scores[name] = score_packed(model, cache, keys, batch_size=batch_size, dtype=dtype, progress=progress,
                                desc=f"seed {seed} score {name}")
    dt = time.perf_counter() - t
    clock.done("score", len(keys), dt)
    timing.setdefault(name, {})["score_seconds"] = dt


def _set_trainer(base, cache, clock: _Clock, *, epochs: float, distill_passes: float | None, lr: float,
                 lora_r: int, lora_alpha: float, batch_size: int, dtype: str, progress: bool,
                 all_passes: float | None = None):
    """``train_set(s, seed, desc, bar=progress)``: a fresh LoRA on a set with the run's recipe, (model, history,
    seconds), its work counted on ``clock``."""
    from budgetsft.adapt.engine import quiet_hf, train_lora

    def train_set(s: dict[str, Any], seed: int, desc: str, bar: bool = progress):
        t_keys, t_answers, t_weights, t_epochs = _training_list(s, epochs, distill_passes, all_passes)
        t = time.perf_counter()
        with quiet_hf():
            trained, history = train_lora(
                copy.deepcopy(base), cache, t_keys, t_answers, epochs=t_epochs, lr=lr, lora_r=lora_r,
                lora_alpha=lora_alpha, batch_size=batch_size, seed=seed, dtype=dtype, progress=bar, desc=desc,
                weights=t_weights)
        dt = time.perf_counter() - t
        clock.done("train", _train_work(len(t_keys), t_epochs, batch_size), dt)
        return trained, history, dt

    return train_set


def _feature_options(features: str, model: str, *, lora_layers: int, lora_r: int, lora_alpha: float,
                     max_prompt_tokens: int) -> dict[str, Any] | None:
    """The featuriser options of the gate's features: ``causal`` reads the fine-tuned model; ``grad`` takes the
    gradient w.r.t. the very LoRA adapt trains (its layers, rank, α and prompt; projection seed 0, so every seed
    reads one cached set of features)."""
    if features == "causal":
        return {"model_name": model}
    if features == "grad":
        return {"model_name": model, "lora_layers": lora_layers, "lora_r": lora_r, "lora_alpha": lora_alpha,
                "max_prompt_tokens": max_prompt_tokens}
    return None


def _score_keys(model, cache, keys: list[str], *, batch_size: int, dtype: str, clock: _Clock) -> list[np.ndarray]:
    """Score ``keys`` with ``model`` (no bar), counting the work on ``clock``."""
    from budgetsft.adapt.engine import score_packed

    t = time.perf_counter()
    out = score_packed(model, cache, keys, batch_size=batch_size, dtype=dtype, progress=False)
    clock.done("score", len(keys), time.perf_counter() - t)
    return out


def _model_ref(model: str) -> str:
    """How a model card names the base model: a directory as its absolute path (found from any folder)."""
    return str(Path(model).resolve()) if Path(model).exists() else model


def _save_lora_card(folder: Path, method: str, seed: int, *, labels: Sequence[str] | None, max_prompt_tokens: int,
                    lora_layers: int, model: str) -> Path:
    """The model card of saved adapters: what ``load_adapted`` needs to score as adapt scored."""
    from budgetsft.adapt.handback import write_model_card

    return write_model_card(folder, {"kind": "lora", "method": method, "seed": seed,
                                     "labels": list(labels) if labels is not None else None,
                                     "max_prompt_tokens": max_prompt_tokens, "lora_layers": lora_layers,
                                     "model": _model_ref(model)})


def _card_options(played: str, options: dict[str, Any] | None, labels: Sequence[str] | None) -> dict[str, Any]:
    """The featuriser options a head's model card records (:func:`budgetsft.adapt.handback.save_head`): the
    options the features were computed with, where this machine ran them left out, a model directory as its
    absolute path, and the label set of ``block`` and ``grad`` features."""
    out = {k: v for k, v in (options or {}).items() if k not in ("device", "cache_dir", "progress")}
    if isinstance(out.get("model"), str):  # a config's `features: {model: ./my-llama}`
        out["model_name"] = out.pop("model")
    if isinstance(out.get("model_name"), str):
        out["model_name"] = _model_ref(out["model_name"])
    if played in ("block", "grad") and labels is not None:
        out["labels"] = list(labels)
    return out


def _pool_features(data: str, labels_file, features: str, *, seed: int, max_examples: int | None, device: str,
                   progress: bool, feature_options: dict[str, Any] | None) -> tuple[dict[str, Any], str, dict]:
    """The features of every item of an unlabelled pool: ``{id: Round}``, the featuriser and its card options.

    A session ledger's pool is read with the session's own featuriser (the features its gate chose on, cached);
    a JSONL label file's with ``features`` (``feature_options``: adapt's options for ``causal`` and ``grad``).
    """
    from budgetsft.realdata import load_streams

    spec: Any = None
    if _is_ledger(labels_file):
        from budgetsft.sessions.session import Session

        sess = Session.open(labels_file)
        try:
            spec = sess.config.get("features") or {"name": "auto"}
        finally:
            sess.close()
        spec = {"name": spec} if isinstance(spec, str) else dict(spec)
        features = spec.pop("name", "auto")
        device = spec.pop("device", device)
        options = spec
    else:
        options = dict(feature_options or {})
    streams = load_streams(data, features, seed=seed, max_examples=max_examples, device=device, progress=progress,
                           feature_options=options, allow_unlabelled=True)
    labels = streams.dataset.labels
    return {r.id: r for r in streams.train}, streams.featurizer, _card_options(streams.featurizer, options, labels)


def _train_on_pool(data: str, out: Path, given: list[Example], pool: Sequence[Example], labels: Sequence[str] | None,
                   *, labels_file, seeds: Sequence[int], model: str, dev: str, dtype: str, epochs: float, lr: float,
                   lora_r: int, lora_alpha: float, lora_layers: int, batch_size: int, max_prompt_tokens: int,
                   eval_batch_size: int, estimate_only: bool, progress: bool, say, audit_ids: Sequence[str] = (),
                   recipes: Sequence[str] = ("plain",), features: str = "auto", device: str = "auto",
                   max_examples: int | None = None, distill_weight: float = DISTILL_WEIGHT,
                   distill_passes: float | None = None, cv_folds: int = 3) -> dict[str, Any]:
    """``--labels`` on an unlabelled pool: the models of the bought labels for each seed, and the one handed back.

    * ``labels/plain``: LoRA on the bought labels.
    * with ``distill`` in ``recipes`` (the default on a pool): ``labels/head``, the head refit on the bought labels
      over the pool's features (a session ledger's own featuriser), and ``labels/distill``, LoRA on the bought
      labels plus that head's labels for the rest of the pool (:func:`distill_set`, as when adapt selects).

    The pool has no test split. When the ledger holds audit labels (``audit_ids``: the session's ``--audit``
    share, drawn uniformly at random from the pool), no model sees them: each answers them, its accuracy (Wilson
    95 % interval) and gold NLL on them are unbiased estimates over the pool (report.json ``audit``,
    ``seed-<s>/audit.json``), and the lowest NLL is recommended, the rule adapt uses when it selects. Without
    audit labels the recommendation cross-validates on the bought labels (``cv_folds``); with ``plain`` alone it
    is ``labels/plain``.
    """
    from dataclasses import replace

    from budgetsft.adapt.engine import PrefixCache, check_decoder, encode, quiet_hf, score_packed
    from budgetsft.adapt.handback import save_head
    from budgetsft.adapt.lora import pad_id, save_adapters
    from budgetsft.adapt.recommend import held_out_table, recommend
    from budgetsft.features.models import load_causal_lm
    from budgetsft.refit import refit
    from budgetsft.sessions.pool import wilson_interval

    held_ids = set(audit_ids)
    held = [ex for ex in given if ex.id in held_ids]
    if held and len(held) == len(given):
        say(f"{labels_file}: every label is an audit label; training on all of them, nothing left to score on")
        held, held_ids = [], set()
    train = [ex for ex in given if ex.id not in held_ids]
    keys, answers = [ex.id for ex in train], [ex.answer for ex in train]
    held_keys, held_gold = [ex.id for ex in held], [ex.answer for ex in held]
    gold_of = {ex.id: ex for ex in given}

    # ------------------------------------------------------------ the head and the distill set of every seed
    plans: list[dict[str, Any]] = []
    played, card_options, labelled = None, {}, {}
    if "distill" in recipes:
        rounds, played, card_options = _pool_features(
            data, labels_file, features, seed=seeds[0], max_examples=max_examples, device=device, progress=progress,
            feature_options=_feature_options(features, model, lora_layers=lora_layers, lora_r=lora_r,
                                             lora_alpha=lora_alpha, max_prompt_tokens=max_prompt_tokens))
        missing = [ex.id for ex in given if ex.id not in rounds]
        if missing:
            raise DataError(f"--labels {labels_file}: {len(missing)} labelled example(s) are not in the pool "
                            f"{data!r} as featurised, first {missing[0]!r}.")
        labelled = {k: replace(r, gold=int(gold_of[k].answer)) if k in gold_of else r for k, r in rounds.items()}
        by_id = {**{ex.id: ex for ex in pool}, **gold_of}
        rest = [r for k, r in labelled.items() if k not in held_ids]  # an audit item gets no pseudo-label
        say(f"{data}: the head refit on the {len(train)} gate labels ({played} features) labels the other "
            f"{len(rest) - len(train)} pool items for labels/distill")
    for seed in seeds:
        sets: dict[str, dict[str, Any]] = {"labels/plain": {"examples": train, "ids": keys}}
        heads = {}
        if "distill" in recipes:
            heads["labels/head"] = refit([labelled[k] for k in keys], seed=seed)
            sets["labels/distill"] = distill_set(rest, None, by_id, keys, seed=seed, weight=distill_weight,
                                                 head=heads["labels/head"])
            note = lopsided_note(sets["labels/distill"], card_options.get("labels"))
            if note:
                say(f"seed {seed}: labels/distill: {note}")
        plans.append({"seed": seed, "sets": sets, "heads": heads, "by_id": by_id if heads else None,
                      "train_rounds": {r.id: r for r in rest} if heads else None})

    # ------------------------------------------------------------ the model, the frozen prefix, the estimate
    with quiet_hf():
        base, tokenizer = load_causal_lm(model, device=dev)
    base.requires_grad_(False)
    n_layers = int(base.config.num_hidden_layers)
    split = max(0, n_layers - lora_layers)
    every = {ex.id: ex for ex in given}
    for s in plans[0]["sets"].values():
        every.update({ex.id: ex for ex in s["examples"]})
    encoded = {k: encode(ex, tokenizer, max_prompt_tokens=max_prompt_tokens, labels=labels) for k, ex in every.items()}
    check_decoder(base, tokenizer, encoded[given[0].id])
    cache = PrefixCache(base, split, dtype=dtype, batch_size=eval_batch_size, pad_token_id=pad_id(tokenizer))
    clock = _Clock()
    ids = list(encoded)
    first = ids[:eval_batch_size]
    t0 = time.perf_counter()
    cache.add_many(first, [encoded[k] for k in first])
    clock.done("prefix", len(first), time.perf_counter() - t0)
    rate, _ = _training_rate(base, cache, keys[:batch_size], answers[:batch_size],
                             lr=lr, lora_r=lora_r, lora_alpha=lora_alpha, dtype=dtype)
    clock.rate["train"] = rate
    clock.work["prefix"] = len(ids) - len(first)
    lists = [_training_list(s, epochs, distill_passes) for p in plans for s in p["sets"].values()]
    clock.work["train"] = sum(_train_work(len(k), e, batch_size) for k, _, _, e in lists)
    if held:
        say(f"{data}: an unlabelled pool; training on the {len(train)} gate labels of {labels_file} "
            f"({', '.join(plans[0]['sets'])}{', labels/head' if plans[0]['heads'] else ''}) and scoring each model "
            f"on its {len(held)} audit labels, drawn uniformly at random from the pool and held out of training")
    else:
        say(f"{data}: an unlabelled pool and no audit labels; training on the {len(given)} labels of {labels_file} "
            f"({', '.join(plans[0]['sets'])})")
    parts = ", ".join(f"{kind} {_minutes(clock.seconds(kind, n))} ({int(n)} at {clock.rate[kind]:.1f}/s)"
                      for kind, n in clock.work.items() if n and not math.isnan(clock.rate[kind]))
    estimate = clock.remaining()
    say(f"estimate: {_minutes(estimate)} on {dev} ({dtype}): {parts}"
        + (", then the cross-validation of the recommendation" if plans[0]["heads"] and not held else ""))
    if estimate_only:
        return {"estimate_seconds": estimate, "rates": dict(clock.rate), "work": dict(clock.work)}
    todo = [k for k in ids if k not in cache.states_]
    t0 = time.perf_counter()
    cache.add_many(todo, [encoded[k] for k in todo])
    clock.done("prefix", len(todo), time.perf_counter() - t0)

    train_set = _set_trainer(base, cache, clock, epochs=epochs, distill_passes=distill_passes, lr=lr, lora_r=lora_r,
                             lora_alpha=lora_alpha, batch_size=batch_size, dtype=dtype, progress=progress)

    # ------------------------------------------------------------ train, score on the audit, recommend
    rows = []
    for plan in plans:
        seed = plan["seed"]
        where = out / f"seed-{seed}"
        row: dict[str, Any] = {"seed": seed, "labels": {}, "models": {}, "timing": {}}
        held_out: dict[str, list[np.ndarray]] = {}
        for name, head in plan["heads"].items():
            folder = save_head(where / "heads" / "labels", head, method=name, seed=seed, featurizer=played,
                               options=card_options, labels=labels)
            row["labels"][name] = len(train)
            row["models"][name] = str(folder.relative_to(out))
            if held:
                held_out[name] = [head.predict_log_proba(labelled[k]) for k in held_keys]
        for name, s in plan["sets"].items():
            n_pseudo = len(s.get("pseudo", ()))
            what = f"{len(train)} labels" + (f" + {n_pseudo} of the head's" if n_pseudo else "")
            trained, history, dt = train_set(s, seed, f"seed {seed} train {name} ({what})")
            folder = where / "adapters" / _file_name(name)
            with quiet_hf():
                save_adapters(trained, folder)
            _save_lora_card(folder, name, seed, labels=labels, max_prompt_tokens=max_prompt_tokens,
                            lora_layers=n_layers - split, model=model)
            if n_pseudo:
                (where / "pseudo").mkdir(parents=True, exist_ok=True)
                (where / "pseudo" / "labels.json").write_text(json.dumps(s["pseudo"]) + "\n")
            row["labels"][name] = len(train)
            row["models"][name] = f"seed-{seed}/adapters/{_file_name(name)}"
            row["timing"][name] = {"train_seconds": dt, "first_loss": history[0],
                                   "final_loss": float(np.mean(history[-5:]))}
            if held:
                held_out[name] = score_packed(trained, cache, held_keys, batch_size=eval_batch_size, dtype=dtype,
                                              progress=False)
            say(f"seed {seed} {name}: {what}, final loss {row['timing'][name]['final_loss']:.3f} "
                f"(train {_minutes(dt)}) [{_minutes(clock.elapsed())} elapsed, ~{_minutes(clock.remaining())} left]")
            del trained
            gc.collect()
        _write_jsonl(where / "labels" / "labels.jsonl", train)
        row["final_loss"] = row["timing"]["labels/plain"]["final_loss"]
        if held:
            table = held_out_table(held_out, held_gold)
            for t in table.values():
                t["correct"] = round(t["accuracy"] * len(held))
                t["ci95"] = list(wilson_interval(t["correct"], len(held)))
            row["cv"], row["recommended"], row["audit"] = table, recommend(table), len(held)
            _write_jsonl(where / "labels" / "labels-audit.jsonl", held)
            (where / "audit.json").write_text(json.dumps(
                {"ids": held_keys, "gold": held_gold, "scores": {m: [v.tolist() for v in sc]
                                                                 for m, sc in held_out.items()},
                 "table": table}, indent=1) + "\n", encoding="utf-8")
            say(f"seed {seed}: on the {len(held)} audit labels, " + ", ".join(
                f"{m} accuracy {t['accuracy']:.3f} ({t['correct']}/{len(held)}, 95 % CI {t['ci95'][0]:.3f}-"
                f"{t['ci95'][1]:.3f}) NLL {t['nll']:.3f}" for m, t in table.items()) + f": recommended "
                f"{row['recommended']}")
        elif _cross_validates(plan, "labels", cv_folds):
            row["cv"], row["recommended"] = _recommend_seed(
                plan, "labels", recipes, cv_folds, seed, train_set=train_set, cache=cache,
                eval_batch_size=eval_batch_size, dtype=dtype, clock=clock, distill_weight=distill_weight,
                say=lambda m, s=seed: say(f"seed {s} cv {m}"))
            say(f"seed {seed}: recommended {row['recommended']} (cross-validated on the bought labels)")
        rows.append(row)

    recommendation = _recommendation(rows, cv_folds, "labels")
    method = recommendation["method"]
    names = list(rows[0]["labels"])
    audit = None
    if held:
        per = {m: [r["cv"][m] for r in rows] for m in names}
        audit = {"n": len(held), "recommended": method,
                 "accuracy": float(np.mean([a["accuracy"] for a in per[method]])),
                 "nll": float(np.mean([a["nll"] for a in per[method]])),
                 "methods": {m: {"accuracy": float(np.mean([a["accuracy"] for a in p])),
                                 "nll": float(np.mean([a["nll"] for a in p])), "per_seed": p} for m, p in per.items()},
                 "estimator": "each model's accuracy and gold NLL on the ledger's audit labels (drawn uniformly at "
                              "random from the pool, held out of every model), mean over seeds; ci95 per seed: "
                              "Wilson; accuracy and NLL are those of the recommended model"}
    report = {
        "data": data, "model": model, "out": str(out), "labels": list(labels) if labels is not None else None,
        "labels_file": str(labels_file),
        "unscored": ("an unlabelled pool: scored on its audit labels only, no test split" if held
                     else "an unlabelled pool: no gold answer to score a model on"),
        "audit": audit, "recipes": list(recipes),
        "seeds": list(seeds), "methods": {m: {"labels": [r["labels"][m] for r in rows]} for m in names},
        "recommended": method, "recommendation": recommendation, "per_seed": rows,
        **({"distill": {"weight": distill_weight, "temperature": 1.0, "features": played,
                        "pseudo_passes": epochs if distill_passes is None else distill_passes,
                        "labels": "argmax of the refit head, weight × its probability",
                        "pseudo_labels": len(plans[0]["sets"]["labels/distill"]["pseudo"])}}
           if "distill" in recipes else {}),
        "settings": {"epochs": epochs, "lr": lr, "lora_r": lora_r, "lora_alpha": lora_alpha,
                     "lora_layers": n_layers - split, "batch_size": batch_size, "cv_folds": cv_folds,
                     "max_prompt_tokens": max_prompt_tokens, "dtype": dtype, "device": dev},
        "timing": {"estimate_seconds": estimate, "wall_seconds": clock.elapsed(), "rates": dict(clock.rate)},
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    (out / "report.md").write_text(_pool_markdown(report, len(train), held), encoding="utf-8")
    return report


def _pool_markdown(report: dict[str, Any], n_train: int, held: Sequence[Example]) -> str:
    """report.md of a run on an unlabelled pool: the models, what the audit says of each, the one handed back."""
    method, rec = report["recommended"], report["recommendation"]
    lines = [f"# {n_train} bought labels ({report['data']}, an unlabelled pool)", "",
             f"Model {report['model']}; labels from {report['labels_file']}; seeds "
             f"{', '.join(map(str, report['seeds']))}.", ""]
    if held:
        lines += [f"The pool has no test split. Its {len(held)} audit labels were drawn uniformly at random from "
                  f"the pool by the session (`--audit`) and held out of every model, so a model's accuracy on them "
                  f"estimates its accuracy over the pool without bias. With a few dozen items the interval is wide. "
                  f"`adapt --audit 0` trains on them too (and scores nothing).", "",
                  "| model | audit accuracy (mean over seeds) | 95 % CI, seed by seed (Wilson) | gold NLL |",
                  "|---|---:|---|---:|"]
        for m, t in report["audit"]["methods"].items():
            cis = "; ".join(f"{p['correct']}/{p['n']}: {p['ci95'][0]:.3f}-{p['ci95'][1]:.3f}" for p in t["per_seed"])
            name = f"**{m}**" if m == method else m
            lines.append(f"| {name} | {t['accuracy']:.3f} | {cis} | {t['nll']:.3f} |")
        lines += ["", f"**Recommended: {method}**, the lowest gold NLL on the audit labels (ties: higher accuracy, "
                      f"then plain, distill, head)."]
    elif rec.get("cv"):
        lines += [f"**Recommended: {method}**, by {rec['folds']}-fold cross-validation on the bought labels: "
                  f"{rec['rule']}. The pool has no gold answers and the ledger no audit labels, so no accuracy is "
                  f"reported; keep an audit share in the session (`--audit`) to score the models."]
    else:
        lines += [f"**Recommended: {method}**, the only model trained on these labels. The pool has no gold answers "
                  f"and the ledger no audit labels, so no accuracy is reported: score it on a labelled file of your "
                  f"own, or keep an audit share in the session (`--audit`)."]
    if "distill" in report:
        d = report["distill"]
        lines += ["", f"`labels/head` is the head refit on the bought labels over the pool's {d['features']} "
                      f"features; `labels/distill` is LoRA on the bought labels plus that head's labels for the "
                      f"other {d['pseudo_labels']} pool items (each weighted by the head's probability)."]
    lines += ["", f"Load it with `budgetsft.adapt.load_adapted(\"{report['out']}\")`.", ""]
    return "\n".join(lines)


def run_adapt(
    data: str,
    out_dir: str | Path,
    *,
    gate: str = "llf",
    baselines: Sequence[str] = BASELINES,
    beta: float = 0.1,
    seeds: Sequence[int] = (0,),
    features: str = "auto",
    model: str = "smollm2-135m-instruct",
    mode: str = "stream",
    labels_file: str | Path | None = None,
    include_all: bool = True,
    max_examples: int | None = None,
    max_test: int | None = None,
    max_prompt_tokens: int = RECIPE["max_prompt_tokens"],
    lora_layers: int = RECIPE["lora_layers"],
    epochs: float = RECIPE["epochs"],
    lr: float = RECIPE["lr"],
    lora_r: int = RECIPE["lora_r"],
    lora_alpha: float = RECIPE["lora_alpha"],
    batch_size: int = RECIPE["batch_size"],
    eval_batch_size: int = RECIPE["eval_batch_size"],
    device: str = "auto",
    dtype: str = "auto",
    threads: int | None = None,
    estimate_only: bool = False,
    progress: bool = True,
    recipes: Sequence[str] | None = None,
    distill_weight: float = DISTILL_WEIGHT,
    distill_passes: float | None = None,
    all_passes: float | None = None,
    cv_folds: int = 3,
    audit: float = AUDIT_SHARE,
    schedule: str = "auto",
    selections: Mapping[str, Callable[[Any, int, int], Sequence[str]]] | None = None,
) -> dict[str, Any]:
    """Select (or read) label sets, fine-tune one LoRA per set and seed, and write the report under ``out_dir``.

    ``recipes``: ``plain`` trains on each bought set; ``distill`` also trains, for the gate's selection and
    ``random``'s, on the bought gold labels plus the refit head's labels for the rest of the train split
    (:func:`distill_set`, pseudo-labels weighted ``distill_weight`` · the head's probability), reported as
    ``<selection>/distill``. None (the default): both when adapt selects or ``labels_file`` comes with an
    unlabelled pool (:func:`_train_on_pool`: ``labels/head``, ``labels/plain``, ``labels/distill``), ``plain``
    with ``labels_file`` on labelled data.

    Files written::

        report.json, report.md, accuracy.png   every seed together (budgetsft.adapt.report)
        seed-<s>/adapters/<method>/            LoRA adapters (save_pretrained; base = ``model``, a directory absolute)
        seed-<s>/labels/<method>.jsonl         each training set, canonical JSONL (gold labels only)
        seed-<s>/pseudo/<selection>.json       a distill set's pseudo-labels: {id: [answer, weight]}
        seed-<s>/selection.json                the ids of each set
        seed-<s>/predictions.json              test ids, each method's scores and correctness

    ``audit`` (share ε of the gate's budget, default :data:`AUDIT_SHARE`): about εB of the gate's labels are
    drawn uniformly at random (:func:`select_labels`) and held out of every model of the gate's selection; each
    model answers them and the one with the lowest gold NLL on them is recommended
    (:func:`budgetsft.adapt.recommend.recommend`). With ``audit=0`` the recommendation cross-validates on the
    bought labels instead (``cv_folds``, biased against the gate's own head: docs/method.md).

    ``selections``: further label sets to compare at the same budget, name -> ``fn(streams, seed, budget)``
    returning the ids of at most ``budget`` distinct train items of that seed's streams (another active
    learner's choice, say: ``benchmarks/adapt_peers.py`` plugs in Vowpal Wabbit, river and modAL). Each gets
    the models random gets (``name/head``, ``name/plain``, ``name/distill``) and is compared with the gate's,
    recipe by recipe. Only when adapt selects (not with ``labels_file``).

    ``estimate_only`` stops after the time estimate (nothing is trained). ``threads``
    sets torch's CPU threads; None keeps torch's default unless a timed warm-up
    finds one thread faster (a busy few-core machine).
    Returns the report (also ``report.json``).
    """
    import torch

    from budgetsft.adapt.engine import PrefixCache, check_decoder, encode, quiet_hf, score_packed
    from budgetsft.adapt.handback import save_head
    from budgetsft.adapt.lora import pad_id, save_adapters
    from budgetsft.adapt.recommend import candidate_nll
    from budgetsft.adapt.report import seed_report, write_seed_report
    from budgetsft.data import load_dataset
    from budgetsft.features.models import bf16_supported, load_causal_lm, resolve_device, resolve_model
    from budgetsft.realdata import load_streams
    from budgetsft.refit import refit

    owner = "run_adapt"
    t_start = time.perf_counter()  # selection, features and the model come before the clock of the estimate
    if threads is not None:
        torch.set_num_threads(check_int(owner, "threads", threads, low=1))
    seeds = [check_int(owner, "seeds", s, low=0) for s in seeds]
    if not seeds or len(set(seeds)) != len(seeds):
        raise ConfigError(f"The 'seeds' parameter of {owner} must be distinct seeds, at least one. Got {seeds!r}.")
    beta = check_float(owner, "beta", beta, low=0.0, high=1.0, low_open=True)
    epochs = check_float(owner, "epochs", epochs, low=0, low_open=True, high_open=True)
    max_prompt_tokens = check_int(owner, "max_prompt_tokens", max_prompt_tokens, low=1)
    lora_layers = check_int(owner, "lora_layers", lora_layers, low=1)
    dtype = check_choice(owner, "dtype", dtype, ("auto", "bf16", "fp32"))
    schedule = check_choice(owner, "schedule", schedule, ("auto", "dual", "power"))
    if max_test is not None:
        max_test = check_int(owner, "max_test", max_test, low=1)
    chosen_recipes = recipes is not None
    if recipes is None:  # the default: distill too when adapt selects or reads a pool (it needs the features)
        recipes = RECIPES
    recipes = tuple(dict.fromkeys(check_choice(owner, "recipes", r, RECIPES) for r in recipes))
    if "plain" not in recipes:
        raise ConfigError(f"The 'recipes' parameter of {owner} must include 'plain' (random/plain is the reference "
                          f"every recipe is compared with). Got {list(recipes)!r}.")
    distill_weight = check_float(owner, "distill_weight", distill_weight, low=0.0, high=1.0, low_open=True)
    cv_folds = check_int(owner, "cv_folds", cv_folds, low=0)
    audit = check_float(owner, "audit", audit, low=0.0, high=1.0, high_open=True)
    if distill_passes is None:  # the default: 2 passes over the head's labels, never more than --epochs
        distill_passes = min(DISTILL_PASSES, epochs)
    distill_passes = check_float(owner, "distill_passes", distill_passes, low=0.0, high=epochs, low_open=True)
    if all_passes is None:  # the default: all/plain makes a distill set's 2 passes, never more than --epochs
        all_passes = min(ALL_PASSES, epochs)
    all_passes = check_float(owner, "all_passes", all_passes, low=0.0, high=epochs, low_open=True)
    extra = _check_selections(owner, selections, gate=gate, baselines=baselines, features=features,
                              labels_file=labels_file)
    out = Path(out_dir)
    say = (lambda *a: print(*a, file=sys.stderr, flush=True)) if progress else (lambda *a: None)
    resolve_model(model, "causal")  # a bad name fails before anything is featurised
    dev = resolve_device(device)
    if dtype == "auto":
        dtype = "bf16" if bf16_supported(dev) else "fp32"
    given: list[Example] | None = None
    given_audit: list[str] = []
    if labels_file is not None:
        with quiet_hf():  # a ledger re-opens its session (data, features)
            given, given_audit = read_labelled(labels_file)

    # the selection the user hands a model back from: llf-grad when the gate chose on the gradient features
    gate_name = "labels" if labels_file is not None else f"{gate}-grad" if features == "grad" else gate
    # ------------------------------------------------------------ the label sets of every seed
    plans: list[dict[str, Any]] = []
    labels_of_data = None
    for seed in seeds:
        if given is not None:
            ds = load_dataset(data, seed=seed, max_examples=max_examples)
            if seed == seeds[0]:
                _check_against(given, ds, labels_file)
            taken = {ex.id for ex in given}
            test_all = [ex for ex in ds.test if ex.id not in taken]
            if any(ex.answer is None for ex in (*ds.train, *ds.test)):  # an unlabelled pool: train, hand back
                return _train_on_pool(data, out, given, [*ds.train, *ds.test], ds.labels, labels_file=labels_file,
                                      seeds=seeds, audit_ids=given_audit if audit > 0 else [], recipes=recipes,
                                      features=features, device=device, max_examples=max_examples,
                                      distill_weight=distill_weight, distill_passes=distill_passes,
                                      cv_folds=cv_folds, model=model, dev=dev, dtype=dtype, epochs=epochs, lr=lr,
                                      lora_r=lora_r, lora_alpha=lora_alpha, lora_layers=lora_layers,
                                      batch_size=batch_size, max_prompt_tokens=max_prompt_tokens,
                                      eval_batch_size=eval_batch_size, estimate_only=estimate_only,
                                      progress=progress, say=say)
            if "distill" in recipes:
                if chosen_recipes:
                    raise ConfigError(f"The distill recipe refits a head on features of the unbought items: adapt "
                                      f"has them when it selects the labels itself, or when --labels comes with an "
                                      f"unlabelled pool; {data!r} is labelled data, so drop --labels or use "
                                      f"--recipes plain.")
                recipes = ("plain",)
            sets = {"labels/plain": {"examples": list(given), "ids": [ex.id for ex in given], "head_accuracy": None}}
            plan = {"seed": seed, "sets": sets, "heads": {}, "train_size": len(ds.train),
                    "dropped_from_test": len(ds.test) - len(test_all), "budget": None, "features": None,
                    "random": random_set(ds.train, len(given), seed), "train_rounds": None}
        else:
            with quiet_hf():
                opts = _feature_options(features, model, lora_layers=lora_layers, lora_r=lora_r,
                                        lora_alpha=lora_alpha, max_prompt_tokens=max_prompt_tokens)
                streams = load_streams(data, features, seed=seed, max_examples=max_examples, device=device,
                                       progress=progress, feature_options=opts)
            ds = streams.dataset
            budget = math.floor(beta * len(streams.train) + 1e-9)
            say(f"seed {seed}: selecting labels with {gate} ({mode} mode) and {', '.join(baselines)} at β = {beta} "
                f"(B = {budget} of {len(streams.train)}), as `budgetsft run` does")
            chosen = select_labels(streams, gate, beta, seed=seed, mode=mode, baselines=tuple(baselines),
                                   all_head=False, audit=audit, schedule=schedule)
            train_rounds = {r.id: r for r in streams.train}
            test_rounds = {r.id: r for r in streams.test}
            by_id = {ex.id: ex for ex in ds.train}
            everything = chosen.pop("all")
            for name, fn in extra.items():
                chosen[name] = _other_selection(name, fn(streams, seed, budget), seed, budget, by_id=by_id,
                                                train_ids=train_rounds)
            if include_all:
                chosen["all"] = everything
            sets, heads = {}, {}
            chosen = {(gate_name if sel == gate else sel): v for sel, v in chosen.items()}
            held = chosen[gate_name].get("audit_ids") or []
            if held:  # the audit labels choose the model handed back: no model of the gate's selection sees them
                held_set = set(held)
                kept = [i for i in chosen[gate_name]["ids"] if i not in held_set]
                chosen[gate_name] = {**chosen[gate_name], "ids": kept, "examples": [by_id[i] for i in kept]}
                say(f"seed {seed}: {len(held)} of {gate_name}'s {len(kept) + len(held)} labels were drawn uniformly at "
                    f"random (audit share {audit}); they are held out to choose the model handed back")
            for sel, chosen_set in chosen.items():
                sets[f"{sel}/plain"] = chosen_set
                if chosen_set["ids"]:  # the refit head: a model of its own, and the teacher of distill
                    heads[f"{sel}/head"] = refit([train_rounds[i] for i in chosen_set["ids"]], seed=seed)
                if "distill" in recipes and sel in (gate_name, "random", *extra) and chosen_set["ids"]:
                    skip = set(held) if sel == gate_name else set()  # an audit item gets no pseudo-label either
                    pool = [r for r in streams.train if r.id not in skip]
                    say(f"seed {seed}: {sel}/distill: the head refit on {sel}'s {len(chosen_set['ids'])} labels "
                        f"labels the other {len(pool) - len(chosen_set['ids'])} train items")
                    sets[f"{sel}/distill"] = distill_set(pool, streams.test, by_id, chosen_set["ids"],
                                                         seed=seed, weight=distill_weight, head=heads[f"{sel}/head"])
                    note = lopsided_note(sets[f"{sel}/distill"], ds.labels)
                    if note:
                        say(f"seed {seed}: {sel}/distill: {note}")
            test_all = list(ds.test)
            plan = {"seed": seed, "sets": sets, "heads": heads, "train_size": len(streams.train),
                    "dropped_from_test": 0, "budget": budget, "features": streams.featurizer,
                    "train_rounds": train_rounds, "test_rounds": test_rounds, "by_id": by_id,
                    "audit": [by_id[i] for i in held]}
        labels_of_data = ds.labels
        plan["test"] = _seeded_test(test_all, max_test, seed)
        if not plan["test"]:
            raise DataError(f"seed {seed}: the test split of {data!r} is empty; nothing to evaluate on.")
        plans.append(plan)
    random_note = None
    if given is not None:
        random_note = _add_random_sets(plans, len(given), data)
        say(random_note)

    # ------------------------------------------------------------ the model and the frozen prefix
    with quiet_hf():
        base, tokenizer = load_causal_lm(model, device=dev)
    base.requires_grad_(False)
    n_layers = int(base.config.num_hidden_layers)
    split = max(0, n_layers - lora_layers)
    pad = pad_id(tokenizer)
    every: dict[str, Example] = {}
    for plan in plans:
        for ex in [*plan["test"], *(e for s in plan["sets"].values() for e in s["examples"]), *plan.get("audit", ())]:
            every.setdefault(ex.id, ex)
    encoded = {k: encode(ex, tokenizer, max_prompt_tokens=max_prompt_tokens, labels=labels_of_data)
               for k, ex in every.items()}
    first_test = plans[0]["test"][0].id
    check_decoder(base, tokenizer, encoded[first_test])
    if dev.startswith("cuda") and dtype == "bf16":
        base.to(torch.bfloat16)  # on a GPU: half the memory, no per-step weight casts (adapters stay fp32)
    cache = PrefixCache(base, split, dtype=dtype, batch_size=eval_batch_size, pad_token_id=pad)
    clock = _Clock()
    n_sets = {p["seed"]: {k: len(s["examples"]) for k, s in p["sets"].items()} for p in plans}
    clock.work["prefix"] = len(encoded)
    lists = [_training_list(s, epochs, distill_passes, all_passes) for p in plans for s in p["sets"].values()
             if s["examples"]]
    clock.work["train"] = sum(_train_work(len(k), e, batch_size) for k, _, _, e in lists)
    clock.work["score"] = sum(len(p["test"]) * (1 + sum(1 for n in n_sets[p["seed"]].values() if n)) for p in plans)
    for p in plans:  # the gate's LoRA models answer the audit items
        clock.work["score"] += len(p.get("audit", ())) * sum(1 for r in recipes if f"{gate_name}/{r}" in p["sets"])
    for p in plans:  # the cross-validation of the gate's models: each fold trains on (k-1)/k of the bought labels
        n = len(p["sets"][f"{gate_name}/plain"]["ids"])
        if p.get("audit") or not _cross_validates(p, gate_name, cv_folds):
            continue
        fold_n = n - n // cv_folds
        clock.work["train"] += cv_folds * _train_work(fold_n, epochs, batch_size)
        if "distill" in recipes:
            copies, passes = _gold_copies(epochs, distill_passes)
            clock.work["train"] += cv_folds * _train_work(fold_n * copies + p["train_size"] - n, passes, batch_size)
        clock.work["score"] += n * len([r for r in recipes if r in ("plain", "distill")])

    # warm-up: a few throw-away training steps (at 1 thread too, on a CPU), the prefix of a batch (kept), one
    # scoring batch; the rates project the rest of the run
    from tqdm.auto import tqdm

    keys = list(encoded)
    first = keys[: eval_batch_size]
    cache.add_many(first, [encoded[k] for k in first])
    clock.done("prefix", len(first), 0.0)
    warm = first[: batch_size]
    answers = [every[k].answer for k in warm]
    kw = {"lr": lr, "lora_r": lora_r, "lora_alpha": lora_alpha, "dtype": dtype}
    rate, trial = _training_rate(base, cache, warm, answers, **kw)
    if dev == "cpu" and threads is None and torch.get_num_threads() > 1:
        # On a shared few-core CPU, OpenMP barriers can make several threads far slower than one: try one.
        many = torch.get_num_threads()
        torch.set_num_threads(1)
        one, trial_one = _training_rate(base, cache, warm, answers, **kw)
        if one > rate:
            say(f"threads: 1 ({one:.1f} examples/s in training) rather than {many} ({rate:.1f}/s)")
            rate, trial = one, trial_one
        else:
            torch.set_num_threads(many)
    clock.rate["train"] = rate
    second = keys[eval_batch_size : 2 * eval_batch_size]  # real work, timed with the threads now chosen
    t0 = time.perf_counter()
    cache.add_many(second, [encoded[k] for k in second])
    clock.done("prefix", len(second), time.perf_counter() - t0)
    t0 = time.perf_counter()
    score_packed(trial, cache, first, batch_size=eval_batch_size, dtype=dtype, progress=False)
    clock.rate["score"] = len(first) / (time.perf_counter() - t0)
    del trial
    gc.collect()
    estimate = clock.remaining()
    parts = ", ".join(f"{kind} {_minutes(clock.seconds(kind, n))} ({int(n)} at {clock.rate[kind]:.1f}/s)"
                      for kind, n in clock.work.items())
    before = clock.start - t_start
    say(f"estimate: {_minutes(estimate)} on {dev} ({torch.get_num_threads()} thread(s), {dtype}): {parts}; "
        f"{_minutes(before)} spent before it (selection, features, model), {_minutes(before + estimate)} in all")
    if estimate_only:
        return {"estimate_seconds": estimate, "before_seconds": before, "rates": dict(clock.rate),
                "work": dict(clock.work)}

    todo = [k for k in keys if k not in cache.states_]
    bar = tqdm(total=len(todo), desc=f"prefix (layers 0-{split - 1})" if split else "embeddings", unit="ex",
               disable=not progress, file=sys.stderr)
    t0 = time.perf_counter()
    cache.add_many(todo, [encoded[k] for k in todo], progress=lambda n: bar.update(n - bar.n))
    bar.close()
    clock.done("prefix", len(todo), time.perf_counter() - t0)

    # ------------------------------------------------------------ train and score, seed by seed
    results = []
    settings = {"epochs": epochs, "lr": lr, "lora_r": lora_r, "lora_alpha": lora_alpha, "lora_layers": n_layers - split,
                "n_layers": n_layers, "batch_size": batch_size, "max_prompt_tokens": max_prompt_tokens,
                "eval_batch_size": eval_batch_size, "dtype": dtype, "device": dev, "normalize": "mean",
                "schedule": "AdamW, linear decay to 0, grad-norm clip 1.0, no dropout, no weight decay",
                "cv_folds": cv_folds, "audit": audit if given is None else None,
                "gate_schedule": schedule if given is None else None,
                "all_passes": all_passes if include_all and given is None else None}
    labels_list = list(labels_of_data) if labels_of_data is not None else None
    played = plans[0]["features"]  # the featuriser of the selections (None with --labels): the heads' features
    fz_options = _card_options(played, _feature_options(played, model, lora_layers=lora_layers, lora_r=lora_r,
                                                        lora_alpha=lora_alpha, max_prompt_tokens=max_prompt_tokens),
                               labels_list)

    train_set = _set_trainer(base, cache, clock, epochs=epochs, distill_passes=distill_passes, lr=lr, lora_r=lora_r,
                             lora_alpha=lora_alpha, batch_size=batch_size, dtype=dtype, progress=progress,
                             all_passes=all_passes)

    for plan in plans:
        seed = plan["seed"]
        where = out / f"seed-{seed}"
        test_keys = [ex.id for ex in plan["test"]]
        gold = np.array([ex.answer for ex in plan["test"]])
        scores: dict[str, list[np.ndarray]] = {}
        timing: dict[str, dict[str, float | None]] = {}

        score_kw = {"cache": cache, "keys": test_keys, "batch_size": eval_batch_size, "dtype": dtype,
                    "progress": progress, "clock": clock, "scores": scores, "timing": timing, "seed": seed}
        audit_keys = [ex.id for ex in plan.get("audit", ())]
        audit_gold = [int(ex.answer) for ex in plan.get("audit", ())]
        held_out: dict[str, list[np.ndarray]] = {}  # the gate's models' scores of the audit items
        _evaluate(base, "zero-shot", **score_kw)
        timing["zero-shot"]["train_seconds"] = None
        say(f"seed {seed} zero-shot: accuracy {_accuracy(scores['zero-shot'], gold):.4f} on {len(test_keys)} test "
            f"items [{_minutes(clock.elapsed())} elapsed, ~{_minutes(clock.remaining())} left]")
        for name, head in plan["heads"].items():  # the refit heads: no LLM training, scored on the test rounds
            sel = name.split("/")[0]
            scores[name] = [head.predict_log_proba(plan["test_rounds"][k]) for k in test_keys]
            if audit_keys and sel == gate_name:
                held_out[name] = [head.predict_log_proba(plan["train_rounds"][k]) for k in audit_keys]
            timing[name] = {"train_seconds": None, "score_seconds": None}
            save_head(where / "heads" / sel, head, method=name, seed=seed, featurizer=plan["features"],
                      options=fz_options, labels=labels_list)
            say(f"seed {seed} {name}: the head refit on {len(plan['sets'][f'{sel}/plain']['ids'])} labels, "
                f"accuracy {_accuracy(scores[name], gold):.4f}")
        for name, s in plan["sets"].items():
            examples = s["examples"]
            sel = name.split("/")[0]
            if "pseudo" in s:  # a distill set: its gold labels are the selection's file; the head's labels apart
                (where / "pseudo").mkdir(parents=True, exist_ok=True)
                (where / "pseudo" / f"{sel}.json").write_text(json.dumps(s["pseudo"]) + "\n")
            else:
                _write_jsonl(where / "labels" / f"{_file_name(sel)}.jsonl", examples)
            if not examples:
                scores[name] = scores["zero-shot"]
                timing[name] = {"train_seconds": None, "score_seconds": None}
                continue
            n_pseudo = len(s.get("pseudo", ()))
            what = f"{len(examples) - n_pseudo} labels" + (f" + {n_pseudo} of the head's" if n_pseudo else "")
            peft_model, history, dt = train_set(s, seed, f"seed {seed} train {name} ({what})")
            timing[name] = {"train_seconds": dt, "first_loss": history[0], "final_loss": float(np.mean(history[-5:]))}
            _evaluate(peft_model, name, **score_kw)
            if audit_keys and sel == gate_name:
                held_out[name] = _score_keys(peft_model, cache, audit_keys, batch_size=eval_batch_size, dtype=dtype,
                                             clock=clock)
            folder = where / "adapters" / _file_name(name)
            with quiet_hf():
                save_adapters(peft_model, folder)
            _save_lora_card(folder, name, seed, labels=labels_list, max_prompt_tokens=max_prompt_tokens,
                            lora_layers=n_layers - split, model=model)
            say(f"seed {seed} {name}: {what}, accuracy {_accuracy(scores[name], gold):.4f} (train {_minutes(dt)}) "
                f"[{_minutes(clock.elapsed())} elapsed, ~{_minutes(clock.remaining())} left]")
            del peft_model
            gc.collect()
        cv, pick = None, None
        if held_out:
            from budgetsft.adapt.recommend import held_out_table, recommend

            cv = held_out_table(held_out, audit_gold)
            pick = recommend(cv)
            _write_jsonl(where / "labels" / f"{_file_name(gate_name)}-audit.jsonl", plan["audit"])
            (where / "audit.json").write_text(json.dumps({
                "selection": gate_name, "ids": audit_keys, "gold": audit_gold,
                "scores": {m: [v.tolist() for v in sc] for m, sc in held_out.items()}}) + "\n")
            say(f"seed {seed}: on the {len(audit_keys)} audit labels, " + ", ".join(
                f"{m} NLL {t['nll']:.3f} accuracy {t['accuracy']:.4f}" for m, t in cv.items())
                + f": recommended {pick} [{_minutes(clock.elapsed())} elapsed, ~{_minutes(clock.remaining())} left]")
        elif _cross_validates(plan, gate_name, cv_folds):
            cv, pick = _recommend_seed(plan, gate_name, recipes, cv_folds, seed, train_set=train_set, cache=cache,
                                       eval_batch_size=eval_batch_size, dtype=dtype, clock=clock,
                                       distill_weight=distill_weight, say=lambda m, s=seed: say(f"seed {s} cv {m}"))
            say(f"seed {seed}: recommended {pick} (cross-validated on the bought labels) "
                f"[{_minutes(clock.elapsed())} elapsed, ~{_minutes(clock.remaining())} left]")
        scores = {m: scores[m] for m in _method_order(scores)}
        correct = {m: [int(np.argmax(v) == g) for v, g in zip(sc, gold, strict=True)] for m, sc in scores.items()}
        nll = {m: [candidate_nll(v, g) for v, g in zip(sc, gold, strict=True)] for m, sc in scores.items()}
        where.mkdir(parents=True, exist_ok=True)
        bought_ids = {k.split("/")[0]: s["ids"] for k, s in plan["sets"].items() if k.endswith("/plain")}
        if audit_keys:  # every label the gate bought, the audit ones included, in the order of the stream
            order = {r: i for i, r in enumerate(plan["train_rounds"])}
            bought_ids[gate_name] = sorted([*bought_ids[gate_name], *audit_keys], key=order.__getitem__)
        (where / "selection.json").write_text(json.dumps(bought_ids, indent=1) + "\n")
        (where / "predictions.json").write_text(json.dumps({
            "test_ids": test_keys, "gold": gold.tolist(),
            "scores": {m: [v.tolist() for v in sc] for m, sc in scores.items()}, "correct": correct}) + "\n")
        used = {k: len(s["examples"]) - len(s.get("pseudo", ())) for k, s in plan["sets"].items()}
        used.update({k: len(plan["sets"][f"{k.split('/')[0]}/plain"]["ids"]) for k in plan["heads"]})
        for k in used:  # the audit labels were paid for too: the gate's models are compared at the same budget
            if k.split("/")[0] == gate_name:
                used[k] += len(audit_keys)
        results.append({
            "seed": seed, "test_size": len(test_keys), "train_size": plan["train_size"], "budget": plan["budget"],
            "chance": float(np.mean([1.0 / len(ex.candidates) for ex in plan["test"]])),
            "features": plan["features"], "dropped_from_test": plan["dropped_from_test"],
            # gold labels used (a distill set's pseudo-labels are not labels anybody paid for)
            "labels": {m: 0 if m == "zero-shot" else used[m] for m in scores},
            "correct": correct, "nll": nll, "timing": timing,
            "models": {**{k: f"seed-{seed}/adapters/{_file_name(k)}" for k, s in plan["sets"].items()
                          if s["examples"]},
                       **{k: f"seed-{seed}/heads/{_file_name(k.split('/')[0])}" for k in plan["heads"]}},
            "cv": cv, "recommended": pick, "audit": len(audit_keys),
        })

    comparisons = _comparisons(gate_name, [*recipes, "head"], given is None, others=list(extra))
    report = seed_report(results, gate=f"{gate_name}/plain",
                         baselines=[f"{b}/plain" for b in [*baselines, *extra, "all"]] if given is None
                         else ["random/plain", "zero-shot"], comparisons=comparisons)
    report["recommendation"] = _recommendation(results, cv_folds, gate_name)
    report["recommended"] = report["recommendation"]["method"]
    if report["recommended"] is not None:  # the recommended model against random/plain, first in the list
        extra = seed_report(results, gate=f"{gate_name}/plain", baselines=[],
                            comparisons=[(report["recommended"], "random/plain")])["comparisons"]
        report["comparisons"] = extra + [c for c in report["comparisons"]
                                         if (c["a"], c["b"]) != (report["recommended"], "random/plain")]
    report.update(
        data=data, model=model, out=str(out), labels=labels_list, beta=None if given is not None else beta, mode=mode,
        labels_file=str(labels_file) if labels_file is not None else None, settings=settings,
        recipes=list(recipes), **({"distill": {"weight": distill_weight, "temperature": 1.0,
                                              "pseudo_passes": distill_passes,
                                              "labels": "argmax of the refit head, weight × its probability"}}
                                  if "distill" in recipes else {}),
        **({"random_sets": random_note} if random_note is not None else {}),
        timing={"estimate_seconds": estimate, "wall_seconds": clock.elapsed(), "before_seconds": before,
                "prefix_seconds": cache.seconds_,
                "rates": dict(clock.rate)},
    )
    write_seed_report(report, out)
    return report
