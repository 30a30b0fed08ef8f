"""Which model `budgetsft adapt` hands back, chosen on bought labels alone (SPEC §7).

A user who bought B labels has no test split to choose between the models trained on them: the refit
head over the selection's features (``<sel>/head``), LoRA on the gold labels (``<sel>/plain``) and LoRA on
the gold labels plus the head's labels for the rest of the pool (``<sel>/distill``). Two ways to score them:

* **an audit share** (the default of ``adapt``, ``--audit 0.1``): about a tenth of the gate's budget is
  drawn uniformly at random from the stream, whatever the gate says, and held out of every model's training
  (and of distill's pseudo-labels). Each model answers the audit items (:func:`held_out_table`). The audit
  items are a uniform sample of the pool, so each model's held-out NLL and accuracy are unbiased estimates of
  its NLL and accuracy on the pool (of a model trained on the other labels). The price: the audit labels
  train no model of the gate's selection.
* **k-fold cross-validation on the bought labels** (``--audit 0``, :func:`cross_validate`): the bought set
  is cut into ``folds`` folds, stratified by the gold answer; each fold's model is trained, with its own
  recipe, on the other folds and answers the held-out fold. No label is set aside, but the bought labels of
  a confidence gate are the rounds its head was least sure of: cross-validation on them is biased against
  that head (measured on bbc-news: it ranked LoRA above the head, which is 2.7 points better on test).

The recommended model has the lowest held-out gold NLL (the mean of −log p(gold), a proper scoring rule:
it reads how sure each model is, so it separates models on a few dozen items where accuracy, one bit an
item, does not); ties go to the higher held-out accuracy, then to the order plain, distill, head.

Why NLL and not accuracy: on the saved test predictions of the bbc-news (5 seeds) and sarcasm (3 seeds)
runs, audits of 17 to 51 items drawn from the test items pick, by NLL, a model on average 0.5 points
(bbc-news 0.8, sarcasm 0.0 to 0.2) below the best of head, plain and distill; by accuracy, 0.6 to 0.8
points (bbc-news 0.3 to 0.5, sarcasm 0.9 to 1.2). The cross-validated NLL of those runs also ranked
the head and LoRA as the test split does on both sets, where cross-validated accuracy did not on
bbc-news.

Examples
--------
>>> held = {"llf/plain": {"accuracy": 0.88, "nll": 0.6}, "llf/head": {"accuracy": 0.86, "nll": 0.3}}
>>> recommend(held)
'llf/head'
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from budgetsft.exceptions import ConfigError

__all__ = ["RULE", "AUDIT_RULE", "RECIPE_ORDER", "candidate_nll", "cross_validate", "held_out_table", "recommend",
           "recommend_over_seeds"]

#: How the recommended model is chosen, in words (report.json's ``recommendation.rule``).
RULE = ("lowest gold NLL of {folds}-fold cross-validation on the bought labels alone (stratified by answer, each "
        "fold's model trained on the other folds with its own recipe), mean over seeds; ties: higher "
        "cross-validated accuracy, then plain, distill, head")
#: The rule with an audit share (the default).
AUDIT_RULE = ("lowest gold NLL on the audit labels (drawn uniformly at random from the stream within the gate's "
              "budget and held out of every model's training), mean over seeds; ties: higher accuracy on them, then "
              "plain, distill, head")
#: Tie order of the recipes (last resort): the LLM first.
RECIPE_ORDER = ("plain", "distill", "head")


def candidate_nll(scores: Sequence[float], gold: int) -> float:
    """−log of the gold candidate's probability under softmax(scores) (scores: log-likelihoods or logits)."""
    s = np.asarray(scores, dtype=np.float64)
    m = float(s.max())
    return float(m + math.log(float(np.exp(s - m).sum())) - s[int(gold)])


