"""`budgetsft select` on a large unlabelled pool: wall time and peak RSS of featurising and of two selects.

Run::

    python benchmarks/select_scale.py                          # n = 100,000: about 8 minutes on 2 cores
    python benchmarks/select_scale.py --n 10000 30000 100000   # how it scales (about 12 minutes)

What it measures. For each n, a synthetic unlabelled JSONL pool (``pool.jsonl``:
n short texts, one fixed list of 5 candidates, no answers) is written to a
fresh folder with a fresh feature cache, then three commands run, each in its
own child process:

1. ``budgetsft featurize --data pool.jsonl --features block``: the all-MiniLM
   embedding of every text, cold, into the disk cache;
2. ``budgetsft select --data pool.jsonl --session s.db --features block
   --batch 100 --budget 1000``: creates the pool session (features read from
   the cache) and picks the first batch of 100;
3. ``budgetsft select --session s.db --batch 100``: the second call on the same
   session (a new process: the features are read from the cache again), 100
   more picks, conditioned on the 100 still pending.

Block features of this pool have d = 5 × 385 = 1,925 columns per candidate,
so expanded in float64 they take n × 5 × 1,925 × 8 bytes (7.7 GB at n =
100k); the selection must stay within 8 GiB of RSS. ``peak RSS`` is the
child's ``ru_maxrss`` (``os.wait4``), the whole process: Python, torch and the
model included (torch is imported to featurise, and ``select`` loads the model
too when the cache misses). Each child runs on one thread by default
(``--threads``; ``OMP_NUM_THREADS``, which torch follows, and the BLAS
variables): on a busy 2-core machine two torch threads embedded 110 texts/s
against 246 on one. The machine may be shared: read the wall times as upper
bounds. Progress goes to stderr; the table to stdout. Exits with status 1 when
a select passes the RSS limit.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

LABELS = ["business", "sport", "science", "politics", "culture"]
WORDS = {
    "business": ["market", "shares", "profit", "bank", "bond", "merger", "inflation", "startup"],
    "sport": ["goal", "striker", "league", "coach", "season", "match", "referee", "transfer"],
    "science": ["gene", "telescope", "protein", "quantum", "cell", "fossil", "vaccine", "laser"],
    "politics": ["vote", "minister", "parliament", "campaign", "treaty", "senate", "policy", "mayor"],
    "culture": ["album", "novel", "museum", "festival", "film", "gallery", "opera", "poet"],
}
LIMIT = 8 * 2**30  # the bound on a select's peak RSS


def write_pool(path: Path, n: int, seed: int = 0) -> None:
    """n unlabelled lines, all with the same 5 candidates, each a short synthetic text (all distinct)."""
    rng = np.random.default_rng(seed)
    topics = rng.integers(len(LABELS), size=n)
    other = rng.integers(len(LABELS), size=n)
    picks = rng.integers(8, size=(n, 3))
    with path.open("w") as fh:
        for i in range(n):
            a, b = WORDS[LABELS[topics[i]]], WORDS[LABELS[other[i]]]
            text = f"Report {i}: the {a[picks[i, 0]]} and the {a[picks[i, 1]]}, with news of the {b[picks[i, 2]]}."
            fh.write(json.dumps({"id": f"item{i}", "prompt": text, "candidates": LABELS}) + "\n")


def run_child(cmd: list[str], env: dict, log: Path) -> tuple[float, int, int]:
    """Run ``cmd``; its wall seconds, peak RSS in bytes (its own ru_maxrss) and exit status."""
    t0 = time.perf_counter()
    with log.open("w") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    rss = usage.ru_maxrss if sys.platform == "darwin" else usage.ru_maxrss * 1024  # Linux: KiB
    return wall, rss, proc.returncode


def _lines(path: Path) -> int:
    return sum(1 for _ in path.open()) if path.exists() else 0


def measure(n: int, root: Path, batch: int, budget: int, threads: int) -> dict:
    folder = root / f"n{n}"
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    pool = folder / "pool.jsonl"
    write_pool(pool, n)
    env = dict(os.environ, BUDGETSFT_CACHE=str(folder / "cache"))
    if threads > 0:
        env.update({k: str(threads) for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")})
    cli = [sys.executable, "-m", "budgetsft"]
    steps = {
        "featurize": [*cli, "featurize", "--data", str(pool), "--features", "block", "--device", "cpu"],
        "select1": [*cli, "select", "--data", str(pool), "--session", str(folder / "s.db"), "--features", "block",
                    "--batch", str(batch), "--budget", str(budget), "--out", str(folder / "picks1.jsonl")],
        "select2": [*cli, "select", "--session", str(folder / "s.db"), "--batch", str(batch),
                    "--out", str(folder / "picks2.jsonl")],
    }
    row: dict = {"n": n}
    for name, cmd in steps.items():
        print(f"n = {n:,}: {name} ...", file=sys.stderr, flush=True)
        wall, rss, rc = run_child(cmd, env, folder / f"{name}.log")
        if rc != 0:
            raise SystemExit(f"{name} at n = {n} failed (exit {rc}); see {folder / (name + '.log')}:\n"
                             + (folder / f"{name}.log").read_text()[-3000:])
        row[name] = {"wall_s": wall, "peak_rss": rss}
        print(f"  {wall:.1f} s, peak RSS {rss / 2**30:.2f} GiB", file=sys.stderr, flush=True)
    row["picks"] = [_lines(folder / "picks1.jsonl"), _lines(folder / "picks2.jsonl")]
    row["cache_bytes"] = sum(p.stat().st_size for p in (folder / "cache").rglob("*") if p.is_file())
    return row


def gib(x: float) -> str:
    return f"{x / 2**30:.2f}"


def table(rows: list[dict]) -> str:
    lines = ["| items | featurise (s) | featurise peak RSS (GiB) | feature cache (MB) | select 1 (s) "
             "| select 1 peak RSS (GiB) | select 2 (s) | select 2 peak RSS (GiB) | picks | expanded float64 (GiB) |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        f, s1, s2 = r["featurize"], r["select1"], r["select2"]
        expanded = r["n"] * len(LABELS) * len(LABELS) * 385 * 8
        lines.append(f"| {r['n']:,} | {f['wall_s']:.0f} | {gib(f['peak_rss'])} | {r['cache_bytes'] / 1e6:.0f} "
                     f"| {s1['wall_s']:.0f} | {gib(s1['peak_rss'])} | {s2['wall_s']:.0f} | {gib(s2['peak_rss'])} "
                     f"| {r['picks'][0]} + {r['picks'][1]} | {gib(expanded)} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, nargs="+", default=[100_000], help="pool sizes (default: 100000)")
    p.add_argument("--batch", type=int, default=100, help="picks per select call")
    p.add_argument("--budget", type=int, default=1000, help="the session's budget, in labels")
    p.add_argument("--threads", type=int, default=1, help="BLAS/OpenMP/torch threads of each child (0: leave the "
                                                          "default)")
    p.add_argument("--workdir", type=Path, help="where the pools, caches and sessions go (default: a temporary "
                                                "folder, removed at the end)")
    args = p.parse_args(argv)
    root = args.workdir or Path(tempfile.mkdtemp(prefix="budgetsft-select-scale-"))
    threads = args.threads or os.environ.get("OMP_NUM_THREADS") or "default"
    rows = []
    try:
        for n in args.n:
            rows.append(measure(n, root, args.batch, args.budget, args.threads))
    finally:
        if args.workdir is None:
            shutil.rmtree(root, ignore_errors=True)
    print(f"# budgetsft select on a large pool (5 fixed candidates, block features d = {len(LABELS) * 385:,}, "
          f"batch {args.batch}, budget {args.budget}; {os.cpu_count()} CPUs, threads: {threads})\n")
    print(table(rows))
    worst = max(max(r["select1"]["peak_rss"], r["select2"]["peak_rss"]) for r in rows)
    print(f"\nlargest select peak RSS: {gib(worst)} GiB ({'within' if worst <= LIMIT else 'OVER'} the 8 GiB limit)")
    if worst > LIMIT:
        sys.exit(1)


if __name__ == "__main__":
    main()
