"""Gradient features at the LoRA initialisation against gradient features after a warm-up (issue 20, item 1).

Run:  .venv/bin/python benchmarks/grad_warmup.py [--data bbc-news] [--beta 0.1] [--seeds 0,1,2] [--warmup 32]
      [--max-examples N] [--threads 2]

``features: grad`` is the gradient of a candidate's mean log-likelihood with respect to the LoRA B matrices that
``budgetsft adapt`` trains, taken at their initialisation (B = 0). The alternative is the same gradient after a
short warm-up: adapt's LoRA recipe trained on the first ``--warmup`` labels of the stream
(``budgetsft.adapt.engine.warm_up``), the gradient then taken at those weights
(:class:`budgetsft.features.grad.GradFeaturizer` with ``adapters=``). Those labels are paid for, so here they are
the stream's first ``--warmup`` rounds, bought whatever the gate says, out of the same budget B = βT; the gate
spends the rest.

Per seed (the seed's split and stream order), on the same train stream and test split:

* ``llf-grad``: LLF on the initialisation's gradients, as ``budgetsft adapt --features grad`` selects;
* ``llf-grad + first W``: the same features, the first W rounds bought first (the warm-up's labels, unused by
  the features): the fair baseline for the warm variant, the same labels paid;
* ``llf-grad-warm``: the first W rounds bought, the features the gradient after the warm-up on them;
* ``random``: the random gate at the same budget on the initialisation's features.

Columns: labels bought, online mistakes over the stream, the refit head's test accuracy on the set's own
features (the head that ``distill`` would teach LoRA with), and the refit head on the default ``block``
features of the same label set (a second judge of the set, independent of the gradient features). Paired
differences over seeds: mean ± t(0.975, S − 1) · sd / √S over the per-seed differences.

Cost: the warm features are computed afresh for every seed (the warm-up set is the seed's), about 10 min per
seed on bbc-news on 2 CPU cores; the initialisation's and the block features come from the disk cache when
``budgetsft adapt --features grad`` ran before. LoRA is not trained here: what a warm selection buys LoRA is
not measured by this script.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def forced_first(n: int):
    """The game's ``audit`` callable that buys rounds 1..n whatever the gate says (rate 0: the gate reserves none)."""

    def audit(t: int) -> bool:
        return t <= n

    audit.rate = 0.0
    return audit


def play_gate(gate: str, beta: float, seed: int, train, test, *, warmup: int = 0) -> dict:
    """``budgetsft run``'s game for one gate on ``train`` (rounds 1..warmup bought first); bought ids, mistakes,
    refit accuracy on these features."""
    from threadpoolctl import threadpool_limits

    from budgetsft.adapt.pipeline import _gate_config
    from budgetsft.config import build
    from budgetsft.experiment import budget_for
    from budgetsft.game import play

    cfg = _gate_config(gate, beta, seed, None)
    objs = build(cfg)
    budget = budget_for(cfg, train)
    with threadpool_limits(limits=1, user_api="blas"):
        records = list(play(train, objs["learner"], objs["gate"], budget, follower=objs["follower"],
                            horizon=len(train), audit=forced_first(warmup) if warmup else None))
    ids = [r.id for r in records if r.queried]
    if budget.total + 1e-9 < len(ids):
        raise AssertionError(f"{gate}: bought {len(ids)} labels, over the budget {budget.total}")
    return {"ids": ids, "mistakes": int(sum(r.mistake for r in records)), "refit": refit_on(train, test, ids, seed)}


def warm_adapters(examples, opts: dict, labels) -> dict:
    """adapt's LoRA trained on the warm-up examples (``budgetsft.adapt.engine.warm_up``, the featuriser's seed 0 and
    layers), on the packaged model as the featuriser loads it."""
    from budgetsft.adapt.engine import warm_up
    from budgetsft.features.models import load_causal_lm, resolve_device, resolve_dtype

    device = resolve_device("auto")
    model, tokenizer = load_causal_lm(opts["model_name"], device=device)
    adapters, _ = warm_up(model, tokenizer, examples, labels=labels, lora_layers=opts["lora_layers"],
                          lora_r=opts["lora_r"], lora_alpha=opts["lora_alpha"],
                          max_prompt_tokens=opts["max_prompt_tokens"], seed=0,
                          dtype=resolve_dtype("grad_warmup", "bf16", device))
    return adapters