def cross_validate(
    selection: str,
    bought: Sequence[Any],
    *,
    recipes: Sequence[str],
    folds: int,
    seed: int,
    make_set: Callable[[str, list[str], list[str]], dict[str, Any]] | None = None,
    train: Callable[[dict[str, Any]], Any] | None = None,
    score: Callable[[Any, list[str]], list[np.ndarray]] | None = None,
    say: Callable[[str], None] = lambda msg: None,
) -> dict[str, dict[str, float]]:
    """Held-out accuracy and NLL of each recipe's model on the bought rounds, by ``folds``-fold CV.

    Parameters
    ----------
    selection : str
        The selection's name (``"llf"``); the methods are ``<selection>/<recipe>``.
    bought : sequence of Round
        The bought rounds (features and gold).
    recipes : sequence of {"head", "plain", "distill"}
    folds : int
        At least 2; the bought set needs ``2 * folds`` rounds.
    make_set : callable (recipe, train_ids, held_out_ids) -> training set
        The training set of a LoRA recipe on one fold (``plain``: the gold labels of ``train_ids``;
        ``distill``: plus the labels of a head refit on them for the pool, none for the held-out ids).
    train : callable (training set) -> model
        A fresh LoRA trained with the run's recipe.
    score : callable (model, keys) -> list of score vectors

    Returns
    -------
    dict
        ``{"<selection>/<recipe>": {"accuracy", "nll", "folds", "n"}}``.
    """
    from budgetsft.refit import refit, stratified_folds

    bought = list(bought)
    if folds < 2 or len(bought) < 2 * folds:
        raise ConfigError(f"cross_validate needs folds >= 2 and at least 2 * folds bought rounds; got folds = "
                          f"{folds} and {len(bought)} rounds.")
    unknown = [r for r in recipes if r not in RECIPE_ORDER]
    if unknown:
        raise ConfigError(f"cross_validate: unknown recipe {unknown[0]!r}; valid: {', '.join(RECIPE_ORDER)}.")
    fold = stratified_folds(bought, folds, seed)
    gold = {r.id: int(r.gold) for r in bought}
    out: dict[str, dict[str, float]] = {}
    for recipe in recipes:
        correct: list[int] = []
        nll: list[float] = []
        for f in range(folds):
            train_rounds = [r for r, k in zip(bought, fold, strict=True) if k != f]
            held = [r for r, k in zip(bought, fold, strict=True) if k == f]
            keys = [r.id for r in held]
            if recipe == "head":
                head = refit(train_rounds, seed=seed)
                scores = [head.predict_log_proba(r) for r in held]
            else:
                if make_set is None or train is None or score is None:
                    raise ConfigError(f"cross_validate: the recipe {recipe!r} needs make_set, train and score.")
                model = train(make_set(recipe, [r.id for r in train_rounds], keys))
                scores = score(model, keys)
                del model
            for k, sc in zip(keys, scores, strict=True):
                correct.append(int(np.argmax(sc) == gold[k]))
                nll.append(candidate_nll(sc, gold[k]))
        out[f"{selection}/{recipe}"] = {"accuracy": float(np.mean(correct)), "nll": float(np.mean(nll)),
                                        "folds": folds, "n": len(bought)}
        say(f"{selection}/{recipe}: cross-validated accuracy {out[f'{selection}/{recipe}']['accuracy']:.4f}, "
            f"NLL {out[f'{selection}/{recipe}']['nll']:.3f} ({folds} folds of the {len(bought)} bought labels)")
    return out


def held_out_table(scores: Mapping[str, Sequence[np.ndarray]], gold: Sequence[int]) -> dict[str, dict[str, float]]:
    """Each model's accuracy and mean gold NLL on held-out items (``scores``: method -> one score vector per item).

    >>> t = held_out_table({"llf/head": [np.array([0.0, -2.0]), np.array([-1.0, 0.0])]}, [0, 0])
    >>> t["llf/head"]["accuracy"], t["llf/head"]["n"]
    (0.5, 2)
    """
    gold = [int(g) for g in gold]
    if not gold:
        raise ConfigError("held_out_table needs at least one held-out item.")
    out = {}
    for name, rows in scores.items():
        if len(rows) != len(gold):
            raise ConfigError(f"held_out_table: {name} has {len(rows)} score vectors for {len(gold)} items.")
        out[name] = {"accuracy": float(np.mean([int(np.argmax(v)) == g for v, g in zip(rows, gold, strict=True)])),
                     "nll": float(np.mean([candidate_nll(v, g) for v, g in zip(rows, gold, strict=True)])),
                     "n": len(gold)}
    return out


def _key(name: str, accuracy: float, nll: float) -> tuple:
    recipe = name.rsplit("/", 1)[-1]
    order = RECIPE_ORDER.index(recipe) if recipe in RECIPE_ORDER else len(RECIPE_ORDER)
    return (nll, -accuracy, order, name)


def recommend(cv: Mapping[str, Mapping[str, float]]) -> str:
    """The method with the lowest held-out NLL (ties: higher held-out accuracy, then plain, distill, head)."""
    if not cv:
        raise ConfigError("recommend needs the cross-validation of at least one model.")
    return min(cv, key=lambda m: _key(m, cv[m]["accuracy"], cv[m]["nll"]))


def recommend_over_seeds(per_seed: Sequence[Mapping[str, Mapping[str, float]]]) -> tuple[str, dict[str, dict]]:
    """The recommendation of several seeds: the same rule on the cross-validated values averaged over seeds.

    Returns the method and ``{method: {"accuracy": [per seed], "mean", "nll": [per seed], "nll_mean"}}``.
    """
    names = list(per_seed[0])
    table = {m: {"accuracy": [float(cv[m]["accuracy"]) for cv in per_seed],
                 "nll": [float(cv[m]["nll"]) for cv in per_seed]} for m in names}
    for t in table.values():
        t["mean"] = float(np.mean(t["accuracy"]))
        t["nll_mean"] = float(np.mean(t["nll"]))
    return recommend({m: {"accuracy": t["mean"], "nll": t["nll_mean"]} for m, t in table.items()}), table
