"""Label value of the sketched learner against the exact one (issue 11), on real streams at the defaults.

Usage::

    python benchmarks/sketch_value.py                     # bbc-news and sarcasm, 5 seeds (about 15 min)
    python benchmarks/sketch_value.py --quick             # bbc-news, 2 seeds
    python benchmarks/sketch_value.py --rank 32 --data bbc-news

Each cell is ``budgetsft.experiment.run`` with the user's defaults (LLF, β = 0.1, default features,
radius "auto") and one learner: ``logistic`` (exact, d × d covariance) or ``sketch`` (Frequent
Directions, rank m). The gates see each learner's own widths, so the bought sets differ; the columns
are what those labels bought: online mistakes, held-out accuracy of the learner and of the head refit
on exactly the bought labels, the overlap of the two learners' bought sets, and the game's wall time.
The target: the sketch's mistakes and refit accuracy within 3 % of the exact learner's. The comparator
is skipped (``comparator: none``): it does not depend on the learner.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from budgetsft.config import DEFAULT_CONFIG, merge
from budgetsft.experiment import _real_streams, run


def cells(name: str, seeds, rank: int, beta: float) -> dict:
    out: dict = {}
    for seed in seeds:
        base = merge(DEFAULT_CONFIG, {"data": {"name": name}, "seed": seed, "comparator": "none",
                                      "gate": {"name": "llf", "beta": beta}})
        streams = _real_streams(base)
        for label, learner in (("exact", {"name": "logistic"}), (f"sketch-{rank}", {"name": "sketch", "rank": rank})):
            print(f"{name} seed {seed}: {label} ...", file=sys.stderr, flush=True)
            res = run(merge(base, {"learner": learner}), stream=streams.train, test=streams.test)
            bought = {r.round for r in res.records if r.queried}
            out.setdefault(label, []).append({**res.summary, "bought": bought, "d": streams.train[0].features.shape[1]})
    return out


def table(name: str, res: dict, rank: int) -> list[str]:
    exact = res["exact"]
    lines = [f"### {name} (d = {exact[0]['d']}, T = {exact[0]['rounds']}, β = {exact[0]['beta']}, "
             f"{len(exact)} seeds)", "",
             "| learner | labels | online mistakes | test acc. | refit acc. | overlap with exact | game s |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for label, items in res.items():
        def ms(key, items=items):
            v = np.array([float(it[key]) for it in items])
            return v.mean(), (v.std(ddof=1) if len(v) > 1 else 0.0)
        overlap = np.mean([len(a["bought"] & b["bought"]) / max(len(b["bought"]), 1)
                           for a, b in zip(items, exact, strict=True)])
        m, s = ms("mistakes")
        ta, tas = ms("test_accuracy")
        ra, ras = ms("refit_accuracy")
        sec, _ = ms("seconds")
        lab, _ = ms("labels_bought")
        lines.append(f"| {label} | {lab:.0f} | {m:.1f} ± {s:.1f} | {ta:.4f} ± {tas:.4f} | {ra:.4f} ± {ras:.4f} | "
                     f"{overlap:.3f} | {sec:.1f} |")
    sk = res[f"sketch-{rank}"]
    rel_m = np.mean([s["mistakes"] for s in sk]) / np.mean([e["mistakes"] for e in exact])
    rel_r = np.mean([s["refit_accuracy"] for s in sk]) / np.mean([e["refit_accuracy"] for e in exact])
    ok = abs(rel_m - 1) <= 0.03 and abs(rel_r - 1) <= 0.03
    lines += ["", f"sketch / exact: mistakes {rel_m:.3f}×, refit accuracy {rel_r:.3f}× "
              f"(target within 3 %: {'met' if ok else '**missed**'})", ""]
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--data", default=None, help="one data set (default: bbc-news and sarcasm)")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--rank", type=int, default=64)
    ap.add_argument("--beta", type=float, default=0.1)
    args = ap.parse_args()
    names = [args.data] if args.data else (["bbc-news"] if args.quick else ["bbc-news", "sarcasm"])
    seeds = range(2 if args.quick else args.seeds)
    print(f"## Sketched learner (rank {args.rank}) against the exact one, LLF at the defaults\n")
    for name in names:
        print("\n".join(table(name, cells(name, seeds, args.rank, args.beta), args.rank)), flush=True)


if __name__ == "__main__":
    main()
