"""Throughput side by side (issue 4): budgetsft learner + gate vs VW and river, rounds/s and memory per model.

Usage::

    python benchmarks/peer_throughput.py           # part of `make bench`
    python benchmarks/peer_throughput.py --quick

The same synthetic stream (K = 5 candidates, features N(0, I_d)) at d ∈ {64, 384, 768}, full
feedback (every round updates), BLAS on one thread:

* budgetsft: ``RidgeLearner`` (full d × d inverse covariance, O(d²) per round) + ``LLFGate``
  through ``budgetsft.game.play``;
* VW: one binary example per candidate (the candidate-features formulation of
  ``benchmarks/peers.py``), ``predict`` on every candidate then ``learn`` on every candidate,
  O(d) per example; the example text is formatted before timing, parsing is timed;
* river: ``linear_model.LogisticRegression`` on the same candidate examples as dicts.

Memory per model: budgetsft P, b, θ (8·(d² + 2d) bytes, measured as the arrays' nbytes); VW
its dense weight array (2^18 weights × stride × 4 bytes, allocated whatever d is); river the
pickled model. Read the ratios, not the absolute numbers: the machine is shared.
"""

from __future__ import annotations

import argparse
import pickle
import sys
import time
from collections import deque

import numpy as np
from threadpoolctl import threadpool_limits

from budgetsft.budget import Budget
from budgetsft.envs import LinearSoftmaxEnv
from budgetsft.game import play
from budgetsft.gates import LLFGate
from budgetsft.learners import RidgeLearner

K = 5


def bench_d(d: int, T: int) -> dict:
    import vowpalwabbit
    from river import linear_model

    rounds = list(LinearSoftmaxEnv(d=d, K=K, rounds=T, seed=0))
    out = {"d": d, "T": T}
    learner = RidgeLearner(lam=1.0, radius=1.0)
    t0 = time.perf_counter()
    deque(play(rounds, learner, LLFGate(), Budget(float(T))), maxlen=0)
    out["bsft_rps"] = T / (time.perf_counter() - t0)
    out["bsft_bytes"] = int(sum(v.nbytes for v in vars(learner).values() if isinstance(v, np.ndarray)))

    lines = [[" ".join(f"{j}:{x:.7g}" for j, x in enumerate(row.tolist())) for row in r.features] for r in rounds]
    vw = vowpalwabbit.Workspace("--quiet --random_seed 1")
    t0 = time.perf_counter()
    for r, cand in zip(rounds, lines, strict=True):
        [vw.predict("| " + c) for c in cand]
        for a, c in enumerate(cand):
            vw.learn(f"{1 if a == r.gold else -1} | {c}")
    out["vw_rps"] = T / (time.perf_counter() - t0)
    out["vw_bytes"] = int(vw.num_weights() * vw.get_stride() * 4)
    vw.finish()

    dicts = [[dict(enumerate(row.tolist())) for row in r.features] for r in rounds]
    model = linear_model.LogisticRegression()
    t0 = time.perf_counter()
    for r, cand in zip(rounds, dicts, strict=True):
        [model.predict_proba_one(x) for x in cand]
        for a, x in enumerate(cand):
            model.learn_one(x, a == r.gold)
    out["river_rps"] = T / (time.perf_counter() - t0)
    out["river_bytes"] = len(pickle.dumps(model))
    return out


def markdown(rows: list[dict]) -> str:
    lines = ["| d | T | budgetsft r/s | VW r/s | river r/s | budgetsft / VW | budgetsft / river "
             "| budgetsft model | VW model | river model |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['d']} | {r['T']} | {r['bsft_rps']:,.0f} | {r['vw_rps']:,.0f} | {r['river_rps']:,.0f} "
                     f"| {r['bsft_rps'] / r['vw_rps']:.2f}× | {r['bsft_rps'] / r['river_rps']:.2f}× "
                     f"| {r['bsft_bytes'] / 2**20:.2f} MiB | {r['vw_bytes'] / 2**20:.2f} MiB "
                     f"| {r['river_bytes'] / 2**20:.2f} MiB |")
    return "\n".join(lines)


def run_all(args) -> dict:
    ds = [int(x) for x in args.d.split(",")]
    with threadpool_limits(limits=1, user_api="blas"):
        rows = [bench_d(d, max(args.min_T, int(args.T_768 * (768 / d) ** 1.0))) for d in ds]
    return {"rows": rows}


def parse(argv: list[str] | None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--d", default="64,384,768")
    ap.add_argument("--T-768", type=int, default=1500, help="rounds at d = 768 (more at smaller d)")
    ap.add_argument("--min-T", type=int, default=200)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    if args.quick:
        args.d, args.T_768, args.min_T = "64,384", 60, 30
    return args


def main(argv: list[str] | None = None) -> dict:
    out = run_all(parse(argv))
    print(f"throughput, full feedback, BLAS on one thread; python {sys.version.split()[0]}\n")
    print(markdown(out["rows"]))
    return out


if __name__ == "__main__":
    main()