def refit_on(train, test, ids, seed: int) -> float:
    """Test accuracy of the head refit (as `budgetsft run` refits) on the rounds of ``train`` whose id is in ``ids``."""
    from budgetsft.refit import refit_accuracy

    keep = set(ids)
    return refit_accuracy([r for r in train if r.id in keep], test, seed=seed)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="bbc-news")
    ap.add_argument("--beta", type=float, default=0.1)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--warmup", type=int, default=32, help="labels bought first and trained on (default 32)")
    ap.add_argument("--max-examples", type=int, default=None)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    if args.warmup < 1:
        ap.error("--warmup must be >= 1")
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from budgetsft.adapt.pipeline import RECIPE, _feature_options
    from budgetsft.adapt.stats import t_half_width
    from budgetsft.realdata import load_streams

    opts = _feature_options("grad", "smollm2-135m-instruct", lora_layers=RECIPE["lora_layers"],
                            lora_r=RECIPE["lora_r"], lora_alpha=RECIPE["lora_alpha"],
                            max_prompt_tokens=RECIPE["max_prompt_tokens"])
    names = ["llf-grad", f"llf-grad + first {args.warmup}", "llf-grad-warm", "random"]
    rows: dict[str, list[dict]] = {n: [] for n in names}
    t0 = time.perf_counter()
    for seed in seeds:
        common = {"seed": seed, "max_examples": args.max_examples}
        cold = load_streams(args.data, "grad", feature_options=opts, **common)
        block = load_streams(args.data, "block", **common)
        by_id = {ex.id: ex for ex in cold.dataset.train}
        budget = int(np.floor(args.beta * len(cold.train)))
        if args.warmup > budget:
            ap.error(f"--warmup {args.warmup} is more than the budget B = {budget} of seed {seed}")
        first = [by_id[r.id] for r in cold.train[: args.warmup]]
        t = time.perf_counter()
        adapters = warm_adapters(first, opts, cold.dataset.labels)
        warm = load_streams(args.data, "grad", feature_options={**opts, "adapters": adapters}, **common)
        print(f"seed {seed}: warm features in {time.perf_counter() - t:.0f} s "
              f"({warm.n_computed} computed, {warm.n_cached} cached)", file=sys.stderr)
        assert [r.id for r in warm.train] == [r.id for r in cold.train]  # same stream, other features
        runs = {
            "llf-grad": play_gate("llf", args.beta, seed, cold.train, cold.test),
            f"llf-grad + first {args.warmup}": play_gate("llf", args.beta, seed, cold.train, cold.test,
                                                         warmup=args.warmup),
            "llf-grad-warm": play_gate("llf", args.beta, seed, warm.train, warm.test, warmup=args.warmup),
            "random": play_gate("random", args.beta, seed, cold.train, cold.test),
        }
        for name, res in runs.items():
            res["block"] = refit_on(block.train, block.test, res["ids"], seed)
            if name.startswith("llf-grad ") or name == "llf-grad-warm":
                assert set(res["ids"]) >= {ex.id for ex in first}  # the warm-up labels were bought
            rows[name].append(res)
            print(f"seed {seed} {name}: {len(res['ids'])} labels, mistakes {res['mistakes']}, refit "
                  f"{res['refit']:.4f}, block refit {res['block']:.4f}", file=sys.stderr)

    print(f"\n### `python benchmarks/grad_warmup.py --data {args.data} --beta {args.beta} --seeds {args.seeds} "
          f"--warmup {args.warmup}" + (f" --max-examples {args.max_examples}" if args.max_examples else "")
          + f"` ({(time.perf_counter() - t0) / 60:.1f} min)\n")
    print("| selection | labels (mean) | online mistakes | refit on its own features | per seed | "
          "refit on block features | per seed |")
    print("|---|---:|---:|---:|---|---:|---|")
    for name in names:
        rs = rows[name]
        own = [r["refit"] for r in rs]
        blk = [r["block"] for r in rs]
        print(f"| {name} | {np.mean([len(r['ids']) for r in rs]):.1f} | {np.mean([r['mistakes'] for r in rs]):.1f} | "
              f"{np.mean(own):.4f} | {', '.join(f'{v:.4f}' for v in own)} | "
              f"{np.mean(blk):.4f} | {', '.join(f'{v:.4f}' for v in blk)} |")
    print("\n| paired difference (seeds) | judge | mean | 95 % CI (seed-level t) |")
    print("|---|---|---:|---|")
    pairs = [("llf-grad-warm", f"llf-grad + first {args.warmup}"), ("llf-grad-warm", "llf-grad"),
             ("llf-grad-warm", "random"), ("llf-grad", "random")]
    for a, b in pairs:
        for judge in ("refit", "block"):
            d = [x[judge] - y[judge] for x, y in zip(rows[a], rows[b], strict=True)]
            mean = float(np.mean(d))
            half = t_half_width(d)
            lo, hi = mean - half, mean + half
            print(f"| {a} − {b} | {'own features' if judge == 'refit' else 'block features'} | {mean * 100:+.2f} | "
                  f"[{lo * 100:+.2f}, {hi * 100:+.2f}] points |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
