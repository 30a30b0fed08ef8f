"""What each label is worth: gates at equal budgets on real data (issue 3).

Usage:
    python benchmarks/label_efficiency.py                    # bbc-news (encoder) and logiqa (causal)
    python benchmarks/label_efficiency.py --data bbc-news    # one data set
    python benchmarks/label_efficiency.py --quick            # 1 seed, 2 budgets, bbc-news subset (CI smoke)

For each data set and seed the examples are featurised once (disk cache), the
train split is streamed through the game with each gate at each budget β,
and the final scoring head is evaluated on the test split. Printed per data
set: online mistakes and held-out accuracy (mean ± sd over seeds) per gate
and β plus full feedback; the area under the accuracy-vs-labels curve
(normalised: the mean accuracy over the label range); and the label-savings
factor: how many labels `random` needs to reach LLF's accuracy at β = 0.1
(interpolated on random's curve, which is extended to β = 0.3, 0.5 and 1).
"""

from __future__ import annotations

import argparse
import math
import sys
import time

import numpy as np

from budgetsft.experiment import run
from budgetsft.realdata import load_streams

DATASETS = {"bbc-news": "encoder", "logiqa": "causal"}
GATES = ["llf", "random", "first", "margin"]
BETAS = [0.02, 0.05, 0.1, 0.2]
EXTRA_RANDOM = [0.3, 0.5]


RADIUS = 1.0


def cell(streams, gate: str, beta: float, seed: int) -> dict:
    cfg = {"gate": {"name": gate, "beta": beta}, "seed": seed, "regret_lp": False,
           "learner": {"name": "ridge", "radius": RADIUS}}
    s = run(cfg, stream=streams.train, test=streams.test).summary
    return {"mistakes": s["mistakes"], "acc": s["test_accuracy"], "labels": s["labels_bought"]}


def auc(labels: list[float], acc: list[float]) -> float:
    """Trapezoid area under accuracy vs labels, divided by the label range (a mean accuracy)."""
    order = np.argsort(labels)
    x, y = np.asarray(labels)[order], np.asarray(acc)[order]
    return float(np.trapezoid(y, x) / (x[-1] - x[0])) if x[-1] > x[0] else float(y[0])


def labels_to_reach(target: float, labels: list[float], acc: list[float]) -> float:
    """Smallest label count where the (linearly interpolated) accuracy curve reaches ``target``."""
    order = np.argsort(labels)
    x, y = np.asarray(labels, dtype=float)[order], np.asarray(acc, dtype=float)[order]
    if y[0] >= target:
        return float(x[0])
    for i in range(1, len(x)):
        if y[i] >= target:
            return float(x[i - 1] + (target - y[i - 1]) * (x[i] - x[i - 1]) / max(y[i] - y[i - 1], 1e-12))
    return math.inf


def bench(name: str, kind: str, seeds: list[int], betas: list[float], max_examples: int | None) -> dict:
    results: dict[tuple[str, float], list[dict]] = {}
    t0 = time.perf_counter()
    for seed in seeds:
        streams = load_streams(name, kind, seed=seed, max_examples=max_examples, progress=True)
        for gate in GATES:
            for beta in betas + (EXTRA_RANDOM if gate == "random" else []):
                results.setdefault((gate, beta), []).append(cell(streams, gate, beta, seed))
        results.setdefault(("full", 1.0), []).append(cell(streams, "full", 1.0, seed))
        n_train = len(streams.train)
    secs = time.perf_counter() - t0

    def mean(key, gate, beta):
        return float(np.mean([r[key] for r in results[(gate, beta)]]))

    def sd(key, gate, beta):
        v = [r[key] for r in results[(gate, beta)]]
        return float(np.std(v, ddof=1)) if len(v) > 1 else 0.0

    print(f"\n## {name} ({kind} features): {n_train} train rounds, {len(seeds)} seeds, {secs:.0f} s")
    print(f"{'gate':<8} {'β':>5} {'labels':>7} {'online mistakes':>18} {'held-out acc':>16}")
    for gate in GATES:
        for beta in betas:
            print(f"{gate:<8} {beta:>5g} {mean('labels', gate, beta):>7.0f} "
                  f"{mean('mistakes', gate, beta):>10.1f} ± {sd('mistakes', gate, beta):<5.1f}"
                  f"{mean('acc', gate, beta):>9.4f} ± {sd('acc', gate, beta):.4f}")
    print(f"{'full':<8} {1:>5g} {mean('labels', 'full', 1.0):>7.0f} {mean('mistakes', 'full', 1.0):>10.1f} ± "
          f"{sd('mistakes', 'full', 1.0):<5.1f}{mean('acc', 'full', 1.0):>9.4f} ± {sd('acc', 'full', 1.0):.4f}")

    print("\narea under accuracy-vs-labels (mean accuracy over the β range):")
    aucs = {}
    for gate in GATES:
        aucs[gate] = auc([mean("labels", gate, b) for b in betas], [mean("acc", gate, b) for b in betas])
        print(f"  {gate:<8} {aucs[gate]:.4f}")

    ref = 0.1 if 0.1 in betas else betas[-1]
    llf_acc, llf_labels = mean("acc", "llf", ref), mean("labels", "llf", ref)
    rb = betas + EXTRA_RANDOM
    r_labels = [mean("labels", "random", b) for b in rb] + [mean("labels", "full", 1.0)]
    r_acc = [mean("acc", "random", b) for b in rb] + [mean("acc", "full", 1.0)]
    need = labels_to_reach(llf_acc, r_labels, r_acc)
    factor = need / llf_labels if llf_labels else math.nan
    print(f"\nlabel savings at β = {ref}: LLF reaches accuracy {llf_acc:.4f} with {llf_labels:.0f} labels; "
          f"random needs {'more than all ' + str(int(r_labels[-1])) if math.isinf(need) else f'{need:.0f}'} "
          f"-> factor {factor:.2f}x")
    mis_ratio = mean("mistakes", "llf", ref) / mean("mistakes", "random", ref)
    acc_ratio = llf_acc / mean("acc", "full", 1.0)
    print(f"LLF / random online mistakes at β = {ref}: {mis_ratio:.3f}   (target for bbc-news: <= 0.75)")
    print(f"LLF / full held-out accuracy at β = {ref}: {acc_ratio:.3f}   (target for bbc-news: >= 0.95)")
    return {"mistake_ratio": mis_ratio, "accuracy_ratio": acc_ratio, "savings": factor, "auc": aucs}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", choices=sorted(DATASETS), action="append")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--max-examples", type=int, default=None)
    ap.add_argument("--radius", type=float, default=1.0, help="confidence radius ρ of the ridge learner")
    ap.add_argument("--quick", action="store_true", help="1 seed, β in {0.05, 0.1}, 400 bbc-news examples")
    args = ap.parse_args()
    global RADIUS
    RADIUS = args.radius
    seeds = [int(s) for s in args.seeds.split(",")]
    betas = BETAS
    names = args.data or list(DATASETS)
    if args.quick:
        seeds, betas, names, args.max_examples = [0], [0.05, 0.1], ["bbc-news"], args.max_examples or 400
    print(f"budgetsft label efficiency — ridge learner (λ=1, ρ={RADIUS:g}), gates {', '.join(GATES)} and full; "
          f"python {sys.version.split()[0]}")
    for name in names:
        bench(name, DATASETS[name], seeds, betas, args.max_examples)


if __name__ == "__main__":
    main()
