"""Throughput of the ridge learner + LLF gate, against a naive O(d³) reference.

Run::

    python benchmarks/learner_throughput.py           # full run, a few minutes
    python benchmarks/learner_throughput.py --quick   # CI smoke run, < 20 s

What it measures (one process, side by side, because the machine is shared
and noisy: read the ratios, not the absolute numbers):

1. rounds per second of ``budgetsft.game.play`` with ``RidgeLearner`` and
   ``LLFGate`` on pre-materialised ``LinearSoftmaxEnv`` rounds (data generation
   excluded), at full feedback (budget = T, the worst case: every late round
   updates P) and at β = 0.1, next to a naive reference written here that keeps
   V itself and re-solves it every round (LU, O(d³));
2. the log-log slope of time per round against d for both (target: ≈ 2 for
   budgetsft, ≈ 3 for the naive one);
3. numpy's streaming read bandwidth and the bandwidth-bound ceiling on rounds
   per second, bandwidth / (2 passes × d² × 8 bytes), with the fraction of it
   budgetsft reaches;
4. that both implementations make the same predictions and the same queries on
   the first 200 rounds at d = 64 (so the comparison is apples to apples);
5. the target, ≥ 500 rounds/s at d = 768 with full feedback: PASS or MISS.

BLAS thread pools are left at their defaults (printed on one line); a
diagnostic table (1b) repeats the full-feedback budgetsft runs with every pool
held to one thread, because multi-threaded OpenBLAS on the small (K, d) x (d, d)
products and rank-one updates of a round collapses on a busy, few-core machine.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import math
import sys
import time
from collections import deque

import numpy as np

from budgetsft.base import Round
from budgetsft.budget import Budget
from budgetsft.envs import LinearSoftmaxEnv
from budgetsft.game import play
from budgetsft.gates import LLFGate
from budgetsft.learners import RidgeLearner

K = 5
LAM = 1.0
RADIUS = 1.0
BETA = 0.1
TARGET_D = 768
TARGET_RPS = 500.0


# --------------------------------------------------------------------------- helpers
def materialise(d: int, T: int, seed: int = 0) -> list[Round]:
    """The first T rounds of the synthetic stream, built before any timing."""
    return list(LinearSoftmaxEnv(d=d, K=K, rounds=T, seed=seed))


def budget_total(T: int, beta: float) -> float:
    return float(T) if beta >= 1.0 else float(math.floor(beta * T + 1e-9))


def run_budgetsft(rounds: list[Round], beta: float, keep: bool = False):
    """The real game loop: commit -> LLFGate.ask -> spend + learn_one (if queried)."""
    learner = RidgeLearner(lam=LAM, radius=RADIUS)
    records = play(rounds, learner, LLFGate(), Budget(budget_total(len(rounds), beta)))
    if keep:
        return [(r.prediction, r.queried) for r in records]
    deque(records, maxlen=0)
    return None


def run_naive(rounds: list[Round], beta: float, keep: bool = False):
    """Naive reference: keep V = λI + Σ z zᵀ and b = Σ z; re-solve V every round.

    Same model, same widths w(ŷ, a) = ρ ||x_ŷ - x_a||_{V⁻¹}, same gate rule
    (query iff latency > 0 and a label is affordable), same best-response
    alternative. One LU solve with K + 1 right-hand sides per round gives
    θ = V⁻¹ b and V⁻¹ Xᵀ, i.e. O(d³) per round, no Sherman–Morrison.
    """
    d = rounds[0].features.shape[1]
    V = LAM * np.eye(d)
    b = np.zeros(d)
    left = budget_total(len(rounds), beta)
    out = [] if keep else None
    for rnd in rounds:
        X = np.asarray(rnd.features, dtype=np.float64)
        sol = np.linalg.solve(V, np.column_stack([b, X.T]))  # (d, K + 1)
        theta, W = sol[:, 0], sol[:, 1:].T  # W = X V⁻¹ (V symmetric)
        s = X @ theta
        pred = int(np.argmax(s))
        nsq = np.einsum("kd,kd->k", W[pred] - W, X[pred] - X)
        lat = RADIUS * np.sqrt(np.maximum(nsq, 0.0)) - (s[pred] - s)
        lat[pred] = -np.inf
        queried = bool(np.max(lat) > 0.0) and left >= 1.0
        if queried:
            gold = int(rnd.gold)
            masked = s.copy()
            masked[gold] = -np.inf
            alt = int(np.argmax(masked))
            z = X[gold] - X[alt]
            V += np.outer(z, z)
            b += z
            left -= 1.0
        if keep:
            out.append((pred, queried))
    return out


def best_time(fn, rounds: list[Round], beta: float, repeats: int) -> float:
    """Best wall time of ``repeats`` runs over the same rounds (fresh state each run)."""
    best = math.inf
    for _ in range(repeats):
        gc.collect()
        t0 = time.perf_counter()
        fn(rounds, beta)
        best = min(best, time.perf_counter() - t0)
    return best


def calibrated_rounds(fn, d: int, T: int, target_s: float, floor: int, probe_n: int = 10) -> int:
    """Rounds for one timed run of ``fn``: about target_s seconds at full feedback, in [floor, T].

    The machine is shared, so a fixed T can take far longer than planned; a
    short probe on an independent stream sets T instead.
    """
    probe = materialise(d, probe_n, seed=1)
    t0 = time.perf_counter()
    fn(probe, 1.0)
    per_round = (time.perf_counter() - t0) / len(probe)
    return int(min(T, max(floor, target_s / per_round)))


def read_bandwidth(n_bytes: int, repeats: int) -> float:
    """numpy's streaming read bandwidth in GB/s: best ``A.sum()`` over an n_bytes float64 array."""
    A = np.ones(max(n_bytes // 8, 1))
    A.sum()
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        A.sum()
        best = min(best, time.perf_counter() - t0)
    return A.nbytes / best / 1e9


def blas_line() -> str:
    try:
        from threadpoolctl import threadpool_info
    except ImportError:  # pragma: no cover - optional
        return "threadpoolctl: not installed"
    parts = [
        f"{i.get('internal_api')} {i.get('version')} {i.get('architecture')}"
        f" threads={i.get('num_threads')} ({i.get('prefix')})"
        for i in threadpool_info()
    ]
    return "threadpools: " + ("; ".join(parts) if parts else "none loaded")


def slope(ds: list[int], ts: list[float]) -> float:
    return float(np.polyfit(np.log(ds), np.log(ts), 1)[0])


# --------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small smoke run (< 20 s) for CI")
    args = parser.parse_args(argv)
    quick = args.quick
    from threadpoolctl import threadpool_limits

    if quick:
        T_of = {64: 300, 128: 200, 256: 150, 512: 80, 768: 60}
        repeats, target_s, naive_s, floor, naive_floor, bw_bytes = 1, 0.2, 0.08, 10, 4, 32 * 2**20
    else:
        T_of = {64: 4000, 128: 3000, 256: 2000, 512: 1500, 768: 1000}
        repeats, target_s, naive_s, floor, naive_floor, bw_bytes = 3, 2.0, 1.5, 200, 30, 256 * 2**20
    main_ds = [64, 256, 768]
    scale_ds = [64, 128, 256, 512, 768]

    print(f"budgetsft learner throughput  (mode: {'quick' if quick else 'full'}; K = {K}, "
          f"RidgeLearner(lam={LAM}, radius={RADIUS}, update='hardest') + LLFGate(), "
          f"best of {repeats})")
    print(f"numpy {np.__version__}, python {sys.version.split()[0]}")
    print(blas_line())
    print()

    # warm-up: lazy imports, BLAS thread start-up
    warm = materialise(64, 50, seed=2)
    run_budgetsft(warm, 1.0)
    run_naive(warm, 1.0)

    # ---- 4 (first, cheap): the two implementations agree -----------------------
    agree_rounds = materialise(64, 200, seed=0)
    agree = {}
    for beta in (1.0, BETA):
        a = run_budgetsft(agree_rounds, beta, keep=True)
        n = run_naive(agree_rounds, beta, keep=True)
        agree[beta] = (a == n, sum(q for _, q in a), sum(q for _, q in n),
                       sum(x != y for x, y in zip(a, n, strict=True)))

    # ---- 1 + 2: rounds/s, side by side ------------------------------------------
    # "": default BLAS pools; "1": every pool held to one thread (diagnostic)
    per_round: dict[tuple[str, str, float, int], float] = {}
    n_used: dict[tuple[str, str, float, int], int] = {}
    for d in scale_ds:
        plan = {}
        for mode in ("", "1"):
            with threadpool_limits(limits=1) if mode else contextlib.nullcontext():
                T = calibrated_rounds(run_budgetsft, d, T_of[d], target_s, floor)
                Tn = calibrated_rounds(run_naive, d, T, naive_s, naive_floor, probe_n=5)
            plan[mode] = (T, Tn)
        rounds = materialise(d, max(T for T, _ in plan.values()), seed=0)
        for mode, (T, Tn) in plan.items():
            betas = (1.0, BETA) if d in main_ds and not mode else (1.0,)
            with threadpool_limits(limits=1) if mode else contextlib.nullcontext():
                for beta in betas:
                    for name, fn, n in (("bsft", run_budgetsft, T), ("naive", run_naive, Tn)):
                        best = best_time(fn, rounds[:n], beta, repeats)
                        per_round[(name, mode, beta, d)] = best / n
                        n_used[(name, mode, beta, d)] = n
        del rounds

    # ---- 3: bandwidth ---------------------------------------------------------------
    bw = read_bandwidth(bw_bytes, 3 if quick else 5)

    # ---- report ---------------------------------------------------------------------
    def rps(name: str, mode: str, beta: float, d: int) -> float:
        return 1.0 / per_round[(name, mode, beta, d)]

    def table(mode: str, beta: float, title: str) -> None:
        print(title)
        print(f"   {'d':>5} {'T':>6} {'budgetsft r/s':>14} {'T naive':>8} {'naive r/s':>10}"
              f" {'speed-up':>9}")
        for d in main_ds:
            rb, rn = rps("bsft", mode, beta, d), rps("naive", mode, beta, d)
            tb_, tn_ = n_used[("bsft", mode, beta, d)], n_used[("naive", mode, beta, d)]
            print(f"   {d:>5} {tb_:>6} {rb:>14.0f} {tn_:>8} {rn:>10.1f} {rb / rn:>8.1f}x")
        print()

    head = "1. rounds/s, learner + LLF gate through budgetsft.game.play, default BLAS threads"
    table("", 1.0, f"{head}\n   full feedback (budget = T: every late round updates)")
    table("", BETA, f"{head}\n   beta = {BETA} (budget = floor(beta T))")
    table("1", 1.0, "1b. same, full feedback, BLAS held to 1 thread (as budgetsft.experiment.run and the CLI run it)")
    print("   naive = np.linalg.solve(V, [b | X^T]) every round (one LU, O(d^3)),"
          " same stream prefix,")
    print("   same gate rule; it yields no records, so the per-round Python overhead favours it.")
    print("   T is set per run from a short probe so each timing takes ~1-4 s on a loaded machine.")
    print()

    print("2. scaling of time per round with d (full feedback), log-log slope")
    print(f"   {'d':>5} {'budgetsft us/round':>19} {'naive us/round':>15}"
          f" {'budgetsft 1thr':>15} {'naive 1thr':>11}")
    cols = {k: [per_round[(n, m, 1.0, d)] for d in scale_ds]
            for k, (n, m) in {"b": ("bsft", ""), "n": ("naive", ""),
                              "b1": ("bsft", "1"), "n1": ("naive", "1")}.items()}
    for i, d in enumerate(scale_ds):
        print(f"   {d:>5} {cols['b'][i] * 1e6:>19.1f} {cols['n'][i] * 1e6:>15.1f}"
              f" {cols['b1'][i] * 1e6:>15.1f} {cols['n1'][i] * 1e6:>11.1f}")
    hi = [i for i, d in enumerate(scale_ds) if d >= 256]
    for label, idx in ((f"{scale_ds[0]}..{scale_ds[-1]}", list(range(len(scale_ds)))),
                       (f"256..{scale_ds[-1]}", hi)):
        ds = [scale_ds[i] for i in idx]
        sl = {k: slope(ds, [v[i] for i in idx]) for k, v in cols.items()}
        print(f"   slope over d = {label:>8}: budgetsft {sl['b']:.2f}  naive {sl['n']:.2f}"
              f"  | 1 thread: budgetsft {sl['b1']:.2f}  naive {sl['n1']:.2f}")
    print("   target: budgetsft ~2, naive ~3 (a fixed per-round Python cost flattens small d)")
    print()

    print(f"3. memory bandwidth: numpy A.sum() over {bw_bytes // 2**20} MB float64"
          f" = {bw:.1f} GB/s (read)")
    print("   bandwidth-bound ceiling = bandwidth / (2 passes x d^2 x 8 B), full feedback")
    print(f"   {'d':>5} {'P size':>9} {'ceiling r/s':>12} {'budgetsft r/s':>14} {'fraction':>9}"
          f" {'1thr r/s':>9} {'fraction':>9}")
    for d in main_ds:
        ceiling = bw * 1e9 / (2 * d * d * 8)
        rb, rb1 = rps("bsft", "", 1.0, d), rps("bsft", "1", 1.0, d)
        mb = d * d * 8 / 2**20
        print(f"   {d:>5} {mb:>7.2f}MB {ceiling:>12.0f} {rb:>14.0f} {rb / ceiling:>8.1%}"
              f" {rb1:>9.0f} {rb1 / ceiling:>8.1%}")
    print("   (P <= 4.5 MB fits in a typical last-level cache, so a cached pass can beat this")
    print("    DRAM ceiling; a fraction far below 100% means time goes elsewhere)")
    print()

    ok = all(v[0] for v in agree.values())
    print("4. agreement, first 200 rounds at d = 64 (predictions and queries)")
    for beta, (_same, qa, qn, ndiff) in agree.items():
        print(f"   beta = {beta:<4}: budgetsft queried {qa}, naive queried {qn},"
              f" rounds differing {ndiff}")
    print(f"   agree: {'yes' if ok else 'no'}")
    print()

    for mode, label in (("", "default BLAS threads"), ("1", "BLAS held to 1 thread")):
        r768 = rps("bsft", mode, 1.0, TARGET_D)
        verdict = "PASS" if r768 >= TARGET_RPS else "MISS"
        print(f"5. target: >= {TARGET_RPS:.0f} rounds/s at d = {TARGET_D} (full feedback), {label}:"
              f" {r768:.0f} rounds/s -> {verdict}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
