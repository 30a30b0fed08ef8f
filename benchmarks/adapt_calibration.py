"""What a label-free prior correction would do to `budgetsft adapt` reports, from their saved scores (no training).

Usage::

    python benchmarks/adapt_calibration.py runs/adapt-bbc runs/adapt-bbc-b005

For every method of each run (``seed-*/predictions.json``): accuracy as reported (argmax of the candidates'
mean log-likelihood), and after subtracting the log of each label's mean predicted probability over the test
prompts (softmax of the scores; transductive, uses no label). Also each bought set's size per label
(``seed-*/selection.json`` ids name their class on bbc-news: ``bbc-<topic>-<n>``), to see whether a gate
buys a lopsided set. Not part of the product: an analysis of issue 12's runs.
"""

from __future__ import annotations

import collections
import json
import sys
from pathlib import Path

import numpy as np


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def main(dirs: list[str]) -> None:
    for d in map(Path, dirs):
        seeds = json.loads((d / "report.json").read_text())["seeds"]
        raw: dict[str, list[float]] = collections.defaultdict(list)
        cal: dict[str, list[float]] = collections.defaultdict(list)
        for s in seeds:
            pred = json.loads((d / f"seed-{s}" / "predictions.json").read_text())
            gold = np.array(pred["gold"])
            for m, scores in pred["scores"].items():
                sc = np.array(scores)
                raw[m].append(float((sc.argmax(1) == gold).mean()))
                prior = _softmax(sc).mean(axis=0)
                cal[m].append(float(((sc - np.log(prior)).argmax(1) == gold).mean()))
        print(f"## {d}\n\n| method | accuracy | prior-corrected | per seed (corrected) |\n|---|---:|---:|---|")
        for m in raw:
            print(f"| {m} | {np.mean(raw[m]):.4f} | {np.mean(cal[m]):.4f} | "
                  f"{', '.join(f'{a:.3f}' for a in cal[m])} |")
        sel = json.loads((d / f"seed-{seeds[0]}" / "selection.json").read_text())
        print(f"\nbought per class, seed {seeds[0]}:")
        for m, ids in sel.items():
            if m != "all":
                counts = collections.Counter(i.split("-")[1] if i.count("-") >= 2 else "?" for i in ids)
                print(f"  {m}: {dict(sorted(counts.items()))}")
        print()


if __name__ == "__main__":
    main(sys.argv[1:] or ["runs/adapt-bbc"])
