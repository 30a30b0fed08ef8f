"""Any horizon: LLF on a stream whose length nobody knows (issue 21, item 2).

Usage::

    python benchmarks/any_horizon.py                      # 20,000 rounds, B = 100, seeds 0,1,2 (about 1 minute)
    python benchmarks/any_horizon.py --rounds 50000 --budget 200
    python benchmarks/any_horizon.py --schedule dual      # LLFGate(schedule="dual"): each epoch paced to its release

The stream is a generator (no ``len``), so neither the game nor the gate knows T and the calibrated
gate follows its doubling schedule (``budgetsft.gates.llf``: epoch k of length T̂₀ 2ᵏ, T̂₀ = 10 B,
releases (1 − r) rᵏ of B, r = 0.4). Printed: labels bought per epoch and in all, against what the
schedule releases, on the low-noise synthetic stream (d = 20, K = 5). Target: spent ≥ 0.98 B by
20 T̂₀, with labels in every epoch.
"""

from __future__ import annotations

import argparse

import numpy as np
from threadpoolctl import threadpool_limits

from budgetsft.budget import Budget
from budgetsft.envs import LinearSoftmaxEnv
from budgetsft.game import play
from budgetsft.gates import LLFGate
from budgetsft.learners import LogisticLearner


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=20_000)
    ap.add_argument("--budget", type=float, default=100.0)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--schedule", default="auto", choices=("auto", "power", "dual"), help="LLFGate's schedule")
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    T0 = int(10 * args.budget)
    edges = [0]
    while edges[-1] < args.rounds:
        edges.append(min(args.rounds, T0 * (2 ** len(edges) - 1)))
    gate = LLFGate()
    released = np.diff([gate.schedule(e, None, Budget(args.budget)) for e in edges])  # per epoch
    per_seed = []
    with threadpool_limits(limits=1, user_api="blas"):
        for s in seeds:
            env = LinearSoftmaxEnv(d=20, K=5, rounds=args.rounds, seed=s)
            gate = LLFGate(schedule=args.schedule)
            recs = play((r for r in env), LogisticLearner(), gate, Budget(args.budget))  # no len: T unknown
            bought = np.array([r.round for r in recs if r.queried])
            # the gate's epoch k holds rounds T̂₀ (2ᵏ − 1) ≤ t < T̂₀ (2ᵏ⁺¹ − 1); the last bucket ends with the stream
            ends = [*edges[1:-1], args.rounds + 1]
            per_seed.append([int(((bought >= a) & (bought < b)).sum()) for a, b in zip(edges[:-1], ends, strict=True)])
    print(f"LLF (schedule {args.schedule}) with T unknown: {args.rounds:,} rounds, B = {args.budget:g}, "
          f"T̂₀ = {T0:,}, seeds {seeds}\n")
    print("| rounds | released by the schedule | " + " | ".join(f"bought, seed {s}" for s in seeds) + " |")
    print("|---|---:|" + "---:|" * len(seeds))
    for i, (a, b) in enumerate(zip(edges, edges[1:], strict=False)):
        last = b if i == len(released) - 1 else b - 1
        print(f"| {max(a, 1):,}–{last:,} | {released[i]:.1f} | " + " | ".join(str(p[i]) for p in per_seed) + " |")
    totals = [sum(p) for p in per_seed]
    print(f"| all | {released.sum():.1f} | " + " | ".join(str(t) for t in totals) + " |")
    ok = min(totals) >= 0.98 * args.budget and all(min(p) > 0 for p in per_seed)
    print(f"\nspent ≥ 0.98 B on every seed, labels in every epoch: {'met' if ok else 'missed'} "
          f"(min {min(totals)} of {args.budget:g})")


if __name__ == "__main__":
    main()
