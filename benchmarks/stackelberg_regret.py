"""Full-feedback Stackelberg regret of a learner, one independent play per horizon T, up to T = 64,000.

Usage::

    python benchmarks/stackelberg_regret.py            # logistic, both streams, T = 1k ... 64k, 3 seeds (~minutes)
    python benchmarks/stackelberg_regret.py --quick    # seconds
    python benchmarks/stackelberg_regret.py --learners ridge,logistic,arow --streams synthetic

Streams (d = 20, K = 5, temperature 0.05): the SPEC §4 low-noise linear-softmax stream
(``synthetic``, ``configs/synthetic_low_noise.yaml``) and the adversarial one (``adversarial``: each
context is the one of 8 proposals on which the live learner is least certain). Every learner plays
with full feedback (β = 1) and its default parameters (default: ``logistic``, the default learner).

Stackelberg regret at horizon T: R_T = Σ_{t ≤ T} ℓ_t(θ_t) − min_{‖θ‖_∞ ≤ S} Σ_{t ≤ T} ℓ_t(θ), the
hinge loss of the committed policies minus that of the best fixed θ in hindsight over the same T
rounds (S = 10). For every T and seed the stream of horizon T is built afresh (the env with
``rounds=T, seed=seed``) and played from scratch by a fresh learner told that horizon; nothing is
read off a prefix of a longer run. A prefix of a long stream is not the stream of a shorter horizon:
the synthetic env draws its rounds in 1,024-round chunks whose sizes depend on T, the adversarial
env picks each context with the live learner, and the learner is told the horizon. With the same
seed, the streams of different T share θ* (the same problem instance at every horizon: common random
numbers for the slope); ``--fresh-draws`` seeds each (seed, T) separately instead.

The comparator is :func:`budgetsft.comparator.solve`. By default (``--comparator approx``) it is the
certified first-order bracket lower ≤ min Σ ℓ_t(θ) ≤ loss (seconds at 64k, where HiGHS takes minutes
per stream), so hinge − loss ≤ R_T ≤ hinge − lower. The table reports the conservative value, the
UPPER bound hinge − lower (regret against the lower bound of the comparator loss), and the width of
the bracket; ``--comparator exact`` (HiGHS) or ``auto`` give the exact LP instead (the bracket then
has width 0).

Reported per stream and learner: the mean over seeds of R_T at each T, the local log-log slope
log(R_{T'}/R_T)/log(T'/T) from each T to the next (log(R_{2T}/R_T)/log 2 for doublings), and the
least-squares slope over all T. Theory for a hinge-consistent second-order learner: Õ(√T), slope
0.5; target: every local slope ≤ 0.6 from T = 8,000 on.

The second part (skipped by ``--no-B``) is the budgeted study: the default LLF at a fixed T on the
synthetic stream, regret against B = βT split into queried and unqueried rounds (exact LP).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Sequence

import numpy as np
from threadpoolctl import threadpool_limits

from budgetsft.budget import Budget
from budgetsft.comparator import solve
from budgetsft.config import ENVS, LEARNERS
from budgetsft.experiment import Recorder
from budgetsft.game import play
from budgetsft.regret import comparator_loss, loglog_slope

LEARNER_NAMES = ("ridge", "logistic", "arow")  # the learners compared by --learners ridge,logistic,arow
DEFAULT_LEARNERS = ("logistic",)  # the default learner (LEARNERS["logistic"]() with default parameters)
STREAMS = {
    "synthetic": {"name": "synthetic", "d": 20, "K": 5, "temperature": 0.05},
    "adversarial": {"name": "adversarial", "d": 20, "K": 5, "temperature": 0.05, "n_proposals": 8},
}
S = 10.0
DEFAULT_TS = (1000, 2000, 4000, 8000, 16000, 32000, 64000)
TARGET_SLOPE = 0.6  # every local slope from TARGET_FROM on
TARGET_FROM = 8000


def stream_seed(seed: int, T: int, fresh_draws: bool = False) -> int:
    """The env seed of (seed, T): ``seed`` itself (one problem instance for every T), or with
    ``fresh_draws`` one derived from (seed, T), so that every horizon gets its own instance."""
    if not fresh_draws:
        return int(seed)
    return int(np.random.SeedSequence([int(seed), int(T)]).generate_state(1)[0])


def regret_at(stream: str, learner: str, T: int, seed: int, *, comparator: str = "approx",
              fresh_draws: bool = False) -> dict:
    """One independent play of horizon T: a fresh env of ``rounds=T`` and a fresh default learner, full feedback.

    Returns ``hinge`` (Σ ℓ_t(θ_t)), ``comp_loss`` / ``comp_lower`` (the comparator bracket; equal when exact),
    ``regret`` = hinge − comp_lower (the conservative value: an upper bound on R_T), ``regret_low`` =
    hinge − comp_loss (a lower bound), ``method`` and the seconds of the play and of the comparator.
    """
    spec = dict(STREAMS[stream], rounds=int(T), seed=stream_seed(seed, T, fresh_draws))
    played: list = []
    src = Recorder(ENVS[spec.pop("name")](**spec), played)
    t0 = time.perf_counter()
    recs = list(play(src, LEARNERS[learner](), _full_gate(), Budget(float(T)), horizon=int(T)))
    t1 = time.perf_counter()
    if len(recs) != T or len(played) != T:  # pragma: no cover - the env always yields T rounds
        raise RuntimeError(f"{stream}: expected {T} rounds, got {len(recs)} records and {len(played)} rounds")
    hinge = math.fsum(r.hinge_loss for r in recs)
    c = solve(played, S=S, method=comparator, cache=False)
    return {"T": int(T), "seed": int(seed), "hinge": hinge, "comp_loss": c.loss, "comp_lower": c.lower,
            "regret": hinge - c.lower, "regret_low": hinge - c.loss, "method": c.method,
            "play_s": t1 - t0, "comparator_s": time.perf_counter() - t1}


def regret_curve(stream: str, learner: str, Ts: Sequence[int], seed: int, *, comparator: str = "approx",
                 fresh_draws: bool = False) -> list[float]:
    """R_T for every T in ``Ts``, each from its own play of horizon T (the conservative value, see
    :func:`regret_at`)."""
    return [regret_at(stream, learner, T, seed, comparator=comparator, fresh_draws=fresh_draws)["regret"]
            for T in Ts]


def local_slopes(Ts: Sequence[int], R: Sequence[float]) -> list[float]:
    """log(R_{i+1}/R_i) / log(T_{i+1}/T_i) between consecutive horizons (NaN where a regret is ≤ 0)."""
    out = []
    for (t0, r0), (t1, r1) in zip(zip(Ts, R, strict=True), zip(Ts[1:], R[1:], strict=True), strict=False):
        out.append(math.log(r1 / r0) / math.log(t1 / t0) if r0 > 0 and r1 > 0 else math.nan)
    return out


def target_met(Ts: Sequence[int], slopes: Sequence[float]) -> bool | None:
    """Whether every local slope from a horizon ≥ TARGET_FROM is ≤ TARGET_SLOPE (a NaN slope fails);
    None when there is no such slope (e.g. ``--quick``)."""
    tail = [s for T, s in zip(Ts, slopes, strict=False) if T >= TARGET_FROM]
    return all(s <= TARGET_SLOPE for s in tail) if tail else None


def vs_B(betas: Sequence[float], T: int, seeds: Sequence[int]) -> dict:
    """Default LLF (logistic learner, calibrated gate) at fixed T on the stationary stream, B = βT:
    Stackelberg regret split into queried and unqueried rounds (the LP is solved once per seed)."""
    from budgetsft.gates import LLFGate

    rows = {b: [] for b in betas}
    for seed in seeds:
        spec = dict(STREAMS["synthetic"], rounds=T, seed=seed)
        rounds = list(ENVS[spec.pop("name")](**spec))
        comp, _, per_round = comparator_loss(rounds, S=S)
        for beta in betas:
            recs = list(play(rounds, LEARNERS["logistic"](), LLFGate(), Budget.from_beta(beta, T)))
            q = np.array([r.queried for r in recs])
            hinge = np.array([r.hinge_loss for r in recs])
            rows[beta].append((int(q.sum()), float(hinge.sum() - comp), float(hinge[q].sum() - per_round[q].sum()),
                               float(hinge[~q].sum() - per_round[~q].sum())))
    out = []
    for beta in betas:
        a = np.array(rows[beta])
        out.append({"beta": beta, "B": int(np.floor(beta * T + 1e-9)), "labels": float(a[:, 0].mean()),
                    "regret": float(a[:, 1].mean()), "queried": float(a[:, 2].mean()),
                    "unqueried": float(a[:, 3].mean())})
    Bs = [r["B"] for r in out]
    slopes = {k: loglog_slope(Bs, np.maximum([r[k] for r in out], 1e-9)) for k in ("regret", "queried")}
    return {"T": T, "rows": out, "slopes": slopes}


def _full_gate():
    from budgetsft.gates import FullGate

    return FullGate()


def run_all(Ts: Sequence[int], seeds: Sequence[int], learners: Sequence[str], streams: Sequence[str],
            log=print, *, comparator: str = "approx", fresh_draws: bool = False) -> dict:
    """Every (stream, learner): one play per (T, seed). Returns, per (stream, learner), the mean regret
    (conservative, ``regret``) and its lower bound (``regret_low``) at each T, the per-seed values
    (``runs``), the local slopes, the fitted slope, whether the target holds, and the seconds."""
    table: dict = {}
    with threadpool_limits(limits=1, user_api="blas"):
        for stream in streams:
            for learner in learners:
                t0 = time.perf_counter()
                runs = []
                for T in Ts:
                    for s in seeds:
                        r = regret_at(stream, learner, T, s, comparator=comparator, fresh_draws=fresh_draws)
                        runs.append(r)
                        log(f"  {stream} {learner} T={T} seed={s}: R_T ≤ {r['regret']:.1f} "
                            f"(≥ {r['regret_low']:.1f}, {r['method']}); play {r['play_s']:.1f} s, "
                            f"comparator {r['comparator_s']:.1f} s")
                mean = [float(np.mean([r["regret"] for r in runs if r["T"] == T])) for T in Ts]
                low = [float(np.mean([r["regret_low"] for r in runs if r["T"] == T])) for T in Ts]
                slopes = local_slopes(Ts, mean)
                table[(stream, learner)] = {
                    "regret": mean, "regret_low": low,
                    "per_seed": [[r["regret"] for r in runs if r["T"] == T] for T in Ts],
                    "local": slopes, "slope": loglog_slope(Ts, np.maximum(mean, 1e-9)),
                    "target_met": target_met(Ts, slopes), "methods": sorted({r["method"] for r in runs}),
                    "runs": runs, "seconds": time.perf_counter() - t0}
                log(f"  {stream} {learner}: {time.perf_counter() - t0:.0f} s")
    return table


def markdown(table: dict, Ts: Sequence[int], seeds: Sequence[int], *, comparator: str = "approx",
             fresh_draws: bool = False) -> str:
    how = ("certified bracket lower ≤ LP optimum ≤ loss (`comparator: approx`); R_T reported as hinge − lower, "
           "an upper bound" if comparator == "approx" else f"LP (`comparator: {comparator}`)")
    lines = [f"Full-feedback Stackelberg regret, one independent play per horizon T (fresh env of `rounds=T` and "
             f"fresh learner), mean over {len(seeds)} seed(s) ({','.join(map(str, seeds))}; "
             + ("each (seed, T) its own instance" if fresh_draws else "θ* shared across T per seed")
             + f"); comparator: best fixed ‖θ‖_∞ ≤ {S:g}, {how}. d = 20, K = 5, temperature 0.05.", "",
             "| stream | learner | T | mean R_T | per seed | R_T ≥ (bracket) | local slope to next T |",
             "|---|---|---:|---:|---|---:|---:|"]
    for (stream, learner), row in table.items():
        for i, T in enumerate(Ts):
            slope = row["local"][i] if i < len(row["local"]) else None
            flag = "" if slope is None or T < TARGET_FROM or slope <= TARGET_SLOPE else " ✗"
            lines.append(f"| {stream} | {learner} | {T:,} | {row['regret'][i]:.1f} | "
                         + " / ".join(f"{x:.1f}" for x in row["per_seed"][i])
                         + f" | {row['regret_low'][i]:.1f} | "
                         + ("—" if slope is None else f"{slope:.3f}{flag}") + " |")
    lines += ["", f"| stream | learner | fitted slope (all T) | max local slope from {TARGET_FROM:,} | "
                  f"every local slope ≤ {TARGET_SLOPE:g} from {TARGET_FROM:,} | comparator | seconds |",
              "|---|---|---:|---:|---|---|---:|"]
    for (stream, learner), row in table.items():
        tail = [s for T, s in zip(Ts, row["local"], strict=False) if T >= TARGET_FROM]
        lines.append(f"| {stream} | {learner} | **{row['slope']:.3f}** | "
                     + (f"{max(tail):.3f}" if tail else "—")
                     + f" | {_YES_NO[row['target_met']]} | {', '.join(row['methods'])} "
                       f"| {row['seconds']:.0f} |")
    lines += ["", f"Local slope: log(R_{{T'}}/R_T)/log(T'/T) to the next horizon T' (= log₂(R_{{2T}}/R_T) for "
                  f"doublings); ✗ marks one above the target {TARGET_SLOPE:g} from T = {TARGET_FROM:,} on. "
                  "Theory for a hinge-consistent second-order learner: Õ(√T), slope 0.5."]
    return "\n".join(lines)


_YES_NO = {True: "yes", False: "**no**", None: "n/a"}


def markdown_B(res: dict) -> str:
    lines = [f"Default LLF (logistic learner, calibrated gate) Stackelberg regret against B = βT at T = {res['T']:,} "
             "(synthetic stream), split into queried and unqueried rounds:", "",
             "| β | B | labels | regret | queried | unqueried |", "|---:|---:|---:|---:|---:|---:|"]
    for r in res["rows"]:
        lines.append(f"| {r['beta']:g} | {r['B']} | {r['labels']:.0f} | {r['regret']:.1f} | {r['queried']:.1f} "
                     f"| {r['unqueried']:.1f} |")
    lines += ["", f"Fitted log-log slopes vs B: total **{res['slopes']['regret']:.2f}**, queried rounds "
                  f"**{res['slopes']['queried']:.2f}** (theory: the queried term grows like √B, slope 0.5; the "
                  "unqueried term is what skipping costs and shrinks as B grows)."]
    return "\n".join(lines)


def parse(argv: list[str] | None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--T", default=",".join(map(str, DEFAULT_TS)), help="horizons, one independent play each")
    ap.add_argument("--learners", default=",".join(DEFAULT_LEARNERS),
                    help=f"comma-separated, of {', '.join(LEARNERS)} (default: the default learner, logistic)")
    ap.add_argument("--streams", default=",".join(STREAMS), help=f"comma-separated, of {', '.join(STREAMS)}")
    ap.add_argument("--comparator", choices=("approx", "auto", "exact"), default="approx",
                    help="approx: certified bracket, R_T reported against its lower end (an upper bound); "
                         "auto/exact: the LP (HiGHS takes minutes per stream at 64k)")
    ap.add_argument("--fresh-draws", action="store_true",
                    help="seed every (seed, T) separately instead of sharing θ* across T")
    ap.add_argument("--betas", default="0.025,0.05,0.1,0.2,0.4,0.8", help="budgets of the vs-B study")
    ap.add_argument("--T-B", type=int, default=8000, help="horizon of the vs-B study")
    group = ap.add_mutually_exclusive_group()
    group.add_argument("--only-B", action="store_true", help="run the vs-B study only")
    group.add_argument("--no-B", action="store_true", help="skip the vs-B study")
    ap.add_argument("--quick", action="store_true", help="seed 0, T up to 4000")
    args = ap.parse_args(argv)
    if args.quick:
        args.seeds, args.T, args.betas, args.T_B = "0", "500,1000,2000,4000", "0.05,0.1,0.2,0.4", 2000
    for name in args.learners.split(","):
        if name not in LEARNERS:
            ap.error(f"unknown learner {name!r}; choose from {', '.join(LEARNERS)}")
    for name in args.streams.split(","):
        if name not in STREAMS:
            ap.error(f"unknown stream {name!r}; choose from {', '.join(STREAMS)}")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse(argv)
    Ts = sorted({int(x) for x in args.T.split(",")})
    seeds = [int(s) for s in args.seeds.split(",")]
    t0 = time.perf_counter()
    table = {} if args.only_B else run_all(Ts, seeds, args.learners.split(","), args.streams.split(","),
                                           log=lambda m: print(m, file=sys.stderr, flush=True),
                                           comparator=args.comparator, fresh_draws=args.fresh_draws)
    b = None
    if not args.no_B:
        with threadpool_limits(limits=1, user_api="blas"):
            b = vs_B([float(x) for x in args.betas.split(",")], args.T_B, seeds)
    print(f"budgetsft Stackelberg regret: python {sys.version.split()[0]}; {time.perf_counter() - t0:.0f} s\n")
    if table:
        print(markdown(table, Ts, seeds, comparator=args.comparator, fresh_draws=args.fresh_draws))
    if b is not None:
        print()
        print(markdown_B(b))
    return {"table": table, "T": Ts, "seeds": seeds, "vs_B": b}


if __name__ == "__main__":
    main()
