"""The same label sets through two downstream trainers: the refit head and LoRA (issue 12, item 4).

Usage::

    python benchmarks/adapt_value.py --quick        # 1 seed, 600 examples: a few minutes on 2 CPU cores
    python benchmarks/adapt_value.py                # bbc-news, 3 seeds, all 2,127 examples: hours on a CPU
    python benchmarks/adapt_value.py --seeds 0 --out runs/adapt_value.json --threads 2   # an idle machine

Label sets, all bought at β = 0.1 on the bbc-news train stream of each seed (``benchmarks/peers.py``'s
streams and functions, which return the indices of the rounds each method bought):

* budgetsft's gates ``llf``, ``random``, ``first``, ``margin`` at their defaults (``peers.run_bsft``: what
  ``budgetsft run`` buys);
* ``vw-cs_active`` (``peers.run_vw_cs_active``, hard cap ``--max_labels B``; it may buy a few more rounds
  than B, see peers.py), ``river-entropy`` (``peers.run_river``, discount tuned on the seed to buy ≈ B by
  ``peers.tune``) and ``modal-pool`` (``peers.run_modal``, exactly B).

Downstream trainers, each applied to every set:

* ``refit``: :func:`budgetsft.refit.refit_accuracy`, a conditional-logit head on the ``block`` features
  (C by cross-validation on the set alone), held-out accuracy on the test rounds;
* ``lora``: ``budgetsft adapt``'s LoRA recipe (:data:`budgetsft.adapt.pipeline.RECIPE`: the engine of
  :mod:`budgetsft.adapt.engine`) on SmolLM2-135M-Instruct, accuracy by candidate log-likelihood on the same
  test split.

``--runs DIR [DIR ...]`` reads the label sets from saved ``budgetsft adapt`` runs instead (issue 20: the sets
of ``llf-grad``, LLF on the adapted model's own gradient features, beside ``llf``, ``random``, ``first`` and
``margin``): each selection's ``seed-<s>/labels/<selection>.jsonl`` (what its LoRA trained on, the audit labels
held out) and its ``<selection>/plain`` LoRA test accuracy from ``report.json``; the refit head on the ``block``
features is fitted here on the same sets and test split, in seconds. Every run must share the data set, the
seeds' splits and the LoRA recipe (checked). For example::

    budgetsft adapt --data bbc-news --beta 0.1 --seeds 0,1,2,3,4 --out runs/adapt-bbc
    budgetsft adapt --data bbc-news --features grad --baselines random --no-all --beta 0.1 --seeds 0,1,2,3,4 \
        --out runs/adapt-grad5-bbc
    python benchmarks/adapt_value.py --runs runs/adapt-bbc runs/adapt-grad5-bbc

The question: is the ranking of label sets the same for both trainers? Kendall's τ between the two
accuracy vectors (over label sets, means over seeds; ``scipy.stats.kendalltau``, τ-b with ties) and the
two orders, side by side. τ = 1: same order; near 0: the refit head says nothing about which set adapts
the LLM best.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import peers  # a sibling script: this folder is on sys.path
from threadpoolctl import threadpool_limits

from budgetsft.refit import refit_accuracy

GATES = ["llf", "random", "first", "margin"]
PEERS = ["vw-cs_active", "river-entropy", "modal-pool"]


def bought_sets(st, beta: float, log) -> dict[str, list[int]]:
    """Indices of the train rounds each method buys at ``beta`` (peers.py's functions)."""
    out: dict[str, list[int]] = {}
    with threadpool_limits(limits=1, user_api="blas"):
        for g in GATES:
            out[g] = peers.run_bsft(st, g, beta)["bought"]
        out["vw-cs_active"] = peers.run_vw_cs_active(st, beta)["bought"]
        knob, got = peers.tune_knob(st, "river-entropy", st.budget(beta))
        log(f"  river-entropy: discount {knob:.4g} buys {got} (B = {st.budget(beta)})")
        out["river-entropy"] = peers.run_river(st, knob)["bought"]
        out["modal-pool"] = peers.run_modal(st, beta)["bought"]
    return out


class LoraTrainer:
    """``budgetsft adapt``'s LoRA recipe on SmolLM2-135M-Instruct; the frozen prefix is shared by every seed."""

    def __init__(self, recipe: dict) -> None:
        from budgetsft.adapt.engine import PrefixCache, quiet_hf
        from budgetsft.adapt.lora import pad_id
        from budgetsft.features.models import load_causal_lm

        with quiet_hf():
            self.base, self.tok = load_causal_lm("smollm2-135m-instruct", device="cpu")
        self.base.requires_grad_(False)
        self.recipe = recipe
        split = max(0, self.base.config.num_hidden_layers - recipe["lora_layers"])
        self.cache = PrefixCache(self.base, split, dtype="bf16", batch_size=recipe["eval_batch_size"],
                                 pad_token_id=pad_id(self.tok))

    def accuracies(self, sets: dict[str, list], test: list, seed: int, log) -> dict[str, float]:
        """Test accuracy of one fresh LoRA per named set of Examples, and zero-shot."""
        from budgetsft.adapt.engine import encode, quiet_hf, score_packed, train_lora

        r = self.recipe
        every = {ex.id: ex for ex in [*test, *(e for s in sets.values() for e in s)]}
        todo = self.cache.missing(list(every))
        t0 = time.perf_counter()
        self.cache.add_many(todo, [encode(every[k], self.tok, max_prompt_tokens=r["max_prompt_tokens"],
                                          labels=test[0].candidates) for k in todo])
        log(f"  prefix of {len(todo)} new examples: {time.perf_counter() - t0:.0f} s")
        keys = [ex.id for ex in test]
        gold = np.array([ex.answer for ex in test])

        def acc(model) -> float:
            scores = score_packed(model, self.cache, keys, batch_size=r["eval_batch_size"], progress=False)
            return float(np.mean([np.argmax(s) == g for s, g in zip(scores, gold, strict=True)]))

        out = {"zero-shot": acc(self.base)}
        for name, examples in sets.items():
            t0 = time.perf_counter()
            with quiet_hf():
                model, _ = train_lora(copy.deepcopy(self.base), self.cache, [e.id for e in examples],
                                      [e.answer for e in examples], epochs=r["epochs"], lr=r["lr"],
                                      lora_r=r["lora_r"], lora_alpha=r["lora_alpha"], batch_size=r["batch_size"],
                                      seed=seed, progress=False)
            out[name] = acc(model)
            log(f"  lora {name}: {len(examples)} labels, accuracy {out[name]:.4f} ({time.perf_counter() - t0:.0f} s)")
        return out


def kendall(a: list[float], b: list[float]) -> float:
    from scipy.stats import kendalltau

    tau = kendalltau(a, b).statistic
    return float(tau) if tau is not None and math.isfinite(tau) else math.nan


def rank_sets(rows: list[dict], names: list[str], seeds: list[int]):
    """Means over seeds per label set, Kendall τ (refit vs LoRA) over the means and per seed, both rankings."""
    mean = {n: {k: float(np.mean([r[k] for r in rows if r["method"] == n])) for k in ("labels", "refit", "lora")}
            for n in names}
    tau = kendall([mean[n]["refit"] for n in names], [mean[n]["lora"] for n in names])
    per_seed_tau = [kendall([r["refit"] for r in rows if r["seed"] == s], [r["lora"] for r in rows if r["seed"] == s])
                    for s in seeds]
    by_refit = sorted(names, key=lambda n: -mean[n]["refit"])
    by_lora = sorted(names, key=lambda n: -mean[n]["lora"])
    return mean, tau, per_seed_tau, by_refit, by_lora


def print_rankings(names: list[str], tau: float, per_seed_tau: list[float], by_refit: list[str],
                   by_lora: list[str]) -> None:
    print(f"Kendall τ (refit vs LoRA, over the {len(names)} label sets, means over seeds): {tau:+.3f}; per seed: "
          + ", ".join(f"{t:+.3f}" for t in per_seed_tau) + ".")
    print(f"Ranking by refit: {' > '.join(by_refit)}.")
    print(f"Ranking by LoRA:  {' > '.join(by_lora)}.")


def print_noise(mean: dict, names: list[str], n_test: int, n_seeds: int) -> None:
    se = max(math.sqrt(p * (1 - p) / (n_test * n_seeds)) for p in (mean[n]["lora"] for n in names))
    print(f"Noise: with {n_test} test items per seed, one accuracy has a standard error of up to {100 * se:.1f} "
          "points; sets closer than about twice that are not told apart by either ranking.")


def sets_from_runs(runs: list[Path], log) -> tuple[str, list[int], dict[str, dict]]:
    """The label sets of saved adapt runs: ``{selection: {"ids": {seed: [ids]}, "lora": {seed: acc},
    "head": {seed: acc}, "features": name, "run": dir}}`` (a selection in two runs must be the same set)."""
    data, seeds, settings, out = None, None, None, {}
    for run in runs:
        rep = json.loads((run / "report.json").read_text())
        if rep.get("labels_file") is not None:
            raise SystemExit(f"{run}: a run on --labels; adapt_value compares selections")
        keep = {k: v for k, v in rep["settings"].items() if k not in ("audit", "cv_folds", "device")}
        if data is None:
            data, seeds, settings = rep["data"], list(rep["seeds"]), keep
        elif (rep["data"], list(rep["seeds"]), keep) != (data, seeds, settings):
            raise SystemExit(f"{run}: not the data, seeds or LoRA recipe of {runs[0]}")
        for method, m in rep["methods"].items():
            sel, _, model = method.partition("/")
            if model != "plain" or sel == "all":
                continue
            ids = {s: [json.loads(line)["id"] for line in
                       (run / f"seed-{s}" / "labels" / f"{sel}.jsonl").read_text().splitlines()] for s in seeds}
            head = rep["methods"].get(f"{sel}/head", {}).get("accuracy")
            distill = rep["methods"].get(f"{sel}/distill", {}).get("accuracy")
            row = {"ids": ids, "lora": dict(zip(seeds, m["accuracy"], strict=True)),
                   "distill": dict(zip(seeds, distill, strict=True)) if distill else None,
                   "head": dict(zip(seeds, head, strict=True)) if head else None,
                   "features": rep["per_seed"][0]["features"], "run": str(run)}
            if sel in out:
                if out[sel]["ids"] != ids:
                    raise SystemExit(f"{run}: selection {sel!r} differs from {out[sel]['run']}'s")
                log(f"  {sel}: the same sets in {out[sel]['run']} and {run}; LoRA accuracies "
                    f"{np.mean(list(out[sel]['lora'].values())):.4f} and {np.mean(m['accuracy']):.4f} "
                    f"(the first is used)")
                continue
            out[sel] = row
    return data, seeds, out


def main_runs(runs: list[Path], log) -> dict:
    """The two-trainer table of the label sets of saved adapt runs (``--runs``)."""
    from budgetsft.realdata import load_streams

    t_start = time.perf_counter()
    data, seeds, sets = sets_from_runs(runs, log)
    rows = []
    for seed in seeds:
        st = load_streams(data, "block", seed=seed, progress=False)
        by_id = {r.id: r for r in st.train}
        for name, s in sets.items():
            rounds = [by_id[i] for i in s["ids"][seed]]
            rows.append({"seed": seed, "method": name, "labels": len(rounds),
                         "refit": refit_accuracy(rounds, st.test, seed=seed), "lora": s["lora"][seed],
                         "head": None if s["head"] is None else s["head"][seed],
                         "distill": None if s["distill"] is None else s["distill"][seed]})
    names = list(sets)
    mean, tau, per_seed_tau, by_refit, by_lora = rank_sets(rows, names, seeds)
    print(f"# Two downstream trainers on the label sets of {', '.join(map(str, runs))}: {data}, seeds {seeds}")
    print()
    print(f"Test items per seed: {len(st.test)}. refit: the head on block features, fitted here; LoRA: "
          f"<set>/plain of the run; the gate's head: <set>/head of the run, on the features it selected on.")
    print()
    print("| label set | gate's features | labels (mean) | refit accuracy | refit rank | LoRA accuracy | LoRA rank "
          "| the gate's head | LoRA distill |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for n in names:
        head = [r["head"] for r in rows if r["method"] == n and r["head"] is not None]
        dist = [r["distill"] for r in rows if r["method"] == n and r["distill"] is not None]
        print(f"| {n} | {sets[n]['features']} | {mean[n]['labels']:.1f} | {mean[n]['refit']:.4f} | "
              f"{by_refit.index(n) + 1} | {mean[n]['lora']:.4f} | {by_lora.index(n) + 1} | "
              f"{f'{np.mean(head):.4f}' if head else '—'} | {f'{np.mean(dist):.4f}' if dist else '—'} |")
    print()
    with_distill = [n for n in names if sets[n]["distill"] is not None]
    if len(with_distill) >= 2:
        d_mean = {n: float(np.mean(list(sets[n]["distill"].values()))) for n in with_distill}
        print(f"The sets trained with distill ({', '.join(with_distill)}): by LoRA distill "
              f"{' > '.join(sorted(with_distill, key=lambda n: -d_mean[n]))}; by refit "
              f"{' > '.join(sorted(with_distill, key=lambda n: -mean[n]['refit']))}; by the gate's head "
              f"{' > '.join(sorted(with_distill, key=lambda n: -np.mean(list(sets[n]['head'].values()))))}.")
    print_rankings(names, tau, per_seed_tau, by_refit, by_lora)
    for n in [n for n in names if n.endswith("-grad")]:
        a, b = by_refit.index(n) + 1, by_lora.index(n) + 1
        print(f"{n}: rank {a} by the refit head, {b} by LoRA: " + ("alike." if a == b else "not alike."))
    print_noise(mean, names, len(st.test), len(seeds))
    print(f"\n{time.perf_counter() - t_start:.0f} s")
    return {"rows": rows, "mean": mean, "kendall_tau": tau, "kendall_tau_per_seed": per_seed_tau,
            "ranking_refit": by_refit, "ranking_lora": by_lora, "same_ranking": by_refit == by_lora}


def main(argv: list[str] | None = None) -> dict:
    from budgetsft.adapt.pipeline import RECIPE
    from budgetsft.data import load_dataset

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--beta", type=float, default=0.1)
    ap.add_argument("--max-examples", type=int, default=None, help="seeded subset of bbc-news (default: all)")
    ap.add_argument("--quick", action="store_true", help="seed 0, 600 examples")
    ap.add_argument("--out", default=None, help="write the rows as JSON here")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads (default 1: on a shared 2-core machine two threads ran 10-20x slower)")
    ap.add_argument("--runs", nargs="+", type=Path, default=None,
                    help="read the label sets and LoRA accuracies of these saved adapt runs (no training)")
    args = ap.parse_args(argv)
    if args.runs:
        out = main_runs(args.runs, lambda m: print(m, file=sys.stderr, flush=True))
        if args.out:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
        return out
    import torch

    torch.set_num_threads(args.threads)
    if args.quick:
        args.seeds, args.max_examples = "0", 600
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    t_start = time.perf_counter()
    rows = []
    trainer = LoraTrainer(RECIPE)
    for seed in seeds:
        log(f"seed {seed}: streams, label sets")
        st = peers.load_setting("bbc-news", seed, max_examples=args.max_examples)
        ds = load_dataset("bbc-news", seed=seed, max_examples=args.max_examples)
        by_id = {ex.id: ex for ex in [*ds.train, *ds.test]}
        assert [r.id for r in st.train] == [ex.id for ex in ds.train], "streams and data set disagree"
        bought = bought_sets(st, args.beta, log)
        rtrain, rtest = st.refit_rounds()
        refit = {name: refit_accuracy([rtrain[i] for i in idx], rtest, seed=seed) for name, idx in bought.items()}
        sets = {name: [by_id[st.train[i].id] for i in idx] for name, idx in bought.items()}
        test = [by_id[r.id] for r in st.test]
        lora = trainer.accuracies(sets, test, seed, log)
        for name in bought:
            rows.append({"seed": seed, "method": name, "labels": len(bought[name]), "budget": st.budget(args.beta),
                         "refit": refit[name], "lora": lora[name], "zero_shot": lora["zero-shot"]})
    names = list(dict.fromkeys(r["method"] for r in rows))
    mean, tau, per_seed_tau, by_refit, by_lora = rank_sets(rows, names, seeds)
    print(f"# Two downstream trainers on the same label sets: bbc-news, β = {args.beta}, seeds {seeds}"
          + (f", {args.max_examples} examples" if args.max_examples else ""))
    print()
    print(f"Test items per seed: {len(st.test)}; B = {st.budget(args.beta)}; LoRA zero-shot accuracy "
          f"{np.mean([r['zero_shot'] for r in rows]):.4f}. LoRA recipe: {RECIPE}.")
    print()
    print("| label set | labels (mean) | refit accuracy | refit rank | LoRA accuracy | LoRA rank |")
    print("|---|---:|---:|---:|---:|---:|")
    for n in names:
        print(f"| {n} | {mean[n]['labels']:.1f} | {mean[n]['refit']:.4f} | {by_refit.index(n) + 1} | "
              f"{mean[n]['lora']:.4f} | {by_lora.index(n) + 1} |")
    print()
    same = by_refit == by_lora
    print_rankings(names, tau, per_seed_tau, by_refit, by_lora)
    alike = "broadly alike" if tau >= 0.5 else ("opposite" if tau <= -0.5 else "hardly related")
    print("The two trainers rank the label sets " + ("the same way." if same else f"differently (τ = {tau:+.2f}: "
                                                     f"{alike})."))
    print_noise(mean, names, len(st.test), len(seeds))
    print(f"\n{time.perf_counter() - t_start:.0f} s")
    out = {"rows": rows, "mean": mean, "kendall_tau": tau, "kendall_tau_per_seed": per_seed_tau,
           "ranking_refit": by_refit, "ranking_lora": by_lora, "same_ranking": same}
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    return out


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        main()
