"""Delayed feedback: what playing on with K labels pending costs, against waiting for every label.

A stream session whose people answer later (``--oracle web`` or ``file``) keeps playing while up to
``max_pending`` = K labels are awaited (:class:`budgetsft.game.Game`). This benchmark plays the one game
loop with a simulated annotator who answers each query ``delay`` rounds after it was asked (the gold,
so the numbers are comparable with the simulation), for K = 0 (wait for every label: the records of
`run`), 1, 3, 10, 30 and unlimited, and prints the online mistakes (and pseudo-regret on the synthetic
stream), the held-out accuracy of the head refit on the bought labels, and how many times the stream had
to stop and wait for people (each stop is a person-sized pause: the stream cannot go on until somebody
answers).

    python benchmarks/delayed_feedback.py                       # synthetic + bbc-news, delay 20, 3 seeds
    python benchmarks/delayed_feedback.py --delays 5,20,100 --seeds 0,1,2,3,4

The default K of sessions (`DEFAULT_MAX_PENDING` in budgetsft.sessions.session) is chosen from this table.
"""

from __future__ import annotations

import argparse
import math
import sys

import numpy as np
from threadpoolctl import threadpool_limits

from budgetsft.config import DEFAULT_CONFIG, build, merge
from budgetsft.experiment import budget_for, stream_of
from budgetsft.game import Game
from budgetsft.refit import refit_accuracy


class DelayedGold:
    """Answers each query with the gold, ``delay`` rounds after it was asked; counts the waits."""

    def __init__(self, delay: int) -> None:
        self.delay = delay
        self.answered_up_to = 0  # a wait ends when people have answered everything asked before it

    def request(self, asked, audit=frozenset()) -> None:
        pass

    def arrival(self, rnd, info, now: int):
        late = now - info.t >= self.delay or info.t <= self.answered_up_to
        return (int(rnd.gold), None) if late else None


def play_delayed(cfg: dict, delay: int, K: int | None) -> dict:
    stream, test, _ = stream_of(cfg)
    rounds = list(stream)
    objs = build(cfg)
    budget = budget_for(cfg, rounds)
    labels = DelayedGold(delay)
    game = Game(objs["learner"], objs["gate"], budget, objs["follower"], horizon=len(rounds), labels=labels,
                max_pending=K)
    records, waits = [], 0
    with threadpool_limits(limits=1, user_api="blas"):
        while True:
            records.extend(game.rounds(rounds))
            if game.status == "finished":
                break
            waits += 1  # the stream stops; people answer what was asked; then it goes on
            labels.answered_up_to = game.position
    records.sort(key=lambda r: r.round)
    bought = [r for r, rec in zip(rounds, records, strict=True) if rec.queried]
    return {
        "mistakes": sum(r.mistake for r in records),
        "pseudo_regret": (math.fsum(r.regret for r in records if r.regret == r.regret)
                          if any(r.regret == r.regret for r in records) else math.nan),  # real data: unknown
        "labels": len(bought),
        "refit": refit_accuracy(bought, test, seed=int(cfg.get("seed", 0))) if test else math.nan,
        "waits": waits,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--delays", default="20")
    ap.add_argument("--ks", default="0,1,3,10,30,inf")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--settings", default="synthetic,bbc-news")
    args = ap.parse_args(argv)
    delays = [int(x) for x in args.delays.split(",")]
    ks = [None if x == "inf" else int(x) for x in args.ks.split(",")]
    seeds = [int(x) for x in args.seeds.split(",")]
    settings = {
        "synthetic": {"env": {"name": "synthetic", "rounds": 5000}, "gate": {"name": "llf", "beta": 0.1},
                      "comparator": "none"},
        "bbc-news": {"data": {"name": "bbc-news"}, "gate": {"name": "llf", "beta": 0.1}, "comparator": "none"},
    }
    print("| setting | delay | K | waits for people | labels | online mistakes | pseudo-regret | refit accuracy |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name in args.settings.split(","):
        for delay in delays:
            for K in ks:
                rows = [play_delayed(merge(DEFAULT_CONFIG, {**settings[name], "seed": s}), delay, K) for s in seeds]

                def cell(key: str, fmt: str = ".1f", rows: list = rows) -> str:
                    vals = np.array([r[key] for r in rows], dtype=float)
                    if np.isnan(vals).all():
                        return "—"
                    return f"{vals.mean():{fmt}} ± {vals.std(ddof=1) if len(vals) > 1 else 0:{fmt}}"

                print(f"| {name} | {delay} | {'∞' if K is None else K} | {cell('waits')} | {cell('labels', '.0f')} "
                      f"| {cell('mistakes')} | {cell('pseudo_regret')} | {cell('refit', '.3f')} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
