"""What each selection buys the head adapt refits, against random, paired by seed: a minute-long screen.

Run:  .venv/bin/python benchmarks/selection_screen.py [--data sarcasm] [--max-examples 3000]
      [--seeds 0,1,2,3,4] [--beta 0.1] [--rows llf,llf+audit,llf+audit/all,llf:sketch,random,first]

Every row plays ``budgetsft run``'s game on one seed's train stream of adapt's split (block features unless
``--features`` says otherwise, the default learner unless the row names one) and refits the head on the labels
it bought (``budgetsft.refit``, as adapt's ``<selection>/head``); the table gives its accuracy on the seed's
test split, and the paired difference against ``random`` with adapt's seed-level t interval; a second table, how
lopsided each head is (the share of the test items given the label it predicts most, beside that label's share of
the labels it was fit on). No LLM is
trained: a LoRA run of the same sets takes half an hour (``budgetsft adapt``), this takes about a minute, so it
screens selection rules before they are worth one. Rows:

* ``llf``: the default gate with no audit share;
* ``llf+audit``: with adapt's audit share (``AUDIT_SHARE``, 0.1): the head on the gate's labels less the audit
  ones, what adapt's ``llf/*`` models train on;
* ``llf+audit/all``: the same game, the head on every label it bought, audit ones included;
* ``llf:<learner>``: the default gate over another learner (``sketch``, ``ridge``, ``arow``, ``ogd``);
* ``llf+random=<ε>``: the default gate with a share ε of its budget drawn uniformly at random (adapt's audit
  draw, ε in [0, 1)), the head on every label it bought: a mix of LLF and random;
* ``llf+density``: the default gate with each round's latency weighted by how typical its item is of the train
  pool (information density, Settles & Craven 2008; :func:`density_weights`), no audit share: LLF's sarcasm picks
  are a little less typical than random's, and this is the standard remedy (tried, not kept: RESULTS.md);
* any other gate name (``random``, ``first``, ``margin``, ``bbq``, ``cgz``): that gate, no audit share.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import sys
import time
from collections.abc import Iterator

import numpy as np

DEFAULT_ROWS = "llf,llf+audit,llf+audit/all,llf:sketch,llf:ridge,llf:arow,llf:ogd,first,random"


#: Neighbours the density of an item is the mean cosine similarity to (Settles & Craven's information density
#: averages over the whole pool; the nearest few keep a tight cluster from being swamped by the rest).
DENSITY_NEIGHBOURS = 20


def _item_vector(features: np.ndarray) -> np.ndarray:
    """One unit vector per item: the mean of its candidates' feature rows."""
    v = np.asarray(features, dtype=np.float64).mean(axis=0)
    return v / max(float(np.linalg.norm(v)), 1e-12)


def _densities(pool: np.ndarray, items: np.ndarray, k: int) -> np.ndarray:
    """Mean cosine similarity of each item to its k most similar pool items, itself (or an exact duplicate: a
    similarity of 1 within 1e-9) left out."""
    sims = items @ pool.T
    sims = np.where(sims >= 1.0 - 1e-9, -np.inf, sims)
    top = np.sort(sims, axis=1)[:, -k:]
    return np.where(np.isfinite(top), top, 0.0).mean(axis=1)


def density_weights(pool: np.ndarray, items: np.ndarray, k: int = DENSITY_NEIGHBOURS,
                    reference: np.ndarray | None = None) -> np.ndarray:
    """How typical each of ``items`` (rows, unit vectors) is of ``pool`` (rows, unit vectors), in (0, 1].

    An item's density is :func:`_densities`; its weight is that density's rank among the pool items' own
    densities (``reference``, sorted; computed when not given), (rank + 1) / (n + 1): the most typical item
    weighs about 1, the least about 1/n.
    """
    ref = np.sort(_densities(pool, pool, k)) if reference is None else reference
    return (np.searchsorted(ref, _densities(pool, items, k), side="right") + 1) / (len(ref) + 1)


@contextlib.contextmanager
def density_latency(streams) -> Iterator[None]:
    """While open, every LLF gate reads each round's latency ℓ weighted by the item's density weight w
    (:func:`density_weights` against the seed's train pool): ℓ·w when ℓ > 0 (an atypical uncertain item counts
    less), ℓ/w otherwise (an atypical certain one stays further below)."""
    from budgetsft.gates.llf import LLFGate

    pool = np.stack([_item_vector(r.features) for r in streams.train])
    reference = np.sort(_densities(pool, pool, DENSITY_NEIGHBOURS))
    ask = LLFGate.ask

    def weighted(self, info, budget):
        w = float(density_weights(pool, _item_vector(info.features)[None, :], reference=reference)[0])
        lat = float(info.latency)
        lat = lat * w if lat > 0 else lat / w
        return ask(self, dataclasses.replace(info, latency=lat), budget)

    LLFGate.ask = weighted
    try:
        yield
    finally:
        LLFGate.ask = ask


