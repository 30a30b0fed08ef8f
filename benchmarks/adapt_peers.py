"""What the peers' labels buy the LLM: LoRA (plain and distill) on the sets VW, river, modAL and scikit-activeml buy.

Usage::

    python benchmarks/adapt_peers.py                                  # bbc-news, β = 0.1, seeds 0,1,2
    python benchmarks/adapt_peers.py --seeds 0,1,2,3,4 --out runs/adapt-peers-bbc
    python benchmarks/adapt_peers.py --data sarcasm --max-examples 3000 --peers modal-pool
    python benchmarks/adapt_peers.py --peers skal-pal,skal-varunc --out runs/adapt-skal-bbc

One ``budgetsft adapt`` run (:func:`budgetsft.adapt.pipeline.run_adapt` at its defaults: LLF and random, the
audit share, head / plain / distill, the recommendation) with each peer's label set plugged in through
``run_adapt(selections=...)``, so every set gets the same models on the same split, LoRA initialisation and
example order, and each peer is compared with LLF recipe by recipe, paired by seed, with the report's intervals.

The peers and their label sets (``benchmarks/peers.py``'s functions on the same streams, which return the
indices of the rounds each bought; one BLAS thread while they choose):

* ``vw-cs_active``: Vowpal Wabbit ``--cs_active --max_labels B`` (the hard-cap variant);
* ``river-entropy``: ``river.active.EntropySampler`` around ``SoftmaxRegression``, its discount tuned on each
  seed to buy ≈ B (``peers.tune``); no hard cap;
* ``modal-pool``: modAL uncertainty sampling over the train split as a pool, exactly B;
* ``vw-active``: VW ``--active`` with its mellowness tuned on each seed to buy ≈ B; no hard cap;
* ``skal-pal``, ``skal-varunc``, ``skal-split``: scikit-activeml's stream strategies (probabilistic active
  learning, variable uncertainty, and variable uncertainty mixed with random queries), around the Parzen-window
  classifier of its stream tutorial, each budget manager built with β and held to B by the harness.

A peer that buys more than B keeps its first B labels in stream order, which is what a hard cap at B would have
let it buy (the run is the same up to the B-th query); one that buys fewer keeps what it bought (the ``labels``
column says so). The peers' sets are all gold labels: unlike LLF's, none is set aside as an audit label.

Prints the report's table and comparisons (``report.md`` of ``--out``) and a line per peer and seed with what it
bought.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import peers  # a sibling script: this folder is on sys.path
from threadpoolctl import threadpool_limits

PEERS = ["vw-cs_active", "river-entropy", "modal-pool"]
CHOICES = [*PEERS, "vw-active", *peers.SKAL]


def peer_selection(method: str, data: str, beta: float, max_examples: int | None, bought_log: list,
                   settings: dict):
    """``fn(streams, seed, budget) -> ids`` for ``run_adapt(selections=...)``: ``method``'s set on that seed.

    ``settings`` holds each seed's :class:`peers.Setting`, loaded once for every peer.
    """

    def fn(streams, seed: int, budget: int) -> list[str]:
        t0 = time.perf_counter()
        if seed not in settings:
            settings[seed] = peers.load_setting(data, seed, max_examples=max_examples)
        st = settings[seed]
        if [r.id for r in st.train] != [r.id for r in streams.train]:
            raise SystemExit(f"{method}: peers.py's train stream of seed {seed} is not adapt's")
        if st.budget(beta) != budget:
            raise SystemExit(f"{method}: budget {st.budget(beta)} against adapt's {budget}")
        knob = None
        with threadpool_limits(limits=1, user_api="blas"):
            if method in peers.TUNED:
                knob, _ = peers.tune_knob(st, method, budget)
            res = peers.cell(st, method, beta, {(method, beta): knob})
        bought = sorted(res["bought"])
        kept = bought[:budget]
        bought_log.append({"peer": method, "seed": seed, "bought": len(bought), "kept": len(kept), "budget": budget,
                           "knob": knob, "seconds": round(time.perf_counter() - t0, 1)})
        print(f"  {method} seed {seed}: bought {len(bought)}, kept {len(kept)} (B = {budget})"
              + (f", knob {knob:.4g}" if knob is not None else "") + f" [{time.perf_counter() - t0:.0f} s]",
              file=sys.stderr, flush=True)
        return [st.train[i].id for i in kept]

    return fn


def main(argv: list[str] | None = None) -> dict:
    from budgetsft.adapt.pipeline import run_adapt

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="bbc-news")
    ap.add_argument("--beta", type=float, default=0.1)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--peers", default=",".join(PEERS), help=f"comma-separated, from {', '.join(CHOICES)}")
    ap.add_argument("--max-examples", type=int, default=None)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: adapt's choice)")
    ap.add_argument("--out", default="runs/adapt-peers")
    args = ap.parse_args(argv)
    names = [p for p in args.peers.split(",") if p]
    bad = [p for p in names if p not in CHOICES]
    if bad:
        ap.error(f"unknown peer {bad[0]!r}; valid: {', '.join(CHOICES)}")
    seeds = [int(s) for s in args.seeds.split(",")]
    log: list[dict] = []
    settings: dict = {}  # each seed's streams as peers.py reads them, shared by the peers
    t0 = time.perf_counter()
    report = run_adapt(args.data, args.out, baselines=("random",), include_all=False, seeds=seeds, beta=args.beta,
                       max_examples=args.max_examples, threads=args.threads,
                       selections={p: peer_selection(p, args.data, args.beta, args.max_examples, log, settings)
                                   for p in names})
    wall = time.perf_counter() - t0
    out = Path(args.out)
    (out / "peers.json").write_text(json.dumps(log, indent=1) + "\n")
    print(f"# LoRA on the peers' labels: {args.data}, β = {args.beta}, seeds {seeds} ({wall / 60:.1f} min)\n")
    print("| peer | seed | bought | kept (B) | knob |\n|---|---:|---:|---:|---:|")
    for row in log:
        knob = f"{row['knob']:.4g}" if row["knob"] is not None else ""
        print(f"| {row['peer']} | {row['seed']} | {row['bought']} | {row['kept']} ({row['budget']}) | {knob} |")
    print()
    print((out / "report.md").read_text())
    return report


if __name__ == "__main__":
    main()
