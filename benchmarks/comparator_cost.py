"""What the hindsight comparator costs a sweep (issue 11): the README's bbc-news sweep with and without it.

Usage::

    python benchmarks/comparator_cost.py                 # the README sweep, 3 seeds (about 10 min)
    python benchmarks/comparator_cost.py --quick         # 1 seed, β = 0.1 only
    python benchmarks/comparator_cost.py --solvers       # also: HiGHS vs the bracket per stream

The sweep is ``budgetsft sweep --data bbc-news --gates llf,random,first,full --betas 0.05,0.1
--seeds 0,1,2``, run in this process twice, side by side: with ``comparator: none`` and with the
default ``comparator: auto`` starting from an empty comparator cache (so every stream is solved once,
then reused by the other cells of its seed). Features come from the feature cache in both runs
(the first run featurises when it is cold; it is not timed). ``--solvers`` times each method once
per data set on seed 0's stream (sarcasm's exact LP takes minutes). Read the ratios: the machine is
shared.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings

from budgetsft.config import DEFAULT_CONFIG, merge
from budgetsft.experiment import _real_streams, sweep


def timed_sweep(comparator: str, gates, betas, seeds) -> tuple[float, list[dict]]:
    cfg = merge(DEFAULT_CONFIG, {"data": {"name": "bbc-news"}, "comparator": comparator})
    t0 = time.perf_counter()
    rows = sweep(cfg, gates, betas, seeds)
    return time.perf_counter() - t0, rows


def solvers(names) -> list[str]:
    from budgetsft import comparator as comp

    lines = ["| data set | rounds | pairs × d | nonzeros | method | loss (upper) | lower bound | seconds |",
             "|---|---:|---:|---:|---|---:|---:|---:|"]
    for name in names:
        streams = _real_streams(merge(DEFAULT_CONFIG, {"data": {"name": name}}))
        rounds = streams.train
        Z, _ = comp.pair_matrix(rounds)
        for method in ("approx", "exact", "auto"):
            print(f"{name}: {method} ...", file=sys.stderr, flush=True)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                t0 = time.perf_counter()
                c = comp.solve(rounds, method=method, cache=False)
            lines.append(f"| {name} | {len(rounds):,} | {Z.shape[0]:,} × {Z.shape[1]:,} | {Z.nnz:,} | {method} → "
                         f"{c.method} | {c.loss:.4f} | {c.lower:.4f} | {time.perf_counter() - t0:.1f} |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--solvers", action="store_true")
    args = ap.parse_args()
    gates = ["llf", "random", "first", "full"]
    betas = [0.1] if args.quick else [0.05, 0.1]
    seeds = [0] if args.quick else [0, 1, 2]
    for s in seeds:  # featurise (or read the feature cache) before timing anything
        _real_streams(merge(DEFAULT_CONFIG, {"data": {"name": "bbc-news"}, "seed": s}))
    with tempfile.TemporaryDirectory() as tmp:
        from budgetsft import comparator as comp
        from budgetsft.features.models import default_cache_dir

        real = default_cache_dir()
        for entry in real.iterdir():  # the warm feature, model and data caches, without the comparator's
            if entry.name != "comparator":
                os.symlink(entry, os.path.join(tmp, entry.name))
        os.environ["BUDGETSFT_CACHE"] = tmp
        comp._MEMO.clear()
        print("sweep without the comparator ...", file=sys.stderr, flush=True)
        t_none, _ = timed_sweep("none", gates, betas, seeds)
        print("sweep with the comparator ...", file=sys.stderr, flush=True)
        t_auto, rows = timed_sweep("auto", gates, betas, seeds)
    methods = sorted({r["comparator"] for r in rows})
    n_cells = len(rows)
    print(f"## Comparator cost: bbc-news sweep, gates {','.join(gates)}, β {','.join(map(str, betas))}, "
          f"seeds {','.join(map(str, seeds))} ({n_cells} cells)\n")
    print("| comparator | wall s | ratio to none | methods reported |")
    print("|---|---:|---:|---|")
    print(f"| none | {t_none:.1f} | 1.00× | — |")
    print(f"| auto (default), cold cache | {t_auto:.1f} | {t_auto / t_none:.2f}× | {', '.join(methods)} |")
    if args.solvers:
        print("\n## One solve per method, seed 0's train stream\n")
        print("\n".join(solvers(["bbc-news", "sarcasm"])))


if __name__ == "__main__":
    main()
