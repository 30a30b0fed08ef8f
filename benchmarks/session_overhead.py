"""What the label ledger costs: the same game played plainly and as a session, side by side.

A session commits each bought label (fsync'd SQLite, WAL) before learning
from it and checkpoints the game every ``--checkpoint-every`` rounds. This
prints rounds per second both ways and their ratio, per setting, in one run
(the machine is shared: read the ratio, not the absolute numbers).

    python benchmarks/session_overhead.py [--quick]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from budgetsft.experiment import run
from budgetsft.sessions.oracles import DatasetOracle
from budgetsft.sessions.session import Session


def _setting(d: int, rounds: int, beta: float, window: int) -> dict:
    gate = {"name": "llf", "beta": beta, **({"window": window} if window > 1 else {})}
    return {"env": {"name": "synthetic", "d": d, "K": 5, "rounds": rounds}, "gate": gate, "seed": 0,
            "regret_lp": False, "test_rounds": 0}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller settings (seconds)")
    ap.add_argument("--checkpoint-every", type=int, default=100)
    args = ap.parse_args(argv)
    rounds = 1000 if args.quick else 5000
    settings = [(20, 0.1, 1), (20, 0.1, 50), (384, 0.1, 1)]
    print(f"session vs plain run: synthetic K=5, T={rounds}, LLF, dataset oracle, "
          f"checkpoint every {args.checkpoint_every} rounds")
    print(f"{'d':>5} {'window':>6} {'labels':>6}  {'run r/s':>9}  {'session r/s':>11}  {'ratio':>6}  same records")
    with tempfile.TemporaryDirectory() as tmp:
        for i, (d, beta, window) in enumerate(settings):
            cfg = _setting(d, rounds, beta, window)
            t0 = time.perf_counter()
            ref = run(cfg)
            t_run = time.perf_counter() - t0
            t0 = time.perf_counter()
            sess = Session.create(Path(tmp) / f"s{i}.db", cfg, checkpoint_every=args.checkpoint_every)
            sess.play(DatasetOracle())
            t_sess = time.perf_counter() - t0
            same = sess.records() == ref.records
            sess.close()
            print(f"{d:>5} {window:>6} {ref.summary['labels_bought']:>6}  {rounds / t_run:>9.0f}  "
                  f"{rounds / t_sess:>11.0f}  {t_sess / t_run:>5.2f}x  {'yes' if same else 'NO'}")


if __name__ == "__main__":
    main()
