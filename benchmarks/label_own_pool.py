"""Label your own pool: the whole loop on bbc-news stripped of its answers (the README's walk-through).

The train split of bbc-news (seed 0, 1,702 articles) is written as a JSONL pool with no ``answer``; a
script plays the annotator, reading the gold from the original data. Each batch is picked with
`budgetsft select` (the library call the CLI makes), answered, and imported, up to the budget. After each
batch it measures, on the labelled test split (425 articles), the head refit on the labels bought so far
(``budgetsft.refit``: the model handed back), beside random batches of the same size (uniform picks of the
pool, several seeds), and the audit-share estimate (leave-one-out on the uniformly drawn audit items,
Wilson 95 % interval) beside the true test accuracy.

    python benchmarks/label_own_pool.py                     # batches of 20 up to 170 labels (about 3 min)
    python benchmarks/label_own_pool.py --budget 100 --batch 20 --audit 0.2 --out benchmarks/figures
    python benchmarks/label_own_pool.py --adapt --audit 0.1   # then `adapt --labels` on the audited ledger

``--adapt`` then hands the LLM back as a user with this pool gets it: ``budgetsft adapt --data POOL --labels
LEDGER`` (the library call, defaults) trains, on the audited session's gate labels, the head over the session's
features, LoRA (``labels/plain``) and LoRA on the head's labels for the rest of the pool (``labels/distill``),
scores each on the session's audit labels (held out of every model: the only accuracy a pool with no test split
has) and recommends one; this script scores every model (``budgetsft.adapt.load_adapted``) on the labelled test
split, beside its audit estimate.

Prints a table per batch and writes ``label_own_pool.png`` (learning curves) and ``label_own_pool.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from budgetsft.base import Round
from budgetsft.data import load_dataset
from budgetsft.refit import refit
from budgetsft.sessions.oracles import import_answers
from budgetsft.sessions.pool import pool_config, pool_report, select_batch
from budgetsft.sessions.session import Session


def _strip(ds, folder: Path) -> tuple[Path, dict[str, int]]:
    pool = folder / "bbc-pool.jsonl"
    with pool.open("w") as fh:
        for ex in ds.train:
            fh.write(json.dumps({"id": ex.id, "prompt": ex.prompt, "candidates": list(ex.candidates)}) + "\n")
    return pool, {ex.id: int(ex.answer) for ex in ds.train}


def _accuracy(rounds: list[Round], test: list[Round], seed: int) -> float:
    return refit(rounds, seed=seed).accuracy(test) if rounds else float("nan")


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget", type=int, default=170)
    ap.add_argument("--batch", type=int, default=20)
    ap.add_argument("--audit", type=float, default=0.2, help="audit share of the audited session")
    ap.add_argument("--random-seeds", type=int, default=5)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/figures"))
    ap.add_argument("--adapt", action="store_true",
                    help="then adapt --labels on the audited ledger; score its models on the test split")
    ap.add_argument("--seeds", default="0", help="seeds of --adapt, comma-separated")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    ds = load_dataset("bbc-news", seed=0)
    folder = Path(tempfile.mkdtemp(prefix="bsft-pool-"))
    pool, gold = _strip(ds, folder)
    sessions = {
        "llf": Session.create(folder / "llf.db", pool_config({"data": str(pool),
                                                              "gate": {"name": "llf", "budget": args.budget}},
                                                             batch=args.batch)),
        f"llf+audit {args.audit:g}": Session.create(
            folder / "audit.db", pool_config({"data": str(pool), "gate": {"name": "llf", "budget": args.budget},
                                              "audit": args.audit}, batch=args.batch)),
    }
    # The test split, featurised as the pool (same featuriser and cache), labelled: the truth to compare with.
    from budgetsft.realdata import load_streams

    streams = load_streams("bbc-news", seed=0, progress=False)
    test = streams.test
    rng = np.random.default_rng(0)
    orders = [rng.permutation(len(streams.train)) for _ in range(args.random_seeds)]
    rows, trips = [], 0
    sizes = list(range(args.batch, args.budget + 1, args.batch))
    if sizes[-1] != args.budget:
        sizes.append(args.budget)
    for size in sizes:
        trips += 1
        row: dict = {"labels": size}
        for name, sess in sessions.items():
            sel = select_batch(sess, size - len(sess.ledger.answers()))
            answers = folder / f"answers-{name.split()[0]}-{size}.jsonl"
            answers.write_text("".join(json.dumps({"query_id": p.query_id, "label": gold[p.id],
                                                   "annotator": "script"}) + "\n" for p in sel.picks))
            import_answers(sess.ledger, answers)
            pool_rounds = sess.stream()
            bought = [Round(pool_rounds[a.round - 1].features, int(a.label)) for a in sess.ledger.answers()]
            row[name] = _accuracy(bought, test, 0)
            if "audit" in name:
                rep = pool_report(sess)
                audit = rep.get("audit", {})
                row["audit_estimate"] = audit.get("accuracy")
                row["audit_ci95"] = audit.get("ci95")
                row["audit_n"] = audit.get("n", 0)
        rand = [_accuracy([streams.train[i] for i in order[:size]], test, 0) for order in orders]
        row["random"] = float(np.mean(rand))
        row["random_sd"] = float(np.std(rand, ddof=1)) if len(rand) > 1 else 0.0
        rows.append(row)
        ci = row.get("audit_ci95") or [float("nan")] * 2
        est = row.get("audit_estimate")
        print(f"{size:4d} labels  llf {row['llf']:.3f}  llf+audit {row[list(sessions)[1]]:.3f} "
              f"(audit estimate {'—' if est is None else f'{est:.3f}'} [{ci[0]:.3f}, {ci[1]:.3f}], "
              f"n={row.get('audit_n', 0)})  random {row['random']:.3f} ± {row['random_sd']:.3f}", flush=True)
    report = {"budget": args.budget, "batch": args.batch, "audit": args.audit, "pool": len(gold),
              "random_seeds": args.random_seeds,
              "test": len(test), "trips": trips, "rows": rows, "seconds": time.perf_counter() - t0,
              "spent": {k: s.ledger.spent() for k, s in sessions.items()}}
    for sess in sessions.values():
        sess.close()
    if args.adapt:
        report["adapt"] = _adapt(pool, folder / "audit.db", ds.test, [int(x) for x in args.seeds.split(",")],
                                 folder / "adapt")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "label_own_pool.json").write_text(json.dumps(report, indent=1) + "\n")
    _plot(report, list(sessions), args.out / "label_own_pool.png")
    print(f"{trips} select → label → import trips for {args.budget} labels; {report['seconds']:.0f} s; "
          f"wrote {args.out}/label_own_pool.png, label_own_pool.json")
    return report


def _adapt(pool: Path, ledger: Path, test, seeds: list[int], out: Path) -> dict:
    """adapt --labels LEDGER on the pool (defaults); every model it trains, and the one it hands back, on the
    labelled test split, beside its audit estimate."""
    from budgetsft.adapt import load_adapted
    from budgetsft.adapt.pipeline import run_adapt

    t0 = time.perf_counter()
    rep = run_adapt(str(pool), out, labels_file=ledger, seeds=seeds, progress=False)
    rows = [{"id": ex.id, "prompt": ex.prompt, "candidates": list(ex.candidates)} for ex in test]
    gold = np.array([ex.answer for ex in test])
    methods = list(rep["methods"])
    result = {"labels": rep["methods"]["labels/plain"]["labels"][0], "recommended": rep["recommended"],
              "pseudo_labels": rep.get("distill", {}).get("pseudo_labels"), "per_seed": []}
    for i, seed in enumerate(seeds):
        per = {"seed": seed, "handed_back": rep["per_seed"][i].get("recommended") or rep["recommended"],
               "models": {}}
        for m in methods:
            acc = float(np.mean(load_adapted(out, method=m, seed=seed).predict(rows) == gold))
            audit = rep["audit"]["methods"][m]["per_seed"][i] if rep["audit"] else None
            per["models"][m] = {"test_accuracy": acc, "audit": audit}
            est = "no audit labels" if audit is None else (
                f"audit {audit['accuracy']:.3f} [{audit['ci95'][0]:.3f}, {audit['ci95'][1]:.3f}] "
                f"({audit['correct']}/{audit['n']}), gold NLL {audit['nll']:.3f}")
            mark = "  <- handed back" if m == rep["recommended"] else ""
            print(f"adapt --labels (seed {seed}) {m:15s} on {result['labels']} gate labels: test accuracy "
                  f"{acc:.3f} on {len(rows)} articles; {est}{mark}", flush=True)
        result["per_seed"].append(per)
    result["seconds"] = time.perf_counter() - t0
    print(f"adapt --labels: {result['seconds'] / 60:.1f} min, recommended {rep['recommended']} "
          f"({rep['recommendation'].get('validation') or rep['recommendation']['rule']})", flush=True)
    return result


def _plot(report: dict, names: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["rows"]
    x = [r["labels"] for r in rows]
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    rnd = np.array([r["random"] for r in rows])
    sd = np.array([r["random_sd"] for r in rows])
    ax.plot(x, rnd, "s--", color="0.45", label=f"random batches (mean ± sd of {report['random_seeds']} seeds)")
    ax.fill_between(x, rnd - sd, rnd + sd, color="0.8", alpha=0.6)
    for name, style in zip(names, ("o-", "^-"), strict=False):
        ax.plot(x, [r[name] for r in rows], style, label=f"{name}: true test accuracy")
    est = [(r["labels"], r["audit_estimate"], r["audit_ci95"]) for r in rows if r.get("audit_estimate") is not None]
    if est:
        ex = np.array([e[0] for e in est]) + 2
        ey = np.array([e[1] for e in est])
        # clipped at 0: the Wilson bound of an estimate of exactly 1 can round a hair below it
        lo = np.maximum(ey - np.array([e[2][0] for e in est]), 0.0)
        hi = np.maximum(np.array([e[2][1] for e in est]) - ey, 0.0)
        ax.errorbar(ex, ey, yerr=[lo, hi], fmt="D", color="tab:red", capsize=3,
                    label="audit estimate (leave-one-out, Wilson 95 %)")
    ax.set_xlabel("labels bought")
    ax.set_ylabel("accuracy of the refit head")
    ax.set_title(f"bbc-news pool without answers: select in batches of {report['batch']}, "
                 f"test split of {report['test']}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
