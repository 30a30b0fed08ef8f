"""LLF pool mode at scale: B = 1,000 labels from a 100k-item pool, time and peak memory.

Run::

    python benchmarks/pool_scale.py           # n = 100,000 (about 10 minutes on one core)
    python benchmarks/pool_scale.py --quick   # n = 10,000, comparison at n = 2,000 (about a minute)

What it measures. A pool of n items, K = 5 candidates each, d = 384 float32
features N(0, 1)/sqrt(d) (one (n, K, d) array), gold answers from a hidden
linear model θ ~ N(0, I); ``select_pool`` buys B labels with a fresh
LogisticLearner (the default learner) in batches of ``batch_size``:

1. the scalable ``budgetsft.gates.select_pool`` at n (default batch size 8 and
   a larger one, the knob that trades passes over the pool for selection
   quality);
2. the implementation it replaced (``tests/_pool_reference.py``: a Python loop
   over items per batch, every pair feature Y of shape (n(K-1), d) and Y P in
   float64) against the new one at a smaller n (5,000; 2,000 with --quick),
   side by side, with the ratios and whether both bought the same items in
   the same order.

Each run is a fresh child process, so that its peak resident memory is its
own: ``peak RSS Δ`` is ru_maxrss at the end minus ru_maxrss once the pool is
built and BLAS has warmed up, i.e. what the selection adds on top of the pool.
BLAS runs on one thread by default (``--threads``): on a busy few-core
machine multi-threaded OpenBLAS collapses on the learner's (d, d) rank-one
updates (a 2,000-item run took 12 s on two threads, 2 s on one). The machine
may be shared, so read the ratios rather than the absolute seconds. Progress
goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from budgetsft.budget import Budget
from budgetsft.gates import select_pool
from budgetsft.learners import LogisticLearner, RidgeLearner

K, D = 5, 384
LEARNERS = {"logistic": LogisticLearner, "ridge": RidgeLearner}


def make_pool(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(n, K, d) float32 features N(0, 1)/sqrt(d), built in float32 blocks (no float64 copy), and gold."""
    rng = np.random.default_rng(seed)
    theta = rng.standard_normal(D).astype(np.float32)
    pool = np.empty((n, K, D), dtype=np.float32)
    for a in range(0, n, 1000):  # written in place: the pool is the only large allocation
        rng.standard_normal(dtype=np.float32, out=pool[a:a + 1000])
    pool /= np.float32(math.sqrt(D))
    gold = np.argmax(pool @ theta, axis=1)
    return pool, gold


def _maxrss_bytes() -> int:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024  # Linux reports KiB


def child(impl: str, n: int, budget: int, batch_size: int, learner: str) -> dict:
    """One selection in this process: wall seconds, peak RSS above the built pool, the items bought."""
    pool, gold = make_pool(n)
    np.ones((256, D)) @ np.ones((D, D))  # BLAS allocates its buffers before the baseline
    if impl == "old":
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from _pool_reference import reference_select_pool as select
        items = list(pool)  # (K, d) views, no copy
    else:
        select, items = select_pool, pool
    step = max(1, budget // 10)

    def progress(k: int) -> None:
        if k % step == 0 or k == budget:
            print(f"  {impl} n={n} batch={batch_size}: {k}/{budget} labels, {time.perf_counter() - t0:.0f} s",
                  file=sys.stderr, flush=True)

    rss0 = _maxrss_bytes()
    t0 = time.perf_counter()
    bought = select(LEARNERS[learner](), items, Budget(float(budget)), lambda i: int(gold[i]),
                    batch_size=batch_size, progress=progress)
    wall = time.perf_counter() - t0
    return {"impl": impl, "n": n, "B": budget, "batch_size": batch_size, "wall_s": wall,
            "peak_rss_delta": _maxrss_bytes() - rss0, "pool_bytes": pool.nbytes, "bought": bought}


def run_child(impl: str, n: int, budget: int, batch_size: int, learner: str, threads: int) -> dict:
    print(f"{impl} select_pool, n = {n}, B = {budget}, batch_size = {batch_size} ...", file=sys.stderr, flush=True)
    cmd = [sys.executable, __file__, "--child", impl, str(n), str(budget), str(batch_size), "--learner", learner]
    env = dict(os.environ)
    if threads > 0:
        env.update({k: str(threads) for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")})
    out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])


def mib(x: float) -> str:
    return f"{x / 2**20:,.0f}"


def table(rows: list[dict]) -> str:
    lines = ["| implementation | n | d | K | B | batch_size | wall (s) | peak RSS Δ (MiB) | pool array (MiB) "
             "| pair matrix Y, float64 (MiB) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        pairs = r["n"] * (K - 1) * D * 8
        lines.append(f"| {r['impl']} | {r['n']:,} | {D} | {K} | {r['B']:,} | {r['batch_size']} | {r['wall_s']:.1f} "
                     f"| {mib(r['peak_rss_delta'])} | {mib(r['pool_bytes'])} | {mib(pairs)} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="n = 10,000 instead of 100,000")
    p.add_argument("--n", type=int, help="pool size of the scale runs (overrides --quick)")
    p.add_argument("--budget", type=int, default=1000, help="labels to buy, B")
    p.add_argument("--batch-sizes", default="8,64", help="batch sizes of the scale runs, comma-separated")
    p.add_argument("--compare-n", type=int, help="pool size of the old-vs-new comparison (5,000; --quick 2,000)")
    p.add_argument("--learner", choices=sorted(LEARNERS), default="logistic")
    p.add_argument("--threads", type=int, default=1, help="BLAS threads of each run (0: leave the default)")
    p.add_argument("--child", nargs=4, metavar=("IMPL", "N", "B", "BATCH"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        impl, n, budget, batch = args.child
        print(json.dumps(child(impl, int(n), int(budget), int(batch), args.learner)))
        return
    n = args.n or (10_000 if args.quick else 100_000)
    batches = [int(b) for b in args.batch_sizes.split(",")]
    threads = args.threads or os.environ.get("OMP_NUM_THREADS") or "default"
    print(f"# LLF pool mode at scale ({args.learner} learner, float32 pool, BLAS threads: {threads}, "
          f"{os.cpu_count()} CPUs)\n")
    scale = [run_child("new", n, args.budget, b, args.learner, args.threads) for b in batches]
    print(table(scale) + "\n")
    m = args.compare_n or (2000 if args.quick else 5000)
    old = run_child("old", m, args.budget, batches[0], args.learner, args.threads)
    new = next((r for r in scale if r["n"] == m and r["batch_size"] == batches[0]), None)
    new = new or run_child("new", m, args.budget, batches[0], args.learner, args.threads)
    print(f"## Old against new at n = {m:,}\n")
    print(table([old, new]) + "\n")
    same = old["bought"] == new["bought"]
    print("| old / new | wall | peak RSS Δ | same items, same order |\n|---|---:|---:|---|")
    print(f"| n = {m:,}, B = {args.budget:,}, batch_size = {batches[0]} | {old['wall_s'] / new['wall_s']:.1f}x "
          f"| {old['peak_rss_delta'] / max(new['peak_rss_delta'], 1):.1f}x | {'yes' if same else 'NO'} |")


if __name__ == "__main__":
    main()
