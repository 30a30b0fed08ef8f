"""Which rule should pick the model `budgetsft adapt` hands back? Audits drawn from saved test predictions.

Usage::

    python benchmarks/recommend_rule.py --set bbc-news runs/adapt-rec-bbc runs/adapt-distill-bbc \
        --set sarcasm runs/adapt-rec-sarcasm runs/adapt-distill-sarcasm

Each ``--set NAME DIR...`` names the `adapt` runs whose ``seed-*/predictions.json`` hold the gate's models
(``llf/head``, ``llf/plain``, ``llf/distill``; a run of the first build names ``llf/distill`` so and ``llf/plain``
``llf``); the first run that has a model gives it. For each audit size A, 2,000 times: draw A test items
uniformly at every seed (an audit share is a uniform sample of the pool, as the test split is), score each
model on them, average over seeds, and let a rule pick:

* ``accuracy``: the highest audit accuracy (ties: lower NLL);
* ``nll``: the lowest audit gold NLL (mean −log p(gold));
* ``nll-accuracy``: the lowest NLL minus accuracy.

A rule's regret is the test accuracy of the best model minus that of its pick, in points, averaged over the
draws. What this leaves out: an audit model is trained on A labels fewer than the models scored here, and
the test items stand in for the pool. No training: seconds.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

MODELS = {"head": ("llf/head",), "plain": ("llf/plain", "llf"), "distill": ("llf/distill",)}
RULES = ("accuracy", "nll", "nll-accuracy")


def _nll(scores: np.ndarray, gold: np.ndarray) -> np.ndarray:
    m = scores.max(axis=1, keepdims=True)
    lse = m[:, 0] + np.log(np.exp(scores - m).sum(axis=1))
    return lse - scores[np.arange(len(gold)), gold]


def load(dirs: list[Path]) -> list[dict[str, tuple[np.ndarray, np.ndarray]]]:
    """Per seed: model -> (correct, NLL) on the test items, in test-id order."""
    seeds = json.loads((dirs[0] / "report.json").read_text())["seeds"]
    out = []
    for s in seeds:
        per: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for d in dirs:
            pred = json.loads((d / f"seed-{s}" / "predictions.json").read_text())
            order = np.argsort(pred["test_ids"])
            gold = np.asarray(pred["gold"])[order]
            for model, names in MODELS.items():
                name = next((n for n in names if n in pred["scores"]), None)
                if model in per or name is None:
                    continue
                sc = np.asarray(pred["scores"][name], dtype=np.float64)[order]
                per[model] = ((sc.argmax(axis=1) == gold).astype(float), _nll(sc, gold))
        out.append(per)
    return out


def pick(rule: str, acc: dict[str, float], nll: dict[str, float]) -> str:
    if rule == "accuracy":
        return min(acc, key=lambda m: (-acc[m], nll[m]))
    if rule == "nll":
        return min(acc, key=lambda m: (nll[m], -acc[m]))
    return min(acc, key=lambda m: nll[m] - acc[m])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--set", nargs="+", action="append", required=True, metavar=("NAME", "DIR"))
    ap.add_argument("--sizes", default="17,24,34,51")
    ap.add_argument("--draws", type=int, default=2000)
    args = ap.parse_args()
    sizes = [int(a) for a in args.sizes.split(",")]
    rng = np.random.default_rng(0)
    print("| set | models | test accuracy (NLL) | audit items per seed | " + " | ".join(
        f"{r}: regret, points" for r in RULES) + " |")
    print("|---|---|---|---:|" + "---:|" * len(RULES))
    for name, *dirs in args.set:
        data = load([Path(d) for d in dirs])
        models = [m for m in MODELS if all(m in per for per in data)]
        true = {m: float(np.mean([per[m][0].mean() for per in data])) for m in models}
        true_nll = {m: float(np.mean([per[m][1].mean() for per in data])) for m in models}
        shown = ", ".join(f"{m} {true[m]:.4f} ({true_nll[m]:.3f})" for m in models)
        for a in sizes:
            regret = {r: [] for r in RULES}
            for _ in range(args.draws):
                acc = dict.fromkeys(models, 0.0)
                nll = dict.fromkeys(models, 0.0)
                for per in data:
                    idx = rng.choice(len(per[models[0]][0]), a, replace=False)
                    for m in models:
                        acc[m] += per[m][0][idx].mean() / len(data)
                        nll[m] += per[m][1][idx].mean() / len(data)
                for r in RULES:
                    regret[r].append(max(true.values()) - true[pick(r, acc, nll)])
            print(f"| {name} | {len(data)} seeds | {shown} | {a} | "
                  + " | ".join(f"{100 * np.mean(regret[r]):.2f}" for r in RULES) + " |")


if __name__ == "__main__":
    main()