def bought(streams, row: str, beta: float, seed: int) -> list[str]:
    """Ids of the train rounds that ``row``'s head is refit on, at this seed (adapt's ``select_labels``)."""
    from budgetsft.adapt.pipeline import AUDIT_SHARE, select_labels

    gate, _, learner = row.partition(":")
    name = "llf" if gate.startswith("llf") else gate
    share = AUDIT_SHARE if gate.startswith("llf+audit") else 0.0
    if gate.startswith("llf+random="):  # a share of the budget bought uniformly at random, every label refit
        share = float(gate.split("=", 1)[1])
    with density_latency(streams) if gate == "llf+density" else contextlib.nullcontext():
        chosen = select_labels(streams, name, beta, seed=seed, learner={"name": learner} if learner else None,
                               baselines=(), all_head=False, audit=share)[name]
    if gate == "llf+audit":  # adapt holds the audit labels out of every model's training
        held = set(chosen["audit_ids"])
        return [i for i in chosen["ids"] if i not in held]
    return chosen["ids"]


def main(argv: list[str] | None = None) -> dict[str, list[float]]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="sarcasm")
    ap.add_argument("--max-examples", type=int, default=3000, help="0: the whole set")
    ap.add_argument("--seeds", default="0,1,2,3,4")
    ap.add_argument("--beta", type=float, default=0.1)
    ap.add_argument("--rows", default=DEFAULT_ROWS)
    ap.add_argument("--features", default="block", help="the gate's features, as adapt's --features")
    args = ap.parse_args(argv)
    rows = [r for r in args.rows.split(",") if r]
    if "random" not in rows:
        rows.append("random")
    seeds = [int(s) for s in args.seeds.split(",")]

    from threadpoolctl import threadpool_limits

    from budgetsft.adapt.pipeline import RECIPE, _feature_options
    from budgetsft.adapt.stats import t_half_width
    from budgetsft.realdata import load_streams
    from budgetsft.refit import refit

    # adapt's featuriser options for causal and grad features (its model, LoRA layers and prompt): the features,
    # and the cache, adapt's gate reads
    options = _feature_options(args.features, "smollm2-135m-instruct", lora_layers=RECIPE["lora_layers"],
                               lora_r=RECIPE["lora_r"], lora_alpha=RECIPE["lora_alpha"],
                               max_prompt_tokens=RECIPE["max_prompt_tokens"])
    acc: dict[str, list[float]] = {r: [] for r in rows}
    n_labels: dict[str, list[int]] = {r: [] for r in rows}
    # the label the head predicts most on the test split: its share of the predictions, and of the bought labels
    skew: dict[str, list[tuple[float, float]]] = {r: [] for r in rows}
    t0 = time.perf_counter()
    with threadpool_limits(limits=1, user_api="blas"):  # the same numbers on a busy machine
        for seed in seeds:
            streams = load_streams(args.data, args.features, seed=seed, max_examples=args.max_examples or None,
                                   feature_options=options)
            by_id = {r.id: r for r in streams.train}
            for row in rows:
                ids = bought(streams, row, args.beta, seed)
                head = refit([by_id[i] for i in ids], seed=seed)
                acc[row].append(head.accuracy(streams.test))
                n_labels[row].append(len(ids))
                pred = np.array([head.predict(r) for r in streams.test])
                top = int(np.bincount(pred).argmax())
                skew[row].append((float(np.mean(pred == top)), float(np.mean([by_id[i].gold == top for i in ids]))))
            print(f"seed {seed}: " + ", ".join(f"{r} {acc[r][-1]:.4f}" for r in rows), file=sys.stderr)
    print(f"# {args.data}{f' ({args.max_examples} examples)' if args.max_examples else ''}, β = {args.beta}, "
          f"seeds {','.join(map(str, seeds))}: the refit head's test accuracy ({time.perf_counter() - t0:.0f} s)\n")
    print("| selection | labels | accuracy per seed | mean | − random | 95 % CI |\n|---|---:|---|---:|---:|---|")
    base = np.array(acc["random"])
    for row in rows:
        a = np.array(acc[row])
        d = a - base
        half = t_half_width(d)
        lo, hi = min(n_labels[row]), max(n_labels[row])
        labels = f"{lo}" if lo == hi else f"{lo}–{hi}"
        ci = "" if row == "random" else f"[{(d.mean() - half) * 100:+.2f}, {(d.mean() + half) * 100:+.2f}]"
        diff = "" if row == "random" else f"{d.mean() * 100:+.2f}"
        print(f"| {row} | {labels} | {', '.join(f'{x:.4f}' for x in a)} | {a.mean():.4f} | {diff} | {ci} |")
    print("\n(− random and its interval in points: the paired per-seed differences, adapt's seed-level t interval.)")
    print("\nThe label each head predicts most on the test split, per seed: its share of the head's predictions "
          "(its share of the labels the head was fit on)\n")
    print("| selection | " + " | ".join(f"seed {s}" for s in seeds) + " |\n|---|" + "---:|" * len(seeds))
    for row in rows:
        print(f"| {row} | " + " | ".join(f"{p:.2f} ({b:.2f})" for p, b in skew[row]) + " |")
    return acc


if __name__ == "__main__":
    main()
