"""Wall time of one sweep: the local serial backend against Ray on this machine.

Run::

    python benchmarks/sweep_scaling.py            # 28 cells of T = 3000, a minute or two
    python benchmarks/sweep_scaling.py --quick    # smoke run, T = 500
    python benchmarks/sweep_scaling.py --num-cpus 4 --rounds 5000

What it measures (one process, side by side, because the machine is shared
and noisy: read the ratio, not the absolute numbers):

1. wall time of :func:`budgetsft.experiment.sweep` (serial, in this process)
   and of :func:`budgetsft.ray_backend.sweep_ray` (one Ray task per cell) on
   the same synthetic sweep: gates llf, random, first, full × β 0.05, 0.1 ×
   seeds 0..3 (full once per seed), d = 20, T = 3000;
2. Ray's time twice: including ``ray.init`` / ``ray.shutdown`` of an embedded
   instance (what one CLI call pays) and on an already started instance;
3. the speed-up serial / Ray, and the sum of the cells' own play times
   ("seconds") under each backend, which shows contention between the workers;
4. that every summary is identical under both backends except "seconds".

The ideal speed-up is the number of CPUs Ray gets; on a 2-core machine shared
with other jobs expect well below 2.
"""

from __future__ import annotations

import argparse
import math
import os
import time

from budgetsft.experiment import sweep

GATES = ["llf", "random", "first", "full"]
BETAS = [0.05, 0.1]
SEEDS = [0, 1, 2, 3]


def _same(a: dict, b: dict) -> bool:
    ka = {k: v for k, v in a.items() if k != "seconds"}
    kb = {k: v for k, v in b.items() if k != "seconds"}
    return ka.keys() == kb.keys() and all(
        (isinstance(v, float) and math.isnan(v) and math.isnan(kb[k])) or v == kb[k]
        for k, v in ka.items()
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3000)
    p.add_argument("--num-cpus", type=int, default=os.cpu_count() or 1)
    p.add_argument("--quick", action="store_true", help="T = 500 (smoke run)")
    args = p.parse_args()
    rounds = 500 if args.quick else args.rounds
    base = {"env": {"rounds": rounds}, "test_rounds": 500}

    import ray

    from budgetsft.ray_backend import sweep_ray

    n_cells = sum(len(SEEDS) * (1 if g == "full" else len(BETAS)) for g in GATES)
    print(f"sweep: gates {','.join(GATES)} x beta {BETAS} x seeds {SEEDS} "
          f"({n_cells} cells), d = 20, K = 5, T = {rounds}; ray {ray.__version__}, "
          f"{args.num_cpus} CPUs for Ray, machine has {os.cpu_count()}")

    t0 = time.perf_counter()
    local = sweep(base, GATES, BETAS, SEEDS)
    t_local = time.perf_counter() - t0

    t0 = time.perf_counter()
    cold = sweep_ray(base, GATES, BETAS, SEEDS, num_cpus=args.num_cpus)  # starts and stops Ray
    t_cold = time.perf_counter() - t0

    ray.init(address="local", num_cpus=args.num_cpus, include_dashboard=False,
             logging_level="WARNING")
    try:
        sweep_ray(base, ["first"], [0.1], SEEDS[: args.num_cpus])  # start the worker processes
        t0 = time.perf_counter()
        warm = sweep_ray(base, GATES, BETAS, SEEDS)
        t_warm = time.perf_counter() - t0
    finally:
        ray.shutdown()

    rows = [
        ("local (serial)", t_local, local),
        ("ray, with init/shutdown", t_cold, cold),
        ("ray, started instance", t_warm, warm),
    ]
    print()
    print(f"{'backend':<26}{'wall s':>9}{'speed-up':>10}{'sum of cell s':>15}{'identical':>11}")
    for name, t, res in rows:
        cell_s = sum(r["seconds"] for r in res)
        same = len(res) == len(local) and all(_same(a, b) for a, b in zip(local, res, strict=True))
        print(f"{name:<26}{t:>9.2f}{t_local / t:>9.2f}x{cell_s:>15.2f}{str(same):>11}")
    ok = all(_same(a, b) for _, _, res in rows for a, b in zip(local, res, strict=True))
    print()
    verdict = 'PASS' if ok else 'FAIL'
    print(f"results identical to the local backend (all keys but 'seconds'): {verdict}")


if __name__ == "__main__":
    main()
