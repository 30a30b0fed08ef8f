"""How LLF moves with the confidence radius ρ, before and after the calibrated gate (SPEC §4: "the radius is the
main knob").

Usage: python benchmarks/radius_sensitivity.py [--seeds 3] [--rounds 5000] [--no-real]

Two gates at β = 0.1, each over ρ ∈ {0.1, 0.3, 1, 4, "theory", "auto"}:

* **before**: the first build's defaults, the ridge learner and the fixed threshold τ = 0
  (``LLFGate(threshold="fixed")``);
* **after**: today's defaults, the logistic learner (hinge-active pairs) and the budget-calibrated
  threshold (``LLFGate()``); ρ = "auto" is the default radius.

Settings: the shipped synthetic streams (low-noise, noisy, drifting; d = 20, K = 5) and, unless
``--no-real``, bbc-news on its default (block) features. Columns: pseudo-regret (synthetic) or online
mistakes (bbc-news), labels bought, the share of them bought in the first 10 % of rounds and the
overlap of the bought set with `first`'s (1.0 = it degenerated into `first`), and held-out accuracy
of the head refit on the bought labels (bbc-news). `first` and `random` at the same budget are the
reference rows.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from threadpoolctl import threadpool_limits

from budgetsft.budget import Budget
from budgetsft.envs import DriftingEnv, LinearSoftmaxEnv
from budgetsft.game import play
from budgetsft.gates import FirstGate, LLFGate, RandomGate
from budgetsft.learners import LogisticLearner, RidgeLearner
from budgetsft.refit import refit_accuracy

SETTINGS = {
    "low-noise": lambda T, s: LinearSoftmaxEnv(d=20, K=5, rounds=T, temperature=0.05, seed=s),
    "noisy": lambda T, s: LinearSoftmaxEnv(d=20, K=5, rounds=T, temperature=0.5, seed=s),
    "drifting": lambda T, s: DriftingEnv(d=20, K=5, rounds=T, temperature=0.05, seed=s),
}
RADII = [0.1, 0.3, 1.0, 4.0, "theory", "auto"]
GATES = {
    "before": (lambda rho: RidgeLearner(radius=rho), lambda: LLFGate(threshold="fixed")),
    "after": (lambda rho: LogisticLearner(radius=rho), lambda: LLFGate()),
}


def one(train, test, learner, gate, beta) -> dict:
    T = len(train)
    B = Budget.from_beta(beta, T)
    recs = list(play(train, learner, gate, B))
    q = np.array([r.queried for r in recs])
    bought = np.flatnonzero(q)
    out = {
        "regret": float(np.nansum([r.regret for r in recs])),
        "mistakes": float(sum(r.mistake for r in recs)),
        "labels": int(q.sum()),
        "early": q[: T // 10].sum() / max(q.sum(), 1),
        "overlap": len(set(bought.tolist()) & set(range(int(B.total)))) / max(B.total, 1),
    }
    out["refit"] = refit_accuracy([train[i] for i in bought], test) if test is not None else float("nan")
    return out


def row(setting, gname, rho, res, metric) -> str:
    v = np.array([r[metric] for r in res])
    refit = np.array([r["refit"] for r in res])
    refit_s = "" if np.all(np.isnan(refit)) else f"{refit.mean():.4f}"
    return (f"| {setting} | {gname} | {rho} | {v.mean():.1f} ± {v.std(ddof=1) if len(v) > 1 else 0:.1f} "
            f"| {np.mean([r['labels'] for r in res]):.0f} | {np.mean([r['early'] for r in res]):.2f} "
            f"| {np.mean([r['overlap'] for r in res]):.2f} | {refit_s} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=5000)
    ap.add_argument("--beta", type=float, default=0.1)
    ap.add_argument("--no-real", action="store_true", help="skip bbc-news")
    args = ap.parse_args()
    seeds = range(args.seeds)
    start = time.perf_counter()
    print(f"LLF vs radius ρ — β = {args.beta}, {args.seeds} seeds; synthetic: d = 20, K = 5, T = {args.rounds}\n")
    print("| setting | gate | ρ | pseudo-regret / mistakes | labels | early share | overlap with first | refit acc. |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    streams = {name: (lambda s, make=make: (list(make(args.rounds, s)), None)) for name, make in SETTINGS.items()}
    if not args.no_real:
        from budgetsft.realdata import load_streams

        def bbc(s):
            st = load_streams("bbc-news", seed=s, progress=False)
            return st.train, st.test

        streams["bbc-news"] = bbc
    with threadpool_limits(limits=1, user_api="blas"):
        for name, make in streams.items():
            data = [make(s) for s in seeds]
            metric = "mistakes" if name == "bbc-news" else "regret"
            for gname, factory in (("first", FirstGate), ("random", None)):
                res = [one(tr, te, LogisticLearner(), factory() if factory else RandomGate(seed=100 + s), args.beta)
                       for s, (tr, te) in zip(seeds, data, strict=True)]
                print(row(name, gname, "-", res, metric), flush=True)
            for gname, (learner, gate) in GATES.items():
                for rho in RADII:
                    res = [one(tr, te, learner(rho), gate(), args.beta) for tr, te in data]
                    print(row(name, gname, rho, res, metric), flush=True)
    print(f"\n({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
