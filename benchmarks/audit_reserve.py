"""What setting the audit's draws aside costs the head: LLF's own labels at ``adapt``'s audit share.

Usage::

    python benchmarks/audit_reserve.py                        # bbc-news, seeds 0-4, about 4 minutes
    python benchmarks/audit_reserve.py --data sarcasm --max-examples 3000

For each seed, the labels ``budgetsft adapt`` buys with the llf gate at β = 0.1 and ``--audit 0.1``
(:func:`budgetsft.adapt.pipeline.select_labels`, stream mode) are refit into the head on the gate's own labels
alone (the audit draws held out, as ``adapt`` does) and on all of them, and scored on the test split
(``budgetsft.refit.refit_accuracy``). Three gates: the default (the dual price, which sets the audit's expected
draws aside through ``LLFGate.reserve``), the same gate with ``reserve`` switched off (the dual price before it
was the default), and the power schedule (``schedule="power"``, which ignores the reserve).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from threadpoolctl import threadpool_limits

from budgetsft.adapt.pipeline import select_labels
from budgetsft.gates import LLFGate
from budgetsft.realdata import load_streams
from budgetsft.refit import refit_accuracy


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="bbc-news")
    ap.add_argument("--max-examples", type=int, default=None)
    ap.add_argument("--seeds", default="0,1,2,3,4")
    ap.add_argument("--beta", type=float, default=0.1)
    ap.add_argument("--audit", type=float, default=0.1)
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    start = time.perf_counter()
    rows = {}
    keep = LLFGate.reserve
    for variant in ("dual (default)", "dual, no reserve", "power"):
        LLFGate.reserve = (lambda self, rate: None) if variant == "dual, no reserve" else keep
        schedule = "power" if variant == "power" else "auto"
        own, both, n_audit = [], [], []
        with threadpool_limits(limits=1, user_api="blas"):
            for seed in seeds:
                st = load_streams(args.data, "auto", seed=seed, max_examples=args.max_examples, progress=False)
                got = select_labels(st, "llf", args.beta, seed=seed, baselines=(), all_head=False, audit=args.audit,
                                    schedule=schedule)["llf"]
                bought, drawn = set(got["ids"]), set(got["audit_ids"])
                own.append(refit_accuracy([r for r in st.train if r.id in bought - drawn], st.test, seed=seed))
                both.append(refit_accuracy([r for r in st.train if r.id in bought], st.test, seed=seed))
                n_audit.append(len(drawn))
        rows[variant] = (own, both, n_audit)
    LLFGate.reserve = keep
    print(f"{args.data}, β = {args.beta}, audit {args.audit}, seeds {seeds}: head refit accuracy on the test split\n")
    print("| gate | audit draws per seed | gate's own labels: per seed | mean | with the audit draws: mean |")
    print("|---|---|---|---:|---:|")
    for variant, (own, both, n_audit) in rows.items():
        print(f"| {variant} | {', '.join(map(str, n_audit))} | {', '.join(f'{a:.4f}' for a in own)} "
              f"| {np.mean(own):.4f} | {np.mean(both):.4f} |")
    print(f"\n({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
