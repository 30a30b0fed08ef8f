"""How LLF moves with the confidence radius ρ (SPEC §4: "the radius is the main knob").

Usage: python benchmarks/radius_sensitivity.py [--seeds 3] [--rounds 5000]

For each shipped synthetic setting and each ρ (fixed values and the OFUL
"theory" radius), prints LLF's mean pseudo-regret at β = 0.1, the labels it
bought, the share of them bought in the first 10% of rounds (1.0 = it
degenerated into `first`), beside `first` and `random` at the same budget.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from budgetsft.budget import Budget
from budgetsft.envs import DriftingEnv, LinearSoftmaxEnv
from budgetsft.game import play
from budgetsft.gates import FirstGate, LLFGate, RandomGate
from budgetsft.learners import RidgeLearner

SETTINGS = {
    "low-noise": lambda T, s: LinearSoftmaxEnv(d=20, K=5, rounds=T, temperature=0.05, seed=s),
    "noisy": lambda T, s: LinearSoftmaxEnv(d=20, K=5, rounds=T, temperature=0.5, seed=s),
    "drifting": lambda T, s: DriftingEnv(d=20, K=5, rounds=T, temperature=0.05, seed=s),
}
RADII = [0.1, 0.3, 0.5, 1.0, 2.0, 4.0, "theory"]


def one(env, radius, gate, beta):
    T = len(env)
    recs = list(play(env, RidgeLearner(radius=radius), gate, Budget.from_beta(beta, T)))
    q = np.array([r.queried for r in recs])
    early = q[: T // 10].sum() / max(q.sum(), 1)
    return sum(r.regret for r in recs), int(q.sum()), early


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=5000)
    ap.add_argument("--beta", type=float, default=0.1)
    args = ap.parse_args()
    seeds = range(args.seeds)
    start = time.perf_counter()
    print(f"LLF vs radius ρ — d=20, K=5, T={args.rounds}, β={args.beta}, ridge learner, {args.seeds} seeds")
    print(f"{'setting':<10} {'gate':<8} {'ρ':>7} {'pseudo-regret':>16} {'labels':>8} {'early share':>12}")
    for name, make in SETTINGS.items():
        rows = [("first", "-", FirstGate), ("random", "-", None)]
        for gname, rho, factory in rows:
            res = [one(make(args.rounds, s), 1.0, factory() if factory else RandomGate(seed=100 + s), args.beta)
                   for s in seeds]
            reg = np.array([r[0] for r in res])
            print(f"{name:<10} {gname:<8} {rho:>7} {reg.mean():>9.1f} ± {reg.std(ddof=1):<5.1f}"
                  f"{np.mean([r[1] for r in res]):>8.0f} {np.mean([r[2] for r in res]):>12.2f}")
        for rho in RADII:
            res = [one(make(args.rounds, s), rho, LLFGate(), args.beta) for s in seeds]
            reg = np.array([r[0] for r in res])
            print(f"{name:<10} {'llf':<8} {str(rho):>7} {reg.mean():>9.1f} ± {reg.std(ddof=1):<5.1f}"
                  f"{np.mean([r[1] for r in res]):>8.0f} {np.mean([r[2] for r in res]):>12.2f}")
        for rho in (0.5, 1.0):
            res = [one(make(args.rounds, s), rho, LLFGate(pacing=True), args.beta) for s in seeds]
            reg = np.array([r[0] for r in res])
            print(f"{name:<10} {'llf+pace':<8} {str(rho):>7} {reg.mean():>9.1f} ± {reg.std(ddof=1):<5.1f}"
                  f"{np.mean([r[1] for r in res]):>8.0f} {np.mean([r[2] for r in res]):>12.2f}")
    print(f"({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
